//! The data spec a user writes (`examples/data/*.toml`) and the manifest
//! `amat-host data prepare` writes from it: every sample with its case,
//! source volume, axis, slice index and split, every case's input files with
//! their sha256 and its cache file, the decode options and the plugin (with
//! its binary's sha256), so every number can be traced back.
//!
//! A spec names one volume's files (`files`: one decode call, slab splits),
//! or many cases (`dataset`: an nnU-Net v2 or MSD folder; `[[cases]]`; or
//! `[case_glob]`: see [`super::cases`]), split by case (see
//! [`super::case_split`]).
//!
//! Slab splits are slabs: contiguous ranges of slice indices in the order train,
//! validation, test, with `gap` slice indices dropped between neighbours, so
//! near-identical adjacent slices never straddle a split. With `blocks = n`
//! the slices are first cut into n consecutive blocks, each split the same
//! way (and `gap` apart), so every split samples the whole extent of the
//! volume instead of one end of it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A dataset spec (TOML). Relative file paths are relative to the spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Required with `files`; for cases it defaults to dataset.json's `name`
    /// or the folder's name.
    #[serde(default)]
    pub name: String,
    /// One volume's input files; the plugin sees each under its file name.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// A folder holding an nnU-Net v2 or MSD `dataset.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<PathBuf>,
    /// Cases listed one by one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cases: Vec<super::cases::CaseSpec>,
    /// Cases found by a file pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_glob: Option<super::cases::CaseGlob>,
    /// Label value -> class name, for `cases` and `case_glob`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The plugin's decode options (passed to it as JSON).
    #[serde(default)]
    pub decode: toml::Table,
    #[serde(default)]
    pub split: SplitSpec,
    /// Intensity normalisation (see [`super::normalize`]).
    #[serde(default)]
    pub normalize: super::normalize::NormalizeSpec,
}

/// `[split]`: fractions (normalised by their sum) of the labelled slices of
/// one volume, or of the cases; for one volume the gap, in slice indices,
/// left out between neighbouring slabs, and the number of consecutive blocks
/// each cut into train, val and test slabs; for cases the seed of the
/// shuffle and, for k-fold cross-validation, the number of folds (the fold
/// itself is `--fold`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitSpec {
    pub train: f64,
    pub val: f64,
    pub test: f64,
    pub gap: usize,
    pub blocks: usize,
    pub seed: u64,
    pub folds: usize,
}

impl Default for SplitSpec {
    fn default() -> Self {
        Self {
            train: 0.7,
            val: 0.15,
            test: 0.15,
            gap: 2,
            blocks: 1,
            seed: 0,
            folds: 5,
        }
    }
}

impl DataSpec {
    pub fn read(path: &Path) -> Result<Self, String> {
        let spec = Self::read_unchecked(path)?;
        spec.validate_at(path)?;
        Ok(spec)
    }

