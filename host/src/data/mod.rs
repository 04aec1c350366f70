//! Datasets the host trains and evaluates on: decoded samples held as
//! tensors (decoded once per case by the task plugin, then cached per case),
//! split into train / validation / test.

pub mod cache;
pub mod case_split;
pub mod cases;
pub mod decoding;
pub mod generate;
pub mod manifest;
pub mod normalize;
pub mod prepare;
pub mod source;
pub mod synthetic;
pub mod validate;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::{Device, Tensor};

/// One decoded sample. `image` is [C, H, W] float; `target` is whatever the
/// task's loss expects for one sample (a class map [H, W], heatmaps [K, H, W], ...).
#[derive(Debug)]
pub struct Sample {
    /// Stable id (traceable to the manifest).
    pub id: String,
    pub image: Tensor,
    pub target: Tensor,
}

/// An ordered set of samples; a sample's index is its stable id for AMAT's
/// per-sample margins. Held in memory (`samples`), or, for a prepared
/// dataset, read from its per-case cache at each batch (`on_disk`; then
/// `samples` is empty), so memory does not grow with the dataset.
#[derive(Debug, Default)]
pub struct Dataset {
    pub name: String,
    pub samples: Vec<Sample>,
    pub on_disk: Option<OnDisk>,
}

/// Where each sample of an on-disk dataset lies in the per-case cache.
/// A batch reads just its samples' bytes (the kernel's page cache keeps
/// what is read often); nothing is held between batches.
#[derive(Debug, Default)]
pub struct OnDisk {
    pub samples: Vec<DiskSample>,
}

#[derive(Debug)]
pub struct DiskSample {
    pub id: String,
    /// The case (one decode call) it came from.
    pub case: String,
    pub file: std::sync::Arc<PathBuf>,
    pub image: cache::Loc,
    pub target: cache::Loc,
    /// The case's intensity normalisation, applied to the image as read.
    pub norm: Option<std::sync::Arc<normalize::CaseNorm>>,
}

impl DiskSample {
    /// Reads the sample; the cache was checked when the dataset was loaded,
    /// so a failure here means it changed or vanished under a running process.
    fn read(&self) -> Result<Sample> {
        let read = |loc| {
            cache::read_at(&self.file, loc).with_context(|| {
                format!(
                    "sample `{}` of case `{}`: its cache file {} changed or vanished while in use; prepare the data again",
                    self.id,
                    self.case,
                    self.file.display()
                )
            })
        };
        let image = read(&self.image)?;
        Ok(Sample {
            id: self.id.clone(),
            image: match &self.norm {
                Some(n) => n.apply(&image),
                None => image,
            },
            target: read(&self.target)?,
        })
    }
}

impl Dataset {
    /// A dataset held in memory.
    pub fn new(name: impl Into<String>, samples: Vec<Sample>) -> Self {
        Self {
            name: name.into(),
            samples,
            on_disk: None,
        }
    }

    pub fn len(&self) -> usize {
        match &self.on_disk {
            Some(d) => d.samples.len(),
            None => self.samples.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `i` (its tensors shared when in memory, read when on disk).
    pub fn sample(&self, i: usize) -> Result<Sample> {
        let missing = || anyhow::anyhow!("sample {i} of a split of {} ({})", self.len(), self.name);
        match &self.on_disk {
            Some(d) => d.samples.get(i).ok_or_else(missing)?.read(),
            None => {
                let s = self.samples.get(i).ok_or_else(missing)?;
                Ok(Sample {
                    id: s.id.clone(),
                    image: s.image.shallow_clone(),
                    target: s.target.shallow_clone(),
                })
            }
        }
    }

    pub fn id(&self, i: usize) -> Option<&str> {
        match &self.on_disk {
            Some(d) => d.samples.get(i).map(|s| s.id.as_str()),
            None => self.samples.get(i).map(|s| s.id.as_str()),
        }
    }

    /// The case sample `i` was decoded from; `None` for data held in memory
    /// (synthetic sets), which records no cases.
    pub fn case(&self, i: usize) -> Option<&str> {
        self.on_disk
            .as_ref()
            .and_then(|d| d.samples.get(i))
            .map(|s| s.case.as_str())
    }

    /// The image shape of sample `i`, without reading it.
    pub fn image_shape(&self, i: usize) -> Option<Vec<i64>> {
        match &self.on_disk {
            Some(d) => d.samples.get(i).map(|s| s.image.shape.clone()),
            None => self.samples.get(i).map(|s| s.image.size()),
        }
    }

    /// `indices` in batches of at most `size` samples of one image shape
    /// (volumes may differ in shape; batches stack): grouped by shape, in
    /// order within a shape.
    pub fn batches_of_one_shape(&self, indices: &[usize], size: usize) -> Vec<Vec<usize>> {
        let shape = |i: usize| self.image_shape(i).unwrap_or_default();
        let mut sorted = indices.to_vec();
        sorted.sort_by_key(|&i| shape(i));
        sorted
            .chunk_by(|&a, &b| shape(a) == shape(b))
            .flat_map(|group| group.chunks(size.max(1)))
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// Stacks the samples at `indices` into `(images [B, C, *spatial], targets [B, ...])`
    /// on `device`; an on-disk sample that can no longer be read is an error naming it.
    pub fn batch(&self, indices: &[usize], device: Device) -> Result<(Tensor, Tensor)> {
        let mut images = Vec::with_capacity(indices.len());
        let mut targets = Vec::with_capacity(indices.len());
        for &i in indices {
            let s = self.sample(i)?;
            images.push(s.image);
            targets.push(s.target);
        }
        Ok((
            Tensor::stack(&images, 0).to_device(device),
            Tensor::stack(&targets, 0).to_device(device),
        ))
    }
}

#[derive(Debug, Default)]
pub struct Splits {
    pub train: Dataset,
    pub val: Dataset,
    pub test: Dataset,
    /// Where the data comes from (a dataset.json's `description`), for reports.
    pub about: Option<String>,
    /// How the images were normalised, when the host did it (the attack's
    /// range and eps's unit follow); else the plugin's declared range holds.
    pub normalization: Option<normalize::NormRecord>,
}

/// Where a run's data comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A manifest written by `amat-host data prepare`.
    pub manifest: PathBuf,
}
