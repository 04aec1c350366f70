//! Intensity normalisation as the field does it (nnU-Net's scheme), per
//! image channel and chosen by the channel's modality (`channel_names` of an
//! nnU-Net `dataset.json`, `modality` of an MSD one, `[normalize] channels`
//! of a spec):
//!
//! - "CT": clipped to the 0.5 and 99.5 percentiles of the foreground voxels
//!   (target > 0) of the training cases, then z-scored with those voxels'
//!   mean and sd (nnU-Net takes both from the unclipped foreground
//!   intensities; so does this);
//! - anything else (MRI: "T1", "T2", "FLAIR", "MRI", ...): z-scored per case
//!   over its non-zero voxels; voxels stored as 0 (outside the head, or the
//!   padding of a resampled slice) stay 0.
//!
//! The plugin decodes raw intensities (`options.case.intensity = "raw"`);
//! the cache keeps them raw, and each case's parameters (a [`CaseNorm`]) are
//! recorded in the manifest and applied as a sample is read. Dataset
//! statistics (CT) come from the training split only, so no test case
//! informs them. The attack then clamps to the smallest and largest
//! normalised value of the dataset, and eps is in z-score units.

use super::Sample;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Foreground voxels kept per training case for the CT statistics (nnU-Net
/// samples 10 000), evenly strided.
const VOXELS_PER_CASE: usize = 10_000;

/// `[normalize]` of a data spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NormalizeSpec {
    /// "field" (nnU-Net's, the default for datasets of cases) or "plugin"
    /// (the plugin's own scaling into its declared range; the only one for
    /// a single volume).
    pub scheme: Option<String>,
    /// Each channel's modality, for cases whose dataset does not name them
    /// (`[[cases]]`, `[case_glob]`); default: MRI.
    pub channels: Vec<String>,
}

/// One channel of one case: `clip`, then `(x - mean) / sd`; with `nonzero`,
/// voxels stored as 0 stay 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelNorm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<[f64; 2]>,
    pub mean: f64,
    pub sd: f64,
    #[serde(default)]
    pub nonzero: bool,
}

impl ChannelNorm {
    fn value(&self, v: f64) -> f64 {
        if self.nonzero && v == 0.0 {
            return 0.0;
        }
        let v = match self.clip {
            Some([lo, hi]) => v.clamp(lo, hi),
            None => v,
        };
        (v - self.mean) / self.sd
    }
}

/// A case's normalisation, one entry per image channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseNorm {
    pub channels: Vec<ChannelNorm>,
}

impl CaseNorm {
    /// The normalised image of a raw one [C, *spatial].
    pub fn apply(&self, image: &Tensor) -> Tensor {
        let parts: Vec<Tensor> = self
            .channels
            .iter()
            .enumerate()
            .map(|(c, n)| {
                let x = image.get(c as i64);
                let y = match n.clip {
                    Some([lo, hi]) => x.clamp(lo, hi),
                    None => x.shallow_clone(),
                };
                let y = (y - n.mean) / n.sd;
                if n.nonzero {
                    y.where_self(&x.ne(0.0), &x.zeros_like())
                } else {
                    y
                }
            })
            .collect();
        Tensor::stack(&parts, 0).to_kind(Kind::Float)
    }
}

/// Dataset statistics of a CT channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CtStats {
    pub p00_5: f64,
    pub p99_5: f64,
    pub mean: f64,
    pub sd: f64,
    /// Foreground voxels sampled, from this many training cases.
    pub voxels: usize,
    pub cases: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelRecord {
    /// The modality as the dataset names it ("" when it names none).
    pub modality: String,
    /// "ct" (dataset foreground percentiles and statistics) or
    /// "zscore-nonzero" (per case, over its non-zero voxels).
    pub scheme: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ct: Option<CtStats>,
}

/// The manifest's record of how images were normalised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NormRecord {
    /// "field" (nnU-Net's scheme, per channel below).
    pub scheme: String,
    pub channels: Vec<ChannelRecord>,
    /// What attacked images are clamped to: the smallest and largest
    /// normalised value over every case of the dataset.
    pub range: [f64; 2],
    /// The unit of eps, in words.
    pub unit: String,
}

