//! 2D float images (row-major) and what decoders do to them: intensity
//! normalisation, fitting into a square, and affine warps for augmentation.
//!
//! Pixel convention: pixel (r, c) covers [r, r+1) x [c, c+1), its centre is
//! at (r + 0.5, c + 0.5) in continuous coordinates. Points (landmarks) are
//! given as (row, col) of pixel centres in index units, e.g. (3.0, 4.0) is
//! the centre of pixel (3, 4).

/// How to sample between pixels: bilinear for intensities, nearest for labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interp {
    Bilinear,
    Nearest,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Image2D {
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

impl Image2D {
    pub fn new(h: usize, w: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), h * w, "image data fills {h}x{w}");
        Self { h, w, data }
    }

    pub fn filled(h: usize, w: usize, value: f32) -> Self {
        Self::new(h, w, vec![value; h * w])
    }

    pub fn get(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.w + c]
    }

    /// Linear map of `[lo, hi]` onto `[0, 1]`, clamped.
    pub fn rescale(&self, lo: f32, hi: f32) -> Image2D {
        Image2D::new(self.h, self.w, unit_range(&self.data, lo, hi))
    }

    /// Min-max normalisation of this image alone to [0, 1].
    pub fn normalize_min_max(&self) -> Image2D {
        let (lo, hi) = quantiles(&self.data, 0.0, 1.0);
        self.rescale(lo, hi)
    }

    /// Percentile normalisation of this image alone: `lo`/`hi` quantiles (0..1) to [0, 1].
    pub fn normalize_percentile(&self, lo: f64, hi: f64) -> Image2D {
        let (a, b) = quantiles(&self.data, lo, hi);
        self.rescale(a, b)
    }

    /// Continuous sample at (row, col) in index units; outside gives `fill`.
    pub fn sample(&self, r: f64, c: f64, interp: Interp, fill: f32) -> f32 {
        match interp {
            Interp::Nearest => {
                let (ri, ci) = (r.round(), c.round());
                if ri < 0.0 || ci < 0.0 || ri >= self.h as f64 || ci >= self.w as f64 {
                    fill
                } else {
                    self.get(ri as usize, ci as usize)
                }
            }
            Interp::Bilinear => {
                // Within half a pixel of the border: clamp to the edge pixel.
                let (hm, wm) = (self.h as f64 - 1.0, self.w as f64 - 1.0);
                if r < -0.5 || c < -0.5 || r > hm + 0.5 || c > wm + 0.5 {
                    return fill;
                }
                let (r, c) = (r.clamp(0.0, hm), c.clamp(0.0, wm));
                let (r0, c0) = (r.floor() as usize, c.floor() as usize);
                let (r1, c1) = ((r0 + 1).min(self.h - 1), (c0 + 1).min(self.w - 1));
                let (fr, fc) = ((r - r0 as f64) as f32, (c - c0 as f64) as f32);
                let top = self.get(r0, c0) * (1.0 - fc) + self.get(r0, c1) * fc;
                let bottom = self.get(r1, c0) * (1.0 - fc) + self.get(r1, c1) * fc;
                top * (1.0 - fr) + bottom * fr
            }
        }
    }

    /// Resamples onto an `h` x `w` grid: output pixel (r, c) takes the source
    /// at `to_source(r, c)`.
    fn resample(
        &self,
        h: usize,
        w: usize,
        interp: Interp,
        fill: f32,
        to_source: impl Fn(f64, f64) -> (f64, f64),
    ) -> Image2D {
        let mut data = Vec::with_capacity(h * w);
        for r in 0..h {
            for c in 0..w {
                let (sr, sc) = to_source(r as f64, c as f64);
                data.push(self.sample(sr, sc, interp, fill));
            }
        }
        Image2D::new(h, w, data)
    }

    /// Scales the image (aspect kept) so its longer side is `size`, and pads
    /// the shorter side symmetrically with `fill`. The [`Fit`] maps points.
    pub fn fit_square(&self, size: usize, interp: Interp, fill: f32) -> (Image2D, Fit) {
        let fit = Fit::new(self.h, self.w, size);
        let out = self.resample(size, size, interp, fill, |r, c| fit.to_source(r, c));
        (out, fit)
    }

    /// Warps the image by `a` (a map from source to output points): output
    /// pixel p takes the source at `a⁻¹(p)`. Same size as the input.
    pub fn warp(&self, a: &Affine2, interp: Interp, fill: f32) -> Image2D {
        let inv = a.inverse();
        self.resample(self.h, self.w, interp, fill, |r, c| inv.apply(r, c))
    }
}

/// The values at the `lo` and `hi` quantiles (0..1) of `data` (NaNs ignored).
pub fn quantiles(data: &[f32], lo: f64, hi: f64) -> (f32, f32) {
    let mut v: Vec<f32> = data.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    let at = |q: f64| ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    let (i, j) = (at(lo), at(hi));
    let (_, a, _) = v.select_nth_unstable_by(i, f32::total_cmp);
    let a = *a;
    let (_, b, _) = v.select_nth_unstable_by(j, f32::total_cmp);
    (a, *b)
}

/// How [`Image2D::fit_square`] placed the source in the square output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    /// Output pixels per source pixel.
    pub scale: f64,
    /// Offset (rows, cols) of the scaled source inside the output, in output pixels.
    pub pad: (f64, f64),
}

impl Fit {
    pub fn new(h: usize, w: usize, size: usize) -> Self {
        let scale = size as f64 / h.max(w) as f64;
        let pad = (
            (size as f64 - h as f64 * scale) / 2.0,
            (size as f64 - w as f64 * scale) / 2.0,
        );
        Self { scale, pad }
    }

