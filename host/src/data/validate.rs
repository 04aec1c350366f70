//! Checks on every decoded example at prepare time, so a mistake in a
//! decoder stops there, naming the example, instead of training into
//! something misleading (a 0-255 image declared [0, 1] makes every attack
//! budget meaningless; a [H, W] image fails deep inside a batch).
//!
//! When the host normalises the images (the field's scheme, see
//! [`super::normalize`]), the plugin returns raw intensities, so the
//! declared range does not apply to them; the normalisation then checks
//! what makes its statistics meaningful (a non-zero region, a non-constant
//! image, a CT foreground), naming the case.

use amat_plugin_sdk::{Example, TargetKind, TaskInfo};

/// What is wrong with `e`, if anything: the image is [input_channels, H, W]
/// or [input_channels, D, H, W] with finite values inside the task's
/// declared intensity range (unless `raw`: the host normalises them); the
/// target is finite and, for class maps, shaped like the image's spatial
/// axes (or with a leading 1) of class indices below the output channel count.
pub fn check_example(e: &Example, info: &TaskInfo, raw: bool) -> Result<(), String> {
    let id = crate::plugin::one_line_text(&e.id);
    let channels = info.input_channels as i64;
    let shape = &e.image.shape;
    if !(shape.len() == 3 || shape.len() == 4) || shape[0] != channels {
        return Err(format!(
            "example `{id}` has image shape {shape:?}, expected [{channels}, H, W] or [{channels}, D, H, W] (the task `{}` takes {channels} channel(s))",
            info.name
        ));
    }
    if let Some(i) = e.image.data.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "example `{id}`: image value {} at flat index {i} is not finite",
            e.image.data[i]
        ));
    }
    let (lo, hi) = e
        .image
        .data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (min, max) = (info.intensity_min, info.intensity_max);
    // Rounding slack, relative to the declared span.
    let slack = 1e-5 * (max - min).abs().max(1.0);
    if !raw && (lo < min - slack || hi > max + slack) {
        return Err(format!(
            "example `{id}`: image values span [{lo}, {hi}] but the task `{}` declares intensities in [{min}, {max}]; \
             scale images into the declared range in the plugin's decode (e.g. divide 8-bit values by 255), \
             or declare the range the images have (intensity_min/intensity_max in describe)",
            info.name
        ));
    }
    if let Some(i) = e.target.data.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "example `{id}`: target value {} at flat index {i} is not finite",
            e.target.data[i]
        ));
    }
    if info.target_kind == TargetKind::ClassMap {
        let spatial = &shape[1..];
        let t = &e.target.shape;
        if !(t == spatial || (t.len() == spatial.len() + 1 && t[0] == 1 && &t[1..] == spatial)) {
            return Err(format!(
                "example `{id}`: a class-map target must be shaped like its image's spatial axes {spatial:?} (or with a leading 1), got {t:?}"
            ));
        }
        let classes = info.output_channels as f32;
        if let Some(v) = e
            .target
            .data
            .iter()
            .find(|v| v.fract() != 0.0 || **v < 0.0 || **v >= classes)
        {
            return Err(format!(
                "example `{id}`: target value {v} is not a class index in 0..{} (the task's output channels)",
                info.output_channels
            ));
        }
    }
    Ok(())
}

/// Whether `other` can be batched with `first`: the same image and target
/// shapes, except that volumes ([C, D, H, W] images) may differ in their
/// spatial shape (training cuts patches of one size from them, evaluation
/// slides its window over each), as long as channels and the target's
/// leading axes agree.
pub fn check_same_shapes(
    first: (&str, &[i64], &[i64]),
    other: (&str, &[i64], &[i64]),
) -> Result<(), String> {
    let (image, target) = (first.1, first.2);
    let volumes = image.len() == 4 && other.1.len() == 4;
    let alike = if volumes {
        let lead = |t: &[i64]| t[..t.len().saturating_sub(3)].to_vec();
        image[0] == other.1[0] && target.len() == other.2.len() && lead(target) == lead(other.2)
    } else {
        image == other.1 && target == other.2
    };
    if !alike {
        return Err(format!(
            "example `{}` has image {:?} and target {:?}, example `{}` image {:?} and target {:?}; \
             every example needs the same shapes{}",
            crate::plugin::one_line_text(other.0),
            other.1,
            other.2,
            crate::plugin::one_line_text(first.0),
            image,
            target,
            if volumes {
                " but for the spatial size of volumes"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use amat_plugin_sdk::Dense;

    fn info() -> TaskInfo {
        TaskInfo {
            name: "seg".into(),
            version: "0".into(),
            description: String::new(),
            input_channels: 1,
            output_channels: 3,
            target_kind: TargetKind::ClassMap,
            tau: 0.1,
            intensity_min: 0.0,
            intensity_max: 1.0,
            metric_names: vec![],
            scores: vec![],
        }
    }

    fn example(image: Vec<f32>, target: Vec<f32>) -> Example {
        Example {
            id: "c:axial:1".into(),
            image: Dense::new(vec![1, 2, 2], image).unwrap(),
            target: Dense::new(vec![2, 2], target).unwrap(),
        }
    }

    #[test]
    fn range_finiteness_and_classes() {
        let ok = example(vec![0.0, 0.5, 1.0, 0.2], vec![0.0, 1.0, 2.0, 0.0]);
        assert_eq!(check_example(&ok, &info(), false), Ok(()));
        let bright = example(vec![0.0, 255.0, 3.0, 1.0], vec![0.0; 4]);
        assert_eq!(
            check_example(&bright, &info(), true),
            Ok(()),
            "raw: the host normalises"
        );
        let e = check_example(&bright, &info(), false).unwrap_err();
        assert!(
            e.contains("`c:axial:1`") && e.contains("[0, 255]") && e.contains("255"),
            "{e}"
        );
        let e = check_example(
            &example(vec![f32::NAN, 0.0, 0.0, 0.0], vec![0.0; 4]),
            &info(),
            true,
        )
        .unwrap_err();
        assert!(e.contains("not finite"), "{e}");
        let e = check_example(
            &example(vec![0.0; 4], vec![0.0, 3.0, 0.0, 0.0]),
            &info(),
            false,
        )
        .unwrap_err();
        assert!(e.contains("target value 3"), "{e}");
        let mut flat = ok.clone();
        flat.image = Dense::new(vec![2, 2], vec![0.0; 4]).unwrap();
        assert!(
            check_example(&flat, &info(), false)
                .unwrap_err()
                .contains("[1, H, W]")
        );
        // A volume [1, D, H, W] with its class map [D, H, W]; a mismatched map is refused.
        let mut volume = ok.clone();
        volume.image = Dense::new(vec![1, 2, 1, 2], vec![0.5; 4]).unwrap();
        volume.target = Dense::new(vec![2, 1, 2], vec![1.0; 4]).unwrap();
        assert_eq!(check_example(&volume, &info(), false), Ok(()));
        volume.target = Dense::new(vec![2, 2], vec![1.0; 4]).unwrap();
        let e = check_example(&volume, &info(), false).unwrap_err();
        assert!(e.contains("[2, 1, 2]"), "{e}");
    }
}
