//! amat against the same training written in PyTorch-Python, side by side.
//!
//! Prepares one state (a U-Net trained clean on synthetic disks until most
//! samples are learned, AMAT margins settled by a few AMAT epochs, one batch
//! order, one torch seed), then runs four worker processes from it: amat with
//! the built-in loss, with the segmentation plugin as a native library, with
//! the same plugin as a wasm component, and the Python reference
//! (`reference/amat_reference.py`). Rounds are interleaved: in each round
//! every worker times one epoch of STD, SAT and AMAT from the same weights,
//! margins and order; round 0 is a warm-up. The best round of each is
//! reported as seconds per step (medians go to results.json), with the ratios of BENCHMARKS.md and each process's
//! peak memory. A scaling sweep (image size, batch size) follows, plotted to
//! `scaling.png`.
//!
//! Run: `bash host/scripts/bench-vs-pytorch.sh` (builds the plugins, then
//! `cargo bench -p amat-host --bench vs_pytorch -- [options]`); `--help` lists
//! the options, `--device cuda` runs everything on the first GPU.

mod plot;
mod worker;

use amat_host::config::{Method, RunConfig};
use amat_host::model::{DeviceChoice, ModelConfig, NormKind};
use amat_host::plugin::{Plugin, SandboxLimits};
use amat_host::reference::{self, StateInputs};
use amat_host::train::{Trainer, epoch_seed};
use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

#[derive(Parser, Debug, Clone)]
#[command(
    about = "amat vs PyTorch-Python: STD / SAT / AMAT step times, plugin overhead, memory, scaling"
)]
struct Args {
    /// cpu or cuda (the first GPU) for every implementation.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceChoice,
    /// Intra-op threads of libtorch, the same for every implementation. One by
    /// default: with several, the four worker processes' OpenMP threads fight
    /// for the cores of a shared machine and the timings measure the scheduler.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed rounds (after one warm-up round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    size: i64,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Training samples (one epoch = samples / batch steps).
    #[arg(long, default_value_t = 32)]
    samples: usize,
    /// U-Net levels below the input.
    #[arg(long, default_value_t = 2)]
    depth: usize,
    /// U-Net channels of the first level.
    #[arg(long, default_value_t = 8)]
    width: i64,
    /// PGD steps in training.
    #[arg(long, default_value_t = 10)]
    pgd_steps: usize,
    /// Image sides of the scaling sweep (at batch --scale-batch).
    #[arg(long, value_delimiter = ',', default_value = "64,128,256")]
    scale_sizes: Vec<i64>,
    #[arg(long, default_value_t = 4)]
    scale_batch: usize,
    /// Batch sizes of the scaling sweep (at image side --size).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16")]
    scale_batches: Vec<usize>,
    /// Skip the scaling sweep.
    #[arg(long)]
    no_scale: bool,
    /// Where the state, results.json, results.md and scaling.png go.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Python with torch and numpy for the reference ($AMAT_PYTHON, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Another build of this bench (e.g. before a change): its built-in-loss
    /// worker runs as a fifth implementation, interleaved with the others.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Internal: serve as a worker of this kind (builtin | native | wasm).
    #[arg(long, hide = true)]
    worker: Option<String>,
    #[arg(long, hide = true)]
    state: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The segmentation plugin of `kind`, release build preferred.
fn plugin_file(kind: &str) -> Result<PathBuf> {
    let t = target_dir();
    let candidates = match kind {
        "native" => [
            t.join("release/libamat_segmentation.so"),
            t.join("debug/libamat_segmentation.so"),
        ],
        _ => [
            t.join("wasm32-wasip2/release/amat_segmentation.wasm"),
            t.join("wasm32-wasip2/debug/amat_segmentation.wasm"),
        ],
    };
    candidates
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "no {kind} segmentation plugin: run `bash host/scripts/build-plugins.sh release`"
            )
        })
}

