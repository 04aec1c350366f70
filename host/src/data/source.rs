//! Where a run's splits come from: a manifest of real data (written by
//! `amat-host data prepare`), or the synthetic set.

use super::synthetic::{self, SyntheticConfig};
use super::{DataConfig, Splits};
use crate::plugin::Plugin;
use anyhow::Result;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `[data]` section: `synthetic = { ... }` alone, or the manifest loader's keys.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    Manifest(DataConfig),
    Synthetic(SyntheticConfig),
}

impl DataSource {
    /// Checks what can be checked before any work: values, and that files exist.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            DataSource::Synthetic(s) => s.validate(),
            DataSource::Manifest(m) if !m.manifest.exists() => Err(format!(
                "data.manifest {}: no such file",
                m.manifest.display()
            )),
            DataSource::Manifest(_) => Ok(()),
        }
    }

    /// Decodes (or makes) the splits.
    pub fn load(&self, plugin: &mut Plugin) -> Result<Splits> {
        match self {
            DataSource::Manifest(cfg) => load_splits(cfg, plugin),
            DataSource::Synthetic(cfg) => Ok(synthetic::splits(cfg)),
        }
    }
}

/// The splits of a prepared manifest, read from its per-case cache at each
/// batch (see [`super::prepare::load_splits_on_disk`]).
pub fn load_splits(cfg: &DataConfig, plugin: &mut Plugin) -> Result<Splits> {
    super::prepare::load_splits_on_disk(&cfg.manifest, plugin)
}

impl Serialize for DataSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Synthetic<'a> {
            synthetic: &'a SyntheticConfig,
        }
        match self {
            DataSource::Manifest(m) => m.serialize(s),
            DataSource::Synthetic(synthetic) => Synthetic { synthetic }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for DataSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        match table.remove("synthetic") {
            Some(_) if !table.is_empty() => Err(D::Error::custom(format!(
                "data: `synthetic` cannot be combined with {}",
                table
                    .keys()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            Some(s) => s
                .try_into()
                .map(DataSource::Synthetic)
                .map_err(|e: toml::de::Error| {
                    D::Error::custom(format!("data.synthetic: {}", e.message()))
                }),
            None => toml::Value::Table(table)
                .try_into()
                .map(DataSource::Manifest)
                .map_err(|e: toml::de::Error| D::Error::custom(format!("data: {}", e.message()))),
        }
    }
}
