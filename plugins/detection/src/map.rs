//! Mean average precision over a set of images, as in PASCAL VOC (2010+) and
//! COCO: per class, detections of every image ranked by score, each matched
//! greedily to the unmatched ground-truth box of its image with the highest
//! IoU at or above the threshold; AP is the area under the precision-recall
//! curve with precision made monotone (all-point interpolation).

use crate::target::BBox;

/// A predicted box and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    pub bbox: BBox,
    pub score: f64,
}

/// The IoU thresholds 0.5, 0.55, ..., 0.95 of COCO's mAP.
pub fn coco_thresholds() -> Vec<f64> {
    (0..10).map(|i| 0.5 + 0.05 * i as f64).collect()
}

/// AP of one class at one IoU threshold; `None` when the class has no
/// ground-truth box in the set (it is then left out of the mean).
pub fn average_precision(
    detections: &[Vec<Detection>],
    truths: &[Vec<BBox>],
    class: usize,
    iou_threshold: f64,
) -> Option<f64> {
    let positives: usize = truths
        .iter()
        .map(|t| t.iter().filter(|b| b.class == class).count())
        .sum();
    if positives == 0 {
        return None;
    }
    let mut ranked: Vec<(usize, &Detection)> = detections
        .iter()
        .enumerate()
        .flat_map(|(i, d)| {
            d.iter()
                .filter(|d| d.bbox.class == class)
                .map(move |d| (i, d))
        })
        .collect();
    ranked.sort_by(|a, b| b.1.score.total_cmp(&a.1.score));
    let mut used: Vec<Vec<bool>> = truths.iter().map(|t| vec![false; t.len()]).collect();
    let (mut tp, mut fp) = (0usize, 0usize);
    // (precision after this detection, whether it was a true positive)
    let mut ranks = Vec::with_capacity(ranked.len());
    for (image, det) in ranked {
        let best = truths[image]
            .iter()
            .enumerate()
            .filter(|(j, t)| t.class == class && !used[image][*j])
            .map(|(j, t)| (j, det.bbox.iou(t)))
            .filter(|&(_, iou)| iou >= iou_threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let hit = best.is_some();
        match best {
            Some((j, _)) => {
                used[image][j] = true;
                tp += 1;
            }
            None => fp += 1,
        }
        ranks.push((tp as f64 / (tp + fp) as f64, hit));
    }
    // Each true positive raises recall by 1 / positives; the area under the
    // monotone envelope of precision is the mean of that envelope at the true
    // positives (summed as such, so a perfect ranking gives exactly 1).
    let mut envelope = 0.0f64;
    let mut area = 0.0;
    for &(precision, hit) in ranks.iter().rev() {
        envelope = envelope.max(precision);
        if hit {
            area += envelope;
        }
    }
    let ap = area / positives as f64;
    Some(ap)
}

/// Mean over the classes that have ground truth of the AP at `iou_threshold`,
/// and each class's AP (`None` without ground truth).
pub fn mean_ap(
    detections: &[Vec<Detection>],
    truths: &[Vec<BBox>],
    classes: usize,
    iou_threshold: f64,
) -> (f64, Vec<Option<f64>>) {
    let per: Vec<Option<f64>> = (0..classes)
        .map(|c| average_precision(detections, truths, c, iou_threshold))
        .collect();
    let present: Vec<f64> = per.iter().flatten().copied().collect();
    let mean = if present.is_empty() {
        0.0
    } else {
        present.iter().sum::<f64>() / present.len() as f64
    };
    (mean, per)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(class: usize, top: f64, left: f64, side: f64) -> BBox {
        BBox {
            class,
            top,
            left,
            bottom: top + side,
            right: left + side,
        }
    }

    fn det(b: BBox, score: f64) -> Detection {
        Detection { bbox: b, score }
    }

    #[test]
    fn perfect_detections_score_one_and_none_score_zero() {
        let truths = vec![
            vec![square(0, 0.0, 0.0, 4.0), square(1, 5.0, 5.0, 3.0)],
            vec![square(0, 2.0, 2.0, 6.0)],
        ];
        let dets: Vec<Vec<Detection>> = truths
            .iter()
            .map(|t| t.iter().map(|&b| det(b, 0.9)).collect())
            .collect();
        for t in coco_thresholds() {
            assert_eq!(mean_ap(&dets, &truths, 3, t).0, 1.0);
        }
        assert_eq!(mean_ap(&[vec![], vec![]], &truths, 3, 0.5).0, 0.0);
        // Class 2 has no ground truth: left out, not counted as 0 or 1.
        assert_eq!(mean_ap(&dets, &truths, 3, 0.5).1[2], None);
    }

    #[test]
    fn ranking_matters_hand_computed() {
        // Two truths; ranked detections: false (0.9), true (0.8), true (0.7).
        // (recall, precision): (0, 0), (1/2, 1/2), (1, 2/3): envelope 2/3 over all recall -> AP = 2/3.
        let truths = vec![vec![square(0, 0.0, 0.0, 4.0), square(0, 10.0, 10.0, 4.0)]];
        let dets = vec![vec![
            det(square(0, 20.0, 20.0, 4.0), 0.9),
            det(square(0, 0.0, 0.0, 4.0), 0.8),
            det(square(0, 10.0, 10.0, 4.0), 0.7),
        ]];
        let ap = average_precision(&dets, &truths, 0, 0.5).unwrap();
        assert!((ap - 2.0 / 3.0).abs() < 1e-12, "{ap}");
        // Only the lower-ranked true one: recall 1/2 at precision 1/2 -> AP = 1/4.
        let ap = average_precision(&[vec![dets[0][0], dets[0][1]]], &truths, 0, 0.5).unwrap();
        assert!((ap - 0.25).abs() < 1e-12, "{ap}");
        // A duplicate of a matched box is a false positive.
        let dup = vec![vec![dets[0][1], det(square(0, 0.0, 0.0, 4.0), 0.6)]];
        let ap = average_precision(&dup, &truths, 0, 0.5).unwrap();
        assert!((ap - 0.5).abs() < 1e-12, "{ap}");
    }
}
