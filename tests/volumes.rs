//! Volumes [C, D, H, W]: the 3D U-Net trained on patches with each method,
//! sliding-window inference, PGD on whole volumes through the windows, and
//! the patch sampler's foreground oversampling. Tiny volumes built in memory
//! (a bright blob to segment), so each test takes seconds.

use crate::support;

use amat_host::attack::{Context, Norm, PgdConfig, Range, pgd, sample_norms};
use amat_host::config::{Method, RunConfig};
use amat_host::data::{Dataset, Sample};
use amat_host::eval;
use amat_host::model::sliding::{self, Window};
use amat_host::model::{ModelConfig, Net};
use amat_host::plugin::{Plugin, SandboxLimits};
use amat_host::train::Trainer;
use amat_host::train::patches::Patches;
use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::sync::Mutex;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

static TORCH: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

fn load_plugin() -> Plugin {
    Plugin::load(
        support::native_plugin("segmentation"),
        &SandboxLimits::default(),
    )
    .unwrap()
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

const SHAPE: [i64; 3] = [12, 16, 16];

/// A volume [1, 12, 16, 16] holding a bright ball of radius 2.5 to 4 voxels
/// (`contrast` above a 0.2 background, Gaussian noise of `noise`), and its
/// class map [12, 16, 16] (1 inside the ball).
fn blob(rng: &mut ChaCha8Rng, id: String, contrast: f32, noise: f32) -> Sample {
    let [d, h, w] = SHAPE;
    let c = [
        rng.gen_range(4.0..d as f32 - 4.0),
        rng.gen_range(4.0..h as f32 - 4.0),
        rng.gen_range(4.0..w as f32 - 4.0),
    ];
    let r: f32 = rng.gen_range(2.5..4.0);
    let (mut image, mut target) = (Vec::new(), Vec::new());
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let dist2 = (z as f32 - c[0]).powi(2)
                    + (y as f32 - c[1]).powi(2)
                    + (x as f32 - c[2]).powi(2);
                let inside = dist2 <= r * r;
                // Box-Muller is overkill: a uniform noise of the same sd.
                let n = (rng.gen_range(-1.0f32..1.0)) * noise * 3f32.sqrt();
                let v = 0.2 + if inside { contrast } else { 0.0 } + n;
                image.push(v.clamp(0.0, 1.0));
                target.push(if inside { 1.0f32 } else { 0.0 });
            }
        }
    }
    Sample {
        id,
        image: Tensor::from_slice(&image).reshape([1, d, h, w]),
        target: Tensor::from_slice(&target).reshape(SHAPE),
    }
}

fn blobs(seed: u64, name: &str, n: usize, contrast: f32, noise: f32) -> Vec<Sample> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| blob(&mut rng, format!("{name}-{i}"), contrast, noise))
        .collect()
}

fn tiny_3d(depth: usize) -> ModelConfig {
    ModelConfig {
        dims: 3,
        depth,
        width: 4,
        ..ModelConfig::default()
    }
}

// ------------------------------------------------------------- training

/// Four easy blobs and four faint, noisy ones: cases AMAT should treat apart.
fn training_cases() -> Dataset {
    let mut samples = blobs(10, "easy", 4, 0.7, 0.03);
    samples.extend(blobs(11, "faint", 4, 0.15, 0.12));
    Dataset::new("train", samples)
}

fn run_config(method: Method) -> RunConfig {
    let text = format!(
        "[run]\nmethod = \"{method}\"\nthreads = 1\nseed = 1\n[data.synthetic]\n\
         [model]\ndims = 3\ndepth = 1\nwidth = 4\n\
         [train]\nepochs = 4\nwarmup_epochs = 2\nbatch_size = 4\nlr = 0.02\n\
         patch = [8, 8, 8]\npatches_per_case = 2\n\
         [train.attack]\nsteps = 3\n[sat]\neps = 1.0\n\
         [amat]\ndelta_eps = 0.5\neps_max = 4.0\n[amat.judge]\nhard_dice = 0.6\n\
         [eval]\neps = [0.0, 1.0]\nrestarts = 1\noverlap = 0.0\n[eval.attack]\nsteps = 2\n"
    );
    let mut cfg = RunConfig::parse(&text, Path::new("volumes.toml")).unwrap();
    cfg.run.plugin = Some(support::native_plugin("segmentation"));
    cfg.validate().unwrap();
    cfg
}

