//! The hostile-plugin catalogue against the sandbox: every entry is refused
//! or stopped with a one-line error naming the plugin, the call and the
//! limit, and the real segmentation plugin still loads and runs afterwards in
//! the same process. The limits hold: the deadline stops an infinite loop
//! within twice its length, the memory cap refuses the grow past it, the
//! tensor budget refuses a bomb before the host allocates it.

use crate::support;

use amat_host::config::RunConfig;
use amat_host::plugin::{CallError, Plugin, PluginError, SandboxLimits};
use amat_host::tensor::TensorBudget;
use std::path::Path;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

const DEADLINE_MS: u64 = 500;
const MEMORY_MIB: u64 = 64;
const ELEMENTS: u64 = 1 << 22;

/// Tight memory and tensor limits. The deadline stays the default one but in
/// the infinite-loop test: a wall-clock deadline on sound calls would make
/// tests depend on the machine's load.
fn limits() -> SandboxLimits {
    SandboxLimits {
        max_memory_mib: MEMORY_MIB,
        tensors: TensorBudget {
            max_live: 1000,
            max_elements_per_call: ELEMENTS,
            ..TensorBudget::default()
        },
        ..SandboxLimits::default()
    }
}

/// Logits [2, 8, 8, 8] that require gradients and a class map [2, 8, 8].
fn case() -> (Tensor, Tensor) {
    let pred = Tensor::randn([2, 8, 8, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let target = Tensor::randint(8, [2, 8, 8], (Kind::Int64, Device::Cpu)).to_kind(Kind::Float);
    (pred, target)
}

/// The good plugin loads and computes a sound loss in this process.
fn good_plugin_still_works() {
    let mut p = Plugin::load(
        support::wasm_plugin("segmentation"),
        &SandboxLimits::default(),
    )
    .expect("the segmentation plugin loads after a hostile one");
    let (pred, target) = case();
    let loss = p.loss(&pred, &target).expect("and its loss runs");
    assert_eq!(loss.size(), [2]);
}

fn load(feature: &str) -> Plugin {
    Plugin::load(support::hostile_plugin(feature), &limits())
        .unwrap_or_else(|e| panic!("{feature} should load: {e}"))
}

/// One line naming the plugin and the call, with `words` in it.
fn assert_names(err: &PluginError, call: &str, words: &[&str]) {
    let text = err.to_string();
    assert!(!text.contains('\n'), "not one line: {text}");
    assert!(
        text.chars().count() < 1000,
        "too long: {} characters",
        text.len()
    );
    assert!(text.contains("hostile"), "does not name the plugin: {text}");
    assert_eq!(err.call, call, "{text}");
    assert!(
        text.contains(&format!(", {call}:")),
        "does not name the call: {text}"
    );
    for w in words {
        assert!(text.contains(w), "`{w}` missing from: {text}");
    }
}

fn loss_error(feature: &str) -> PluginError {
    let mut p = load(feature);
    let (pred, target) = case();
    p.loss(&pred, &target)
        .expect_err("the hostile loss must fail")
}

#[test]
fn an_infinite_loop_is_stopped_within_twice_its_deadline() {
    let limits = SandboxLimits {
        call_timeout_ms: DEADLINE_MS,
        ..limits()
    };
    let mut p = Plugin::load(support::hostile_plugin("infinite-loop"), &limits).unwrap();
    let (pred, target) = case();
    for _ in 0..2 {
        let start = Instant::now();
        let err = p.loss(&pred, &target).unwrap_err();
        let elapsed = start.elapsed();
        assert!(matches!(err.error, Some(CallError::Limit(_))), "{err}");
        assert_names(&err, "loss", &["time limit", &format!("{DEADLINE_MS} ms")]);
        assert!(
            elapsed < Duration::from_millis(2 * DEADLINE_MS),
            "stopped after {elapsed:?}, deadline {DEADLINE_MS} ms"
        );
        assert!(
            elapsed >= Duration::from_millis(DEADLINE_MS),
            "stopped early: {elapsed:?}"
        );
    }
    good_plugin_still_works();
}

#[test]
fn the_memory_cap_refuses_the_grow_past_it() {
    let mut p = load("memory-bomb");
    let (pred, target) = case();
    let err = p.loss(&pred, &target).unwrap_err();
    assert!(matches!(err.error, Some(CallError::Limit(_))), "{err}");
    assert_names(
        &err,
        "loss",
        &["memory cap", &format!("cap {MEMORY_MIB} MiB")],
    );
    let memory = p
        .last_call()
        .usage
        .memory_bytes
        .expect("wasm memory is measured");
    assert!(
        memory <= MEMORY_MIB << 20,
        "linear memory reached {memory} bytes"
    );
    assert!(
        memory > (MEMORY_MIB << 20) / 2,
        "the bomb should have grown close to the cap: {memory}"
    );
    good_plugin_still_works();
}

#[test]
fn the_tensor_budget_refuses_bombs_before_allocating_them() {
    for feature in ["tensor-bomb-full", "tensor-bomb-one-hot"] {
        let mut p = load(feature);
        let (pred, target) = case();
        let err = p.loss(&pred, &target).unwrap_err();
        assert!(
            matches!(err.error, Some(CallError::Limit(_))),
            "{feature}: {err}"
        );
        assert_names(
            &err,
            "loss",
            &["tensor budget", &format!("limit of {ELEMENTS} per call")],
        );
        // What the call was granted stays far below the bomb (2^60 or 2^48
        // elements): it was refused from its shape, never allocated.
        let used = p.last_call().usage.tensors;
        assert!(used.elements <= ELEMENTS, "{feature}: {used:?}");
    }
    good_plugin_still_works();
}

#[test]
fn deep_recursion_hits_the_stack_cap() {
    for stack_kib in [256, 1024] {
        let limits = SandboxLimits {
            max_stack_kib: stack_kib,
            ..limits()
        };
        let mut p = Plugin::load(support::hostile_plugin("deep-recursion"), &limits).unwrap();
        let (pred, target) = case();
        let err = p.loss(&pred, &target).unwrap_err();
        assert!(matches!(err.error, Some(CallError::Limit(_))), "{err}");
        assert_names(&err, "loss", &["stack limit", &format!("{stack_kib} KiB")]);
    }
    good_plugin_still_works();
}

#[test]
fn handles_a_plugin_never_drops_count_against_the_budget_across_calls() {
    // 100 leaked handles per call against 1000 live: refused by call 11.
    let mut p = load("handle-leak");
    let (pred, target) = case();
    let (call, err) = (1..=20)
        .find_map(|call| p.loss(&pred, &target).err().map(|e| (call, e)))
        .expect("the leak was never refused");
    assert!((9..=11).contains(&call), "refused at call {call}");
    assert!(matches!(err.error, Some(CallError::Limit(_))), "{err}");
    assert_names(&err, "loss", &["tensor budget", "never dropped"]);
    good_plugin_still_works();
}

#[test]
fn a_panic_is_a_trap_with_its_message() {
    let err = loss_error("panic");
    assert!(matches!(err.error, Some(CallError::Trap(_))), "{err}");
    assert_names(&err, "loss", &["panics on purpose"]);
    good_plugin_still_works();
}

#[test]
fn broken_results_are_refused() {
    for (feature, words) in [
        ("nan-loss", "non-finite"),
        ("wrong-shape", "expected [2]"),
        ("detached", "detached from the prediction"),
    ] {
        let err = loss_error(feature);
        assert!(
            matches!(err.error, Some(CallError::BadResult(_))),
            "{feature}: {err}"
        );
        assert_names(&err, "loss", &[words]);
    }
    good_plugin_still_works();
}

#[test]
fn a_tensor_kept_from_an_earlier_call_is_stale() {
    let mut p = load("stale-handle");
    let (pred, target) = case();
    let first = p.loss(&pred, &target).expect("the first call is sound");
    assert_eq!(first.size(), [2]);
    // Every handle was released when the call ended: the kept one is stale.
    let err = p.loss(&pred, &target).unwrap_err();
    assert!(matches!(err.error, Some(CallError::BadResult(_))), "{err}");
    assert_names(&err, "loss", &["stale"]);
    good_plugin_still_works();
}

#[test]
fn a_huge_error_string_is_cut_to_one_short_line() {
    let err = loss_error("huge-error");
    let Some(CallError::Plugin(text)) = &err.error else {
        panic!("expected a plugin error: {err}");
    };
    assert!(
        text.chars().count() < 1000,
        "the kept error holds {} characters",
        text.len()
    );
    assert_names(&err, "loss", &["characters in all"]);
    good_plugin_still_works();
}

#[test]
fn components_of_another_world_or_asking_for_the_filesystem_are_refused() {
    let err = Plugin::load(support::hostile_plugin("filesystem"), &limits()).unwrap_err();
    assert!(matches!(err.error, Some(CallError::Refused(_))), "{err}");
    assert_eq!(err.call, "load");
    assert!(err.to_string().contains("wasi:filesystem"), "{err}");
    assert!(err.to_string().contains("filesystem.wasm"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-world.wasm");
    let wat = r#"(component
        (core module $m (func (export "f") (result i32) i32.const 7))
        (core instance $i (instantiate $m))
        (func (export "answer") (result s32) (canon lift (core func $i "f"))))"#;
    std::fs::write(&other, wat::parse_str(wat).unwrap()).unwrap();
    let err = Plugin::load(&other, &limits()).unwrap_err();
    assert!(matches!(err.error, Some(CallError::Refused(_))), "{err}");
    assert!(
        err.to_string().contains("a component of another world"),
        "{err}"
    );
    good_plugin_still_works();
}

#[test]
fn the_environment_is_empty_and_the_clock_is_refused() {
    // Env and args are granted as interfaces (Rust's runtime imports them)
    // but hold nothing of the host's.
    let err = loss_error("environment");
    assert_names(
        &err,
        "loss",
        &["HOME=Err(NotPresent)", "PATH=Err(NotPresent)", "args=[]"],
    );
    let err = Plugin::load(support::hostile_plugin("clock"), &limits()).unwrap_err();
    assert!(matches!(err.error, Some(CallError::Refused(_))), "{err}");
    assert!(err.to_string().contains("wasi:clocks"), "{err}");
    good_plugin_still_works();
}

#[test]
fn a_plugin_that_fails_after_some_calls_reports_which() {
    let mut p = load("fail-after");
    let (pred, target) = case();
    for _ in 0..4 {
        let _ = p
            .loss(&pred, &target)
            .expect("the first four calls are sound");
    }
    let err = p.loss(&pred, &target).unwrap_err();
    assert!(matches!(err.error, Some(CallError::Plugin(_))), "{err}");
    assert_names(&err, "loss", &["at loss call 5"]);
    good_plugin_still_works();
}

#[test]
fn limits_come_from_the_sandbox_section_of_a_run_config() {
    let text = "[run]\nmethod = \"std\"\n[data.synthetic]\ntrain = 4\n\
                [sandbox]\ncall_timeout_ms = 250\nmax_stack_kib = 512\n[sandbox.tensors]\nmax_live = 77\n";
    let cfg = RunConfig::parse(text, Path::new("x.toml")).unwrap();
    assert_eq!(cfg.sandbox.call_timeout_ms, 250);
    assert_eq!(cfg.sandbox.max_stack_kib, 512);
    assert_eq!(cfg.sandbox.tensors.max_live, 77);
    assert_eq!(
        cfg.sandbox.max_memory_mib,
        SandboxLimits::default().max_memory_mib
    );
    let err = RunConfig::parse(
        "[data.synthetic]\ntrain = 4\n[sandbox]\nfuel = 3\n",
        Path::new("x.toml"),
    )
    .unwrap_err();
    assert!(err.contains("unknown field `fuel`"), "{err}");
    // A limit that cannot work is refused at load, naming it.
    let bad = SandboxLimits {
        max_stack_kib: 1 << 20,
        ..SandboxLimits::default()
    };
    let err = Plugin::load(support::wasm_plugin("segmentation"), &bad).unwrap_err();
    assert!(err.to_string().contains("sandbox.max_stack_kib"), "{err}");
}

// ------------------------------------------------------- `plugin check`

/// `amat-host plugin check --json` on a plugin: (exit ok, report).
fn check(plugin: &Path, extra: &[&str]) -> (bool, serde_json::Value) {
    let out = support::amat_host()
        .args(["plugin", "check", "--json"])
        .arg(plugin)
        .args(extra)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

fn status_of<'a>(report: &'a serde_json::Value, name: &str) -> (&'a str, &'a str) {
    let line = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no `{name}` line in {report:#}"));
    (
        line["status"].as_str().unwrap(),
        line["detail"].as_str().unwrap(),
    )
}

#[test]
fn check_passes_the_segmentation_plugin_in_both_builds() {
    for (plugin, sandboxed) in [
        (support::wasm_plugin("segmentation"), true),
        (support::native_plugin("segmentation"), false),
    ] {
        let (ok, report) = check(&plugin, &[]);
        assert!(ok, "{report:#}");
        assert_eq!(report["passed"], true);
        assert_eq!(report["sandboxed"], sandboxed);
        for name in [
            "describe",
            "loss shape",
            "loss finite",
            "loss attached",
            "deterministic",
            "per-sample",
            "gradient",
            "input gradient",
            "loss decreases",
            "metrics",
            "limits",
        ] {
            assert_eq!(status_of(&report, name).0, "pass", "{name}: {report:#}");
        }
        let (status, detail) = status_of(&report, "decode");
        assert_eq!(status, "skip");
        assert!(detail.contains("no --sample"), "{detail}");
        assert!(
            status_of(&report, "gradient").1.starts_with("float64"),
            "{report:#}"
        );
        let note = report["note"].as_str().unwrap();
        if sandboxed {
            assert!(note.contains("sandboxed"), "{note}");
        } else {
            assert!(note.contains("NOT sandboxed"), "{note}");
        }
    }
}

/// Heatmap and box targets are laid out by the plugin (landmark: points;
/// detection: CenterNet maps), so the battery runs on decoded real samples;
/// the gradient check must find the few coordinates a sparse loss depends on.
#[test]
fn check_passes_the_landmark_and_detection_plugins_on_real_samples() {
    let raw = |p: &str| support::root().join("data/raw").join(p);
    let cases = [
        (
            "landmark",
            vec![
                raw("autoafids/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"),
                raw("autoafids/tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"),
            ],
            r#"{"indices": [96, 100], "size": 32, "contrasts": ["T1w"]}"#,
        ),
        (
            "detection",
            vec![raw("stardist/img2d.tif"), raw("stardist/mask2d.tif")],
            r#"{"crop": 32, "size": 32}"#,
        ),
    ];
    for (name, files, options) in cases {
        let plugin = support::wasm_plugin(name);
        // Without samples the loss checks cannot build a target: skipped, said why.
        let (_, bare) = check(&plugin, &[]);
        let (status, detail) = status_of(&bare, "loss shape");
        assert_eq!(status, "skip", "{name}: {bare:#}");
        assert!(detail.contains("--sample"), "{name}: {detail}");

        let mut args = vec![
            "--call-timeout-ms",
            "120000",
            "--options",
            options,
            "--sample",
        ];
        let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        args.extend(paths.iter().map(String::as_str));
        let (ok, report) = check(&plugin, &args);
        assert!(ok, "{name}: {report:#}");
        for line in report["checks"].as_array().unwrap() {
            assert_eq!(line["status"], "pass", "{name}: {line:#}");
        }
        let (_, gradient) = status_of(&report, "gradient");
        assert!(gradient.starts_with("float64"), "{name}: {gradient}");
    }
}

#[test]
fn check_fails_each_broken_plugin_on_its_line() {
    let tight = ["--max-memory-mib", "64", "--max-tensor-elements", "1000000"];
    for (feature, line, words) in [
        ("infinite-loop", "loss shape", "time limit"),
        ("memory-bomb", "loss shape", "memory cap"),
        ("tensor-bomb-full", "loss shape", "tensor budget"),
        ("deep-recursion", "loss shape", "stack limit"),
        ("panic", "loss shape", "panics on purpose"),
        ("huge-error", "loss shape", "characters in all"),
        ("nan-loss", "loss finite", "NaN"),
        ("wrong-shape", "loss shape", "expected [4]"),
        ("detached", "loss attached", "detached"),
        ("stale-handle", "deterministic", "stale"),
        ("filesystem", "load", "wasi:filesystem"),
    ] {
        let mut flags = tight.to_vec();
        if feature == "infinite-loop" {
            flags.extend(["--call-timeout-ms", "300"]);
        }
        let (ok, report) = check(&support::hostile_plugin(feature), &flags);
        assert!(!ok, "{feature} passed: {report:#}");
        assert_eq!(report["passed"], false);
        let (status, detail) = status_of(&report, line);
        assert_eq!(
            status, "fail",
            "{feature}: `{line}` should fail: {report:#}"
        );
        assert!(
            detail.contains(words),
            "{feature}: `{words}` not in `{detail}`"
        );
        // Lines before the broken one pass: the battery names the right one.
        for l in report["checks"].as_array().unwrap() {
            if l["name"] == line {
                break;
            }
            assert_ne!(
                l["status"], "fail",
                "{feature}: an earlier line failed: {l}"
            );
        }
    }
    let (ok, report) = check(&support::hostile_plugin("good"), &tight);
    assert!(ok, "the well-behaved build must pass: {report:#}");
}

#[test]
fn check_decodes_the_samples_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let square = dir.path().join("square.raw");
    std::fs::write(&square, (0..=255u8).collect::<Vec<u8>>()).unwrap();
    let plugin = support::hostile_plugin("good");
    let (ok, report) = check(&plugin, &["--sample", square.to_str().unwrap()]);
    assert!(ok, "{report:#}");
    let (status, detail) = status_of(&report, "decode");
    assert_eq!(status, "pass", "{detail}");
    assert!(detail.contains("image [1, 16, 16]"), "{detail}");

    let odd = dir.path().join("odd.raw");
    std::fs::write(&odd, [1u8, 2, 3]).unwrap();
    let (ok, report) = check(&plugin, &["--sample", odd.to_str().unwrap()]);
    assert!(!ok);
    let (status, detail) = status_of(&report, "decode");
    assert_eq!(status, "fail");
    assert!(detail.contains("3 bytes is not a square image"), "{detail}");
}

// ------------------------------------------------ a run whose plugin breaks

#[test]
fn a_run_whose_plugin_starts_failing_stops_and_resumes_with_a_fixed_plugin() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("run.toml");
    // Two batches per epoch, one loss call each (STD): the plugin's fifth
    // call, in epoch 3, fails. (--skip-checks: the checks before training
    // would make calls of their own.)
    std::fs::write(
        &cfg,
        "[run]\nmethod = \"std\"\nthreads = 1\ndevice = \"cpu\"\n\
         [data.synthetic]\ntrain = 16\nval = 2\ntest = 4\nsize = 16\n\
         [model]\nwidth = 4\n[train]\nepochs = 4\nbatch_size = 8\n\
         [eval]\neps = [0.0, 0.5]\nbatch_size = 4\n[eval.attack]\nsteps = 2\n",
    )
    .unwrap();
    let run = tmp.path().join("run");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let hostile = support::hostile_plugin("fail-after");
    let out = support::amat_host()
        .args([
            "run",
            "--config",
            &s(&cfg),
            "--out",
            &s(&run),
            "--plugin",
            &s(&hostile),
            "--skip-checks",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run should fail: {stderr}");
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    for w in [
        "plugin `hostile`",
        "loss",
        "fails on purpose at loss call 5",
    ] {
        assert!(error[0].contains(w), "`{w}` not in {}", error[0]);
    }
    // The checkpoint of epoch 2 is the latest and complete.
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    assert!(latest.trim().ends_with("epoch-0002"), "{latest}");
    assert!(
        run.join("checkpoints")
            .join(latest.trim())
            .join("state.json")
            .is_file()
    );

    let good = support::wasm_plugin("segmentation");
    let out = support::amat_host()
        .args(["run", "--resume", &s(&run), "--plugin", &s(&good)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("run finished"));
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    assert!(latest.trim().ends_with("epoch-0004"), "{latest}");
}
