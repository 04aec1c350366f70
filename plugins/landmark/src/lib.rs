//! Landmark detection: the 32 AFIDs (anatomical fiducials) shipped with
//! autoafids on its MNI152 2009cAsym template.
//!
//! The model outputs one heatmap per landmark, `[B, 32, H, W]`; the target is
//! the fixed-shape `[33, 3]` of [`target`] (pixel position and presence of
//! each landmark, then the pixel spacing in mm).
//!
//! Loss per sample: each predicted heatmap is read as a distribution over
//! pixels (a softmax of its logits) and compared with the Gaussian of
//! `SIGMA_PX` around the true point, normalised to sum 1: the KL divergence
//! between the two, divided by the Gaussian's divergence from the uniform
//! map, so that a flat prediction (no peak anywhere) scores exactly 1 and the
//! Gaussian itself 0; averaged over the landmarks present in the sample,
//! absent landmarks ignored. Unlike a squared error on the heatmap, whose
//! minimum near a blank map (the Gaussian covers ~12 of 4096 pixels) stalls
//! training, the softmax puts all the gradient on where the peak is.
//!
//! Metrics: mean radial error in mm (argmax of each predicted heatmap vs the
//! true point, scaled by the pixel spacing) and the success-detection rate
//! within 2, 4 and 8 mm, over every present landmark of the set.

pub mod decode;
pub mod target;

use amat_plugin_sdk::{
    DecodeRequest, Example, Metric, SampleScore, ScoreInfo, TargetKind, Task, TaskInfo, Tensor,
    export_task,
};
pub use target::{LANDMARKS, LandmarkTarget, Point};

pub struct Landmark;

/// Width of the target Gaussians, in output pixels.
pub const SIGMA_PX: f64 = 2.0;
/// Radii of the success-detection rates, in mm.
pub const SDR_MM: [f64; 3] = [2.0, 4.0, 8.0];

/// Checks `pred` [B, K, H, W] against `target` [B, K + 1, 3].
fn check_shapes(pred: &Tensor, target: &Tensor) -> Result<(i64, i64, i64), String> {
    let p = pred.shape();
    let t = target.shape();
    let k = LANDMARKS as i64;
    if p.len() != 4 || p[1] != k {
        return Err(format!("prediction must be [B, {k}, H, W], got {p:?}"));
    }
    if t != [p[0], k + 1, 3] {
        return Err(format!(
            "target must be [B, {}, 3] for a prediction {p:?}, got {t:?}",
            k + 1
        ));
    }
    Ok((p[0], p[2], p[3]))
}

/// Log of the Gaussians [B, K, H * W] around the target points, each
/// normalised to sum 1, built on the host from the coordinates.
fn log_gaussians(target: &Tensor, b: i64, h: i64, w: i64) -> Tensor {
    let k = LANDMARKS as i64;
    let points = target.narrow(1, 0, k);
    let rows = points.narrow(2, 0, 1).reshape(&[b, k, 1, 1]);
    let cols = points.narrow(2, 1, 1).reshape(&[b, k, 1, 1]);
    let grid_r: Vec<f32> = (0..h).map(|i| i as f32).collect();
    let grid_c: Vec<f32> = (0..w).map(|j| j as f32).collect();
    let grid_r = Tensor::from_f32(&grid_r, &[1, 1, h, 1]);
    let grid_c = Tensor::from_f32(&grid_c, &[1, 1, 1, w]);
    let d2 = (&grid_r - &rows).square() + (&grid_c - &cols).square();
    (d2 * (-1.0 / (2.0 * SIGMA_PX * SIGMA_PX)))
        .reshape(&[b, k, h * w])
        .log_softmax(2)
}

/// Per-sample loss [B] (see the crate docs).
pub fn heatmap_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor, String> {
    let (b, h, w) = check_shapes(pred, target)?;
    let k = LANDMARKS as i64;
    let present = target.narrow(1, 0, k).narrow(2, 2, 1).reshape(&[b, k]);
    let log_g = log_gaussians(target, b, h, w).detach();
    let g = log_g.exp();
    let log_q = pred.reshape(&[b, k, h * w]).log_softmax(2);
    let kl = (&g * (&log_g - &log_q)).sum(&[2], false);
    // KL(g || uniform) = ln(HW) - entropy(g): what a flat prediction scores.
    let flat = (&g * &log_g).sum(&[2], false) + ((h * w) as f64).ln();
    let per_landmark = kl / flat;
    let count = present.sum(&[1], false).clamp(1.0, f32::MAX as f64);
    Ok((per_landmark * &present).sum(&[1], false) / count)
}

/// Radial errors in mm of every present landmark, given the predicted
/// `(row, col)` of each landmark of each sample.
pub fn radial_errors(predicted: &[[Point; LANDMARKS]], targets: &[LandmarkTarget]) -> Vec<f64> {
    predicted
        .iter()
        .zip(targets)
        .flat_map(|(pred, t)| {
            t.points.iter().zip(pred).filter_map(|(truth, p)| {
                truth.map(|truth| {
                    let dr = (p.row - truth.row) * t.spacing_mm[0];
                    let dc = (p.col - truth.col) * t.spacing_mm[1];
                    dr.hypot(dc)
                })
            })
        })
        .collect()
}

