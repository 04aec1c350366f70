//! The sandbox tried as an attacker would, around its limits rather than
//! head-on (issue 18): host memory through sizes the budget did not see, a
//! compiled file planted in the cache, a manifest that writes outside its
//! folder, output streams that fill, values that used to panic, strings and
//! metric names a plugin controls, and two writers on one run folder. Each
//! test is one class of hole; each fails on the host before the fix.

use crate::support;

use amat_host::config::RunConfig;
use amat_host::plugin::{CallError, DecodeRequest, File, Plugin, SandboxLimits};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

fn case() -> (Tensor, Tensor) {
    let pred = Tensor::randn([2, 8, 8, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let target = Tensor::randint(8, [2, 8, 8], (Kind::Int64, Device::Cpu)).to_kind(Kind::Float);
    (pred, target)
}

fn load(feature: &str) -> Plugin {
    Plugin::load(support::hostile_plugin(feature), &SandboxLimits::default())
        .unwrap_or_else(|e| panic!("{feature} should load: {e}"))
}

fn one_line(err: &impl std::fmt::Display, words: &[&str]) {
    let text = err.to_string();
    assert!(!text.contains('\n'), "not one line: {text}");
    assert!(!text.contains('\u{1b}'), "holds an escape: {text}");
    assert!(
        text.chars().count() < 1000,
        "too long: {} chars",
        text.len()
    );
    for w in words {
        assert!(text.contains(w), "`{w}` missing from: {text}");
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// The `error:` lines of a failed command; it must have exited 1, not
/// panicked (101).
fn failed(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected exit 1: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_string()
}

// ------------------------------------------------ 1. the tensor budget

/// Runs `amat-host plugin check --json` on `plugin`, sampling the child's
/// peak resident memory (VmHWM) until it exits: (passed, report, peak bytes).
fn check_with_peak_rss(plugin: &Path) -> (bool, Value, u64) {
    let mut child = support::amat_host()
        .args(["plugin", "check", "--json"])
        .arg(plugin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut { stdout }, &mut out).unwrap();
        out
    });
    while child.try_wait().unwrap().is_none() {
        if let Ok(text) = std::fs::read_to_string(&status)
            && let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kb << 10);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = reader.join().unwrap();
    let ok = child.wait().unwrap().success();
    let report: Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {}", String::from_utf8_lossy(&out)));
    (ok, report, peak)
}

#[test]
fn check_reports_the_budget_on_one_hot_minus_one_and_a_million_ops_under_1_gb() {
    for (feature, words) in [
        ("one-hot-negative", "number of classes"),
        ("million-ops", "ops in one call"),
    ] {
        let (ok, report, peak) = check_with_peak_rss(&support::hostile_plugin(feature));
        assert!(!ok, "{feature} passed: {report:#}");
        let line = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "loss shape")
            .unwrap();
        assert_eq!(line["status"], "fail", "{feature}: {report:#}");
        let detail = line["detail"].as_str().unwrap();
        assert!(detail.contains("tensor budget"), "{feature}: {detail}");
        assert!(detail.contains(words), "{feature}: {detail}");
        eprintln!("{feature}: peak RSS of plugin check {} MiB", peak >> 20);
        assert!(peak > 0, "{feature}: the peak was never sampled");
        assert!(peak < 1 << 30, "{feature}: peak RSS {} MiB", peak >> 20);
    }
}

#[test]
fn the_op_budget_and_the_classes_of_a_one_hot_are_limits_of_the_call() {
    let (pred, target) = case();
    let mut p = load("million-ops");
    let err = p.loss(&pred, &target).unwrap_err();
    assert!(matches!(err.error, Some(CallError::Limit(_))), "{err}");
    one_line(&err, &["tensor budget", "more than 100000 ops"]);
    assert_eq!(p.last_call().usage.tensors.ops, 100_000);
    let mut p = load("one-hot-negative");
    let err = p.loss(&pred, &target).unwrap_err();
    assert!(matches!(err.error, Some(CallError::Limit(_))), "{err}");
    one_line(&err, &["one-hot", "got -1"]);
}

// --------------------------------------- 3. the compiled-component cache

/// `amat-host plugin info --json` with its own component cache.
fn info_name(plugin: &Path, cache: &Path) -> String {
    let out = support::amat_host()
        .args(["plugin", "info", "--json"])
        .arg(plugin)
        .env("AMAT_CACHE_DIR", cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    info["name"].as_str().unwrap().to_string()
}

fn compiled_files(cache: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_compiled_file_copied_over_another_components_is_not_run() {
    let cache = tempfile::tempdir().unwrap();
    let hostile = support::hostile_plugin("good");
    let segmentation = support::wasm_plugin("segmentation");
    assert_eq!(info_name(&hostile, cache.path()), "hostile");
    let hostile_cwasm = compiled_files(cache.path());
    assert_eq!(hostile_cwasm.len(), 1, "{hostile_cwasm:?}");
    assert_eq!(info_name(&segmentation, cache.path()), "segmentation");
    let both = compiled_files(cache.path());
    let seg_cwasm = both.iter().find(|p| **p != hostile_cwasm[0]).unwrap();
    // An attacker who can write the cache plants the other component's
    // native code under the hostile plugin's key.
    std::fs::copy(seg_cwasm, &hostile_cwasm[0]).unwrap();
    assert_eq!(
        info_name(&hostile, cache.path()),
        "hostile",
        "the planted compiled file ran under the plugin's name"
    );
}

// ------------------------------------------------ 4. plugin output

#[test]
fn a_plugin_that_prints_at_every_call_keeps_running() {
    let (pred, target) = case();
    let mut p = load("stderr-spam");
    // About 250 bytes a call: a fixed 8 KiB pipe failed the 33rd.
    for call in 0..300 {
        let loss = p
            .loss(&pred, &target)
            .unwrap_or_else(|e| panic!("call {call}: {e}"));
        assert_eq!(loss.size(), [2]);
    }
}

#[test]
fn verbose_shows_what_a_plugin_prints_prefixed_and_cut() {
    let plugin = support::hostile_plugin("stderr-spam");
    let out = support::amat_host()
        .args(["plugin", "check", "--verbose"])
        .arg(&plugin)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("[stderr-spam.wasm stderr] hostile plugin logs at every call"))
        .unwrap_or_else(|| panic!("no plugin line in: {stderr}"));
    assert!(line.contains('…'), "not cut: {line}");
    let quiet = support::amat_host()
        .args(["plugin", "check"])
        .arg(&plugin)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("hostile plugin logs"));
}

// ------------------------------- 6. plugin strings and metric names

#[test]
fn plugin_strings_are_bounded_and_escaped() {
    let p = load("ansi-name");
    let name = &p.info().name;
    assert!(!name.contains('\u{1b}') && !name.contains('\n'), "{name:?}");
    assert!(name.contains("hostile"), "{name:?}");

    let err = Plugin::load(
        support::hostile_plugin("huge-name"),
        &SandboxLimits::default(),
    )
    .unwrap_err();
    assert_eq!(err.call, "describe");
    one_line(&err, &["task name is", "at most 64"]);
}

#[test]
fn metric_names_are_checked_against_describe_at_check_and_at_run_time() {
    let (pred, target) = case();
    let mut dup = load("metrics-duplicate");
    let err = dup.metrics(&pred, &target).unwrap_err();
    one_line(&err, &["metrics", "`accuracy` twice"]);
    let out = support::amat_host()
        .args(["plugin", "check", "--json"])
        .arg(support::hostile_plugin("metrics-duplicate"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "metrics")
        .unwrap();
    assert_eq!(line["status"], "fail", "{report:#}");

    let mut drift = load("metrics-drift");
    drift
        .metrics(&pred, &target)
        .expect("the first call is sound");
    let err = drift.metrics(&pred, &target).unwrap_err();
    one_line(&err, &["`accuracy`", "did not return it"]);
}

// ------------------------------------ 5. no panic on a value from outside

#[test]
fn channels_from_describe_are_bounded() {
    let err = Plugin::load(
        support::hostile_plugin("huge-channels"),
        &SandboxLimits::default(),
    )
    .unwrap_err();
    one_line(&err, &["output channels = 4000000000"]);
    let out = support::amat_host()
        .args(["plugin", "check"])
        .arg(support::hostile_plugin("huge-channels"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL  describe"), "{text}");
}

#[test]
fn config_values_past_what_libtorch_and_the_attack_take_are_refused() {
    let plugin = support::wasm_plugin("segmentation");
    let base = format!(
        "[run]\nmethod = \"std\"\nplugin = \"{}\"\n[data.synthetic]\ntrain = 4\n",
        plugin.display()
    );
    let cfg = RunConfig::parse(&base, Path::new("x.toml")).unwrap();
    cfg.validate().unwrap();
    for (extra, key) in [
        ("[eval]\neps = [0.0, 1e308]\n", "eval.eps[1]"),
        ("", "run.threads"),
    ] {
        let text = if extra.is_empty() {
            base.replace("[run]\n", "[run]\nthreads = 100000\n")
        } else {
            format!("{base}{extra}")
        };
        let cfg = RunConfig::parse(&text, Path::new("x.toml")).unwrap();
        let err = cfg.validate().unwrap_err();
        assert!(err.contains(key), "{key}: {err}");
    }
}

/// A synthetic STD run's config in `dir` with `extra` TOML appended.
fn run_config(dir: &Path, extra: &str) -> PathBuf {
    let cfg = dir.join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nmethod = \"std\"\nthreads = 1\ndevice = \"cpu\"\n\
             [model]\nwidth = 4\n[train]\nepochs = 2\nbatch_size = 8\n\
             [eval]\neps = [0.0, 0.5]\nbatch_size = 4\n[eval.attack]\nsteps = 1\n{extra}"
        ),
    )
    .unwrap();
    cfg
}

fn amat_run(args: &[&str]) -> Output {
    support::amat_host()
        .arg("run")
        .args(args)
        .arg("--plugin")
        .arg(support::wasm_plugin("segmentation"))
        .output()
        .unwrap()
}

#[test]
fn a_model_too_deep_or_an_empty_eval_split_stops_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_config(
        tmp.path(),
        "[data.synthetic]\ntrain = 8\ntest = 2\nsize = 8\n",
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("width = 4\n", "width = 4\ndepth = 4\n")).unwrap();
    let out = amat_run(&["--config", &s(&cfg), "--out", &s(&tmp.path().join("a"))]);
    let err = failed(&out);
    assert!(err.contains("model.depth = 4"), "{err}");

    let cfg = run_config(
        tmp.path(),
        "[data.synthetic]\ntrain = 8\nval = 0\ntest = 2\nsize = 16\n",
    );
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("[eval]\n", "[eval]\nsplit = \"val\"\n"),
    )
    .unwrap();
    let start = Instant::now();
    let out = amat_run(&["--config", &s(&cfg), "--out", &s(&tmp.path().join("b"))]);
    let err = failed(&out);
    assert!(err.contains("eval.split = `val`"), "{err}");
    assert!(!tmp.path().join("b").exists());
    eprintln!("refused after {:?}", start.elapsed());
}

