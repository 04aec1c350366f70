//! Checkpoints: weights, optimizer state, AMAT margins, the shuffler's
//! position, the epoch and the config's hash, in one folder per epoch under
//! `RUN/checkpoints/`. A checkpoint is written into a hidden temporary folder
//! and renamed into place when complete; `checkpoints/latest` (replaced
//! atomically) names the newest. A crash leaves the previous one intact.

use super::margins::Margins;
use super::{EpochRecord, Trainer};
use crate::config::{Method, RunConfig};
use crate::fsio::{self, write_atomic};
use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub const WEIGHTS: &str = "weights.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const MARGINS: &str = "margins.safetensors";
const STATE: &str = "state.json";
pub const CONFIG: &str = "config.toml";
const LATEST: &str = "latest";

/// `state.json`: the small part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    /// Epochs completed.
    pub epoch: usize,
    pub method: Method,
    pub config_hash: String,
    pub task: String,
    pub task_version: String,
    /// The shuffler: its seed (hex) and position in its stream.
    pub rng_seed: String,
    pub rng_word_pos: String,
    /// AMAT: delta_eps and eps_max the margins were made with.
    pub margin_step: Option<f64>,
    pub history: Vec<EpochRecord>,
    pub amat_host_version: String,
}

fn cpu(named: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    named
        .into_iter()
        .map(|(n, t)| (n, t.to_device(Device::Cpu)))
        .collect()
}

/// Saves `trainer` as `RUN/checkpoints/epoch-NNNN` and keeps the newest `keep`.
pub fn save(run_dir: &Path, trainer: &Trainer, task: (&str, &str)) -> Result<PathBuf> {
    let root = run_dir.join("checkpoints");
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let name = format!("epoch-{:04}", trainer.epoch);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir(&tmp)?;
    let write = |file: &str, named: Vec<(String, Tensor)>| -> Result<()> {
        let path = tmp.join(file);
        Tensor::write_safetensors(&cpu(named), &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        fsio::sync_file(&path)
    };
    let mut weights: Vec<(String, Tensor)> = trainer.vs.variables().into_iter().collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    write(WEIGHTS, weights)?;
    write(OPTIMIZER, trainer.opt.state())?;
    if let Some(m) = &trainer.margins {
        write(MARGINS, vec![("eps".into(), Tensor::from_slice(&m.values))])?;
    }
    let state = State {
        format: 1,
        epoch: trainer.epoch,
        method: trainer.method,
        config_hash: trainer.cfg.hash(),
        task: task.0.into(),
        task_version: task.1.into(),
        rng_seed: crate::config::hex(&trainer.rng.get_seed()),
        rng_word_pos: trainer.rng.get_word_pos().to_string(),
        margin_step: trainer.margins.as_ref().map(|m| m.delta_eps),
        history: trainer.history.clone(),
        amat_host_version: env!("CARGO_PKG_VERSION").into(),
    };
    write_atomic(&tmp.join(CONFIG), trainer.cfg.to_toml().as_bytes())?;
    write_atomic(
        &tmp.join(STATE),
        serde_json::to_string_pretty(&state)?.as_bytes(),
    )?;
    let dest = root.join(&name);
    if dest.exists() {
        fs::remove_dir_all(&dest)?;
    }
    fsio::sync_dir(&tmp)?;
    fsio::rename_durably(&tmp, &dest)?;
    write_atomic(&root.join(LATEST), name.as_bytes())?;
    prune(&root, trainer.cfg.run.keep_checkpoints)?;
    Ok(dest)
}

/// Removes all but the newest `keep` checkpoints.
fn prune(root: &Path, keep: usize) -> Result<()> {
    let mut names: Vec<String> = fs::read_dir(root)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("epoch-"))
        .collect();
    names.sort();
    let drop = names.len().saturating_sub(keep);
    for n in &names[..drop] {
        fs::remove_dir_all(root.join(n))?;
    }
    Ok(())
}

/// A run folder (its newest checkpoint) or a checkpoint folder, as the
/// checkpoint folder.
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    if dir.join(STATE).is_file() {
        return Ok(dir.to_path_buf());
    }
    let latest = dir.join("checkpoints").join(LATEST);
    let name = fs::read_to_string(&latest).with_context(|| {
        format!(
            "{}: not a run or checkpoint folder (no {})",
            dir.display(),
            latest.display()
        )
    })?;
    let ckpt = dir.join("checkpoints").join(name.trim());
    if !ckpt.join(STATE).is_file() {
        bail!(
            "{}: the latest checkpoint {} is incomplete",
            dir.display(),
            ckpt.display()
        );
    }
    Ok(ckpt)
}

