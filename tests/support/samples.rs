//! Training sets the tests build themselves.

use amat_host::data::synthetic::disk;
use amat_host::data::{Dataset, Sample};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// `n` images of one kind: disks of `contrast` under `noise`, with the true
/// class map or (`random_target`) a random one that cannot be learned.
pub fn kind_of_samples(
    rng: &mut ChaCha8Rng,
    name: &str,
    n: usize,
    contrast: f64,
    noise: f64,
    random_target: bool,
) -> Vec<Sample> {
    (0..n)
        .map(|i| {
            let (image, mut target) = disk(rng, 24, contrast, noise, 0.3);
            if random_target {
                let bits: Vec<f32> = (0..24 * 24).map(|_| rng.gen_range(0..2) as f32).collect();
                target = Tensor::from_slice(&bits).reshape([24, 24]);
            }
            Sample {
                id: format!("{name}-{i}"),
                image,
                target,
            }
        })
        .collect()
}

/// 10 easy disks, 10 faint noisy ones and 2 with random targets (seed 7):
/// samples that AMAT should treat differently.
pub fn easy_hard_unlearnable() -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut samples = kind_of_samples(&mut rng, "easy", 10, 1.0, 0.03, false);
    samples.extend(kind_of_samples(&mut rng, "hard", 10, 0.12, 0.08, false));
    samples.extend(kind_of_samples(&mut rng, "unlearnable", 2, 0.6, 0.05, true));
    Dataset::new("train", samples)
}

/// `n` random 16 x 16 images with random 3-class targets, from torch's
/// generator (seed it first).
pub fn random_samples(n: usize) -> Dataset {
    let samples = (0..n)
        .map(|i| Sample {
            id: format!("s{i}"),
            image: Tensor::rand([1, 16, 16], (Kind::Float, Device::Cpu)),
            target: Tensor::randint(3, [16, 16], (Kind::Float, Device::Cpu)),
        })
        .collect();
    Dataset::new("parity", samples)
}

/// A NIfTI-1 volume of bytes (uint8, 1 mm voxels, identity sform), gzipped.
pub fn nifti_u8_gz(dims: [usize; 3], data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    const IDENTITY: [[f32; 4]; 3] = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
    ];
    let bytes = medimg::nifti::encode_u8(dims, IDENTITY, data);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&bytes).unwrap();
    e.finish().unwrap()
}

/// Side and depth of the tiny case volumes.
pub const CASE_DIMS: [usize; 3] = [8, 8, 4];

/// Case `k`'s image (a bright 3 x 3 blob in the z = 1..3 slices over a
/// background that varies by case) and its label map (1 in the blob).
pub fn case_volumes(k: usize) -> (Vec<u8>, Vec<u8>) {
    let [nx, ny, nz] = CASE_DIMS;
    let (cx, cy) = (3 + k % 2, 3 + (k / 2) % 2);
    let mut image = Vec::with_capacity(nx * ny * nz);
    let mut label = Vec::with_capacity(nx * ny * nz);
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let inside = (1..3).contains(&z) && x.abs_diff(cx) <= 1 && y.abs_diff(cy) <= 1;
                image.push(if inside {
                    200
                } else {
                    (10 + 7 * k + x + y) as u8
                });
                label.push(u8::from(inside));
            }
        }
    }
    (image, label)
}

/// An nnU-Net v2 raw folder of `n` one-channel cases `case_000`, ... in `dir`.
pub fn nnunet_folder(dir: &std::path::Path, n: usize) {
    nnunet_cases(dir, "case", "blob", n, |k| {
        let (image, label) = case_volumes(k);
        (CASE_DIMS, image, label)
    });
}

/// An nnU-Net v2 raw folder of `n` one-channel T1 cases `<prefix>_000`, ...
/// with one foreground class `label`; `case(k)` gives case k's grid, image
/// and label map.
pub fn nnunet_cases(
    dir: &std::path::Path,
    prefix: &str,
    label: &str,
    n: usize,
    case: impl Fn(usize) -> ([usize; 3], Vec<u8>, Vec<u8>),
) {
    std::fs::create_dir_all(dir.join("imagesTr")).unwrap();
    std::fs::create_dir_all(dir.join("labelsTr")).unwrap();
    std::fs::write(
        dir.join("dataset.json"),
        format!(
            r#"{{"channel_names": {{"0": "T1"}}, "labels": {{"background": 0, "{label}": 1}},
                "numTraining": {n}, "file_ending": ".nii.gz"}}"#
        ),
    )
    .unwrap();
    for k in 0..n {
        let (dims, image, labels) = case(k);
        let id = format!("{prefix}_{k:03}");
        std::fs::write(
            dir.join(format!("imagesTr/{id}_0000.nii.gz")),
            nifti_u8_gz(dims, &image),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("labelsTr/{id}.nii.gz")),
            nifti_u8_gz(dims, &labels),
        )
        .unwrap();
    }
}

/// An MSD folder of `n` cases `blob_000`, ... in `dir`.
pub fn msd_folder(dir: &std::path::Path, n: usize) {
    std::fs::create_dir_all(dir.join("imagesTr")).unwrap();
    std::fs::create_dir_all(dir.join("labelsTr")).unwrap();
    let mut training = Vec::new();
    for k in 0..n {
        let (image, label) = case_volumes(k);
        let file = format!("blob_{k:03}.nii.gz");
        std::fs::write(
            dir.join("imagesTr").join(&file),
            nifti_u8_gz(CASE_DIMS, &image),
        )
        .unwrap();
        std::fs::write(
            dir.join("labelsTr").join(&file),
            nifti_u8_gz(CASE_DIMS, &label),
        )
        .unwrap();
        training.push(format!(
            r#"{{"image": "./imagesTr/{file}", "label": "./labelsTr/{file}"}}"#
        ));
    }
    std::fs::write(
        dir.join("dataset.json"),
        format!(
            r#"{{"name": "Blobs", "modality": {{"0": "MRI"}}, "labels": {{"0": "background", "1": "blob"}},
                "numTraining": {n}, "training": [{}], "test": []}}"#,
            training.join(", ")
        ),
    )
    .unwrap();
}
