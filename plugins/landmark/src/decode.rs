//! Files to examples: slices of the autoafids template (T1w and/or T2w) with
//! the AFIDs that lie in them, each fitted into a square image, plus
//! deterministic augmented copies (affine warp of image and points together,
//! intensity jitter).
//!
//! Files: one `.fcsv` (the AFIDs in RAS mm, labels `1`..`32`) and one NIfTI
//! volume per contrast, named `*<contrast>.nii.gz` (or `.nii`), e.g.
//! `tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz`. Options (JSON, all optional):
//! see [`Options`].
//!
//! A landmark is in a slice when its plane lies within `tolerance_mm` of the
//! slice's centre plane; its in-plane position is the fiducial's own (not
//! snapped to the slice). Ids are `<contrast>:<axis>:<index>`, augmented
//! copies `<contrast>:<axis>:<index>:aug<k>`, in slab order (slice index,
//! then contrast, then copy).

use crate::target::{LANDMARKS, LandmarkTarget, Point};
use amat_plugin_sdk::{DecodeRequest, Dense, Example};
use medimg::augment::{Jitter, JitterRange};
use medimg::{Axis, Fit, Image2D, Volume, fcsv, nifti};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// sagittal | coronal | axial
    pub axis: String,
    /// Slices to decode; empty: every slice that holds `min_landmarks`.
    pub indices: Vec<usize>,
    /// Output height and width in pixels.
    pub size: usize,
    /// Distance from the slice's plane within which a landmark counts as in it.
    pub tolerance_mm: f64,
    /// Slices with fewer landmarks are skipped (they teach nothing).
    pub min_landmarks: usize,
    /// Contrasts to decode, each a volume named `*<contrast>.nii[.gz]`.
    pub contrasts: Vec<String>,
    /// Augmented copies per slice and contrast.
    pub augment: usize,
    pub seed: u64,
    /// Largest rotation of an augmented copy, degrees.
    pub rotation_deg: f64,
    /// Largest relative zoom change (0.1: 0.9x to 1.1x).
    pub zoom: f64,
    /// Largest shift, output pixels.
    pub shift_px: f64,
    /// Largest |log gamma| of the intensity curve.
    pub log_gamma: f64,
    /// Largest relative contrast change and brightness offset.
    pub contrast: f64,
    pub brightness: f64,
    /// Intensity quantiles of the whole volume mapped to 0 and 1.
    pub quantiles: [f64; 2],
}

impl Default for Options {
    fn default() -> Self {
        Self {
            axis: "sagittal".into(),
            indices: Vec::new(),
            size: 64,
            tolerance_mm: 1.5,
            min_landmarks: 1,
            contrasts: vec!["T1w".into()],
            augment: 0,
            seed: 0,
            rotation_deg: 10.0,
            zoom: 0.1,
            shift_px: 4.0,
            log_gamma: 0.3,
            contrast: 0.1,
            brightness: 0.05,
            quantiles: [0.0, 0.995],
        }
    }
}

impl Options {
    pub fn jitter_range(&self) -> JitterRange {
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

/// A draw from `[-m, m]` (0 when `m` is 0).
fn uniform(rng: &mut ChaCha8Rng, m: f64) -> f64 {
    if m > 0.0 { rng.gen_range(-m..=m) } else { 0.0 }
}

/// The volume of `contrast` among the request's files.
fn find_volume<'a>(
    request: &'a DecodeRequest,
    contrast: &str,
) -> Result<(&'a str, &'a [u8]), String> {
    request
        .files
        .iter()
        .find(|f| {
            let stem = f.name.trim_end_matches(".gz").trim_end_matches(".nii");
            stem != f.name && stem.ends_with(contrast)
        })
        .map(|f| (f.name.as_str(), f.bytes.as_slice()))
        .ok_or_else(|| {
            let names: Vec<&str> = request.files.iter().map(|f| f.name.as_str()).collect();
            format!("landmark decode: no `*{contrast}.nii.gz` volume among the files {names:?}")
        })
}

/// The AFIDs in voxel coordinates of `volume`, indexed by AFID id - 1.
pub fn afids_in_voxels(
    fcsv_name: &str,
    bytes: &[u8],
    volume: &Volume,
) -> Result<[Option<[f64; 3]>; LANDMARKS], String> {
    let mut out = [None; LANDMARKS];
    for f in fcsv::read(fcsv_name, bytes)? {
        let k = f
            .label
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|k| (1..=LANDMARKS).contains(k))
            .ok_or_else(|| {
                format!(
                    "{fcsv_name}: fiducial `{}` has label `{}`, not an AFID id 1..={LANDMARKS}",
                    f.desc, f.label
                )
            })?;
        out[k - 1] = Some(volume.ras_to_voxel(f.ras));
    }
    if out.iter().all(Option::is_none) {
        return Err(format!("{fcsv_name}: no fiducials"));
    }
    Ok(out)
}