/// Whether `scheme` (a spec's, if any) asks for the field's normalisation;
/// `cases`: the dataset is one of cases (the default there is "field").
pub fn field_scheme(scheme: Option<&str>, cases: bool) -> Result<bool> {
    match scheme {
        None => Ok(cases),
        Some("field") if cases => Ok(true),
        Some("field") => bail!(
            "normalize.scheme = \"field\" needs a dataset of cases: one volume keeps the plugin's scaling"
        ),
        Some("plugin") => Ok(false),
        Some(other) => bail!("normalize.scheme = `{other}`: expected \"field\" or \"plugin\""),
    }
}

pub fn is_ct(modality: &str) -> bool {
    modality.trim().eq_ignore_ascii_case("ct")
}

/// Per channel, what one case contributes.
#[derive(Default)]
struct Seen {
    /// Over non-zero voxels: count, sum, sum of squares, min, max.
    n: usize,
    sum: f64,
    sum2: f64,
    min: f64,
    max: f64,
    /// Over every voxel.
    all_min: f64,
    all_max: f64,
    /// Strided foreground values (CT channels of training cases).
    foreground: Vec<f64>,
}

/// The normalisation of every case and its record. `cases` yields, in
/// order, each case's id, whether it trains, and its raw samples; a case
/// is read once and dropped.
pub fn compute(
    modalities: &[String],
    channels: usize,
    cases: impl Iterator<Item = Result<(String, bool, Vec<Sample>)>>,
) -> Result<(Vec<CaseNorm>, NormRecord)> {
    let modality = |c: usize| modalities.get(c).cloned().unwrap_or_default();
    let ct: Vec<bool> = (0..channels).map(|c| is_ct(&modality(c))).collect();
    let mut per_case: Vec<(String, Vec<Seen>)> = Vec::new();
    let mut train_ct_cases = 0;
    for case in cases {
        let (id, train, samples) = case?;
        let mut seen: Vec<Seen> = (0..channels)
            .map(|_| Seen {
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                all_min: f64::INFINITY,
                all_max: f64::NEG_INFINITY,
                ..Seen::default()
            })
            .collect();
        let mut fg: Vec<Vec<f64>> = vec![Vec::new(); channels];
        for s in &samples {
            if s.image.size().first() != Some(&(channels as i64)) {
                bail!(
                    "normalize: sample `{}` has image {:?}, not {channels} channel(s) first",
                    s.id,
                    s.image.size()
                );
            }
            let mask = (train && ct.iter().any(|&c| c))
                .then(|| foreground_mask(s))
                .transpose()?;
            for (c, seen) in seen.iter_mut().enumerate() {
                let x = s.image.get(c as i64).to_kind(Kind::Double).flatten(0, -1);
                let values = Vec::<f64>::try_from(&x)?;
                for &v in &values {
                    seen.all_min = seen.all_min.min(v);
                    seen.all_max = seen.all_max.max(v);
                    if v != 0.0 {
                        seen.n += 1;
                        seen.sum += v;
                        seen.sum2 += v * v;
                        seen.min = seen.min.min(v);
                        seen.max = seen.max.max(v);
                    }
                }
                if ct[c]
                    && let Some(mask) = &mask
                {
                    fg[c].extend(
                        values
                            .iter()
                            .zip(mask)
                            .filter(|(_, m)| **m)
                            .map(|(v, _)| *v),
                    );
                }
            }
        }
        for (c, values) in fg.into_iter().enumerate() {
            let step = values.len().div_ceil(VOXELS_PER_CASE).max(1);
            seen[c].foreground = values.into_iter().step_by(step).collect();
        }
        if train && ct.iter().any(|&c| c) {
            train_ct_cases += 1;
        }
        per_case.push((id, seen));
    }

    let mut records = Vec::with_capacity(channels);
    let mut ct_norm: Vec<Option<ChannelNorm>> = Vec::with_capacity(channels);
    for (c, &is_ct) in ct.iter().enumerate() {
        if !is_ct {
            records.push(ChannelRecord {
                modality: modality(c),
                scheme: "zscore-nonzero".into(),
                ct: None,
            });
            ct_norm.push(None);
            continue;
        }
        let mut values: Vec<f64> = per_case
            .iter()
            .flat_map(|(_, s)| s[c].foreground.iter().copied())
            .collect();
        if values.is_empty() {
            bail!(
                "normalize: channel {c} ({}) is CT, but no training case has a foreground voxel (target > 0) to take its statistics from",
                modality(c)
            );
        }
        values.sort_by(f64::total_cmp);
        let q = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize];
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let stats = CtStats {
            p00_5: q(0.005),
            p99_5: q(0.995),
            mean,
            sd,
            voxels: values.len(),
            cases: train_ct_cases,
        };
        ct_norm.push(Some(ChannelNorm {
            clip: Some([stats.p00_5, stats.p99_5]),
            mean,
            sd: sd.max(1e-8),
            nonzero: false,
        }));
        records.push(ChannelRecord {
            modality: modality(c),
            scheme: "ct".into(),
            ct: Some(stats),
        });
    }

    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut norms = Vec::with_capacity(per_case.len());
    for (id, seen) in &per_case {
        let mut channels_norm = Vec::with_capacity(channels);
        for (c, s) in seen.iter().enumerate() {
            let n = match &ct_norm[c] {
                Some(n) => n.clone(),
                None => zscore(id, c, &modality(c), s)?,
            };
            for v in [s.all_min, s.all_max, s.min, s.max] {
                if v.is_finite() {
                    let y = n.value(v);
                    lo = lo.min(y);
                    hi = hi.max(y);
                }
            }
            channels_norm.push(n);
        }
        norms.push(CaseNorm {
            channels: channels_norm,
        });
    }
    let record = NormRecord {
        scheme: "field".into(),
        channels: records,
        range: [lo, hi],
        unit: "z-score units: images are normalised per channel (CT: clipped to the training \
               foreground's 0.5/99.5 percentiles, then z-scored with its mean and sd; MRI: \
               z-scored per case over its non-zero voxels), so eps 1 in Linf is one sd per voxel"
            .into(),
    };
    Ok((norms, record))
}

