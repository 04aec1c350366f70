//! Object detection, CenterNet style: the model outputs, per pixel, one
//! centre-heatmap logit per class, the box height and width, and the offset
//! of the true centre inside its pixel: `[B, C + 4, H, W]`. The target is the
//! dense `[B, C + 5, H, W]` of [`target`], from which every box comes back
//! exactly.
//!
//! Classes are static (a dataset uses a subset): the five AAL subcortical
//! structures (both hemispheres of each form one class) and stardist's
//! nuclei, see [`CLASSES`].
//!
//! A heatmap channel is a logit relative to a prior centre probability of
//! 1% (`PRIOR_LOGIT`, RetinaNet's prior): `score = sigmoid(x + PRIOR_LOGIT)`.
//! An untrained net (outputs near 0) thus starts by predicting almost no
//! centres, as CenterNet's bias initialisation does, without the plugin
//! reaching into the host's model.
//!
//! Loss per sample: the focal loss of CenterNet on the heatmaps (alpha 2,
//! beta 4, normalised by the sample's number of objects) plus L1 on size
//! (weight 0.1) and offset (weight 1) at the true centres.
//!
//! Metrics: mAP at IoU 0.5 and mAP over IoU 0.5:0.95 (COCO's ten
//! thresholds), over the classes present in the set. Predicted boxes are the
//! local maxima (3x3) of the sigmoid heatmaps with their size and offset.

pub mod decode;
pub mod map;
pub mod target;

use amat_plugin_sdk::{
    DecodeRequest, Example, Metric, SampleScore, ScoreInfo, TargetKind, Task, TaskInfo, Tensor,
    export_task,
};
use map::{Detection, coco_thresholds, mean_ap};
use target::{BBox, TARGET_CHANNELS, box_at, boxes_of};

pub struct Detection2d;

/// The static class set; a dataset uses a subset.
pub const CLASSES: [&str; 6] = [
    "hippocampus",
    "amygdala",
    "caudate",
    "putamen",
    "thalamus",
    "nucleus",
];
/// Output channels: the heatmaps, then height, width, offset row, offset col.
pub const OUTPUT_CHANNELS: usize = CLASSES.len() + 4;

/// `ln(0.01 / 0.99)`: a zero output means a 1% centre probability.
pub const PRIOR_LOGIT: f64 = -4.59511985013459;
const FOCAL_ALPHA: f64 = 2.0;
const FOCAL_BETA: f64 = 4.0;
const SIZE_WEIGHT: f64 = 0.1;
const OFFSET_WEIGHT: f64 = 1.0;
/// Peaks below this score are not detections.
pub const MIN_SCORE: f64 = 0.01;
/// At most this many detections per image (the best-scoring).
pub const MAX_DETECTIONS: usize = 100;

fn check_shapes(pred: &Tensor, target: &Tensor) -> Result<(i64, i64, i64), String> {
    let p = pred.shape();
    let t = target.shape();
    if p.len() != 4 || p[1] != OUTPUT_CHANNELS as i64 {
        return Err(format!(
            "prediction must be [B, {OUTPUT_CHANNELS}, H, W], got {p:?}"
        ));
    }
    if t != [p[0], TARGET_CHANNELS as i64, p[2], p[3]] {
        return Err(format!(
            "target must be [B, {TARGET_CHANNELS}, H, W] for a prediction {p:?}, got {t:?}"
        ));
    }
    Ok((p[0], p[2], p[3]))
}

/// Centre scores [B, C, H, W] in (0, 1) of a prediction.
fn scores(pred: &Tensor) -> Tensor {
    (pred.narrow(1, 0, CLASSES.len() as i64) + PRIOR_LOGIT).sigmoid()
}

/// Per-sample loss [B] (see the crate docs).
pub fn centernet_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor, String> {
    let [focal, size, offset] = loss_parts(pred, target)?;
    Ok(focal + size * SIZE_WEIGHT + offset * OFFSET_WEIGHT)
}

/// The loss's parts, each [B]: focal loss on the centre heatmaps, and the L1
/// errors of box size and centre offset at the true centres (unweighted).
pub fn loss_parts(pred: &Tensor, target: &Tensor) -> Result<[Tensor; 3], String> {
    check_shapes(pred, target)?;
    let c = CLASSES.len() as i64;
    let all = [1, 2, 3];
    // Clamped like CenterNet, so log never sees 0 or 1.
    let p = scores(pred).clamp(1e-4, 1.0 - 1e-4);
    let y = target.narrow(1, 0, c);
    let pos = y.ge(1.0).to_float();
    let neg = 1.0 - &pos;
    let pos_term = p.log() * (1.0 - &p).pow(FOCAL_ALPHA) * &pos;
    let neg_term = (1.0 - &p).log() * p.pow(FOCAL_ALPHA) * (1.0 - &y).pow(FOCAL_BETA) * &neg;
    let objects = pos.sum(&all, false).clamp(1.0, f32::MAX as f64);
    let focal = -(pos_term + neg_term).sum(&all, false) / &objects;

    let centres = target.narrow(1, c + 4, 1).gt(0.5).to_float();
    let l1 = |from: i64| {
        ((pred.narrow(1, from, 2) - target.narrow(1, from, 2)).abs() * &centres).sum(&all, false)
    };
    let at_centres = centres.sum(&all, false).clamp(1.0, f32::MAX as f64);
    Ok([focal, l1(c) / &at_centres, l1(c + 2) / at_centres])
}

