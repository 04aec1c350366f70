//! The detection plugin (CenterNet-style boxes) through its wasm component:
//! mAP against hand-computed values, the loss's parts, decoding of the real
//! AAL subcortical structures on Colin27 and of stardist's nuclei, errors
//! that name the file, and a few training steps whose loss falls.

use crate::support;

use amat_host::config::RunConfig;
use amat_host::data::{Dataset, Sample};
use amat_host::plugin::{DecodeRequest, Example, File, Metric, Plugin, SandboxLimits};
use amat_host::train::Trainer;
use indicatif::ProgressBar;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// hippocampus, amygdala, caudate, putamen, thalamus, nucleus.
const C: i64 = 6;
const NUCLEUS: i64 = 5;

/// The wasm plugin, with the long call deadline `data prepare` gives decoding
/// (a whole volume in one call).
fn plugin() -> Plugin {
    let limits = SandboxLimits {
        call_timeout_ms: 300_000,
        ..SandboxLimits::default()
    };
    Plugin::load(support::wasm_plugin("detection"), &limits).unwrap()
}

fn raw(dir: &str, name: &str) -> File {
    let path = support::root().join("data/raw").join(dir).join(name);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run host/scripts/fetch-data.sh)", path.display()));
    File {
        name: name.into(),
        bytes,
    }
}

fn subcortical_files() -> Vec<File> {
    vec![raw("mricron", "ch2.nii.gz"), raw("mricron", "aal.nii.gz")]
}

fn nuclei_files() -> Vec<File> {
    vec![raw("stardist", "img2d.tif"), raw("stardist", "mask2d.tif")]
}

fn decode(p: &mut Plugin, files: Vec<File>, options: &str) -> Vec<Example> {
    p.decode(&DecodeRequest {
        files,
        options: options.into(),
    })
    .unwrap()
}

fn decode_err(p: &mut Plugin, files: Vec<File>, options: &str) -> String {
    p.decode(&DecodeRequest {
        files,
        options: options.into(),
    })
    .unwrap_err()
    .to_string()
}

fn metric(m: &[Metric], name: &str) -> f64 {
    m.iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric {name} in {m:?}"))
        .value
}

/// A box read from the documented target layout: (class, top, left, bottom, right).
type Boxed = (usize, f32, f32, f32, f32);

/// The boxes of an example's target `[C + 5, H, W]` (class channel, size, offset at centres).
fn boxes(e: &Example) -> Vec<Boxed> {
    let (h, w) = (e.target.shape[1] as usize, e.target.shape[2] as usize);
    let plane = h * w;
    let ch = |k: i64, at: usize| e.target.data[k as usize * plane + at];
    (0..plane)
        .filter(|&at| ch(C + 4, at) > 0.0)
        .map(|at| {
            let (cr, cc) = (
                (at / w) as f32 + ch(C + 2, at),
                (at % w) as f32 + ch(C + 3, at),
            );
            let (bh, bw) = (ch(C, at), ch(C + 1, at));
            (
                ch(C + 4, at) as usize - 1,
                cr - bh / 2.0,
                cc - bw / 2.0,
                cr + bh / 2.0,
                cc + bw / 2.0,
            )
        })
        .collect()
}

fn tensor(d: &amat_plugin_sdk::Dense) -> Tensor {
    Tensor::from_slice(&d.data).reshape(d.shape.as_slice())
}

/// The prediction [B, C + 4, H, W] a perfect detector would make for targets [B, C + 5, H, W]:
/// confident logits at the centres, the true size and offset there.
fn perfect(targets: &Tensor) -> Tensor {
    let heat = targets.narrow(1, 0, C);
    let logits = heat.eq(1.0).to_kind(Kind::Float) * 20.0 - 10.0;
    Tensor::cat(&[logits, targets.narrow(1, C, 4)], 1)
}

