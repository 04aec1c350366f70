//! The training core end to end, with the real segmentation plugin: PGD's
//! guarantees, AMAT's per-sample margins, exact resume, the three methods
//! reducing the loss, and config errors caught before any work.
//!
//! Tests that train in this process hold `TORCH` (libtorch's random generator
//! and thread count are process-wide); tests of the binary run in their own
//! processes.

use crate::support;
use crate::support::runs::{epochs, latest_checkpoint, tensors};

use amat_host::attack::{Context, Norm, PgdConfig, Range, loss_at, pgd, sample_norms};
use amat_host::config::RunConfig;
use amat_host::plugin::{Plugin, SandboxLimits};
use amat_host::train::Trainer;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

static TORCH: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

fn native() -> PathBuf {
    support::native_plugin("segmentation")
}

fn load_plugin() -> Plugin {
    Plugin::load(native(), &SandboxLimits::default()).unwrap()
}

fn config(text: &str) -> RunConfig {
    let mut cfg = RunConfig::parse(text, Path::new("test.toml")).unwrap();
    cfg.run.plugin = Some(native());
    cfg.validate().unwrap();
    cfg
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

// ---------------------------------------------------------------- 1. PGD

#[test]
fn pgd_keeps_each_sample_in_its_own_ball_and_the_intensity_range_and_raises_the_loss() {
    let _torch = lock();
    let mut plugin = load_plugin();
    // Batch norm, so that a forward in training mode would move its statistics.
    let cfg = config(
        "[run]\nmethod = \"std\"\nthreads = 1\n[data.synthetic]\ntrain = 16\ntest = 1\nsize = 16\n\
         [model]\nwidth = 4\nnorm = \"batch\"\n[train]\nbatch_size = 8\n",
    );
    let splits = cfg.data.load(&mut plugin).unwrap();
    let mut t = Trainer::new(&cfg, &plugin, Device::Cpu, splits.train.len()).unwrap();
    for _ in 0..6 {
        t.train_epoch(&mut plugin, &splits.train, &ProgressBar::hidden())
            .unwrap();
    }
    let range = Range { min: 0.0, max: 1.0 };
    let (x, y) = splits.train.batch(&[0, 1, 2, 3], Device::Cpu).unwrap();
    let zero = x.zeros_like();
    let ones = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let mut ctx = Context::new(&t.model, &mut plugin, range);
    let before = floats(&loss_at(&mut ctx, &x, &y, &zero, &ones).unwrap());
    let snapshot: Vec<(String, Tensor)> =
        t.vs.variables()
            .into_iter()
            .map(|(n, v)| (n, v.detach().copy()))
            .collect();

    let levels = [
        (Norm::L2, [0.0f32, 0.3, 1.0, 2.5]),
        (Norm::Linf, [0.0, 0.01, 0.04, 0.1]),
    ];
    for (norm, eps) in levels {
        let pgd_cfg = PgdConfig {
            norm,
            steps: 10,
            ..PgdConfig::default()
        };
        let delta = pgd(&mut ctx, &x, &y, &Tensor::from_slice(&eps), &pgd_cfg).unwrap();
        let norms = floats(&sample_norms(&delta, norm));
        for i in 0..4 {
            assert!(
                norms[i] <= eps[i] * (1.0 + 1e-5) + 1e-7,
                "{norm}: sample {i} left its ball: {norms:?} > {eps:?}"
            );
        }
        assert_eq!(norms[0], 0.0, "{norm}: eps = 0 must give no noise");
        for i in 1..4 {
            assert!(
                norms[i] > 0.5 * eps[i],
                "{norm}: sample {i} barely moved: {norms:?} for {eps:?}"
            );
        }
        let attacked = &x + &delta;
        assert!(
            attacked.min().double_value(&[]) >= 0.0 && attacked.max().double_value(&[]) <= 1.0,
            "{norm}: left [0, 1]"
        );
        let after = floats(&loss_at(&mut ctx, &x, &y, &delta, &ones).unwrap());
        assert_eq!(after[0], before[0], "{norm}: eps = 0 changed the loss");
        for i in 1..4 {
            assert!(
                after[i] > before[i],
                "{norm}: sample {i} loss {} -> {} did not rise",
                before[i],
                after[i]
            );
        }
    }

    // FGSM (one full step) also raises the loss; all-zero levels change nothing.
    let fgsm = PgdConfig::fgsm(Norm::L2);
    let eps = Tensor::from_slice(&[1.0f32; 4]);
    let delta = pgd(&mut ctx, &x, &y, &eps, &fgsm).unwrap();
    let after = floats(&loss_at(&mut ctx, &x, &y, &delta, &ones).unwrap());
    assert!(
        after.iter().zip(&before).all(|(a, b)| a > b),
        "FGSM: {before:?} -> {after:?}"
    );
    let none = pgd(
        &mut ctx,
        &x,
        &y,
        &Tensor::zeros([4], (Kind::Float, Device::Cpu)),
        &PgdConfig::default(),
    )
    .unwrap();
    assert_eq!(none.abs().max().double_value(&[]), 0.0);

    // The attacks left the weights, their gradients and batch-norm statistics alone.
    for (name, old) in &snapshot {
        let v = &t.vs.variables()[name];
        assert!(v.equal(old), "{name} changed during the attacks");
        let g = v.grad();
        assert!(
            !g.defined() || g.abs().max().double_value(&[]) == 0.0,
            "{name} accumulated a weight gradient"
        );
    }
    assert!(
        snapshot.iter().any(|(n, _)| n.ends_with("running_mean")),
        "the model has batch-norm statistics"
    );
}

// ---------------------------------------------------------------- 2. AMAT margins

/// The boundary rule with the clean gate and reset_wrong: the rule amat
/// shipped first (IMA-like), kept as an ablation. The gate (clean loss <= 1)
/// and the judgement (loss <= 0.6) are separate questions with separate
/// thresholds; the slices with random targets never pass the gate.
#[test]
fn amat_margins_adapt_per_sample() {
    let _torch = lock();
    let mut plugin = load_plugin();
    let train = support::samples::easy_hard_unlearnable();
    let (easy, hard, unlearnable) = (0..10, 10..20, 20..22);

    let cfg = config(
        "[run]\nmethod = \"amat\"\nthreads = 1\n[data.synthetic]\n[train]\nepochs = 26\nwarmup_epochs = 14\nbatch_size = 8\n\
         [train.attack]\nsteps = 10\nstep_factor = 2.5\n\
         [amat]\nrule = \"boundary\"\ntau_clean = 1.0\nreset_wrong = true\neps_max = 3.0\ngrow_epochs = 6\ntau = 0.6\n",
    );
    let mut t = Trainer::new(&cfg, &plugin, Device::Cpu, train.len()).unwrap();
    for _ in 0..cfg.train.epochs {
        t.train_epoch(&mut plugin, &train, &ProgressBar::hidden())
            .unwrap();
    }
    let m = t.margins.as_ref().unwrap();
    let median = |r: std::ops::Range<usize>| {
        let mut v: Vec<f32> = m.values[r].to_vec();
        v.sort_by(f32::total_cmp);
        v[v.len() / 2] as f64
    };
    let (easy_m, hard_m) = (median(easy.clone()), median(hard.clone()));
    println!("margins: {:?}", m.values);
    // The learned samples' clean loss is below tau, the unlearnable ones' above.
    let idx: Vec<usize> = (0..train.len()).collect();
    let (x, y) = train.batch(&idx, Device::Cpu).unwrap();
    let zero = x.zeros_like();
    let clean = floats(
        &loss_at(
            &mut Context::new(&t.model, &mut plugin, Range { min: 0.0, max: 1.0 }),
            &x,
            &y,
            &zero,
            &Tensor::ones([train.len() as i64], (Kind::Float, Device::Cpu)),
        )
        .unwrap(),
    );
    let tau = t.judge.tau as f32;
    println!("clean losses: {clean:?} (tau {tau})");
    assert!(
        clean[easy.clone()].iter().all(|&l| l <= tau),
        "easy samples not learned: {clean:?}"
    );
    assert!(
        clean[hard.clone()].iter().filter(|&&l| l <= tau).count() >= 8,
        "hard samples not learned: {clean:?}"
    );
    for i in unlearnable.clone() {
        assert!(
            clean[i] > tau,
            "sample {i} with a random target was learned: {}",
            clean[i]
        );
        assert_eq!(
            m.values[i] as f64, m.delta_eps,
            "sample {i} (not learned) must stay at the smallest margin"
        );
    }
    assert!(
        easy_m >= 4.0 * m.delta_eps,
        "easy samples' margins did not grow: median {easy_m}"
    );
    assert!(
        easy_m >= 1.5 * hard_m,
        "easy samples should hold larger margins: easy {easy_m}, hard {hard_m}"
    );
    let last = t.history.last().unwrap();
    assert!(
        last.crossed > 0.0,
        "some sample should have crossed its boundary in the last epoch: {last:?}"
    );
}

// ---------------------------------------------------------------- the binary

fn amat_host(args: &[&str]) -> Output {
    support::run_amat_host(args)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small, fast run on 16 x 16 synthetic disks, with `extra` (TOML) merged
/// over it key by key. `tau = 3` counts every sample as learned from the
/// start, so AMAT's margins move at once.
fn small_config(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let base = "[run]\nthreads = 1\nseed = 3\n[data.synthetic]\ntrain = 20\ntest = 6\nsize = 16\n\
         [model]\nwidth = 4\n[train]\nepochs = 4\nbatch_size = 8\n[train.attack]\nsteps = 10\nstep_factor = 2.5\n\
         [amat]\ngrow_epochs = 3\ntau = 3.0\n\
         [eval]\neps = [0.0, 0.5, 1.0]\nbatch_size = 4\nrestarts = 1\n[eval.attack]\nsteps = 4\n";
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let mut table: toml::Table = base.parse().unwrap();
    merge(&mut table, extra.parse().unwrap());
    let path = dir.join(name);
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
    path
}

fn assert_same_tensors(a: &Path, b: &Path) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.len(), tb.len());
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(
            va.equal(vb),
            "{na} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// The epoch records without their timings.
fn epochs_untimed(run: &Path) -> Vec<serde_json::Value> {
    epochs(run)
        .into_iter()
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            o.remove("seconds");
            o.remove("margin_seconds");
            r
        })
        .collect()
}

