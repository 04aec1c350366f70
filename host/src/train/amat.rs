//! The task-agnostic pieces of AMAT: when a prediction still counts as
//! correct, and where along an adversarial noise the loss boundary lies.

use crate::attack::{self, PgdConfig, per_sample};
use crate::config::{AmatConfig, SearchKind};
use crate::plugin::{Plugin, TaskInfo};
use anyhow::Result;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// One threshold of the adversarial judgement.
#[derive(Clone, Debug, PartialEq)]
struct Threshold {
    /// A score of the plugin, or `loss`.
    name: String,
    value: f64,
    higher_is_better: bool,
}

/// Decides "still correct under attack" (AMAT's adversarial judgement):
/// every threshold of `amat.judge` met by the plugin's per-sample scores;
/// without thresholds, a 0.1.0 plugin's own predicate if it has one, else
/// loss <= tau.
#[derive(Debug)]
pub struct Judge {
    pub tau: f64,
    thresholds: Vec<Threshold>,
    /// Whether a 0.1.0 plugin has a predicate; unknown until the first call.
    predicate: Option<bool>,
}

impl Judge {
    /// The judgement a run's `[amat]` section asks for, checked against the
    /// scores the plugin describes.
    pub fn new(cfg: &AmatConfig, info: &TaskInfo) -> Result<Self, String> {
        let thresholds = cfg
            .judge
            .iter()
            .map(|(name, &value)| {
                let higher_is_better = if name == "loss" {
                    false
                } else {
                    let known: Vec<&str> = info.scores.iter().map(|s| s.name.as_str()).collect();
                    info.scores
                        .iter()
                        .find(|s| &s.name == name)
                        .ok_or_else(|| {
                            format!(
                                "amat.judge.{name}: the plugin `{}` has no score `{name}` (it has: {}; `loss` names the loss)",
                                info.name,
                                if known.is_empty() { "none".into() } else { known.join(", ") }
                            )
                        })?
                        .higher_is_better
                };
                Ok(Threshold {
                    name: name.clone(),
                    value,
                    higher_is_better,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            tau: cfg.tau.unwrap_or(info.tau as f64),
            thresholds,
            predicate: None,
        })
    }

    /// A judge of `loss <= tau` alone.
    pub fn loss_at_most(tau: f64) -> Self {
        Self {
            tau,
            thresholds: Vec::new(),
            predicate: None,
        }
    }

    /// The judgement in words, for reports: e.g. `hard_dice >= 0.81`.
    pub fn describe(&self) -> String {
        if self.thresholds.is_empty() {
            return match self.predicate {
                Some(true) => "the plugin's own predicate (contract 0.1.0)".into(),
                _ => format!("loss <= {}", self.tau),
            };
        }
        self.thresholds
            .iter()
            .map(|t| {
                let op = if t.higher_is_better { ">=" } else { "<=" };
                format!("{} {op} {}", t.name, t.value)
            })
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// Per-sample correctness of `pred`. `loss` is the per-sample loss if the
    /// caller has it already; it is computed only when needed.
    pub fn correct(
        &mut self,
        plugin: &mut Plugin,
        pred: &Tensor,
        y: &Tensor,
        loss: Option<&Tensor>,
    ) -> Result<Vec<bool>> {
        Ok(bools(&self.correct_mask(plugin, pred, y, loss)?))
    }

    /// [`Judge::correct`] as a bool tensor [B] on the prediction's device:
    /// a caller that gathers several judgements reads them back once. (The
    /// plugin's scores come back on the host; a judgement on them is built
    /// there.)
    pub fn correct_mask(
        &mut self,
        plugin: &mut Plugin,
        pred: &Tensor,
        y: &Tensor,
        loss: Option<&Tensor>,
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let loss_of = |plugin: &mut Plugin| -> Result<Vec<f64>> {
            let l = match loss {
                Some(l) => l.detach(),
                None => plugin.loss(pred, y)?.detach(),
            };
            Ok(Vec::<f64>::try_from(
                l.to_device(Device::Cpu).to_kind(Kind::Double),
            )?)
        };
        if !self.thresholds.is_empty() {
            let batch = pred.size()[0] as usize;
            let scores = if self.thresholds.iter().any(|t| t.name != "loss") {
                plugin.scores(pred, y)?
            } else {
                Vec::new()
            };
            let mut ok = vec![true; batch];
            for t in &self.thresholds {
                let values = if t.name == "loss" {
                    loss_of(plugin)?
                } else {
                    scores
                        .iter()
                        .find(|s| s.name == t.name)
                        .map(|s| s.values.clone())
                        .unwrap_or_default()
                };
                for (o, v) in ok.iter_mut().zip(values) {
                    *o &= if t.higher_is_better {
                        v >= t.value
                    } else {
                        v <= t.value
                    };
                }
            }
            return Ok(Tensor::from_slice(&ok).to_device(pred.device()));
        }
        if self.predicate != Some(false) {
            let mask = plugin.correct(pred, y)?;
            self.predicate = Some(mask.is_some());
            if let Some(mask) = mask {
                return Ok(mask.to_kind(Kind::Bool));
            }
        }
        let l = match loss {
            Some(l) => l.detach(),
            None => plugin.loss(pred, y)?.detach(),
        };
        Ok(l.to_kind(Kind::Double).le(self.tau))
    }
}

fn bools(mask: &Tensor) -> Vec<bool> {
    Vec::<bool>::try_from(mask.to_device(Device::Cpu).to_kind(Kind::Bool)).expect("a [B] mask")
}

/// What a watched training attack found.
pub struct Crossings {
    /// The last iterate: the noise the adversarial term trains on.
    pub delta: Tensor,
    /// Per sample: some iterate, the random start included, was judged wrong.
    pub crossed: Vec<bool>,
    /// Time spent judging iterates: AMAT's own cost over SAT's attack.
    pub judge_seconds: f64,
}

/// The reference rule's attack: PGD at each sample's margin, judging every
/// iterate (AMAT.md: a crossing is ANY iterate judged wrong, so a sample
/// broken mid-attack and repaired by the last step still counts as broken).
pub fn crossings(
    ctx: &mut attack::Context,
    judge: &mut Judge,
    (x, y): (&Tensor, &Tensor),
    eps: &Tensor,
    cfg: &PgdConfig,
) -> Result<Crossings> {
    // Gathered on the device, read once after the attack.
    let mut crossed = Tensor::zeros([x.size()[0]], (Kind::Bool, x.device()));
    let mut judge_seconds = 0.0;
    let mut watch = |plugin: &mut Plugin, _: &Tensor, pred: &Tensor, loss: &Tensor| {
        let start = Instant::now();
        let ok = judge.correct_mask(plugin, pred, y, Some(loss))?;
        crossed = crossed.logical_or(&ok.logical_not());
        judge_seconds += start.elapsed().as_secs_f64();
        Ok(())
    };
    let delta = attack::pgd_watched(ctx, x, y, eps, cfg, Some(&mut watch))?;
    let start = Instant::now();
    let crossed = bools(&crossed);
    Ok(Crossings {
        delta,
        crossed,
        judge_seconds: judge_seconds + start.elapsed().as_secs_f64(),
    })
}

/// Limits of the boundary search.
#[derive(Clone, Copy, Debug)]
pub struct Search {
    /// N_bs: most probes.
    pub steps: usize,
    /// Stop once the boundary is bracketed to within this (norm units).
    pub tolerance: f64,
    /// Margins are clamped up to this, so a bracket below it is resolved.
    pub floor: f64,
    pub kind: SearchKind,
}

/// One sample's bracket `[lo, hi]` of the noise fraction `s`: judged right
/// at `lo`, wrong at `hi`. `f_lo`, `f_hi` are `loss - tau` at the ends,
/// where known (NaN where not): regula falsi interpolates between them.
#[derive(Clone, Copy, Debug)]
pub struct Bracket {
    pub lo: f64,
    pub hi: f64,
    f_lo: f64,
    f_hi: f64,
    /// Probes taken, and ITP's budget: bisection's count plus one.
    probes: u32,
    budget: u32,
    /// Half the tolerance, in units of `s`.
    eps: f64,
}

impl Bracket {
    /// The bracket [0, 1] of a sample whose noise has norm `norm`; the
    /// search stops at a width of `tolerance / norm`.
    pub fn new(norm: f64, tolerance: f64, f_lo: f64, f_hi: f64) -> Self {
        let eps = 0.5 * tolerance / norm.max(f64::MIN_POSITIVE);
        let halvings = (1.0 / (2.0 * eps)).log2().ceil().max(0.0);
        Self {
            lo: 0.0,
            hi: 1.0,
            f_lo,
            f_hi,
            probes: 0,
            budget: if halvings.is_finite() {
                halvings as u32 + 1
            } else {
                u32::MAX
            },
            eps,
        }
    }

    /// Where to probe next, strictly inside the bracket. Regula falsi is
    /// ITP (Oliveira and Takahashi, 2021): the secant point, nudged toward
    /// the middle and projected into a ball around it that shrinks so the
    /// bracket is never wider than bisection's after one more probe.
    pub fn probe(&self, kind: SearchKind) -> f64 {
        let (a, b) = (self.lo, self.hi);
        let half = 0.5 * (a + b);
        let secant_ok = self.f_lo < 0.0 && self.f_hi > 0.0 && self.eps > 0.0;
        if kind == SearchKind::Bisection || !secant_ok || self.budget == u32::MAX {
            return half;
        }
        let width = b - a;
        let secant = (self.f_hi * a - self.f_lo * b) / (self.f_hi - self.f_lo);
        let sigma = (half - secant).signum();
        // Truncation: at least k1 * width^2 toward the middle (k1 = 0.2, k2 = 2).
        let delta = 0.2 * width * width;
        let truncated = if delta <= (half - secant).abs() {
            secant + sigma * delta
        } else {
            half
        };
        // Projection: within r of the middle (less a margin for the probe's
        // rounding to f32, so that the bound holds exactly).
        let r =
            (self.eps * 2f64.powi(self.budget as i32 - self.probes as i32) - 0.5 * width - 1e-6)
                .max(0.0);
        let x = if (truncated - half).abs() <= r {
            truncated
        } else {
            half - sigma * r
        };
        // Strictly inside, also after rounding to f32 (the probe's precision).
        let x = x as f32 as f64;
        if x > a && x < b { x } else { half }
    }

    /// Narrows the bracket with the judgement at `s` and `f = loss - tau` there.
    pub fn update(&mut self, s: f64, ok: bool, f: f64) {
        self.probes += 1;
        if ok {
            self.lo = s;
            self.f_lo = f;
        } else {
            self.hi = s;
            self.f_hi = f;
        }
    }
}

/// For each sample (all of which crossed: wrong at `x + delta`, right at `x`),
/// the smallest `s` in [0, 1] with the prediction at `x + s * delta` wrong,
/// by bisection or regula falsi (forward passes only, evaluation mode),
/// returned as the noise norm `s * ||delta_i||`. `norms` are the
/// `||delta_i||`; `ends` the per-sample losses at `s = 0` and `s = 1` where
/// the caller has them (regula falsi needs them). Also returns how many
/// single-sample forward passes the search took.
#[allow(clippy::too_many_arguments)]
pub fn boundary(
    ctx: &mut attack::Context,
    judge: &mut Judge,
    x: &Tensor,
    y: &Tensor,
    delta: &Tensor,
    norms: &[f64],
    ends: Option<(&[f64], &[f64])>,
    search: Search,
) -> Result<(Vec<f64>, usize)> {
    let n = norms.len();
    let mut forwards = 0;
    let tau = judge.tau;
    let mut brackets: Vec<Bracket> = (0..n)
        .map(|i| {
            let (f0, f1) = ends.map_or((f64::NAN, f64::NAN), |(l0, l1)| (l0[i] - tau, l1[i] - tau));
            Bracket::new(norms[i], search.tolerance, f0, f1)
        })
        .collect();
    let secant = search.kind == SearchKind::RegulaFalsi && ends.is_some();
    for _ in 0..search.steps {
        // Only samples whose answer can still change take part.
        let active: Vec<i64> = (0..n)
            .filter(|&i| {
                let b = &brackets[i];
                (b.hi - b.lo) * norms[i] > search.tolerance && b.hi * norms[i] > search.floor
            })
            .map(|i| i as i64)
            .collect();
        if active.is_empty() {
            break;
        }
        forwards += active.len();
        let rows = Tensor::from_slice(&active).to_device(x.device());
        let kind = if secant {
            SearchKind::RegulaFalsi
        } else {
            SearchKind::Bisection
        };
        let at: Vec<f32> = active
            .iter()
            .map(|&i| brackets[i as usize].probe(kind) as f32)
            .collect();
        let s = Tensor::from_slice(&at).to_device(x.device());
        let (xa, ya, da) = (
            x.index_select(0, &rows),
            y.index_select(0, &rows),
            delta.index_select(0, &rows),
        );
        let (ok, f) = {
            let _guard = tch::no_grad_guard();
            let xs = xa + &da * per_sample(&s, &da);
            if secant {
                let (pred, loss) = ctx.predict(&xs, &ya)?;
                let ok = judge.correct(ctx.plugin, &pred, &ya, Some(&loss))?;
                let l = Vec::<f64>::try_from(loss.to_device(Device::Cpu).to_kind(Kind::Double))?;
                (ok, l.into_iter().map(|l| l - tau).collect())
            } else {
                let pred = ctx.model.forward_t(&xs, false);
                (
                    judge.correct(ctx.plugin, &pred, &ya, None)?,
                    vec![f64::NAN; active.len()],
                )
            }
        };
        for (k, &i) in active.iter().enumerate() {
            brackets[i as usize].update(at[k] as f64, ok[k], f[k]);
        }
    }
    Ok((
        brackets.iter().zip(norms).map(|(b, n)| b.hi * n).collect(),
        forwards,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probes until the bracket is `tolerance` wide (norm 1) on the
    /// monotone `f`, checking every probe lies strictly inside the bracket.
    fn search(kind: SearchKind, f: impl Fn(f64) -> f64, tolerance: f64) -> (Bracket, usize) {
        let mut b = Bracket::new(1.0, tolerance, f(0.0), f(1.0));
        let mut probes = 0;
        while b.hi - b.lo > tolerance {
            let s = b.probe(kind);
            assert!(
                s > b.lo && s < b.hi,
                "{kind:?} probed {s} outside ({}, {})",
                b.lo,
                b.hi
            );
            b.update(s, f(s) <= 0.0, f(s));
            probes += 1;
            assert!(probes < 64, "{kind:?} does not converge");
        }
        (b, probes)
    }

    #[test]
    fn regula_falsi_brackets_the_boundary_in_fewer_probes_than_bisection() {
        // Losses along a noise: smooth and increasing, crossing tau at 0.37
        // (an exact line, a convex curve, a steep sigmoid).
        type Curve = Box<dyn Fn(f64) -> f64>;
        let cases: [(&str, Curve); 3] = [
            ("line", Box::new(|s| s - 0.37)),
            (
                "convex",
                Box::new(|s: f64| (3.0 * s).exp() - (1.11f64).exp()),
            ),
            (
                "sigmoid",
                Box::new(|s: f64| 1.0 / (1.0 + (-12.0 * (s - 0.37)).exp()) - 0.5),
            ),
        ];
        for tolerance in [0.05, 0.01, 0.001] {
            for (name, f) in &cases {
                let (bis, n_bis) = search(SearchKind::Bisection, f, tolerance);
                let (rf, n_rf) = search(SearchKind::RegulaFalsi, f, tolerance);
                for b in [bis, rf] {
                    assert!(b.lo <= 0.37 && 0.37 <= b.hi, "{name}: lost the root: {b:?}");
                }
                assert!(
                    n_rf < n_bis,
                    "{name}, tolerance {tolerance}: regula falsi {n_rf} probes, bisection {n_bis}"
                );
            }
        }
    }

    #[test]
    fn regula_falsi_never_needs_more_than_one_probe_over_bisection() {
        // A step: no interpolation helps; ITP's projection keeps the count.
        let step = |s: f64| if s < 0.731 { -1.0 } else { 1e-9 };
        let kink = |s: f64| if s < 0.2 { s - 0.2 } else { 100.0 * (s - 0.2) };
        for f in [&step as &dyn Fn(f64) -> f64, &kink] {
            for tolerance in [0.05, 0.01, 0.001] {
                let (_, n_bis) = search(SearchKind::Bisection, f, tolerance);
                let (_, n_rf) = search(SearchKind::RegulaFalsi, f, tolerance);
                assert!(
                    n_rf <= n_bis + 1,
                    "{n_rf} probes against bisection's {n_bis}"
                );
            }
        }
    }

    #[test]
    fn without_end_losses_regula_falsi_bisects() {
        let b = Bracket::new(1.0, 0.1, f64::NAN, f64::NAN);
        assert_eq!(b.probe(SearchKind::RegulaFalsi), 0.5);
        // A judgement that disagrees with the loss's sign is not interpolated either.
        let b = Bracket::new(1.0, 0.1, 0.2, 0.5);
        assert_eq!(b.probe(SearchKind::RegulaFalsi), 0.5);
    }
}
