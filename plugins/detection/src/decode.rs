//! Files to examples, for two datasets:
//!
//! - `subcortical`: slices of Colin27 (`ch2.nii.gz`) with the boxes of the
//!   AAL structures (`aal.nii.gz`, same grid) present in each: hippocampus
//!   37/38, amygdala 41/42, caudate 71/72, putamen 73/74, thalamus 77/78.
//!   Each label (one per hemisphere) is one box: the bounding box of its
//!   pixels in the output image. Every slice that holds any of them is an
//!   example. Ids `ch2:<axis>:<index>`.
//! - `nuclei`: stardist's `img2d.tif` tiled into `crop x crop` crops (every
//!   `stride` pixels), each fitted to the output size, with one `nucleus` box
//!   per instance of `mask2d.tif` visible in it. Ids `img2d:tile:<index>`,
//!   tiles numbered row-major.
//!
//! Boxes are taken from the label map after it is resampled (nearest
//! neighbour) onto the output grid, augmentation included, so they are exact
//! for the image the model sees; instances with fewer than `min_pixels`
//! output pixels are not boxes. Augmented copies append `:aug<k>`.

use crate::CLASSES;
use crate::target::{BBox, encode};
use amat_plugin_sdk::{DecodeRequest, Dense, Example};
use medimg::augment::{Jitter, JitterRange};
use medimg::{Axis, Fit, Image2D, nifti, tiff};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use std::collections::BTreeMap;

/// AAL label ids of each subcortical class (index into [`CLASSES`]).
pub const SUBCORTICAL: [(u32, usize); 10] = [
    (37, 0),
    (38, 0),
    (41, 1),
    (42, 1),
    (71, 2),
    (72, 2),
    (73, 3),
    (74, 3),
    (77, 4),
    (78, 4),
];
/// Class index of stardist's nuclei.
pub const NUCLEUS: usize = 5;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// `subcortical` | `nuclei`; empty: whichever the files are.
    pub dataset: String,
    /// Output height and width in pixels.
    pub size: usize,
    /// Instances with fewer output pixels are not boxes.
    pub min_pixels: usize,
    // subcortical
    pub axis: String,
    /// Slices to decode; empty: every slice holding a structure.
    pub indices: Vec<usize>,
    pub image: String,
    pub labels: String,
    // nuclei
    pub crop: usize,
    /// Tile step in pixels; 0: `crop` (no overlap).
    pub stride: usize,
    /// Intensity quantiles of the whole volume / image mapped to 0 and 1.
    pub quantiles: Option<[f64; 2]>,
    /// Augmented copies per example.
    pub augment: usize,
    pub seed: u64,
    pub rotation_deg: f64,
    pub zoom: f64,
    pub shift_px: f64,
    pub log_gamma: f64,
    pub contrast: f64,
    pub brightness: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dataset: String::new(),
            size: 64,
            min_pixels: 2,
            axis: "axial".into(),
            indices: Vec::new(),
            image: "ch2.nii.gz".into(),
            labels: "aal.nii.gz".into(),
            crop: 96,
            stride: 0,
            quantiles: None,
            augment: 0,
            seed: 0,
            rotation_deg: 10.0,
            zoom: 0.1,
            shift_px: 4.0,
            log_gamma: 0.2,
            contrast: 0.1,
            brightness: 0.05,
        }
    }
}

impl Options {
    fn jitter_range(&self) -> JitterRange {
        JitterRange {
            rotation_deg: self.rotation_deg,
            zoom: self.zoom,
            shift_px: self.shift_px,
            log_gamma: self.log_gamma,
            contrast: self.contrast,
            brightness: self.brightness,
        }
    }
}

