//! Robustness curves: for each noise level of a list, attack a whole split
//! with PGD (keeping each sample's worst iterate over all steps and restarts), let the plugin compute its
//! set-level metrics on all the attacked predictions at once, and report
//! metric(eps) with the curve's normalised area.

pub mod report;

use crate::attack::{self, Norm};
use crate::config::{Aggregate, EvalConfig};
use crate::data::Dataset;
use crate::plugin::Plugin;
use anyhow::{Context as _, Result, bail};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// One metric along the noise levels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricCurve {
    pub name: String,
    /// One value per noise level; NaN (`null` in JSON) where the plugin
    /// returned none (a value no sample defines).
    #[serde(default, deserialize_with = "nan_for_null::values")]
    pub values: Vec<f64>,
    /// Trapezoid area under the curve divided by the eps range (the mean
    /// value over the range); the clean value when the list is just [0].
    #[serde(
        default = "nan_for_null::nan",
        deserialize_with = "nan_for_null::value"
    )]
    pub area: f64,
}

/// serde_json writes NaN as `null`; these read it back as NaN.
pub(crate) mod nan_for_null {
    use serde::{Deserialize, Deserializer};

    pub fn nan() -> f64 {
        f64::NAN
    }

    pub fn value<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    pub fn values<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let v = Vec::<Option<f64>>::deserialize(d)?;
        Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    pub split: String,
    pub samples: usize,
    pub norm: Norm,
    pub steps: usize,
    pub restarts: usize,
    pub eps: Vec<f64>,
    /// Each level as a per-pixel size, comparable across image sizes: for
    /// L2 the RMS eps / sqrt(elements of one input sample); for Linf eps
    /// itself, the per-pixel bound. Empty in files written before it existed.
    #[serde(default)]
    pub rms: Vec<f64>,
    /// Mean per-sample loss at each level.
    pub loss: Vec<f64>,
    pub metrics: Vec<MetricCurve>,
    /// Wall time of the evaluation (0 in older files).
    #[serde(default)]
    pub seconds: f64,
    /// What the intensities, and so eps, are in (see [`report::intensity_note`]);
    /// empty in older files.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub intensity: String,
    /// How `metrics` covered the split (files written before it existed
    /// took the whole split at once).
    #[serde(default = "whole_split")]
    pub aggregate: Aggregate,
    /// With per-case metrics over more than one case: each case's curves,
    /// whose means are `metrics`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cases: Vec<CaseCurve>,
}

fn whole_split() -> Aggregate {
    Aggregate::Set
}

/// One case's metrics along the noise levels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseCurve {
    pub case: String,
    pub samples: usize,
    pub metrics: Vec<MetricCurve>,
}

impl Curve {
    pub fn metric(&self, name: &str) -> Option<&MetricCurve> {
        self.metrics.iter().find(|m| m.name == name)
    }
}

/// The per-pixel size of each level (see [`Curve::rms`]) for inputs of
/// `elements` values per sample.
pub fn per_pixel(norm: Norm, eps: &[f64], elements: usize) -> Vec<f64> {
    match norm {
        Norm::L2 => {
            let root = (elements.max(1) as f64).sqrt();
            eps.iter().map(|e| e / root).collect()
        }
        Norm::Linf => eps.to_vec(),
    }
}

/// Trapezoid area of `values` over `eps`, divided by the eps range.
pub fn normalised_area(eps: &[f64], values: &[f64]) -> f64 {
    let range = eps.last().unwrap_or(&0.0) - eps.first().unwrap_or(&0.0);
    if eps.len() < 2 || range <= 0.0 {
        return values.first().copied().unwrap_or(0.0);
    }
    let area: f64 = eps
        .windows(2)
        .zip(values.windows(2))
        .map(|(e, v)| (e[1] - e[0]) * (v[0] + v[1]) / 2.0)
        .sum();
    area / range
}

/// The worst iterate seen so far, per sample: noise, prediction and loss.
#[derive(Default)]
struct Worst(Option<(Tensor, Tensor, Tensor)>);