/// Detections of every image: 3x3 local maxima of the sigmoid heatmaps.
///
/// The tensor contract has no max-pool, top-k or nonzero, so the peak list
/// cannot be made small on the host: the sigmoid (a host op) comes back
/// densely once and the peaks are picked here.
pub fn detections(pred: &Tensor, b: usize, h: usize, w: usize) -> Vec<Vec<Detection>> {
    let c = CLASSES.len();
    let heat = scores(pred).to_vec();
    let reg = pred.narrow(1, c as i64, 4).to_vec();
    let plane = h * w;
    (0..b)
        .map(|i| {
            let heat = &heat[i * c * plane..(i + 1) * c * plane];
            let reg = &reg[i * 4 * plane..(i + 1) * 4 * plane];
            let mut found = Vec::new();
            for class in 0..c {
                let m = &heat[class * plane..(class + 1) * plane];
                for r in 0..h {
                    for col in 0..w {
                        let v = m[r * w + col];
                        if (v as f64) < MIN_SCORE || !is_peak(m, h, w, r, col) {
                            continue;
                        }
                        let at = r * w + col;
                        let size = (reg[at] as f64, reg[plane + at] as f64);
                        let offset = (reg[2 * plane + at] as f64, reg[3 * plane + at] as f64);
                        found.push(Detection {
                            bbox: box_at(class, r, col, (size.0.max(0.0), size.1.max(0.0)), offset),
                            score: v as f64,
                        });
                    }
                }
            }
            found.sort_by(|a, b| b.score.total_cmp(&a.score));
            found.truncate(MAX_DETECTIONS);
            found
        })
        .collect()
}

/// Whether `(r, c)` is at least as high as its 8 neighbours.
fn is_peak(m: &[f32], h: usize, w: usize, r: usize, c: usize) -> bool {
    let v = m[r * w + c];
    (r.saturating_sub(1)..(r + 2).min(h))
        .all(|rr| (c.saturating_sub(1)..(c + 2).min(w)).all(|cc| m[rr * w + cc] <= v))
}

/// The true boxes of every image of a target batch.
pub fn truths(target: &Tensor, b: usize, h: usize, w: usize) -> Vec<Vec<BBox>> {
    let c = CLASSES.len() as i64;
    let reg = target.narrow(1, c, 5).to_vec();
    reg.chunks(5 * h * w)
        .take(b)
        .map(|t| boxes_of(t, h, w))
        .collect()
}

/// `map_50`, `map_50_95`, then `ap50_<class>` of each class present and the
/// number of true boxes.
pub fn score(dets: &[Vec<Detection>], truths: &[Vec<BBox>]) -> Vec<Metric> {
    let classes = CLASSES.len();
    let (map50, per_class) = mean_ap(dets, truths, classes, 0.5);
    let thresholds = coco_thresholds();
    let map50_95 = thresholds
        .iter()
        .map(|&t| mean_ap(dets, truths, classes, t).0)
        .sum::<f64>()
        / thresholds.len() as f64;
    let mut out = vec![
        Metric {
            name: "map_50".into(),
            value: map50,
        },
        Metric {
            name: "map_50_95".into(),
            value: map50_95,
        },
    ];
    for (name, ap) in CLASSES.iter().zip(per_class) {
        if let Some(ap) = ap {
            out.push(Metric {
                name: format!("ap50_{name}"),
                value: ap,
            });
        }
    }
    out.push(Metric {
        name: "objects".into(),
        value: truths.iter().map(Vec::len).sum::<usize>() as f64,
    });
    out
}

impl Task for Detection2d {
    fn describe() -> TaskInfo {
        TaskInfo {
            name: "detection".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: format!(
                "CenterNet-style boxes of {} classes ({}): focal loss on centre heatmaps + L1 on size and offset; mAP",
                CLASSES.len(),
                CLASSES.join(", ")
            ),
            input_channels: 1,
            output_channels: OUTPUT_CHANNELS as u32,
            target_kind: TargetKind::DenseBoxes,
            tau: 2.0,
            intensity_min: 0.0,
            intensity_max: 1.0,
            metric_names: vec!["map_50".into(), "map_50_95".into()],
            scores: SCORE_NAMES
                .iter()
                .zip(SCORE_TEXT)
                .map(|(n, d)| ScoreInfo::new(n, false, d))
                .collect(),
        }
    }

    fn decode(request: &DecodeRequest) -> Result<Vec<Example>, String> {
        decode::decode(request)
    }

    fn loss(pred: &Tensor, target: &Tensor) -> Result<Tensor, String> {
        centernet_loss(pred, target).map_err(|e| format!("loss: {e}"))
    }

    fn metrics(pred: &Tensor, target: &Tensor) -> Result<Vec<Metric>, String> {
        let (b, h, w) = check_shapes(pred, target).map_err(|e| format!("metrics: {e}"))?;
        let (b, h, w) = (b as usize, h as usize, w as usize);
        Ok(score(&detections(pred, b, h, w), &truths(target, b, h, w)))
    }

    fn scores(pred: &Tensor, target: &Tensor) -> Result<Vec<SampleScore>, String> {
        let parts = loss_parts(pred, target).map_err(|e| format!("scores: {e}"))?;
        Ok(SCORE_NAMES
            .iter()
            .zip(parts)
            .map(|(name, t)| SampleScore {
                name: name.to_string(),
                values: t.to_vec().into_iter().map(f64::from).collect(),
            })
            .collect())
    }
}

/// The judgement scores: the loss's parts, as the authors judge detections.
const SCORE_NAMES: [&str; 3] = ["focal", "size_l1", "offset_l1"];
const SCORE_TEXT: [&str; 3] = [
    "per-sample focal loss of the centre heatmaps (objectness and class)",
    "per-sample L1 error of box sizes at the true centres",
    "per-sample L1 error of centre offsets at the true centres",
];

export_task!(Detection2d);
