//! Hard Dice as nnU-Net reports it. Per foreground class (background, class
//! 0, is never scored) and per sample: 2 |P ∩ Y| / (|P| + |Y|), where a sample
//! in which the class is absent from both target and prediction is left out
//! of that class's average (it is undefined there, not a perfect 1.0). Each
//! class's value is the mean over the samples that define it; `dice_mean` is
//! the mean over the classes that have a value.
//!
//! A value no sample defines is not returned: the host accepts only finite
//! metrics, and it records the gap as missing.

use crate::decode::CLASS_NAMES;
use amat_plugin_sdk::{Metric, Tensor};

/// `dice_<class>`: the class's name when the model has the default label
/// set's channel count, else its index.
pub fn class_metric(c: usize, classes: usize) -> String {
    if classes == CLASS_NAMES.len() {
        format!("dice_{}", CLASS_NAMES[c])
    } else {
        format!("dice_{c}")
    }
}

/// Every metric name, `dice_mean` first, then the foreground classes.
pub fn names(classes: usize) -> Vec<String> {
    std::iter::once("dice_mean".to_string())
        .chain((1..classes).map(|c| class_metric(c, classes)))
        .collect()
}

/// Per foreground class (index c - 1 for class c), the mean Dice over the
/// samples where the class occurs in target or prediction; `None` where no
/// sample does. The inputs are per-sample, per-class pixel counts laid out
/// [batch, classes]: shared, predicted, true.
pub fn per_class(inter: &[f32], pred: &[f32], truth: &[f32], classes: usize) -> Vec<Option<f64>> {
    let batch = inter.len().checked_div(classes).unwrap_or(0);
    (1..classes)
        .map(|c| {
            let scores: Vec<f64> = (0..batch)
                .map(|b| b * classes + c)
                .filter(|&i| pred[i] + truth[i] > 0.0)
                .map(|i| 2.0 * inter[i] as f64 / (pred[i] as f64 + truth[i] as f64))
                .collect();
            (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64)
        })
        .collect()
}

/// `dice_mean` and `dice_<class>` of logits [B, C, *spatial] (images or
/// volumes) against a one-hot target of the same shape.
pub fn dice_metrics(pred: &Tensor, y: &Tensor) -> Result<Vec<Metric>, String> {
    let shape = pred.shape();
    if !(shape.len() == 4 || shape.len() == 5) || y.shape() != shape {
        return Err(format!(
            "metrics: prediction must be [B, C, H, W] or [B, C, D, H, W] and match the target, \
             got {shape:?} and {:?}",
            y.shape()
        ));
    }
    let classes = shape[1] as usize;
    let hard = crate::classes_first(&pred.argmax(1, false).one_hot(shape[1]), shape.len());
    let spatial = crate::spatial_dims(shape.len());
    let counts = |t: &Tensor| t.sum(&spatial, false).to_vec();
    let dice = per_class(&counts(&(&hard * y)), &counts(&hard), &counts(y), classes);
    let defined: Vec<f64> = dice.iter().flatten().copied().collect();
    // `dice_mean` is always there (the one described metric): with no
    // foreground class anywhere in the set there was nothing to find and
    // nothing was found, 1.
    let mean = if defined.is_empty() {
        1.0
    } else {
        defined.iter().sum::<f64>() / defined.len() as f64
    };
    let mut out = vec![Metric {
        name: "dice_mean".into(),
        value: mean,
    }];
    for (i, d) in dice.iter().enumerate() {
        if let Some(value) = d {
            out.push(Metric {
                name: class_metric(i + 1, classes),
                value: *value,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts of one sample and 3 classes from its maps.
    fn counts(pred: &[usize], truth: &[usize]) -> [Vec<f32>; 3] {
        let mut c = [vec![0.0; 3], vec![0.0; 3], vec![0.0; 3]];
        for (&p, &t) in pred.iter().zip(truth) {
            c[1][p] += 1.0;
            c[2][t] += 1.0;
            if p == t {
                c[0][p] += 1.0;
            }
        }
        c
    }

    #[test]
    fn a_class_absent_from_both_is_left_out_not_counted_as_one() {
        // Sample 1 holds classes 1 and 2; sample 2 holds only class 1, so
        // class 2 is absent from both its target and its prediction there.
        let a = counts(&[0, 1, 1, 2], &[0, 1, 2, 2]);
        let b = counts(&[1, 1, 0, 0], &[1, 0, 0, 0]);
        let cat = |i: usize| [a[i].clone(), b[i].clone()].concat();
        let dice = per_class(&cat(0), &cat(1), &cat(2), 3);
        // Class 1: sample 1 2*1/(2+1), sample 2 2*1/(2+1) -> 2/3.
        assert!((dice[0].unwrap() - 2.0 / 3.0).abs() < 1e-12, "{dice:?}");
        // Class 2: sample 1 only, 2*1/(1+2) = 2/3; counting sample 2 as 1.0
        // would give 5/6.
        assert!((dice[1].unwrap() - 2.0 / 3.0).abs() < 1e-12, "{dice:?}");
    }

    #[test]
    fn a_class_no_sample_holds_has_no_value_and_a_false_positive_scores_zero() {
        let a = counts(&[0, 0, 1, 1], &[0, 0, 0, 0]);
        let dice = per_class(&a[0], &a[1], &a[2], 3);
        assert_eq!(dice, vec![Some(0.0), None]);
    }

    #[test]
    fn names_follow_the_label_set() {
        let n = names(CLASS_NAMES.len());
        assert_eq!(n[0], "dice_mean");
        assert_eq!(n[1], "dice_frontal");
        assert_eq!(n.len(), CLASS_NAMES.len());
        assert_eq!(names(3), vec!["dice_mean", "dice_1", "dice_2"]);
    }
}