/// A tiny 3D U-Net trains on 8 x 8 x 8 patches of 12 x 16 x 16 volumes with
/// each method: the clean loss falls; evaluation runs on a whole volume
/// through the sliding window (2 x 2 x 2 windows), with PGD through it; AMAT's
/// margins, one per case, part the cases.
#[test]
fn a_tiny_3d_unet_trains_on_patches_with_each_method_and_evaluates_whole_volumes() {
    let _torch = lock();
    let mut plugin = load_plugin();
    let train = training_cases();
    let test = Dataset::new("test", blobs(12, "test", 1, 0.6, 0.05));
    for method in [Method::Std, Method::Sat, Method::Amat] {
        let cfg = run_config(method);
        let mut t = Trainer::new(&cfg, &plugin, Device::Cpu, train.len()).unwrap();
        assert_eq!(
            t.model.window().map(|w| w.size.clone()),
            Some(vec![8, 8, 8])
        );
        let mut records = Vec::new();
        for _ in 0..cfg.train.epochs {
            records.push(
                t.train_epoch(&mut plugin, &train, &ProgressBar::hidden())
                    .unwrap(),
            );
        }
        let (first, last) = (&records[0], records.last().unwrap());
        println!(
            "{method}: clean loss {:.3} -> {:.3}, adversarial {:?}",
            first.clean_loss, last.clean_loss, last.adv_loss
        );
        assert!(
            last.clean_loss < first.clean_loss,
            "{method}: the clean loss did not fall: {first:?} -> {last:?}"
        );
        if method != Method::Std {
            assert_eq!(last.phase, "adversarial", "{method}");
            assert!(last.adv_loss.unwrap() > 0.0, "{method}");
        }
        let curve = eval::robustness(
            &mut Context::new(&t.model, &mut plugin, t.range),
            &test,
            &cfg.eval,
            Device::Cpu,
            0,
            &ProgressBar::hidden(),
        )
        .unwrap();
        let dice = curve.metric("dice_mean").unwrap();
        println!("{method}: dice {:?}, loss {:?}", dice.values, curve.loss);
        assert!(
            dice.values.iter().all(|v| (0.0..=1.0).contains(v)),
            "{method}: {dice:?}"
        );
        assert!(
            curve.loss[1] >= curve.loss[0],
            "{method}: the attack lowered the loss: {:?}",
            curve.loss
        );
        if method == Method::Amat {
            let m = &t.margins.as_ref().unwrap().values;
            println!("margins: {m:?}");
            assert_eq!(m.len(), train.len(), "one margin per case, not per patch");
            let (lo, hi) = m
                .iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            assert!(hi > lo, "every case kept the same margin: {m:?}");
        }
    }
}

// ------------------------------------------------------------- sliding window

#[test]
fn sliding_window_over_the_whole_volume_is_one_forward_and_stitches_exactly() {
    let _torch = lock();
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Net::new(&vs.root(), &tiny_3d(2), 1, 3);
    let x = Tensor::rand([2, 1, 12, 16, 16], (Kind::Float, Device::Cpu));
    let whole = tch::no_grad(|| net.forward_t(&x, false));
    let covering = Window {
        size: SHAPE.to_vec(),
        overlap: 0.5,
    };
    let slid = tch::no_grad(|| sliding::predict(&net, &x, &covering, false));
    let diff = (&slid - &whole).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "one covering window differs by {diff}");

    // A pointwise network sees no context, so any windows, overlapping,
    // Gaussian-weighted or padded past the volume, stitch back to its forward.
    let point = nn::conv3d(vs.root() / "point", 1, 3, 1, Default::default());
    let plain = x.apply(&point);
    for (size, overlap) in [
        (vec![8, 8, 8], 0.5),
        (vec![5, 7, 16], 0.25),
        (vec![16, 8, 20], 0.5),
    ] {
        let w = Window { size, overlap };
        let slid = tch::no_grad(|| sliding::predict(&point, &x, &w, false));
        assert_eq!(slid.size(), plain.size());
        let diff = (&slid - &plain).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "windows {w:?} differ by {diff}");
    }
}