pub fn read_state(ckpt: &Path) -> Result<State> {
    let path = ckpt.join(STATE);
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a checkpoint state", path.display()))
}

pub fn read_config(ckpt: &Path) -> Result<RunConfig> {
    RunConfig::read(&ckpt.join(CONFIG)).map_err(anyhow::Error::msg)
}

/// Loads the weights of `ckpt` into `vs` (the model must have the same layout).
pub fn load_weights(ckpt: &Path, vs: &mut tch::nn::VarStore) -> Result<()> {
    let path = ckpt.join(WEIGHTS);
    vs.load(&path)
        .with_context(|| format!("cannot load weights {}", path.display()))
}

/// Restores everything `save` wrote into a trainer made from the same config.
pub fn restore(ckpt: &Path, trainer: &mut Trainer) -> Result<State> {
    let state = read_state(ckpt)?;
    let hash = trainer.cfg.hash();
    if state.config_hash != hash {
        // Any text may sit in a state.json: cut by characters, never by bytes.
        let short = |h: &str| h.chars().take(12).collect::<String>();
        bail!(
            "checkpoint {} was made with another config (hash {}…, this one {}…)",
            ckpt.display(),
            short(&state.config_hash),
            short(&hash)
        );
    }
    if state.method != trainer.method {
        bail!(
            "checkpoint {} is a {} run, not {}",
            ckpt.display(),
            state.method,
            trainer.method
        );
    }
    load_weights(ckpt, &mut trainer.vs)?;
    let opt = Tensor::read_safetensors(ckpt.join(OPTIMIZER))
        .with_context(|| format!("cannot read {}", ckpt.join(OPTIMIZER).display()))?;
    trainer.opt.load_state(opt)?;
    if let Some(m) = &mut trainer.margins {
        load_margins(ckpt, m)?;
    }
    let seed = parse_seed(&state.rng_seed)
        .with_context(|| format!("{}, field `rng_seed`", ckpt.join(STATE).display()))?;
    trainer.rng = ChaCha8Rng::from_seed(seed);
    trainer.rng.set_word_pos(
        state
            .rng_word_pos
            .parse()
            .context("bad rng_word_pos in state.json")?,
    );
    if state.epoch > trainer.cfg.train.epochs {
        bail!(
            "{}, field `epoch`: {} is past the config's train.epochs = {}",
            ckpt.join(STATE).display(),
            state.epoch,
            trainer.cfg.train.epochs
        );
    }
    trainer.epoch = state.epoch;
    trainer.history = state.history.clone();
    Ok(state)
}

/// 64 hex digits (32 bytes), as `config::hex` writes them.
fn parse_seed(text: &str) -> Result<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
        bail!("not 64 hex digits");
    }
    let mut seed = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        // Two ASCII hex digits: always valid UTF-8 and a valid byte.
        seed[i] = u8::from_str_radix(std::str::from_utf8(pair)?, 16)?;
    }
    Ok(seed)
}

fn load_margins(ckpt: &Path, m: &mut Margins) -> Result<()> {
    let path = ckpt.join(MARGINS);
    let named = Tensor::read_safetensors(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let eps = named
        .into_iter()
        .find(|(n, _)| n == "eps")
        .with_context(|| format!("{} has no `eps`", path.display()))?
        .1;
    let values = Vec::<f32>::try_from(eps.to_kind(Kind::Float))?;
    if values.len() != m.values.len() {
        bail!(
            "{} holds {} margins, the training split has {} samples",
            path.display(),
            values.len(),
            m.values.len()
        );
    }
    m.values = values;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_floats_read_back_bit_for_bit() {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(18);
        let values: Vec<f64> = (0..100_000)
            .map(|_| f64::from_bits((rng.r#gen::<u64>() >> 2) | 0x3000_0000_0000_0000))
            .filter(|v| v.is_finite())
            .collect();
        let back: Vec<f64> =
            serde_json::from_str(&serde_json::to_string(&values).unwrap()).unwrap();
        let lost = values
            .iter()
            .zip(&back)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(lost, 0, "{lost} of {} floats changed", values.len());
    }

    #[test]
    fn a_seed_of_any_text_is_an_error_not_a_panic() {
        let good = "ab".repeat(32);
        assert_eq!(parse_seed(&good).unwrap(), [0xab; 32]);
        for bad in [
            "",
            "a",
            "abc",
            "zz",
            "é",
            &"ab".repeat(31),
            &format!("{}é", "a".repeat(62)),
        ] {
            assert!(parse_seed(bad).is_err(), "{bad}");
        }
    }
}
