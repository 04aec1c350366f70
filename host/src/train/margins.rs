//! AMAT's per-sample margins: one noise level per training sample, indexed
//! by the sample's position in the training split, kept for the whole run
//! (and in checkpoints), moved by the rule of AMAT.md.

use super::config::AmatConfig;
use serde::{Deserialize, Serialize};

/// What happened to one sample's margin in one update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Wrong on clean input: back to the smallest margin.
    NotLearned,
    /// Still correct under attack: grew by delta_eps.
    Grown,
    /// Still correct under attack, already at eps_max.
    Stayed,
    /// The attack crossed the boundary: set to where the search found it.
    Crossed,
}

/// How many samples had each outcome (in one epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    pub grown: usize,
    pub crossed: usize,
    pub stayed: usize,
    pub not_learned: usize,
}

impl OutcomeCounts {
    pub fn total(&self) -> usize {
        self.grown + self.crossed + self.stayed + self.not_learned
    }

    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::NotLearned => self.not_learned += 1,
            Outcome::Grown => self.grown += 1,
            Outcome::Stayed => self.stayed += 1,
            Outcome::Crossed => self.crossed += 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Margins {
    /// eps_i per training sample.
    pub values: Vec<f32>,
    pub delta_eps: f64,
    pub eps_max: f64,
    /// Outcomes of the updates of the current epoch.
    pub counts: OutcomeCounts,
}

impl Margins {
    /// Every sample starts at delta_eps.
    pub fn new(samples: usize, cfg: &AmatConfig) -> Self {
        let delta_eps = cfg.delta_eps();
        Self {
            values: vec![delta_eps as f32; samples],
            delta_eps,
            eps_max: cfg.eps_max,
            counts: OutcomeCounts::default(),
        }
    }

    pub fn get(&self, indices: &[usize]) -> Vec<f32> {
        indices.iter().map(|&i| self.values[i]).collect()
    }

    /// Applies one sample's outcome. `boundary` is where the search put the
    /// loss boundary (s * ||delta_i||) and is used only for `Crossed`.
    pub fn update(
        &mut self,
        index: usize,
        clean_correct: bool,
        adv_correct: bool,
        boundary: Option<f64>,
    ) -> Outcome {
        let eps = self.values[index] as f64;
        let (outcome, new) = if !clean_correct {
            (Outcome::NotLearned, self.delta_eps)
        } else if adv_correct {
            let grown = (eps + self.delta_eps).min(self.eps_max);
            let outcome = if grown > eps {
                Outcome::Grown
            } else {
                Outcome::Stayed
            };
            (outcome, grown)
        } else {
            let b = boundary.expect("a crossed sample needs its boundary");
            (Outcome::Crossed, b.clamp(self.delta_eps, self.eps_max))
        };
        self.values[index] = new as f32;
        self.counts.add(outcome);
        outcome
    }

    /// Starts a new epoch's counts.
    pub fn reset_counts(&mut self) {
        self.counts = OutcomeCounts::default();
    }

    /// (min, median, max) of the margins.
    pub fn summary(&self) -> (f64, f64, f64) {
        let mut v: Vec<f64> = self.values.iter().map(|&x| x as f64).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return (0.0, 0.0, 0.0);
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        };
        (v[0], median, v[n - 1])
    }

    /// Counts of margins in `bins` equal bins over [0, eps_max] (the last
    /// bin closed).
    pub fn histogram(&self, bins: usize) -> Vec<usize> {
        let mut h = vec![0; bins];
        for &x in &self.values {
            let b = ((x as f64 / self.eps_max) * bins as f64).floor() as usize;
            h[b.min(bins - 1)] += 1;
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn margins() -> Margins {
        let cfg = AmatConfig {
            eps_max: 1.0,
            grow_epochs: 4,
            ..Default::default()
        };
        Margins::new(3, &cfg)
    }

    #[test]
    fn grow_cap_cross_and_reset() {
        let mut m = margins();
        assert_eq!(m.values, [0.25; 3]);
        for _ in 0..3 {
            assert_eq!(m.update(0, true, true, None), Outcome::Grown);
        }
        assert_eq!(m.values[0], 1.0);
        assert_eq!(m.update(0, true, true, None), Outcome::Stayed);
        assert_eq!(m.update(0, true, false, Some(0.6)), Outcome::Crossed);
        assert!((m.values[0] - 0.6).abs() < 1e-7);
        // The boundary is clamped to [delta_eps, eps_max].
        assert_eq!(m.update(1, true, false, Some(0.01)), Outcome::Crossed);
        assert_eq!(m.values[1], 0.25);
        m.update(2, true, true, None);
        assert_eq!(m.update(2, false, true, None), Outcome::NotLearned);
        assert_eq!(m.values[2], 0.25);
        let c = m.counts;
        assert_eq!((c.grown, c.stayed, c.crossed, c.not_learned), (4, 1, 2, 1));
        assert_eq!(m.histogram(4), vec![0, 2, 1, 0]);
        assert_eq!(m.summary(), (0.25, 0.25, 0.6000000238418579));
    }
}