fn load_plugin(kind: &str) -> Result<Plugin> {
    Ok(match kind {
        "builtin" => Plugin::builtin_segmentation(CLASSES),
        _ => Plugin::load(plugin_file(kind)?, &SandboxLimits::default())?,
    })
}

/// Output channels of the segmentation task (plugins/segmentation `CLASSES`).
const CLASSES: u32 = 8;

/// The implementations, in the order of the tables (then `baseline` if given).
const IMPLS: [&str; 5] = ["builtin", "native", "wasm", "pytorch", "baseline"];
const METHODS: [&str; 3] = ["std", "sat", "amat"];

fn label(kind: &str) -> &'static str {
    match kind {
        "builtin" => "amat, built-in loss",
        "native" => "amat, native plugin",
        "wasm" => "amat, wasm plugin",
        "pytorch" => "PyTorch-Python",
        _ => "amat, built-in loss, baseline build",
    }
}

struct Process {
    kind: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Process {
    fn spawn(kind: &str, mut cmd: Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start the {kind} worker"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut p = Self {
            kind: kind.into(),
            child,
            stdin,
            stdout,
        };
        p.read()?;
        Ok(p)
    }

    /// The next JSON line the worker writes (other lines are passed through).
    fn read(&mut self) -> Result<Value> {
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("the {} worker exited early", self.kind);
            }
            match serde_json::from_str::<Value>(&line) {
                Ok(v) if v.is_object() => {
                    if let Some(e) = v.get("error") {
                        bail!("the {} worker: {}", self.kind, e);
                    }
                    return Ok(v);
                }
                _ => eprint!("[{}] {line}", self.kind),
            }
        }
    }

    fn ask(&mut self, cmd: Value) -> Result<Value> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        self.read()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// The run config every implementation trains with.
fn base_config(a: &Args, threads: usize) -> Result<RunConfig> {
    let text = format!(
        "[run]\nmethod = \"std\"\nthreads = {threads}\n\
         [data.synthetic]\ntrain = {}\ntest = 1\nsize = {}\n\
         [train]\nbatch_size = {}\nwarmup_epochs = 0\nepochs = 1000\n\
         [train.attack]\nsteps = {}\n\
         [amat]\neps_max = 2.0\ngrow_epochs = 5\n",
        a.samples, a.size, a.batch, a.pgd_steps
    );
    let mut cfg = RunConfig::parse(&text, Path::new("vs_pytorch")).map_err(anyhow::Error::msg)?;
    cfg.model = ModelConfig {
        depth: a.depth,
        width: a.width,
        norm: NormKind::Instance,
        ..ModelConfig::default()
    };
    Ok(cfg)
}

/// Pretrains, settles the margins and writes the shared state to `dir`.
/// Returns the time amat takes to assemble one batch (`Dataset::batch`), in seconds.
fn prepare(cfg: &RunConfig, device: tch::Device, dir: &Path, threads: usize) -> Result<f64> {
    let mut plugin = Plugin::builtin_segmentation(CLASSES);
    let splits = cfg.data.load(&mut plugin)?;
    let train = &splits.train;
    let bar = ProgressBar::hidden();
    let with = |m: Method| {
        let mut c = cfg.clone();
        c.run.method = Some(m);
        c
    };
    let mut pre = Trainer::new(&with(Method::Std), &plugin, device, train.len())?;
    let tau = pre.judge.tau;
    for _ in 0..60 {
        if pre.train_epoch(&mut plugin, train, &bar)?.clean_loss < 0.7 * tau {
            break;
        }
    }
    let mut settle = Trainer::new(&with(Method::Amat), &plugin, device, train.len())?;
    settle.vs.copy(&pre.vs)?;
    for _ in 0..2 {
        settle.train_epoch(&mut plugin, train, &bar)?;
    }
    let margins = settle.margins.as_ref().expect("AMAT").values.clone();
    let (lo, med, hi) = settle.margins.as_ref().expect("AMAT").summary();
    println!(
        "state: {} clean epochs (clean loss {:.4}, tau {tau}), margins min {lo:.3} median {med:.3} max {hi:.3}",
        pre.epoch,
        pre.history.last().map_or(f64::NAN, |r| r.clean_loss)
    );
    // The order and torch seed a fresh trainer's first epoch uses.
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.run.seed));
    let inputs = StateInputs {
        info: plugin.info(),
        weights: &pre.vs,
        data: train,
        margins: &margins,
        order: &order,
        torch_seed: epoch_seed(cfg.run.seed, 0),
        threads,
    };
    reference::write_state(dir, cfg, &inputs)?;
    std::fs::write(dir.join("run.toml"), cfg.to_toml())?;
    // Data loading on the training path: the batches of one epoch, assembled.
    let start = std::time::Instant::now();
    let mut batches = 0;
    for idx in order.chunks(cfg.train.batch_size) {
        let _batch = train.batch(idx, device).unwrap();
        batches += 1;
    }
    Ok(start.elapsed().as_secs_f64() / batches as f64)
}

