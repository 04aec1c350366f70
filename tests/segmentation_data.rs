//! The segmentation task on real data (Colin27 + AAL from `mricron-data`,
//! fetched by `host/scripts/fetch-data.sh`): decoding real slices through the
//! wasm plugin, clear errors for corrupt files, the prepared manifest's slab
//! splits and cache, training end to end, and Dice by hand.

use crate::support;

use amat_host::data::manifest::{Manifest, Split};
use amat_host::data::prepare::load_splits;
use amat_host::plugin::{Plugin, SandboxLimits};
use amat_plugin_sdk::{DecodeRequest, Example, File};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tch::Tensor;

const MRICRON: &str = "data/raw/mricron";

fn raw(name: &str) -> PathBuf {
    let p = support::root().join(MRICRON).join(name);
    assert!(
        p.is_file(),
        "{}: missing (run host/scripts/fetch-data.sh)",
        p.display()
    );
    p
}

fn wasm() -> PathBuf {
    support::wasm_plugin("segmentation")
}

fn decode(options: &str) -> Result<Vec<Example>, String> {
    let files = ["ch2.nii.gz", "aal.nii.gz", "aal.nii.txt", "ch2bet.nii.gz"]
        .iter()
        .map(|n| File {
            name: n.to_string(),
            bytes: std::fs::read(raw(n)).unwrap(),
        })
        .collect();
    let limits = SandboxLimits {
        call_timeout_ms: 120_000,
        ..SandboxLimits::default()
    };
    let mut plugin = Plugin::load(wasm(), &limits).unwrap();
    plugin
        .decode(&DecodeRequest {
            files,
            options: options.into(),
        })
        .map_err(|e| e.to_string())
}

fn classes(e: &Example) -> BTreeSet<i64> {
    e.target.data.iter().map(|&v| v as i64).collect()
}

