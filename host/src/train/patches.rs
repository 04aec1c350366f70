//! Random training patches from whole samples, as nnU-Net draws them: each
//! patch lies at a uniformly random position in its case, except that a
//! share of them (a third by default) is centred on a random foreground
//! voxel of the target, so that small structures are seen often enough.
//! Draws come from the trainer's generator (seeded by the run's seed and
//! checkpointed), so a run's patches are reproducible and survive a resume.
//!
//! The spatial axes are the trailing ones: an image [C, *spatial] and a
//! target [..., *spatial] (a class map [D, H, W], heatmaps [K, D, H, W]).
//! A case shorter than the patch along an axis is padded (images with the
//! intensity minimum, targets with 0, the background).

use crate::data::{Dataset, Sample};
use anyhow::{Context, Result, bail};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// Foreground positions kept per case: an evenly strided subset of them
/// (nnU-Net keeps up to 10 000 per class), to bound the memory of the cache.
const MAX_FOREGROUND: i64 = 10_000;

/// Draws patches of one size.
#[derive(Debug)]
pub struct Patches {
    pub size: Vec<i64>,
    /// Probability that a patch is centred on a foreground voxel.
    pub foreground: f64,
    /// What images are padded with.
    pub pad_value: f64,
    /// Per case, its foreground positions [N, axes] (computed on first use).
    foreground_cache: Vec<Option<Tensor>>,
}

impl Patches {
    pub fn new(size: Vec<i64>, foreground: f64, pad_value: f64) -> Self {
        Self {
            size,
            foreground,
            pad_value,
            foreground_cache: Vec::new(),
        }
    }

    /// One patch from each case at `indices` (a case may repeat), stacked:
    /// images [B, C, *patch] and targets [B, ..., *patch] on `device`.
    pub fn batch(
        &mut self,
        data: &Dataset,
        indices: &[usize],
        rng: &mut ChaCha8Rng,
        device: Device,
    ) -> Result<(Tensor, Tensor)> {
        self.part_of_batch(data, indices, 0..indices.len(), rng, device)?
            .context("an empty batch")
    }

    /// The patches of rows `keep` of the batch `indices` (one rank's part of
    /// a data-parallel batch). Every row's patch is drawn, so `rng` moves
    /// exactly as on a rank that keeps them all and the ranks' shufflers stay
    /// in step; drawing another rank's row reads its case (the draw needs
    /// its shape and foreground). None when `keep` is empty.
    pub fn part_of_batch(
        &mut self,
        data: &Dataset,
        indices: &[usize],
        keep: std::ops::Range<usize>,
        rng: &mut ChaCha8Rng,
        device: Device,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let mut images = Vec::with_capacity(keep.len());
        let mut targets = Vec::with_capacity(keep.len());
        for (r, &i) in indices.iter().enumerate() {
            if !keep.contains(&r) {
                self.draw(data, i, rng)?;
                continue;
            }
            let (image, target) = self.patch(data, i, rng)?;
            images.push(image);
            targets.push(target);
        }
        if images.is_empty() {
            return Ok(None);
        }
        Ok(Some((
            Tensor::stack(&images, 0).to_device(device),
            Tensor::stack(&targets, 0).to_device(device),
        )))
    }

    /// Where the patch of case `i` starts along each spatial axis (a start
    /// may lie past the padding of a short axis: it is always 0 there).
    pub fn draw(&mut self, data: &Dataset, i: usize, rng: &mut ChaCha8Rng) -> Result<Vec<i64>> {
        let s = read(data, i)?;
        self.draw_in(&s, i, data.len(), rng)
    }

