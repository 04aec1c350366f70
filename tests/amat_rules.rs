//! AMAT as published (AMAT.md): a crossing is ANY PGD iterate judged wrong,
//! in training and in evaluation; the reference rule's margins adapt per
//! sample; `calibrate` sets the judgement's threshold at the mean of a
//! trained STD model's per-sample score.
//!
//! Tests that train in this process hold `TORCH` (libtorch's random generator
//! and thread count are process-wide).

use crate::support;

use amat_host::app::evaluate::{CheckpointArgs, load};
use amat_host::attack::{Context, PgdConfig, Range};
use amat_host::config::{EvalConfig, RunConfig};
use amat_host::eval;
use amat_host::plugin::{Plugin, SandboxLimits};
use amat_host::train::Trainer;
use amat_host::train::amat::{Judge, crossings};
use indicatif::ProgressBar;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

static TORCH: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

// ------------------------------------------- broken mid-attack, repaired at the end

/// A two-class "network" that predicts the true class (1) everywhere, except
/// on its `bad`-th forward (1-based), where it predicts class 0: a sample that
/// an intermediate PGD iterate breaks and the next one repairs. Its logits
/// depend on the input, so PGD has a gradient to follow.
#[derive(Debug)]
struct BrokenOnce {
    calls: AtomicUsize,
    bad: usize,
}

impl BrokenOnce {
    fn new(bad: usize) -> Self {
        Self {
            calls: AtomicUsize::new(0),
            bad,
        }
    }
}

impl ModuleT for BrokenOnce {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let strong = xs * 0.1 + 6.0;
        let weak = xs * 0.0;
        if call == self.bad {
            Tensor::cat(&[&strong, &weak], 1)
        } else {
            Tensor::cat(&[&weak, &strong], 1)
        }
    }
}

fn all_class_one(b: i64) -> (Tensor, Tensor) {
    let x = Tensor::full([b, 1, 8, 8], 0.5, (Kind::Float, Device::Cpu));
    let y = Tensor::ones([b, 8, 8], (Kind::Float, Device::Cpu));
    (x, y)
}

#[test]
fn a_sample_broken_at_an_intermediate_iterate_counts_as_broken_in_training_and_evaluation() {
    let _torch = lock();
    let mut plugin = Plugin::builtin_segmentation(2);
    let (x, y) = all_class_one(3);
    let eps = Tensor::full([3], 0.5, (Kind::Float, Device::Cpu));
    let pgd = PgdConfig {
        steps: 5,
        random_start: false,
        ..PgdConfig::default()
    };
    let range = Range { min: 0.0, max: 1.0 };
    let tau = 0.5;
    // Forwards: 1 = the start, 2..=5 the iterates of steps 1..4, 6 = the last.
    for (bad, broken) in [(3, true), (99, false)] {
        let model = BrokenOnce::new(bad);
        let mut judge = Judge::loss_at_most(tau);
        let found = crossings(
            &mut Context::new(&model, &mut plugin, range),
            &mut judge,
            (&x, &y),
            &eps,
            &pgd,
        )
        .unwrap();
        assert_eq!(
            model.calls.load(Ordering::SeqCst),
            6,
            "T + 1 iterates judged"
        );
        assert_eq!(
            found.crossed,
            vec![broken; 3],
            "training: broken at forward {bad} must count as crossed = {broken}"
        );
        // The last iterate is judged correct either way: only the tracking sees the break.
        let last = model.forward_t(&(&x + &found.delta), false);
        let ok = judge.correct(&mut plugin, &last, &y, None).unwrap();
        assert_eq!(ok, vec![true; 3]);
    }

    // Evaluation keeps the worst iterate: the broken one, not the repaired last.
    let cfg = EvalConfig {
        restarts: 1,
        attack: pgd.clone(),
        ..EvalConfig::default()
    };
    let model = BrokenOnce::new(3);
    let (_, pred, loss) = eval::worst_case(
        &mut Context::new(&model, &mut plugin, range),
        &x,
        &y,
        0.5,
        &cfg,
    )
    .unwrap();
    let loss: Vec<f32> = Vec::try_from(loss).unwrap();
    assert!(loss.iter().all(|&l| l > 1.0), "worst loss {loss:?}");
    let predicted = pred.argmax(1, false).to_kind(Kind::Float);
    assert_eq!(
        predicted.sum(Kind::Float).double_value(&[]),
        0.0,
        "class 0 everywhere"
    );
    let dice = plugin.metrics(&pred, &y).unwrap();
    assert!(dice[0].value < 0.01, "the broken iterate's Dice: {dice:?}");
    let repaired = BrokenOnce::new(99);
    let (_, pred, _) = eval::worst_case(
        &mut Context::new(&repaired, &mut plugin, range),
        &x,
        &y,
        0.5,
        &cfg,
    )
    .unwrap();
    assert!(plugin.metrics(&pred, &y).unwrap()[0].value > 0.99);
}