    /// Parses without checking which form of data it names.
    pub fn read_unchecked(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("data spec {}: {e}", path.display()))?;
        Self::read_unchecked_str(&text, path)
    }

    pub fn read_unchecked_str(text: &str, path: &Path) -> Result<Self, String> {
        toml::from_str(text)
            .map_err(|e| format!("data spec {}: {}", path.display(), e.message().trim()))
    }

    pub fn validate_at(&self, path: &Path) -> Result<(), String> {
        self.validate()
            .map_err(|e| format!("data spec {}: {e}", path.display()))
    }

    fn validate(&self) -> Result<(), String> {
        let forms = [
            !self.files.is_empty(),
            self.dataset.is_some(),
            !self.cases.is_empty(),
            self.case_glob.is_some(),
        ];
        match forms.iter().filter(|f| **f).count() {
            0 => {
                return Err(
                    "name the data: `files` (one volume), `dataset` (an nnU-Net or MSD folder), `[[cases]]` or `[case_glob]`"
                        .into(),
                );
            }
            1 => {}
            _ => {
                return Err(
                    "`files`, `dataset`, `[[cases]]` and `[case_glob]` exclude each other: keep one"
                        .into(),
                );
            }
        }
        if !self.files.is_empty() && self.name.is_empty() {
            return Err("`name` is missing".into());
        }
        let s = &self.split;
        let fractions = [("train", s.train), ("val", s.val), ("test", s.test)];
        if let Some((k, v)) = fractions
            .iter()
            .find(|(_, v)| !(v.is_finite() && *v >= 0.0))
        {
            return Err(format!("split.{k} = {v} must be >= 0"));
        }
        if s.blocks == 0 {
            return Err("split.blocks must be at least 1".into());
        }
        if s.train <= 0.0 || s.test <= 0.0 {
            return Err("split.train and split.test must be > 0".into());
        }
        if s.folds == 1 {
            return Err("split.folds must be at least 2".into());
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// Where an example id (`<source>:<axis>:<index>[:aug<k>]`) comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceId {
    pub source: String,
    pub axis: String,
    pub index: usize,
    /// `k` of an augmented copy `:aug<k>`.
    pub augmented: Option<usize>,
}

impl SliceId {
    pub fn parse(id: &str) -> Result<Self, String> {
        let bad = || format!("example id `{id}` is not `<source>:<axis>:<index>[:aug<k>]`");
        let parts: Vec<&str> = id.split(':').collect();
        let augmented = match parts.len() {
            3 => None,
            4 => Some(
                parts[3]
                    .strip_prefix("aug")
                    .and_then(|k| k.parse().ok())
                    .ok_or_else(bad)?,
            ),
            _ => return Err(bad()),
        };
        if parts[0].is_empty() || parts[1].is_empty() {
            return Err(bad());
        }
        Ok(Self {
            source: parts[0].into(),
            axis: parts[1].into(),
            index: parts[2].parse().map_err(|_| bad())?,
            augmented,
        })
    }
}

/// Split of each example (same order as `ids`), or `None` for dropped ones
/// (the gaps, and augmented copies outside the training split).
pub fn assign_splits(ids: &[SliceId], spec: &SplitSpec) -> Vec<Option<Split>> {
    // Slabs are cut per (source, axis): a slice index means something only there.
    let mut groups: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for id in ids {
        groups
            .entry((&id.source, &id.axis))
            .or_default()
            .push(id.index);
    }
    let mut of_slice: BTreeMap<(&str, &str, usize), Split> = BTreeMap::new();
    for ((source, axis), mut indices) in groups {
        indices.sort_unstable();
        indices.dedup();
        for (index, split) in slabs(&indices, spec) {
            of_slice.insert((source, axis, index), split);
        }
    }
    ids.iter()
        .map(|id| {
            let split = of_slice
                .get(&(id.source.as_str(), id.axis.as_str(), id.index))
                .copied();
            match (split, id.augmented) {
                (Some(Split::Train), _) | (Some(_), None) => split,
                _ => None,
            }
        })
        .collect()
}

/// Cuts ascending distinct slice indices into `blocks` blocks of train,
/// val, test slabs.
fn slabs(indices: &[usize], spec: &SplitSpec) -> Vec<(usize, Split)> {
    let n = indices.len();
    let blocks = spec.blocks.clamp(1, n.max(1));
    let mut out = Vec::new();
    for b in 0..blocks {
        let block = &indices[b * n / blocks..(b + 1) * n / blocks];
        // Keep `gap` indices clear after the previous block's last slab.
        let start = match out.last() {
            Some(&(last, _)) => block.partition_point(|&i| i <= last + spec.gap),
            None => 0,
        };
        out.extend(block_slabs(&block[start..], spec));
    }
    out
}

/// One block's train, val and test slabs.
fn block_slabs(indices: &[usize], spec: &SplitSpec) -> Vec<(usize, Split)> {
    let total = spec.train + spec.val + spec.test;
    let wanted: Vec<(Split, f64)> = [
        (Split::Train, spec.train),
        (Split::Val, spec.val),
        (Split::Test, spec.test),
    ]
    .into_iter()
    .filter(|(_, f)| *f > 0.0)
    .collect();
    // Slices left after the gaps, shared out by fraction (the last split takes the rest).
    let usable = indices.len().saturating_sub(spec.gap * (wanted.len() - 1));
    let mut out = Vec::new();
    let mut next = 0;
    let mut after: Option<usize> = None;
    for (k, (split, fraction)) in wanted.iter().enumerate() {
        if let Some(last) = after {
            // Drop slices within `gap` indices of the previous slab.
            while next < indices.len() && indices[next] <= last + spec.gap {
                next += 1;
            }
        }
        let count = if k + 1 == wanted.len() {
            indices.len() - next
        } else {
            ((usable as f64 * fraction / total).round() as usize).min(indices.len() - next)
        };
        for &index in &indices[next..next + count] {
            out.push((index, *split));
        }
        next += count;
        if count > 0 {
            after = Some(indices[next - 1]);
        }
    }
    out
}

/// One input file as prepared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The name the plugin saw (the file name).
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    pub name: String,
    pub version: String,
    /// Of the plugin file: a rebuilt plugin never meets its old cache.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
}

