//! The landmark target: one fixed-shape dense tensor per example, so the host
//! can batch examples with different landmarks present.
//!
//! Shape `[K + 1, 3]` with `K = LANDMARKS`:
//! - row `k < K`: `(row, col, present)` of landmark `k` (AFID `k + 1`) in
//!   output pixels (pixel `(i, j)` has its centre at `(i, j)`), `present` 1
//!   when the landmark lies in this slice and inside the image, else 0 (and
//!   row = col = 0);
//! - row `K`: `(row spacing, col spacing, 0)`, millimetres per output pixel,
//!   so that metrics report millimetres without a side channel.

/// The 32 AFIDs of the AFIDs protocol, in the order of their ids (1..=32).
pub const LANDMARKS: usize = 32;
/// Values per row of the target.
pub const FIELDS: usize = 3;

/// One landmark in output pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub row: f64,
    pub col: f64,
}

/// The target of one example.
#[derive(Clone, Debug, PartialEq)]
pub struct LandmarkTarget {
    pub points: [Option<Point>; LANDMARKS],
    /// Millimetres per output pixel along rows and columns.
    pub spacing_mm: [f64; 2],
}

impl LandmarkTarget {
    pub fn shape() -> Vec<i64> {
        vec![LANDMARKS as i64 + 1, FIELDS as i64]
    }

    pub fn present(&self) -> usize {
        self.points.iter().flatten().count()
    }

    pub fn encode(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity((LANDMARKS + 1) * FIELDS);
        for p in &self.points {
            match p {
                Some(p) => out.extend([p.row as f32, p.col as f32, 1.0]),
                None => out.extend([0.0, 0.0, 0.0]),
            }
        }
        out.extend([self.spacing_mm[0] as f32, self.spacing_mm[1] as f32, 0.0]);
        out
    }

    /// The targets of a batch from its row-major values.
    pub fn decode_batch(values: &[f32]) -> Result<Vec<LandmarkTarget>, String> {
        let per = (LANDMARKS + 1) * FIELDS;
        if !values.len().is_multiple_of(per) {
            return Err(format!(
                "landmark target: {} values are not a whole number of [{}, {FIELDS}] targets",
                values.len(),
                LANDMARKS + 1
            ));
        }
        Ok(values
            .chunks(per)
            .map(|t| {
                let mut points = [None; LANDMARKS];
                for (k, p) in points.iter_mut().enumerate() {
                    let r = &t[k * FIELDS..(k + 1) * FIELDS];
                    if r[2] > 0.5 {
                        *p = Some(Point {
                            row: r[0] as f64,
                            col: r[1] as f64,
                        });
                    }
                }
                let s = &t[LANDMARKS * FIELDS..];
                LandmarkTarget {
                    points,
                    spacing_mm: [s[0] as f64, s[1] as f64],
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_is_the_identity() {
        let mut points = [None; LANDMARKS];
        points[0] = Some(Point {
            row: 3.5,
            col: 7.25,
        });
        points[31] = Some(Point { row: 0.0, col: 1.0 });
        let t = LandmarkTarget {
            points,
            spacing_mm: [1.5, 2.0],
        };
        let v = t.encode();
        assert_eq!(
            v.len() as i64,
            LandmarkTarget::shape().iter().product::<i64>()
        );
        assert_eq!(LandmarkTarget::decode_batch(&v).unwrap(), vec![t]);
        assert!(LandmarkTarget::decode_batch(&v[1..]).is_err());
    }
}
