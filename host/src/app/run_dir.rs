//! A run folder's life: one writer at a time (a lock beside it), staged
//! under a hidden name until its first checkpoint is whole, then published.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// One writer per run folder: an advisory lock on `.<name>.lock` beside it,
/// held from before the folder is staged (or resumed) until the run ends,
/// when the file is removed. Whoever holds it owns the folder and any
/// `.<name>.partial-*` left by a process killed before its first checkpoint,
/// and removes those.
pub struct RunLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock (the folder's parent must exist) and removes stale
    /// staging folders; returns how many there were.
    pub(super) fn acquire(target: &Path) -> Result<(Self, usize)> {
        let (parent, name) = parent_and_name(target)?;
        let path = parent.join(format!(".{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "run folder {} is in use by another amat-host process (lock {})",
                target.display(),
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        // The holder before us may have removed the file between our open and
        // our lock: then we locked a file no one else will see.
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let ours = file.metadata()?;
            let now = std::fs::metadata(&path).ok();
            if now.is_none_or(|m| (m.dev(), m.ino()) != (ours.dev(), ours.ino())) {
                bail!(
                    "run folder {} was in use by another amat-host process just now (lock {}); try again",
                    target.display(),
                    path.display()
                );
            }
        }
        let stale = partials(&parent, &name);
        for p in &stale {
            tracing::info!(
                "removing {}, left by a run stopped before its first checkpoint",
                p.display()
            );
            let _ = std::fs::remove_dir_all(p);
        }
        Ok((Self { path, _file: file }, stale.len()))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked, so no one locks a file about to vanish.
        let _ = std::fs::remove_file(&self.path);
    }
}

pub(super) fn parent_and_name(target: &Path) -> Result<(PathBuf, String)> {
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .context("the run folder needs a name")?;
    Ok((parent.to_path_buf(), name.to_string()))
}

/// Staging folders of the run folder `name` in `parent`.
fn partials(parent: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!(".{name}.partial-");
    std::fs::read_dir(parent)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// A run folder that exists only under a hidden staging name until
/// `publish` renames it into place; dropped unpublished, it is removed.
pub(super) struct RunDir {
    target: PathBuf,
    current: PathBuf,
    published: bool,
}

impl RunDir {
    pub(super) fn stage(target: &Path) -> Result<Self> {
        let (parent, name) = parent_and_name(target)?;
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let current = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if current.exists() {
            std::fs::remove_dir_all(&current)?;
        }
        std::fs::create_dir(&current)
            .with_context(|| format!("cannot create {}", current.display()))?;
        Ok(Self {
            target: target.to_path_buf(),
            current,
            published: false,
        })
    }

    pub(super) fn existing(dir: &Path) -> Self {
        Self {
            target: dir.to_path_buf(),
            current: dir.to_path_buf(),
            published: true,
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.current
    }

    pub(super) fn publish(&mut self) -> Result<()> {
        if !self.published {
            if self.target.exists() {
                bail!(
                    "{} appeared while this run was starting; the run is left in {}",
                    self.target.display(),
                    self.current.display()
                );
            }
            crate::fsio::rename_durably(&self.current, &self.target)?;
            self.current = self.target.clone();
            self.published = true;
        }
        Ok(())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.current);
        }
    }
}