/// Bounding boxes (edge coordinates) of the labels of `map` that `class_of`
/// knows, one per label value, in ascending label order.
pub fn boxes_from_labels(
    map: &Image2D,
    class_of: impl Fn(u32) -> Option<usize>,
    min_pixels: usize,
) -> Vec<BBox> {
    // label -> (class, top, left, bottom, right, pixels)
    let mut found: BTreeMap<u32, (usize, usize, usize, usize, usize, usize)> = BTreeMap::new();
    for r in 0..map.h {
        for c in 0..map.w {
            let v = map.get(r, c);
            if v <= 0.0 {
                continue;
            }
            let label = v.round() as u32;
            let Some(class) = class_of(label) else {
                continue;
            };
            let e = found.entry(label).or_insert((class, r, c, r, c, 0));
            e.1 = e.1.min(r);
            e.2 = e.2.min(c);
            e.3 = e.3.max(r);
            e.4 = e.4.max(c);
            e.5 += 1;
        }
    }
    found
        .into_values()
        .filter(|e| e.5 >= min_pixels.max(1))
        .map(|(class, t, l, b, r, _)| BBox {
            class,
            top: t as f64,
            left: l as f64,
            bottom: (b + 1) as f64,
            right: (r + 1) as f64,
        })
        .collect()
}

/// One example: `image` and `labels` through `fit` and `jitter`.
fn example(
    id: String,
    image: &Image2D,
    labels: &Image2D,
    class_of: &dyn Fn(u32) -> Option<usize>,
    jitter: &Jitter,
    o: &Options,
) -> Result<Example, String> {
    let fit = Fit::new(image.h, image.w, o.size);
    let pixels = jitter.image(image, &fit, o.size);
    let map = jitter.labels(labels, &fit, o.size);
    let boxes = boxes_from_labels(&map, class_of, o.min_pixels);
    let (target, _dropped) = encode(&boxes, o.size);
    let s = o.size as i64;
    Ok(Example {
        id,
        image: Dense::new(vec![1, s, s], pixels.data)?,
        target: Dense::new(vec![crate::target::TARGET_CHANNELS as i64, s, s], target)?,
    })
}

/// The example of `image` / `labels` and its augmented copies.
fn with_copies(
    out: &mut Vec<Example>,
    id: String,
    image: &Image2D,
    labels: &Image2D,
    class_of: &dyn Fn(u32) -> Option<usize>,
    stream: u64,
    o: &Options,
) -> Result<(), String> {
    out.push(example(
        id.clone(),
        image,
        labels,
        class_of,
        &Jitter::NONE,
        o,
    )?);
    // One stream per example: a copy does not depend on which others were asked for.
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    rng.set_stream(stream);
    let range = o.jitter_range();
    for k in 0..o.augment {
        let jitter = Jitter::draw(&range, o.size, |m| {
            if m > 0.0 { rng.gen_range(-m..=m) } else { 0.0 }
        });
        out.push(example(
            format!("{id}:aug{k}"),
            image,
            labels,
            class_of,
            &jitter,
            o,
        )?);
    }
    Ok(())
}

fn subcortical(request: &DecodeRequest, o: &Options) -> Result<Vec<Example>, String> {
    let axis = Axis::parse(&o.axis).map_err(|e| format!("detection decode options: {e}"))?;
    let volume = nifti::read(&o.image, request.file(&o.image)?)?;
    let atlas = nifti::read(&o.labels, request.file(&o.labels)?)?;
    volume.check_same_grid(&o.image, &atlas, &o.labels)?;
    let [qlo, qhi] = o.quantiles.unwrap_or([0.0, 0.995]);
    let (lo, hi) = volume.quantiles(qlo, qhi);
    let class_of = |label: u32| SUBCORTICAL.iter().find(|s| s.0 == label).map(|s| s.1);
    let indices: Vec<usize> = if o.indices.is_empty() {
        (0..volume.slices(axis)).collect()
    } else {
        o.indices.clone()
    };
    let source = o.image.trim_end_matches(".gz").trim_end_matches(".nii");
    let mut out = Vec::new();
    for index in indices {
        let labels = atlas.slice(axis, index)?;
        if !labels
            .data
            .iter()
            .any(|&v| v > 0.0 && class_of(v.round() as u32).is_some())
        {
            continue;
        }
        let image = volume.slice(axis, index)?.rescale(lo, hi);
        let id = format!("{source}:{}:{index}", axis.name());
        with_copies(&mut out, id, &image, &labels, &class_of, index as u64, o)?;
    }
    Ok(out)
}

