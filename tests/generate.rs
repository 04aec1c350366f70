//! `amat-host data generate` on the real subjects (Colin27 and MNI152 with
//! AAL, fetched by `host/scripts/fetch-data.sh`), at a coarse 6 mm so the
//! cases stay tiny: the labels keep their classes and roughly their volume
//! through the deformations, the seed alone decides a case, and the folder
//! prepares through the segmentation plugin with case-level splits.

use crate::support;
use amat_host::data::generate::{Deform, Source, SourceName, Warper, case_seed};
use amat_host::data::manifest::{Manifest, Split};
use medimg::{Volume, nifti};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const SPACING: f64 = 6.0;
const SEED: u64 = 3;

fn read(path: &Path) -> Volume {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    nifti::read(&path.display().to_string(), &bytes).unwrap()
}

fn classes(labels: &[u8]) -> BTreeSet<u8> {
    labels.iter().copied().collect()
}

fn brain_share(labels: &[u8]) -> f64 {
    labels.iter().filter(|&&c| c > 0).count() as f64 / labels.len() as f64
}

#[test]
fn generated_cases_keep_their_labels_and_prepare_by_case() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pseudo");
    let raw = support::root().join("data/raw");
    let generate = |out: &Path| {
        support::amat_host()
            .args([
                "data",
                "generate",
                "--source",
                "colin27,mni152",
                "--cases",
                "2",
            ])
            .args([
                "--spacing",
                &SPACING.to_string(),
                "--seed",
                &SEED.to_string(),
            ])
            .arg("--out")
            .arg(out)
            .arg("--raw")
            .arg(&raw)
            .output()
            .unwrap()
    };
    let o = generate(&out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(json["channel_names"], serde_json::json!({"0": "T1"}));
    assert_eq!(json["numTraining"], 4);
    assert_eq!(json["file_ending"], ".nii.gz");
    assert_eq!(json["labels"]["background"], 0);
    assert_eq!(json["labels"]["cerebellum"], 7);
    let about = json["description"].as_str().unwrap();
    assert!(about.contains("deformations of 2 real subject"), "{about}");

    for source in [SourceName::Colin27, SourceName::Mni152] {
        let warper = Warper::new(&Source::load(source, &raw).unwrap(), Some(SPACING));
        let plain = warper.case(&Deform::NONE, 0);
        let present = classes(&plain.labels);
        assert_eq!(present.len(), 8, "{}: every class at 6 mm", source.id());
        let share = brain_share(&plain.labels);
        for k in 0..2 {
            let id = format!("{}_{k:03}", source.id());
            let labels = read(&out.join(format!("labelsTr/{id}.nii.gz")));
            let image = read(&out.join(format!("imagesTr/{id}_0000.nii.gz")));
            image.check_same_grid("image", &labels, &id).unwrap();
            assert_eq!(labels.dims, warper.grid.dims);
            let labels: Vec<u8> = labels.data.iter().map(|&v| v as u8).collect();
            assert_eq!(classes(&labels), present, "{id}: the classes survive");
            let moved = brain_share(&labels) / share - 1.0;
            assert!(
                moved.abs() < 0.2,
                "{id}: labelled share moved by {moved:.3}"
            );
            let changed = labels
                .iter()
                .zip(&plain.labels)
                .filter(|(a, b)| a != b)
                .count();
            assert!(
                changed > labels.len() / 50,
                "{id}: the case is deformed ({changed} voxels)"
            );

            // The seed alone decides the case: this process makes it again
            // (to float rounding: libtorch may split work differently here).
            let again = warper.case(&Deform::default(), case_seed(SEED, source, k));
            let differ = again
                .labels
                .iter()
                .zip(&labels)
                .filter(|(a, b)| a != b)
                .count();
            assert!(
                differ * 1000 <= labels.len(),
                "{id}: {differ} labels differ"
            );
            let gap = again
                .image
                .iter()
                .zip(&image.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(gap < 1e-3, "{id}: image differs by {gap}");
        }
    }

    // A second generate into the same folder is refused, leaving it as it was.
    let again = generate(&out);
    let e = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && e.contains("is not empty"), "{e}");
    assert_eq!(std::fs::read_dir(out.join("imagesTr")).unwrap().count(), 4);

    // The folder is a dataset `data prepare` takes as it is, split by case.
    let prepared = tmp.path().join("prepared");
    let o = support::amat_host()
        .args(["data", "prepare", "--plugin"])
        .arg(support::wasm_plugin("segmentation"))
        .arg("--spec")
        .arg(&out)
        .arg("--out")
        .arg(&prepared)
        .args(["--decode", r#"{"size": 16}"#, "--jobs", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = Manifest::read(&prepared.join("manifest.json")).unwrap();
    assert_eq!(m.layout, "nnunet-v2");
    let mut split_of: BTreeMap<&str, BTreeSet<Split>> = BTreeMap::new();
    for s in &m.samples {
        split_of.entry(&s.case).or_default().insert(s.split);
    }
    assert_eq!(split_of.len(), 4);
    assert!(split_of.values().all(|s| s.len() == 1), "{split_of:?}");
    let used: BTreeSet<Split> = split_of.values().flatten().copied().collect();
    assert!(used.contains(&Split::Train) && used.contains(&Split::Test));
}