fn spawn_all(a: &Args, device: tch::Device, state: &Path, python: &Path) -> Result<Vec<Process>> {
    let device = if device.is_cuda() { "cuda" } else { "cpu" };
    let impls = if a.baseline.is_some() {
        &IMPLS[..]
    } else {
        &IMPLS[..4]
    };
    impls
        .iter()
        .map(|&kind| {
            let cmd = if kind == "baseline" {
                let mut c = Command::new(a.baseline.as_ref().expect("baseline"));
                c.args(["--worker", "builtin", "--state"])
                    .arg(state)
                    .args(["--device", device]);
                c
            } else if kind == "pytorch" {
                let mut c = Command::new(python);
                c.arg(reference::script())
                    .args(["worker", "--state"])
                    .arg(state)
                    .args(["--device", device]);
                c
            } else {
                let mut c = Command::new(std::env::current_exe()?);
                c.args(["--worker", kind, "--state"])
                    .arg(state)
                    .args(["--device", device]);
                c
            };
            Process::spawn(kind, cmd)
        })
        .collect()
}

fn main() -> Result<()> {
    let a = Args::parse();
    let device = a.device.resolve().map_err(anyhow::Error::msg)?;
    if let Some(kind) = &a.worker {
        let state = a.state.as_ref().context("--worker needs --state")?;
        return worker::run(load_plugin(kind)?, state, device);
    }
    let threads = a.threads.max(1);
    tch::set_num_threads(threads as i32);
    let python = match &a.python {
        Some(p) => p.clone(),
        None => reference::python()
            .map_err(|why| anyhow::anyhow!("the PyTorch reference cannot run: {why}"))?,
    };
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("vs-pytorch"));
    let state = out.join("state");
    let cfg = base_config(&a, threads)?;
    let steps = a.samples.div_ceil(a.batch);
    println!(
        "amat vs PyTorch-Python on {device:?}, {threads} threads each: {} images {}x{}, batch {} ({steps} steps/epoch), \
         U-Net depth {} width {} (instance norm), PGD {} {} steps, AMAT search {} steps",
        a.samples,
        a.size,
        a.size,
        a.batch,
        a.depth,
        a.width,
        cfg.train.attack.norm,
        a.pgd_steps,
        cfg.amat.search_steps
    );
    for kind in ["native", "wasm"] {
        println!("  {kind} plugin: {}", plugin_file(kind)?.display());
    }
    let batch_seconds = prepare(&cfg, device, &state, threads)?;
    println!(
        "  batch assembly (Dataset::batch): {:.1} us per batch",
        1e6 * batch_seconds
    );
    let mut procs = spawn_all(&a, device, &state, &python)?;

    let n = procs.len();
    let mut m = Measured::new(n);
    for round in 0..=a.rounds {
        for (k, method) in METHODS.iter().enumerate() {
            for j in 0..n {
                let i = (j + round) % n;
                let r = procs[i].ask(json!({ "cmd": "epoch", "method": method }))?;
                print!(
                    " {}/{method} {:.2}s",
                    procs[i].kind,
                    r["seconds"].as_f64().unwrap_or(f64::NAN)
                );
                std::io::stdout().flush()?;
                if round > 0 {
                    m.record(i, k, &r);
                }
            }
        }
        println!(
            "\n  round {round}{} done",
            if round == 0 { " (warm-up)" } else { "" }
        );
    }

    let mut scaling = Vec::new();
    if !a.no_scale {
        let mut points: Vec<(i64, usize)> =
            a.scale_sizes.iter().map(|&s| (s, a.scale_batch)).collect();
        for &b in &a.scale_batches {
            if !points.contains(&(a.size, b)) {
                points.push((a.size, b));
            }
        }
        for (size, batch) in points {
            let mut row = json!({ "size": size, "batch": batch });
            for i in [2usize, 3] {
                let p = &mut procs[i];
                // One untimed STD epoch primes the kernels for the new shapes.
                p.ask(json!({ "cmd": "scale", "method": "std", "size": size, "batch": batch, "reps": 1, "seed": 1 }))?;
                for (method, reps) in [("std", 3), ("sat", 1)] {
                    let r = p.ask(json!({ "cmd": "scale", "method": method, "size": size, "batch": batch, "reps": reps, "seed": 1 }))?;
                    for key in ["seconds", "cpu_seconds"] {
                        let v: Vec<f64> = r[key]
                            .as_array()
                            .map_or(vec![], |v| v.iter().filter_map(Value::as_f64).collect());
                        let suffix = if key == "seconds" { "_wall" } else { "" };
                        row[format!("{}_{method}{suffix}", IMPLS[i])] = json!(median(v));
                    }
                }
            }
            println!("  scaling {size}x{size} batch {batch}: {row}");
            scaling.push(row);
        }
    }

    let mut rss = Vec::new();
    for p in &mut procs {
        rss.push(
            p.ask(json!({ "cmd": "quit" }))?["peak_rss_mib"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
        p.child.wait()?;
    }

    let results = json!({
        "device": format!("{device:?}"), "threads": threads, "samples": a.samples, "size": a.size, "batch": a.batch,
        "steps_per_epoch": steps, "depth": a.depth, "width": a.width, "pgd_steps": a.pgd_steps, "rounds": a.rounds,
        "implementations": &IMPLS[..n], "methods": METHODS,
        "epoch_seconds": m.wall, "epoch_cpu_seconds": m.cpu, "minor_faults_per_epoch": m.faults,
        "search_forwards": m.forwards, "peak_rss_mib": rss, "batch_assembly_seconds": batch_seconds,
        "scaling": scaling,
    });
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let table = m.report(steps, &rss, device.is_cuda());
    std::fs::write(out.join("results.md"), &table)?;
    println!("\n{table}");
    if !scaling.is_empty() {
        // Wall-clock time on a GPU; CPU time of the process on the CPU (see BENCHMARKS.md).
        let (what, suffix) = if device.is_cuda() {
            ("wall-clock", "_wall")
        } else {
            ("CPU", "")
        };
        let caption = format!("{what} seconds per training step, {device:?}, {threads} threads");
        plot::scaling(
            &out.join("scaling.png"),
            &scaling,
            suffix,
            a.scale_batch,
            a.size,
            &caption,
        )?;
        println!("scaling plot: {}", out.join("scaling.png").display());
    }
    println!("results: {}", out.join("results.json").display());
    Ok(())
}

/// What the rounds measured, per implementation and method.
struct Measured {
    /// [impl][method] = wall-clock seconds per timed epoch.
    wall: Vec<Vec<Vec<f64>>>,
    /// [impl][method] = CPU seconds of the worker process per timed epoch.
    cpu: Vec<Vec<Vec<f64>>>,
    /// [impl][method] = minor page faults per timed epoch.
    faults: Vec<Vec<Vec<f64>>>,
    /// [impl] = AMAT boundary-search forwards per timed epoch.
    forwards: Vec<Vec<u64>>,
}

/// The median over rounds of the paired ratio a[r] / b[r]: epochs of one
/// round run back to back, so a pair shares the machine's load at the time.
fn paired(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| x / y).collect())
}

