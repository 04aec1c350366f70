//! `amat-host study STUDY.toml`: a grid of runs (arms x seeds), each an
//! ordinary run folder under `<out>/<arm>/seed-<s>/`, trained and evaluated by
//! the run machinery, resumed when unfinished and skipped when finished;
//! then one report over seeds (`report`).

pub mod report;
pub mod spec;

pub use spec::{Arm, Cell, Study, StudyOptions};

use crate::app::{Job, Progress, execute};
use crate::config::RunConfig;
use crate::train::checkpoint;
use anyhow::{Context, Result, bail};
use indicatif::ProgressStyle;

/// Where a run of the grid stands on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No folder yet.
    New,
    /// A folder with a checkpoint after this epoch, no final curve.
    Partial(usize),
    /// Evaluated: `robustness.json` is there.
    Finished,
}

/// The state of `cell`, after checking that its folder was made with the
/// config the study gives it now.
pub fn state(study: &Study, cell: &Cell) -> Result<State> {
    let dir = &cell.dir;
    if !dir.exists() {
        return Ok(State::New);
    }
    let arm = &study.arms[cell.arm].name;
    let at = format!("arm `{arm}`, seed {}: {}", cell.seed, dir.display());
    let theirs = RunConfig::read(&dir.join(checkpoint::CONFIG))
        .map_err(|e| anyhow::anyhow!("{at}: not a run folder ({e})"))?;
    if theirs.hash() != cell.cfg.hash() {
        bail!(
            "{at} was run with another config than the study gives it now (did the study or its base change?); move the folder away to run it again"
        );
    }
    if dir.join("robustness.json").is_file() {
        return Ok(State::Finished);
    }
    let ckpt = checkpoint::resolve(dir).with_context(|| at.clone())?;
    let epoch = checkpoint::read_state(&ckpt)
        .with_context(|| at.clone())?
        .epoch;
    Ok(State::Partial(epoch))
}

/// What `run` did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub skipped: usize,
    pub trained: usize,
    /// Runs left unfinished (by `stop_after`).
    pub stopped: usize,
}

impl Outcome {
    pub fn complete(&self) -> bool {
        self.stopped == 0
    }
}

/// Runs every unfinished cell in order; `stop_after` stops each run it
/// trains once that many epochs are done (with a checkpoint).
pub fn run(study: &Study, stop_after: Option<usize>, skip_checks: bool) -> Result<Outcome> {
    let states = study
        .cells
        .iter()
        .map(|c| state(study, c))
        .collect::<Result<Vec<_>>>()?;
    let epochs = |c: &Cell| c.cfg.train.epochs as u64;
    let total: u64 = study.cells.iter().map(epochs).sum();
    let done: u64 = study
        .cells
        .iter()
        .zip(&states)
        .map(|(c, s)| match s {
            State::New => 0,
            State::Partial(e) => *e as u64,
            State::Finished => epochs(c),
        })
        .sum();
    let progress = Progress::new();
    let overall = progress.bar("study");
    overall.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {pos}/{len} epochs of all runs, ETA {eta} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    overall.set_length(total);
    overall.set_position(done);
    overall.reset_eta();
    let n = study.cells.len();
    let mut outcome = Outcome::default();
    for (k, (cell, st)) in study.cells.iter().zip(&states).enumerate() {
        let arm = &study.arms[cell.arm].name;
        let label = format!("[{}/{n}] {arm}, seed {}", k + 1, cell.seed);
        if *st == State::Finished {
            outcome.skipped += 1;
            continue;
        }
        overall.set_message(label.clone());
        let started = std::time::Instant::now();
        let finished = execute(Job {
            cfg: cell.cfg.clone(),
            dir: cell.dir.clone(),
            resume: *st != State::New,
            stop_after,
            progress: &progress,
            epochs_done: Some(&overall),
            lock: None,
            skip_checks,
            dist: None,
        })
        .with_context(|| format!("study {}: {label}", study.name))?;
        let from = finished
            .resumed_after
            .map(|e| format!(", resumed after epoch {e}"))
            .unwrap_or_default();
        if finished.curve.is_some() {
            outcome.trained += 1;
            progress.println(&format!(
                "{label}: finished in {:.1} s{from} -> {}",
                started.elapsed().as_secs_f64(),
                cell.dir.display()
            ));
        } else {
            outcome.stopped += 1;
            progress.println(&format!("{label}: stopped{from} -> {}", cell.dir.display()));
        }
    }
    overall.finish_and_clear();
    Ok(outcome)
}

/// Keeps a copy of the study file beside its report.
pub fn keep_spec(study: &Study) -> Result<()> {
    std::fs::create_dir_all(&study.out)
        .with_context(|| format!("cannot create {}", study.out.display()))?;
    let text = std::fs::read(&study.file)
        .with_context(|| format!("cannot read {}", study.file.display()))?;
    crate::fsio::write_atomic(&study.out.join("study.toml"), &text)
}
