//! AMAT's per-sample margins: one noise level per training sample, indexed
//! by the sample's position in the training split, kept for the whole run
//! (and in checkpoints), moved by one of the two rules of AMAT.md.
//!
//! - `reference` (the authors' AMAT): each visit of a sample records whether
//!   any PGD iterate was judged wrong; at the end of the epoch a sample that
//!   held in some visit grows by delta_eps, one crossed in every visit moves
//!   to F_i, the running average of its noise norms in crossing visits
//!   (F_i starts the epoch at E_i). Repeated visits (patches of one case)
//!   therefore average instead of overwriting.
//! - `boundary` (the authors' earlier IMA-like rule): updated after each
//!   batch; a crossed sample moves to the loss boundary found by a search
//!   along its noise.

use crate::config::{AmatConfig, AmatRule};
use serde::{Deserialize, Serialize};

/// What happened to one sample's margin in one update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not gated (wrong on clean input): unchanged, or back to delta_eps
    /// with `reset_wrong`.
    NotLearned,
    /// Held under attack: grew by delta_eps.
    Grown,
    /// Held under attack, already at eps_max.
    Stayed,
    /// The attack crossed: moved to F_i (reference) or the boundary (boundary).
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

/// One sample's observations in the current epoch (reference rule).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Visits {
    seen: bool,
    /// Gated in some visit.
    gated: bool,
    /// Held (no iterate judged wrong) in some gated visit.
    held: bool,
    /// F_i: E_i at the start of the epoch, averaged with each crossing
    /// visit's noise norm.
    f: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Margins {
    /// eps_i per training sample.
    pub values: Vec<f32>,
    pub rule: AmatRule,
    pub delta_eps: f64,
    /// May be infinite.
    pub eps_max: f64,
    pub reset_wrong: bool,
    /// Outcomes of the updates of the current epoch.
    pub counts: OutcomeCounts,
    visits: Vec<Visits>,
}

impl Margins {
    /// Every sample starts at delta_eps.
    pub fn new(samples: usize, cfg: &AmatConfig) -> Self {
        let delta_eps = cfg.delta_eps();
        Self {
            values: vec![delta_eps as f32; samples],
            rule: cfg.rule,
            delta_eps,
            eps_max: cfg.eps_max,
            reset_wrong: cfg.reset_wrong,
            counts: OutcomeCounts::default(),
            visits: Vec::new(),
        }
    }

    pub fn get(&self, indices: &[usize]) -> Vec<f32> {
        indices.iter().map(|&i| self.values[i]).collect()
    }

    /// Starts an epoch: clears its counts and (reference rule) its visits.
    pub fn begin_epoch(&mut self) {
        self.counts = OutcomeCounts::default();
        self.visits = self
            .values
            .iter()
            .map(|&e| Visits {
                f: e as f64,
                ..Visits::default()
            })
            .collect();
    }

    /// Reference rule: records one visit of sample `index`. `crossed` when
    /// any PGD iterate was judged wrong; `norm` is the noise norm ||delta_i||.
    pub fn observe(&mut self, index: usize, gated: bool, crossed: bool, norm: f64) {
        if self.visits.len() != self.values.len() {
            self.begin_epoch();
        }
        let v = &mut self.visits[index];
        v.seen = true;
        if !gated {
            return;
        }
        v.gated = true;
        if crossed {
            v.f = (v.f + norm) / 2.0;
        } else {
            v.held = true;
        }
    }

    /// Reference rule: applies the epoch's visits (samples not visited stay).
    pub fn end_epoch(&mut self) {
        let visits = std::mem::take(&mut self.visits);
        for (i, v) in visits.iter().enumerate().filter(|(_, v)| v.seen) {
            let eps = self.values[i] as f64;
            let (outcome, new) = if !v.gated {
                (Outcome::NotLearned, self.not_learned(eps))
            } else if v.held {
                self.grow(eps)
            } else {
                (Outcome::Crossed, v.f)
            };
            self.set(i, outcome, new.clamp(0.0, self.eps_max));
        }
    }