impl Worst {
    /// Keeps, per sample, whichever of the old and the new iterate has the
    /// higher loss (the old one on a tie).
    fn see(&mut self, delta: &Tensor, pred: &Tensor, loss: &Tensor) {
        self.0 = Some(match self.0.take() {
            None => (delta.copy(), pred.copy(), loss.copy()),
            Some((d0, p0, l0)) => {
                let worse = loss.gt_tensor(&l0);
                let pick = |new: &Tensor, old: &Tensor| {
                    new.where_self(&attack::per_sample(&worse, new), old)
                };
                (
                    pick(delta, &d0),
                    pick(pred, &p0),
                    loss.where_self(&worse, &l0),
                )
            }
        });
    }
}

/// PGD at level `eps` with `cfg.restarts` restarts, keeping per sample the
/// worst (highest-loss) iterate over every step of every restart, the
/// random starts included: returns that iterate's noise, prediction and loss.
pub fn worst_case(
    ctx: &mut attack::Context,
    x: &Tensor,
    y: &Tensor,
    eps: f64,
    cfg: &EvalConfig,
) -> Result<(Tensor, Tensor, Tensor)> {
    let b = x.size()[0];
    let levels = Tensor::full([b], eps, (Kind::Float, x.device()));
    let mut worst = Worst::default();
    let restarts = if eps == 0.0 { 1 } else { cfg.restarts };
    for _ in 0..restarts {
        let mut watch = |_: &mut Plugin, delta: &Tensor, pred: &Tensor, loss: &Tensor| {
            worst.see(delta, pred, loss);
            Ok(())
        };
        // The noise of the last iterate is not needed: the watch kept the worst.
        let _last = attack::pgd_watched(ctx, x, y, &levels, &cfg.attack, Some(&mut watch))?;
    }
    Ok(worst.0.expect("PGD shows at least one iterate"))
}

