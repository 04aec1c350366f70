//! Decoding Colin27 (`ch2`) slices with class maps from the AAL atlas
//! ("lobes", the default) or from the brain-extracted scan ("brain").
//!
//! Options (JSON, every key optional):
//! - `axis`: "axial" (default) | "coronal" | "sagittal"
//! - `size`: side of the square output in pixels (default 64)
//! - `labels`: "lobes" (default): the 8 classes of [`CLASS_NAMES`] from AAL's
//!   116 regions grouped by name ([`LOBE_OF_REGION`]); "brain": 0 = outside,
//!   1 = inside the brain (`ch2bet > 0`), a coarse variant that uses 2 of the
//!   model's 8 output channels (the others never occur in its targets).
//! - `slices`: `[first, end)` to keep only those slice indices
//! - `augment`: extra warped copies per slice (default 0), `seed` (default 0)
//! - `image`, `brain`, `atlas`, `atlas_names`: which request file is which
//!   (defaults: the mricron names `ch2.nii.gz`, `ch2bet.nii.gz`, `aal.nii.gz`,
//!   `aal.nii.txt`)
//!
//! - `case` (set by the host for datasets of many cases: nnU-Net, MSD, listed
//!   cases): `{"id", "images": [file per channel], "label": file, "labels":
//!   {"<value>": "<class name>"}}`. The image channels and the label map are
//!   decoded instead of the Colin27 files; label values are the classes and
//!   must be named in `labels` and below the model's 8 output channels.
//! - `intensity`: "percentile" (default) | "raw" (values as stored: for data
//!   already in [0, 1], or when the host normalises, which it says with
//!   `case.intensity = "raw"`, the field's scheme for datasets of cases).
//! - `volume`: `true` decodes each case (or the Colin27 volume) into one
//!   example: the whole volume [C, D, H, W] (D = z, H = y, W = x of the
//!   NIfTI grid) with its class map [D, H, W], id `<source>:volume:0`,
//!   instead of its labelled 2D slices (`size`, `axis`, `slices` and
//!   `augment` concern slices and are refused). Then:
//!   - `crop`: "nonzero" (default, as nnU-Net: the bounding box of the
//!     voxels where any image channel is non-zero) | "foreground" (of the
//!     label map's non-background voxels: it uses the label, so it suits
//!     region-of-interest experiments only) | "none"; grown by `margin`
//!     voxels (default 2) on each side, within the grid;
//!   - `spacing`: `[x, y, z]` mm, resample to this voxel size after the
//!     crop (trilinear image, nearest-neighbour labels; the voxel size read
//!     from the NIfTI header's pixdim); default: keep the grid.
//!
//! Images are scaled to [0, 1] by the whole volume's 0.5 and 99.5
//! percentiles (per channel, so slices stay comparable), then fitted into
//! the square (aspect kept, zero padding); labels are resampled by nearest
//! neighbour. Slices whose label map is all background are left out.
//! Volumes are scaled alike (after the crop and resampling) unless raw.

use amat_plugin_sdk::{DecodeRequest, Dense, Example};
use medimg::volume::bounding_box;
use medimg::{Affine2, Axis, Image2D, Interp, Volume, nifti};
use serde::Deserialize;

pub use medimg::atlas::{CLASS_NAMES, LOBE_OF_REGION, classes_from_atlas, lobe_table};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Labels {
    Lobes,
    Brain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Intensity {
    Percentile,
    Raw,
}

/// One case of a many-case dataset, as the host describes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub id: String,
    pub images: Vec<String>,
    pub label: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// "raw" when the host normalises the intensities itself.
    #[serde(default)]
    pub intensity: Option<Intensity>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crop {
    Nonzero,
    Foreground,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    pub case: Option<Case>,
    pub intensity: Intensity,
    pub axis: String,
    pub size: usize,
    pub labels: Labels,
    pub slices: Option<[usize; 2]>,
    pub augment: usize,
    pub seed: u64,
    pub image: String,
    pub brain: String,
    pub atlas: String,
    pub atlas_names: String,
    pub volume: bool,
    pub crop: Crop,
    pub margin: usize,
    pub spacing: Option<[f32; 3]>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            case: None,
            intensity: Intensity::Percentile,
            axis: "axial".into(),
            size: 64,
            labels: Labels::Lobes,
            slices: None,
            augment: 0,
            seed: 0,
            image: "ch2.nii.gz".into(),
            brain: "ch2bet.nii.gz".into(),
            atlas: "aal.nii.gz".into(),
            atlas_names: "aal.nii.txt".into(),
            volume: false,
            crop: Crop::Nonzero,
            margin: 2,
            spacing: None,
        }
    }
}

