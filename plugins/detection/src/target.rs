//! The dense CenterNet target of one `H x W` example, `[C + 5, H, W]` with
//! `C = CLASSES.len()`:
//!
//! | channels | meaning |
//! | --- | --- |
//! | `0..C` | centre heatmap per class: a Gaussian around each box centre, exactly 1 at its centre pixel |
//! | `C, C+1` | box height and width in pixels, at centre pixels (0 elsewhere) |
//! | `C+2, C+3` | offset of the true centre from its centre pixel's corner, in [0, 1), at centre pixels |
//! | `C+4` | class index + 1 at centre pixels, 0 elsewhere |
//!
//! Boxes use edge coordinates: pixel `(i, j)` covers `[i, i+1) x [j, j+1)`,
//! so a box of the pixels `r0..=r1` spans `[r0, r1 + 1)`. Its centre pixel is
//! `floor(centre)`. Every box is recoverable exactly from the target
//! ([`boxes_of`]), so metrics need no side channel. Two boxes whose centres
//! fall on the same pixel cannot both be encoded: the later one is dropped
//! (and counted by [`encode`]).

use crate::CLASSES;

/// Channels of the target (and of the model's output: `C` heatmaps + size + offset
/// for the output, plus the class channel for the target).
pub const TARGET_CHANNELS: usize = CLASSES.len() + 5;

/// An axis-aligned box in edge coordinates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BBox {
    pub class: usize,
    pub top: f64,
    pub left: f64,
    pub bottom: f64,
    pub right: f64,
}

impl BBox {
    pub fn height(&self) -> f64 {
        self.bottom - self.top
    }
    pub fn width(&self) -> f64 {
        self.right - self.left
    }
    pub fn centre(&self) -> (f64, f64) {
        (
            (self.top + self.bottom) / 2.0,
            (self.left + self.right) / 2.0,
        )
    }

    pub fn iou(&self, other: &BBox) -> f64 {
        let h = (self.bottom.min(other.bottom) - self.top.max(other.top)).max(0.0);
        let w = (self.right.min(other.right) - self.left.max(other.left)).max(0.0);
        let inter = h * w;
        let union = self.height() * self.width() + other.height() * other.width() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// Gaussian width for a box: wider boxes tolerate a less exact centre.
fn sigma(b: &BBox) -> f64 {
    (b.height().min(b.width()) / 6.0).max(0.5)
}

/// The target `[C + 5, size, size]` of `boxes`, and how many were dropped
/// because their centre pixel was taken.
pub fn encode(boxes: &[BBox], size: usize) -> (Vec<f32>, usize) {
    let plane = size * size;
    let c = CLASSES.len();
    let mut t = vec![0.0f32; TARGET_CHANNELS * plane];
    let mut dropped = 0;
    for b in boxes {
        let (cr, cc) = b.centre();
        let (pr, pc) = (cr.floor(), cc.floor());
        if pr < 0.0 || pc < 0.0 || pr >= size as f64 || pc >= size as f64 {
            dropped += 1;
            continue;
        }
        let at = pr as usize * size + pc as usize;
        if t[(c + 4) * plane + at] > 0.0 {
            dropped += 1;
            continue;
        }
        let s = sigma(b);
        let reach = (3.0 * s).ceil() as i64;
        let heat = &mut t[b.class * plane..(b.class + 1) * plane];
        for dr in -reach..=reach {
            for dc in -reach..=reach {
                let (r, col) = (pr as i64 + dr, pc as i64 + dc);
                if r < 0 || col < 0 || r >= size as i64 || col >= size as i64 {
                    continue;
                }
                let g = (-((dr * dr + dc * dc) as f64) / (2.0 * s * s)).exp() as f32;
                let v = &mut heat[r as usize * size + col as usize];
                *v = v.max(g);
            }
        }
        t[c * plane + at] = b.height() as f32;
        t[(c + 1) * plane + at] = b.width() as f32;
        t[(c + 2) * plane + at] = (cr - pr) as f32;
        t[(c + 3) * plane + at] = (cc - pc) as f32;
        t[(c + 4) * plane + at] = (b.class + 1) as f32;
    }
    (t, dropped)
}

/// A box from its centre pixel, size and offset.
pub fn box_at(
    class: usize,
    row: usize,
    col: usize,
    size_hw: (f64, f64),
    offset: (f64, f64),
) -> BBox {
    let (cr, cc) = (row as f64 + offset.0, col as f64 + offset.1);
    BBox {
        class,
        top: cr - size_hw.0 / 2.0,
        left: cc - size_hw.1 / 2.0,
        bottom: cr + size_hw.0 / 2.0,
        right: cc + size_hw.1 / 2.0,
    }
}

/// The boxes of one target from its last five channels (`[5, H, W]`
/// row-major: height, width, offset row, offset col, class + 1).
pub fn boxes_of(regression: &[f32], h: usize, w: usize) -> Vec<BBox> {
    let plane = h * w;
    let ch = |k: usize, at: usize| regression[k * plane + at] as f64;
    (0..plane)
        .filter(|&at| ch(4, at) > 0.5)
        .map(|at| {
            let class = ch(4, at).round() as usize - 1;
            box_at(
                class,
                at / w,
                at % w,
                (ch(0, at), ch(1, at)),
                (ch(2, at), ch(3, at)),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_come_back_exactly_from_the_target() {
        let boxes = vec![
            BBox {
                class: 2,
                top: 3.0,
                left: 4.0,
                bottom: 10.0,
                right: 7.0,
            },
            BBox {
                class: 5,
                top: 0.0,
                left: 10.0,
                bottom: 4.0,
                right: 16.0,
            },
            // Same centre pixel as the first: dropped.
            BBox {
                class: 1,
                top: 3.0,
                left: 4.0,
                bottom: 10.0,
                right: 7.5,
            },
        ];
        let (t, dropped) = encode(&boxes, 16);
        assert_eq!(dropped, 1);
        let plane = 16 * 16;
        let back = boxes_of(&t[CLASSES.len() * plane..], 16, 16);
        assert_eq!(back.len(), 2);
        for b in &boxes[..2] {
            assert!(back.iter().any(|x| x == b), "{b:?} not in {back:?}");
        }
        // Heat is 1 exactly at centre pixels: (6, 5) for the first box.
        assert_eq!(t[2 * plane + 6 * 16 + 5], 1.0);
        assert!(t[2 * plane + 6 * 16 + 6] < 1.0 && t[2 * plane + 6 * 16 + 6] > 0.0);
    }

    #[test]
    fn iou_of_known_overlaps() {
        let a = BBox {
            class: 0,
            top: 0.0,
            left: 0.0,
            bottom: 10.0,
            right: 10.0,
        };
        let b = BBox {
            class: 0,
            top: 0.0,
            left: 5.0,
            bottom: 10.0,
            right: 15.0,
        };
        assert_eq!(a.iou(&a), 1.0);
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-12);
    }
}
