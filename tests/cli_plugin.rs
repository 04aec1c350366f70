//! `amat-host plugin info` on real plugins and on files that are not.

use crate::support;

use std::path::Path;

fn info(path: &Path) -> (bool, String, String) {
    let out = support::amat_host()
        .args(["plugin", "info"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A failure is exactly one line on stderr that names the file and the reason.
fn assert_one_line_error(path: &Path, reason: &str) {
    let (ok, _, err) = info(path);
    assert!(!ok, "{} must be refused", path.display());
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(lines[0].contains(&path.display().to_string()), "{err}");
    assert!(lines[0].contains(reason), "expected `{reason}` in: {err}");
}

#[test]
fn info_describes_both_builds() {
    for (path, kind) in [
        (
            support::wasm_plugin("segmentation"),
            "wasm component (sandboxed)",
        ),
        (
            support::native_plugin("segmentation"),
            "native library (trusted, not sandboxed)",
        ),
    ] {
        let (ok, out, err) = info(&path);
        assert!(ok, "{err}");
        assert!(out.contains("task:            segmentation"), "{out}");
        assert!(out.contains(kind), "{out}");
        assert!(out.contains("output channels: 8"), "{out}");
    }
}

#[test]
fn info_refuses_what_is_not_a_plugin() {
    let dir = tempfile::tempdir().unwrap();

    assert_one_line_error(&dir.path().join("missing.wasm"), "no such file");

    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "not wasm at all").unwrap();
    assert_one_line_error(&text, "not a WebAssembly file");

    let lib = dir.path().join("libnothing.so");
    std::fs::write(&lib, b"\x7fELF garbage").unwrap();
    assert_one_line_error(&lib, "cannot load library");

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, wat::parse_str("(module)").unwrap()).unwrap();
    assert_one_line_error(&core, "a core wasm module, not a component");

    // A valid component of another world: it exports a function, but not ours.
    let other = dir.path().join("other-world.wasm");
    let wat = r#"(component
        (core module $m (func (export "f") (result i32) i32.const 7))
        (core instance $i (instantiate $m))
        (func (export "answer") (result s32) (canon lift (core func $i "f"))))"#;
    std::fs::write(&other, wat::parse_str(wat).unwrap()).unwrap();
    assert_one_line_error(&other, "a component of another world");
}