#[test]
fn decode_reads_real_slices_with_their_classes() {
    let out = decode(r#"{"slices": [0, 14], "size": 32}"#).unwrap();
    // AAL labels axial slices from z = 10 on: the unlabelled ones are left out.
    let ids: Vec<&str> = out.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "ch2:axial:10",
            "ch2:axial:11",
            "ch2:axial:12",
            "ch2:axial:13"
        ]
    );

    let mid = decode(r#"{"slices": [60, 64], "size": 32}"#).unwrap();
    assert_eq!(mid.len(), 4);
    let mut present = BTreeSet::new();
    for e in &mid {
        assert_eq!(e.image.shape, vec![1, 32, 32]);
        assert_eq!(e.target.shape, vec![32, 32]);
        assert!(e.image.data.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(
            e.image.data.iter().any(|&v| v > 0.5),
            "{}: brain tissue is bright",
            e.id
        );
        assert!(
            e.target
                .data
                .iter()
                .all(|v| v.fract() == 0.0 && (0.0..8.0).contains(v))
        );
        present.extend(classes(e));
    }
    // Mid-axial slices cut frontal, temporal, occipital, limbic and deep grey.
    for c in [0, 1, 2, 4, 5, 6] {
        assert!(present.contains(&c), "class {c} missing in {present:?}");
    }

    let brain = decode(r#"{"slices": [60, 61], "size": 32, "labels": "brain"}"#).unwrap();
    assert_eq!(classes(&brain[0]), BTreeSet::from([0, 1]));
    let inside = brain[0].target.data.iter().filter(|&&v| v == 1.0).count();
    assert!(
        (100..900).contains(&inside),
        "brain covers {inside} of 1024 pixels"
    );
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A spec over `files` (paths) in `dir`, with small images.
fn write_spec(dir: &Path, files: &[PathBuf], decode: &str, split: &str) -> PathBuf {
    let list: Vec<String> = files
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    let text = format!(
        "name = \"test\"\nfiles = [{}]\n[decode]\n{decode}\n[split]\n{split}\n",
        list.join(", ")
    );
    let path = dir.join("spec.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn prepare(spec: &Path, out: &Path) -> std::process::Output {
    support::amat_host()
        .args(["data", "prepare", "--plugin"])
        .arg(wasm())
        .arg("--spec")
        .arg(spec)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn corrupt_files_are_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ch2 = std::fs::read(raw("ch2.nii.gz")).unwrap();
    let aal = std::fs::read(raw("aal.nii.gz")).unwrap();
    let mut bad_datatype = gunzip(&ch2);
    bad_datatype[70..72].copy_from_slice(&3i16.to_le_bytes());
    let mut bad_grid = gunzip(&aal);
    bad_grid[42..44].copy_from_slice(&180i16.to_le_bytes()); // dim[1]: 181 -> 180

    let cases: [(&str, Vec<u8>, &str, &str); 3] = [
        (
            "ch2.nii.gz",
            ch2[..ch2.len() / 2].to_vec(),
            "ch2.nii.gz",
            "gzip stream is corrupt or truncated",
        ),
        (
            "ch2.nii.gz",
            gzip(&bad_datatype),
            "ch2.nii.gz",
            "unsupported NIfTI datatype code 3",
        ),
        (
            "aal.nii.gz",
            gzip(&bad_grid),
            "aal.nii.gz",
            "label grid [180, 217, 181] differs from the image grid",
        ),
    ];
    for (i, (name, bytes, names, says)) in cases.into_iter().enumerate() {
        let case = dir.path().join(format!("case{i}"));
        std::fs::create_dir_all(&case).unwrap();
        let mut files = Vec::new();
        for good in ["ch2.nii.gz", "aal.nii.gz", "aal.nii.txt"] {
            let p = case.join(good);
            if good == name {
                std::fs::write(&p, &bytes).unwrap();
            } else {
                std::fs::copy(raw(good), &p).unwrap();
            }
            files.push(p);
        }
        let spec = write_spec(&case, &files, "size = 16", "");
        let out = prepare(&spec, &case.join("out"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} was accepted");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(&format!("{names}:")),
            "case {i} names {names}: {stderr}"
        );
        assert!(stderr.contains(says), "case {i} says `{says}`: {stderr}");
        assert!(!case.join("out/manifest.json").exists());
    }
}

fn sha256(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn manifest_slabs_are_disjoint_with_gaps_and_the_cache_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = ["ch2.nii.gz", "aal.nii.gz", "aal.nii.txt"]
        .iter()
        .map(|n| raw(n))
        .collect();
    let gap = 3;
    let spec = write_spec(
        dir.path(),
        &files,
        "size = 16\nslices = [30, 70]\naugment = 1",
        &format!("train = 0.6\nval = 0.2\ntest = 0.2\ngap = {gap}\nblocks = 2"),
    );
    let out_dir = dir.path().join("prepared");
    let out = prepare(&spec, &out_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("train") && stdout.contains("manifest.json"),
        "{stdout}"
    );

    let path = out_dir.join("manifest.json");
    let m = Manifest::read(&path).unwrap();
    // Every slice index is in exactly one split.
    let mut split_of: BTreeMap<usize, Split> = BTreeMap::new();
    for s in &m.samples {
        assert_eq!(
            *split_of.entry(s.index).or_insert(s.split),
            s.split,
            "slice {} in two splits",
            s.index
        );
        assert!(
            s.augmented.is_none() || s.split == Split::Train,
            "{} outside train",
            s.id
        );
    }
    let ids: BTreeSet<&str> = m.samples.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), m.samples.len(), "ids are unique");
    // Two blocks of train < val < test slabs; slices of different splits
    // are more than `gap` indices apart.
    let order: Vec<(usize, Split)> = split_of.iter().map(|(i, s)| (*i, *s)).collect();
    for pair in order.windows(2) {
        let ((i, a), (j, b)) = (pair[0], pair[1]);
        assert!(
            a == b || j > i + gap,
            "slice {i} ({a:?}) and {j} ({b:?}) are too close"
        );
    }
    let runs: Vec<Split> = m.slabs.iter().map(|s| s.split).collect();
    use Split::{Test, Train, Val};
    assert_eq!(runs, [Train, Val, Test, Train, Val, Test]);
    for slab in &m.slabs {
        let inside = (slab.first..=slab.last)
            .filter(|i| split_of.get(i) == Some(&slab.split))
            .count();
        assert_eq!(inside, slab.slices, "slab {slab:?} is contiguous");
    }
    assert_eq!((order[0].0, order[order.len() - 1].0), (30, 69));
    let slices_of = |split| order.iter().filter(|(_, s)| *s == split).count();
    assert_eq!(
        m.counts["train"],
        2 * slices_of(Train),
        "each training slice and its copy"
    );
    assert_eq!(
        m.counts["val"] + m.counts["test"],
        slices_of(Val) + slices_of(Test)
    );
    for f in &m.files {
        assert_eq!(f.sha256, sha256(&f.path), "{}", f.name);
    }

    // Loads from the cache; a broken cache is decoded again and rewritten.
    let plugin = Plugin::load(wasm(), &SandboxLimits::default()).unwrap();
    let first = load_splits(&path, &plugin).unwrap();
    assert_eq!(first.train.len(), m.counts["train"]);
    assert_eq!(first.test.len(), m.counts["test"]);
    let cache = out_dir.join(&m.cases[0].cache);
    std::fs::write(&cache, b"not safetensors").unwrap();
    let again = load_splits(&path, &plugin).unwrap();
    assert!(Tensor::read_safetensors(&cache).is_ok(), "cache rewritten");
    for (a, b) in first.test.samples.iter().zip(&again.test.samples) {
        assert_eq!(a.id, b.id);
        assert!(
            a.image.equal(&b.image) && a.target.equal(&b.target),
            "{}",
            a.id
        );
    }
}

#[test]
fn segmentation_trains_end_to_end_through_the_wasm_plugin_on_real_slices() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = ["ch2.nii.gz", "aal.nii.gz", "aal.nii.txt"]
        .iter()
        .map(|n| raw(n))
        .collect();
    let spec = write_spec(
        dir.path(),
        &files,
        "size = 32\nslices = [60, 80]",
        "gap = 1",
    );
    let prepared = dir.path().join("prepared");
    let out = prepare(&spec, &prepared);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        "[run]\nmethod = \"std\"\nthreads = 1\ndevice = \"cpu\"\n\
         [data]\nmanifest = \"prepared/manifest.json\"\n\
         [model]\ndepth = 1\nwidth = 8\n[train]\nepochs = 6\nbatch_size = 4\nlr = 0.01\n\
         [eval]\neps = [0.0]\n",
    )
    .unwrap();
    let run = dir.path().join("run");
    support::run_ok(&wasm(), &config, &run);
    let losses: Vec<f64> = std::fs::read_to_string(run.join("epochs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["clean_loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 6);
    assert!(losses[5] < 0.8 * losses[0], "loss fell: {losses:?}");
}

/// Logits that make `argmax` the given class maps: [N, 8, H, W].
fn logits_of(map: &[i64], h: i64, w: i64) -> Tensor {
    Tensor::from_slice(map)
        .reshape([-1, h, w])
        .one_hot(8)
        .permute([0, 3, 1, 2])
        .to_kind(tch::Kind::Float)
        * 10.0
}

#[test]
fn dice_of_identical_maps_is_one_and_a_partial_case_matches_the_hand_count() {
    let mut plugin = Plugin::load(wasm(), &SandboxLimits::default()).unwrap();
    let value = |metrics: &[amat_plugin_sdk::Metric], name: &str| {
        metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .value
    };
    let target_map = [0i64, 1, 1, 1, 2, 2];
    let target = Tensor::from_slice(&target_map)
        .reshape([1, 2, 3])
        .to_kind(tch::Kind::Float);

    let same = plugin
        .metrics(&logits_of(&target_map, 2, 3), &target)
        .unwrap();
    assert_eq!(value(&same, "dice_mean"), 1.0);

    // Predicted [0 1 0 / 1 2 1]: class 1 (frontal): 3 predicted, 3 true, 2
    // shared -> 4/6; class 2 (temporal): 1, 2, 1 -> 2/3. Background is not
    // scored, and classes absent from both are not returned.
    let partial = plugin
        .metrics(&logits_of(&[0, 1, 0, 1, 2, 1], 2, 3), &target)
        .unwrap();
    for (name, want) in [("dice_frontal", 4.0 / 6.0), ("dice_temporal", 2.0 / 3.0)] {
        assert!(
            (value(&partial, name) - want).abs() < 1e-6,
            "{name}: {partial:?}"
        );
    }
    assert!(
        (value(&partial, "dice_mean") - 2.0 / 3.0).abs() < 1e-6,
        "{partial:?}"
    );
    let names: Vec<&str> = partial.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["dice_mean", "dice_frontal", "dice_temporal"]);
}

