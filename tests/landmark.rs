//! The landmark plugin (the 32 AFIDs) through its wasm component: metrics
//! against hand-computed values, the loss's meaning, decoding of the real
//! autoafids template (AC and PC where the .fcsv puts them), errors that name
//! the file, and a few training steps whose loss falls.

use crate::support;

use amat_host::config::RunConfig;
use amat_host::data::{Dataset, Sample};
use amat_host::plugin::{DecodeRequest, Example, File, Plugin, SandboxLimits};
use amat_host::train::Trainer;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

const K: usize = 32;
const T1: &str = "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz";
const T2: &str = "tpl-MNI152NLin2009cAsym_res-01_T2w.nii.gz";
const FCSV: &str = "tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv";
/// AC and PC in RAS mm, from the .fcsv.
const AC: [f64; 3] = [-0.204861407692308, 2.72288076923077, -4.88105282051282];
const PC: [f64; 3] = [-0.00726026948717949, -25.0450538461538, -2.21068230769231];
/// The template's grid (TemplateFlow's MNI152NLin2009cAsym, 1 mm): voxel = RAS + origin.
const ORIGIN: [f64; 3] = [96.0, 132.0, 78.0];

/// libtorch's generator and thread count are process-wide.
static TORCH: Mutex<()> = Mutex::new(());

/// The wasm plugin, with the long call deadline `data prepare` gives decoding
/// (a whole volume in one call).
fn plugin() -> Plugin {
    let limits = SandboxLimits {
        call_timeout_ms: 300_000,
        ..SandboxLimits::default()
    };
    Plugin::load(support::wasm_plugin("landmark"), &limits).unwrap()
}

fn raw(name: &str) -> File {
    let path = support::root().join("data/raw/autoafids").join(name);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run host/scripts/fetch-data.sh)", path.display()));
    File {
        name: name.into(),
        bytes,
    }
}

fn decode(plugin: &mut Plugin, files: Vec<File>, options: &str) -> Vec<Example> {
    plugin
        .decode(&DecodeRequest {
            files,
            options: options.into(),
        })
        .unwrap()
}

fn real(options: &str) -> Vec<Example> {
    decode(&mut plugin(), vec![raw(T1), raw(FCSV)], options)
}

/// (row, col, present) of landmark `k` of an example's target.
fn point(e: &Example, k: usize) -> (f32, f32, f32) {
    let t = &e.target.data[k * 3..k * 3 + 3];
    (t[0], t[1], t[2])
}

fn spacing(e: &Example) -> (f32, f32) {
    (e.target.data[K * 3], e.target.data[K * 3 + 1])
}

/// A target [33, 3] with the given (landmark, row, col) present and spacing `mm`.
fn target(points: &[(usize, f32, f32)], mm: f32) -> Vec<f32> {
    let mut t = vec![0.0; (K + 1) * 3];
    for &(k, r, c) in points {
        t[k * 3..k * 3 + 3].copy_from_slice(&[r, c, 1.0]);
    }
    t[K * 3] = mm;
    t[K * 3 + 1] = mm;
    t
}

/// Heatmaps [1, K, n, n] that are 1 at `(landmark, row, col)` and 0 elsewhere.
fn one_hot_heatmaps(n: usize, peaks: &[(usize, usize, usize)]) -> Tensor {
    let mut v = vec![0.0f32; K * n * n];
    for &(k, r, c) in peaks {
        v[k * n * n + r * n + c] = 1.0;
    }
    Tensor::from_slice(&v).reshape([1, K as i64, n as i64, n as i64])
}

fn metric(m: &[amat_host::plugin::Metric], name: &str) -> f64 {
    m.iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric {name} in {m:?}"))
        .value
}

