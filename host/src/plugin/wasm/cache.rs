//! The compiled-component cache: components compiled once, kept as sealed
//! `.cwasm` files (the component's digest and the compiled file's beside
//! it) in a folder only this user can write.

use super::engine::{EngineKey, engine};
use crate::fsio::write_atomic;
use crate::plugin::SandboxLimits;
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components are kept: `AMAT_CACHE_DIR`, else the user's cache.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("AMAT_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("amat").join("components"))
}

/// Whether a component came from the on-disk cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompileSource {
    Compiled,
    Cached,
}

/// Compiles a component for the default limits' engine, or loads it compiled
/// from `cache` (keyed by the bytes and the engine's settings), storing it
/// there atomically.
pub fn compile(bytes: &[u8], cache: Option<&Path>) -> Result<(Component, CompileSource)> {
    compile_for(
        &engine(EngineKey::of(&SandboxLimits::default())),
        bytes,
        cache,
    )
}

pub(super) fn compile_for(
    engine: &Engine,
    bytes: &[u8],
    cache: Option<&Path>,
) -> Result<(Component, CompileSource)> {
    check_magic(bytes)?;
    let digest = format!("{:x}", Sha256::digest(bytes));
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        format!("{digest}-{:016x}", h.finish())
    };
    let cached = cache
        .filter(|d| private_dir(d))
        .map(|d| d.join(format!("{key}.cwasm")));
    if let Some(path) = &cached
        && let Some(compiled) = verified(path, &digest)
    {
        // SAFETY: these are the bytes whose digest `verified` checked against
        // the one written beside them when this process's engine serialized
        // the component of `digest`, in a folder only this user can write.
        if let Ok(c) = unsafe { Component::deserialize(engine, &compiled) } {
            return Ok((c, CompileSource::Cached));
        }
    }
    let component = Component::new(engine, bytes)
        .map_err(anyhow::Error::from)
        .context("not a valid wasm component")?;
    if let Some(path) = cached {
        let compiled = component.serialize()?;
        let seal = format!("{digest} {:x}\n", Sha256::digest(&compiled));
        // The seal last: a compiled file without its seal is never trusted.
        let _ = write_atomic(&path, &compiled)
            .and_then(|()| write_atomic(&seal_path(&path), seal.as_bytes()));
    }
    Ok((component, CompileSource::Compiled))
}

/// `<key>.cwasm.sha256`: the component's digest and the compiled file's.
fn seal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".sha256");
    PathBuf::from(name)
}

/// The compiled file's bytes when its seal names this component and matches
/// them: a compiled file copied from another component, or changed on disk,
/// is compiled again instead of deserialized (which runs native code).
fn verified(path: &Path, digest: &str) -> Option<Vec<u8>> {
    let seal = std::fs::read_to_string(seal_path(path)).ok()?;
    let (component, compiled) = seal.trim().split_once(' ')?;
    let bytes = std::fs::read(path).ok()?;
    (component == digest && compiled == format!("{:x}", Sha256::digest(&bytes))).then_some(bytes)
}

/// Whether `dir` (created if missing) is a folder only this user can write:
/// another user able to write there could plant both a compiled file and its
/// seal. Elsewhere than Unix, the seal alone.
fn private_dir(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        use std::sync::atomic::{AtomicBool, Ordering};
        static WARNED: AtomicBool = AtomicBool::new(false);
        if std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .is_err()
        {
            return false;
        }
        let Ok(meta) = std::fs::symlink_metadata(dir) else {
            return false;
        };
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc_geteuid() };
        let private = meta.is_dir() && meta.uid() == me && meta.mode() & 0o022 == 0;
        if !private && !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "component cache {} is writable by others or not yours: not used",
                dir.display()
            );
        }
        private
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).is_ok()
}

#[cfg(unix)]
unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn check_magic(bytes: &[u8]) -> Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!("not a WebAssembly file");
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        bail!("a core wasm module, not a component: build the plugin with --target wasm32-wasip2");
    }
    Ok(())
}
