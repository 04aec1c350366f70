//! A 3D float volume on a voxel grid with its voxel-to-RAS affine, and the
//! 2D slices taken from it.

use crate::image2d::{Image2D, Interp};

/// Which voxel axis a slice is taken across.
///
/// In-plane layout (no flips, so voxel indices map to pixels exactly):
/// `Sagittal` (fixed x): rows = z, cols = y; `Coronal` (fixed y): rows = z,
/// cols = x; `Axial` (fixed z): rows = y, cols = x.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Axis {
    Sagittal,
    Coronal,
    Axial,
}

impl Axis {
    /// Parses "sagittal" | "coronal" | "axial" (or "x" | "y" | "z").
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "sagittal" | "x" => Ok(Self::Sagittal),
            "coronal" | "y" => Ok(Self::Coronal),
            "axial" | "z" => Ok(Self::Axial),
            _ => Err(format!(
                "unknown slice axis `{s}` (expected sagittal, coronal or axial)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sagittal => "sagittal",
            Self::Coronal => "coronal",
            Self::Axial => "axial",
        }
    }

    /// The voxel dim this axis fixes (0 = x, 1 = y, 2 = z).
    pub fn dim(self) -> usize {
        self as usize
    }

    /// The voxel dims that become (rows, cols) of a slice.
    pub fn in_plane(self) -> (usize, usize) {
        match self {
            Self::Sagittal => (2, 1),
            Self::Coronal => (2, 0),
            Self::Axial => (1, 0),
        }
    }

    /// A voxel position (x, y, z) as (slice index, row, col) of this axis.
    pub fn voxel_to_slice(self, v: [f64; 3]) -> (f64, f64, f64) {
        let (r, c) = self.in_plane();
        (v[self.dim()], v[r], v[c])
    }