// ------------------------------------------------------------- PGD on volumes

/// PGD on whole volumes through a net that predicts them window by window:
/// each sample's noise stays in its own ball (L2 and Linf), the attacked
/// volume in the intensity range, and the gradient reaches every window.
#[test]
fn pgd_noise_on_volumes_stays_within_each_samples_eps() {
    let _torch = lock();
    tch::manual_seed(1);
    let mut plugin = load_plugin();
    let vs = nn::VarStore::new(Device::Cpu);
    let window = Window {
        size: vec![8, 12, 12],
        overlap: 0.5,
    };
    let net = Net::new(&vs.root(), &tiny_3d(1), 1, 8).with_window(Some(window));
    let data = blobs(3, "pgd", 3, 0.6, 0.05);
    let x = Tensor::stack(&data.iter().map(|s| &s.image).collect::<Vec<_>>(), 0);
    let y = Tensor::stack(&data.iter().map(|s| &s.target).collect::<Vec<_>>(), 0);
    let range = Range { min: 0.0, max: 1.0 };
    for (norm, eps) in [
        (Norm::L2, [0.0f32, 0.5, 2.0]),
        (Norm::Linf, [0.0, 0.01, 0.05]),
    ] {
        // From zero, so any noise a voxel gets came through the gradient.
        let cfg = PgdConfig {
            norm,
            steps: 2,
            random_start: false,
            ..PgdConfig::default()
        };
        let mut ctx = Context::new(&net, &mut plugin, range);
        let delta = pgd(&mut ctx, &x, &y, &Tensor::from_slice(&eps), &cfg).unwrap();
        assert_eq!(delta.size(), x.size());
        let n = floats(&sample_norms(&delta, norm));
        for i in 0..3 {
            assert!(
                n[i] <= eps[i] * (1.0 + 1e-5) + 1e-7,
                "{norm}: sample {i} left its ball: {n:?} > {eps:?}"
            );
        }
        assert_eq!(n[0], 0.0, "{norm}: eps = 0 must give no noise");
        assert!(n[2] > 0.5 * eps[2], "{norm}: barely moved: {n:?}");
        let attacked = &x + &delta;
        assert!(attacked.min().double_value(&[]) >= 0.0);
        assert!(attacked.max().double_value(&[]) <= 1.0);
        // The volume's 12 x 16 x 16 voxels lie in 2 x 2 x 2 windows: the
        // noise moved voxels in every corner block of the volume.
        let moved = delta.get(2).abs().gt(0.0).to_kind(Kind::Float);
        for (z, yy, xx) in [(0, 0, 0), (8, 12, 12), (0, 12, 0), (8, 0, 12)] {
            let block = moved.narrow(1, z, 4).narrow(2, yy, 4).narrow(3, xx, 4);
            assert!(
                block.sum(Kind::Float).double_value(&[]) > 0.0,
                "{norm}: no noise in the block at {z}, {yy}, {xx}"
            );
        }
    }
}

// ------------------------------------------------------------- patches

