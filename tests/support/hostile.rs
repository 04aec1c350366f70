//! The hostile-plugin catalogue: `tests/hostile` built once per misbehaviour
//! (a cargo feature) into `target/hostile/<feature>.wasm` (or `.so` for a
//! native build), rebuilt only when its sources or the SDK's are newer than
//! the cached file.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Newest modification time of the files under `dirs`.
fn newest(dirs: &[PathBuf]) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if let Ok(m) = meta.modified() {
            newest = newest.max(m);
        }
    }
    newest
}

fn fresh(file: &Path, sources: SystemTime) -> bool {
    std::fs::metadata(file)
        .and_then(|m| m.modified())
        .is_ok_and(|m| m >= sources)
}

/// `tests/hostile` built as a wasm component with `feature` on (`"good"`: no
/// feature, a well-behaved plugin).
pub fn hostile_plugin(feature: &str) -> PathBuf {
    build(feature, true)
}

/// `tests/hostile` built as a native library with `feature` on.
pub fn hostile_native_plugin(feature: &str) -> PathBuf {
    build(feature, false)
}

fn build(feature: &str, wasm: bool) -> PathBuf {
    let root = super::root();
    let target = super::target_dir();
    let dir = target.join("hostile");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{feature}.{}", if wasm { "wasm" } else { "so" }));
    let sources = newest(&[
        root.join("tests/hostile"),
        root.join("plugin-sdk/src"),
        root.join("wit"),
    ]);
    // One build at a time across test threads and processes: every feature
    // writes the same cargo artifact before it is copied out.
    let lock = std::fs::File::create(dir.join(".lock")).unwrap();
    lock.lock().unwrap();
    if !fresh(&out, sources) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", "hostile-plugin"])
            .current_dir(&root);
        if wasm {
            cmd.args(["--target", "wasm32-wasip2"]);
        }
        if feature != "good" {
            cmd.args(["--features", feature]);
        }
        let built = cmd.output().expect("run cargo build");
        assert!(
            built.status.success(),
            "building hostile-plugin --features {feature} failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let built = match wasm {
            true => target.join("wasm32-wasip2/debug/hostile_plugin.wasm"),
            false => target.join("debug/libhostile_plugin.so"),
        };
        std::fs::copy(&built, &out).unwrap();
    }
    drop(lock);
    out
}
