//! The task-agnostic pieces of AMAT: when a prediction still counts as
//! correct, and where along an adversarial noise the loss boundary lies.

use crate::attack::{self, PgdConfig, per_sample};
use crate::config::AmatConfig;
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
            return Ok(ok);
        }
        if self.predicate != Some(false) {
            let mask = plugin.correct(pred, y)?;
            self.predicate = Some(mask.is_some());
            if let Some(mask) = mask {
                return Ok(bools(&mask));
            }
        }
        Ok(loss_of(plugin)?
            .into_iter()
            .map(|l| l <= self.tau)
            .collect())
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
    let mut crossed = vec![false; x.size()[0] as usize];
    let mut judge_seconds = 0.0;
    let mut watch = |plugin: &mut Plugin, _: &Tensor, pred: &Tensor, loss: &Tensor| {
        let start = Instant::now();
        let ok = judge.correct(plugin, pred, y, Some(loss))?;
        for (c, ok) in crossed.iter_mut().zip(ok) {
            *c |= !ok;
        }
        judge_seconds += start.elapsed().as_secs_f64();
        Ok(())
    };
    let delta = attack::pgd_watched(ctx, x, y, eps, cfg, Some(&mut watch))?;
    Ok(Crossings {
        delta,
        crossed,
        judge_seconds,
    })
}

/// Limits of the boundary search.
#[derive(Clone, Copy, Debug)]
pub struct Search {
    /// N_bs: most halvings.
    pub steps: usize,
    /// Stop once the boundary is bracketed to within this (norm units).
    pub tolerance: f64,
    /// Margins are clamped up to this, so a bracket below it is resolved.
    pub floor: f64,
}

/// For each sample (all of which crossed: wrong at `x + delta`, right at `x`),
/// the smallest `s` in [0, 1] with the prediction at `x + s * delta` wrong,
/// by bisection (forward passes only, evaluation mode), returned as the
/// noise norm `s * ||delta_i||`. `norms` are the `||delta_i||`. Also returns
/// how many single-sample forward passes the search took.
pub fn boundary(
    ctx: &mut attack::Context,
    judge: &mut Judge,
    x: &Tensor,
    y: &Tensor,
    delta: &Tensor,
    norms: &[f64],
    search: Search,
) -> Result<(Vec<f64>, usize)> {
    let n = norms.len();
    let mut forwards = 0;
    let (mut lo, mut hi) = (vec![0.0f64; n], vec![1.0f64; n]);
    for _ in 0..search.steps {
        // Only samples whose answer can still change take part.
        let active: Vec<i64> = (0..n)
            .filter(|&i| {
                (hi[i] - lo[i]) * norms[i] > search.tolerance && hi[i] * norms[i] > search.floor
            })
            .map(|i| i as i64)
            .collect();
        if active.is_empty() {
            break;
        }
        forwards += active.len();
        let rows = Tensor::from_slice(&active).to_device(x.device());
        let mid: Vec<f32> = active
            .iter()
            .map(|&i| (0.5 * (lo[i as usize] + hi[i as usize])) as f32)
            .collect();
        let s = Tensor::from_slice(&mid).to_device(x.device());
        let (xa, ya, da) = (
            x.index_select(0, &rows),
            y.index_select(0, &rows),
            delta.index_select(0, &rows),
        );
        let ok = {
            let _guard = tch::no_grad_guard();
            let pred = ctx
                .model
                .forward_t(&(xa + &da * per_sample(&s, &da)), false);
            judge.correct(ctx.plugin, &pred, &ya, None)?
        };
        for (k, &i) in active.iter().enumerate() {
            let (i, m) = (i as usize, mid[k] as f64);
            if ok[k] {
                lo[i] = m;
            } else {
                hi[i] = m;
            }
        }
    }
    Ok((hi.iter().zip(norms).map(|(h, n)| h * n).collect(), forwards))
}
