//! `amat-host plugin new`: the crate it writes outside the repository builds
//! for wasm32-wasip2 against this checkout's SDK, offline with the copied
//! lock file, and passes `plugin check` on its own demo data unchanged.

use crate::support;

use serde_json::Value;
use std::time::Instant;

#[test]
fn a_new_plugin_builds_out_of_tree_and_passes_the_check() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(
        !tmp.path().starts_with(support::root()),
        "the temporary folder must lie outside the repository"
    );
    let dir = tmp.path().join("brain-mask");
    let out = support::run_amat_host(&[
        "plugin",
        "new",
        "brain-mask",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let steps = String::from_utf8_lossy(&out.stdout);
    assert!(
        steps.contains("cargo build --release --target wasm32-wasip2"),
        "{steps}"
    );
    for f in [
        "Cargo.toml",
        "Cargo.lock",
        "README.md",
        "src/lib.rs",
        "demo/spec.toml",
        "demo/run.toml",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let sdk = support::root().join("plugin-sdk").canonicalize().unwrap();
    assert!(
        manifest.contains(&format!("path = \"{}\"", sdk.display())),
        "{manifest}"
    );

    // Again into the same folder: refused, nothing overwritten.
    let again = support::amat_host()
        .args([
            "plugin",
            "new",
            "brain-mask",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // A target folder shared across runs keeps the compiled dependencies.
    let start = Instant::now();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args(["build", "--offline", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", support::target_dir().join("plugin-new"))
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    eprintln!("built in {:.1} s", start.elapsed().as_secs_f64());
    let wasm = support::target_dir().join("plugin-new/wasm32-wasip2/debug/brain_mask.wasm");

    let out = support::amat_host()
        .current_dir(&dir)
        .args(["plugin", "check", "--json"])
        .arg(&wasm)
        .args([
            "--sample",
            "demo/image.f32",
            "demo/mask.f32",
            "--options",
            r#"{"size": 32}"#,
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report:#}");
    for line in report["checks"].as_array().unwrap() {
        assert_eq!(line["status"], "pass", "{line:#}");
    }
}
