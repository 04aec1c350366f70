//! A small synthetic segmentation set: one bright disk per image on a noisy
//! background, the target the disk's class map (0 outside, 1 inside). Runs
//! and tests use it where no real data is at hand. Images lie in [0, 1].

use super::{Dataset, Sample, Splits};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// `[data.synthetic]`: how many images per split and how they look.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    pub train: usize,
    pub val: usize,
    pub test: usize,
    /// Height and width in pixels.
    pub size: i64,
    /// Disk contrast over the background, drawn uniformly from [min, max]
    /// per image; 1 is the full brightness range the disk can take.
    pub contrast: [f64; 2],
    /// Standard deviation of the Gaussian pixel noise.
    pub noise: f64,
    /// Disk radius as a fraction of `size`, drawn uniformly from [min, max].
    pub radius: [f64; 2],
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            train: 48,
            val: 8,
            test: 16,
            size: 24,
            contrast: [0.3, 1.0],
            noise: 0.1,
            radius: [0.15, 0.35],
            seed: 0,
        }
    }
}

impl SyntheticConfig {
    pub fn validate(&self) -> Result<(), String> {
        let range = |name: &str, [a, b]: [f64; 2], max: f64| {
            if !(0.0 <= a && a <= b && b <= max) {
                Err(format!(
                    "data.synthetic.{name} = [{a}, {b}] must satisfy 0 <= min <= max <= {max}"
                ))
            } else {
                Ok(())
            }
        };
        if self.train == 0 || self.test == 0 {
            return Err("data.synthetic needs at least one train and one test image".into());
        }
        if !(4..=1024).contains(&self.size) {
            return Err(format!(
                "data.synthetic.size = {} must lie in [4, 1024]",
                self.size
            ));
        }
        range("contrast", self.contrast, 1.0)?;
        range("radius", self.radius, 0.5)?;
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return Err(format!(
                "data.synthetic.noise = {} must be >= 0",
                self.noise
            ));
        }
        Ok(())
    }
}

/// Background level; a disk of contrast c has level `BACKGROUND + c * SPAN`.
const BACKGROUND: f64 = 0.25;
const SPAN: f64 = 0.5;

/// One standard normal draw (Box-Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u: f64 = 1.0 - rng.r#gen::<f64>();
    let v: f64 = rng.r#gen();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// One image [1, size, size] and its class map [size, size] (floats 0/1).
pub fn disk(
    rng: &mut impl Rng,
    size: i64,
    contrast: f64,
    noise: f64,
    radius: f64,
) -> (Tensor, Tensor) {
    let n = size as f64;
    let r = radius * n;
    let cx = rng.gen_range(r.min(n / 2.0)..=(n - r).max(n / 2.0));
    let cy = rng.gen_range(r.min(n / 2.0)..=(n - r).max(n / 2.0));
    let mut image = Vec::with_capacity((size * size) as usize);
    let mut target = Vec::with_capacity((size * size) as usize);
    for row in 0..size {
        for col in 0..size {
            let (dy, dx) = (row as f64 + 0.5 - cy, col as f64 + 0.5 - cx);
            let inside = dx * dx + dy * dy <= r * r;
            let level = BACKGROUND + if inside { contrast * SPAN } else { 0.0 };
            image.push((level + noise * normal(rng)).clamp(0.0, 1.0) as f32);
            target.push(if inside { 1.0f32 } else { 0.0 });
        }
    }
    (
        Tensor::from_slice(&image).reshape([1, size, size]),
        Tensor::from_slice(&target).reshape([size, size]),
    )
}

fn dataset(cfg: &SyntheticConfig, name: &str, count: usize, rng: &mut ChaCha8Rng) -> Dataset {
    let samples = (0..count)
        .map(|i| {
            let contrast = rng.gen_range(cfg.contrast[0]..=cfg.contrast[1]);
            let radius = rng.gen_range(cfg.radius[0]..=cfg.radius[1]);
            let (image, target) = disk(rng, cfg.size, contrast, cfg.noise, radius);
            Sample {
                id: format!("synthetic-{name}-{i:05}"),
                image,
                target: target.to_kind(Kind::Float),
            }
        })
        .collect();
    Dataset::new(name, samples)
}

/// The three splits, the same for the same config on every machine.
pub fn splits(cfg: &SyntheticConfig) -> Splits {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    Splits {
        train: dataset(cfg, "train", cfg.train, &mut rng),
        val: dataset(cfg, "val", cfg.val, &mut rng),
        test: dataset(cfg, "test", cfg.test, &mut rng),
        about: None,
        normalization: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data_and_images_in_range() {
        let cfg = SyntheticConfig {
            train: 3,
            val: 1,
            test: 2,
            size: 12,
            ..Default::default()
        };
        let (a, b) = (splits(&cfg), splits(&cfg));
        assert_eq!(a.train.len(), 3);
        assert_eq!(a.test.len(), 2);
        for (x, y) in a.train.samples.iter().zip(&b.train.samples) {
            assert!(x.image.equal(&y.image) && x.target.equal(&y.target));
            assert_eq!(x.image.size(), [1, 12, 12]);
            assert!(
                x.image.min().double_value(&[]) >= 0.0 && x.image.max().double_value(&[]) <= 1.0
            );
            let fg = x.target.sum(Kind::Float).double_value(&[]);
            assert!(
                fg > 0.0 && fg < 144.0,
                "a disk that is neither empty nor everything: {fg}"
            );
        }
    }
}