// ------------------------------------------- the reference rule adapts per sample

fn native_config(text: &str) -> RunConfig {
    let mut cfg = RunConfig::parse(text, Path::new("test.toml")).unwrap();
    cfg.run.plugin = Some(support::native_plugin("segmentation"));
    cfg.validate().unwrap();
    cfg
}

#[test]
fn reference_rule_margins_adapt_per_sample() {
    let _torch = lock();
    let mut plugin = Plugin::load(
        support::native_plugin("segmentation"),
        &SandboxLimits::default(),
    )
    .unwrap();
    let train = support::samples::easy_hard_unlearnable();
    // The authors' rule and switches: no clean gate, no reset; judged by the
    // plugin's per-sample hard Dice.
    let cfg = native_config(
        "[run]\nmethod = \"amat\"\nthreads = 1\n[data.synthetic]\n[train]\nepochs = 24\nwarmup_epochs = 14\nbatch_size = 8\n\
         [train.attack]\nsteps = 10\nstep_factor = 2.5\n\
         [amat]\nrule = \"reference\"\neps_max = 3.0\ndelta_eps = 0.5\n[amat.judge]\nhard_dice = 0.85\n",
    );
    let mut t = Trainer::new(&cfg, &plugin, Device::Cpu, train.len()).unwrap();
    assert_eq!(t.judge.describe(), "hard_dice >= 0.85");
    for _ in 0..cfg.train.epochs {
        t.train_epoch(&mut plugin, &train, &ProgressBar::hidden())
            .unwrap();
    }
    let m = t.margins.as_ref().unwrap();
    println!("margins: {:?}", m.values);
    let median = |r: std::ops::Range<usize>| {
        let mut v: Vec<f32> = m.values[r].to_vec();
        v.sort_by(f32::total_cmp);
        v[v.len() / 2] as f64
    };
    let (easy, hard) = (median(0..10), median(10..20));
    assert!(
        easy >= 2.0,
        "easy samples' margins did not grow: median {easy}"
    );
    assert!(easy >= hard + 0.5, "easy {easy} should exceed hard {hard}");
    for i in 20..22 {
        // Broken in every epoch: a margin never grows past its start.
        assert!(
            m.values[i] as f64 <= m.delta_eps + 1e-6,
            "sample {i} (random target) grew to {}",
            m.values[i]
        );
    }
    // Margins kept moving both ways after the warm-up: some epochs grew
    // samples, some saw crossings (which epoch does which depends on the
    // last bits of the arithmetic, so no single epoch is singled out).
    let adversarial = &t.history[cfg.train.warmup_epochs..];
    println!("last epoch: {:?}", adversarial.last());
    assert!(adversarial.iter().any(|r| r.grown > 0.0), "{adversarial:?}");
    assert!(
        adversarial.iter().any(|r| r.crossed > 0.0),
        "{adversarial:?}"
    );
    assert!(
        adversarial.iter().all(|r| r.not_learned == 0.0),
        "the clean gate is off"
    );
}

