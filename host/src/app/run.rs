//! `amat-host run`: check the config, load plugin and data, train with
//! checkpoints, evaluate, report. Nothing is created on disk until all
//! checks pass, and the run folder appears (by a rename) only once its first
//! checkpoint is complete.
//!
//! Data-parallel (a worker started by `--nproc` or `torchrun`): rank 0
//! reads the command's config (or the run folder it resumes), owns the run
//! folder and writes checkpoints and reports; the others get the config from
//! it, train their part of every batch and leave evaluation to rank 0.

use super::progress::Progress;
use super::run_dir::{RunDir, RunLock, parent_and_name};
use super::session::{Session, effective_config, eval_seed, split_of};
use super::summary;
use crate::attack;
use crate::config::{Method, RunConfig};
use crate::dist::{self, Dist};
use crate::eval::{self, Curve};
use crate::fsio::write_atomic;
use crate::model::DeviceChoice;
use crate::train::checkpoint::{self, CONFIG};
use crate::train::{self, Trainer, preflight};
use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use std::path::PathBuf;

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
    /// Train without the checks of the plugin before training.
    pub skip_checks: bool,
    /// Data-parallel workers: overrides `AMAT_DIST_TIMEOUT` (seconds).
    pub dist_timeout: Option<f64>,
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
    /// This process's rank in a data-parallel run (0 in one process); only
    /// rank 0 evaluates, so other ranks finish with no curve.
    pub rank: usize,
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
    /// Train without the checks of the plugin before training.
    pub skip_checks: bool,
    /// This process's rank of a data-parallel run, and its rank on this
    /// node (its CUDA device); None for one process.
    pub dist: Option<(Dist, usize)>,
}

/// What rank 0 tells the other ranks before training: the run, or why
/// there is none.
#[derive(serde::Serialize, serde::Deserialize)]
enum Start {
    Run { config: String, dir: PathBuf },
    Failed(String),
}

pub fn run(args: &RunArgs) -> Result<Finished> {
    let Some(mut worker) = dist::worker_from_env()? else {
        let (cfg, dir, lock) = resolve(args)?;
        return execute(Job {
            cfg,
            dir,
            resume: args.resume.is_some(),
            stop_after: args.stop_after,
            progress: &Progress::new(),
            epochs_done: None,
            lock,
            skip_checks: args.skip_checks,
            dist: None,
        });
    };
    if let Some(t) = args.dist_timeout {
        worker.rendezvous.timeout = dist::timeout(t)?;
    }
    let mut group = Dist::join(&worker)?;
    let rank = group.rank();
    let (cfg, dir, lock) = if rank == 0 {
        let resolved = resolve(args);
        let start = match &resolved {
            Ok((cfg, dir, _)) => Start::Run {
                config: cfg.to_toml(),
                dir: dir.clone(),
            },
            Err(e) => Start::Failed(format!("{e:#}")),
        };
        group.broadcast_bytes(&serde_json::to_vec(&start)?)?;
        resolved?
    } else {
        let bytes = group.broadcast_bytes(&[])?;
        match serde_json::from_slice(&bytes).context("rank 0's start message")? {
            Start::Run { config, dir } => {
                let cfg = RunConfig::parse(&config, std::path::Path::new("(from rank 0)"))
                    .map_err(anyhow::Error::msg)?;
                (cfg, dir, None)
            }
            Start::Failed(e) => bail!("rank {rank}: rank 0 could not start the run: {e}"),
        }
    };
    execute(Job {
        cfg,
        dir,
        resume: args.resume.is_some(),
        stop_after: args.stop_after,
        progress: &if rank == 0 {
            Progress::new()
        } else {
            Progress::hidden()
        },
        epochs_done: None,
        lock,
        skip_checks: args.skip_checks,
        dist: Some((group, worker.local_rank)),
    })
}