/// One foreground voxel in a 12 x 16 x 16 volume: a random 4 x 4 x 4 patch
/// holds it about 1 time in 50, so the share seen is that of the
/// foreground-centred draws; the same seed draws the same patches.
#[test]
fn foreground_oversampling_finds_a_tiny_foreground_and_is_deterministic() {
    let [d, h, w] = SHAPE;
    let target = Tensor::zeros(SHAPE, (Kind::Float, Device::Cpu));
    let _ = target.get(5).get(3).get(11).fill_(1.0);
    let data = Dataset {
        name: "tiny".into(),
        samples: vec![Sample {
            id: "one-voxel".into(),
            image: Tensor::rand([1, d, h, w], (Kind::Float, Device::Cpu)),
            target,
        }],
        on_disk: None,
    };
    let share = |foreground: f64, seed: u64| {
        let mut p = Patches::new(vec![4, 4, 4], foreground, 0.0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut hits = 0;
        let mut starts = Vec::new();
        for _ in 0..300 {
            let (_, t) = p.batch(&data, &[0], &mut rng, Device::Cpu).unwrap();
            assert_eq!(t.size(), [1, 4, 4, 4]);
            hits += (t.sum(Kind::Float).double_value(&[]) > 0.0) as usize;
            starts.push(p.draw(&data, 0, &mut rng).unwrap());
        }
        (hits as f64 / 300.0, starts)
    };
    let (with, starts) = share(1.0 / 3.0, 4);
    let (without, _) = share(0.0, 4);
    println!("foreground share: {with} oversampled, {without} uniform");
    assert!((0.25..0.45).contains(&with), "oversampled share {with}");
    assert!(without < 0.1, "uniform share {without}");
    assert_eq!(share(1.0 / 3.0, 4).1, starts, "same seed, other patches");
    assert_ne!(share(1.0 / 3.0, 5).1, starts, "another seed, same patches");
    // Every start keeps the patch inside the volume.
    for s in &starts {
        assert!(s[0] <= d - 4 && s[1] <= h - 4 && s[2] <= w - 4, "{s:?}");
    }
}

/// A case shorter than the patch is padded (images with the pad value,
/// targets with background); a sample of the wrong rank is refused by name.
#[test]
fn short_cases_are_padded_and_wrong_shapes_refused() {
    let data = Dataset {
        name: "short".into(),
        samples: vec![Sample {
            id: "flat".into(),
            image: Tensor::ones([1, 2, 6, 6], (Kind::Float, Device::Cpu)),
            target: Tensor::ones([2, 6, 6], (Kind::Float, Device::Cpu)),
        }],
        on_disk: None,
    };
    let mut p = Patches::new(vec![4, 4, 4], 0.0, -1.0);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (x, y) = p.batch(&data, &[0], &mut rng, Device::Cpu).unwrap();
    assert_eq!(x.size(), [1, 1, 4, 4, 4]);
    assert_eq!(x.narrow(2, 2, 2).max().double_value(&[]), -1.0);
    assert_eq!(y.narrow(1, 2, 2).max().double_value(&[]), 0.0);
    assert_eq!(y.narrow(1, 0, 2).min().double_value(&[]), 1.0);
    let flat = Dataset {
        name: "2d".into(),
        samples: vec![Sample {
            id: "slice-7".into(),
            image: Tensor::ones([1, 6, 6], (Kind::Float, Device::Cpu)),
            target: Tensor::ones([6, 6], (Kind::Float, Device::Cpu)),
        }],
        on_disk: None,
    };
    let e = p
        .batch(&flat, &[0], &mut rng, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("slice-7") && e.contains("[C, D, H, W]"), "{e}");
}

// ------------------------------------------------- plugin-decoded volumes

/// Case `k` of an nnU-Net folder: a `dims` grid whose border of 2 voxels is
/// 0 (outside the "head"), a noisy grey inside, and a bright ball (class 1)
/// whose brightness differs by case (as scanners do), so z-scoring matters.
fn ball_case(k: usize, dims: [usize; 3]) -> (Vec<u8>, Vec<u8>) {
    let [nx, ny, nz] = dims;
    let c = [nx as f32 / 2.0, ny as f32 / 2.0, nz as f32 / 2.0];
    let (mut image, mut label) = (Vec::new(), Vec::new());
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let border = [x, y, z]
                    .iter()
                    .zip(dims)
                    .any(|(&v, n)| v < 2 || v + 2 >= n);
                let d2 = (x as f32 - c[0]).powi(2)
                    + (y as f32 - c[1]).powi(2)
                    + (2.0 * (z as f32 - c[2])).powi(2);
                let inside = !border && d2 <= 9.0;
                let grey = 40 + 10 * k as u8 + ((x * 7 + y * 3 + z * 5) % 11) as u8;
                image.push(match (border, inside) {
                    (true, _) => 0,
                    (false, true) => grey + 80,
                    (false, false) => grey,
                });
                label.push(u8::from(inside));
            }
        }
    }
    (image, label)
}