/// One target [1, C + 5, n, n] holding `(class, top, left, height, width)` boxes.
fn target_of(n: i64, list: &[(i64, f32, f32, f32, f32)]) -> Tensor {
    let t = Tensor::zeros([1, C + 5, n, n], (Kind::Float, Device::Cpu));
    for &(class, top, left, bh, bw) in list {
        let (cr, cc) = (top + bh / 2.0, left + bw / 2.0);
        let (pr, pc) = (cr.floor() as i64, cc.floor() as i64);
        let set = |ch: i64, v: f32| {
            let _ = t.get(0).get(ch).get(pr).get(pc).fill_(v as f64);
        };
        set(class, 1.0);
        set(C, bh);
        set(C + 1, bw);
        set(C + 2, cr - pr as f32);
        set(C + 3, cc - pc as f32);
        set(C + 4, class as f32 + 1.0);
    }
    t
}

#[test]
fn map_of_perfect_boxes_is_one_and_of_boxes_at_a_known_iou_as_expected() {
    let mut p = plugin();
    let y = target_of(24, &[(0, 2.0, 3.0, 10.0, 10.0), (4, 12.0, 12.0, 6.0, 8.0)]);
    let m = p.metrics(&perfect(&y), &y).unwrap();
    assert_eq!(
        (metric(&m, "map_50"), metric(&m, "map_50_95")),
        (1.0, 1.0),
        "{m:?}"
    );
    assert_eq!(metric(&m, "objects"), 2.0);

    // The same centres, widths 7.2 and 5.76 (of 10 and 8): IoU 0.72 each.
    // Matches at 0.5, 0.55, ..., 0.7 (5 of COCO's 10 thresholds) and not above.
    let pred = perfect(&y);
    let _ = pred.get(0).get(C + 1).multiply_scalar_(0.72);
    let m = p.metrics(&pred, &y).unwrap();
    assert_eq!(metric(&m, "map_50"), 1.0, "{m:?}");
    assert!((metric(&m, "map_50_95") - 0.5).abs() < 1e-9, "{m:?}");

    // Below 0.5: no match at any threshold.
    let _ = pred.get(0).get(C + 1).multiply_scalar_(0.6);
    let m = p.metrics(&pred, &y).unwrap();
    assert_eq!(
        (metric(&m, "map_50"), metric(&m, "map_50_95")),
        (0.0, 0.0),
        "{m:?}"
    );

    // A confident false positive of class 0 ranked above the true box: AP(class 0) = 1/2
    // (recall 1 reached at precision 1/2), class 4 stays 1: mAP@0.5 = 3/4.
    let pred = perfect(&y);
    let _ = pred.get(0).get(0).get(20).get(2).fill_(15.0);
    let _ = pred.get(0).get(C).get(20).get(2).fill_(2.0);
    let _ = pred.get(0).get(C + 1).get(20).get(2).fill_(2.0);
    let m = p.metrics(&pred, &y).unwrap();
    assert!((metric(&m, "ap50_hippocampus") - 0.5).abs() < 1e-9, "{m:?}");
    assert!((metric(&m, "map_50") - 0.75).abs() < 1e-9, "{m:?}");
}

#[test]
fn loss_is_near_zero_for_a_perfect_prediction_and_adds_l1_for_a_wrong_size() {
    let mut p = plugin();
    let y = target_of(24, &[(1, 2.0, 3.0, 10.0, 10.0), (1, 14.0, 12.0, 6.0, 8.0)]);
    let good = perfect(&y);
    let base = p.loss(&good, &y).unwrap().double_value(&[0]);
    assert!(base < 0.01, "{base}");
    // Heights 2 px too large at both centres: + 0.1 * (2 + 2) / 2 objects = 0.2.
    let tall = good.copy();
    let _ = tall.get(0).get(C).g_add_scalar_(2.0);
    let tall_loss = p.loss(&tall, &y).unwrap().double_value(&[0]);
    assert!(
        (tall_loss - base - 0.2).abs() < 1e-4,
        "{base} -> {tall_loss}"
    );
    // A missed object raises the focal term.
    let missed = good.copy();
    let _ = missed.get(0).get(1).fill_(-10.0);
    assert!(p.loss(&missed, &y).unwrap().double_value(&[0]) > 1.0);
    assert!(
        p.loss(&good.narrow(1, 0, 9), &y).is_err(),
        "a wrong shape is an error"
    );
}