impl Options {
    pub fn parse(json: &str) -> Result<Self, String> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let o: Options =
            serde_json::from_str(json).map_err(|e| format!("segmentation decode options: {e}"))?;
        if !(8..=1024).contains(&o.size) {
            return Err(format!(
                "segmentation decode options: size {} is not between 8 and 1024",
                o.size
            ));
        }
        Axis::parse(&o.axis).map_err(|e| format!("segmentation decode options: {e}"))?;
        if let Some(s) = o.spacing
            && !s.iter().all(|v| v.is_finite() && *v > 0.0)
        {
            return Err(format!(
                "segmentation decode options: spacing {s:?} must be three positive sizes in mm"
            ));
        }
        if o.volume {
            let slice_only = [
                ("size", json_has(json, "size")),
                ("axis", json_has(json, "axis")),
                ("slices", o.slices.is_some()),
                ("augment", o.augment > 0),
            ];
            if let Some((k, _)) = slice_only.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "segmentation decode options: `{k}` concerns slices; `volume` decodes whole volumes"
                ));
            }
        } else if o.spacing.is_some() {
            return Err(
                "segmentation decode options: `spacing` resamples volumes: set `volume = true`"
                    .into(),
            );
        }
        Ok(o)
    }
}

fn json_has(json: &str, key: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get(key).cloned())
        .is_some()
}

fn load(request: &DecodeRequest, file: &str) -> Result<Volume, String> {
    nifti::read(file, request.file(file)?)
}

/// `ch2.nii.gz` -> `ch2`.
fn source_name(file: &str) -> &str {
    let base = file.rsplit('/').next().unwrap_or(file);
    let base = base.strip_suffix(".gz").unwrap_or(base);
    base.strip_suffix(".nii").unwrap_or(base)
}

pub fn decode(request: &DecodeRequest) -> Result<Vec<Example>, String> {
    let o = Options::parse(&request.options)?;
    if let Some(case) = &o.case {
        return decode_case(request, &o, case);
    }
    let image = load(request, &o.image)?;
    let labels = match o.labels {
        Labels::Brain => {
            let brain = load(request, &o.brain)?;
            image.check_same_grid(&o.image, &brain, &o.brain)?;
            let data = brain.data.iter().map(|&v| f32::from(v > 0.0)).collect();
            Volume { data, ..brain }
        }
        Labels::Lobes => {
            let names = std::str::from_utf8(request.file(&o.atlas_names)?)
                .map_err(|e| format!("{}: not UTF-8 text ({e})", o.atlas_names))?;
            let table = lobe_table(&o.atlas_names, names)?;
            let atlas = load(request, &o.atlas)?;
            image.check_same_grid(&o.image, &atlas, &o.atlas)?;
            classes_from_atlas(&atlas, &table, &o.atlas, &o.atlas_names)?
        }
    };
    let images = [(o.image.as_str(), image)];
    if o.volume {
        return volume(&o, o.intensity, source_name(&o.image), &images, &labels);
    }
    slices(&o, o.intensity, source_name(&o.image), &images, &labels)
}

/// A case of a many-case dataset: its image channels and its label map,
/// whose values must be classes the dataset names.
fn decode_case(request: &DecodeRequest, o: &Options, case: &Case) -> Result<Vec<Example>, String> {
    if case.images.is_empty() {
        return Err(format!("case `{}`: no image file", case.id));
    }
    let label_file = case.label.as_deref().ok_or_else(|| {
        format!(
            "case `{}` has no label map: segmentation trains on labelled cases only",
            case.id
        )
    })?;
    let images = case
        .images
        .iter()
        .map(|name| load(request, name).map(|v| (name.as_str(), v)))
        .collect::<Result<Vec<_>, _>>()?;
    let (first_name, first) = &images[0];
    for (name, v) in &images[1..] {
        first.check_same_grid(first_name, v, name)?;
    }
    let labels = load(request, label_file)?;
    first.check_same_grid(first_name, &labels, label_file)?;
    let mut named = Vec::new();
    for (k, name) in &case.labels {
        let v: u32 = k.parse().map_err(|_| {
            format!(
                "case `{}`: label key `{k}` ({name}) is not a value",
                case.id
            )
        })?;
        if v >= CLASS_NAMES.len() as u32 {
            return Err(format!(
                "case `{}`: class {v} ({name}) is beyond the task's {} output channels",
                case.id,
                CLASS_NAMES.len()
            ));
        }
        named.push(v as f32);
    }
    let known = |v: f32| {
        if named.is_empty() {
            v.fract() == 0.0 && (0.0..CLASS_NAMES.len() as f32).contains(&v)
        } else {
            named.contains(&v)
        }
    };
    if let Some(v) = labels.data.iter().find(|v| !known(**v)) {
        return Err(format!(
            "{label_file}: label value {v} is not a class of the dataset (labels: {:?})",
            case.labels
        ));
    }
    let intensity = case.intensity.unwrap_or(o.intensity);
    if o.volume {
        return volume(o, intensity, &case.id, &images, &labels);
    }
    slices(o, intensity, &case.id, &images, &labels)
}

