//! The mistakes of issue 14 that used to train without a word: each now
//! stops the run (checks before training) or warns, with a message that
//! names the fix. The plugins are `tests/hostile` builds (`src/silent.rs`);
//! the runs are tiny (seconds).

use crate::support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A tiny synthetic run config in `dir`: `method`, with `extra` TOML appended.
fn config(dir: &Path, method: &str, extra: &str) -> PathBuf {
    let cfg = dir.join(format!("{method}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[run]\nmethod = \"{method}\"\nthreads = 1\ndevice = \"cpu\"\n\
             [data.synthetic]\ntrain = 8\ntest = 2\nsize = 16\n\
             [model]\nwidth = 4\n[train]\nepochs = 2\nwarmup_epochs = 1\nbatch_size = 4\n\
             [train.attack]\nsteps = 1\n\
             [eval]\neps = [0.0, 0.5]\nbatch_size = 4\n[eval.attack]\nsteps = 1\n{extra}"
        ),
    )
    .unwrap();
    cfg
}

fn run(feature: &str, cfg: &Path, out: &Path, extra: &[&str]) -> Output {
    let plugin = support::hostile_plugin(feature);
    let mut args = vec![
        "run".to_string(),
        "--config".into(),
        s(cfg),
        "--out".into(),
        s(out),
        "--plugin".into(),
        s(&plugin),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    support::run_amat_host(&args)
}

/// The one `error:` line of a run that must stop before training, and no
/// run folder left behind.
fn stopped(out: &Output, dir: &Path) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected exit 1: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(!dir.exists(), "{} was created", dir.display());
    errors[0].to_string()
}

fn contains_all(text: &str, words: &[&str]) {
    for w in words {
        assert!(text.contains(w), "`{w}` missing from: {text}");
    }
}

#[test]
fn a_zero_gradient_loss_stops_the_run_unless_checks_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "std", "");
    let out_dir = tmp.path().join("round");
    let err = stopped(&run("round-loss", &cfg, &out_dir, &[]), &out_dir);
    contains_all(
        &err,
        &[
            "check before training failed",
            "input gradient",
            "zero",
            "round, floor",
            "smooth surrogate",
            "--skip-checks",
        ],
    );
    // An expert may train anyway; the run says it skipped the checks.
    let out = run("round-loss", &cfg, &out_dir, &["--skip-checks"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped (--skip-checks)"));
}

#[test]
fn a_loss_normalised_over_the_batch_stops_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "std", "");
    let out_dir = tmp.path().join("normalised");
    let err = stopped(&run("batch-normalised", &cfg, &out_dir, &[]), &out_dir);
    contains_all(
        &err,
        &[
            "per-sample",
            "changing sample 0 moved the other samples' losses",
            "no mean, sum or normalisation over the batch",
            "mean_per_sample",
        ],
    );
}

#[test]
fn metric_names_other_than_described_stop_the_run_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "std", "");
    let out_dir = tmp.path().join("renamed");
    let err = stopped(&run("metrics-renamed", &cfg, &out_dir, &[]), &out_dir);
    contains_all(
        &err,
        &[
            "metrics",
            "`accuracy`",
            "did not return it",
            "every name `describe` lists in metric_names",
        ],
    );
    // The sound build passes the same checks and trains.
    let out = run("good", &cfg, &tmp.path().join("good"), &[]);
    assert!(out.status.success());
}