/// `mre_mm` and `sdr_<r>mm` of a list of radial errors (NaN-free: an empty
/// list scores an error of 0 and rates of 1, there being nothing to miss).
pub fn summarize(errors: &[f64]) -> Vec<Metric> {
    let n = errors.len().max(1) as f64;
    let mut out = vec![Metric {
        name: "mre_mm".into(),
        value: errors.iter().sum::<f64>() / n,
    }];
    for r in SDR_MM {
        let hit = errors.iter().filter(|&&e| e <= r).count();
        out.push(Metric {
            name: format!("sdr_{r}mm"),
            value: if errors.is_empty() {
                1.0
            } else {
                hit as f64 / n
            },
        });
    }
    out.push(Metric {
        name: "landmarks".into(),
        value: errors.len() as f64,
    });
    out
}

/// Argmax position of each heatmap of `pred` [B, K, H, W].
fn argmax_points(pred: &Tensor, b: i64, h: i64, w: i64) -> Vec<[Point; LANDMARKS]> {
    let k = LANDMARKS as i64;
    let flat = pred.reshape(&[b, k, h * w]).argmax(2, false).to_vec();
    flat.chunks(LANDMARKS)
        .map(|idx| {
            std::array::from_fn(|i| {
                let at = idx[i] as i64;
                Point {
                    row: (at / w) as f64,
                    col: (at % w) as f64,
                }
            })
        })
        .collect()
}

impl Task for Landmark {
    fn describe() -> TaskInfo {
        TaskInfo {
            name: "landmark".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: format!(
                "The 32 AFIDs: one heatmap per landmark, read as a softmax over pixels; \
                 loss = KL to a Gaussian (sigma {SIGMA_PX} px), 1 for a flat map, \
                 over present landmarks; MRE and SDR in mm"
            ),
            input_channels: 1,
            output_channels: LANDMARKS as u32,
            target_kind: TargetKind::Heatmaps,
            tau: 0.1,
            intensity_min: 0.0,
            intensity_max: 1.0,
            metric_names: vec![
                "mre_mm".into(),
                "sdr_2mm".into(),
                "sdr_4mm".into(),
                "sdr_8mm".into(),
            ],
            scores: vec![
                ScoreInfo::new(
                    "mre_mm",
                    false,
                    "per-sample mean radial error (mm) of the landmarks present",
                ),
                ScoreInfo::new("heatmap_loss", false, "the per-sample loss"),
            ],
        }
    }

    fn decode(request: &DecodeRequest) -> Result<Vec<Example>, String> {
        decode::decode(request)
    }

    fn loss(pred: &Tensor, target: &Tensor) -> Result<Tensor, String> {
        heatmap_loss(pred, target).map_err(|e| format!("loss: {e}"))
    }

    fn metrics(pred: &Tensor, target: &Tensor) -> Result<Vec<Metric>, String> {
        let (b, h, w) = check_shapes(pred, target).map_err(|e| format!("metrics: {e}"))?;
        let targets = LandmarkTarget::decode_batch(&target.to_vec())?;
        let predicted = argmax_points(pred, b, h, w);
        Ok(summarize(&radial_errors(&predicted, &targets)))
    }

    fn scores(pred: &Tensor, target: &Tensor) -> Result<Vec<SampleScore>, String> {
        let (b, h, w) = check_shapes(pred, target).map_err(|e| format!("scores: {e}"))?;
        let targets = LandmarkTarget::decode_batch(&target.to_vec())?;
        let predicted = argmax_points(pred, b, h, w);
        // A sample without landmarks has nothing to miss: error 0.
        let mre = predicted
            .iter()
            .zip(&targets)
            .map(|(p, t)| {
                let e = radial_errors(std::slice::from_ref(p), std::slice::from_ref(t));
                e.iter().sum::<f64>() / e.len().max(1) as f64
            })
            .collect();
        let loss = heatmap_loss(pred, target)?.to_vec();
        Ok(vec![
            SampleScore {
                name: "mre_mm".into(),
                values: mre,
            },
            SampleScore {
                name: "heatmap_loss".into(),
                values: loss.into_iter().map(f64::from).collect(),
            },
        ])
    }
}

export_task!(Landmark);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdr_counts_errors_within_each_radius() {
        let m = summarize(&[1.0, 2.0, 3.0, 5.0, 9.0]);
        let get = |n: &str| m.iter().find(|m| m.name == n).unwrap().value;
        assert_eq!(get("mre_mm"), 4.0);
        assert_eq!(get("sdr_2mm"), 0.4);
        assert_eq!(get("sdr_4mm"), 0.6);
        assert_eq!(get("sdr_8mm"), 0.8);
    }

    #[test]
    fn radial_error_scales_each_axis_by_its_spacing() {
        let mut points = [None; LANDMARKS];
        points[3] = Some(Point {
            row: 10.0,
            col: 10.0,
        });
        let t = LandmarkTarget {
            points,
            spacing_mm: [2.0, 0.5],
        };
        let mut pred = [Point { row: 0.0, col: 0.0 }; LANDMARKS];
        pred[3] = Point {
            row: 13.0,
            col: 26.0,
        };
        assert_eq!(radial_errors(&[pred], &[t]), vec![10.0]);
    }
}
