//! Contract versions: plugins built for `amat:task@0.1.0` (a build kept as a
//! fixture) still load, train and evaluate on a host of 0.2.0; current
//! plugins speak 0.2.0 with per-sample scores; a plugin of a contract this
//! host does not load gets a message that says what to do.

use crate::support;

use amat_host::config::RunConfig;
use amat_host::eval;
use amat_host::plugin::{Plugin, PluginKind, SandboxLimits};
use amat_host::train::Trainer;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixture() -> PathBuf {
    support::root().join("tests/fixtures/segmentation-contract-0.1.0.wasm")
}

fn config(plugin: &Path, extra: &str) -> RunConfig {
    let text = format!(
        "[run]\nmethod = \"amat\"\nthreads = 1\n[data.synthetic]\ntrain = 8\ntest = 4\nsize = 16\n\
         [model]\nwidth = 4\n[train]\nepochs = 3\nwarmup_epochs = 1\nbatch_size = 4\n\
         [train.attack]\nsteps = 3\n[amat]\ndelta_eps = 0.5\neps_max = 2.0\n{extra}\
         [eval]\neps = [0.0, 1.0]\nrestarts = 1\n[eval.attack]\nsteps = 5\n"
    );
    let mut cfg = RunConfig::parse(&text, Path::new("test.toml")).unwrap();
    cfg.run.plugin = Some(plugin.to_path_buf());
    cfg.validate().unwrap();
    cfg
}

#[test]
fn a_plugin_built_for_0_1_0_still_loads_trains_and_evaluates() {
    let mut plugin = Plugin::load(fixture(), &SandboxLimits::default()).unwrap();
    assert_eq!(plugin.kind(), PluginKind::Wasm);
    assert_eq!(plugin.contract(), "amat:task@0.1.0");
    assert!(plugin.info().scores.is_empty());
    let cfg = config(&fixture(), "");
    let splits = cfg.data.load(&mut plugin).unwrap();
    let mut t = Trainer::new(&cfg, &plugin, Device::Cpu, splits.train.len()).unwrap();
    // No scores and no thresholds: the judgement is the loss against tau.
    assert_eq!(
        t.judge.describe(),
        format!("loss <= {}", plugin.info().tau as f64)
    );
    let first = t
        .train_epoch(&mut plugin, &splits.train, &ProgressBar::hidden())
        .unwrap();
    let mut last = first.clone();
    for _ in 1..cfg.train.epochs {
        last = t
            .train_epoch(&mut plugin, &splits.train, &ProgressBar::hidden())
            .unwrap();
    }
    assert!(last.clean_loss < first.clean_loss, "{first:?} -> {last:?}");
    assert_eq!(last.phase, "adversarial");
    let curve = eval::robustness(
        &mut amat_host::attack::Context::new(&t.model, &mut plugin, t.range),
        &splits.test,
        &cfg.eval,
        Device::Cpu,
        0,
        &ProgressBar::hidden(),
    )
    .unwrap();
    let dice = curve.metric("dice_mean").unwrap();
    assert!(
        dice.values.iter().all(|v| (0.0..=1.0).contains(v)),
        "{dice:?}"
    );
    // Asking a 0.1.0 plugin for scores it does not have is a config error.
    let cfg = config(&fixture(), "[amat.judge]\nhard_dice = 0.8\n");
    let Err(err) = Trainer::new(&cfg, &plugin, Device::Cpu, 8) else {
        panic!("a score the plugin lacks was accepted")
    };
    let err = err.to_string();
    assert!(
        err.contains("has no score `hard_dice` (it has: none"),
        "{err}"
    );
}

#[test]
fn current_plugins_speak_0_2_0_with_per_sample_scores() {
    for path in [
        support::wasm_plugin("segmentation"),
        support::native_plugin("segmentation"),
    ] {
        let mut plugin = Plugin::load(&path, &SandboxLimits::default()).unwrap();
        let want = match plugin.kind() {
            PluginKind::Wasm => "amat:task@0.2.0",
            _ => "native ABI 2",
        };
        assert_eq!(plugin.contract(), want);
        assert_eq!(plugin.info().scores[0].name, "hard_dice");
        // Two samples: one predicted perfectly, one all background.
        let y = Tensor::from_slice(&[1.0f32, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]).reshape([2, 2, 2]);
        let classes = plugin.info().output_channels as i64;
        let perfect = y
            .to_kind(Kind::Int64)
            .one_hot(classes)
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float);
        let pred = Tensor::cat(&[perfect.narrow(0, 0, 1), perfect.narrow(0, 1, 1) * 0.0], 0);
        let scores = plugin.scores(&pred, &y).unwrap();
        assert_eq!(scores.len(), 1);
        assert_eq!(scores[0].values, vec![1.0, 0.0], "{}", path.display());
    }
}

#[test]
fn a_plugin_of_an_unknown_contract_is_told_what_to_do() {
    let bytes = std::fs::read(fixture()).unwrap();
    // The same component claiming a later contract (same length, so the
    // binary stays well formed).
    let mut patched = bytes.clone();
    let mut found = 0;
    for (from, to) in [
        (
            &b"amat:task/tensors@0.1.0"[..],
            &b"amat:task/tensors@0.9.0"[..],
        ),
        (b"amat:task/types@0.1.0", b"amat:task/types@0.9.0"),
    ] {
        for i in 0..patched.len() - from.len() {
            if &patched[i..i + from.len()] == from {
                patched[i..i + from.len()].copy_from_slice(to);
                found += 1;
            }
        }
    }
    assert!(found >= 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.wasm");
    std::fs::write(&path, patched).unwrap();
    let err = Plugin::load(&path, &SandboxLimits::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("built for amat:task@0.9.0; this host provides amat:task@0.2.0 (and loads 0.2.0, 0.1.0): rebuild it against the plugin-sdk of contract 0.2.0"),
        "{err}"
    );
}
