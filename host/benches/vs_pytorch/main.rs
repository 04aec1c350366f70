//! amat against the same training written in PyTorch-Python, side by side.
//!
//! Prepares one state (a U-Net trained clean on synthetic disks, or with
//! `--dims 3` spheres in volumes, until most samples are learned, AMAT
//! margins settled by a few AMAT epochs, one batch order, one torch seed),
//! then runs one worker process per implementation from it (`--impls`):
//! amat with the built-in loss, with the segmentation plugin as a native
//! library or as a wasm component, amat with an option (`builtin-rf`: the
//! boundary search by regula falsi, `builtin-bf16`: bf16 compute), and the
//! Python reference (`reference/amat_reference.py`) in its variants
//! (`pytorch`: as first written; `pytorch-fair`: joint forward, fused Adam,
//! amat's allocator settings; `pytorch-compiled`: that under torch.compile;
//! `pytorch-compiled-ro`: mode="reduce-overhead", for GPUs). Rounds are
//! interleaved: in each round every worker times one epoch of each method
//! from the same weights, margins and order; round 0 is a warm-up (it also
//! primes every shape, the joint clean+attacked batch included, and
//! compiles). Medians over rounds are reported as seconds per step, with
//! ratios paired by round, their spread, and each process's peak memory. A
//! scaling sweep (image size, batch size) follows, plotted to `scaling.png`.
//!
//! Run: `bash host/scripts/bench-vs-pytorch.sh` (builds the plugins, then
//! `cargo bench -p amat-host --bench vs_pytorch -- [options]`); `--help` lists
//! the options, `--device cuda` runs everything on the first GPU.

mod plot;
mod worker;

use amat_host::config::{Method, RunConfig};
use amat_host::data::{Dataset, Sample};
use amat_host::model::{DeviceChoice, ModelConfig, NormKind};
use amat_host::plugin::{Plugin, SandboxLimits};
use amat_host::reference::{self, StateInputs};
use amat_host::train::{Trainer, epoch_seed};
use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::ProgressBar;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use tch::{Device, Kind, Tensor};

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
    /// 2: images and amat's 2D U-Net; 3: volumes and its 3D U-Net.
    #[arg(long, default_value_t = 2)]
    dims: usize,
    /// Image side in pixels (volume side in voxels); 64 in 2D, 24 in 3D.
    #[arg(long)]
    size: Option<i64>,
    /// 8 in 2D, 2 in 3D.
    #[arg(long)]
    batch: Option<usize>,
    /// Training samples (one epoch = samples / batch steps); 32 in 2D, 8 in 3D.
    #[arg(long)]
    samples: Option<usize>,
    /// The worker processes, in table order: builtin, native, wasm, amat
    /// options as `builtin-rf` / `builtin-bf16`, and pytorch,
    /// pytorch-fair, pytorch-compiled, pytorch-compiled-ro. Default in 2D:
    /// all but compiled-ro (on a GPU: compiled-ro instead of compiled), and
    /// builtin-bf16 only where the CPU has bf16 units or on a GPU; in 3D:
    /// builtin, pytorch, pytorch-fair.
    #[arg(long, value_delimiter = ',')]
    impls: Vec<String>,
    /// Methods of each round: std, sat, amat (the config's rule, the
    /// authors' `reference`), amat-b (the `boundary` rule and its search).
    #[arg(long, value_delimiter = ',', default_value = "std,sat,amat,amat-b")]
    methods: Vec<String>,
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
    /// Internal: serve as a worker of this kind (builtin | native | wasm,
    /// with options: builtin-rf, builtin-bf16).
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