/// The z-score of one MRI channel of one case over its non-zero voxels.
fn zscore(case: &str, c: usize, modality: &str, s: &Seen) -> Result<ChannelNorm> {
    let what = || format!("normalize: case `{case}`, channel {c} ({modality})");
    if s.n == 0 {
        bail!("{}: every voxel is 0; nothing to z-score over", what());
    }
    let n = s.n as f64;
    let mean = s.sum / n;
    let sd = (s.sum2 / n - mean * mean).max(0.0).sqrt();
    if sd.is_nan() || sd <= 1e-8 * mean.abs().max(1.0) {
        bail!(
            "{}: its non-zero voxels are all {mean}; a constant image cannot be z-scored",
            what()
        );
    }
    Ok(ChannelNorm {
        clip: None,
        mean,
        sd,
        nonzero: true,
    })
}

/// Foreground (target > 0) of a class-map sample, in the image's voxel
/// order: the target is [*spatial] or [1, *spatial].
fn foreground_mask(s: &Sample) -> Result<Vec<bool>> {
    let spatial: Vec<i64> = s.image.size()[1..].to_vec();
    let t = s.target.size();
    let with_axis = t.len() == spatial.len() + 1 && t[0] == 1 && t[1..] == spatial[..];
    if t != spatial && !with_axis {
        bail!(
            "normalize: sample `{}`: CT statistics take the foreground of a class map shaped like the image {spatial:?}, got a target {t:?}",
            s.id
        );
    }
    let v = Vec::<f32>::try_from(s.target.flatten(0, -1).to_kind(Kind::Float))?;
    Ok(v.into_iter().map(|x| x > 0.0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-channel case of 100 voxels: `background` outside, the
    /// foreground (target 1) the first `values.len()` voxels.
    fn case(id: &str, background: f32, values: &[f32]) -> Sample {
        let mut image = vec![background; 100];
        let mut target = vec![0f32; 100];
        image[..values.len()].copy_from_slice(values);
        target[..values.len()].fill(1.0);
        Sample {
            id: id.into(),
            image: Tensor::from_slice(&image).reshape([1, 10, 10]),
            target: Tensor::from_slice(&target).reshape([10, 10]),
        }
    }

    fn floats(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn ct_is_clipped_to_the_training_foreground_percentiles_and_z_scored_with_its_statistics() {
        // Training foregrounds 0..=199 HU in two cases, one of them with an
        // outlier; a test case far brighter, which must not inform anything.
        let a: Vec<f32> = (0..100).map(|v| v as f32).collect();
        let mut b: Vec<f32> = (100..200).map(|v| v as f32).collect();
        b[99] = 3000.0;
        let test: Vec<f32> = vec![5000.0; 50];
        let cases = vec![
            ("a", true, case("a:volume:0", -1000.0, &a[..60])),
            ("b", true, case("b:volume:0", -1000.0, &b)),
            ("t", false, case("t:volume:0", -1000.0, &test)),
        ];
        let (norms, record) = compute(
            &["CT".into()],
            1,
            cases
                .into_iter()
                .map(|(id, train, s)| Ok((id.to_string(), train, vec![s]))),
        )
        .unwrap();
        let ct = record.channels[0].ct.clone().unwrap();
        assert_eq!(record.channels[0].scheme, "ct");
        assert_eq!((ct.voxels, ct.cases), (160, 2), "training foregrounds only");
        let mut fg: Vec<f64> = a[..60].iter().chain(&b).map(|&v| v as f64).collect();
        fg.sort_by(f64::total_cmp);
        let mean = fg.iter().sum::<f64>() / 160.0;
        assert!((ct.mean - mean).abs() < 1e-9, "{} vs {mean}", ct.mean);
        assert!(ct.p99_5 < 3000.0 && ct.p00_5 >= 0.0, "{ct:?}");
        // Every case, the test one included, is clipped to those percentiles.
        let n = &norms[2].channels[0];
        assert_eq!(n.clip, Some([ct.p00_5, ct.p99_5]));
        let t = floats(&norms[2].apply(&case("t", -1000.0, &test).image));
        let top = (ct.p99_5 - ct.mean) / ct.sd;
        assert!((t[0] - top).abs() < 1e-5, "{} vs {top}", t[0]);
        let bottom = (ct.p00_5 - ct.mean) / ct.sd;
        assert!(
            (t[99] - bottom).abs() < 1e-5,
            "background clipped: {}",
            t[99]
        );
        assert!((record.range[0] - bottom).abs() < 1e-9 && (record.range[1] - top).abs() < 1e-9);
    }

    #[test]
    fn mri_is_z_scored_per_case_over_its_non_zero_voxels() {
        let values: Vec<f32> = (1..=40).map(|v| (v * v) as f32).collect();
        let s = case("m:volume:0", 0.0, &values);
        let (norms, record) = compute(
            &["T1".into()],
            1,
            std::iter::once(Ok((
                "m".to_string(),
                true,
                vec![case("m:volume:0", 0.0, &values)],
            ))),
        )
        .unwrap();
        assert_eq!(record.channels[0].scheme, "zscore-nonzero");
        let y = floats(&norms[0].apply(&s.image));
        let inside = &y[..40];
        let mean = inside.iter().sum::<f64>() / 40.0;
        let sd = (inside.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 40.0).sqrt();
        assert!(mean.abs() < 1e-5 && (sd - 1.0).abs() < 1e-5, "{mean} {sd}");
        assert!(y[40..].iter().all(|&v| v == 0.0), "zeros stay zero");
        assert!(
            record.range[0] < 0.0 && record.range[1] > 1.0,
            "{:?}",
            record.range
        );

        let flat = case("f:volume:0", 0.0, &[7.0; 30]);
        let e = compute(
            &[],
            1,
            std::iter::once(Ok(("f".to_string(), true, vec![flat]))),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("case `f`") && e.contains("constant"), "{e}");
    }
}
