//! Files that are whole or absent: every file the host writes for a user
//! (checkpoints, manifests, caches, reports) goes through here, so a crash or
//! a full disk never leaves a half-written file under the final name.

use anyhow::{Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path`: a temporary file in the same folder, fsync of
/// the file, a rename, then fsync of the folder so the rename itself lasts.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f =
            fs::File::create(tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))
    })
}

/// Like [`write_atomic`] for writers that want a path (safetensors, images):
/// `write` fills the temporary file, which then replaces `path`.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = folder_of(path);
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = temp_sibling(path);
    let written = write(&tmp).and_then(|()| sync_file(&tmp));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    rename_durably(&tmp, path)
}

/// Renames `from` to `to` (files or folders in the same folder) and fsyncs
/// the folder.
pub fn rename_durably(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))?;
    sync_dir(folder_of(to))
}

/// Flushes a file's data to disk.
pub fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot flush {}", path.display()))
}

/// Flushes a folder's entries (a rename or a new file in it) to disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    // Windows cannot open a folder as a file; its renames are durable enough.
    if cfg!(unix) {
        fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot flush the folder {}", dir.display()))?;
    }
    Ok(())
}

/// `.STEM.tmp-PID-N.EXT` beside `path`: unique per process and call, hidden,
/// in the same folder so the final rename never crosses a file system, and
/// with the same extension for writers that pick a format by it (plotters).
pub fn temp_sibling(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    folder_of(path).join(format!(".{stem}.tmp-{}-{n}{ext}", std::process::id()))
}

fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |tmp| {
            fs::write(tmp, b"half")?;
            anyhow::bail!("disk full")
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn temporaries_never_collide() {
        let p = Path::new("out/report.md");
        assert_ne!(temp_sibling(p), temp_sibling(p));
        let t = temp_sibling(p);
        assert_eq!(t.parent(), Some(Path::new("out")));
        assert_eq!(t.extension(), Some(std::ffi::OsStr::new("md")));
    }
}