#[test]
fn mre_of_shifted_heatmaps_is_the_shift_in_mm_and_sdr_counts_radii() {
    let mut p = plugin();
    // Every landmark off by (3, 4) px at 2 mm per px: 10 mm each.
    let truth: Vec<(usize, f32, f32)> = (0..K)
        .map(|k| (k, 5.0 + (k % 8) as f32, 4.0 + (k / 8) as f32))
        .collect();
    let peaks: Vec<(usize, usize, usize)> = truth
        .iter()
        .map(|&(k, r, c)| (k, r as usize + 3, c as usize + 4))
        .collect();
    let y = Tensor::from_slice(&target(&truth, 2.0)).reshape([1, 33, 3]);
    let m = p.metrics(&one_hot_heatmaps(24, &peaks), &y).unwrap();
    assert!((metric(&m, "mre_mm") - 10.0).abs() < 1e-5, "{m:?}");
    assert_eq!(metric(&m, "sdr_8mm"), 0.0);

    // Four present landmarks at 1.5 mm per px, off by 0, 2, 5 (3-4-5) and 6 px:
    // 0, 3, 7.5 and 9 mm. Landmark 7 is absent: its heatmap does not count.
    let truth = [(0, 10.0, 10.0), (1, 5.0, 5.0), (2, 8.0, 2.0), (5, 1.0, 1.0)];
    let peaks = [(0, 10, 10), (1, 7, 5), (2, 11, 6), (5, 1, 7), (7, 0, 19)];
    let y = Tensor::from_slice(&target(&truth, 1.5)).reshape([1, 33, 3]);
    let m = p.metrics(&one_hot_heatmaps(20, &peaks), &y).unwrap();
    assert!((metric(&m, "mre_mm") - 19.5 / 4.0).abs() < 1e-5, "{m:?}");
    assert_eq!(metric(&m, "sdr_2mm"), 0.25);
    assert_eq!(metric(&m, "sdr_4mm"), 0.5);
    assert_eq!(metric(&m, "sdr_8mm"), 0.75);
    assert_eq!(metric(&m, "landmarks"), 4.0);
}

#[test]
fn loss_is_zero_for_the_true_gaussian_one_for_a_flat_map_and_ignores_absent_landmarks() {
    let mut p = plugin();
    let n = 32;
    let (r0, c0) = (12.5f32, 17.0f32);
    let y = Tensor::from_slice(&target(&[(4, r0, c0)], 1.0)).reshape([1, 33, 3]);
    let rows = Tensor::arange(n, (Kind::Float, Device::Cpu)).reshape([n, 1]);
    let cols = Tensor::arange(n, (Kind::Float, Device::Cpu)).reshape([1, n]);
    // Logits whose softmax over pixels is the sigma-2 px Gaussian.
    let log_g = -((rows - r0 as f64).square() + (cols - c0 as f64).square()) / 8.0;
    let pred = Tensor::zeros([1, K as i64, n, n], (Kind::Float, Device::Cpu));
    pred.get(0).get(4).copy_(&(log_g + 5.0));
    let perfect = p.loss(&pred, &y).unwrap().double_value(&[0]);
    assert!(perfect.abs() < 1e-5, "{perfect}");
    let flat = p.loss(&pred.zeros_like(), &y).unwrap().double_value(&[0]);
    assert!((flat - 1.0).abs() < 1e-5, "{flat}");
    // A peak one pixel off costs something; a confident peak far off, more than a flat map.
    let near = pred.roll([1], [3]);
    let far = pred.roll([14], [3]);
    let (near, far) = (
        p.loss(&near, &y).unwrap().double_value(&[0]),
        p.loss(&far, &y).unwrap().double_value(&[0]),
    );
    assert!(perfect < near && near < far && far > 1.0, "{near} {far}");
    // Junk in an absent landmark's channel changes nothing.
    let junk = pred.copy();
    let _ = junk.get(0).get(9).fill_(3.0);
    assert_eq!(p.loss(&junk, &y).unwrap().double_value(&[0]), perfect);
    // A wrong shape is an error, not a number.
    assert!(p.loss(&pred.narrow(1, 0, 31), &y).is_err());
}

