//! `amat-host study`: a tiny grid (2 arms x 2 seeds on synthetic disks)
//! runs, reports mean ± sd that match its runs' curves, resumes an
//! interrupted run while leaving finished ones untouched, and refuses bad
//! overrides with one line naming the arm.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::SystemTime;

fn amat_host(args: &[&str]) -> Output {
    support::run_amat_host(args)
}

/// A base config and a study over it in `dir`; `arms` is the study's
/// `[[arm]]` tables.
fn study_files(dir: &Path, arms: &str) -> PathBuf {
    let base = format!(
        "[run]\nthreads = 1\nplugin = {:?}\n[data.synthetic]\ntrain = 12\ntest = 4\nsize = 16\n\
         [model]\nwidth = 4\n[train]\nepochs = 2\nbatch_size = 6\n\
         [eval]\neps = [0.0, 0.5, 1.0]\nbatch_size = 4\n[eval.attack]\nsteps = 2\n",
        support::native_plugin("segmentation")
    );
    std::fs::write(dir.join("base.toml"), base).unwrap();
    let study = format!(
        "[study]\nname = \"tiny\"\nbase = \"base.toml\"\nseeds = [1, 2]\nout = {:?}\n{arms}",
        dir.join("out")
    );
    let path = dir.join("study.toml");
    std::fs::write(&path, study).unwrap();
    path
}

const ARMS: &str = "[[arm]]\nname = \"STD\"\nmethod = \"std\"\n\
    [[arm]]\nname = \"SAT eps 1\"\nmethod = \"sat\"\nset = { \"sat.eps\" = 1.0, train = { beta = 1.0 } }\n";

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    (m, var.sqrt())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * (1.0 + b.abs())
}

/// The modification time and bytes of a file.
fn stamp(p: &Path) -> (SystemTime, Vec<u8>) {
    (
        std::fs::metadata(p).unwrap().modified().unwrap(),
        std::fs::read(p).unwrap(),
    )
}

/// A curve's metric values and areas, without its timing.
fn metrics_of(run: &Path) -> serde_json::Value {
    json(&run.join("robustness.json"))["metrics"].clone()
}