/// One example of the whole volume: cropped, resampled, scaled.
fn volume(
    o: &Options,
    intensity: Intensity,
    source: &str,
    images: &[(&str, Volume)],
    labels: &Volume,
) -> Result<Vec<Example>, String> {
    let dims = labels.dims;
    let bbox = match o.crop {
        Crop::None => Some([[0, dims[0]], [0, dims[1]], [0, dims[2]]]),
        Crop::Nonzero => bounding_box(dims, o.margin, |i| {
            images.iter().any(|(_, v)| v.data[i] != 0.0)
        }),
        Crop::Foreground => bounding_box(dims, o.margin, |i| labels.data[i] != 0.0),
    };
    let Some(bbox) = bbox else {
        return Err(format!(
            "{}: nothing to crop to: no {} voxel",
            images[0].0,
            if o.crop == Crop::Foreground {
                "foreground"
            } else {
                "non-zero"
            }
        ));
    };
    let grid = |v: &Volume, interp| {
        let v = v.crop(bbox);
        match o.spacing {
            Some(s) => v.resample(s, interp),
            None => v,
        }
    };
    let labels = grid(labels, Interp::Nearest);
    let mut data = Vec::with_capacity(labels.data.len() * images.len());
    for (_, v) in images {
        let v = grid(v, Interp::Bilinear);
        match intensity {
            Intensity::Percentile => {
                let (lo, hi) = v.quantiles(0.005, 0.995);
                data.extend(medimg::image2d::unit_range(&v.data, lo, hi));
            }
            Intensity::Raw => data.extend_from_slice(&v.data),
        }
    }
    let [x, y, z] = labels.dims.map(|d| d as i64);
    Ok(vec![Example {
        id: format!("{source}:volume:0"),
        image: Dense::new(vec![images.len() as i64, z, y, x], data)?,
        target: Dense::new(vec![z, y, x], labels.data)?,
    }])
}

/// Examples of the labelled slices of `images` (one volume per channel),
/// with their class map from `labels`; ids `<source>:<axis>:<index>`.
fn slices(
    o: &Options,
    intensity: Intensity,
    source: &str,
    images: &[(&str, Volume)],
    labels: &Volume,
) -> Result<Vec<Example>, String> {
    let axis = Axis::parse(&o.axis)?;
    let ranges: Vec<(f32, f32)> = images
        .iter()
        .map(|(_, v)| v.quantiles(0.005, 0.995))
        .collect();
    let (first_name, first) = &images[0];
    let n = first.slices(axis);
    let [start, end] = o.slices.unwrap_or([0, n]);
    if start >= end || end > n {
        return Err(format!(
            "segmentation decode options: slices [{start}, {end}) do not fit the {n} {} slices of {first_name}",
            axis.name()
        ));
    }
    let mut rng = fastrand::Rng::with_seed(o.seed);
    let mut out = Vec::new();
    for index in start..end {
        let label = labels.slice(axis, index)?;
        if label.data.iter().all(|&v| v == 0.0) {
            continue;
        }
        let channels = images
            .iter()
            .zip(&ranges)
            .map(|((_, v), &(lo, hi))| {
                let img = v.slice(axis, index)?;
                let img = match intensity {
                    Intensity::Percentile => img.rescale(lo, hi),
                    Intensity::Raw => img,
                };
                Ok(img.fit_square(o.size, Interp::Bilinear, 0.0).0)
            })
            .collect::<Result<Vec<_>, String>>()?;
        let (label, _) = label.fit_square(o.size, Interp::Nearest, 0.0);
        let id = format!("{source}:{}:{index}", axis.name());
        out.push(example(id.clone(), &channels, &label)?);
        for k in 1..=o.augment {
            let (a, gamma) = random_warp(&mut rng, o.size);
            let warped: Vec<Image2D> = channels
                .iter()
                .map(|c| {
                    let w = c.warp(&a, Interp::Bilinear, 0.0);
                    Image2D {
                        data: w.data.iter().map(|v| v.powf(gamma)).collect(),
                        ..w
                    }
                })
                .collect();
            let lab = label.warp(&a, Interp::Nearest, 0.0);
            out.push(example(format!("{id}:aug{k}"), &warped, &lab)?);
        }
    }
    Ok(out)
}

