//! The native ABI at its edges: a plugin that hands the host a wrong tensor
//! handle (one lent to an earlier call, one it dropped, one never issued, one
//! past 32 bits) gets an error naming it, never undefined behaviour, and the
//! handles a call was lent are released when it ends; a library that cannot
//! be loaded is reported with the loader's own message and its path.

use crate::support;

use amat_host::plugin::{CallError, Plugin, SandboxLimits};
use tch::{Device, Kind, Tensor};

/// A prediction and target of `b` samples; the `wrong-handles` build picks
/// its misbehaviour by the batch size.
fn batch(b: i64) -> (Tensor, Tensor) {
    let pred = Tensor::zeros([b, 8, 2, 2], (Kind::Float, Device::Cpu));
    let target = Tensor::zeros([b, 2, 2], (Kind::Float, Device::Cpu));
    (pred, target)
}

#[test]
fn wrong_handles_through_the_native_abi_are_errors_not_crashes() {
    let path = support::hostile::hostile_native_plugin("wrong-handles");
    let mut plugin = Plugin::load(&path, &SandboxLimits::default()).unwrap();
    let (p, t) = batch(1);
    // Keeps the handle of the prediction lent to this call.
    let _kept = plugin.loss(&p, &t).unwrap();
    for (b, what, says) in [
        (2, "a handle lent to an earlier call", "unknown or stale"),
        (3, "a handle the plugin dropped", "unknown or stale"),
        (
            4,
            "a handle never issued",
            "tensor handle 4294967288 is unknown",
        ),
        (5, "a handle past 32 bits", "was never issued"),
    ] {
        let (p, t) = batch(b);
        let err = plugin.loss(&p, &t).unwrap_err();
        assert!(
            matches!(err.error, Some(CallError::HostOp(_))),
            "{what}: {err}"
        );
        assert!(err.message.contains(says), "{what}: {err}");
        assert!(err.message.contains("exp"), "{what}: names the op: {err}");
    }
    // The failed calls left nothing behind: the plugin still works.
    let (p, t) = batch(1);
    let loss = plugin.loss(&p, &t).unwrap();
    assert_eq!(loss.size(), [1]);
}

#[test]
fn a_library_that_cannot_be_loaded_shows_the_loaders_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-library.so");
    std::fs::write(&path, "this is text, not a shared library\n").unwrap();
    let err = Plugin::load(&path, &SandboxLimits::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot load library"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    // dlopen's own words, not a paraphrase.
    #[cfg(target_os = "linux")]
    assert!(
        err.contains("invalid ELF header") || err.contains("file too short"),
        "{err}"
    );
}