impl Measured {
    fn new(n: usize) -> Self {
        let grid = || vec![vec![Vec::new(); METHODS.len()]; n];
        Self {
            wall: grid(),
            cpu: grid(),
            faults: grid(),
            forwards: vec![Vec::new(); n],
        }
    }

    fn record(&mut self, i: usize, m: usize, r: &Value) {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        self.wall[i][m].push(f("seconds"));
        self.cpu[i][m].push(f("cpu_seconds"));
        self.faults[i][m].push(f("minor_faults"));
        if METHODS[m] == "amat" {
            self.forwards[i].push(r["search_forwards"].as_u64().unwrap_or(0));
        }
    }

    /// The tables of BENCHMARKS.md, in Markdown. Ratios use CPU time on the
    /// CPU, wall-clock time on a GPU.
    fn report(&self, steps: usize, rss: &[f64], cuda: bool) -> String {
        let n = self.wall.len();
        let per_step = |t: &Vec<f64>| median(t.clone()) / steps as f64;
        let clock = if cuda { &self.wall } else { &self.cpu };
        let unit = if cuda { "wall-clock" } else { "CPU time" };
        let mut s = String::new();
        s += "| implementation | STD s/step | SAT s/step | AMAT s/step | STD | SAT | AMAT | AMAT/SAT per epoch | search forwards / AMAT epoch | page faults / SAT step | peak RSS MiB |\n";
        s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        s += "| (median of rounds) | wall | wall | wall | CPU | CPU | CPU | | | | |\n";
        for i in 0..n {
            let (w, c) = (&self.wall[i], &self.cpu[i]);
            s += &format!(
                "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.3} | {} | {:.0} | {:.0} |\n",
                label(IMPLS[i]),
                per_step(&w[0]),
                per_step(&w[1]),
                per_step(&w[2]),
                per_step(&c[0]),
                per_step(&c[1]),
                per_step(&c[2]),
                paired(&clock[i][2], &clock[i][1]),
                self.forwards[i].first().copied().unwrap_or(0),
                median(self.faults[i][1].clone()) / steps as f64,
                rss[i]
            );
        }
        s += &format!(
            "\n| amat / PyTorch per step ({unit}, paired by round) | STD | SAT (target <= 0.90) | AMAT (target <= 0.90) |\n|---|---:|---:|---:|\n"
        );
        for i in 0..3 {
            let r = |m: usize| paired(&clock[i][m], &clock[3][m]);
            s += &format!(
                "| {} | {:.3} | {:.3} | {:.3} |\n",
                label(IMPLS[i]),
                r(0),
                r(1),
                r(2)
            );
        }
        s += &format!(
            "\n| plugin overhead vs built-in loss, % of a step ({unit}, paired) | STD | SAT | AMAT |\n|---|---:|---:|---:|\n"
        );
        for i in 1..3 {
            let pct = |m: usize| 100.0 * (paired(&clock[i][m], &clock[0][m]) - 1.0);
            s += &format!(
                "| {} (target wasm <= 2 %) | {:+.1} % | {:+.1} % | {:+.1} % |\n",
                label(IMPLS[i]),
                pct(0),
                pct(1),
                pct(2)
            );
        }
        if n > 4 {
            let r = |m: usize| paired(&clock[0][m], &clock[4][m]);
            s += &format!(
                "\n| built-in loss: this build / baseline build ({unit}, paired) | STD | SAT | AMAT |\n|---|---:|---:|---:|\n"
            );
            s += &format!("| ratio | {:.3} | {:.3} | {:.3} |\n", r(0), r(1), r(2));
        }
        s
    }
}