#[test]
fn a_broken_state_json_is_an_error_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_config(
        tmp.path(),
        "[data.synthetic]\ntrain = 8\ntest = 2\nsize = 16\n",
    );
    let run = tmp.path().join("run");
    let out = amat_run(&["--config", &s(&cfg), "--out", &s(&run), "--stop-after", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let state_path = run
        .join("checkpoints")
        .join(latest.trim())
        .join("state.json");
    let good: Value = serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    for (field, value, words) in [
        ("config_hash", "ab", "another config"),
        ("rng_seed", "abc", "rng_seed"),
        ("rng_seed", "é", "rng_seed"),
    ] {
        let mut state = good.clone();
        state[field] = Value::from(value);
        std::fs::write(&state_path, serde_json::to_string(&state).unwrap()).unwrap();
        let err = failed(&amat_run(&["--resume", &s(&run)]));
        assert!(err.contains(words), "{field}: {err}");
    }
}

// ------------------------------------------------ 3. manifests and caches

/// A dataset prepared by the hostile plugin's slice decoder in `dir`:
/// (manifest path, spec path).
fn prepare(dir: &Path, options: &str) -> (Output, PathBuf) {
    let square = dir.join("square.raw");
    std::fs::write(&square, (0..=255u8).collect::<Vec<u8>>()).unwrap();
    let spec = dir.join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"squares\"\nfiles = [\"square.raw\"]\n[decode]\n{options}\n\
             [split]\ntrain = 0.6\nval = 0.2\ntest = 0.2\ngap = 0\n"
        ),
    )
    .unwrap();
    let out = support::amat_host()
        .args(["data", "prepare", "--plugin"])
        .arg(support::hostile_plugin("good"))
        .args(["--spec", &s(&spec), "--out", &s(&dir.join("prepared"))])
        .output()
        .unwrap();
    (out, dir.join("prepared/manifest.json"))
}