#[test]
fn ac_and_pc_land_where_the_fcsv_puts_them() {
    // Size 229 = the sagittal plane's longer side: one output pixel per voxel,
    // rows (z, 193) padded by 18 on each side.
    let ex = real(r#"{"axis": "sagittal", "indices": [96], "size": 229, "tolerance_mm": 0.5}"#);
    assert_eq!(ex.len(), 1);
    let e = &ex[0];
    assert_eq!(e.id, "T1w:sagittal:96");
    assert_eq!(e.image.shape, vec![1, 229, 229]);
    assert_eq!(e.target.shape, vec![33, 3]);
    assert!(e.image.data.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(
        e.image.data[..18 * 229].iter().all(|&v| v == 0.0),
        "the padding is empty"
    );
    assert_eq!(spacing(e), (1.0, 1.0));
    // The mid-sagittal slice holds the 10 midline AFIDs within half a voxel.
    let present: Vec<usize> = (0..K).filter(|&k| point(e, k).2 == 1.0).collect();
    assert_eq!(present.len(), 10, "{present:?}");
    for (k, ras) in [(0, AC), (1, PC)] {
        let (row, col, on) = point(e, k);
        assert_eq!(on, 1.0);
        let (z, y) = (ras[2] + ORIGIN[2], ras[1] + ORIGIN[1]);
        assert!(
            (row as f64 - (z + 18.0)).abs() <= 0.5 && (col as f64 - y).abs() <= 0.5,
            "AFID {k}: ({row}, {col}) vs voxel z {z}, y {y}"
        );
    }
    // AC is anterior of PC by about 28 mm along y.
    assert!((point(e, 0).1 - point(e, 1).1 - 27.8).abs() < 0.5);

    // The axial slice through AC (z = 73.1) holds AC; at 64 px the spacing is 229/64 mm.
    let ex = real(r#"{"axis": "axial", "indices": [73], "size": 64}"#);
    let e = &ex[0];
    assert_eq!(e.image.shape, vec![1, 64, 64]);
    let (sr, sc) = spacing(e);
    assert!(
        (sr as f64 - 229.0 / 64.0).abs() < 1e-4 && sr == sc,
        "{sr} {sc}"
    );
    assert_eq!(point(e, 0).2, 1.0, "AC in the axial slice through it");

    // T2w: the same anatomy on the same grid, so the same targets, another image.
    let ex = decode(
        &mut plugin(),
        vec![raw(T1), raw(T2), raw(FCSV)],
        r#"{"indices": [96], "size": 48, "contrasts": ["T1w", "T2w"]}"#,
    );
    let ids: Vec<&str> = ex.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["T1w:sagittal:96", "T2w:sagittal:96"]);
    assert_eq!(ex[0].target, ex[1].target);
    assert_ne!(ex[0].image, ex[1].image);
}

#[test]
fn slices_are_chosen_by_tolerance_and_augmented_copies_are_deterministic() {
    let mut p = plugin();
    let files = || vec![raw(T1), raw(FCSV)];
    let all = decode(
        &mut p,
        files(),
        r#"{"axis": "sagittal", "size": 32, "min_landmarks": 2}"#,
    );
    assert!(
        !all.is_empty()
            && all
                .iter()
                .all(|e| (0..K).filter(|&k| point(e, k).2 == 1.0).count() >= 2)
    );
    let idx: Vec<usize> = all
        .iter()
        .map(|e| e.id.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    assert!(idx.windows(2).all(|w| w[0] < w[1]), "slab order: {idx:?}");
    assert!(idx.contains(&96));

    let opts =
        |seed: u64| format!(r#"{{"indices": [95, 96], "size": 32, "augment": 3, "seed": {seed}}}"#);
    let a = decode(&mut p, files(), &opts(1));
    let b = decode(&mut p, files(), &opts(1));
    let c = decode(&mut p, files(), &opts(2));
    let ids: Vec<&str> = a.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        &ids[..4],
        &[
            "T1w:sagittal:95",
            "T1w:sagittal:95:aug0",
            "T1w:sagittal:95:aug1",
            "T1w:sagittal:95:aug2"
        ]
    );
    assert_eq!(a, b, "same seed, same copies");
    assert_eq!(
        a[0], c[0],
        "the unaugmented example does not depend on the seed"
    );
    assert_ne!(a[1].image, c[1].image, "another seed, other copies");
    // A copy moves its landmarks and rescales its spacing with its zoom.
    assert_ne!(point(&a[1], 0), point(&a[0], 0));
    assert_ne!(spacing(&a[1]), spacing(&a[0]));
}

#[test]
fn corrupt_inputs_are_errors_naming_the_file() {
    let mut p = plugin();
    let t1 = raw(T1);
    let cut = File {
        name: t1.name.clone(),
        bytes: t1.bytes[..t1.bytes.len() / 2].to_vec(),
    };
    let err = p
        .decode(&DecodeRequest {
            files: vec![cut, raw(FCSV)],
            options: String::new(),
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains(T1), "{err}");
    let mut fcsv = raw(FCSV);
    fcsv.bytes = String::from_utf8(fcsv.bytes)
        .unwrap()
        .replacen(",1,AC,", ",one,AC,", 1)
        .into_bytes();
    let err = p
        .decode(&DecodeRequest {
            files: vec![raw(T1), fcsv],
            options: String::new(),
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains(FCSV) && err.contains("AC"), "{err}");
    // A wrong datatype code (3 is not a NIfTI type), in an uncompressed copy.
    let mut nii = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(raw(T1).bytes.as_slice()),
        &mut nii,
    )
    .unwrap();
    nii[70..72].copy_from_slice(&3i16.to_le_bytes());
    let bad = File {
        name: T1.trim_end_matches(".gz").into(),
        bytes: nii,
    };
    let err = p
        .decode(&DecodeRequest {
            files: vec![bad, raw(FCSV)],
            options: String::new(),
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(T1.trim_end_matches(".gz")) && err.contains("datatype"),
        "{err}"
    );
    let err = p
        .decode(&DecodeRequest {
            files: vec![raw(FCSV)],
            options: String::new(),
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("T1w"), "{err}");
    let err = p
        .decode(&DecodeRequest {
            files: vec![raw(T1), raw(FCSV)],
            options: r#"{"axis": "oblique"}"#.into(),
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("oblique"), "{err}");
}

/// Decoded examples as a host dataset.
fn dataset(name: &str, examples: Vec<Example>) -> Dataset {
    let tensor =
        |d: &amat_plugin_sdk::Dense| Tensor::from_slice(&d.data).reshape(d.shape.as_slice());
    Dataset {
        name: name.into(),
        samples: examples
            .into_iter()
            .map(|e| Sample {
                image: tensor(&e.image),
                target: tensor(&e.target),
                id: e.id,
            })
            .collect(),
    }
}

fn config(plugin: PathBuf, text: &str) -> RunConfig {
    let mut cfg = RunConfig::parse(text, Path::new("test.toml")).unwrap();
    cfg.run.plugin = Some(plugin);
    cfg.validate().unwrap();
    cfg
}

#[test]
fn trains_end_to_end_through_the_wasm_plugin_and_the_loss_falls() {
    let _torch = TORCH.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = plugin();
    let examples = decode(
        &mut p,
        vec![raw(T1), raw(FCSV)],
        r#"{"indices": [96], "size": 32, "augment": 11, "seed": 3}"#,
    );
    assert_eq!(examples.len(), 12);
    let train = dataset("train", examples);
    let cfg = config(
        support::wasm_plugin("landmark"),
        "[run]\nmethod = \"std\"\nthreads = 1\nseed = 1\n[data.synthetic]\n[model]\nwidth = 8\n[train]\nbatch_size = 4\nlr = 0.01\n",
    );
    let mut t = Trainer::new(&cfg, &p, Device::Cpu, train.len()).unwrap();
    let losses: Vec<f64> = (0..30)
        .map(|_| {
            t.train_epoch(&mut p, &train, &ProgressBar::hidden())
                .unwrap()
                .clean_loss
        })
        .collect();
    println!("landmark losses: {losses:?}");
    assert!(
        losses[29] < 0.1 * losses[0],
        "loss did not fall: {losses:?}"
    );
    // 1 is the loss of a flat map (no peak anywhere): below it, the net places peaks.
    assert!(
        losses[29] < 1.0,
        "the net only learned to predict nothing: {losses:?}"
    );
}
