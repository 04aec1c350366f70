//! Sliding-window inference over whole volumes (or images), as nnU-Net does
//! it: windows of the training patch size step over the input with a given
//! overlap (0.5 by default); each window's logits are weighted by a Gaussian
//! centred on the window (sigma = 1/8 of the window per axis), so that a
//! voxel's value comes mostly from the windows that saw it with the most
//! context; the stitched logits are the weighted sum over windows divided by
//! the summed weights. An input shorter than the window along an axis is
//! padded with zeros for the forward and cropped back after it.
//!
//! Everything is written in differentiable tensor ops, so the stitched
//! prediction is a function of the whole input that PGD can differentiate:
//! an attack on a volume sees the same windows as its evaluation. Memory:
//! autograd keeps every window's activations until the backward pass, so one
//! attack step holds about (number of windows) x (one patch's forward
//! activations, for the batch), plus the [B, K, *volume] logit buffer; a
//! forward without gradient holds one window's at a time.

use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

/// nnU-Net's Gaussian: sigma is this fraction of the window along each axis.
pub const SIGMA_SCALE: f64 = 1.0 / 8.0;

/// The windows an input is predicted in.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// Spatial size of a window ([D, H, W] or [H, W]): the training patch.
    pub size: Vec<i64>,
    /// Fraction of a window shared with its neighbour along each axis, in [0, 1).
    pub overlap: f64,
}

/// Where windows of length `window` start along an axis of length `len`
/// (`len >= window`): as few as keep neighbours overlapping by at least
/// `overlap`, spread evenly from 0 to `len - window`.
pub fn starts(len: i64, window: i64, overlap: f64) -> Vec<i64> {
    if len <= window {
        return vec![0];
    }
    let stride = (window as f64 * (1.0 - overlap)).max(1.0);
    let span = len - window;
    let n = (span as f64 / stride).ceil() as i64 + 1;
    (0..n)
        .map(|k| (k as f64 * span as f64 / (n - 1) as f64).round() as i64)
        .collect()
}

/// The weight of each position of a window: a Gaussian with sigma =
/// `SIGMA_SCALE` x the window per axis, centred at the window's middle voxel
/// (size / 2, as nnU-Net), scaled to a maximum of 1.
pub fn gaussian(size: &[i64], device: Device) -> Tensor {
    let mut g = Tensor::ones([1i64], (Kind::Float, device));
    for &s in size {
        let centre = (s / 2) as f64;
        let sigma = (s as f64 * SIGMA_SCALE).max(1e-3);
        let i = Tensor::arange(s, (Kind::Float, device));
        let axis = (-(i - centre).square() / (2.0 * sigma * sigma)).exp();
        // Outer product: the new axis goes last.
        g = g.unsqueeze(-1) * axis;
    }
    let g = g.reshape(size);
    &g / g.max()
}

/// Every combination of one start per axis.
fn window_starts(per_axis: &[Vec<i64>]) -> Vec<Vec<i64>> {
    per_axis.iter().fold(vec![Vec::new()], |acc, axis| {
        acc.iter()
            .flat_map(|prefix| {
                axis.iter().map(move |&s| {
                    let mut p = prefix.clone();
                    p.push(s);
                    p
                })
            })
            .collect()
    })
}

/// Narrows the spatial axes (from 2 on) of `t` to `len` from `start`.
fn crop(t: &Tensor, start: &[i64], len: &[i64]) -> Tensor {
    start
        .iter()
        .zip(len)
        .enumerate()
        .fold(t.shallow_clone(), |t, (a, (&s, &l))| {
            t.narrow(2 + a as i64, s, l)
        })
}

/// The logits of `model` over `x` [B, C, *spatial], stitched from windows.
/// Panics when `x` has not as many spatial axes as the window (the run's
/// config is checked against the data before any model runs).
pub fn predict(model: &dyn ModuleT, x: &Tensor, window: &Window, train: bool) -> Tensor {
    let size = x.size();
    let spatial = &size[2..];
    assert_eq!(
        spatial.len(),
        window.size.len(),
        "sliding window {:?} over an input of spatial shape {spatial:?}",
        window.size
    );
    let pad: Vec<i64> = spatial
        .iter()
        .zip(&window.size)
        .map(|(&s, &w)| (w - s).max(0))
        .collect();
    let x = if pad.iter().any(|&p| p > 0) {
        // constant_pad_nd lists (before, after) from the last axis back.
        let pairs: Vec<i64> = pad.iter().rev().flat_map(|&p| [0, p]).collect();
        x.constant_pad_nd(pairs)
    } else {
        x.shallow_clone()
    };
    let padded: Vec<i64> = spatial.iter().zip(&pad).map(|(s, p)| s + p).collect();
    let per_axis: Vec<Vec<i64>> = padded
        .iter()
        .zip(&window.size)
        .map(|(&len, &w)| starts(len, w, window.overlap))
        .collect();
    let g = gaussian(&window.size, x.device());
    let mut weight = Tensor::zeros(padded.as_slice(), (Kind::Float, x.device()));
    let mut out: Option<Tensor> = None;
    for start in window_starts(&per_axis) {
        let logits = model.forward_t(&crop(&x, &start, &window.size), train);
        let out = out.get_or_insert_with(|| {
            let mut shape = vec![size[0], logits.size()[1]];
            shape.extend(&padded);
            Tensor::zeros(shape.as_slice(), (logits.kind(), x.device()))
        });
        // In place into a view of the buffer: autograd records the slice
        // update, so the gradient reaches each window's input.
        let mut view = crop(out, &start, &window.size);
        view += &logits * &g;
        let mut w = crop(&weight.unsqueeze(0).unsqueeze(0), &start, &window.size);
        w += &g;
    }
    let out = out.expect("at least one window");
    weight = weight.unsqueeze(0).unsqueeze(0);
    let zero = vec![0i64; spatial.len()];
    crop(&(out / weight), &zero, spatial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_axis_with_the_overlap_asked() {
        assert_eq!(starts(16, 16, 0.5), vec![0]);
        assert_eq!(starts(8, 16, 0.5), vec![0]);
        assert_eq!(starts(32, 16, 0.5), vec![0, 8, 16]);
        // 20 - 16 = 4 left: two windows, overlapping by 12.
        assert_eq!(starts(20, 16, 0.5), vec![0, 4]);
        assert_eq!(starts(48, 16, 0.0), vec![0, 16, 32]);
        for (len, w, o) in [(37, 8, 0.5), (100, 24, 0.25), (65, 64, 0.5)] {
            let s = starts(len, w, o);
            assert_eq!((s[0], *s.last().unwrap()), (0, len - w), "{s:?}");
            for pair in s.windows(2) {
                assert!(
                    pair[1] - pair[0] <= (w as f64 * (1.0 - o)).ceil() as i64,
                    "{len} {w} {o}: {s:?}"
                );
            }
        }
    }

    #[test]
    fn the_gaussian_peaks_at_the_centre_and_falls_to_the_edges() {
        let g = gaussian(&[8, 16, 16], Device::Cpu);
        assert_eq!(g.size(), [8, 16, 16]);
        assert_eq!(g.double_value(&[4, 8, 8]), 1.0);
        // At the edge of an axis (4 sigma from the centre) exp(-8).
        let edge = g.double_value(&[4, 8, 0]);
        assert!((edge - (-8.0f64).exp()).abs() < 1e-6, "{edge}");
        assert!(g.min().double_value(&[]) > 0.0);
    }
}
