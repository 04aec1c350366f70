//! The PyTorch-Python reference of the benchmark (host/benches/reference/
//! amat_reference.py) computes what amat computes: from the same initial
//! U-Net weights (exported by amat), data and settings, the per-sample clean
//! loss, the PGD noise norm (no random start), the adversarial loss and the
//! loss after one SAT optimizer step agree to 1e-4, for L2 and Linf PGD and
//! for instance and batch norm. Runs when a Python with torch and numpy is
//! at hand ($AMAT_PYTHON, else python3); says `skipped: <why>` otherwise.

mod support;

use amat_host::attack::{self, Norm, sample_norms};
use amat_host::data::{Dataset, Sample};
use amat_host::model::NormKind;
use amat_host::plugin::Plugin;
use amat_host::reference::{self, StateInputs};
use amat_host::train::Trainer;
use amat_host::train::config::{Method, RunConfig};
use indicatif::ProgressBar;
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
    let samples = (0..4)
        .map(|i| Sample {
            id: format!("s{i}"),
            image: Tensor::rand([1, 16, 16], (Kind::Float, Device::Cpu)),
            target: Tensor::randint(3, [16, 16], (Kind::Float, Device::Cpu)),
        })
        .collect();
    let data = Dataset {
        name: "parity".into(),
        samples,
    };
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
    let (x, y) = data.batch(&[0, 1, 2, 3], Device::Cpu);
    let eps_t = Tensor::full([4], eps, (Kind::Float, Device::Cpu));
    let delta = attack::pgd(
        &t.model,
        &mut plugin,
        &x,
        &y,
        &eps_t,
        &cfg.train.attack,
        t.range,
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

    let out = Command::new(python)
        .arg(reference::script())
        .args(["check", "--state"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{case}: the reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
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
