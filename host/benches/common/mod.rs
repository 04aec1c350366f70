//! Helpers shared by the benches (each bench is its own crate and takes
//! what it needs with `#[path = "common/mod.rs"] mod common;`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A size from the environment, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The plugin file `file(profile)` under the target folder, release build
/// before debug.
fn built(kind: &str, file: impl Fn(&str) -> PathBuf) -> PathBuf {
    let target = target_dir();
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(file(profile)))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("no {kind} segmentation plugin: run `bash host/scripts/build-plugins.sh release` first")
        })
}

/// The segmentation plugin as a wasm component.
pub fn segmentation_wasm() -> PathBuf {
    built("wasm", |p| {
        Path::new("wasm32-wasip2")
            .join(p)
            .join("amat_segmentation.wasm")
    })
}

/// The segmentation plugin as a native library.
pub fn segmentation_native() -> PathBuf {
    built("native", |p| Path::new(p).join("libamat_segmentation.so"))
}
