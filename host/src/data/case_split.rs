//! Splits by case, so slices of one subject never land in two splits:
//! fractions of the cases, or k-fold cross-validation with an nnU-Net style
//! splits file (`splits_final.json`: a list of `{"train": [...], "val":
//! [...]}`, one entry per fold). Both are deterministic from a seed: the
//! case ids are sorted, then shuffled by a seeded generator.
//!
//! In k-fold, fold K's held-out cases (nnU-Net's `val`) are the **test**
//! split, the one evaluated; the remaining cases are cut into train and
//! validation by the spec's train : val fractions.

use super::manifest::{Split, SplitSpec};
use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One fold of a splits file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    pub train: Vec<String>,
    pub val: Vec<String>,
}

fn shuffled(cases: &[String], seed: u64) -> Vec<String> {
    let mut v = cases.to_vec();
    v.sort();
    v.dedup();
    v.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    v
}

/// Test, then validation, then training cases, by the spec's fractions of
/// the case count (at least one test and one training case).
pub fn by_fractions(cases: &[String], spec: &SplitSpec) -> Result<BTreeMap<String, Split>> {
    let order = shuffled(cases, spec.seed);
    let n = order.len();
    if n < 2 {
        bail!("{n} case(s): a split by case needs at least 2 (one to train on, one to test)");
    }
    let total = spec.train + spec.val + spec.test;
    let test = ((n as f64 * spec.test / total).round() as usize).clamp(1, n - 1);
    let val = ((n as f64 * spec.val / total).round() as usize).min(n - 1 - test);
    Ok(order
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let split = if i < test {
                Split::Test
            } else if i < test + val {
                Split::Val
            } else {
                Split::Train
            };
            (c, split)
        })
        .collect())
}

/// `folds` folds of the shuffled cases, in nnU-Net's format.
pub fn k_fold(cases: &[String], folds: usize, seed: u64) -> Result<Vec<Fold>> {
    let order = shuffled(cases, seed);
    let n = order.len();
    if folds < 2 || folds > n {
        bail!("{folds} folds of {n} case(s): need 2 <= folds <= cases");
    }
    Ok((0..folds)
        .map(|k| {
            let held: BTreeSet<&String> =
                order[k * n / folds..(k + 1) * n / folds].iter().collect();
            let mut val: Vec<String> = held.iter().map(|c| c.to_string()).collect();
            val.sort();
            let mut train: Vec<String> = order
                .iter()
                .filter(|c| !held.contains(c))
                .cloned()
                .collect();
            train.sort();
            Fold { train, val }
        })
        .collect())
}

/// Reads a splits file, checking every fold against the dataset's cases.
pub fn read_folds(path: &Path, cases: &[String]) -> Result<Vec<Fold>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("splits file {}: {e}", path.display()))?;
    let folds: Vec<Fold> = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "splits file {}: not a list of {{\"train\": [...], \"val\": [...]}} ({e})",
            path.display()
        )
    })?;
    let known: BTreeSet<&String> = cases.iter().collect();
    for (k, f) in folds.iter().enumerate() {
        for c in f.train.iter().chain(&f.val) {
            if !known.contains(c) {
                bail!(
                    "splits file {}: fold {k} names case `{c}`, which the dataset does not have",
                    path.display()
                );
            }
        }
        let train: BTreeSet<&String> = f.train.iter().collect();
        if let Some(c) = f.val.iter().find(|c| train.contains(c)) {
            bail!(
                "splits file {}: fold {k} has case `{c}` in both train and val",
                path.display()
            );
        }
        if f.val.is_empty() || f.train.is_empty() {
            bail!(
                "splits file {}: fold {k} has an empty train or val list",
                path.display()
            );
        }
    }
    if folds.is_empty() {
        bail!("splits file {}: no fold", path.display());
    }
    Ok(folds)
}

/// The splits of fold `fold`: its held-out cases are the test split; its
/// training cases are cut into train and val by `spec`'s train : val.
pub fn of_fold(folds: &[Fold], fold: usize, spec: &SplitSpec) -> Result<BTreeMap<String, Split>> {
    let Some(f) = folds.get(fold) else {
        bail!("--fold {fold}: the splits have folds 0..{}", folds.len());
    };
    let pool = shuffled(&f.train, spec.seed);
    let share = spec.val / (spec.train + spec.val);
    let val = ((pool.len() as f64 * share).round() as usize).min(pool.len().saturating_sub(1));
    let mut out: BTreeMap<String, Split> = f.val.iter().map(|c| (c.clone(), Split::Test)).collect();
    for (i, c) in pool.into_iter().enumerate() {
        out.insert(c, if i < val { Split::Val } else { Split::Train });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("case_{i:03}")).collect()
    }

    #[test]
    fn fractions_are_deterministic_and_cover_every_case_once() {
        let spec = SplitSpec::default();
        let a = by_fractions(&names(20), &spec).unwrap();
        let mut reversed = names(20);
        reversed.reverse();
        assert_eq!(
            a,
            by_fractions(&reversed, &spec).unwrap(),
            "input order does not matter"
        );
        assert_eq!(a.len(), 20);
        let count = |s| a.values().filter(|x| **x == s).count();
        assert_eq!(
            (count(Split::Test), count(Split::Val), count(Split::Train)),
            (3, 3, 14)
        );
        let other = by_fractions(&names(20), &SplitSpec { seed: 1, ..spec }).unwrap();
        assert_ne!(a, other, "another seed, another split");
        assert!(by_fractions(&names(1), &spec).is_err());
    }

    #[test]
    fn folds_partition_the_cases() {
        let folds = k_fold(&names(11), 3, 7).unwrap();
        let mut held: Vec<String> = folds.iter().flat_map(|f| f.val.clone()).collect();
        held.sort();
        assert_eq!(held, names(11), "every case held out exactly once");
        for f in &folds {
            assert_eq!(f.train.len() + f.val.len(), 11);
            assert!(f.val.iter().all(|c| !f.train.contains(c)));
        }
        let s = of_fold(&folds, 1, &SplitSpec::default()).unwrap();
        let test: Vec<&String> = s
            .iter()
            .filter(|(_, x)| **x == Split::Test)
            .map(|(c, _)| c)
            .collect();
        assert_eq!(test, folds[1].val.iter().collect::<Vec<_>>());
        assert!(of_fold(&folds, 3, &SplitSpec::default()).is_err());
    }
}