#[test]
fn a_tau_no_sample_reaches_is_a_warning_with_the_loss_quantiles() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "amat", "");
    let out_dir = tmp.path().join("unreachable");
    let out = run("tau-unreachable", &cfg, &out_dir, &[]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    contains_all(
        &stderr,
        &[
            "after 1 warm-up epoch(s) no training sample is judged correct",
            "margins cannot move",
            "min ",
            "q25 ",
            "median ",
            "q75 ",
            "max ",
            "tau 0",
            "Raise amat.tau",
        ],
    );
    let summary = std::fs::read_to_string(out_dir.join("summary.md")).unwrap();
    contains_all(
        &summary,
        &[
            "**Warning** (epoch 2)",
            "no training sample is judged correct",
        ],
    );
    let epochs = std::fs::read_to_string(out_dir.join("epochs.jsonl")).unwrap();
    let records: Vec<Value> = epochs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records[0].get("warning").is_none(), "{}", records[0]);
    assert!(records[1]["warning"].as_str().unwrap().contains("median"));

    // A tau every sample reaches: no warning.
    let cfg = config(tmp.path(), "amat", "[amat]\ntau = 100.0\n");
    let out = run("tau-unreachable", &cfg, &tmp.path().join("reached"), &[]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("judged correct"));

    // `plugin check --sample` shows the same quantiles: a warning, not a failure.
    let square = tmp.path().join("square.raw");
    std::fs::write(&square, (0..=255u8).collect::<Vec<u8>>()).unwrap();
    for (feature, status) in [("tau-unreachable", "warn"), ("good", "pass")] {
        let out = support::amat_host()
            .args(["plugin", "check", "--json"])
            .arg(support::hostile_plugin(feature))
            .args(["--sample", &s(&square)])
            .output()
            .unwrap();
        assert!(out.status.success(), "{feature}");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let line = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "tau")
            .unwrap();
        assert_eq!(line["status"], status, "{feature}: {line}");
        contains_all(line["detail"].as_str().unwrap(), &["median", "q25", "tau"]);
    }
}

#[test]
fn a_negative_tau_is_refused_in_the_plugin_and_in_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let out = support::amat_host()
        .args(["plugin", "check"])
        .arg(support::hostile_plugin("negative-tau"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    contains_all(
        &String::from_utf8_lossy(&out.stdout),
        &[
            "FAIL",
            "tau is -1",
            "set it in describe to a finite loss >= 0",
        ],
    );
    let cfg = config(tmp.path(), "amat", "");
    let out_dir = tmp.path().join("negative");
    let err = stopped(&run("negative-tau", &cfg, &out_dir, &[]), &out_dir);
    contains_all(&err, &["tau is -1", "set it in describe"]);
    let cfg = config(tmp.path(), "amat", "[amat]\ntau = -1.0\n");
    let err = stopped(&run("good", &cfg, &out_dir, &[]), &out_dir);
    contains_all(&err, &["amat.tau = -1 must be >= 0"]);
}

/// `amat_plugin_sdk::losses` on hand-made tensors, through the host (their
/// ops run there): the `sdk-losses` build returns each helper's per-sample
/// values as metrics.
#[test]
fn the_sdk_loss_helpers_match_hand_computed_values() {
    use amat_host::plugin::{Plugin, SandboxLimits};
    use tch::{Device, Kind, Tensor};
    let mut p = Plugin::load(
        support::hostile_plugin("sdk-losses"),
        &SandboxLimits::default(),
    )
    .unwrap();
    let pred = Tensor::zeros([1, 8, 2, 2], (Kind::Float, Device::Cpu));
    let target = Tensor::zeros([1, 2, 2], (Kind::Float, Device::Cpu));
    let m = p.metrics(&pred, &target).unwrap();
    let get = |n: &str| m.iter().find(|x| x.name == n).unwrap().value;
    let ln2 = std::f64::consts::LN_2;
    let softplus = |x: f64| (1.0 + x.exp()).ln();
    for (name, want) in [
        // mean(softplus(2) - 2, softplus(-1)) and mean(ln 2, ln 2)
        ("bce_0", (softplus(2.0) - 2.0 + softplus(-1.0)) / 2.0),
        ("bce_1", ln2),
        // -log(3 / (1 + 3)) and -log(1/2)
        ("ce_0", -(0.75f64).ln()),
        ("ce_1", ln2),
        // (2 * 1.5 + 1) / (1.5 + 2 + 1) and (0 + 1) / (0 + 2 + 1)
        ("dice_0", 4.0 / 4.5),
        ("dice_1", 1.0 / 3.0),
        ("hot_0", 0.0),
        ("hot_2", 1.0),
        ("hot_3", 1.0),
        ("hot_5", 0.0),
    ] {
        let got = get(name);
        assert!((got - want).abs() < 1e-6, "{name}: {got} != {want}");
    }
}