#[test]
fn a_class_absent_from_a_samples_target_and_prediction_is_left_out_of_its_mean() {
    let mut plugin = Plugin::load(wasm(), &SandboxLimits::default()).unwrap();
    // Sample 1 as above; sample 2 is all frontal, predicted exactly, so
    // temporal is absent from both its target and its prediction.
    let target = Tensor::from_slice(&[0i64, 1, 1, 1, 2, 2, 1, 1, 1, 1, 1, 1])
        .reshape([2, 2, 3])
        .to_kind(tch::Kind::Float);
    let pred = logits_of(&[0, 1, 0, 1, 2, 1, 1, 1, 1, 1, 1, 1], 2, 3);
    let m = plugin.metrics(&pred, &target).unwrap();
    let value = |name: &str| m.iter().find(|x| x.name == name).unwrap().value;
    // Frontal: (4/6 + 1) / 2. Temporal: sample 1 alone, 2/3 (5/6 if the
    // empty sample counted as 1.0).
    assert!((value("dice_frontal") - 5.0 / 6.0).abs() < 1e-6, "{m:?}");
    assert!((value("dice_temporal") - 2.0 / 3.0).abs() < 1e-6, "{m:?}");
    assert!((value("dice_mean") - 0.75).abs() < 1e-6, "{m:?}");
}