/// Landmarks within `tolerance_mm` of slice `index`, as slice-pixel `(row, col)`.
fn in_slice(
    afids: &[Option<[f64; 3]>; LANDMARKS],
    axis: Axis,
    index: usize,
    voxel_mm: f64,
    tolerance_mm: f64,
) -> [Option<(f64, f64)>; LANDMARKS] {
    afids.map(|v| {
        let (at, row, col) = axis.voxel_to_slice(v?);
        ((at - index as f64).abs() * voxel_mm <= tolerance_mm).then_some((row, col))
    })
}

/// One example of a slice under `jitter`; `None` when too few landmarks stay in view.
fn example(
    id: String,
    slice: &Image2D,
    points: &[Option<(f64, f64)>; LANDMARKS],
    spacing_mm: [f64; 2],
    jitter: &Jitter,
    o: &Options,
) -> Result<Option<Example>, String> {
    let fit = Fit::new(slice.h, slice.w, o.size);
    let max = o.size as f64 - 1.0;
    let target = LandmarkTarget {
        points: points.map(|p| {
            let (row, col) = p?;
            let (row, col) = jitter.point(&fit, row, col);
            // A landmark warped out of view is absent.
            ((0.0..=max).contains(&row) && (0.0..=max).contains(&col)).then_some(Point { row, col })
        }),
        // Source mm per output pixel: the fit scales by `fit.scale`, the warp by `zoom`.
        spacing_mm: spacing_mm.map(|s| s / (fit.scale * jitter.zoom)),
    };
    if target.present() < o.min_landmarks.max(1) {
        return Ok(None);
    }
    let s = o.size as i64;
    Ok(Some(Example {
        id,
        image: Dense::new(vec![1, s, s], jitter.image(slice, &fit, o.size).data)?,
        target: Dense::new(LandmarkTarget::shape(), target.encode())?,
    }))
}

pub fn decode(request: &DecodeRequest) -> Result<Vec<Example>, String> {
    let o: Options = if request.options.trim().is_empty() {
        Options::default()
    } else {
        serde_json::from_str(&request.options)
            .map_err(|e| format!("landmark decode options: {e}"))?
    };
    let axis = Axis::parse(&o.axis).map_err(|e| format!("landmark decode options: {e}"))?;
    if !(8..=1024).contains(&o.size) {
        return Err(format!(
            "landmark decode options: size {} is not within 8..=1024",
            o.size
        ));
    }
    if o.contrasts.is_empty() {
        return Err("landmark decode options: `contrasts` is empty".into());
    }
    let fcsv_file = request
        .files
        .iter()
        .find(|f| f.name.ends_with(".fcsv"))
        .ok_or("landmark decode: no `.fcsv` fiducial file among the files")?;

    let mut volumes: Vec<(String, Volume, (f32, f32))> = Vec::new();
    for contrast in &o.contrasts {
        let (name, bytes) = find_volume(request, contrast)?;
        let volume = nifti::read(name, bytes)?;
        // Contrasts share the AFIDs, so they must share the grid.
        if let Some((first_name, first, _)) = volumes.first() {
            Volume::check_same_grid(first, first_name, &volume, name)?;
        }
        let (lo, hi) = volume.quantiles(o.quantiles[0], o.quantiles[1]);
        volumes.push((name.to_string(), volume, (lo, hi)));
    }
    let reference = &volumes[0].1;
    let afids = afids_in_voxels(&fcsv_file.name, &fcsv_file.bytes, reference)?;
    let dim = axis.dim();
    let (rd, cd) = axis.in_plane();
    let voxel_mm = reference.pixdim[dim] as f64;
    let spacing_mm = [reference.pixdim[rd] as f64, reference.pixdim[cd] as f64];
    let indices: Vec<usize> = if o.indices.is_empty() {
        (0..reference.slices(axis)).collect()
    } else {
        o.indices.clone()
    };

    let mut out = Vec::new();
    for &index in &indices {
        let points = in_slice(&afids, axis, index, voxel_mm, o.tolerance_mm);
        if points.iter().flatten().count() < o.min_landmarks.max(1) {
            continue;
        }
        for (ci, (contrast, (_, volume, (lo, hi)))) in o.contrasts.iter().zip(&volumes).enumerate()
        {
            let slice = volume.slice(axis, index)?.rescale(*lo, *hi);
            let id = format!("{contrast}:{}:{index}", axis.name());
            out.extend(example(
                id.clone(),
                &slice,
                &points,
                spacing_mm,
                &Jitter::NONE,
                &o,
            )?);
            // One stream per (slice, contrast): a copy does not depend on which other slices were asked for.
            let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
            rng.set_stream(((index as u64) << 8) | ci as u64);
            for k in 0..o.augment {
                let jitter = Jitter::draw(&o.jitter_range(), o.size, |m| uniform(&mut rng, m));
                out.extend(example(
                    format!("{id}:aug{k}"),
                    &slice,
                    &points,
                    spacing_mm,
                    &jitter,
                    &o,
                )?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_reject_unknown_keys_and_default_when_empty() {
        assert!(serde_json::from_str::<Options>(r#"{"axsi": "axial"}"#).is_err());
        let o: Options = serde_json::from_str(r#"{"axis": "axial", "augment": 3}"#).unwrap();
        assert_eq!((o.axis.as_str(), o.augment, o.size), ("axial", 3, 64));
    }
}
