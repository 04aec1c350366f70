//! Shared by the end-to-end tests: where the built plugins are, and a build
//! of them when a test runs without `tests/all.sh` having built them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Once;

#[allow(unused_imports)]
pub use hostile::hostile_plugin;
pub mod hostile;
pub mod runs;
pub mod samples;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Builds the first-party plugins once per test binary (a no-op when fresh).
fn build_plugins() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let status = std::process::Command::new("bash")
            .arg(root().join("host/scripts/build-plugins.sh"))
            .arg("dev")
            .current_dir(root())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run build-plugins.sh");
        assert!(status.success(), "building the plugins failed");
    });
}

/// `plugins/<name>` built as a wasm component.
pub fn wasm_plugin(name: &str) -> PathBuf {
    build_plugins();
    target_dir()
        .join("wasm32-wasip2/debug")
        .join(format!("amat_{name}.wasm"))
}

/// `plugins/<name>` built as a native library.
pub fn native_plugin(name: &str) -> PathBuf {
    build_plugins();
    target_dir()
        .join("debug")
        .join(format!("libamat_{name}.so"))
}

/// The `amat-host` binary under test.
pub fn amat_host() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_amat-host"))
}

/// `amat-host run --plugin P --config C --out O`, which must succeed.
pub fn run_ok(plugin: &Path, config: &Path, out: &Path) {
    let o = amat_host()
        .args(["run", "--plugin"])
        .arg(plugin)
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run amat-host");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Runs `amat-host args`, echoing its stderr when it fails.
pub fn run_amat_host(args: &[&str]) -> std::process::Output {
    let out = amat_host().args(args).output().expect("run amat-host");
    if !out.status.success() {
        eprintln!(
            "amat-host {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}
