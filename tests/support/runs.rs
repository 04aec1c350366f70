//! Reading a finished run folder: its newest checkpoint, tensors, epochs.

use std::path::{Path, PathBuf};
use tch::Tensor;

/// The checkpoint folder `checkpoints/latest` names.
pub fn latest_checkpoint(run: &Path) -> PathBuf {
    let name = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    run.join("checkpoints").join(name.trim())
}

/// A safetensors file's tensors, sorted by name.
pub fn tensors(path: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(path).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The records of `epochs.jsonl`.
pub fn epochs(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("epochs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
