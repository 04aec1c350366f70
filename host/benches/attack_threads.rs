//! Samples of one batch attacked in parallel across CPU threads (issue 16),
//! against libtorch's own intra-op threads: PGD of one batch (the
//! vs_pytorch bench's 64x64 U-Net, depth 2, width 8, instance norm, batch 8,
//! 10 steps, L2, built-in loss) on `AMAT_BENCH_THREADS` cores (2)
//!
//! - serial: the whole batch in one thread, libtorch intra-op threads = cores;
//! - split: the batch cut into `cores` parts, each attacked at once by its
//!   own Rust thread (`std::thread::scope`) with intra-op threads = 1;
//! - one thread: the whole batch with intra-op threads = 1 (the scale both
//!   are measured against).
//!
//! The attack runs in evaluation mode and PGD takes the gradient with
//! respect to the noise only (`Tensor::run_backward` on the noise), so the
//! threads read the weights and never write a `.grad`. Rounds are
//! interleaved (the order rotates each round); the report gives the
//! medians of wall-clock time, the ratios paired by round with their
//! quartiles, and the machine's load average before and after.
//!
//! `tch::set_num_threads` is libtorch's `at::set_num_threads`: it stores a
//! process-wide count and sets the calling thread's OpenMP count; any other
//! thread takes the stored count when it first runs a parallel op (and keeps
//! it). So the split arm sets 1 before spawning its threads, and the serial
//! arm sets `cores` again; each thread reports what it ran with.
//!
//! On a machine with more runnable threads than cores, libgomp's default
//! spin-waiting barriers make intra-op threads many times slower (each
//! parallel op waits for a descheduled thread): run it with and without
//! `OMP_WAIT_POLICY=PASSIVE` (read once, at start), and note the load.
//!
//! Run: `cargo bench -p amat-host --bench attack_threads`
//! Sizes: AMAT_BENCH_ROUNDS (21), AMAT_BENCH_SIZE (64), AMAT_BENCH_BATCH (8),
//! AMAT_BENCH_THREADS (2).

#[path = "common/mod.rs"]
mod common;

use amat_host::attack::{self, Context, PgdConfig, Range};
use amat_host::config::RunConfig;
use amat_host::model::{ModelConfig, Net, NormKind};
use amat_host::plugin::Plugin;
use std::path::Path;
use std::time::Instant;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Output channels of the built-in segmentation task (as in vs_pytorch).
const CLASSES: u32 = 8;

/// The network, shared read-only by the attacking threads. libtorch tensors
/// may be read from several threads at once; `tch::Tensor` is not marked
/// `Sync` only because it also has mutating methods, none of which an
/// evaluation-mode forward calls.
struct Shared<'a>(&'a Net);
// SAFETY: see above: the threads only run `forward_t(_, false)`.
unsafe impl Sync for Shared<'_> {}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

struct Bench<'a> {
    net: &'a Net,
    x: Tensor,
    y: Tensor,
    eps: Tensor,
    pgd: PgdConfig,
    range: Range,
    cores: usize,
}