/// The robustness curve of the context's network on `data`. Seeds torch
/// with `seed` so that random starts, and so the curve, are reproducible.
pub fn robustness(
    ctx: &mut attack::Context,
    data: &Dataset,
    cfg: &EvalConfig,
    device: Device,
    seed: i64,
    bar: &ProgressBar,
) -> Result<Curve> {
    let start = std::time::Instant::now();
    let shapes: Vec<Vec<i64>> = (0..data.len())
        .map(|i| data.image_shape(i).unwrap_or_default())
        .collect();
    let groups = MetricGroups::of(data, cfg.aggregate);
    refuse_mixed_shapes(ctx, data, cfg, &groups, &shapes)?;
    tch::manual_seed(seed);
    let batches = data.batches_of_one_shape(&groups.order(), cfg.batch_size);
    bar.set_length((batches.len() * cfg.eps.len()) as u64);
    bar.set_position(0);
    let mut losses = Vec::new();
    // Per group, per level: the metrics the plugin returned.
    let mut per_group: Vec<Vec<Vec<(String, f64)>>> = vec![Vec::new(); groups.len()];
    for &eps in &cfg.eps {
        let mut open = groups.open();
        let mut loss_sum = 0.0;
        for idx in &batches {
            let (x, y) = data.batch(idx, device)?;
            let (_, pred, loss) = worst_case(ctx, &x, &y, eps, cfg)?;
            loss_sum += loss.sum(Kind::Double).double_value(&[]);
            let (pred, y) = (pred.to_device(Device::Cpu), y.to_device(Device::Cpu));
            for (g, rows) in groups.runs(idx) {
                let Some((preds, targets)) = open.add(g, &pred, &y, rows) else {
                    continue;
                };
                let metrics = group_metrics(ctx, preds, targets)
                    .with_context(|| format!("metrics of {} at eps {eps}", groups.describe(g)))?;
                per_group[g].push(metrics);
            }
            bar.inc(1);
        }
        losses.push(loss_sum / data.len().max(1) as f64);
    }
    let metrics = mean_over_groups(&per_group, &cfg.eps);
    let cases = if groups.len() > 1 {
        groups
            .names
            .iter()
            .zip(&groups.members)
            .zip(&per_group)
            .map(|((case, members), levels)| CaseCurve {
                case: case.clone(),
                samples: members.len(),
                metrics: mean_over_groups(std::slice::from_ref(levels), &cfg.eps),
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Curve {
        split: cfg.split.clone(),
        samples: data.len(),
        norm: cfg.attack.norm,
        steps: cfg.attack.steps,
        restarts: cfg.restarts,
        eps: cfg.eps.clone(),
        // Samples of several sizes: the mean size.
        rms: per_pixel(
            cfg.attack.norm,
            &cfg.eps,
            shapes
                .iter()
                .map(|s| s.iter().product::<i64>() as usize)
                .sum::<usize>()
                / shapes.len().max(1),
        ),
        loss: losses,
        metrics,
        seconds: start.elapsed().as_secs_f64(),
        intensity: String::new(),
        aggregate: cfg.aggregate,
        cases,
    })
}

/// A group's metrics at one level: its predictions padded to one shape
/// where they differ (class maps only, checked before), in one call.
fn group_metrics(
    ctx: &mut attack::Context,
    mut preds: Vec<Tensor>,
    mut targets: Vec<Tensor>,
) -> Result<Vec<(String, f64)>> {
    let shape = preds[0].size();
    if preds.iter().any(|p| p.size()[2..] != shape[2..]) {
        pad_to_largest(&mut preds, &mut targets);
    }
    let metrics = ctx
        .plugin
        .metrics(&Tensor::cat(&preds, 0), &Tensor::cat(&targets, 0))?;
    Ok(metrics.into_iter().map(|m| (m.name, m.value)).collect())
}

/// Metrics take one group's predictions as one tensor: a group of volumes
/// of several shapes is padded to the largest with background, which only
/// a class map can take (class 0 adds to no foreground count).
fn refuse_mixed_shapes(
    ctx: &attack::Context,
    data: &Dataset,
    cfg: &EvalConfig,
    groups: &MetricGroups,
    shapes: &[Vec<i64>],
) -> Result<()> {
    if ctx.plugin.info().target_kind == amat_plugin_sdk::TargetKind::ClassMap {
        return Ok(());
    }
    for members in &groups.members {
        let first = &shapes[members[0]];
        if let Some(&other) = members.iter().find(|&&i| &shapes[i] != first) {
            bail!(
                "eval: split `{}` holds samples of different shapes (`{}` {:?}, `{}` {:?}) \
                 in one metrics call (eval.aggregate = \"{}\"); the robustness curve of a `{}` \
                 task needs one shape per call (crop or resample the cases to one)",
                cfg.split,
                data.id(members[0]).unwrap_or_default(),
                first,
                data.id(other).unwrap_or_default(),
                shapes[other],
                cfg.aggregate.name(),
                ctx.plugin.info().name
            );
        }
    }
    Ok(())
}

/// Each metric's curve: per level, the mean over the groups whose value
/// there is finite (a plugin leaves out what a group does not define).
/// Names in order of first appearance.
fn mean_over_groups(per_group: &[Vec<Vec<(String, f64)>>], eps: &[f64]) -> Vec<MetricCurve> {
    let mut names: Vec<&String> = Vec::new();
    for (n, _) in per_group.iter().flatten().flatten() {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let values: Vec<f64> = (0..eps.len())
                .map(|level| {
                    let defined: Vec<f64> = per_group
                        .iter()
                        .filter_map(|g| g.get(level)?.iter().find(|(n, _)| n == name))
                        .map(|(_, v)| *v)
                        .filter(|v| v.is_finite())
                        .collect();
                    if defined.is_empty() {
                        f64::NAN
                    } else {
                        defined.iter().sum::<f64>() / defined.len() as f64
                    }
                })
                .collect();
            MetricCurve {
                name: name.clone(),
                area: normalised_area(eps, &values),
                values,
            }
        })
        .collect()
}

/// The groups of samples that one `metrics` call covers: the cases of the
/// split (in order of first appearance), or the whole split as one group.
struct MetricGroups {
    /// The case's name; empty for the whole split.
    names: Vec<String>,
    members: Vec<Vec<usize>>,
    /// Sample index to its group.
    group_of: Vec<usize>,
}

impl MetricGroups {
    fn of(data: &Dataset, aggregate: Aggregate) -> Self {
        Self::by_label((0..data.len()).map(|i| match aggregate {
            Aggregate::Case => data.case(i).unwrap_or_default(),
            Aggregate::Set => "",
        }))
    }

    /// Groups of the samples with one label, sample by sample.
    fn by_label<'a>(labels: impl Iterator<Item = &'a str>) -> Self {
        let mut groups = MetricGroups {
            names: Vec::new(),
            members: Vec::new(),
            group_of: Vec::new(),
        };
        let mut index: std::collections::HashMap<&str, usize> = Default::default();
        for (i, name) in labels.enumerate() {
            let g = *index.entry(name).or_insert_with(|| {
                groups.names.push(name.to_string());
                groups.members.push(Vec::new());
                groups.names.len() - 1
            });
            groups.members[g].push(i);
            groups.group_of.push(g);
        }
        groups
    }

    fn len(&self) -> usize {
        self.members.len()
    }

    /// Every sample, a group's samples together, so that a group's
    /// predictions are complete, and let go, as early as possible.
    fn order(&self) -> Vec<usize> {
        self.members.concat()
    }

    fn describe(&self, g: usize) -> String {
        match self.names[g].as_str() {
            "" => "the split".to_string(),
            case => format!("case `{case}`"),
        }
    }

    /// The rows of a batch of samples `indices`, as runs of one group.
    fn runs(&self, indices: &[usize]) -> Vec<(usize, std::ops::Range<usize>)> {
        let mut runs: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        for (row, &i) in indices.iter().enumerate() {
            let g = self.group_of[i];
            match runs.last_mut() {
                Some((last, rows)) if *last == g => rows.end = row + 1,
                _ => runs.push((g, row..row + 1)),
            }
        }
        runs
    }

    fn open(&self) -> OpenGroups {
        OpenGroups {
            remaining: self.members.iter().map(Vec::len).collect(),
            held: (0..self.len()).map(|_| (Vec::new(), Vec::new())).collect(),
        }
    }
}

