//! `amat-host run`: check the config, load plugin and data, train with
//! checkpoints, evaluate, report. Nothing is created on disk until all
//! checks pass, and the run folder appears (by a rename) only once its first
//! checkpoint is complete.

use super::checkpoint::{self, CONFIG, write_atomic};
use super::config::{Method, RunConfig};
use super::{Trainer, report};
use crate::data::Splits;
use crate::eval::{self, Curve};
use crate::model::DeviceChoice;
use crate::plugin::Plugin;
use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use tch::Device;

/// What `amat-host run` was asked.
#[derive(Clone, Debug, Default)]
pub struct RunArgs {
    pub config: Option<PathBuf>,
    pub plugin: Option<PathBuf>,
    pub method: Option<Method>,
    pub out: Option<PathBuf>,
    pub device: Option<DeviceChoice>,
    pub resume: Option<PathBuf>,
    /// Stop cleanly (with a checkpoint) once this many epochs are done.
    pub stop_after: Option<usize>,
}

/// Progress bars on stderr, hidden when stderr is not a terminal.
pub struct Progress {
    multi: MultiProgress,
}

impl Progress {
    pub fn new() -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
        }
    }

    /// A line above the bars (on stderr directly when they are hidden).
    pub fn println(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    pub fn bar(&self, prefix: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(prefix.to_string());
        bar
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

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
    fn acquire(target: &Path) -> Result<(Self, usize)> {
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

fn parent_and_name(target: &Path) -> Result<(PathBuf, String)> {
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
struct RunDir {
    target: PathBuf,
    current: PathBuf,
    published: bool,
}

impl RunDir {
    fn stage(target: &Path) -> Result<Self> {
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

    fn existing(dir: &Path) -> Self {
        Self {
            target: dir.to_path_buf(),
            current: dir.to_path_buf(),
            published: true,
        }
    }

    fn path(&self) -> &Path {
        &self.current
    }

    fn publish(&mut self) -> Result<()> {
        if !self.published {
            if self.target.exists() {
                bail!(
                    "{} appeared while this run was starting; the run is left in {}",
                    self.target.display(),
                    self.current.display()
                );
            }
            std::fs::rename(&self.current, &self.target).with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    self.current.display(),
                    self.target.display()
                )
            })?;
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

/// A relative path in a config file is relative to that file's folder.
fn relative_to(config: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Reads a config file and applies the command line's overrides; the plugin
/// path becomes absolute so the run folder's copy stays usable.
pub fn effective_config(
    path: &Path,
    plugin: Option<&Path>,
    method: Option<Method>,
    device: Option<DeviceChoice>,
) -> Result<RunConfig> {
    let mut cfg = RunConfig::read(path).map_err(anyhow::Error::msg)?;
    resolve_paths(&mut cfg, path);
    if let Some(p) = plugin {
        cfg.run.plugin = Some(absolute(p));
    }
    if let Some(m) = method {
        cfg.run.method = Some(m);
    }
    if let Some(d) = device {
        cfg.run.device = d;
    }
    Ok(cfg)
}

/// Makes the config's relative paths (plugin, data manifest) absolute,
/// relative to the folder of the file `origin` they were read from.
pub fn resolve_paths(cfg: &mut RunConfig, origin: &Path) {
    cfg.run.plugin = cfg
        .run
        .plugin
        .take()
        .map(|p| absolute(&relative_to(origin, &p)));
    if let crate::data::source::DataSource::Manifest(m) = &mut cfg.data {
        m.manifest = absolute(&relative_to(origin, &m.manifest));
    }
}

/// Plugin, data and device of a validated config.
pub struct Session {
    pub plugin: Plugin,
    pub splits: Splits,
    pub device: Device,
}

impl Session {
    pub fn open(cfg: &RunConfig) -> Result<Self> {
        let path = cfg.run.plugin.as_ref().context("no plugin")?;
        let mut plugin = Plugin::load(path, &cfg.sandbox)?;
        let splits = cfg.data.load(&mut plugin)?;
        let channels = plugin.info().input_channels as i64;
        for set in [&splits.train, &splits.val, &splits.test] {
            if let Some(s) = set
                .samples
                .iter()
                .find(|s| s.image.size().first() != Some(&channels))
            {
                bail!(
                    "sample `{}` has image shape {:?}; the task `{}` expects {} channel(s) first",
                    s.id,
                    s.image.size(),
                    plugin.info().name,
                    channels
                );
            }
        }
        if splits.train.is_empty() {
            bail!("the training split is empty");
        }
        if split_of(&splits, &cfg.eval.split).is_empty() {
            bail!(
                "eval.split = `{}`: that split holds no sample, so the evaluation after training would have none",
                cfg.eval.split
            );
        }
        if let Some(s) = splits.train.samples.first() {
            let size = s.image.size();
            cfg.model
                .check_input(size[1], size[2])
                .map_err(anyhow::Error::msg)?;
        }
        if cfg.run.threads > 0 {
            tch::set_num_threads(cfg.run.threads as i32);
        }
        let device = cfg.run.device.resolve().map_err(anyhow::Error::msg)?;
        Ok(Self {
            plugin,
            splits,
            device,
        })
    }
}

/// The split called `name` (train, val, test).
pub fn split_of<'a>(splits: &'a Splits, name: &str) -> &'a crate::data::Dataset {
    match name {
        "train" => &splits.train,
        "val" => &splits.val,
        _ => &splits.test,
    }
}

/// The torch seed of the final evaluation.
pub fn eval_seed(seed: u64) -> i64 {
    super::epoch_seed(seed, usize::MAX)
}

fn default_out(cfg: &RunConfig) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("runs").join(format!("{}-{secs}", cfg.method()))
}

/// Outcome of `run`.
#[derive(Debug)]
pub struct Finished {
    pub dir: PathBuf,
    /// None when the run stopped early (`stop_after`).
    pub curve: Option<Curve>,
    /// The epoch a resumed run continued after.
    pub resumed_after: Option<usize>,
}

/// One run to carry out: a config (paths resolved) and its folder.
pub struct Job<'a> {
    pub cfg: RunConfig,
    pub dir: PathBuf,
    /// Continue from the folder's newest checkpoint; else create the folder.
    pub resume: bool,
    /// Stop cleanly (with a checkpoint) once this many epochs are done.
    pub stop_after: Option<usize>,
    /// Where the run's bars go (a study shares one display across runs).
    pub progress: &'a Progress,
    /// Advanced by one per trained epoch (a study's overall bar).
    pub epochs_done: Option<&'a ProgressBar>,
    /// The run folder's lock when the caller took it already (`--resume`).
    pub lock: Option<RunLock>,
}

pub fn run(args: &RunArgs) -> Result<Finished> {
    let mut lock = None;
    let (cfg, dir) = match &args.resume {
        Some(dir) => {
            if args.config.is_some() {
                bail!("--resume continues with the run's own config.toml; leave out --config");
            }
            let (parent, _) = parent_and_name(dir)?;
            if !parent.is_dir() {
                bail!("{}: no such run folder", dir.display());
            }
            let (l, stale) = RunLock::acquire(dir)?;
            lock = Some(l);
            if !dir.join(CONFIG).is_file() {
                if stale > 0 {
                    bail!(
                        "{} has no checkpoint to resume (the run stopped before its first one); \
                         start it again with the command that started it (--config ... --out {0})",
                        dir.display()
                    );
                }
                if !dir.exists() {
                    bail!("{}: no such run folder", dir.display());
                }
                bail!("{}: not a run folder (no {CONFIG})", dir.display());
            }
            let cfg =
                effective_config(&dir.join(CONFIG), args.plugin.as_deref(), None, args.device)?;
            if let Some(m) = args.method.filter(|&m| Some(m) != cfg.run.method) {
                bail!("{} is a {} run, not {m}", dir.display(), cfg.method());
            }
            (cfg, dir.clone())
        }
        None => {
            let path = args
                .config
                .as_ref()
                .context("no config: pass --config FILE")?;
            let cfg = effective_config(path, args.plugin.as_deref(), args.method, args.device)?;
            cfg.validate().map_err(anyhow::Error::msg)?;
            let dir = args.out.clone().unwrap_or_else(|| default_out(&cfg));
            if dir.exists() {
                bail!(
                    "run folder {} exists: resume it with --resume {0} or choose another --out",
                    dir.display()
                );
            }
            (cfg, dir)
        }
    };
    execute(Job {
        cfg,
        dir,
        resume: args.resume.is_some(),
        stop_after: args.stop_after,
        progress: &Progress::new(),
        epochs_done: None,
        lock,
    })
}

/// Trains (or continues) one run to its end or `stop_after`, then evaluates
/// it and writes its report.
pub fn execute(job: Job) -> Result<Finished> {
    let Job {
        cfg,
        dir,
        resume,
        stop_after,
        progress,
        epochs_done,
        lock,
    } = job;
    cfg.validate().map_err(anyhow::Error::msg)?;
    let _lock = match lock {
        Some(l) => l,
        None => {
            let (parent, _) = parent_and_name(&dir)?;
            std::fs::create_dir_all(&parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            RunLock::acquire(&dir)?.0
        }
    };
    if !resume && dir.exists() {
        bail!(
            "run folder {} exists: resume it with --resume {0} or choose another --out",
            dir.display()
        );
    }
    let mut session = Session::open(&cfg)?;
    let mut trainer = Trainer::new(
        &cfg,
        &session.plugin,
        session.device,
        session.splits.train.len(),
    )?;
    crate::plugin::preflight::before_training(
        &mut session.plugin,
        &trainer.model,
        &session.splits.train,
        cfg.train.batch_size,
        session.device,
    )?;
    let mut resumed_after = None;
    let mut run_dir = if resume {
        let ckpt = checkpoint::resolve(&dir)?;
        let state = checkpoint::restore(&ckpt, &mut trainer)?;
        tracing::info!("resuming {} after epoch {}", dir.display(), state.epoch);
        resumed_after = Some(state.epoch);
        RunDir::existing(&dir)
    } else {
        let d = RunDir::stage(&dir)?;
        write_atomic(&d.path().join(CONFIG), cfg.to_toml().as_bytes())?;
        d
    };
    let info = session.plugin.info().clone();
    let task = (info.name.as_str(), info.version.as_str());
    let epochs_bar = progress.bar("epochs");
    epochs_bar.set_length(cfg.train.epochs as u64);
    epochs_bar.set_position(trainer.epoch as u64);
    let batch_bar = progress.bar("batches");
    while trainer.epoch < cfg.train.epochs {
        let r = trainer.train_epoch(&mut session.plugin, &session.splits.train, &batch_bar)?;
        let msg = format!(
            "clean {:.4}{} eps {:.3}/{:.3}/{:.3}",
            r.clean_loss,
            r.adv_loss
                .map(|a| format!(" adv {a:.4}"))
                .unwrap_or_default(),
            r.eps_min,
            r.eps_median,
            r.eps_max
        );
        tracing::info!(
            "epoch {}/{}: {msg} ({:.2} s)",
            r.epoch,
            cfg.train.epochs,
            r.seconds
        );
        epochs_bar.set_message(msg);
        epochs_bar.inc(1);
        if let Some(bar) = epochs_done {
            bar.inc(1);
        }
        report::write_epochs(run_dir.path(), &trainer.history)?;
        let stop = stop_after == Some(trainer.epoch);
        if trainer.epoch % cfg.run.checkpoint_every == 0
            || trainer.epoch == cfg.train.epochs
            || stop
        {
            checkpoint::save(run_dir.path(), &trainer, task)?;
            run_dir.publish()?;
        }
        if stop && trainer.epoch < cfg.train.epochs {
            batch_bar.finish_and_clear();
            if epochs_done.is_some() {
                epochs_bar.finish_and_clear();
            } else {
                epochs_bar.abandon();
            }
            return Ok(Finished {
                dir: run_dir.path().to_path_buf(),
                curve: None,
                resumed_after,
            });
        }
    }
    batch_bar.finish_and_clear();
    // A study's runs share one display, so theirs do not stay.
    if epochs_done.is_some() {
        epochs_bar.finish_and_clear();
    } else {
        epochs_bar.finish();
    }
    let eval_bar = progress.bar("eval");
    let curve = eval::robustness(
        &trainer.model,
        &mut session.plugin,
        split_of(&session.splits, &cfg.eval.split),
        &cfg.eval,
        trainer.range,
        session.device,
        eval_seed(cfg.run.seed),
        &eval_bar,
    )?;
    eval_bar.finish_and_clear();
    eval::report::write(run_dir.path(), &curve, &info.metric_names)?;
    let summary = report::summary(
        &cfg,
        &info.name,
        session.splits.train.len(),
        &trainer.history,
        &curve,
    );
    write_atomic(&run_dir.path().join("summary.md"), summary.as_bytes())?;
    Ok(Finished {
        dir: run_dir.path().to_path_buf(),
        curve: Some(curve),
        resumed_after,
    })
}
