//! The PyTorch-Python reference of the benchmark (host/benches/reference/
//! amat_reference.py) computes what amat computes: from the same initial
//! U-Net weights (exported by amat), data and settings, the per-sample clean
//! loss, the PGD noise norm (no random start), the adversarial loss and the
//! loss after one SAT optimizer step agree to 1e-4, for L2 and Linf PGD and
//! for instance and batch norm. Runs when a Python with torch and numpy is
//! at hand ($AMAT_PYTHON, else python3); says `skipped: <why>` otherwise.

use crate::support;

use amat_host::attack::{self, Norm, sample_norms};
use amat_host::config::{Method, RunConfig};
use amat_host::model::NormKind;
use amat_host::plugin::Plugin;
use amat_host::reference::{self, StateInputs};
use amat_host::train::Trainer;
use amat_host::train::amat::Judge;
use indicatif::ProgressBar;
use rand::seq::SliceRandom;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn floats(t: &Tensor) -> Vec<f64> {
    Vec::<f32>::try_from(t.detach().to_kind(Kind::Float))
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Runs the reference's `mode` on the state in `dir`; its JSON answer.
fn run_reference(python: &Path, mode: &str, dir: &Path, case: &str) -> Value {
    let out = Command::new(python)
        .arg(reference::script())
        .args([mode, "--state"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{case}: the reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One SAT step in amat and in the reference from the same state; returns
/// the largest difference of each quantity.
fn compare(python: &Path, norm: Norm, eps: f64, model_norm: NormKind) {
    let case = format!("{norm} eps {eps}, {model_norm:?} norm");
    let text = format!(
        "[run]\nmethod = \"sat\"\nthreads = 1\n[data.synthetic]\ntrain = 4\ntest = 1\nsize = 16\n\
         [model]\ndepth = 2\nwidth = 4\nnorm = \"{}\"\n\
         [train]\nbatch_size = 4\nwarmup_epochs = 0\n[train.attack]\nnorm = \"{norm}\"\nsteps = 5\nrandom_start = false\n\
         [sat]\neps = {eps}\n",
        format!("{model_norm:?}").to_lowercase()
    );
    let cfg = RunConfig::parse(&text, Path::new("parity")).unwrap();
    tch::set_num_threads(1);
    let mut plugin = Plugin::builtin_segmentation(3);
    tch::manual_seed(7);
    let data = support::samples::random_samples(4);
    let mut t = Trainer::new(&cfg, &plugin, Device::Cpu, data.len()).unwrap();
    assert_eq!(t.method, Method::Sat);

    let dir = tempfile::tempdir().unwrap();
    let inputs = StateInputs {
        info: plugin.info(),
        weights: &t.vs,
        data: &data,
        margins: &[0.0; 4],
        order: &[0, 1, 2, 3],
        torch_seed: 0,
        threads: 1,
    };
    reference::write_state(dir.path(), &cfg, &inputs).unwrap();

    // amat: the quantities before the step, then one SAT step (one batch).
    let (x, y) = data.batch(&[0, 1, 2, 3], Device::Cpu).unwrap();
    let eps_t = Tensor::full([4], eps, (Kind::Float, Device::Cpu));
    let delta = attack::pgd(
        &mut attack::Context::new(&t.model, &mut plugin, t.range),
        &x,
        &y,
        &eps_t,
        &cfg.train.attack,
    )
    .unwrap();
    let clean = plugin.loss(&t.model.forward_t(&x, true), &y).unwrap();
    let adv = plugin
        .loss(&t.model.forward_t(&(&x + &delta), true), &y)
        .unwrap();
    let ours_before = [
        floats(&clean),
        floats(&sample_norms(&delta, norm)),
        floats(&adv),
    ];
    // The statistics of batch norm move in the forwards above: start the step from the exported state.
    reference::read_weights(&t.vs, &dir.path().join("weights.npz")).unwrap();
    t.train_epoch(&mut plugin, &data, &ProgressBar::hidden())
        .unwrap();
    let after = {
        let _guard = tch::no_grad_guard();
        floats(&plugin.loss(&t.model.forward_t(&x, true), &y).unwrap())
    };

    let theirs = run_reference(python, "check", dir.path(), &case);
    let get = |k: &str| -> Vec<f64> {
        theirs[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };

    let names = ["clean_loss", "delta_norm", "adv_loss", "loss_after_step"];
    let ours = [&ours_before[0], &ours_before[1], &ours_before[2], &after];
    for (name, ours) in names.iter().zip(ours) {
        let theirs = get(name);
        assert_eq!(theirs.len(), 4, "{case}: {name}");
        let diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        println!("{case}: {name} amat {ours:.6?} reference {theirs:.6?} max diff {diff:.2e}");
        assert!(
            diff <= TOLERANCE,
            "{case}: {name} differs by {diff:e}: amat {ours:?}, reference {theirs:?}"
        );
    }
    // The comparison is not vacuous: the attack moved the input and the step moved the loss.
    assert!(
        ours_before[1].iter().all(|&n| n > 0.5 * eps),
        "{case}: PGD noise {:?}",
        ours_before[1]
    );
    let (before, after_mean) = (
        ours_before[0].iter().sum::<f64>(),
        after.iter().sum::<f64>(),
    );
    assert!(
        (before - after_mean).abs() > 1e-3,
        "{case}: the step did not change the loss"
    );
}

#[test]
fn reference_matches_amat_on_first_step_loss_and_pgd_norm() {
    let python = match reference::python() {
        Ok(p) => p,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let _ = support::root();
    compare(&python, Norm::L2, 1.0, NormKind::Instance);
    compare(&python, Norm::Linf, 0.03, NormKind::Instance);
    compare(&python, Norm::L2, 1.0, NormKind::Batch);
}

/// AMAT's reference rule against the Python reference written from AMAT.md:
/// three epochs of two batches, no random start, margins compared after
/// every epoch. `tau` sits at the median clean loss, so some samples hold
/// and some cross from the first epoch on.
/// With `gate`, the clean gate lets through the samples whose clean loss is
/// at most the 6th smallest (6 of 8).
fn compare_reference_rule(python: &Path, gate: bool) {
    let case = format!("reference rule, clean gate {gate}");
    let text = "[run]\nmethod = \"amat\"\nthreads = 1\n[data.synthetic]\ntrain = 8\ntest = 1\nsize = 16\n\
         [model]\ndepth = 2\nwidth = 4\n\
         [train]\nbatch_size = 4\nwarmup_epochs = 0\nbeta = 0.5\n[train.attack]\nsteps = 4\nrandom_start = false\n\
         [amat]\nrule = \"reference\"\ndelta_eps = 0.5\neps_max = 4.0\n";
    let mut cfg = RunConfig::parse(text, Path::new("parity")).unwrap();
    tch::set_num_threads(1);
    let mut plugin = Plugin::builtin_segmentation(3);
    tch::manual_seed(11);
    let data = support::samples::random_samples(8);
    let mut t = Trainer::new(&cfg, &plugin, Device::Cpu, data.len()).unwrap();
    let all: Vec<usize> = (0..8).collect();
    let (x, y) = data.batch(&all, Device::Cpu).unwrap();
    let mut clean = {
        let _guard = tch::no_grad_guard();
        floats(&plugin.loss(&t.model.forward_t(&x, false), &y).unwrap())
    };
    clean.sort_by(f64::total_cmp);
    let tau = 0.5 * (clean[3] + clean[4]);
    cfg.amat.tau = Some(tau);
    t.cfg.amat.tau = Some(tau);
    if gate {
        cfg.amat.tau_clean = Some(clean[5] + 1e-3);
        t.cfg.amat.tau_clean = cfg.amat.tau_clean;
    }
    t.judge = Judge::loss_at_most(tau);

    let dir = tempfile::tempdir().unwrap();
    let start = t.margins.as_ref().unwrap().values.clone();
    let inputs = StateInputs {
        info: plugin.info(),
        weights: &t.vs,
        data: &data,
        margins: &start,
        order: &all,
        torch_seed: 0,
        threads: 1,
    };
    reference::write_state(dir.path(), &cfg, &inputs).unwrap();
    let mut ours = Vec::new();
    let mut orders = Vec::new();
    for _ in 0..3 {
        // The order the trainer is about to draw.
        let mut rng = t.rng.clone();
        let mut order: Vec<usize> = (0..8).collect();
        order.shuffle(&mut rng);
        orders.push(order);
        let rec = t
            .train_epoch(&mut plugin, &data, &ProgressBar::hidden())
            .unwrap();
        let m = t.margins.as_ref().unwrap().values.clone();
        ours.push((m, rec.clean_loss));
    }
    let config_path = dir.path().join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["orders"] = serde_json::json!(orders);
    std::fs::write(&config_path, config.to_string()).unwrap();

    let theirs = run_reference(python, "amat-epochs", dir.path(), &case);
    let epochs = theirs["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 3);
    for (e, ((margins, clean_loss), theirs)) in ours.iter().zip(epochs).enumerate() {
        let their_m: Vec<f64> = theirs["margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        println!("{case}: epoch {e}: margins amat {margins:?} reference {their_m:?}");
        for (a, b) in margins.iter().zip(&their_m) {
            assert!(
                (*a as f64 - b).abs() <= TOLERANCE,
                "{case}: epoch {e}: margins differ: amat {margins:?}, reference {their_m:?}"
            );
        }
        let their_loss = theirs["clean_loss"].as_f64().unwrap();
        assert!(
            (clean_loss - their_loss).abs() <= TOLERANCE,
            "{case}: epoch {e}: clean loss amat {clean_loss}, reference {their_loss}"
        );
    }
    // Not vacuous: crossings pulled margins below their start, and the
    // margins ended apart from each other.
    let crossed = ours.iter().any(|(m, _)| m.iter().any(|&v| v < 0.5));
    let last = &ours[2].0;
    let spread = last.iter().cloned().fold(f32::MIN, f32::max)
        - last.iter().cloned().fold(f32::MAX, f32::min);
    assert!(
        crossed && spread > 0.25,
        "{case}: margins should cross and spread: {ours:?}"
    );
}

#[test]
fn reference_rule_matches_the_python_reference_epoch_by_epoch() {
    let python = match reference::python() {
        Ok(p) => p,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    compare_reference_rule(&python, false);
    compare_reference_rule(&python, true);
}