/// The predictions of groups not yet complete at one level.
struct OpenGroups {
    remaining: Vec<usize>,
    held: Vec<(Vec<Tensor>, Vec<Tensor>)>,
}

impl OpenGroups {
    /// Holds rows `rows` of a batch for group `g`; returns the group's
    /// predictions and targets once it is complete.
    fn add(
        &mut self,
        g: usize,
        pred: &Tensor,
        target: &Tensor,
        rows: std::ops::Range<usize>,
    ) -> Option<(Vec<Tensor>, Vec<Tensor>)> {
        let n = rows.len() as i64;
        let (preds, targets) = &mut self.held[g];
        preds.push(pred.narrow(0, rows.start as i64, n));
        targets.push(target.narrow(0, rows.start as i64, n));
        self.remaining[g] -= rows.len();
        (self.remaining[g] == 0).then(|| std::mem::take(&mut self.held[g]))
    }
}

/// Pads class-map predictions [B, K, *spatial] and targets [B, *spatial]
/// (or [B, 1, *spatial]) to the largest spatial shape among them: targets
/// with class 0, predictions with logits whose argmax is class 0, so every
/// per-class foreground count stays what it was.
fn pad_to_largest(preds: &mut [Tensor], targets: &mut [Tensor]) {
    let spatial = |p: &Tensor| p.size()[2..].to_vec();
    let largest: Vec<i64> = preds.iter().map(spatial).fold(Vec::new(), |m, s| {
        if m.is_empty() {
            s
        } else {
            m.iter().zip(&s).map(|(a, b)| *a.max(b)).collect()
        }
    });
    for (p, t) in preds.iter_mut().zip(targets.iter_mut()) {
        let pad: Vec<i64> = largest
            .iter()
            .zip(spatial(p))
            .rev()
            .flat_map(|(l, s)| [0, l - s])
            .collect();
        if pad.iter().all(|&v| v == 0) {
            continue;
        }
        let inside = p.select(1, 0).ones_like().constant_pad_nd(&pad);
        let padded = p.constant_pad_nd(&pad);
        let mut background = padded.narrow(1, 0, 1);
        background += (inside.ones_like() - &inside).unsqueeze(1) * 1e4;
        *p = padded;
        *t = t.constant_pad_nd(&pad);
    }
}