    /// Source point (row, col) to its output point (pixel-centre convention).
    pub fn to_output(&self, r: f64, c: f64) -> (f64, f64) {
        (
            (r + 0.5) * self.scale - 0.5 + self.pad.0,
            (c + 0.5) * self.scale - 0.5 + self.pad.1,
        )
    }

    /// Output point (row, col) to its source point.
    pub fn to_source(&self, r: f64, c: f64) -> (f64, f64) {
        (
            (r + 0.5 - self.pad.0) / self.scale - 0.5,
            (c + 0.5 - self.pad.1) / self.scale - 0.5,
        )
    }
}

/// A 2D affine map of (row, col) points: `p' = m * [r, c, 1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine2 {
    pub m: [[f64; 3]; 2],
}

impl Affine2 {
    pub const IDENTITY: Affine2 = Affine2 {
        m: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
    };

    /// Rotation by `angle` (radians) and isotropic `scale` about `centre`
    /// (row, col), then a shift of `shift` (rows, cols) pixels.
    pub fn about(centre: (f64, f64), angle: f64, scale: f64, shift: (f64, f64)) -> Affine2 {
        let (s, c) = angle.sin_cos();
        let (a, b, cc, d) = (scale * c, -scale * s, scale * s, scale * c);
        let (r0, c0) = centre;
        Affine2 {
            m: [
                [a, b, r0 - a * r0 - b * c0 + shift.0],
                [cc, d, c0 - cc * r0 - d * c0 + shift.1],
            ],
        }
    }

    pub fn apply(&self, r: f64, c: f64) -> (f64, f64) {
        let m = &self.m;
        (
            m[0][0] * r + m[0][1] * c + m[0][2],
            m[1][0] * r + m[1][1] * c + m[1][2],
        )
    }

    /// The inverse map (panics on a singular matrix, which `about` never makes
    /// for a non-zero scale).
    pub fn inverse(&self) -> Affine2 {
        let [[a, b, tx], [c, d, ty]] = self.m;
        let det = a * d - b * c;
        assert!(det.abs() > 1e-12, "singular 2D affine");
        let (ia, ib, ic, id) = (d / det, -b / det, -c / det, a / det);
        Affine2 {
            m: [
                [ia, ib, -(ia * tx + ib * ty)],
                [ic, id, -(ic * tx + id * ty)],
            ],
        }
    }
}

/// `data` mapped linearly from [lo, hi] to [0, 1], clipped (a flat range
/// leaves the values shifted by `lo`, clipped).
pub fn unit_range(data: &[f32], lo: f32, hi: f32) -> Vec<f32> {
    let span = if hi > lo { hi - lo } else { 1.0 };
    data.iter()
        .map(|&v| ((v - lo) / span).clamp(0.0, 1.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(h: usize, w: usize) -> Image2D {
        Image2D::new(h, w, (0..h * w).map(|v| v as f32).collect())
    }

    #[test]
    fn normalisation_maps_to_unit_range() {
        let img = Image2D::new(1, 5, vec![10.0, 20.0, 30.0, 40.0, 1000.0]);
        assert_eq!(img.normalize_min_max().data[1], 10.0 / 990.0);
        let p = img.normalize_percentile(0.0, 0.75);
        assert_eq!(p.data, vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0]);
        let flat = Image2D::filled(2, 2, 3.0).normalize_min_max();
        assert!(flat.data.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn fit_square_keeps_aspect_and_pads() {
        // 2 x 4 -> 8 x 8: scale 2, two rows of padding above and below.
        let img = Image2D::new(2, 4, vec![1.0; 8]);
        let (out, fit) = img.fit_square(8, Interp::Nearest, 0.0);
        assert_eq!((fit.scale, fit.pad), (2.0, (2.0, 0.0)));
        let rows: Vec<f32> = (0..8).map(|r| out.get(r, 3)).collect();
        assert_eq!(rows, vec![0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
        // Pixel centres map onto pixel centres and back.
        let (r, c) = fit.to_output(0.0, 3.0);
        assert_eq!((r, c), (2.5, 6.5));
        assert_eq!(fit.to_source(r, c), (0.0, 3.0));
    }

    #[test]
    fn nearest_keeps_label_values_and_bilinear_interpolates() {
        let labels = Image2D::new(2, 2, vec![0.0, 3.0, 7.0, 5.0]);
        let (out, _) = labels.fit_square(5, Interp::Nearest, 0.0);
        assert!(out.data.iter().all(|v| [0.0, 3.0, 7.0, 5.0].contains(v)));
        let img = grid(2, 2);
        assert_eq!(img.sample(0.5, 0.5, Interp::Bilinear, -1.0), 1.5);
        assert_eq!(img.sample(-2.0, 0.0, Interp::Bilinear, -1.0), -1.0);
    }

    #[test]
    fn warp_moves_pixels_and_points_together() {
        let mut img = Image2D::filled(9, 9, 0.0);
        img.data[2 * 9 + 6] = 1.0; // pixel (2, 6)
        let a = Affine2::about((4.0, 4.0), std::f64::consts::FRAC_PI_2, 1.0, (0.0, 1.0));
        let out = img.warp(&a, Interp::Nearest, 0.0);
        let (r, c) = a.apply(2.0, 6.0);
        let (r, c) = (r.round() as usize, c.round() as usize);
        assert_eq!(out.get(r, c), 1.0);
        assert_eq!(out.data.iter().sum::<f32>(), 1.0);
        let back = a.inverse().apply(a.apply(2.0, 6.0).0, a.apply(2.0, 6.0).1);
        assert!((back.0 - 2.0).abs() < 1e-9 && (back.1 - 6.0).abs() < 1e-9);
        assert_eq!(img.warp(&Affine2::IDENTITY, Interp::Bilinear, 0.0), img);
    }
}
