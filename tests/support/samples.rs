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
    Dataset {
        name: "train".into(),
        samples,
    }
}

/// `n` random 16 x 16 images with random 3-class targets, from torch's
/// generator (seed it first).
pub fn random_samples(n: usize) -> Dataset {
    Dataset {
        name: "parity".into(),
        samples: (0..n)
            .map(|i| Sample {
                id: format!("s{i}"),
                image: Tensor::rand([1, 16, 16], (Kind::Float, Device::Cpu)),
                target: Tensor::randint(3, [16, 16], (Kind::Float, Device::Cpu)),
            })
            .collect(),
    }
}