    /// Boundary rule: applies one sample's outcome at once. `boundary` is
    /// where the search put the loss boundary (s * ||delta_i||), used only
    /// when the sample crossed.
    pub fn update(
        &mut self,
        index: usize,
        gated: bool,
        adv_correct: bool,
        boundary: Option<f64>,
    ) -> Outcome {
        let eps = self.values[index] as f64;
        let (outcome, new) = if !gated {
            (Outcome::NotLearned, self.not_learned(eps))
        } else if adv_correct {
            self.grow(eps)
        } else {
            let b = boundary.expect("a crossed sample needs its boundary");
            (Outcome::Crossed, b.clamp(self.delta_eps, self.eps_max))
        };
        self.set(index, outcome, new);
        outcome
    }

    fn not_learned(&self, eps: f64) -> f64 {
        if self.reset_wrong {
            self.delta_eps
        } else {
            eps
        }
    }

    fn grow(&self, eps: f64) -> (Outcome, f64) {
        let grown = (eps + self.delta_eps).min(self.eps_max);
        let outcome = if grown > eps {
            Outcome::Grown
        } else {
            Outcome::Stayed
        };
        (outcome, grown)
    }

    fn set(&mut self, index: usize, outcome: Outcome, value: f64) {
        self.values[index] = value as f32;
        self.counts.add(outcome);
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

    /// The top of the histogram's range: eps_max, or the largest margin when
    /// eps_max is infinite.
    pub fn histogram_top(&self) -> f64 {
        if self.eps_max.is_finite() {
            self.eps_max
        } else {
            self.summary().2.max(self.delta_eps)
        }
    }

    /// Counts of margins in `bins` equal bins over [0, histogram_top] (the
    /// last bin closed).
    pub fn histogram(&self, bins: usize) -> Vec<usize> {
        let top = self.histogram_top();
        let mut h = vec![0; bins];
        for &x in &self.values {
            let b = ((x as f64 / top) * bins as f64).floor() as usize;
            h[b.min(bins - 1)] += 1;
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn margins(rule: AmatRule, reset_wrong: bool) -> Margins {
        let cfg = AmatConfig {
            rule,
            eps_max: 1.0,
            grow_epochs: 4,
            reset_wrong,
            ..Default::default()
        };
        Margins::new(3, &cfg)
    }

    #[test]
    fn boundary_rule_grows_caps_crosses_and_resets_when_asked() {
        let mut m = margins(AmatRule::Boundary, true);
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
        // Without reset_wrong an ungated sample keeps its margin.
        let mut m = margins(AmatRule::Boundary, false);
        m.update(2, true, true, None);
        m.update(2, false, true, None);
        assert_eq!(m.values[2], 0.5);
    }

    #[test]
    fn reference_rule_moves_each_sample_at_the_end_of_the_epoch() {
        let mut m = margins(AmatRule::Reference, false);
        m.values = vec![0.5, 0.5, 0.5];
        m.begin_epoch();
        // 0 holds; 1 crosses twice (F = ((0.5 + 0.3) / 2 + 0.1) / 2); 2 is not gated.
        m.observe(0, true, false, 0.5);
        m.observe(1, true, true, 0.3);
        m.observe(1, true, true, 0.1);
        m.observe(2, false, true, 0.2);
        // Nothing moves before the epoch ends.
        assert_eq!(m.values, [0.5, 0.5, 0.5]);
        m.end_epoch();
        assert_eq!(m.values[0], 0.75);
        assert!((m.values[1] as f64 - 0.25).abs() < 1e-7, "{:?}", m.values);
        assert_eq!(m.values[2], 0.5);
        let c = m.counts;
        assert_eq!((c.grown, c.crossed, c.not_learned), (1, 1, 1));
        // Held in one visit of two: grows.
        m.begin_epoch();
        m.observe(1, true, true, 0.0);
        m.observe(1, true, false, 0.25);
        m.end_epoch();
        assert_eq!(m.values[1], 0.5);
        // Unvisited samples are left alone; growth stops at eps_max.
        m.values[0] = 0.9;
        m.begin_epoch();
        m.observe(0, true, false, 0.9);
        m.end_epoch();
        assert_eq!(m.values, [1.0, 0.5, 0.5]);
    }

    #[test]
    fn infinite_eps_max_keeps_a_histogram() {
        let cfg = AmatConfig {
            eps_max: f64::INFINITY,
            delta_eps: Some(0.5),
            ..Default::default()
        };
        let mut m = Margins::new(2, &cfg);
        m.begin_epoch();
        m.observe(0, true, false, 0.5);
        m.end_epoch();
        assert_eq!(m.values, [1.0, 0.5]);
        assert_eq!(m.histogram(2), vec![0, 2]);
    }
}