/// A run's robustness curve without its evaluation time.
fn curve_untimed(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("robustness.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_object_mut().unwrap().remove("seconds");
    v
}

// ---------------------------------------------------------------- 3. resume

#[test]
fn a_stopped_or_killed_run_resumed_equals_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = small_config(tmp.path(), "run.toml", "");
    let plugin = native();
    let whole = tmp.path().join("whole");
    let base = [
        "run",
        "--plugin",
        s(&plugin),
        "--method",
        "amat",
        "--config",
        s(&cfg),
        "--device",
        "cpu",
    ];
    let run = |out: &Path, extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(["--out", s(out)]);
        args.extend(extra);
        amat_host(&args)
    };
    assert!(run(&whole, &[]).status.success());

    // Stopped cleanly after epoch 2, then resumed.
    let stopped = tmp.path().join("stopped");
    assert!(run(&stopped, &["--stop-after", "2"]).status.success());
    assert!(latest_checkpoint(&stopped).ends_with("epoch-0002"));
    assert!(
        !stopped.join("robustness.json").exists(),
        "a stopped run has no final curve"
    );
    assert!(
        amat_host(&["run", "--resume", s(&stopped)])
            .status
            .success()
    );

    // Killed (SIGKILL) at some point after its first checkpoint, then resumed.
    let killed = tmp.path().join("killed");
    let mut child = support::amat_host()
        .args(base)
        .args(["--out", s(&killed)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !killed.join("checkpoints/latest").exists() {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = child.kill();
    child.wait().unwrap();
    assert!(amat_host(&["run", "--resume", s(&killed)]).status.success());

    for other in [&stopped, &killed] {
        let (a, b) = (latest_checkpoint(&whole), latest_checkpoint(other));
        assert!(b.ends_with("epoch-0004"));
        for file in [
            "weights.safetensors",
            "optimizer.safetensors",
            "margins.safetensors",
        ] {
            assert_same_tensors(&a.join(file), &b.join(file));
        }
        assert_eq!(
            epochs_untimed(&whole),
            epochs_untimed(other),
            "epoch records differ for {}",
            other.display()
        );
        assert_eq!(
            curve_untimed(&whole),
            curve_untimed(other),
            "robustness curves differ for {}",
            other.display()
        );
    }
    // The margins moved, so their equality above means something.
    let margins = tensors(&latest_checkpoint(&whole).join("margins.safetensors"));
    let eps = floats(&margins[0].1);
    assert!(
        eps.iter().any(|&e| (e - eps[0]).abs() > 1e-6) || eps[0] > 2.0 / 3.0 + 1e-6,
        "margins never moved: {eps:?}"
    );

    // `eval` of the final checkpoint reproduces the run's own curve, and
    // `attack` saves one sample's noise, inside its ball.
    let ev = tmp.path().join("eval");
    assert!(
        amat_host(&[
            "eval",
            "--checkpoint",
            s(&whole),
            "--plugin",
            s(&plugin),
            "--out",
            s(&ev),
            "--device",
            "cpu"
        ])
        .status
        .success()
    );
    assert_eq!(curve_untimed(&ev), curve_untimed(&whole));
    assert!(ev.join("robustness.png").is_file() && ev.join("robustness.csv").is_file());
    let at = tmp.path().join("attack");
    let out = amat_host(&[
        "attack",
        "--checkpoint",
        s(&whole),
        "--plugin",
        s(&plugin),
        "--sample",
        "2",
        "--eps",
        "0.8",
        "--out",
        s(&at),
    ]);
    assert!(out.status.success());
    let noise = Tensor::read_npy(at.join("noise.npy")).unwrap();
    assert_eq!(noise.size(), [1, 16, 16]);
    let norm = noise.square().sum(Kind::Float).sqrt().double_value(&[]);
    assert!(norm > 0.2 && norm <= 0.8 + 1e-5, "noise norm {norm}");
    assert_eq!(
        Tensor::read_npy(at.join("prediction_adversarial.npy"))
            .unwrap()
            .size(),
        [8, 16, 16]
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(at.join("attack.json")).unwrap()).unwrap();
    assert!(report["adversarial_loss"].as_f64().unwrap() > report["clean_loss"].as_f64().unwrap());
}

// ---------------------------------------------------------------- 4. the methods

#[test]
fn std_sat_and_amat_reduce_the_training_loss_and_sat_at_zero_is_std() {
    let tmp = tempfile::tempdir().unwrap();
    let plugin = native();
    let cfg = small_config(tmp.path(), "run.toml", "");
    let cfg_zero = small_config(tmp.path(), "zero.toml", "[sat]\neps = 0.0\n");
    let run = |method: &str, cfg: &Path, name: &str| {
        let out = tmp.path().join(name);
        let o = amat_host(&[
            "run",
            "--plugin",
            s(&plugin),
            "--method",
            method,
            "--config",
            s(cfg),
            "--out",
            s(&out),
            "--device",
            "cpu",
        ]);
        assert!(o.status.success(), "{method} failed");
        out
    };
    for method in ["std", "sat", "amat"] {
        let dir = run(method, &cfg, method);
        let e = epochs(&dir);
        let clean = |i: usize| e[i]["clean_loss"].as_f64().unwrap();
        assert!(
            clean(3) < 0.9 * clean(0),
            "{method}: clean loss {} -> {}",
            clean(0),
            clean(3)
        );
        if method != "std" {
            // Epoch 1 is the clean warm-up; the attacked loss falls from epoch 2 on.
            let adv = |i: usize| e[i]["adv_loss"].as_f64().unwrap();
            assert!(e[0]["adv_loss"].is_null());
            assert!(
                adv(3) < adv(1),
                "{method}: adversarial loss {} -> {}",
                adv(1),
                adv(3)
            );
            assert!(
                adv(3) > clean(3),
                "{method}: the attack should cost something"
            );
        }
        // Only AMAT's adversarial epochs spend time on margin updates.
        for r in &e {
            let m = r["margin_seconds"].as_f64().unwrap();
            let updates = method == "amat" && r["phase"] == "adversarial";
            assert_eq!(m > 0.0, updates, "{method}: {r}");
            assert!(m < r["seconds"].as_f64().unwrap());
        }
        for f in [
            "robustness.json",
            "robustness.csv",
            "robustness.png",
            "summary.md",
            "epochs.csv",
            "config.toml",
        ] {
            assert!(dir.join(f).is_file(), "{method}: no {f}");
        }
    }
    let sat0 = run("sat", &cfg_zero, "sat-zero");
    let std = tmp.path().join("std");
    assert_same_tensors(
        &latest_checkpoint(&std).join("weights.safetensors"),
        &latest_checkpoint(&sat0).join("weights.safetensors"),
    );
    // ... and it is not trivially so: SAT at its default eps trains other weights.
    let (a, b) = (
        tensors(&latest_checkpoint(&std).join("weights.safetensors")),
        tensors(&latest_checkpoint(&tmp.path().join("sat")).join("weights.safetensors")),
    );
    assert!(a.iter().zip(&b).any(|((_, x), (_, y))| !x.equal(y)));

    // The three runs side by side: one row each, the same eps columns, a plot.
    let cmp = tmp.path().join("cmp");
    let runs: Vec<PathBuf> = ["std", "sat", "amat"]
        .iter()
        .map(|m| tmp.path().join(m))
        .collect();
    let mut args = vec!["compare", "--out", s(&cmp)];
    args.extend(runs.iter().map(|p| s(p)));
    assert!(amat_host(&args).status.success());
    let table = std::fs::read_to_string(cmp.join("comparison.md")).unwrap();
    for m in ["std", "sat", "amat"] {
        assert_eq!(
            table
                .lines()
                .filter(|l| l.starts_with(&format!("| {m} | {m} |")))
                .count(),
            1,
            "{table}"
        );
    }
    assert!(table.contains("eps 0.5") && cmp.join("comparison.png").is_file());
    // An unfinished run is refused with a one-line error naming it.
    std::fs::remove_file(runs[1].join("robustness.json")).unwrap();
    let o = amat_host(&["compare", "--out", s(&cmp), s(&runs[0]), s(&runs[1])]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("sat: no robustness.json"),
        "{err}"
    );
}

// ---------------------------------------------------------------- 5. bad configs

#[test]
fn bad_configs_fail_in_one_line_before_any_work_and_leave_no_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let wasm = support::wasm_plugin("segmentation");
    let cases = [
        (
            "unknown key",
            "[train]\nepochz = 3\n",
            s(&wasm).to_string(),
            "unknown field `epochz`",
        ),
        (
            "negative eps",
            "[sat]\neps = -1.0\n",
            s(&wasm).to_string(),
            "sat.eps = -1 must be >= 0",
        ),
        (
            "negative eval eps",
            "[eval]\neps = [0.0, -0.5]\n",
            s(&wasm).to_string(),
            "eval.eps[1] = -0.5 must be >= 0",
        ),
        (
            "missing plugin",
            "",
            tmp.path().join("nope.wasm").display().to_string(),
            "nope.wasm: no such file",
        ),
    ];
    for (what, extra, plugin, expected) in cases {
        let cfg = small_config(tmp.path(), "bad.toml", extra);
        let out_dir = tmp.path().join("run");
        let o = amat_host(&[
            "run",
            "--plugin",
            &plugin,
            "--method",
            "sat",
            "--config",
            s(&cfg),
            "--out",
            s(&out_dir),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: succeeded");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{what}: not one line: {stderr}"
        );
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expected),
            "{what}: {stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            !out_dir.exists() && left.iter().all(|n| n.to_str().unwrap().ends_with(".toml")),
            "{what}: left {left:?}"
        );
    }

    // A good run (wasm plugin): whenever its folder exists, it holds a complete checkpoint.
    let cfg = small_config(tmp.path(), "good.toml", "[train]\nepochs = 2\n");
    let out_dir = tmp.path().join("good");
    let mut child = support::amat_host()
        .args([
            "run",
            "--plugin",
            s(&wasm),
            "--method",
            "amat",
            "--config",
            s(&cfg),
            "--out",
            s(&out_dir),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = 0;
    while child.try_wait().unwrap().is_none() {
        if out_dir.exists() {
            seen += 1;
            let ckpt = latest_checkpoint(&out_dir);
            for f in [
                "weights.safetensors",
                "optimizer.safetensors",
                "margins.safetensors",
                "state.json",
                "config.toml",
            ] {
                assert!(ckpt.join(f).is_file(), "{} without {f}", ckpt.display());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(child.wait().unwrap().success());
    assert!(seen > 0 && out_dir.join("robustness.json").is_file());
    let hidden: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_str().unwrap().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "staging folders left: {hidden:?}");
}