// ------------------------------------------- calibrate

#[test]
fn calibrate_sets_the_threshold_at_the_mean_it_prints() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("std.toml");
    std::fs::write(
        &config,
        "[run]\nmethod = \"std\"\nthreads = 1\nseed = 3\n[data.synthetic]\ntrain = 12\ntest = 2\nsize = 16\n\
         [model]\nwidth = 4\n[train]\nepochs = 3\nbatch_size = 4\n[eval]\neps = [0.0]\n",
    )
    .unwrap();
    let run = dir.path().join("std");
    let plugin = support::native_plugin("segmentation");
    let out = support::amat_host()
        .args(["run", "--config"])
        .arg(&config)
        .arg("--plugin")
        .arg(&plugin)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = support::amat_host()
        .args(["calibrate", "--checkpoint"])
        .arg(&run)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{printed}");

    // The per-sample hard Dice of the training split, computed here.
    let _torch = lock();
    let mut l = load(&CheckpointArgs {
        checkpoint: run.clone(),
        ..Default::default()
    })
    .unwrap();
    let data = &l.session.splits.train;
    let idx: Vec<usize> = (0..data.len()).collect();
    let (x, y) = data.batch(&idx, Device::Cpu).unwrap();
    let pred = tch::no_grad(|| l.model.forward_t(&x, false));
    let scores = l.session.plugin.scores(&pred, &y).unwrap();
    let values = &scores[0].values;
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    assert!(
        values.iter().any(|&v| (v - mean).abs() > 1e-3),
        "a spread: {values:?}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("calibration.json")).unwrap())
            .unwrap();
    let s = &json["scores"][0];
    assert_eq!(s["name"], "hard_dice");
    let threshold = s["threshold"].as_f64().unwrap();
    assert!(
        (threshold - mean).abs() < 1e-9,
        "threshold {threshold}, mean {mean}"
    );
    assert!(
        printed.contains(&format!("hard_dice = {threshold}")),
        "{printed}"
    );
    // The snippet is a valid [amat.judge] for a run config.
    let snippet = std::fs::read_to_string(run.join("calibration.toml")).unwrap();
    let mut cfg = native_config(&format!(
        "[run]\nmethod = \"amat\"\n[data.synthetic]\ntrain = 4\n{snippet}"
    ));
    cfg.run.threads = 1;
    assert_eq!(cfg.amat.judge["hard_dice"], threshold);
    let judge = Judge::new(&cfg.amat, l.session.plugin.info()).unwrap();
    assert_eq!(judge.describe(), format!("hard_dice >= {threshold}"));
}

#[test]
fn an_unknown_judgement_score_is_refused_naming_the_ones_there_are() {
    let cfg = native_config(
        "[run]\nmethod = \"amat\"\n[data.synthetic]\ntrain = 4\n[amat.judge]\nhard_dic = 0.8\n",
    );
    let plugin = Plugin::builtin_segmentation(2);
    let Err(err) = Trainer::new(&cfg, &plugin, Device::Cpu, 4) else {
        panic!("an unknown score was accepted")
    };
    let err = err.to_string();
    assert!(
        err.contains("amat.judge.hard_dic") && err.contains("hard_dice"),
        "{err}"
    );
    // eps_max = inf needs delta_eps; tau below 0 is refused.
    for (extra, want) in [
        ("eps_max = inf\n", "needs amat.delta_eps"),
        ("tau = -1.0\n", "amat.tau = -1 must be >= 0"),
    ] {
        let mut cfg = RunConfig::parse(
            &format!("[run]\nmethod = \"amat\"\n[data.synthetic]\ntrain = 4\n[amat]\n{extra}"),
            Path::new("x.toml"),
        )
        .unwrap();
        cfg.run.plugin = Some(support::native_plugin("segmentation"));
        let err = cfg.validate().unwrap_err();
        assert!(err.contains(want), "{err}");
    }
}