#[cfg(test)]
mod tests {
    use super::normalised_area;

    #[test]
    fn a_case_is_let_go_as_soon_as_its_last_sample_is_attacked() {
        use super::MetricGroups;
        use tch::{Kind, Tensor};
        // Cases interleaved in the split's order; batches of 3.
        let labels = ["a", "b", "a", "c", "c", "b", "d", "d", "d", "d", "a"];
        let groups = MetricGroups::by_label(labels.into_iter());
        let order = groups.order();
        assert_eq!(order, [0, 2, 10, 1, 5, 3, 4, 6, 7, 8, 9]);
        let mut open = groups.open();
        let (mut done, mut most_held) = (Vec::new(), 0);
        for batch in order.chunks(3) {
            let rows = Tensor::from_slice(&batch.iter().map(|&i| i as i64).collect::<Vec<_>>());
            let pred = rows.to_kind(Kind::Float);
            for (g, run) in groups.runs(batch) {
                if let Some((preds, targets)) = open.add(g, &pred, &rows, run) {
                    let got: Vec<i64> = Vec::try_from(Tensor::cat(&targets, 0)).unwrap();
                    let want: Vec<i64> = groups.members[g].iter().map(|&i| i as i64).collect();
                    assert_eq!(got, want, "group {}", groups.names[g]);
                    assert_eq!(preds.len(), targets.len());
                    done.push(groups.names[g].clone());
                }
            }
            let held: usize = open
                .held
                .iter()
                .map(|(p, _)| p.iter().map(|t| t.size()[0] as usize).sum::<usize>())
                .sum();
            most_held = most_held.max(held);
        }
        assert_eq!(done, ["a", "b", "c", "d"], "each case once, in order");
        // Never more than the largest case's samples (d: 4) held at once.
        assert!(most_held <= 4, "held {most_held}");
    }

    #[test]
    fn missing_values_round_trip_as_null_and_old_files_read() {
        use super::{Curve, MetricCurve};
        let m = MetricCurve {
            name: "dice_x".into(),
            values: vec![0.5, f64::NAN],
            area: f64::NAN,
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"name":"dice_x","values":[0.5,null],"area":null}"#);
        let back: MetricCurve = serde_json::from_str(&json).unwrap();
        assert_eq!(back.values[0], 0.5);
        assert!(back.values[1].is_nan() && back.area.is_nan());
        let old = r#"{"split":"test","samples":1,"norm":"l2","steps":1,"restarts":1,
            "eps":[0.0],"loss":[0.1],"metrics":[]}"#;
        let c: Curve = serde_json::from_str(old).unwrap();
        assert!(c.rms.is_empty() && c.seconds == 0.0);
    }

    #[test]
    fn per_pixel_levels() {
        use super::{Norm, per_pixel};
        assert_eq!(
            per_pixel(Norm::L2, &[0.0, 2.0], 64 * 64),
            vec![0.0, 2.0 / 64.0]
        );
        assert_eq!(per_pixel(Norm::Linf, &[0.0, 0.1], 64 * 64), vec![0.0, 0.1]);
    }

    #[test]
    fn area_is_the_mean_height() {
        assert_eq!(normalised_area(&[0.0, 1.0, 2.0], &[1.0, 1.0, 1.0]), 1.0);
        assert_eq!(
            normalised_area(&[0.0, 1.0, 3.0], &[1.0, 0.0, 0.0]),
            0.5 / 3.0
        );
        assert_eq!(normalised_area(&[0.0], &[0.7]), 0.7);
    }
}