/// The `crop x crop` window of `img` at `(top, left)`.
fn window(img: &Image2D, top: usize, left: usize, crop: usize) -> Image2D {
    let mut data = Vec::with_capacity(crop * crop);
    for r in top..top + crop {
        data.extend_from_slice(&img.data[r * img.w + left..r * img.w + left + crop]);
    }
    Image2D::new(crop, crop, data)
}

fn nuclei(request: &DecodeRequest, o: &Options) -> Result<Vec<Example>, String> {
    let (image_name, mask_name) = ("img2d.tif", "mask2d.tif");
    let image = tiff::read_gray(image_name, request.file(image_name)?)?;
    let mask = tiff::read_gray(mask_name, request.file(mask_name)?)?;
    if (mask.h, mask.w) != (image.h, image.w) {
        return Err(format!(
            "{mask_name}: mask is {}x{}, the image {image_name} {}x{}",
            mask.h, mask.w, image.h, image.w
        ));
    }
    let crop = o.crop;
    if crop == 0 || crop > image.h.min(image.w) {
        return Err(format!(
            "detection decode options: crop {crop} does not fit the {}x{} image {image_name}",
            image.h, image.w
        ));
    }
    let stride = if o.stride == 0 { crop } else { o.stride };
    let [qlo, qhi] = o.quantiles.unwrap_or([0.01, 0.998]);
    let image = image.normalize_percentile(qlo, qhi);
    let class_of = |_: u32| Some(NUCLEUS);
    let starts = |n: usize| (0..=(n - crop) / stride).map(move |i| i * stride);
    let mut out = Vec::new();
    let mut index = 0;
    for top in starts(image.h) {
        for left in starts(image.w) {
            let id = format!("img2d:tile:{index}");
            let (img, lab) = (
                window(&image, top, left, crop),
                window(&mask, top, left, crop),
            );
            with_copies(&mut out, id, &img, &lab, &class_of, index as u64, o)?;
            index += 1;
        }
    }
    Ok(out)
}

pub fn decode(request: &DecodeRequest) -> Result<Vec<Example>, String> {
    let o: Options = if request.options.trim().is_empty() {
        Options::default()
    } else {
        serde_json::from_str(&request.options)
            .map_err(|e| format!("detection decode options: {e}"))?
    };
    if !(8..=1024).contains(&o.size) {
        return Err(format!(
            "detection decode options: size {} is not within 8..=1024",
            o.size
        ));
    }
    let has = |n: &str| request.files.iter().any(|f| f.name == n);
    let dataset = match o.dataset.as_str() {
        "" if has("img2d.tif") => "nuclei",
        "" if has(&o.image) => "subcortical",
        "" => {
            let names: Vec<&str> = request.files.iter().map(|f| f.name.as_str()).collect();
            return Err(format!(
                "detection decode: neither `img2d.tif` nor `{}` among the files {names:?}",
                o.image
            ));
        }
        d => d,
    };
    match dataset {
        "subcortical" => subcortical(request, &o),
        "nuclei" => nuclei(request, &o),
        d => Err(format!(
            "detection decode options: dataset `{d}` is not `subcortical` or `nuclei` (classes: {})",
            CLASSES.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_from_a_label_map() {
        #[rustfmt::skip]
        let map = Image2D::new(4, 5, vec![
            0.0, 37.0, 37.0, 0.0, 0.0,
            0.0, 37.0, 0.0, 0.0, 74.0,
            0.0, 0.0, 0.0, 0.0, 0.0,
            9.0, 9.0, 9.0, 0.0, 0.0,
        ]);
        let class_of = |l: u32| SUBCORTICAL.iter().find(|s| s.0 == l).map(|s| s.1);
        let b = boxes_from_labels(&map, class_of, 1);
        assert_eq!(b.len(), 2, "{b:?}");
        assert_eq!(
            b[0],
            BBox {
                class: 0,
                top: 0.0,
                left: 1.0,
                bottom: 2.0,
                right: 3.0
            }
        );
        assert_eq!(
            b[1],
            BBox {
                class: 3,
                top: 1.0,
                left: 4.0,
                bottom: 2.0,
                right: 5.0
            }
        );
        // A single pixel is too small at min_pixels = 2.
        assert_eq!(boxes_from_labels(&map, class_of, 2).len(), 1);
    }
}