    /// (slice index, row, col) of this axis as a voxel position (x, y, z).
    pub fn slice_to_voxel(self, index: f64, row: f64, col: f64) -> [f64; 3] {
        let (r, c) = self.in_plane();
        let mut v = [0.0; 3];
        v[self.dim()] = index;
        v[r] = row;
        v[c] = col;
        v
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Volume {
    /// Size along x, y, z.
    pub dims: [usize; 3],
    /// Voxel size in mm.
    pub pixdim: [f32; 3],
    /// Rows of the 3x4 voxel-to-RAS-mm matrix.
    pub affine: [[f64; 4]; 3],
    /// Values with x fastest, then y, then z (NIfTI order).
    pub data: Vec<f32>,
}

impl Volume {
    pub fn get(&self, x: usize, y: usize, z: usize) -> f32 {
        self.data[x + self.dims[0] * (y + self.dims[1] * z)]
    }

    /// Number of slices across `axis`.
    pub fn slices(&self, axis: Axis) -> usize {
        self.dims[axis.dim()]
    }

    /// The 2D slice at `index` across `axis` (layout: see [`Axis`]).
    pub fn slice(&self, axis: Axis, index: usize) -> Result<Image2D, String> {
        let n = self.slices(axis);
        if index >= n {
            return Err(format!(
                "{} slice {index} is outside the volume ({n} slices)",
                axis.name()
            ));
        }
        let (rd, cd) = axis.in_plane();
        let (h, w) = (self.dims[rd], self.dims[cd]);
        let mut data = Vec::with_capacity(h * w);
        let mut v = [0usize; 3];
        v[axis.dim()] = index;
        for r in 0..h {
            v[rd] = r;
            for c in 0..w {
                v[cd] = c;
                data.push(self.get(v[0], v[1], v[2]));
            }
        }
        Ok(Image2D::new(h, w, data))
    }

    /// Voxel (fractional) position to RAS millimetres.
    pub fn voxel_to_ras(&self, v: [f64; 3]) -> [f64; 3] {
        let m = &self.affine;
        [0, 1, 2].map(|i| m[i][0] * v[0] + m[i][1] * v[1] + m[i][2] * v[2] + m[i][3])
    }

    /// RAS millimetres to a fractional voxel position (inverse affine).
    pub fn ras_to_voxel(&self, p: [f64; 3]) -> [f64; 3] {
        let m = &self.affine;
        let d = crate::nifti::det3(m);
        let q = [p[0] - m[0][3], p[1] - m[1][3], p[2] - m[2][3]];
        // Cramer's rule: column j replaced by q.
        [0, 1, 2].map(|j| {
            let mut n = *m;
            for (i, row) in n.iter_mut().enumerate() {
                row[j] = q[i];
            }
            crate::nifti::det3(&n) / d
        })
    }

    /// Whether `other` lies on the same grid (dims, and affine to `tol_mm`).
    pub fn same_grid(&self, other: &Volume, tol_mm: f64) -> bool {
        self.dims == other.dims
            && self
                .affine
                .iter()
                .flatten()
                .zip(other.affine.iter().flatten())
                .all(|(a, b)| (a - b).abs() <= tol_mm)
    }

    /// Checks that `label` (from file `label_name`) lies on this image's grid
    /// (from `image_name`); the error names both and what differs.
    pub fn check_same_grid(
        &self,
        image_name: &str,
        label: &Volume,
        label_name: &str,
    ) -> Result<(), String> {
        if self.dims != label.dims {
            return Err(format!(
                "{label_name}: label grid {:?} differs from the image grid {:?} of {image_name}",
                label.dims, self.dims
            ));
        }
        if !self.same_grid(label, 1e-3) {
            return Err(format!(
                "{label_name}: label affine differs from the affine of {image_name} (same dims, different placement)"
            ));
        }
        Ok(())
    }

    /// The sub-volume `[lo, hi)` along x, y, z; the affine follows, so
    /// each voxel keeps its place in RAS space.
    pub fn crop(&self, bbox: [[usize; 2]; 3]) -> Volume {
        let [[x0, x1], [y0, y1], [z0, z1]] = bbox;
        let mut data = Vec::with_capacity((x1 - x0) * (y1 - y0) * (z1 - z0));
        for z in z0..z1 {
            for y in y0..y1 {
                let row = self.dims[0] * (y + self.dims[1] * z);
                data.extend_from_slice(&self.data[row + x0..row + x1]);
            }
        }
        let origin = self.voxel_to_ras([x0 as f64, y0 as f64, z0 as f64]);
        let mut affine = self.affine;
        for (row, o) in affine.iter_mut().zip(origin) {
            row[3] = o;
        }
        Volume {
            dims: [x1 - x0, y1 - y0, z1 - z0],
            pixdim: self.pixdim,
            affine,
            data,
        }
    }

    /// The volume on a grid of voxel size `spacing` (mm along x, y, z)
    /// covering the same extent: `round(dims * pixdim / spacing)` voxels per
    /// axis, voxel centres aligned as nnU-Net resamples (edge voxels hold
    /// the edge value); trilinear (`Interp::Bilinear`) or nearest neighbour.
    pub fn resample(&self, spacing: [f32; 3], interp: Interp) -> Volume {
        let dims: [usize; 3] = std::array::from_fn(|a| {
            ((self.dims[a] as f64 * self.pixdim[a] as f64 / spacing[a] as f64).round() as usize)
                .max(1)
        });
        // Source position of each target index along each axis.
        let axis = |a: usize| -> Vec<f64> {
            let scale = self.dims[a] as f64 / dims[a] as f64;
            let last = (self.dims[a] - 1) as f64;
            (0..dims[a])
                .map(|i| ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, last))
                .collect()
        };
        let (px, py, pz) = (axis(0), axis(1), axis(2));
        let mut data = Vec::with_capacity(dims.iter().product());
        for &z in &pz {
            for &y in &py {
                for &x in &px {
                    data.push(match interp {
                        Interp::Nearest => {
                            self.get(x.round() as usize, y.round() as usize, z.round() as usize)
                        }
                        Interp::Bilinear => self.trilinear(x, y, z),
                    });
                }
            }
        }
        let mut affine = self.affine;
        for row in affine.iter_mut() {
            for (a, v) in row.iter_mut().take(3).enumerate() {
                *v *= self.dims[a] as f64 / dims[a] as f64;
            }
        }
        // Voxel 0's centre lies half a new voxel in from the old grid's edge.
        let origin = self.voxel_to_ras(std::array::from_fn(|a| {
            0.5 * self.dims[a] as f64 / dims[a] as f64 - 0.5
        }));
        for (row, o) in affine.iter_mut().zip(origin) {
            row[3] = o;
        }
        Volume {
            dims,
            pixdim: std::array::from_fn(|a| self.pixdim[a] * self.dims[a] as f32 / dims[a] as f32),
            affine,
            data,
        }
    }

    fn trilinear(&self, x: f64, y: f64, z: f64) -> f32 {
        let corner = |v: f64, n: usize| {
            let i = (v.floor() as usize).min(n - 1);
            (i, (i + 1).min(n - 1), (v - i as f64) as f32)
        };
        let (x0, x1, fx) = corner(x, self.dims[0]);
        let (y0, y1, fy) = corner(y, self.dims[1]);
        let (z0, z1, fz) = corner(z, self.dims[2]);
        let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
        let plane = |z| {
            lerp(
                lerp(self.get(x0, y0, z), self.get(x1, y0, z), fx),
                lerp(self.get(x0, y1, z), self.get(x1, y1, z), fx),
                fy,
            )
        };
        lerp(plane(z0), plane(z1), fz)
    }

    /// The values at the `lo` and `hi` quantiles (0..1) of the whole volume,
    /// so every slice of it is normalised alike.
    pub fn quantiles(&self, lo: f64, hi: f64) -> (f32, f32) {
        crate::image2d::quantiles(&self.data, lo, hi)
    }
}

/// The bounding box `[lo, hi)` along x, y, z of the voxels of a grid of
/// `dims` where `keep` holds (index in NIfTI order), grown by `margin`
/// voxels and kept inside the grid; `None` when no voxel does.
pub fn bounding_box(
    dims: [usize; 3],
    margin: usize,
    keep: impl Fn(usize) -> bool,
) -> Option<[[usize; 2]; 3]> {
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    let mut i = 0;
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                if keep(i) {
                    for (a, v) in [x, y, z].into_iter().enumerate() {
                        lo[a] = lo[a].min(v);
                        hi[a] = hi[a].max(v + 1);
                    }
                }
                i += 1;
            }
        }
    }
    (lo[0] != usize::MAX).then(|| {
        std::array::from_fn(|a| [lo[a].saturating_sub(margin), (hi[a] + margin).min(dims[a])])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> Volume {
        Volume {
            dims: [2, 3, 4],
            pixdim: [1.0; 3],
            affine: [
                [0.0, -2.0, 0.0, 10.0],
                [1.0, 0.0, 0.0, -3.0],
                [0.0, 0.0, 1.5, 7.0],
            ],
            data: (0..24).map(|v| v as f32).collect(),
        }
    }

    #[test]
    fn slices_follow_the_documented_layout() {
        let v = ramp();
        let a = v.slice(Axis::Axial, 1).unwrap();
        assert_eq!((a.h, a.w), (3, 2));
        assert_eq!(a.get(2, 1), v.get(1, 2, 1));
        let s = v.slice(Axis::Sagittal, 1).unwrap();
        assert_eq!((s.h, s.w), (4, 3));
        assert_eq!(s.get(3, 2), v.get(1, 2, 3));
        let c = v.slice(Axis::Coronal, 2).unwrap();
        assert_eq!((c.h, c.w), (4, 2));
        assert_eq!(c.get(1, 0), v.get(0, 2, 1));
        assert!(v.slice(Axis::Axial, 4).is_err());
        let (i, r, cc) = Axis::Coronal.voxel_to_slice([0.0, 2.0, 1.0]);
        assert_eq!((i, r, cc), (2.0, 1.0, 0.0));
        assert_eq!(Axis::Coronal.slice_to_voxel(i, r, cc), [0.0, 2.0, 1.0]);
    }

    #[test]
    fn ras_round_trip_through_the_affine() {
        let v = ramp();
        let p = [0.5, 1.25, 2.0];
        let ras = v.voxel_to_ras(p);
        assert_eq!(ras, [7.5, -2.5, 10.0]);
        let back = v.ras_to_voxel(ras);
        for k in 0..3 {
            assert!((back[k] - p[k]).abs() < 1e-9, "{back:?}");
        }
    }

    #[test]
    fn crop_keeps_voxels_in_place_and_the_box_has_its_margin() {
        let v = ramp();
        let b = bounding_box(v.dims, 1, |i| v.data[i] == 15.0).unwrap();
        // Value 15 is voxel (1, 1, 2): grown by 1, clamped to the 2 x 3 x 4 grid.
        assert_eq!(b, [[0, 2], [0, 3], [1, 4]]);
        let c = v.crop([[1, 2], [1, 3], [2, 4]]);
        assert_eq!(c.dims, [1, 2, 2]);
        assert_eq!(c.get(0, 0, 0), v.get(1, 1, 2));
        assert_eq!(c.get(0, 1, 1), v.get(1, 2, 3));
        assert_eq!(
            c.voxel_to_ras([0.0, 1.0, 1.0]),
            v.voxel_to_ras([1.0, 2.0, 3.0])
        );
        assert!(bounding_box(v.dims, 0, |_| false).is_none());
    }

    #[test]
    fn resampling_halves_and_doubles_the_grid() {
        // 4 x 2 x 2 voxels of 1 mm along x, values = x: at 2 mm, two voxels
        // whose centres lie between old voxels 0/1 and 2/3.
        let v = Volume {
            dims: [4, 2, 2],
            pixdim: [1.0; 3],
            affine: [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
            ],
            data: (0..16).map(|i| (i % 4) as f32).collect(),
        };
        let coarse = v.resample([2.0, 1.0, 1.0], Interp::Bilinear);
        assert_eq!((coarse.dims, coarse.pixdim), ([2, 2, 2], [2.0, 1.0, 1.0]));
        assert_eq!(&coarse.data[..2], &[0.5, 2.5]);
        assert_eq!(coarse.voxel_to_ras([0.0; 3]), [0.5, 0.0, 0.0]);
        let fine = v.resample([0.5, 1.0, 1.0], Interp::Nearest);
        assert_eq!(fine.dims, [8, 2, 2]);
        // Nearest: every value is one the volume holds.
        assert!(fine.data.iter().all(|x| [0.0, 1.0, 2.0, 3.0].contains(x)));
        assert_eq!(&fine.data[..8], &[0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    }

    #[test]
    fn grid_check_names_both_files() {
        let v = ramp();
        let mut other = ramp();
        other.dims = [2, 3, 5];
        let e = v.check_same_grid("img.nii", &other, "lab.nii").unwrap_err();
        assert!(e.starts_with("lab.nii:") && e.contains("img.nii"), "{e}");
        let mut moved = ramp();
        moved.affine[0][3] += 1.0;
        assert!(v.check_same_grid("img.nii", &moved, "lab.nii").is_err());
        assert!(v.check_same_grid("img.nii", &ramp(), "lab.nii").is_ok());
    }
}
