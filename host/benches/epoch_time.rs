//! Time of one training epoch of STD, SAT and AMAT (the published rule, and
//! the boundary rule with bisection and with regula falsi) on the same data,
//! model and attack steps, and AMAT's cost over SAT.
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

use amat_host::config::{AmatRule, Method, RunConfig, SearchKind};
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

    // AMAT's variants: the published rule (the default), and the boundary
    // rule with each of its two searches.
    let variants: [(&str, AmatRule, SearchKind); 3] = [
        ("AMAT reference", AmatRule::Reference, SearchKind::Bisection),
        (
            "AMAT-B bisection",
            AmatRule::Boundary,
            SearchKind::Bisection,
        ),
        (
            "AMAT-B regula falsi",
            AmatRule::Boundary,
            SearchKind::RegulaFalsi,
        ),
    ];
    let config = |m: Method, v: Option<usize>| {
        let mut c = with_method(m);
        if let Some(v) = v {
            (c.amat.rule, c.amat.search) = (variants[v].1, variants[v].2);
        }
        c
    };
    // A trainer starting from `weights`.
    let fresh = |cfg: &RunConfig, plugin: &Plugin, weights: &VarStore| {
        let mut t = Trainer::new(cfg, plugin, device, train.len()).unwrap();
        t.vs.copy(weights).unwrap();
        t
    };
    // Margins settled by a few epochs of each variant from the pretrained weights.
    let settled: Vec<Margins> = (0..variants.len())
        .map(|v| {
            let mut settle = fresh(&config(Method::Amat, Some(v)), &plugin, &pre.vs);
            for _ in 0..4 {
                settle.train_epoch(&mut plugin, train, &bar).unwrap();
            }
            let margins = settle.margins.clone().unwrap();
            let (lo, med, hi) = margins.summary();
            println!(
                "{}: settled margins min {lo:.3} median {med:.3} max {hi:.3}",
                variants[v].0
            );
            margins
        })
        .collect();

    // Per round, one epoch of each from the same weights: STD, SAT, then
    // the AMAT variants.
    let arms = 2 + variants.len();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); arms];
    let mut records: Vec<Vec<EpochRecord>> = vec![Vec::new(); variants.len()];
    for _ in 0..rounds {
        for (k, times) in times.iter_mut().enumerate() {
            let (method, v) = match k {
                0 => (Method::Std, None),
                1 => (Method::Sat, None),
                _ => (Method::Amat, Some(k - 2)),
            };
            let mut t = fresh(&config(method, v), &plugin, &pre.vs);
            if let Some(v) = v {
                t.margins = Some(settled[v].clone());
            }
            let r = t.train_epoch(&mut plugin, train, &bar).unwrap();
            times.push(r.seconds);
            if let Some(v) = v {
                records[v].push(r);
            }
        }
    }
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    let (std, sat) = (medians[0], medians[1]);
    println!("median of {rounds} rounds, seconds per epoch:");
    println!("  STD  {std:.3}");
    println!("  SAT  {sat:.3}");
    for (v, r) in records.iter().enumerate() {
        let amat = medians[2 + v];
        let crossed = r.iter().map(|r| r.crossed).sum::<f64>() / r.len() as f64;
        let forwards = r.iter().map(|r| r.search_forwards).sum::<usize>() / r.len();
        let margin = median(r.iter().map(|r| r.margin_seconds).collect());
        println!(
            "  {} {amat:.3}  (crossed {:.0}% of samples, {forwards} single-sample search forwards per epoch, \
             {margin:.3} s judging and searching; / SAT = {:.3})",
            variants[v].0,
            100.0 * crossed,
            amat / sat
        );
    }
    println!("target: AMAT / SAT <= 1.05 (issue 16), <= 1.10 (earlier)");
}
