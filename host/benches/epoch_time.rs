//! Time of one training epoch of STD, SAT and AMAT on the same data, model
//! and attack steps, and AMAT's cost over SAT (target: AMAT / SAT <= 1.10).
//!
//! The model is first trained clean until most samples are learned, and
//! AMAT's margins are settled by a few AMAT epochs, so the timed AMAT epochs
//! pay for real boundary searches. Each round then times one epoch of each
//! method from the same weights; the median round is reported.
//!
//! Run: `bash host/scripts/build-plugins.sh release && cargo bench -p amat-host --bench epoch_time`
//! Sizes: AMAT_BENCH_SIZE (image side, 48), AMAT_BENCH_SAMPLES (64),
//! AMAT_BENCH_ROUNDS (5), AMAT_BENCH_WIDTH (16), AMAT_BENCH_DEPTH (3).

#[path = "common/mod.rs"]
mod common;

use amat_host::config::{Method, RunConfig};
use amat_host::plugin::{Plugin, SandboxLimits};
use amat_host::train::margins::Margins;
use amat_host::train::{EpochRecord, Trainer};
use indicatif::ProgressBar;
use std::path::Path;
use tch::Device;
use tch::nn::VarStore;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (size, samples, rounds) = (
        common::env("AMAT_BENCH_SIZE", 48),
        common::env("AMAT_BENCH_SAMPLES", 64),
        common::env("AMAT_BENCH_ROUNDS", 5),
    );
    let (width, depth) = (
        common::env("AMAT_BENCH_WIDTH", 16),
        common::env("AMAT_BENCH_DEPTH", 3),
    );
    let plugin_file = common::segmentation_native();
    let text = format!(
        "[run]\nmethod = \"std\"\nplugin = \"{}\"\n\
         [data.synthetic]\ntrain = {samples}\ntest = 1\nsize = {size}\n\
         [model]\nwidth = {width}\ndepth = {depth}\n\
         [train]\nbatch_size = 16\nwarmup_epochs = 0\nepochs = 1000\n\
         [amat]\neps_max = 2.0\ngrow_epochs = 5\n",
        plugin_file.display()
    );
    let base = RunConfig::parse(&text, Path::new("bench")).unwrap();
    base.validate().unwrap();
    let mut plugin = Plugin::load(&plugin_file, &SandboxLimits::default()).unwrap();
    let splits = base.data.load(&mut plugin).unwrap();
    let train = &splits.train;
    let bar = ProgressBar::hidden();
    let device = Device::Cpu;
    let with_method = |m: Method| {
        let mut c = base.clone();
        c.run.method = Some(m);
        c
    };
    println!(
        "epoch time: {samples} images {size}x{size}, U-Net depth {depth} width {width}, batch 16, PGD {} steps, \
         libtorch threads {}, plugin {}",
        base.train.attack.steps,
        tch::get_num_threads(),
        plugin_file.display()
    );

    // Clean training until most samples are below tau.
    let mut pre = Trainer::new(&with_method(Method::Std), &plugin, device, train.len()).unwrap();
    let tau = pre.judge.tau;
    for _ in 0..60 {
        let r = pre.train_epoch(&mut plugin, train, &bar).unwrap();
        if r.clean_loss < 0.5 * tau {
            break;
        }
    }
    println!(
        "pretrained {} clean epochs: clean loss {:.4} (tau {tau})",
        pre.epoch,
        pre.history.last().unwrap().clean_loss
    );

    // A trainer of method `m` starting from `weights`.
    let fresh = |m: Method, plugin: &Plugin, weights: &VarStore| {
        let mut t = Trainer::new(&with_method(m), plugin, device, train.len()).unwrap();
        t.vs.copy(weights).unwrap();
        t
    };
    // Margins settled by a few AMAT epochs from the pretrained weights.
    let mut settle = fresh(Method::Amat, &plugin, &pre.vs);
    for _ in 0..4 {
        settle.train_epoch(&mut plugin, train, &bar).unwrap();
    }
    let margins: Margins = settle.margins.clone().unwrap();
    let (lo, med, hi) = margins.summary();
    println!("settled margins: min {lo:.3} median {med:.3} max {hi:.3}");

    let mut times: [Vec<f64>; 3] = Default::default();
    let mut amat_records: Vec<EpochRecord> = Vec::new();
    for _ in 0..rounds {
        for (k, m) in [Method::Std, Method::Sat, Method::Amat]
            .into_iter()
            .enumerate()
        {
            let mut t = fresh(m, &plugin, &pre.vs);
            if m == Method::Amat {
                t.margins = Some(margins.clone());
            }
            let r = t.train_epoch(&mut plugin, train, &bar).unwrap();
            times[k].push(r.seconds);
            if m == Method::Amat {
                amat_records.push(r);
            }
        }
    }
    let [std, sat, amat] = times.map(median);
    let crossed = amat_records.iter().map(|r| r.crossed).sum::<f64>() / amat_records.len() as f64;
    let forwards = amat_records
        .iter()
        .map(|r| r.search_forwards)
        .sum::<usize>()
        / amat_records.len();
    println!("median of {rounds} rounds, seconds per epoch:");
    println!("  STD  {std:.3}");
    println!("  SAT  {sat:.3}");
    let margin = median(amat_records.iter().map(|r| r.margin_seconds).collect());
    println!(
        "  AMAT {amat:.3}  (crossed {:.0}% of samples, {forwards} single-sample search forwards per epoch, \
         {margin:.3} s judging and searching)",
        100.0 * crossed
    );
    println!("AMAT / SAT = {:.3} (target <= 1.10)", amat / sat);
}