#[test]
fn a_study_reports_mean_and_sd_over_seeds_and_resumes_without_touching_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let study = study_files(tmp.path(), ARMS);
    let s = study.to_str().unwrap();
    let out = tmp.path().join("out");
    let r = amat_host(&["study", s, "--device", "cpu"]);
    assert!(r.status.success());

    for f in [
        "study.md",
        "study.json",
        "study.csv",
        "curves.png",
        "clean-vs-robust.png",
    ] {
        assert!(out.join(f).is_file(), "no {f}");
    }
    let cfg = std::fs::read_to_string(out.join("sat-eps-1/seed-2/config.toml")).unwrap();
    let cfg: toml::Table = cfg.parse().unwrap();
    assert_eq!(cfg["run"]["seed"].as_integer(), Some(2));
    assert_eq!(cfg["run"]["method"].as_str(), Some("sat"));
    assert_eq!(cfg["sat"]["eps"].as_float(), Some(1.0));
    assert_eq!(cfg["train"]["beta"].as_float(), Some(1.0));

    // The report's mean and sd are those of the runs' own curves.
    let report = json(&out.join("study.json"));
    assert_eq!(report["metric"], "dice_mean");
    let arms = report["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 2);
    for (arm, slug) in arms.iter().zip(["std", "sat-eps-1"]) {
        let curves: Vec<serde_json::Value> = [1, 2]
            .iter()
            .map(|seed| json(&out.join(slug).join(format!("seed-{seed}/robustness.json"))))
            .collect();
        let dice = |c: &serde_json::Value| {
            c["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == "dice_mean")
                .unwrap()
                .clone()
        };
        for level in 0..3 {
            let v: Vec<f64> = curves
                .iter()
                .map(|c| dice(c)["values"][level].as_f64().unwrap())
                .collect();
            let (m, sd) = mean_sd(&v);
            let stat = &arm["metric"]["levels"][level];
            assert!(close(stat["mean"].as_f64().unwrap(), m), "{stat} vs {v:?}");
            assert!(close(stat["sd"].as_f64().unwrap(), sd), "{stat} vs {v:?}");
            assert_eq!(stat["n"], 2);
        }
        let areas: Vec<f64> = curves
            .iter()
            .map(|c| dice(c)["area"].as_f64().unwrap())
            .collect();
        let (m, sd) = mean_sd(&areas);
        assert!(close(arm["metric"]["area"]["mean"].as_f64().unwrap(), m));
        assert!(close(arm["metric"]["area"]["sd"].as_f64().unwrap(), sd));
        // Each level also as a per-pixel RMS: eps / sqrt(16 * 16).
        let rms = &curves[0]["rms"];
        assert_eq!(rms[2].as_f64().unwrap(), 1.0 / 16.0);
    }
    let md = std::fs::read_to_string(out.join("study.md")).unwrap();
    for want in [
        "| STD | std |",
        " ± ",
        "rms 0.0625",
        "nnU-Net",
        "dice_frontal",
    ] {
        assert!(md.contains(want), "study.md lacks `{want}`:\n{md}");
    }

    // Interrupt one run: its folder is gone, and a run of the study stopped
    // after one epoch recreates it with a checkpoint only.
    let redo = out.join("sat-eps-1/seed-2");
    let before = metrics_of(&redo);
    std::fs::remove_dir_all(&redo).unwrap();
    let others: Vec<PathBuf> = ["std/seed-1", "std/seed-2", "sat-eps-1/seed-1"]
        .iter()
        .flat_map(|r| {
            ["robustness.json", "epochs.jsonl", "summary.md"].map(|f| out.join(r).join(f))
        })
        .collect();
    let stamps: Vec<_> = others.iter().map(|p| stamp(p)).collect();
    let r = amat_host(&["study", s, "--device", "cpu", "--stop-after", "1"]);
    assert!(r.status.success());
    assert!(String::from_utf8_lossy(&r.stdout).contains("study stopped"));
    assert!(!redo.join("robustness.json").exists());
    assert!(redo.join("checkpoints/epoch-0001").is_dir());

    // The same command resumes it and leaves the finished runs alone.
    let r = amat_host(&["study", s, "--device", "cpu"]);
    assert!(r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("SAT eps 1, seed 2: finished") && err.contains("resumed after epoch 1"),
        "{err}"
    );
    assert_eq!(
        err.matches(": finished").count(),
        1,
        "only the one run trains: {err}"
    );
    assert_eq!(
        metrics_of(&redo),
        before,
        "resumed run differs from the uninterrupted one"
    );
    for (p, s0) in others.iter().zip(&stamps) {
        assert_eq!(&stamp(p), s0, "{} was rewritten", p.display());
    }

    // --report-only rebuilds the same report from the finished runs.
    let written = std::fs::read(out.join("study.json")).unwrap();
    std::fs::remove_file(out.join("study.md")).unwrap();
    let r = amat_host(&["study", s, "--report-only"]);
    assert!(r.status.success());
    assert!(out.join("study.md").is_file());
    assert_eq!(std::fs::read(out.join("study.json")).unwrap(), written);
}

#[test]
fn bad_overrides_are_one_line_errors_naming_the_arm_and_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "set = { \"amat.rul\" = \"boundary\" }",
            &["arm `AMAT x`", "amat.rul", "unknown field `rul`"][..],
        ),
        (
            "set = { eval = { restarts = 3 } }",
            &["arm `AMAT x`", "eval.restarts", "[eval]"][..],
        ),
    ];
    for (set, wants) in cases {
        let arms = format!(
            "[[arm]]\nname = \"STD\"\nmethod = \"std\"\n[[arm]]\nname = \"AMAT x\"\nmethod = \"amat\"\n{set}\n"
        );
        let study = study_files(tmp.path(), &arms);
        let r = amat_host(&["study", study.to_str().unwrap()]);
        assert!(!r.status.success());
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        for w in wants {
            assert!(err.contains(w), "`{w}` not in: {err}");
        }
        assert!(!tmp.path().join("out").exists(), "nothing may be created");
    }
}
