//! Readers and 2D helpers shared by amat's task plugins (compiled into each
//! plugin, for wasm32-wasip2 and natively; no I/O: everything reads bytes).
//!
//! - [`nifti`]: NIfTI-1 volumes (`.nii`, `.nii.gz`) into a [`Volume`] with
//!   its voxel-to-RAS affine.
//! - [`Volume::slice`]: 2D slices along an [`Axis`].
//! - [`image2d`]: normalisation, fitting into a square, affine warps.
//! - [`fcsv`]: Slicer fiducial lists (RAS mm).
//! - [`tiff`]: grey TIFF images.
//! - [`atlas`]: the segmentation classes and AAL regions grouped into them.
//! - [`augment`]: random warps and intensity changes shared by image, labels and points.
//!
//! Every error is a `String` that starts with the file's name and says what
//! is wrong with it.

pub mod atlas;
pub mod augment;
pub mod fcsv;
pub mod image2d;
pub mod nifti;
pub mod tiff;
pub mod volume;

pub use fcsv::Fiducial;
pub use image2d::{Affine2, Fit, Image2D, Interp};
pub use volume::{Axis, Volume};

#[cfg(test)]
mod real_data {
    //! Tests on the bundled real files (fetched by `host/scripts/fetch-data.sh`).
    use super::*;
    use std::path::PathBuf;

    fn raw(rel: &str) -> Vec<u8> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../data/raw")
            .join(rel);
        std::fs::read(&p)
            .unwrap_or_else(|e| panic!("{}: {e} (run host/scripts/fetch-data.sh)", p.display()))
    }

    #[test]
    fn ch2_is_colin27_on_its_grid() {
        let v = nifti::read("ch2.nii.gz", &raw("mricron/ch2.nii.gz")).unwrap();
        assert_eq!(v.dims, [181, 217, 181]);
        assert_eq!(v.pixdim, [1.0, 1.0, 1.0]);
        let max = v.data.iter().copied().fold(0.0f32, f32::max);
        assert!(max > 100.0 && max <= 255.0, "uint8 T1, max {max}");
        // The centre of the grid is near the RAS origin (MNI-like placement).
        let c = v.voxel_to_ras([90.0, 108.0, 90.0]);
        assert!(c.iter().all(|x| x.abs() < 40.0), "{c:?}");
        let aal = nifti::read("aal.nii.gz", &raw("mricron/aal.nii.gz")).unwrap();
        v.check_same_grid("ch2.nii.gz", &aal, "aal.nii.gz").unwrap();
        let axial = v.slice(Axis::Axial, 90).unwrap();
        assert_eq!((axial.h, axial.w), (217, 181));
    }

    #[test]
    fn stardist_image_and_mask() {
        let img = tiff::read_gray("img2d.tif", &raw("stardist/img2d.tif")).unwrap();
        let mask = tiff::read_gray("mask2d.tif", &raw("stardist/mask2d.tif")).unwrap();
        assert_eq!((img.h, img.w, mask.h, mask.w), (512, 512, 512, 512));
        let n = mask.data.iter().copied().fold(0.0f32, f32::max);
        assert!(n >= 100.0, "instance ids up to {n}");
        let e = tiff::read_gray("cut.tif", &raw("stardist/img2d.tif")[..1000]).unwrap_err();
        assert!(e.starts_with("cut.tif:"), "{e}");
    }

    #[test]
    fn afids_fcsv() {
        let f = fcsv::read(
            "afids.fcsv",
            &raw("autoafids/tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"),
        )
        .unwrap();
        assert_eq!(f.len(), 32);
        assert_eq!(f[0].desc, "AC");
    }
}