/// The run `args` ask for: its config, its folder and (resuming) the
/// folder's lock.
fn resolve(args: &RunArgs) -> Result<(RunConfig, PathBuf, Option<RunLock>)> {
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
    Ok((cfg, dir, lock))
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
        skip_checks,
        dist,
    } = job;
    cfg.validate().map_err(anyhow::Error::msg)?;
    let rank = dist.as_ref().map_or(0, |(d, _)| d.rank());
    // Only rank 0 owns the run folder.
    let _lock = match (lock, rank) {
        (Some(l), _) => Some(l),
        (None, 0) => {
            let (parent, _) = parent_and_name(&dir)?;
            std::fs::create_dir_all(&parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            Some(RunLock::acquire(&dir)?.0)
        }
        (None, _) => None,
    };
    if rank == 0 && !resume && dir.exists() {
        bail!(
            "run folder {} exists: resume it with --resume {0} or choose another --out",
            dir.display()
        );
    }
    let mut session = Session::open(&cfg)?;
    if let Some((_, local_rank)) = &dist
        && session.device.is_cuda()
    {
        // One GPU per worker on its node, as torchrun's LOCAL_RANK means.
        session.device = tch::Device::Cuda(*local_rank);
    }
    let mut trainer = Trainer::new(
        &cfg,
        &session.plugin,
        session.device,
        session.splits.train.len(),
    )?;
    if let Some(n) = &session.splits.normalization {
        trainer.normalised(n);
    }
    if skip_checks {
        tracing::warn!("the checks before training are skipped (--skip-checks)");
    } else {
        preflight::before_training(
            &mut session.plugin,
            &trainer.model,
            &session.splits.train,
            cfg.train.batch_size,
            session.device,
        )?;
    }
    let mut resumed_after = None;
    let mut run_dir = match (rank, resume) {
        (0, true) => {
            let ckpt = checkpoint::resolve(&dir)?;
            let state = checkpoint::restore(&ckpt, &mut trainer)?;
            tracing::info!("resuming {} after epoch {}", dir.display(), state.epoch);
            resumed_after = Some(state.epoch);
            Some(RunDir::existing(&dir))
        }
        (0, false) => {
            let d = RunDir::stage(&dir)?;
            write_atomic(&d.path().join(CONFIG), cfg.to_toml().as_bytes())?;
            Some(d)
        }
        _ => None,
    };
    if let Some((mut group, _)) = dist {
        group.set_device(session.device);
        trainer.join(group)?;
        if resume {
            resumed_after = Some(trainer.epoch);
        }
    }
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
        if rank == 0 {
            tracing::info!(
                "epoch {}/{}: {msg} ({:.2} s)",
                r.epoch,
                cfg.train.epochs,
                r.seconds
            );
        }
        epochs_bar.set_message(msg);
        epochs_bar.inc(1);
        if let Some(bar) = epochs_done {
            bar.inc(1);
        }
        let stop = stop_after == Some(trainer.epoch);
        if let Some(run_dir) = &mut run_dir {
            train::report::write_epochs(run_dir.path(), &trainer.history)?;
            if trainer.epoch % cfg.run.checkpoint_every == 0
                || trainer.epoch == cfg.train.epochs
                || stop
            {
                checkpoint::save(run_dir.path(), &trainer, task)?;
                run_dir.publish()?;
            }
        }
        if stop && trainer.epoch < cfg.train.epochs {
            batch_bar.finish_and_clear();
            if epochs_done.is_some() {
                epochs_bar.finish_and_clear();
            } else {
                epochs_bar.abandon();
            }
            return Ok(Finished {
                dir: run_dir.map_or(dir, |d| d.path().to_path_buf()),
                curve: None,
                resumed_after,
                rank,
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
    let Some(run_dir) = run_dir else {
        return Ok(Finished {
            dir,
            curve: None,
            resumed_after,
            rank,
        });
    };
    let eval_bar = progress.bar("eval");
    let intensity = session.intensity_note();
    let mut curve = eval::robustness(
        &mut attack::Context::new(&trainer.model, &mut session.plugin, trainer.range),
        split_of(&session.splits, &cfg.eval.split),
        &cfg.eval,
        session.device,
        eval_seed(cfg.run.seed),
        &eval_bar,
    )?;
    curve.intensity = intensity;
    eval_bar.finish_and_clear();
    eval::report::write(run_dir.path(), &curve, &info.metric_names)?;
    let summary = summary::summary(
        &cfg,
        &info.name,
        session.splits.about.as_deref(),
        session.splits.train.len(),
        &trainer.history,
        &curve,
    );
    write_atomic(&run_dir.path().join("summary.md"), summary.as_bytes())?;
    Ok(Finished {
        dir: run_dir.path().to_path_buf(),
        curve: Some(curve),
        resumed_after,
        rank,
    })
}