impl Bench<'_> {
    /// The whole batch in this thread with `threads` intra-op threads.
    fn serial(&self, threads: usize) -> Tensor {
        tch::set_num_threads(threads as i32);
        let mut plugin = Plugin::builtin_segmentation(CLASSES);
        let mut ctx = Context::new(self.net, &mut plugin, self.range);
        attack::pgd(&mut ctx, &self.x, &self.y, &self.eps, &self.pgd).unwrap()
    }

    /// The batch in `cores` parts, one thread each, one intra-op thread
    /// each. Returns the noise and the threads' intra-op counts.
    fn split(&self) -> (Tensor, Vec<i32>) {
        tch::set_num_threads(1);
        let parts = self.cores as i64;
        let shared = Shared(self.net);
        let (xs, ys, es) = (
            self.x.chunk(parts, 0),
            self.y.chunk(parts, 0),
            self.eps.chunk(parts, 0),
        );
        let out: Vec<(Tensor, i32)> = std::thread::scope(|s| {
            let handles: Vec<_> = xs
                .into_iter()
                .zip(ys)
                .zip(es)
                .map(|((x, y), e)| {
                    let (shared, pgd, range) = (&shared, &self.pgd, self.range);
                    s.spawn(move || {
                        let mut plugin = Plugin::builtin_segmentation(CLASSES);
                        let mut ctx = Context::new(shared.0, &mut plugin, range);
                        let d = attack::pgd(&mut ctx, &x, &y, &e, pgd).unwrap();
                        (d, tch::get_num_threads())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let (deltas, threads): (Vec<Tensor>, Vec<i32>) = out.into_iter().unzip();
        (Tensor::cat(&deltas, 0), threads)
    }
}

fn main() {
    let (rounds, size, batch, cores) = (
        common::env("AMAT_BENCH_ROUNDS", 21),
        common::env("AMAT_BENCH_SIZE", 64),
        common::env("AMAT_BENCH_BATCH", 8),
        common::env("AMAT_BENCH_THREADS", 2),
    );
    let text = format!(
        "[run]\nmethod = \"sat\"\n\
         [data.synthetic]\ntrain = {batch}\ntest = 1\nsize = {size}\n\
         [train.attack]\nsteps = 10\n"
    );
    let mut cfg = RunConfig::parse(&text, Path::new("attack_threads")).unwrap();
    cfg.model = ModelConfig {
        depth: 2,
        width: 8,
        norm: NormKind::Instance,
        ..ModelConfig::default()
    };
    let mut plugin = Plugin::builtin_segmentation(CLASSES);
    let train = cfg.data.load(&mut plugin).unwrap().train;
    let info = plugin.info().clone();
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let net = cfg.network(&vs.root(), &info);
    let (x, y) = train
        .batch(&(0..batch).collect::<Vec<_>>(), Device::Cpu)
        .unwrap();
    // Levels spread over the range AMAT's margins take.
    let eps = Tensor::linspace(0.5, 2.0, batch as i64, (Kind::Float, Device::Cpu));
    let b = Bench {
        net: &net,
        x,
        y,
        eps,
        pgd: cfg.train.attack.clone(),
        range: Range {
            min: info.intensity_min as f64,
            max: info.intensity_max as f64,
        },
        cores,
    };
    println!(
        "attack threads: {batch} images {size}x{size}, U-Net depth 2 width 8 (instance norm), \
         PGD {} steps L2, built-in loss, {cores} cores; {rounds} rounds after one warm-up; \
         OMP_WAIT_POLICY={}; load average before: {}",
        b.pgd.steps,
        std::env::var("OMP_WAIT_POLICY").unwrap_or_else(|_| "(unset)".into()),
        load_average()
    );

    // The same noise both ways (from zero: a random start draws differently per part).
    let zero = Bench {
        pgd: PgdConfig {
            random_start: false,
            ..b.pgd.clone()
        },
        x: b.x.shallow_clone(),
        y: b.y.shallow_clone(),
        eps: b.eps.shallow_clone(),
        ..b
    };
    let (parallel, threads) = zero.split();
    let serial = zero.serial(cores);
    let diff = (&parallel - &serial).abs().max().double_value(&[]);
    let scale = serial.abs().max().double_value(&[]);
    println!(
        "noise from zero, split against serial: max |difference| {diff:.3e} (largest |noise| {scale:.3}); \
         intra-op threads in the split threads: {threads:?}"
    );

    // Arms: 0 serial on `cores` threads, 1 split, 2 serial on one thread.
    let names = [
        format!("serial, intra-op threads = {cores}"),
        format!("split in {cores}, intra-op threads = 1 each"),
        "serial, intra-op threads = 1".to_string(),
    ];
    let mut wall: [Vec<f64>; 3] = Default::default();
    for round in 0..=rounds {
        for k in 0..3 {
            let arm = (k + round) % 3;
            let start = Instant::now();
            match arm {
                0 => drop(b.serial(cores)),
                1 => drop(b.split()),
                _ => drop(b.serial(1)),
            }
            if round > 0 {
                wall[arm].push(start.elapsed().as_secs_f64());
            }
        }
    }
    println!("load average after: {}", load_average());
    println!("wall-clock seconds per attack of the batch, median (min-max) over {rounds} rounds:");
    for (name, t) in names.iter().zip(&wall) {
        println!(
            "  {name:<45} {:.4} ({:.4}-{:.4})",
            quantile(t, 0.5),
            quantile(t, 0.0),
            quantile(t, 1.0)
        );
    }
    let paired = |a: usize, b: usize| -> Vec<f64> {
        wall[a].iter().zip(&wall[b]).map(|(x, y)| x / y).collect()
    };
    for (label, r) in [
        ("split / serial".to_string(), paired(1, 0)),
        (format!("serial on {cores} / serial on 1"), paired(0, 2)),
        (format!("split in {cores} / serial on 1"), paired(1, 2)),
    ] {
        println!(
            "  {label:<32} median {:.3} (quartiles {:.3}-{:.3}, min-max {:.3}-{:.3})",
            quantile(&r, 0.5),
            quantile(&r, 0.25),
            quantile(&r, 0.75),
            quantile(&r, 0.0),
            quantile(&r, 1.0)
        );
    }
}