fn label(kind: &str) -> String {
    let (base, options) = kind.split_once('-').unwrap_or((kind, ""));
    let base = match base {
        "builtin" => "amat, built-in loss",
        "native" => "amat, native plugin",
        "wasm" => "amat, wasm plugin",
        "pytorch" => "PyTorch",
        _ => "amat, built-in loss, baseline build",
    };
    let extra = match options {
        "" if kind == "pytorch" => ", plain",
        "" => "",
        "rf" => ", regula falsi search",
        "bf16" => ", bf16",
        "fair" => ", fair (joint forward, fused Adam, amat's malloc)",
        "compiled" => ", fair + torch.compile",
        "compiled-ro" => ", fair + torch.compile reduce-overhead",
        o => o,
    };
    format!("{base}{extra}")
}

/// Whether the CPU computes in bf16 (AMX or AVX512-BF16, `/proc/cpuinfo`).
fn bf16_hardware() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .split_whitespace()
        .any(|flag| flag == "avx512_bf16" || flag == "amx_bf16")
}

fn is_pytorch(kind: &str) -> bool {
    kind.starts_with("pytorch")
}

/// The implementations `--impls` names, or the default set.
fn implementations(a: &Args, cuda: bool) -> Vec<String> {
    let mut v: Vec<String> = if !a.impls.is_empty() {
        a.impls.clone()
    } else if a.dims == 3 {
        ["builtin", "pytorch", "pytorch-fair"]
            .map(String::from)
            .to_vec()
    } else {
        let compiled = if cuda {
            "pytorch-compiled-ro"
        } else {
            "pytorch-compiled"
        };
        let mut v: Vec<String> = [
            "builtin",
            "native",
            "wasm",
            "builtin-rf",
            "pytorch",
            "pytorch-fair",
            compiled,
        ]
        .map(String::from)
        .to_vec();
        // Without bf16 units bf16 is emulated, over ten times slower: named
        // with --impls only.
        if cuda || bf16_hardware() {
            v.insert(4, "builtin-bf16".into());
        }
        v
    };
    if a.baseline.is_some() {
        v.push("baseline".into());
    }
    v
}