/// A small random rotation (±10°), scale (±8 %) and shift (±4 % of the
/// side) about the centre, and an intensity gamma in [0.8, 1.25].
fn random_warp(rng: &mut fastrand::Rng, size: usize) -> (Affine2, f32) {
    let mut uniform = |a: f64| (rng.f64() * 2.0 - 1.0) * a;
    let c = (size as f64 - 1.0) / 2.0;
    let angle = uniform(10f64.to_radians());
    let scale = 1.0 + uniform(0.08);
    let shift = (uniform(0.04 * size as f64), uniform(0.04 * size as f64));
    let gamma = 1.25f64.powf(uniform(1.0)) as f32;
    (Affine2::about((c, c), angle, scale, shift), gamma)
}

fn example(id: String, channels: &[Image2D], label: &Image2D) -> Result<Example, String> {
    let (h, w) = (label.h as i64, label.w as i64);
    let data = channels
        .iter()
        .flat_map(|c| c.data.iter().copied())
        .collect();
    Ok(Example {
        id,
        image: Dense::new(vec![channels.len() as i64, h, w], data)?,
        target: Dense::new(vec![h, w], label.data.clone())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amat_plugin_sdk::File;

    const NAMES: &str = "1 Precentral_L 2001\n4 Vermis_3 9001\n";

    /// A 4 x 4 x 3 image whose atlas labels only the middle z slice.
    fn request(options: &str) -> DecodeRequest {
        let affine = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ];
        let img: Vec<u8> = (0..48).map(|v| v as u8 * 5).collect();
        let mut atlas = vec![0u8; 48];
        atlas[16 + 5] = 1;
        atlas[16 + 10] = 4;
        let file = |name: &str, bytes: Vec<u8>| File {
            name: name.into(),
            bytes,
        };
        DecodeRequest {
            files: vec![
                file("ch2.nii.gz", nifti::encode_u8([4, 4, 3], affine, &img)),
                file("aal.nii.gz", nifti::encode_u8([4, 4, 3], affine, &atlas)),
                file("aal.nii.txt", NAMES.as_bytes().to_vec()),
            ],
            options: options.into(),
        }
    }

    #[test]
    fn decodes_labelled_slices_only() {
        let out = decode(&request(r#"{"size": 8}"#)).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, "ch2:axial:1");
        assert_eq!(out[0].image.shape, vec![1, 8, 8]);
        assert_eq!(out[0].target.shape, vec![8, 8]);
        let mut classes: Vec<f32> = out[0].target.data.clone();
        classes.sort_by(f32::total_cmp);
        classes.dedup();
        assert_eq!(classes, vec![0.0, 1.0, 7.0]);
        assert!(out[0].image.data.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn augmented_copies_follow_their_slice() {
        let out = decode(&request(r#"{"size": 8, "augment": 2, "seed": 3}"#)).unwrap();
        let ids: Vec<&str> = out.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["ch2:axial:1", "ch2:axial:1:aug1", "ch2:axial:1:aug2"]);
    }

    /// A two-channel 4 x 4 x 3 case whose label map marks two voxels of z = 1.
    fn case_request(label_value: u8, extra: &str) -> DecodeRequest {
        let affine = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ];
        let t1: Vec<u8> = (0..48).map(|v| v as u8 * 5).collect();
        let t2: Vec<u8> = (0..48).map(|v| 240 - v as u8 * 5).collect();
        let mut seg = vec![0u8; 48];
        seg[16 + 5] = 1;
        seg[16 + 6] = label_value;
        let file = |name: &str, bytes: Vec<u8>| File {
            name: name.into(),
            bytes,
        };
        DecodeRequest {
            files: vec![
                file("p1_0000.nii", nifti::encode_u8([4, 4, 3], affine, &t1)),
                file("p1_0001.nii", nifti::encode_u8([4, 4, 3], affine, &t2)),
                file("p1.nii", nifti::encode_u8([4, 4, 3], affine, &seg)),
            ],
            options: format!(
                r#"{{"size": 8{extra}, "case": {{"id": "p1", "images": ["p1_0000.nii", "p1_0001.nii"],
                   "label": "p1.nii", "labels": {{"0": "background", "1": "a", "2": "b"}}}}}}"#
            ),
        }
    }

    #[test]
    fn a_case_decodes_its_channels_and_named_classes() {
        let out = decode(&case_request(2, "")).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, "p1:axial:1");
        assert_eq!(out[0].image.shape, vec![2, 8, 8]);
        let mut classes: Vec<f32> = out[0].target.data.clone();
        classes.sort_by(f32::total_cmp);
        classes.dedup();
        assert_eq!(classes, vec![0.0, 1.0, 2.0]);
        assert!(out[0].image.data.iter().all(|v| (0.0..=1.0).contains(v)));
        let raw = decode(&case_request(2, r#", "intensity": "raw""#)).unwrap();
        let max = raw[0].image.data.iter().copied().fold(0.0f32, f32::max);
        assert!(max > 100.0, "raw values kept: {max}");

        let e = decode(&case_request(3, "")).unwrap_err();
        assert!(
            e.starts_with("p1.nii:") && e.contains("label value 3"),
            "{e}"
        );
    }

    /// The case of [`case_request`] with volume options.
    fn volume_request(options: &str) -> DecodeRequest {
        let mut r = case_request(2, "");
        r.options = format!(
            r#"{{{options}, "case": {{"id": "p1", "images": ["p1_0000.nii", "p1_0001.nii"],
               "label": "p1.nii", "labels": {{"0": "background", "1": "a", "2": "b"}}, "intensity": "raw"}}}}"#
        );
        r
    }

    #[test]
    fn a_case_decodes_as_one_volume_cropped_and_resampled() {
        // Channel 0 is 0 only at voxel 0: the non-zero box is the whole grid.
        let out = decode(&volume_request(r#""volume": true"#)).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, "p1:volume:0");
        assert_eq!(out[0].image.shape, vec![2, 3, 4, 4]);
        assert_eq!(out[0].target.shape, vec![3, 4, 4]);
        // D, H, W = z, y, x: voxel (x=1, y=1, z=1) is flat index 16 + 5.
        assert_eq!(out[0].target.data[16 + 5], 1.0);
        assert_eq!(out[0].image.data[16 + 5], 105.0, "raw: the host normalises");
        // The foreground box (voxels 5 and 6 of z = 1) with no margin.
        let fg = decode(&volume_request(
            r#""volume": true, "crop": "foreground", "margin": 0"#,
        ))
        .unwrap();
        assert_eq!(fg[0].image.shape, vec![2, 1, 1, 2]);
        assert_eq!(fg[0].target.data, vec![1.0, 2.0]);
        // 1 mm voxels resampled to 2 mm in-plane: 2 x 2 per slice, labels stay classes.
        let coarse = decode(&volume_request(
            r#""volume": true, "crop": "none", "spacing": [2.0, 2.0, 1.0]"#,
        ))
        .unwrap();
        assert_eq!(coarse[0].target.shape, vec![3, 2, 2]);
        assert!(
            coarse[0]
                .target
                .data
                .iter()
                .all(|v| [0.0, 1.0, 2.0].contains(v))
        );
        let e = decode(&volume_request(r#""volume": true, "size": 8"#)).unwrap_err();
        assert!(e.contains("`size`"), "{e}");
        let e = decode(&volume_request(r#""spacing": [1.0, 1.0, 0.0]"#)).unwrap_err();
        assert!(e.contains("spacing"), "{e}");
    }

    #[test]
    fn bad_options_and_files_are_clear_errors() {
        let e = decode(&request(r#"{"sise": 8}"#)).unwrap_err();
        assert!(e.contains("sise"), "{e}");
        let e = decode(&request(r#"{"axis": "oblique"}"#)).unwrap_err();
        assert!(e.contains("oblique"), "{e}");
        let e = decode(&request(r#"{"labels": "brain"}"#)).unwrap_err();
        assert!(e.contains("ch2bet.nii.gz"), "{e}");
    }
}
