//! What every command over a config needs: the config with its overrides
//! and paths resolved, and the plugin, data and device it names.

use crate::attack::Range;
use crate::config::{Method, RunConfig};
use crate::data::Splits;
use crate::model::DeviceChoice;
use crate::plugin::Plugin;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use tch::Device;

/// A relative path in a config file is relative to that file's folder.
fn relative_to(config: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Reads a config file and applies the command line's overrides; the plugin
/// path becomes absolute so the run folder's copy stays usable.
pub fn effective_config(
    path: &Path,
    plugin: Option<&Path>,
    method: Option<Method>,
    device: Option<DeviceChoice>,
) -> Result<RunConfig> {
    let mut cfg = RunConfig::read(path).map_err(anyhow::Error::msg)?;
    resolve_paths(&mut cfg, path);
    if let Some(p) = plugin {
        cfg.run.plugin = Some(absolute(p));
    }
    if let Some(m) = method {
        cfg.run.method = Some(m);
    }
    if let Some(d) = device {
        cfg.run.device = d;
    }
    Ok(cfg)
}

/// Makes the config's relative paths (plugin, data manifest) absolute,
/// relative to the folder of the file `origin` they were read from.
pub fn resolve_paths(cfg: &mut RunConfig, origin: &Path) {
    cfg.run.plugin = cfg
        .run
        .plugin
        .take()
        .map(|p| absolute(&relative_to(origin, &p)));
    if let crate::data::source::DataSource::Manifest(m) = &mut cfg.data {
        m.manifest = absolute(&relative_to(origin, &m.manifest));
    }
}

/// Plugin, data and device of a validated config.
pub struct Session {
    pub plugin: Plugin,
    pub splits: Splits,
    pub device: Device,
}

impl Session {
    pub fn open(cfg: &RunConfig) -> Result<Self> {
        let path = cfg.run.plugin.as_ref().context("no plugin")?;
        let mut plugin = Plugin::load(path, &cfg.sandbox)?;
        let splits = cfg.data.load(&mut plugin)?;
        let channels = plugin.info().input_channels as i64;
        for set in [&splits.train, &splits.val, &splits.test] {
            let shape = |i| set.image_shape(i).unwrap_or_default();
            if let Some(i) = (0..set.len()).find(|&i| shape(i).first() != Some(&channels)) {
                bail!(
                    "sample `{}` has image shape {:?}; the task `{}` expects {} channel(s) first",
                    set.id(i).unwrap_or_default(),
                    shape(i),
                    plugin.info().name,
                    channels
                );
            }
        }
        if splits.train.is_empty() {
            bail!("the training split is empty");
        }
        // Whole samples are stacked into batches unless training cuts patches.
        if cfg.train.patch.is_none() {
            let shape = |i| splits.train.image_shape(i).unwrap_or_default();
            if let Some(i) = (1..splits.train.len()).find(|&i| shape(i) != shape(0)) {
                bail!(
                    "the training split holds samples of different shapes (`{}` {:?}, `{}` {:?}): \
                     set train.patch to train on patches of one size",
                    splits.train.id(0).unwrap_or_default(),
                    shape(0),
                    splits.train.id(i).unwrap_or_default(),
                    shape(i)
                );
            }
        }
        if split_of(&splits, &cfg.eval.split).is_empty() {
            bail!(
                "eval.split = `{}`: that split holds no sample, so the evaluation after training would have none",
                cfg.eval.split
            );
        }
        // The network sees the training patches when there are any (the
        // sliding window pads a shorter sample to the window), else samples.
        if let Some(size) = splits.train.image_shape(0) {
            let seen = cfg.train.patch.as_deref().unwrap_or(&size[1..]);
            if seen.len() != size.len() - 1 {
                bail!(
                    "sample `{}` has image shape {size:?}: model.dims = {} takes [C, {}]",
                    splits.train.id(0).unwrap_or_default(),
                    cfg.model.dims,
                    if cfg.model.dims == 3 {
                        "D, H, W"
                    } else {
                        "H, W"
                    }
                );
            }
            cfg.model.check_shape(seen).map_err(anyhow::Error::msg)?;
        }
        if cfg.run.threads > 0 {
            tch::set_num_threads(cfg.run.threads as i32);
        }
        let device = cfg.run.device.resolve().map_err(anyhow::Error::msg)?;
        Ok(Self {
            plugin,
            splits,
            device,
        })
    }
}

impl Session {
    /// The intensity range attacked images stay in: the host's
    /// normalisation's, when the data has one, else the plugin's declared one.
    pub fn range(&self) -> Range {
        match &self.splits.normalization {
            Some(n) => Range {
                min: n.range[0],
                max: n.range[1],
            },
            None => Range {
                min: self.plugin.info().intensity_min as f64,
                max: self.plugin.info().intensity_max as f64,
            },
        }
    }

    /// What eps is measured in, for the reports.
    pub fn intensity_note(&self) -> String {
        crate::eval::report::intensity_note(self.splits.normalization.as_ref(), self.range())
    }
}

/// The split called `name` (train, val, test).
pub fn split_of<'a>(splits: &'a Splits, name: &str) -> &'a crate::data::Dataset {
    match name {
        "train" => &splits.train,
        "val" => &splits.val,
        _ => &splits.test,
    }
}

/// The torch seed of the final evaluation.
pub fn eval_seed(seed: u64) -> i64 {
    crate::train::epoch_seed(seed, usize::MAX)
}