#[test]
fn subcortical_boxes_lie_in_the_image_on_the_slices_that_hold_structures() {
    let mut p = plugin();
    let ex = decode(
        &mut p,
        subcortical_files(),
        r#"{"axis": "axial", "size": 64}"#,
    );
    let index = |e: &Example| e.id.rsplit(':').next().unwrap().parse::<usize>().unwrap();
    assert!(ex.len() > 40 && ex.len() < 120, "{} slices", ex.len());
    assert!(
        ex.windows(2).all(|w| index(&w[0]) < index(&w[1])),
        "slab order"
    );
    let mut hippocampus = Vec::new();
    for e in &ex {
        assert_eq!(e.image.shape, vec![1, 64, 64]);
        assert_eq!(e.target.shape, vec![C + 5, 64, 64]);
        assert!(e.image.data.iter().all(|v| (0.0..=1.0).contains(v)));
        for (class, t, l, b, r) in boxes(e) {
            assert!(class < 5, "{}: class {class} is not subcortical", e.id);
            assert!(
                0.0 <= t && t < b && b <= 64.0 && 0.0 <= l && l < r && r <= 64.0,
                "{}: box {t} {l} {b} {r}",
                e.id
            );
        }
        if boxes(e).iter().any(|b| b.0 == 0) {
            hippocampus.push(index(e));
        }
    }
    // DATA.md: the hippocampus appears in axial slices 44-83.
    let (lo, hi) = (*hippocampus.first().unwrap(), *hippocampus.last().unwrap());
    assert!(
        (40..=48).contains(&lo) && (79..=87).contains(&hi),
        "hippocampus in slices {lo}..={hi}"
    );
    // Through the thalamus: left and right of each structure, on either side of the midline.
    let e = ex.iter().find(|e| index(e) == 80).unwrap();
    let thalamus: Vec<Boxed> = boxes(e).into_iter().filter(|b| b.0 == 4).collect();
    assert_eq!(thalamus.len(), 2, "{thalamus:?}");
    let mid = |b: &Boxed| (b.2 + b.4) / 2.0;
    assert!(
        (mid(&thalamus[0]) - 32.0) * (mid(&thalamus[1]) - 32.0) < 0.0,
        "{thalamus:?}"
    );
}

