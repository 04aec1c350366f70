//! Datasets as users hold them: nnU-Net v2 and MSD folders of many tiny
//! cases (written here), prepared through the wasm segmentation plugin one
//! decode call per case, with a per-case cache, case-level splits and
//! validation of every decoded example.

use crate::support;
use crate::support::samples::{CASE_DIMS, msd_folder, nifti_u8_gz, nnunet_folder};

use amat_host::data::manifest::{Manifest, Split};
use amat_host::data::prepare::load_splits;
use amat_host::eval;
use amat_host::plugin::{Plugin, SandboxLimits};
use indicatif::ProgressBar;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use tch::nn::ModuleT;

fn wasm() -> PathBuf {
    support::wasm_plugin("segmentation")
}

/// `amat-host data prepare --plugin P --spec SPEC --out OUT --decode '{"size": 8}' EXTRA...`
fn prepare(plugin: &Path, spec: &Path, out: &Path, extra: &[&str]) -> Output {
    support::amat_host()
        .args(["data", "prepare", "--plugin"])
        .arg(plugin)
        .arg("--spec")
        .arg(spec)
        .arg("--out")
        .arg(out)
        .args(["--decode", r#"{"size": 8}"#])
        .args(extra)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "prepare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "prepare succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Case -> split, asserting that no case has samples in two splits.
fn split_of_cases(m: &Manifest) -> BTreeMap<String, Split> {
    let mut of: BTreeMap<String, Split> = BTreeMap::new();
    for s in &m.samples {
        assert!(!s.case.is_empty(), "{} records its case", s.id);
        let split = *of.entry(s.case.clone()).or_insert(s.split);
        assert_eq!(
            split, s.split,
            "case {} is in {split:?} and {:?}",
            s.case, s.split
        );
    }
    of
}

/// A wasm component with one more custom section: another binary that
/// decodes the same (a rebuilt plugin).
fn rebuilt(plugin: &Path, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(plugin).unwrap();
    let name = b"amat-test-rebuild";
    bytes.push(0); // custom section
    bytes.push((1 + name.len() + 1) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.push(1);
    let path = dir.join("rebuilt.wasm");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn nnunet_folder_prepares_by_case_and_re_decodes_only_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("Dataset001_Blobs");
    nnunet_folder(&data, 6);
    let out_dir = tmp.path().join("prepared");

    let stdout = ok(&prepare(&wasm(), &data, &out_dir, &["--jobs", "2"]));
    assert!(
        stdout.contains("decoded 6 of 6 cases; 0 from cache"),
        "{stdout}"
    );
    let path = out_dir.join("manifest.json");
    let m = Manifest::read(&path).unwrap();
    assert_eq!(m.layout, "nnunet-v2");
    assert_eq!(m.cases.len(), 6);
    let of = split_of_cases(&m);
    assert_eq!(of.len(), 6, "every case is in a split");
    // Two labelled axial slices per case.
    assert_eq!(m.samples.len(), 12);
    let ids: BTreeSet<&str> = m.samples.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), 12, "ids are unique");
    assert!(
        m.samples
            .iter()
            .all(|s| s.id.starts_with(&format!("{}:axial:", s.case)))
    );

    // Training reads the cache: the splits match the manifest.
    let plugin = Plugin::load(wasm(), &SandboxLimits::default()).unwrap();
    let splits = load_splits(&path, &plugin).unwrap();
    assert_eq!(splits.train.len(), m.counts["train"]);
    assert_eq!(splits.test.len(), m.counts["test"]);
    assert_eq!(splits.train.samples[0].image.size(), [1, 8, 8]);
    // As a run reads it: from the cache at each batch, the same tensors.
    let on_disk = amat_host::data::prepare::load_splits_on_disk(&path, &plugin).unwrap();
    assert!(on_disk.train.samples.is_empty() && on_disk.train.on_disk.is_some());
    assert_eq!(on_disk.train.len(), splits.train.len());
    let all: Vec<usize> = (0..splits.train.len()).rev().collect();
    let (x, y) = splits.train.batch(&all, tch::Device::Cpu).unwrap();
    let (x2, y2) = on_disk.train.batch(&all, tch::Device::Cpu).unwrap();
    assert!(x.equal(&x2) && y.equal(&y2));
    assert_eq!(on_disk.test.id(0), splits.test.id(0));

    let stdout = ok(&prepare(&wasm(), &data, &out_dir, &[]));
    assert!(
        stdout.contains("decoded 0 of 6 cases; 6 from cache"),
        "{stdout}"
    );

    // One changed file: that case alone.
    let (mut image, _) = support::samples::case_volumes(3);
    image[0] = 99;
    std::fs::write(
        data.join("imagesTr/case_003_0000.nii.gz"),
        nifti_u8_gz(CASE_DIMS, &image),
    )
    .unwrap();
    let stdout = ok(&prepare(&wasm(), &data, &out_dir, &[]));
    assert!(
        stdout.contains("decoded 1 of 6 cases; 5 from cache"),
        "{stdout}"
    );
    let cached = std::fs::read_dir(out_dir.join("cases")).unwrap().count();
    assert_eq!(cached, 6, "the old file of case_003 is gone");

    // A rebuilt plugin binary (same name and version): every case again,
    // at prepare and at load.
    let before = Manifest::read(&path).unwrap();
    let rebuilt = rebuilt(&wasm(), tmp.path());
    let stdout = ok(&prepare(&rebuilt, &data, &out_dir, &[]));
    assert!(
        stdout.contains("decoded 6 of 6 cases; 0 from cache"),
        "{stdout}"
    );
    let after = Manifest::read(&path).unwrap();
    assert_ne!(before.plugin.sha256, after.plugin.sha256);
    for (a, b) in before.cases.iter().zip(&after.cases) {
        assert_ne!(a.key, b.key, "case {}", a.id);
    }
    // Loading with the first binary again decodes again, under the first keys.
    let splits = load_splits(&path, &plugin).unwrap();
    assert_eq!(splits.test.len(), after.counts["test"]);
    let reloaded = Manifest::read(&path).unwrap();
    assert_eq!(reloaded.plugin.sha256, before.plugin.sha256);
    assert_eq!(reloaded.cases, before.cases);

    // Another decode option: every case.
    let out = support::amat_host()
        .args(["data", "prepare", "--plugin"])
        .arg(wasm())
        .arg("--spec")
        .arg(&data)
        .arg("--out")
        .arg(&out_dir)
        .args(["--decode", r#"{"size": 12}"#])
        .output()
        .unwrap();
    assert!(ok(&out).contains("decoded 6 of 6 cases"));
}

#[test]
fn a_corrupt_case_is_named_and_the_others_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("blobs");
    nnunet_folder(&data, 4);
    let bad = data.join("imagesTr/case_002_0000.nii.gz");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let out_dir = tmp.path().join("prepared");

    let err = stderr(&prepare(&wasm(), &data, &out_dir, &[]));
    assert!(
        err.contains("1 of 4 cases failed")
            && err.contains("case `case_002`")
            && err.contains("case_002_0000.nii.gz")
            && err.contains("--skip-failed"),
        "{err}"
    );
    assert!(
        !out_dir.join("manifest.json").exists(),
        "no manifest for a failed prepare"
    );

    let out = prepare(&wasm(), &data, &out_dir, &["--skip-failed"]);
    let stdout = ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped case `case_002`"));
    // The three good cases were cached by the failed run already.
    assert!(
        stdout.contains("decoded 0 of 4 cases; 3 from cache; 1 skipped"),
        "{stdout}"
    );
    let m = Manifest::read(&out_dir.join("manifest.json")).unwrap();
    let cases: Vec<&str> = m.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(cases, ["case_000", "case_001", "case_003"]);
    assert!(m.samples.iter().all(|s| s.case != "case_002"));
}

#[test]
fn msd_splits_are_case_disjoint_deterministic_and_k_fold() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("Task99_Blobs");
    msd_folder(&data, 8);
    let cases_in = |m: &Manifest, split: Split| -> BTreeSet<String> {
        split_of_cases(m)
            .into_iter()
            .filter(|(_, s)| *s == split)
            .map(|(c, _)| c)
            .collect()
    };

    let a = tmp.path().join("a");
    ok(&prepare(&wasm(), &data, &a, &["--seed", "3"]));
    let ma = Manifest::read(&a.join("manifest.json")).unwrap();
    assert_eq!(ma.layout, "msd");
    assert_eq!(ma.name, "Blobs");
    let of = split_of_cases(&ma);
    assert_eq!(of.len(), 8);
    // Same seed, another folder: the same split.
    let b = tmp.path().join("b");
    ok(&prepare(&wasm(), &data, &b, &["--seed", "3"]));
    let mb = Manifest::read(&b.join("manifest.json")).unwrap();
    assert_eq!(of, split_of_cases(&mb));

    // 4 folds: each fold's test cases are its held-out quarter, disjoint
    // from its training cases; together they cover every case once.
    let mut held: Vec<String> = Vec::new();
    let mut fold0 = BTreeSet::new();
    for fold in 0..4 {
        let f = tmp.path().join(format!("fold{fold}"));
        let k = fold.to_string();
        ok(&prepare(
            &wasm(),
            &data,
            &f,
            &["--folds", "4", "--fold", &k],
        ));
        let m = Manifest::read(&f.join("manifest.json")).unwrap();
        let record = m.case_split.as_ref().unwrap();
        assert_eq!(
            (record.method.as_str(), record.fold),
            ("k-fold", Some(fold))
        );
        let test = cases_in(&m, Split::Test);
        assert_eq!(test.len(), 2, "fold {fold}");
        assert!(test.is_disjoint(&cases_in(&m, Split::Train)));
        assert!(test.is_disjoint(&cases_in(&m, Split::Val)));
        // The splits file is nnU-Net's format, the same in every folder.
        let folds: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.join("splits_final.json")).unwrap())
                .unwrap();
        let val: BTreeSet<String> = folds[fold]["val"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(val, test);
        if fold == 0 {
            fold0 = test.clone();
        }
        held.extend(test);
    }
    held.sort();
    let all: Vec<String> = (0..8).map(|k| format!("blob_{k:03}")).collect();
    assert_eq!(held, all);

    // The same fold from a given splits file reproduces it.
    let again = tmp.path().join("again");
    let splits = tmp.path().join("fold0/splits_final.json");
    ok(&prepare(
        &wasm(),
        &data,
        &again,
        &["--fold", "0", "--splits", splits.to_str().unwrap()],
    ));
    let m = Manifest::read(&again.join("manifest.json")).unwrap();
    assert_eq!(cases_in(&m, Split::Test), fold0);

    let err = stderr(&prepare(
        &wasm(),
        &data,
        &again,
        &["--folds", "4", "--fold", "4"],
    ));
    assert!(err.contains("--fold 4"), "{err}");
}

#[test]
fn an_image_outside_the_declared_range_is_refused_naming_the_case() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("raw");
    nnunet_folder(&data, 3);
    // Values as stored (0-255) for a task that declares [0, 1], with the
    // plugin's scaling kept (the field's scheme would normalise them).
    let out = support::amat_host()
        .args(["data", "prepare", "--plugin"])
        .arg(wasm())
        .arg("--spec")
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("prepared"))
        .args(["--decode", r#"{"size": 8, "intensity": "raw"}"#])
        .args(["--normalize", "plugin"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(err.contains("3 of 3 cases failed"), "{err}");
    assert!(
        err.contains("case `case_000`")
            && err.contains("case_000:axial:1")
            && err.contains("declares intensities in [0, 1]")
            && err.contains("divide 8-bit values by 255"),
        "{err}"
    );
}

/// A two-class "network" that calls a pixel foreground where it is brighter
/// than `level`: fixed, and differentiable in its input for PGD.
#[derive(Debug)]
struct Brighter {
    level: f64,
}

impl ModuleT for Brighter {
    fn forward_t(&self, xs: &tch::Tensor, _train: bool) -> tch::Tensor {
        let z = (xs - self.level) * 4.0;
        tch::Tensor::cat(&[&(-&z), &z], 1)
    }
}

#[test]
fn per_case_metrics_are_each_case_own_and_their_mean_is_the_curve() {
    use amat_host::attack::{Context, Range};
    use amat_host::config::{Aggregate, EvalConfig};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("Dataset001_Blobs");
    nnunet_folder(&data, 8);
    let out_dir = tmp.path().join("prepared");
    ok(&prepare(&wasm(), &data, &out_dir, &[]));
    let path = out_dir.join("manifest.json");
    let mut plugin = Plugin::load(wasm(), &SandboxLimits::default()).unwrap();
    let splits = amat_host::data::prepare::load_splits_on_disk(&path, &plugin).unwrap();
    let train = &splits.train;
    let mut cases: Vec<&str> = (0..train.len()).map(|i| train.case(i).unwrap()).collect();
    cases.dedup();
    assert!(cases.len() >= 4, "cases in the train split: {cases:?}");

    let model = Brighter { level: 0.5 };
    let range = Range {
        min: -10.0,
        max: 10.0,
    };
    let mut cfg = EvalConfig {
        eps: vec![0.0, 0.5, 2.0],
        restarts: 1,
        batch_size: 3, // batches straddle cases
        split: "train".into(),
        ..EvalConfig::default()
    };
    cfg.attack.steps = 3;
    let mut curve_of = |aggregate| {
        let cfg = EvalConfig {
            aggregate,
            ..cfg.clone()
        };
        let mut ctx = Context::new(&model, &mut plugin, range);
        eval::robustness(
            &mut ctx,
            train,
            &cfg,
            tch::Device::Cpu,
            7,
            &ProgressBar::hidden(),
        )
        .unwrap()
    };
    let by_case = curve_of(Aggregate::Case);
    let whole = curve_of(Aggregate::Set);

    let listed: Vec<&str> = by_case.cases.iter().map(|c| c.case.as_str()).collect();
    assert_eq!(listed, cases, "one curve per case, in order");
    assert_eq!(
        by_case.cases.iter().map(|c| c.samples).sum::<usize>(),
        train.len()
    );
    assert!(whole.cases.is_empty());
    // Each case's clean metrics are the plugin's on that case's samples alone.
    for c in &by_case.cases {
        let idx: Vec<usize> = (0..train.len())
            .filter(|&i| train.case(i) == Some(c.case.as_str()))
            .collect();
        let (x, y) = train.batch(&idx, tch::Device::Cpu).unwrap();
        let own = plugin.metrics(&model.forward_t(&x, false), &y).unwrap();
        for m in own {
            let got = c.metrics.iter().find(|x| x.name == m.name).unwrap();
            assert!(
                (got.values[0] - m.value).abs() < 1e-9,
                "{} of {}: {} vs {}",
                m.name,
                c.case,
                got.values[0],
                m.value
            );
        }
    }
    // The curve is, per level, the mean over the cases that define a value.
    let dice = by_case.metric("dice_mean").unwrap();
    for level in 0..cfg.eps.len() {
        let per_case: Vec<f64> = by_case
            .cases
            .iter()
            .map(|c| c.metrics[0].values[level])
            .collect();
        let mean = per_case.iter().sum::<f64>() / per_case.len() as f64;
        assert!((dice.values[level] - mean).abs() < 1e-12, "level {level}");
    }
    // The attack hurts, per case and on the mean.
    assert!(dice.values[2] < dice.values[0], "{:?}", dice.values);
    // Both ways attack the same samples the same way: the loss agrees.
    for (a, b) in by_case.loss.iter().zip(&whole.loss) {
        assert!((a - b).abs() < 1e-6 * a.abs().max(1.0), "{a} vs {b}");
    }

    // What a run writes: the per-case table beside the curve.
    let dir = tmp.path().join("report");
    std::fs::create_dir_all(&dir).unwrap();
    eval::report::write(&dir, &by_case, &["dice_mean".into()]).unwrap();
    let table = std::fs::read_to_string(dir.join("cases.csv")).unwrap();
    assert_eq!(table.lines().count(), 1 + cases.len() * cfg.eps.len());
    assert!(
        eval::report::aggregate_note(&by_case)
            .unwrap()
            .contains(&format!("{} cases", cases.len()))
    );
}
