//! The task-agnostic pieces of AMAT: when a prediction still counts as
//! correct, and where along an adversarial noise the loss boundary lies.

use crate::attack::per_sample;
use crate::plugin::Plugin;
use anyhow::Result;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

/// Decides "still correct": the plugin's own predicate when it exports one,
/// otherwise loss <= tau.
#[derive(Debug)]
pub struct Judge {
    pub tau: f64,
    /// Whether the plugin has a predicate; unknown until the first call.
    predicate: Option<bool>,
}

impl Judge {
    pub fn new(tau: f64) -> Self {
        Self {
            tau,
            predicate: None,
        }
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
        if self.predicate != Some(false) {
            let mask = plugin.correct(pred, y)?;
            self.predicate = Some(mask.is_some());
            if let Some(mask) = mask {
                return Ok(bools(&mask));
            }
        }
        let loss = match loss {
            Some(l) => l.detach(),
            None => plugin.loss(pred, y)?.detach(),
        };
        Ok(bools(&loss.le(self.tau)))
    }
}

fn bools(mask: &Tensor) -> Vec<bool> {
    Vec::<bool>::try_from(mask.to_device(Device::Cpu).to_kind(Kind::Bool)).expect("a [B] mask")
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
#[allow(clippy::too_many_arguments)]
pub fn boundary(
    model: &dyn ModuleT,
    plugin: &mut Plugin,
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
            let pred = model.forward_t(&(xa + &da * per_sample(&s, &da)), false);
            judge.correct(plugin, &pred, &ya, None)?
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