#[test]
fn nuclei_tiles_hold_a_plausible_number_of_boxes() {
    let mut p = plugin();
    let ex = decode(&mut p, nuclei_files(), r#"{"crop": 128, "size": 64}"#);
    assert_eq!(ex.len(), 16, "a 512 px image in 128 px tiles");
    assert_eq!(ex[5].id, "img2d:tile:5");
    let counts: Vec<usize> = ex.iter().map(|e| boxes(e).len()).collect();
    let total: usize = counts.iter().sum();
    // 125 annotated nuclei; those cut by a tile border count in each tile.
    assert!((125..=200).contains(&total), "{total} boxes in {counts:?}");
    for e in &ex {
        for (class, t, l, b, r) in boxes(e) {
            assert_eq!(class as i64, NUCLEUS);
            assert!(0.0 <= t && t < b && b <= 64.0 && 0.0 <= l && l < r && r <= 64.0);
            assert!(
                b - t < 40.0 && r - l < 40.0,
                "a nucleus is smaller than half a tile"
            );
        }
    }
    // The true boxes of real targets come back exactly: a perfect prediction scores 1.
    let y = Tensor::stack(&ex.iter().map(|e| tensor(&e.target)).collect::<Vec<_>>(), 0);
    let m = p.metrics(&perfect(&y), &y).unwrap();
    assert_eq!(
        (metric(&m, "map_50"), metric(&m, "map_50_95")),
        (1.0, 1.0),
        "{m:?}"
    );
    assert_eq!(metric(&m, "objects") as usize, total);

    // Augmented copies: deterministic per seed.
    let opts = r#"{"crop": 128, "size": 32, "augment": 2, "seed": 4}"#;
    let (a, b) = (
        decode(&mut p, nuclei_files(), opts),
        decode(&mut p, nuclei_files(), opts),
    );
    assert_eq!(a.len(), 48);
    assert_eq!(a[2].id, "img2d:tile:0:aug1");
    assert_eq!(a, b);
    assert_ne!(a[1].image, a[0].image);
}

#[test]
fn corrupt_inputs_are_errors_naming_the_file() {
    let mut p = plugin();
    let mut files = subcortical_files();
    let third = files[0].bytes.len() / 3;
    files[0].bytes.truncate(third);
    let err = decode_err(&mut p, files, "");
    assert!(err.contains("ch2.nii.gz"), "{err}");
    // A wrong datatype code (3 is not a NIfTI type), in an uncompressed copy.
    let mut nii = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(raw("mricron", "ch2.nii.gz").bytes.as_slice()),
        &mut nii,
    )
    .unwrap();
    nii[70..72].copy_from_slice(&3i16.to_le_bytes());
    let bad = File {
        name: "ch2.nii".into(),
        bytes: nii,
    };
    let err = decode_err(
        &mut p,
        vec![bad, raw("mricron", "aal.nii.gz")],
        r#"{"image": "ch2.nii"}"#,
    );
    assert!(err.contains("ch2.nii") && err.contains("datatype"), "{err}");
    // A label volume on another grid (Harvard-Oxford is 182 x 218 x 182).
    let mut other = raw("mricron", "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz");
    other.name = "aal.nii.gz".into();
    let err = decode_err(&mut p, vec![raw("mricron", "ch2.nii.gz"), other], "");
    assert!(err.contains("aal.nii.gz") && err.contains("grid"), "{err}");
    let err = decode_err(&mut p, vec![raw("mricron", "ch2.nii.gz")], "");
    assert!(err.contains("aal.nii.gz"), "{err}");
    let mut files = nuclei_files();
    files[1].bytes.truncate(5000);
    let err = decode_err(&mut p, files, "");
    assert!(err.contains("mask2d.tif"), "{err}");
    let err = decode_err(&mut p, nuclei_files(), r#"{"crop": 600}"#);
    assert!(err.contains("600") && err.contains("img2d.tif"), "{err}");
}

#[test]
fn trains_end_to_end_through_the_wasm_plugin_and_the_loss_falls() {
    let mut p = plugin();
    let examples = decode(&mut p, nuclei_files(), r#"{"crop": 64, "size": 32}"#);
    let train = Dataset {
        name: "train".into(),
        samples: examples
            .into_iter()
            .take(16)
            .map(|e| Sample {
                image: tensor(&e.image),
                target: tensor(&e.target),
                id: e.id,
            })
            .collect(),
    };
    let mut cfg = RunConfig::parse(
        "[run]\nmethod = \"std\"\nthreads = 1\nseed = 2\n[data.synthetic]\n[model]\nwidth = 8\n[train]\nbatch_size = 4\nlr = 0.01\n",
        Path::new("test.toml"),
    )
    .unwrap();
    cfg.run.plugin = Some(support::wasm_plugin("detection"));
    cfg.validate().unwrap();
    let mut t = Trainer::new(&cfg, &p, Device::Cpu, train.len()).unwrap();
    let losses: Vec<f64> = (0..12)
        .map(|_| {
            t.train_epoch(&mut p, &train, &ProgressBar::hidden())
                .unwrap()
                .clean_loss
        })
        .collect();
    println!("detection losses: {losses:?}");
    assert!(
        losses[11] < 0.5 * losses[0],
        "loss did not fall: {losses:?}"
    );
}