struct Process {
    kind: String,
    /// The worker's first line: threads, and (Python) the machine and versions.
    ready: Value,
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
            ready: Value::Null,
            child,
            stdin,
            stdout,
        };
        p.ready = p.read()?;
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

    /// One epoch of `method`; a worker that does not know the method (an
    /// older baseline build) gives an empty record instead of failing the run.
    fn ask_epoch(&mut self, method: &str) -> Result<Value> {
        match self.ask(json!({ "cmd": "epoch", "method": method })) {
            Err(e) if e.to_string().contains("unknown method") => {
                eprintln!("  {}: {e}", self.kind);
                Ok(Value::Null)
            }
            other => other,
        }
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
/// Sizes with the defaults of the dimensionality: (samples, side, batch).
fn sizes(a: &Args) -> (usize, i64, usize) {
    let (n, side, batch) = if a.dims == 3 { (8, 24, 2) } else { (32, 64, 8) };
    (
        a.samples.unwrap_or(n),
        a.size.unwrap_or(side),
        a.batch.unwrap_or(batch),
    )
}

fn base_config(a: &Args, threads: usize) -> Result<RunConfig> {
    let (samples, size, batch) = sizes(a);
    let text = format!(
        "[run]\nmethod = \"std\"\nthreads = {threads}\n\
         [data.synthetic]\ntrain = {samples}\ntest = 1\nsize = {size}\n\
         [train]\nbatch_size = {batch}\nwarmup_epochs = 0\nepochs = 1000\n\
         [train.attack]\nsteps = {}\n\
         [amat]\neps_max = 2.0\ngrow_epochs = 5\n",
        a.pgd_steps
    );
    let mut cfg = RunConfig::parse(&text, Path::new("vs_pytorch")).map_err(anyhow::Error::msg)?;
    cfg.model = ModelConfig {
        dims: a.dims,
        depth: a.depth,
        width: a.width,
        norm: NormKind::Instance,
        ..ModelConfig::default()
    };
    Ok(cfg)
}

/// `n` volumes of side `size`: a bright ball (class 1) of random centre
/// and radius on a noisy background, the 3D counterpart of the disks.
fn spheres(n: usize, size: i64, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let axis = Tensor::arange(size, (Kind::Float, Device::Cpu));
    let samples = (0..n)
        .map(|i| {
            let s = size as f64;
            let c: Vec<f64> = (0..3).map(|_| rng.gen_range(0.35 * s..0.65 * s)).collect();
            let r = rng.gen_range(0.15 * s..0.3 * s);
            let d2 = (&axis - c[0]).square().view([-1, 1, 1])
                + (&axis - c[1]).square().view([1, -1, 1])
                + (&axis - c[2]).square().view([1, 1, -1]);
            let target = d2.le(r * r).to_kind(Kind::Float);
            let contrast = rng.gen_range(0.4..1.0);
            let noise = Tensor::randn([size, size, size], (Kind::Float, Device::Cpu)) * 0.1;
            let image = (&target * contrast + 0.2 + noise)
                .clamp(0.0, 1.0)
                .unsqueeze(0);
            Sample {
                id: format!("sphere-{i:03}"),
                image,
                target,
            }
        })
        .collect();
    Dataset::new("spheres", samples)
}

/// Pretrains, settles the margins and writes the shared state to `dir`.
/// Returns the time amat takes to assemble one batch (`Dataset::batch`), in seconds.
/// `volumes`: (samples, side) of the 3D bench's spheres; 2D trains on the
/// config's synthetic disks.
fn prepare(
    cfg: &RunConfig,
    device: tch::Device,
    dir: &Path,
    threads: usize,
    volumes: Option<(usize, i64)>,
) -> Result<f64> {
    let mut plugin = Plugin::builtin_segmentation(CLASSES);
    let data3d;
    let splits;
    let train = if let Some((n, side)) = volumes {
        tch::manual_seed(cfg.run.seed as i64);
        data3d = spheres(n, side, cfg.run.seed);
        &data3d
    } else {
        splits = cfg.data.load(&mut plugin)?;
        &splits.train
    };
    let bar = ProgressBar::hidden();
    let with = |m: Method| {
        let mut c = cfg.clone();
        c.run.method = Some(m);
        c
    };
    let mut pre = Trainer::new(&with(Method::Std), &plugin, device, train.len())?;
    let tau = pre.judge.tau;
    let most = if cfg.model.dims == 3 { 20 } else { 60 };
    for _ in 0..most {
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

/// glibc's allocator settings amat applies to itself (`train::memory`),
/// given to the fair Python variants through glibc's environment.
const MALLOC_ENV: [(&str, &str); 2] = [
    ("MALLOC_MMAP_THRESHOLD_", "33554432"),
    ("MALLOC_TRIM_THRESHOLD_", "2147483647"),
];

fn spawn_all(
    a: &Args,
    impls: &[String],
    device: tch::Device,
    state: &Path,
    python: &Path,
) -> Result<Vec<Process>> {
    let device = if device.is_cuda() { "cuda" } else { "cpu" };
    impls
        .iter()
        .map(|kind| {
            let mut c = if kind == "baseline" {
                let mut c = Command::new(a.baseline.as_ref().expect("baseline"));
                c.args(["--worker", "builtin"]);
                c
            } else if is_pytorch(kind) {
                let variant = kind.strip_prefix("pytorch-").unwrap_or("plain");
                let mut c = Command::new(python);
                c.arg(reference::script())
                    .args(["worker", "--variant", variant]);
                if variant != "plain" {
                    c.envs(MALLOC_ENV);
                }
                c
            } else {
                let mut c = Command::new(std::env::current_exe()?);
                c.args(["--worker", kind]);
                c
            };
            c.arg("--state").arg(state).args(["--device", device]);
            println!("  starting {kind}");
            Process::spawn(kind, c)
        })
        .collect()
}

fn main() -> Result<()> {
    let a = Args::parse();
    let device = a.device.resolve().map_err(anyhow::Error::msg)?;
    if let Some(spec) = &a.worker {
        let state = a.state.as_ref().context("--worker needs --state")?;
        let mut parts = spec.split('-');
        let kind = parts.next().unwrap_or("builtin");
        let options: Vec<&str> = parts.collect();
        return worker::run(load_plugin(kind)?, state, device, &options);
    }
    if a.dims != 2 && a.dims != 3 {
        bail!("--dims {} : 2 or 3", a.dims);
    }
    let threads = a.threads.max(1);
    tch::set_num_threads(threads as i32);
    let python = match &a.python {
        Some(p) => p.clone(),
        None => reference::python()
            .map_err(|why| anyhow::anyhow!("the PyTorch reference cannot run: {why}"))?,
    };
    let out = a.out.clone().unwrap_or_else(|| {
        target_dir().join(if a.dims == 3 {
            "vs-pytorch-3d"
        } else {
            "vs-pytorch"
        })
    });
    let state = out.join("state");
    let cfg = base_config(&a, threads)?;
    let (samples, size, batch) = sizes(&a);
    let steps = samples.div_ceil(batch);
    let impls = implementations(&a, device.is_cuda());
    let methods: Vec<&str> = a.methods.iter().map(String::as_str).collect();
    for m in &methods {
        worker::parse_method(m)?;
    }
    let shape = vec![size.to_string(); a.dims].join("x");
    println!(
        "amat vs PyTorch on {device:?}, {threads} threads each: {samples} {} {shape}, batch {batch} ({steps} steps/epoch), \
         {}D U-Net depth {} width {} (instance norm), PGD {} {} steps, AMAT search {} steps",
        if a.dims == 3 { "volumes" } else { "images" },
        a.dims,
        a.depth,
        a.width,
        cfg.train.attack.norm,
        a.pgd_steps,
        cfg.amat.search_steps
    );
    for kind in ["native", "wasm"] {
        if impls.iter().any(|i| i.starts_with(kind)) {
            println!("  {kind} plugin: {}", plugin_file(kind)?.display());
        }
    }
    let volumes = (a.dims == 3).then_some((samples, size));
    let batch_seconds = prepare(&cfg, device, &state, threads, volumes)?;
    println!(
        "  batch assembly (Dataset::batch): {:.1} us per batch",
        1e6 * batch_seconds
    );
    let started = std::time::Instant::now();
    let mut procs = spawn_all(&a, &impls, device, &state, &python)?;
    let machine = procs
        .iter()
        .find(|p| is_pytorch(&p.kind))
        .map(|p| p.ready.clone())
        .unwrap_or(Value::Null);

    let n = procs.len();
    let mut m = Measured::new(&impls, &methods);
    for round in 0..=a.rounds {
        for (k, method) in methods.iter().enumerate() {
            for j in 0..n {
                let i = (j + round) % n;
                let r = procs[i].ask_epoch(method)?;
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
            "\n  round {round}{} done ({:.0} s)",
            if round == 0 { " (warm-up)" } else { "" },
            started.elapsed().as_secs_f64()
        );
    }

    // Peak memory of the timed rounds, before the sweep's larger shapes.
    let mut rss = Vec::new();
    for p in &mut procs {
        rss.push(
            p.ask(json!({ "cmd": "rss" }))?["peak_rss_mib"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
    }

    // The scaling sweep: amat (wasm plugin, else the first amat worker)
    // against the fair eager reference (compiling each shape would time the compiler).
    let mut scaling = Vec::new();
    let amat_i = impls
        .iter()
        .position(|k| k == "wasm")
        .or_else(|| impls.iter().position(|k| !is_pytorch(k)));
    let ref_i = impls
        .iter()
        .position(|k| k == "pytorch-fair")
        .or_else(|| impls.iter().position(|k| is_pytorch(k)));
    if let (false, Some(amat_i), Some(ref_i)) = (a.no_scale || a.dims == 3, amat_i, ref_i) {
        let mut points: Vec<(i64, usize)> =
            a.scale_sizes.iter().map(|&s| (s, a.scale_batch)).collect();
        for &b in &a.scale_batches {
            if !points.contains(&(size, b)) {
                points.push((size, b));
            }
        }
        for (size, batch) in points {
            let mut row = json!({ "size": size, "batch": batch });
            for (i, key) in [(amat_i, "wasm"), (ref_i, "pytorch")] {
                let p = &mut procs[i];
                // One untimed SAT epoch primes the kernels for the new
                // shapes: the batch, and the clean and attacked halves together.
                p.ask(json!({ "cmd": "scale", "method": "sat", "size": size, "batch": batch, "reps": 1, "seed": 1 }))?;
                for (method, reps) in [("std", 3), ("sat", 1)] {
                    let r = p.ask(json!({ "cmd": "scale", "method": method, "size": size, "batch": batch, "reps": reps, "seed": 1 }))?;
                    for clock in ["seconds", "cpu_seconds"] {
                        let v: Vec<f64> = r[clock]
                            .as_array()
                            .map_or(vec![], |v| v.iter().filter_map(Value::as_f64).collect());
                        let suffix = if clock == "seconds" { "_wall" } else { "" };
                        row[format!("{key}_{method}{suffix}")] = json!(median(v));
                    }
                }
            }
            println!("  scaling {size}x{size} batch {batch}: {row}");
            scaling.push(row);
        }
    }

    for p in &mut procs {
        p.ask(json!({ "cmd": "quit" }))?;
        p.child.wait()?;
    }
    let seconds = started.elapsed().as_secs_f64();

    let results = json!({
        "device": format!("{device:?}"), "machine": machine, "threads": threads, "dims": a.dims,
        "samples": samples, "size": size, "batch": batch,
        "steps_per_epoch": steps, "depth": a.depth, "width": a.width, "pgd_steps": a.pgd_steps, "rounds": a.rounds,
        "implementations": &impls, "methods": &methods,
        "epoch_seconds": m.wall, "epoch_cpu_seconds": m.cpu, "minor_faults_per_epoch": m.faults,
        "search_forwards": m.forwards, "clean_loss": m.clean, "peak_rss_mib": rss,
        "batch_assembly_seconds": batch_seconds, "scaling": scaling, "bench_seconds": seconds,
    });
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let mut table = describe(&machine, threads, &a, (samples, &shape, batch), seconds);
    table += &m.report(steps, &rss, device.is_cuda());
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
            size,
            &caption,
        )?;
        println!("scaling plot: {}", out.join("scaling.png").display());
    }
    println!("results: {}", out.join("results.json").display());
    Ok(())
}

/// The machine and the run, as the first lines of results.md.
fn describe(
    machine: &Value,
    threads: usize,
    a: &Args,
    (samples, shape, batch): (usize, &str, usize),
    seconds: f64,
) -> String {
    let f = |k: &str| machine[k].as_str().unwrap_or("unknown").to_string();
    let device = match machine["gpu"].as_str() {
        Some(gpu) => format!("GPU {gpu}"),
        None => format!("CPU {}", f("cpu")),
    };
    format!(
        "Machine: {device}, {} cores; torch {}, oneDNN {}, Python {}; {threads} intra-op thread(s) per process.\n\
         Run: {samples} samples {shape}, batch {batch}, {}D U-Net depth {} width {}, PGD {} steps; \
         {} timed rounds after a warm-up; {:.0} s.\n\n",
        machine["cores"].as_u64().unwrap_or(0),
        f("torch"),
        f("onednn"),
        f("python"),
        a.dims,
        a.depth,
        a.width,
        a.pgd_steps,
        a.rounds,
        seconds
    )
}

/// What the rounds measured, per implementation and method.
struct Measured {
    impls: Vec<String>,
    methods: Vec<String>,
    /// [impl][method] = wall-clock seconds per timed epoch.
    wall: Vec<Vec<Vec<f64>>>,
    /// [impl][method] = CPU seconds of the worker process per timed epoch.
    cpu: Vec<Vec<Vec<f64>>>,
    /// [impl][method] = minor page faults per timed epoch.
    faults: Vec<Vec<Vec<f64>>>,
    /// [impl][method] = mean clean loss of each timed epoch (a check that
    /// every implementation trained the same).
    clean: Vec<Vec<Vec<f64>>>,
    /// [impl][method] = boundary-search forwards per timed epoch.
    forwards: Vec<Vec<Vec<u64>>>,
}

/// The median over rounds of the paired ratio a[r] / b[r]: epochs of one
/// round run back to back, so a pair shares the machine's load at the time.
fn paired(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| x / y).collect())
}

/// The median and the range over rounds of the paired ratio, as `0.93 (0.90–0.95)`.
fn paired_spread(a: &[f64], b: &[f64]) -> String {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if r.is_empty() || !lo.is_finite() {
        return "–".into();
    }
    format!("{:.3} ({lo:.3}–{hi:.3})", median(r))
}

impl Measured {
    fn new(impls: &[String], methods: &[&str]) -> Self {
        let grid = || vec![vec![Vec::new(); methods.len()]; impls.len()];
        Self {
            impls: impls.to_vec(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            wall: grid(),
            cpu: grid(),
            faults: grid(),
            clean: grid(),
            forwards: vec![vec![Vec::new(); methods.len()]; impls.len()],
        }
    }

    fn record(&mut self, i: usize, m: usize, r: &Value) {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        self.wall[i][m].push(f("seconds"));
        self.cpu[i][m].push(f("cpu_seconds"));
        self.faults[i][m].push(f("minor_faults"));
        self.clean[i][m].push(f("clean_loss"));
        self.forwards[i][m].push(r["search_forwards"].as_u64().unwrap_or(0));
    }

    fn method(&self, name: &str) -> Option<usize> {
        self.methods.iter().position(|m| m == name)
    }

    /// The tables of BENCHMARKS.md, in Markdown. Ratios use CPU time on the
    /// CPU, wall-clock time on a GPU.
    fn report(&self, steps: usize, rss: &[f64], cuda: bool) -> String {
        let n = self.impls.len();
        let per_step = |t: &Vec<f64>| median(t.clone()) / steps as f64;
        let clock = if cuda { &self.wall } else { &self.cpu };
        let unit = if cuda { "wall-clock" } else { "CPU time" };
        let names: Vec<String> = self.methods.iter().map(|m| m.to_uppercase()).collect();
        let mut s = String::new();
        // Seconds per step, both clocks.
        s += &format!(
            "Seconds per step, median of rounds ({unit} first, then wall-clock):\n\n| implementation | {} | {} | search forwards / epoch ({}) | page faults / SAT step | peak RSS MiB |\n",
            names.join(" | "),
            names
                .iter()
                .map(|m| format!("{m} wall"))
                .collect::<Vec<_>>()
                .join(" | "),
            self.methods
                .iter()
                .filter(|m| m.starts_with("amat"))
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        s += &format!("|---|{}---:|---:|---:|\n", "---:|".repeat(2 * names.len()));
        let sat = self.method("sat");
        for i in 0..n {
            let cells = |t: &Vec<Vec<f64>>| {
                t.iter()
                    .map(|v| format!("{:.4}", per_step(v)))
                    .collect::<Vec<_>>()
                    .join(" | ")
            };
            let forwards = (0..self.methods.len())
                .filter(|&k| self.methods[k].starts_with("amat"))
                .map(|k| {
                    self.forwards[i][k]
                        .first()
                        .copied()
                        .unwrap_or(0)
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join(", ");
            s += &format!(
                "| {} | {} | {} | {forwards} | {:.0} | {:.0} |\n",
                label(&self.impls[i]),
                cells(&clock[i]),
                cells(&self.wall[i]),
                sat.map_or(f64::NAN, |k| median(self.faults[i][k].clone())
                    / steps as f64),
                rss[i]
            );
        }
        // amat against each PyTorch variant, and against the fastest one per method.
        let refs: Vec<usize> = (0..n).filter(|&i| is_pytorch(&self.impls[i])).collect();
        let amats: Vec<usize> = (0..n).filter(|&i| !is_pytorch(&self.impls[i])).collect();
        if !refs.is_empty() {
            let fastest: Vec<usize> = (0..self.methods.len())
                .map(|k| {
                    *refs
                        .iter()
                        .min_by(|&&x, &&y| {
                            median(clock[x][k].clone()).total_cmp(&median(clock[y][k].clone()))
                        })
                        .expect("a reference")
                })
                .collect();
            s += &format!(
                "\namat / PyTorch per step ({unit}, median of the ratios paired by round, (min–max) over rounds):\n\n| amat | against | {} |\n|---|---|{}\n",
                names.join(" | "),
                "---:|".repeat(names.len())
            );
            for &i in &amats {
                for &r in &refs {
                    let cells: Vec<String> = (0..self.methods.len())
                        .map(|k| paired_spread(&clock[i][k], &clock[r][k]))
                        .collect();
                    s += &format!(
                        "| {} | {} | {} |\n",
                        label(&self.impls[i]),
                        label(&self.impls[r]),
                        cells.join(" | ")
                    );
                }
                let cells: Vec<String> = (0..self.methods.len())
                    .map(|k| paired_spread(&clock[i][k], &clock[fastest[k]][k]))
                    .collect();
                s += &format!(
                    "| {} | **the fastest PyTorch per method** ({}) | {} |\n",
                    label(&self.impls[i]),
                    fastest
                        .iter()
                        .map(|&r| self.impls[r].as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    cells.join(" | ")
                );
            }
        }
        // Each amat variant against the built-in loss, default options.
        if let (Some(base), true) = (
            self.impls.iter().position(|k| k == "builtin"),
            amats.len() > 1,
        ) {
            s += &format!(
                "\nEach amat variant / amat built-in loss ({unit}, paired):\n\n| variant | {} |\n|---|{}\n",
                names.join(" | "),
                "---:|".repeat(names.len())
            );
            for &i in amats.iter().filter(|&&i| i != base) {
                let cells: Vec<String> = (0..self.methods.len())
                    .map(|k| paired_spread(&clock[i][k], &clock[base][k]))
                    .collect();
                s += &format!("| {} | {} |\n", label(&self.impls[i]), cells.join(" | "));
            }
        }
        // AMAT over SAT per epoch, and the clean loss each trained to.
        if let Some(sat) = sat {
            s += &format!(
                "\nAMAT / SAT per epoch ({unit}, paired), and the mean clean loss of the timed epochs:\n\n| implementation | {} | clean loss {} |\n|---|{}\n",
                self.methods
                    .iter()
                    .filter(|m| m.starts_with("amat"))
                    .map(|m| format!("{} / SAT", m.to_uppercase()))
                    .collect::<Vec<_>>()
                    .join(" | "),
                names.join(" / "),
                "---:|".repeat(
                    self.methods
                        .iter()
                        .filter(|m| m.starts_with("amat"))
                        .count()
                        + 1
                )
            );
            for (i, times) in clock.iter().enumerate() {
                let ratios: Vec<String> = (0..self.methods.len())
                    .filter(|&k| self.methods[k].starts_with("amat"))
                    .map(|k| format!("{:.3}", paired(&times[k], &times[sat])))
                    .collect();
                let losses: Vec<String> = self.clean[i]
                    .iter()
                    .map(|v| format!("{:.4}", median(v.clone())))
                    .collect();
                s += &format!(
                    "| {} | {} | {} |\n",
                    label(&self.impls[i]),
                    ratios.join(" | "),
                    losses.join(" / ")
                );
            }
        }
        s
    }
}