    /// [`draw`](Self::draw) for case `i` of `cases`, already read as `s`.
    fn draw_in(
        &mut self,
        s: &Sample,
        i: usize,
        cases: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<i64>> {
        if self.foreground_cache.len() != cases {
            self.foreground_cache = (0..cases).map(|_| None).collect();
        }
        let spatial = self.spatial(s)?;
        let centred = rng.gen_bool(self.foreground.clamp(0.0, 1.0));
        let voxel = if centred {
            let fg = self.foreground_of(i, &s.target, spatial.len());
            let n = fg.size()[0];
            (n > 0).then(|| {
                let k = rng.gen_range(0..n);
                Vec::<i64>::try_from(fg.get(k)).expect("a position")
            })
        } else {
            None
        };
        Ok(spatial
            .iter()
            .zip(&self.size)
            .enumerate()
            .map(|(a, (&len, &w))| {
                let last = (len - w).max(0);
                match &voxel {
                    Some(v) => (v[a] - w / 2).clamp(0, last),
                    None => rng.gen_range(0..=last),
                }
            })
            .collect())
    }

    /// The spatial shape of sample `s`, checked against the patch.
    fn spatial(&self, s: &Sample) -> Result<Vec<i64>> {
        let (image, target) = (s.image.size(), s.target.size());
        let n = self.size.len();
        if image.len() != n + 1 || target.len() < n {
            bail!(
                "train.patch = {:?} takes samples [C, {}]: sample `{}` has image {image:?} and target {target:?}",
                self.size,
                if n == 3 { "D, H, W" } else { "H, W" },
                s.id
            );
        }
        let spatial = image[1..].to_vec();
        if target[target.len() - n..] != spatial[..] {
            bail!(
                "sample `{}`: its target {target:?} does not end in its image's spatial shape {spatial:?}",
                s.id
            );
        }
        Ok(spatial)
    }

    /// Foreground positions of case `i` (whose target is `target`): voxels
    /// where any channel of the target is non-zero.
    fn foreground_of(&mut self, i: usize, target: &Tensor, axes: usize) -> Tensor {
        if let Some(fg) = &self.foreground_cache[i] {
            return fg.shallow_clone();
        }
        let lead = target.dim() - axes;
        let mut mask = target.ne(0.0);
        for _ in 0..lead {
            mask = mask.any_dim(0, false);
        }
        let all = mask.nonzero();
        let n = all.size()[0];
        let fg = if n > MAX_FOREGROUND {
            let step = (n + MAX_FOREGROUND - 1) / MAX_FOREGROUND;
            all.index_select(
                0,
                &Tensor::arange_start_step(0, n, step, (Kind::Int64, all.device())),
            )
        } else {
            all
        };
        let fg = fg.to_device(Device::Cpu);
        self.foreground_cache[i] = Some(fg.shallow_clone());
        fg
    }

    /// A patch of case `i`: drawn, cut out and padded to the patch size.
    fn patch(
        &mut self,
        data: &Dataset,
        i: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor, Tensor)> {
        // One read per patch: the draw and the cut share the sample.
        let s = read(data, i)?;
        let start = self.draw_in(&s, i, data.len(), rng)?;
        Ok((
            self.cut(&s.image, &start, self.pad_value),
            self.cut(&s.target, &start, 0.0),
        ))
    }

    /// The patch of `t` at `start` along its trailing axes, padded at the
    /// end of any axis shorter than the patch.
    fn cut(&self, t: &Tensor, start: &[i64], pad_value: f64) -> Tensor {
        let first = (t.dim() - self.size.len()) as i64;
        let mut out = t.shallow_clone();
        let mut pad = Vec::new();
        for (a, (&s, &w)) in start.iter().zip(&self.size).enumerate() {
            let len = t.size()[first as usize + a];
            let take = w.min(len - s);
            out = out.narrow(first + a as i64, s, take);
            pad.push(w - take);
        }
        if pad.iter().any(|&p| p > 0) {
            let pairs: Vec<i64> = pad.iter().rev().flat_map(|&p| [0, p]).collect();
            out = out.pad(pairs, "constant", pad_value);
        }
        out.contiguous()
    }
}

/// Sample `i`, in memory or read from the prepared cache.
fn read(data: &Dataset, i: usize) -> Result<Sample> {
    data.sample(i)
}
