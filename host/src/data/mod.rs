//! Datasets the host trains and evaluates on: decoded samples held as
//! tensors (decoded once by the task plugin, then cached), split into train /
//! validation / test.

pub mod manifest;
pub mod prepare;
pub mod source;
pub mod synthetic;

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
/// per-sample margins.
#[derive(Debug, Default)]
pub struct Dataset {
    pub name: String,
    pub samples: Vec<Sample>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Stacks the samples at `indices` into `(images [B, C, H, W], targets [B, ...])` on `device`.
    pub fn batch(&self, indices: &[usize], device: Device) -> (Tensor, Tensor) {
        let images: Vec<&Tensor> = indices.iter().map(|&i| &self.samples[i].image).collect();
        let targets: Vec<&Tensor> = indices.iter().map(|&i| &self.samples[i].target).collect();
        (
            Tensor::stack(&images, 0).to_device(device),
            Tensor::stack(&targets, 0).to_device(device),
        )
    }
}

#[derive(Debug, Default)]
pub struct Splits {
    pub train: Dataset,
    pub val: Dataset,
    pub test: Dataset,
}

/// Where a run's data comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A manifest written by `amat-host data prepare`.
    pub manifest: PathBuf,
}
