//! amat's speed options train what the defaults train: the boundary search
//! by regula falsi finds the boundaries bisection finds (within the search's
//! tolerance) in fewer forwards; bf16 compute keeps float32 master weights
//! and learns like float32.

use crate::support;

use amat_host::config::{Precision, RunConfig, SearchKind};
use amat_host::plugin::{Plugin, SandboxLimits};
use amat_host::train::Trainer;
use indicatif::ProgressBar;
use std::path::Path;
use std::sync::Mutex;
use tch::{Device, Kind};

static TORCH: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(text: &str) -> RunConfig {
    let mut cfg = RunConfig::parse(text, Path::new("test.toml")).unwrap();
    cfg.run.plugin = Some(support::native_plugin("segmentation"));
    cfg.validate().unwrap();
    cfg
}

/// Trains `cfg` for its epochs; returns the trainer. With `margins`, AMAT's
/// margins are set to it after the warm-up.
fn train(cfg: &RunConfig, margins: Option<f32>) -> Trainer {
    let mut plugin = Plugin::load(
        support::native_plugin("segmentation"),
        &SandboxLimits::default(),
    )
    .unwrap();
    let splits = cfg.data.load(&mut plugin).unwrap();
    let mut t = Trainer::new(cfg, &plugin, Device::Cpu, splits.train.len()).unwrap();
    for epoch in 0..cfg.train.epochs {
        if let (Some(m), true) = (margins, epoch == cfg.train.warmup_epochs) {
            t.margins.as_mut().unwrap().values.fill(m);
        }
        t.train_epoch(&mut plugin, &splits.train, &ProgressBar::hidden())
            .unwrap();
    }
    t
}

/// Margins of 4 (eight growth steps) after three clean epochs: strong
/// enough that many samples cross, with room for their searches.
const BOUNDARY: &str = "[run]\nmethod = \"amat\"\nthreads = 1\nseed = 5\n\
    [data.synthetic]\ntrain = 24\ntest = 1\nsize = 16\n[model]\nwidth = 4\n\
    [train]\nepochs = 4\nwarmup_epochs = 3\nbatch_size = 8\n\
    [train.attack]\nsteps = 5\nstep_factor = 2.5\n\
    [amat]\nrule = \"boundary\"\neps_max = 4.0\ngrow_epochs = 8\ntau = 1.9\nsearch_tolerance = 0.1\n";

#[test]
fn regula_falsi_finds_the_boundaries_bisection_finds_in_fewer_forwards() {
    let _torch = lock();
    let bisection = config(BOUNDARY);
    let mut regula = bisection.clone();
    regula.amat.search = SearchKind::RegulaFalsi;
    let (a, b) = (train(&bisection, Some(4.0)), train(&regula, Some(4.0)));
    // One adversarial epoch: both attacked with the same margins and
    // weights, so only the searches differ.
    let (ha, hb) = (a.history.last().unwrap(), b.history.last().unwrap());
    assert_eq!(ha.crossed, hb.crossed, "the same samples cross");
    assert!(
        ha.crossed >= 0.25,
        "too few crossings to compare the searches: {ha:?}"
    );
    let (ma, mb) = (a.margins.as_ref().unwrap(), b.margins.as_ref().unwrap());
    let tolerance = bisection.amat.search_tolerance * ma.delta_eps;
    let off: Vec<(usize, f32, f32)> = ma
        .values
        .iter()
        .zip(&mb.values)
        .enumerate()
        .filter(|(_, (x, y))| ((**x - **y) as f64).abs() > tolerance + 1e-6)
        .map(|(i, (x, y))| (i, *x, *y))
        .collect();
    // A loss that is not monotone along a noise may cross tau more than
    // once; each search then returns one of the crossings.
    assert!(
        off.len() <= ma.values.len() / 10,
        "margins apart by more than the tolerance {tolerance}: {off:?}"
    );
    println!(
        "crossed {}; search forwards: bisection {}, regula falsi {}",
        ha.crossed, ha.search_forwards, hb.search_forwards
    );
    assert!(
        hb.search_forwards < ha.search_forwards,
        "regula falsi took {} forwards, bisection {}",
        hb.search_forwards,
        ha.search_forwards
    );
}

#[test]
fn bf16_keeps_float32_master_weights_and_learns_like_float32() {
    let _torch = lock();
    let f32_cfg = config(
        "[run]\nmethod = \"sat\"\nthreads = 1\nseed = 2\n\
         [data.synthetic]\ntrain = 16\ntest = 1\nsize = 16\n[model]\nwidth = 4\n\
         [train]\nepochs = 4\nwarmup_epochs = 1\nbatch_size = 8\n[train.attack]\nsteps = 3\n",
    );
    let mut bf16_cfg = f32_cfg.clone();
    bf16_cfg.train.precision = Precision::Bf16;
    let (full, half) = (train(&f32_cfg, None), train(&bf16_cfg, None));
    for (name, v) in half.vs.variables() {
        assert_eq!(v.kind(), Kind::Float, "master variable {name}");
    }
    let clean = |t: &Trainer| -> Vec<f64> { t.history.iter().map(|r| r.clean_loss).collect() };
    let (lf, lh) = (clean(&full), clean(&half));
    println!("clean loss per epoch: f32 {lf:?}, bf16 {lh:?}");
    assert!(lh.iter().all(|l| l.is_finite()));
    assert!(
        lh[3] < 0.8 * lh[0],
        "bf16 training does not lower the loss: {lh:?}"
    );
    assert!(
        (lh[3] - lf[3]).abs() <= 0.15 * lf[3],
        "bf16 ends at {} against float32's {}",
        lh[3],
        lf[3]
    );
    // The weights moved, and stay near float32's (bf16 keeps 8 bits of mantissa).
    let moved = |t: &Trainer| {
        let v = t.vs.variables();
        let w = &v["down0.conv1.weight"];
        w.abs().sum(Kind::Double).double_value(&[])
    };
    assert!((moved(&half) - moved(&full)).abs() <= 0.1 * moved(&full));
}
