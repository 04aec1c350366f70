//! Augmentation for one subject's slices: a random affine warp (rotation,
//! isotropic zoom, shift about the output's centre) composed with the fit of
//! a slice into its square output, so an image, its label map and its points
//! are resampled once and move together; plus an intensity change.
//!
//! Randomness comes from the caller (`uniform(m)` draws from `[-m, m]`), so
//! the decoder owns its seeds and this crate needs no RNG.

use crate::image2d::{Affine2, Fit, Image2D, Interp};

/// Largest changes of a random [`Jitter`]; each is drawn from `[-max, max]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JitterRange {
    pub rotation_deg: f64,
    /// Relative zoom change (0.1: 0.9x to 1.1x).
    pub zoom: f64,
    /// Output pixels.
    pub shift_px: f64,
    /// Natural log of the intensity gamma.
    pub log_gamma: f64,
    /// Relative gain.
    pub contrast: f64,
    /// Offset on the [0, 1] intensity scale.
    pub brightness: f64,
}

/// One drawn augmentation of a `size x size` output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Jitter {
    /// Fitted output point to augmented output point.
    pub warp: Affine2,
    /// The warp's zoom (> 1 magnifies): output pixels cover `1 / zoom` as much.
    pub zoom: f64,
    pub gamma: f32,
    pub gain: f32,
    pub offset: f32,
}

impl Jitter {
    /// No change: the plain fit.
    pub const NONE: Jitter = Jitter {
        warp: Affine2::IDENTITY,
        zoom: 1.0,
        gamma: 1.0,
        gain: 1.0,
        offset: 0.0,
    };

    pub fn draw(range: &JitterRange, size: usize, mut uniform: impl FnMut(f64) -> f64) -> Jitter {
        let angle = uniform(range.rotation_deg).to_radians();
        let zoom = 1.0 + uniform(range.zoom);
        let shift = (uniform(range.shift_px), uniform(range.shift_px));
        let gamma = uniform(range.log_gamma).exp() as f32;
        let gain = 1.0 + uniform(range.contrast) as f32;
        let offset = uniform(range.brightness) as f32;
        let mid = (size as f64 - 1.0) / 2.0;
        Jitter {
            warp: Affine2::about((mid, mid), angle, zoom, shift),
            zoom,
            gamma,
            gain,
            offset,
        }
    }

    /// `src` placed by `fit` and warped, sampled once onto `size x size`.
    pub fn resample(&self, src: &Image2D, fit: &Fit, size: usize, interp: Interp) -> Image2D {
        let back = self.warp.inverse();
        let mut data = Vec::with_capacity(size * size);
        for r in 0..size {
            for c in 0..size {
                let (wr, wc) = back.apply(r as f64, c as f64);
                let (sr, sc) = fit.to_source(wr, wc);
                data.push(src.sample(sr, sc, interp, 0.0));
            }
        }
        Image2D::new(size, size, data)
    }

    /// An intensity image in [0, 1]: resampled bilinearly, then
    /// `clamp(v^gamma * gain + offset)`.
    pub fn image(&self, src: &Image2D, fit: &Fit, size: usize) -> Image2D {
        let mut out = self.resample(src, fit, size, Interp::Bilinear);
        for v in &mut out.data {
            *v = (v.max(0.0).powf(self.gamma) * self.gain + self.offset).clamp(0.0, 1.0);
        }
        out
    }

    /// A label map: nearest neighbour, values untouched (0 outside).
    pub fn labels(&self, src: &Image2D, fit: &Fit, size: usize) -> Image2D {
        self.resample(src, fit, size, Interp::Nearest)
    }

    /// Output position of source point `(row, col)` (pixel-centre convention).
    pub fn point(&self, fit: &Fit, row: f64, col: f64) -> (f64, f64) {
        let (r, c) = fit.to_output(row, col);
        self.warp.apply(r, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_moves_with_its_image() {
        // A bright dot: after any jitter, the brightest output pixel is where the point went.
        let (h, w, size) = (40, 30, 40);
        let mut data = vec![0.0; h * w];
        data[12 * w + 9] = 1.0;
        let src = Image2D::new(h, w, data);
        let fit = Fit::new(h, w, size);
        let range = JitterRange {
            rotation_deg: 15.0,
            zoom: 0.2,
            shift_px: 5.0,
            log_gamma: 0.0,
            contrast: 0.0,
            brightness: 0.0,
        };
        let draws = [
            0.3, -0.9, 0.5, -0.2, 0.0, 0.0, 0.0, 1.0, 0.7, -0.6, 0.1, 0.0,
        ];
        for k in 0..3 {
            let mut i = k * 4;
            let j = Jitter::draw(&range, size, |m| {
                i += 1;
                m * draws[i % draws.len()]
            });
            let img = j.image(&src, &fit, size);
            let best = (0..img.data.len())
                .max_by(|&a, &b| img.data[a].total_cmp(&img.data[b]))
                .unwrap();
            let (pr, pc) = j.point(&fit, 12.0, 9.0);
            let (r, c) = ((best / size) as f64, (best % size) as f64);
            assert!(
                (r - pr).abs() <= 1.0 && (c - pc).abs() <= 1.0,
                "peak ({r}, {c}) vs point ({pr}, {pc})"
            );
        }
    }

    #[test]
    fn no_jitter_is_the_plain_fit() {
        let src = Image2D::new(2, 4, vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.5, 0.25]);
        let fit = Fit::new(2, 4, 4);
        let (plain, _) = src.fit_square(4, Interp::Nearest, 0.0);
        assert_eq!(Jitter::NONE.labels(&src, &fit, 4), plain);
    }
}