#[test]
fn decode_output_of_mixed_shapes_is_refused_naming_the_example() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, _) = prepare(tmp.path(), "mixed = true");
    let err = failed(&out);
    assert!(err.contains("`square:axial:5`"), "{err}");
    assert!(err.contains("decode"), "{err}");
}

#[test]
fn decode_output_over_the_copy_limit_says_to_lower_the_size() {
    let mut p = load("good");
    let err = p
        .decode(&DecodeRequest {
            files: vec![File {
                name: "x.raw".into(),
                bytes: vec![1; 4],
            }],
            options: r#"{"huge": true}"#.into(),
        })
        .unwrap_err();
    assert!(matches!(err.error, Some(CallError::Limit(_))), "{err}");
    one_line(&err, &["decode", "copy limit", "lower the size"]);
}

fn edit_manifest(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
}

#[test]
fn a_manifest_cache_outside_its_folder_is_refused_and_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, manifest) = prepare(tmp.path(), "slices = true");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugin = load("good");
    let outside = tmp.path().join("outside.txt");
    std::fs::write(&outside, "precious").unwrap();
    std::os::unix::fs::symlink(&outside, tmp.path().join("prepared/link")).unwrap();
    for cache in [
        s(&outside),
        "../outside.txt".to_string(),
        "link".to_string(),
    ] {
        edit_manifest(&manifest, |m| {
            m["cache"] = Value::from(cache.clone());
            // A changed option forces decoding again, which writes the cache.
            m["options"]["slices"] = Value::from(1);
        });
        let err = amat_host::data::prepare::load_splits(&manifest, &plugin).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("field `cache`"), "{cache}: {text}");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
    }
}