#[test]
fn example_configs_and_data_specs_parse() {
    use amat_host::config::RunConfig;
    use amat_host::data::manifest::DataSpec;
    use amat_host::data::source::DataSource;
    let examples = support::root().join("examples");
    // Each config reads what its spec prepares into data/prepared/<name>.
    for (spec, name) in [
        ("segmentation.toml", "ch2-lobes-axial-64"),
        ("segmentation-aug.toml", "ch2-lobes-axial-64-aug"),
    ] {
        let s = DataSpec::read(&examples.join("data").join(spec)).unwrap();
        assert_eq!(s.name, name, "{spec}");
        for f in &s.files {
            assert!(
                examples.join("data").join(f).is_file(),
                "{spec}: {}",
                f.display()
            );
        }
    }
    // The volumes' spec names the generated folder and asks for whole volumes.
    let s = DataSpec::read(&examples.join("data/segmentation-3d.toml")).unwrap();
    assert_eq!(s.name, "pseudo-3d-6mm");
    assert_eq!(
        s.dataset.as_deref(),
        Some(Path::new("../../data/generated/pseudo-3d"))
    );
    assert_eq!(s.decode.get("volume").and_then(|v| v.as_bool()), Some(true));
    for config in ["segmentation-3d.toml", "segmentation-3d-cuda.toml"] {
        let cfg = RunConfig::read(&examples.join(config)).unwrap();
        assert_eq!(cfg.model.dims, 3, "{config}");
        assert!(cfg.train.patch.is_some(), "{config}");
    }
    for (config, prepared) in [
        ("segmentation.toml", "ch2-lobes-axial-64"),
        ("segmentation-long.toml", "ch2-lobes-axial-64-aug"),
        ("segmentation-3d.toml", "pseudo-3d-6mm"),
        ("segmentation-3d-cuda.toml", "pseudo-3d-2mm"),
    ] {
        let cfg = RunConfig::read(&examples.join(config)).unwrap();
        let DataSource::Manifest(m) = cfg.data else {
            panic!("{config}: not a manifest")
        };
        assert_eq!(
            m.manifest,
            Path::new("../data/prepared")
                .join(prepared)
                .join("manifest.json")
        );
    }
}
