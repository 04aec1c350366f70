//! What the sandbox's limits cost a normal training step: the segmentation
//! plugin as a wasm component with the default limits (epoch deadline,
//! memory limiter, tensor budget) against the same component with the limits
//! effectively off (no epoch interruption compiled in, caps far above use).
//! Target: under 1 %.
//!
//! Two figures: the median STD epoch time of each (alternating, from the
//! same weights), and the median cost of one loss call forward + backward,
//! whose difference bounds the limits' share of a step more tightly than
//! epoch times on a busy machine can.
//!
//! Run: `bash host/scripts/build-plugins.sh release && cargo bench -p amat-host --bench sandbox_overhead`
//! Sizes: AMAT_BENCH_SIZE (image side, 32), AMAT_BENCH_SAMPLES (32),
//! AMAT_BENCH_ROUNDS (31), AMAT_BENCH_THREADS (libtorch threads, 1).

#[path = "common/mod.rs"]
mod common;

use amat_host::config::RunConfig;
use amat_host::plugin::{Plugin, SandboxLimits};
use amat_host::tensor::TensorBudget;
use amat_host::train::Trainer;
use indicatif::ProgressBar;
use std::path::Path;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// Limits that never bind: no deadline (the engine is built without epoch
/// interruption), memory and tensor caps far above any use.
fn off() -> SandboxLimits {
    SandboxLimits {
        call_timeout_ms: 0,
        max_memory_mib: 1 << 16,
        max_tables: u32::MAX,
        max_table_elements: usize::MAX,
        max_instances: u32::MAX,
        tensors: TensorBudget {
            max_live: usize::MAX,
            max_elements_per_call: u64::MAX,
            max_ops_per_call: u64::MAX,
            max_dims: usize::MAX,
        },
        ..SandboxLimits::default()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (size, samples, rounds) = (
        common::env("AMAT_BENCH_SIZE", 32),
        common::env("AMAT_BENCH_SAMPLES", 32),
        common::env("AMAT_BENCH_ROUNDS", 31),
    );
    tch::set_num_threads(common::env("AMAT_BENCH_THREADS", 1) as i32);
    let path = common::segmentation_wasm();
    let text = format!(
        "[run]\nmethod = \"std\"\nplugin = \"{}\"\n[data.synthetic]\ntrain = {samples}\ntest = 1\nsize = {size}\n\
         [model]\nwidth = 8\ndepth = 2\n[train]\nbatch_size = 8\n",
        path.display()
    );
    let cfg = RunConfig::parse(&text, Path::new("bench")).unwrap();
    cfg.validate().unwrap();
    let mut on = Plugin::load(&path, &SandboxLimits::default()).unwrap();
    let mut off = Plugin::load(&path, &off()).unwrap();
    let splits = cfg.data.load(&mut on).unwrap();
    let train = &splits.train;
    let bar = ProgressBar::hidden();
    let steps = samples.div_ceil(cfg.train.batch_size);
    println!(
        "sandbox overhead: STD epochs of {samples} images {size}x{size} ({steps} steps), U-Net depth 2 width 8, \
         libtorch threads {}, plugin {}",
        tch::get_num_threads(),
        path.display()
    );

    let start = Trainer::new(&cfg, &on, Device::Cpu, train.len()).unwrap();
    let epoch = |plugin: &mut Plugin| {
        let mut t = Trainer::new(&cfg, plugin, Device::Cpu, train.len()).unwrap();
        t.vs.copy(&start.vs).unwrap();
        t.train_epoch(plugin, train, &bar).unwrap().seconds
    };
    epoch(&mut on);
    epoch(&mut off);
    let (mut t_on, mut t_off) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate which goes first, so drift on the machine hits both.
        if r % 2 == 0 {
            t_on.push(epoch(&mut on));
            t_off.push(epoch(&mut off));
        } else {
            t_off.push(epoch(&mut off));
            t_on.push(epoch(&mut on));
        }
    }
    let (e_on, e_off) = (median(t_on), median(t_off));
    println!(
        "median of {rounds} epochs: limits on {e_on:.4} s, off {e_off:.4} s, on/off = {:.4}",
        e_on / e_off
    );

    // One loss call, forward + backward, on a training batch's shape.
    tch::manual_seed(0);
    let pred = Tensor::randn([8, 8, size as i64, size as i64], (Kind::Float, Device::Cpu))
        .set_requires_grad(true);
    let target = Tensor::randint(8, [8, size as i64, size as i64], (Kind::Int64, Device::Cpu))
        .to_kind(Kind::Float);
    let call = |plugin: &mut Plugin| {
        let t = Instant::now();
        let l = plugin.loss(&pred, &target).unwrap().sum(Kind::Float);
        let _ = Tensor::run_backward(&[l], &[&pred], false, false);
        t.elapsed()
    };
    let (mut c_on, mut c_off) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        call(&mut on);
        call(&mut off);
    }
    for _ in 0..400 {
        c_on.push(call(&mut on).as_secs_f64());
        c_off.push(call(&mut off).as_secs_f64());
    }
    let (l_on, l_off) = (median(c_on), median(c_off));
    let per_step = Duration::from_secs_f64(e_off / steps as f64);
    let added = l_on - l_off;
    println!(
        "median loss call (fwd + bwd): limits on {:?}, off {:?}: {:+.1} us per call",
        Duration::from_secs_f64(l_on),
        Duration::from_secs_f64(l_off),
        added * 1e6
    );
    println!(
        "one loss call per STD step of {per_step:?}: the limits cost {:+.3} % of a step (target < 1 %)",
        100.0 * added / per_step.as_secs_f64()
    );
}