#[test]
fn the_cache_key_covers_the_sample_list_and_the_splits() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, manifest) = prepare(tmp.path(), "slices = true");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugin = load("good");
    let first_pixel = |t: &Tensor| t.double_value(&[0, 0, 0]);
    // Swap the first two samples of the manifest (both in train): read by
    // position, the cache would pair each id with the other's tensors.
    edit_manifest(&manifest, |m| {
        m["samples"].as_array_mut().unwrap().swap(0, 1);
    });
    let splits = amat_host::data::prepare::load_splits(&manifest, &plugin).unwrap();
    for s in &splits.train.samples {
        let k: f64 = s.id.rsplit(':').next().unwrap().parse().unwrap();
        assert_eq!(
            first_pixel(&s.image),
            (k / 255.0) as f32 as f64,
            "sample {} holds another's image",
            s.id
        );
    }
    // Moving a test sample into train changes the key too.
    let before: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    edit_manifest(&manifest, |m| {
        let samples = m["samples"].as_array_mut().unwrap();
        let last = samples.len() - 1;
        samples[last]["split"] = Value::from("train");
    });
    let splits = amat_host::data::prepare::load_splits(&manifest, &plugin).unwrap();
    let after: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_ne!(
        before["cache_key"], after["cache_key"],
        "the edit met the old cache"
    );
    assert!(
        splits
            .train
            .samples
            .iter()
            .any(|s| s.id == "square:axial:9")
    );
}

// ------------------------------------------- 7. one writer per run folder

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(120), "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn partials(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-"))
        .collect()
}

#[test]
fn a_run_folder_has_one_writer_and_a_run_killed_early_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    // An epoch of seconds: the run is frozen before it ends (see below).
    let cfg = run_config(
        tmp.path(),
        "[data.synthetic]\ntrain = 256\ntest = 2\nsize = 48\n",
    );
    let run = tmp.path().join("run");
    let start = |extra: &[&str]| {
        support::amat_host()
            .args(["run", "--config", &s(&cfg), "--out", &s(&run)])
            .args(extra)
            .arg("--plugin")
            .arg(support::wasm_plugin("segmentation"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = start(&[]);
    wait_for("the staging folder", || !partials(tmp.path()).is_empty());
    // Frozen as soon as it stages, so the kill below lands before its first
    // checkpoint however long the second process takes on a loaded machine.
    let frozen = Command::new("kill")
        .args(["-STOP", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(frozen.success());
    // A second writer of the same folder is refused while the first runs.
    let err = failed(&amat_run(&["--resume", &s(&run)]));
    assert!(err.contains("in use by another amat-host process"), "{err}");
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!run.exists(), "killed before its first checkpoint");
    let err = failed(&amat_run(&["--resume", &s(&run)]));
    assert!(err.contains("start it again with the command"), "{err}");
    // The same command starts it again and cleans up after the killed one.
    let out = Command::new(env!("CARGO_BIN_EXE_amat-host"))
        .args([
            "run",
            "--config",
            &s(&cfg),
            "--out",
            &s(&run),
            "--stop-after",
            "1",
        ])
        .arg("--plugin")
        .arg(support::wasm_plugin("segmentation"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run.join("checkpoints/latest").is_file());
    assert_eq!(partials(tmp.path()), Vec::<String>::new());
}