/// An nnU-Net v2 folder of `n` T1 cases of three grid sizes, with 2 mm slices.
fn ball_folder(dir: &Path, n: usize) {
    crate::support::samples::nnunet_cases(dir, "ball", "ball", n, |k| {
        let dims = [16 + 2 * (k % 3), 16, 10];
        let (image, label) = ball_case(k, dims);
        (dims, image, label)
    });
}

/// The whole path for volumes the plugin decodes: `data prepare` in volume
/// mode (cropped to the non-zero box, resampled to 2 mm in-plane), z-scored
/// by the host per case over the non-zero voxels and recorded in the
/// manifest; a run reads the on-disk cache, trains on patches and evaluates
/// a test split of volumes of several shapes through the sliding window,
/// its reports stating eps's unit. A cache file that vanishes under a
/// running process is an error naming the case and the file.
#[test]
fn plugin_decoded_volumes_prepare_normalise_train_on_patches_and_evaluate_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("Dataset002_Balls");
    ball_folder(&data, 9);
    let prepared = tmp.path().join("prepared");
    let wasm = support::wasm_plugin("segmentation");
    let out = support::amat_host()
        .args(["data", "prepare", "--plugin"])
        .arg(&wasm)
        .arg("--spec")
        .arg(&data)
        .arg("--out")
        .arg(&prepared)
        .args([
            "--decode",
            r#"{"volume": true, "spacing": [2.0, 2.0, 1.0]}"#,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("eps in z-score units"), "{stdout}");

    let manifest = prepared.join("manifest.json");
    let m = amat_host::data::manifest::Manifest::read(&manifest).unwrap();
    let n = m
        .normalization
        .as_ref()
        .expect("the field's scheme for cases");
    assert_eq!(
        (n.scheme.as_str(), n.channels[0].scheme.as_str()),
        ("field", "zscore-nonzero")
    );
    assert_eq!(n.channels[0].modality, "T1");
    assert!(m.cases.iter().all(|c| c.norm.is_some()));

    // Whole volumes: the 2-voxel zero border cropped to a 2-voxel margin
    // (nothing left to cut), x and y halved.
    // The plugin that prepared it: nothing is decoded again.
    let plugin = Plugin::load(&wasm, &SandboxLimits::default()).unwrap();
    let splits = amat_host::data::prepare::load_splits_on_disk(&manifest, &plugin).unwrap();
    let mut shapes = std::collections::BTreeSet::new();
    for set in [&splits.train, &splits.val, &splits.test] {
        for i in 0..set.len() {
            let s = set.sample(i).unwrap();
            let shape = s.image.size();
            assert_eq!(
                (shape[0], shape[1], shape[2]),
                (1, 10, 8),
                "{}: {shape:?}",
                s.id
            );
            assert_eq!(s.target.size(), shape[1..].to_vec());
            shapes.insert(shape);
            // Z-scored over the non-zero voxels: mean 0, sd 1 there.
            let v = floats(&s.image);
            let inside: Vec<f64> = v.iter().filter(|x| **x != 0.0).map(|&x| x as f64).collect();
            let mean = inside.iter().sum::<f64>() / inside.len() as f64;
            let sd = (inside.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / inside.len() as f64)
                .sqrt();
            assert!(
                mean.abs() < 1e-3 && (sd - 1.0).abs() < 1e-3,
                "{}: {mean} {sd}",
                s.id
            );
        }
    }
    assert_eq!(shapes.len(), 3, "three grid sizes: {shapes:?}");

    let config = tmp.path().join("run.toml");
    std::fs::write(
        &config,
        "[run]\nmethod = \"amat\"\nthreads = 1\ndevice = \"cpu\"\n\
         [data]\nmanifest = \"prepared/manifest.json\"\n\
         [model]\ndims = 3\ndepth = 1\nwidth = 4\n\
         [train]\nepochs = 3\nwarmup_epochs = 1\nbatch_size = 2\nlr = 0.02\n\
         patch = [8, 8, 8]\npatches_per_case = 2\n[train.attack]\nsteps = 2\n\
         [amat]\ndelta_eps = 0.5\neps_max = 4.0\n\
         [eval]\neps = [0.0, 1.0]\nrestarts = 1\noverlap = 0.5\n[eval.attack]\nsteps = 2\n",
    )
    .unwrap();
    let run = tmp.path().join("run");
    support::run_ok(&wasm, &config, &run);
    let curve: amat_host::eval::Curve =
        serde_json::from_str(&std::fs::read_to_string(run.join("robustness.json")).unwrap())
            .unwrap();
    assert_eq!(curve.samples, splits.test.len());
    // Class 1 is named as in the default label set.
    let dice = curve.metric("dice_frontal").expect("the ball's Dice");
    assert!(
        dice.values.iter().all(|v| (0.0..=1.0).contains(v)),
        "{:?}",
        dice.values
    );
    assert!(
        curve.intensity.contains("z-score units"),
        "{}",
        curve.intensity
    );
    let summary = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(
        summary.contains("z-score units") && summary.contains("clamped to ["),
        "{summary}"
    );

    // The cache changes under a running process: an error, not a panic.
    let case = &m.cases[0];
    std::fs::remove_file(prepared.join(&case.cache)).unwrap();
    let set = [&splits.train, &splits.val, &splits.test]
        .into_iter()
        .find(|s| (0..s.len()).any(|i| s.id(i).unwrap().starts_with(&case.id)))
        .unwrap();
    let i = (0..set.len())
        .find(|&i| set.id(i).unwrap().starts_with(&case.id))
        .unwrap();
    let e = format!("{:#}", set.batch(&[i], Device::Cpu).unwrap_err());
    assert!(
        e.contains(&format!("case `{}`", case.id)) && e.contains(case.cache.to_str().unwrap()),
        "{e}"
    );
}

/// Evaluation pads a split of class-map volumes of several shapes with
/// background: the Dice of each volume is what it is alone.
#[test]
fn a_split_of_mixed_shapes_evaluates_as_its_volumes_alone() {
    let _torch = lock();
    let mut plugin = load_plugin();
    let vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(3);
    let mut cfg = run_config(Method::Std);
    cfg.model = tiny_3d(1);
    let model = cfg.network(&vs.root(), plugin.info());
    let mut small = blobs(20, "small", 1, 0.6, 0.05);
    let big = blobs(21, "big", 1, 0.6, 0.05);
    // A second shape: the first volume cut to 12 x 12 x 16.
    let s = small.pop().unwrap();
    let cut = Sample {
        id: s.id,
        image: s.image.narrow(2, 0, 12).contiguous(),
        target: s.target.narrow(1, 0, 12).contiguous(),
    };
    let range = Range { min: 0.0, max: 1.0 };
    let mut eval_cfg = cfg.eval.clone();
    eval_cfg.eps = vec![0.0];
    let mut ctx = Context::new(&model, &mut plugin, range);
    let mut curve_of = |samples: Vec<Sample>| {
        eval::robustness(
            &mut ctx,
            &Dataset::new("test", samples),
            &eval_cfg,
            Device::Cpu,
            0,
            &ProgressBar::hidden(),
        )
        .unwrap()
    };
    let both = curve_of(vec![
        Sample {
            id: "cut".into(),
            image: cut.image.shallow_clone(),
            target: cut.target.shallow_clone(),
        },
        Sample {
            id: "big".into(),
            image: big[0].image.shallow_clone(),
            target: big[0].target.shallow_clone(),
        },
    ]);
    let alone = [curve_of(vec![cut]), curve_of(big)];
    // Dice per class is the mean over the samples that define it, so the
    // pair's value is the mean of the values the two volumes have alone:
    // the padding adds to no class.
    let value = |c: &eval::Curve, name: &str| {
        c.metric(name)
            .map(|m| m.values[0])
            .filter(|v| v.is_finite())
    };
    let mut checked = 0;
    for m in both.metrics.iter().filter(|m| m.name != "dice_mean") {
        let own: Vec<f64> = alone.iter().filter_map(|c| value(c, &m.name)).collect();
        let expected = own.iter().sum::<f64>() / own.len() as f64;
        assert!(
            (m.values[0] - expected).abs() < 1e-9,
            "{}: {} vs {own:?}",
            m.name,
            m.values[0]
        );
        checked += 1;
    }
    assert!(checked > 0, "{:?}", both.metrics);
}