/// One case (one decode call) as prepared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseRecord {
    pub id: String,
    pub files: Vec<FileRecord>,
    /// What the plugin was told about the case (`options.case`), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<serde_json::Value>,
    /// Its decoded tensors, relative to the manifest's folder.
    pub cache: PathBuf,
    /// What they were decoded from (see `cache::key`).
    pub key: String,
    /// Examples the plugin decoded from it (kept in a split or not).
    pub examples: usize,
    /// Its images' normalisation (with the field's scheme), applied as read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<super::normalize::CaseNorm>,
}

/// How the cases were split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseSplitRecord {
    /// "fractions" or "k-fold".
    pub method: String,
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folds: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<usize>,
    /// The nnU-Net style splits file the folds were read from or written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splits_file: Option<PathBuf>,
    /// Case ids per split.
    pub cases: BTreeMap<String, Vec<String>>,
}

/// One sample of the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub id: String,
    /// The case (one decode call) it came from.
    #[serde(default)]
    pub case: String,
    pub source: String,
    pub axis: String,
    pub index: usize,
    pub split: Split,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augmented: Option<usize>,
}

/// First and last slice index of a split's slab, per (source, axis).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlabRecord {
    pub source: String,
    pub axis: String,
    pub split: Split,
    pub first: usize,
    pub last: usize,
    pub slices: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// Where the data comes from, as its `dataset.json` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub plugin: PluginRecord,
    /// "volume" (one decode call, slab splits), "nnunet-v2", "msd", "list" or "glob".
    #[serde(default = "volume_layout")]
    pub layout: String,
    /// Every case's files.
    pub files: Vec<FileRecord>,
    /// The decode options exactly as passed to the plugin.
    pub options: serde_json::Value,
    pub split: SplitSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_split: Option<CaseSplitRecord>,
    /// Samples per split (augmented copies included), and examples dropped.
    pub counts: BTreeMap<String, usize>,
    pub slabs: Vec<SlabRecord>,
    /// The folder of the per-case cache files, relative to the manifest's folder.
    pub cache: PathBuf,
    /// Of every case's key.
    pub cache_key: String,
    #[serde(default)]
    pub cases: Vec<CaseRecord>,
    /// How images were normalised; absent: as the plugin scaled them, into
    /// its declared intensity range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<super::normalize::NormRecord>,
    pub samples: Vec<SampleRecord>,
}

fn volume_layout() -> String {
    "volume".into()
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("data manifest {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("data manifest {}: not a manifest ({e})", path.display()))
    }

    /// The slab of each split from its samples.
    pub fn slabs_of(samples: &[SampleRecord]) -> Vec<SlabRecord> {
        let mut of_slice: BTreeMap<(&str, &str, usize), Split> = BTreeMap::new();
        for s in samples {
            of_slice.insert((&s.source, &s.axis, s.index), s.split);
        }
        // Runs of consecutive indices of one split, in slice order.
        let mut slabs: Vec<SlabRecord> = Vec::new();
        for ((source, axis, index), split) in of_slice {
            match slabs.last_mut() {
                Some(s)
                    if s.source == source
                        && s.axis == axis
                        && s.split == split
                        && s.last + 1 == index =>
                {
                    s.last = index;
                    s.slices += 1;
                }
                _ => slabs.push(SlabRecord {
                    source: source.into(),
                    axis: axis.into(),
                    split,
                    first: index,
                    last: index,
                    slices: 1,
                }),
            }
        }
        slabs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(indices: impl IntoIterator<Item = usize>) -> Vec<SliceId> {
        indices
            .into_iter()
            .map(|i| SliceId::parse(&format!("ch2:axial:{i}")).unwrap())
            .collect()
    }

    #[test]
    fn ids_parse_and_reject() {
        let s = SliceId::parse("ch2:axial:17:aug3").unwrap();
        assert_eq!((s.index, s.augmented), (17, Some(3)));
        for bad in ["ch2:axial", "ch2:axial:x", "ch2:axial:1:copy", ":axial:1"] {
            assert!(SliceId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slabs_are_contiguous_ordered_and_gapped() {
        let all = ids(10..30);
        let spec = SplitSpec {
            train: 0.6,
            val: 0.2,
            test: 0.2,
            gap: 2,
            blocks: 1,
            ..Default::default()
        };
        let s = assign_splits(&all, &spec);
        let of = |split| -> Vec<usize> {
            all.iter()
                .zip(&s)
                .filter(|(_, x)| **x == Some(split))
                .map(|(i, _)| i.index)
                .collect()
        };
        // 20 slices, 2 gaps of 2: 16 usable -> 10 train, 3 val, rest test.
        assert_eq!(of(Split::Train), (10..20).collect::<Vec<_>>());
        assert_eq!(of(Split::Val), vec![22, 23, 24]);
        assert_eq!(of(Split::Test), vec![27, 28, 29]);
        assert_eq!(s.iter().filter(|x| x.is_none()).count(), 4);
    }

    #[test]
    fn augmented_copies_stay_only_in_train() {
        let mut all = ids(0..10);
        all.push(SliceId::parse("ch2:axial:0:aug1").unwrap());
        all.push(SliceId::parse("ch2:axial:9:aug1").unwrap());
        let spec = SplitSpec {
            train: 0.5,
            val: 0.0,
            test: 0.5,
            gap: 1,
            blocks: 1,
            ..Default::default()
        };
        let s = assign_splits(&all, &spec);
        assert_eq!(s[10], Some(Split::Train));
        assert_eq!(s[11], None);
        assert_eq!(s[9], Some(Split::Test));
    }

    #[test]
    fn blocks_repeat_the_slabs_along_the_volume_with_gaps_everywhere() {
        let all = ids(0..40);
        let spec = SplitSpec {
            train: 0.5,
            val: 0.25,
            test: 0.25,
            gap: 1,
            blocks: 2,
            ..Default::default()
        };
        let s = assign_splits(&all, &spec);
        let samples: Vec<SampleRecord> = all
            .iter()
            .zip(&s)
            .filter_map(|(id, split)| {
                Some(SampleRecord {
                    id: String::new(),
                    case: String::new(),
                    source: id.source.clone(),
                    axis: id.axis.clone(),
                    index: id.index,
                    split: (*split)?,
                    augmented: None,
                })
            })
            .collect();
        let slabs = Manifest::slabs_of(&samples);
        let order: Vec<(Split, usize, usize)> =
            slabs.iter().map(|s| (s.split, s.first, s.last)).collect();
        // Block 0..20: 18 usable -> 9 train, 5 val (4.5 rounded), rest test.
        // Block 20..40 loses 20 to the gap after 19: 17 usable -> 9, 4, rest.
        assert_eq!(
            order,
            [
                (Split::Train, 0, 8),
                (Split::Val, 10, 14),
                (Split::Test, 16, 19),
                (Split::Train, 21, 29),
                (Split::Val, 31, 34),
                (Split::Test, 36, 39),
            ]
        );
    }
}
