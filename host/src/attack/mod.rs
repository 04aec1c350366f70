//! Projected gradient descent with one noise level per sample (AMAT.md), in
//! the L2 or the Linf norm measured over the whole sample. The loss comes
//! from the task plugin; the network runs in evaluation mode and only the
//! gradient with respect to the input is computed, so the weights' gradients
//! and batch-norm statistics are left alone. FGSM is the one-step case.

use crate::plugin::Plugin;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::nn::ModuleT;
use tch::{Kind, Tensor};

/// The norm a noise level is measured in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    #[default]
    L2,
    Linf,
}

impl std::fmt::Display for Norm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Norm::L2 => "l2",
            Norm::Linf => "linf",
        })
    }
}

/// How PGD runs. The step size of sample i is `step_factor * eps_i / steps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgdConfig {
    pub norm: Norm,
    pub steps: usize,
    pub step_factor: f64,
    /// Start from a uniform draw inside each sample's ball instead of zero.
    pub random_start: bool,
}

impl Default for PgdConfig {
    fn default() -> Self {
        Self {
            norm: Norm::L2,
            steps: 10,
            step_factor: 2.5,
            random_start: true,
        }
    }
}

impl PgdConfig {
    /// FGSM: one step of the full noise level from zero.
    pub fn fgsm(norm: Norm) -> Self {
        Self {
            norm,
            steps: 1,
            step_factor: 1.0,
            random_start: false,
        }
    }

    pub fn validate(&self, section: &str) -> Result<(), String> {
        if self.steps == 0 {
            return Err(format!("{section}.steps must be at least 1"));
        }
        if !(self.step_factor.is_finite() && self.step_factor > 0.0) {
            return Err(format!(
                "{section}.step_factor = {} must be positive",
                self.step_factor
            ));
        }
        Ok(())
    }
}

/// The valid intensity range of the task's images; attacked images stay in it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub min: f64,
    pub max: f64,
}

/// A per-sample value [B] shaped to broadcast against `like` [B, ...].
pub fn per_sample(v: &Tensor, like: &Tensor) -> Tensor {
    let mut shape = vec![1i64; like.dim()];
    shape[0] = -1;
    v.reshape(shape.as_slice())
}

/// The norm of each sample of `t` [B, ...], as [B].
pub fn sample_norms(t: &Tensor, norm: Norm) -> Tensor {
    let flat = t.flatten(1, -1);
    match norm {
        Norm::L2 => flat.square().sum_dim_intlist(1, false, Kind::Float).sqrt(),
        Norm::Linf => flat.abs().amax(1, false),
    }
}

/// Projects each sample of `delta` onto its ball of radius `eps[i]`.
pub fn project(delta: &Tensor, eps: &Tensor, norm: Norm) -> Tensor {
    match norm {
        Norm::L2 => {
            let n = sample_norms(delta, norm);
            let scale = (eps / (n + 1e-12)).clamp_max(1.0);
            delta * per_sample(&scale, delta)
        }
        Norm::Linf => {
            let e = per_sample(eps, delta);
            delta.minimum(&e).maximum(&(-&e))
        }
    }
}

/// A uniform draw inside each sample's ball.
fn random_in_ball(like: &Tensor, eps: &Tensor, norm: Norm) -> Tensor {
    match norm {
        Norm::Linf => (like.rand_like() * 2.0 - 1.0) * per_sample(eps, like),
        Norm::L2 => {
            // A uniform direction, and a radius with density ~ r^(d-1).
            let dims = like.numel() as f64 / like.size()[0] as f64;
            let g = like.randn_like();
            let dir = &g / per_sample(&(sample_norms(&g, Norm::L2) + 1e-12), like);
            let r = eps.rand_like().pow_tensor_scalar(1.0 / dims) * eps;
            dir * per_sample(&r, like)
        }
    }
}

/// Keeps `x + delta` inside the intensity range.
fn clip(x: &Tensor, delta: &Tensor, range: Range) -> Tensor {
    (x + delta).clamp(range.min, range.max) - x
}

/// Sees PGD's iterates, the start and the last included: the noise, the
/// prediction at `x + delta` (evaluation mode, detached) and its per-sample
/// loss. AMAT's crossings and the evaluation's worst iterate are watches.
pub type Watch<'w> = dyn FnMut(&mut Plugin, &Tensor, &Tensor, &Tensor) -> Result<()> + 'w;

/// What an attack works against: the network (run in evaluation mode), the
/// task's plugin whose loss it ascends, and the intensity range attacked
/// images stay in. PGD, AMAT's boundary search and the evaluation share it.
pub struct Context<'a> {
    pub model: &'a dyn ModuleT,
    pub plugin: &'a mut Plugin,
    pub range: Range,
}

impl<'a> Context<'a> {
    pub fn new(model: &'a dyn ModuleT, plugin: &'a mut Plugin, range: Range) -> Self {
        Self {
            model,
            plugin,
            range,
        }
    }

    /// The prediction at `x` (evaluation mode, no gradient) and its
    /// per-sample loss.
    pub fn predict(&mut self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        let _guard = tch::no_grad_guard();
        let pred = self.model.forward_t(x, false);
        let loss = self.plugin.loss(&pred, y)?.detach();
        Ok((pred, loss))
    }
}

/// Runs PGD and returns the noise `delta`, with `||delta_i|| <= eps[i]` and
/// `x + delta` in the context's range. `x` must lie in that range. A zero
/// noise level gives zero noise, and no random numbers are drawn when every
/// level is zero.
pub fn pgd(
    ctx: &mut Context,
    x: &Tensor,
    y: &Tensor,
    eps: &Tensor,
    cfg: &PgdConfig,
) -> Result<Tensor> {
    pgd_watched(ctx, x, y, eps, cfg, None)
}

/// [`pgd`], showing every iterate to `watch`: T + 1 of them (the start, and
/// the iterate after each step), at the cost of one forward for the last.
pub fn pgd_watched(
    ctx: &mut Context,
    x: &Tensor,
    y: &Tensor,
    eps: &Tensor,
    cfg: &PgdConfig,
    mut watch: Option<&mut Watch>,
) -> Result<Tensor> {
    let x = x.detach();
    // Read where the caller keeps the levels: a host tensor costs no wait on the device.
    let top = eps.max().double_value(&[]);
    let eps = eps.detach().to_kind(Kind::Float).to_device(x.device());
    if top <= 0.0 {
        let delta = x.zeros_like();
        if let Some(w) = watch {
            see(ctx, &x, y, &delta, w)?;
        }
        return Ok(delta);
    }
    let alpha = per_sample(&(&eps * (cfg.step_factor / cfg.steps as f64)), &x);
    let mut delta = {
        let _guard = tch::no_grad_guard();
        if cfg.random_start {
            clip(&x, &random_in_ball(&x, &eps, cfg.norm), ctx.range)
        } else {
            x.zeros_like()
        }
    };
    for _ in 0..cfg.steps {
        let d = delta.detach().set_requires_grad(true);
        let pred = ctx.model.forward_t(&(&x + &d), false);
        let per = ctx.plugin.loss(&pred, y)?;
        if let Some(w) = watch.as_deref_mut() {
            w(ctx.plugin, &delta, &pred.detach(), &per.detach())?;
        }
        let loss = per.sum(Kind::Float);
        // Gradient w.r.t. the noise only: the weights' .grad is never touched.
        let g = Tensor::run_backward(&[&loss], &[&d], false, false).remove(0);
        let _guard = tch::no_grad_guard();
        let step = match cfg.norm {
            Norm::L2 => &g / per_sample(&(sample_norms(&g, Norm::L2) + 1e-12), &g),
            Norm::Linf => g.sign(),
        };
        delta = project(&(&delta + step * &alpha), &eps, cfg.norm);
        delta = clip(&x, &delta, ctx.range);
    }
    let delta = delta.detach();
    if let Some(w) = watch {
        see(ctx, &x, y, &delta, w)?;
    }
    Ok(delta)
}

/// Shows the iterate `delta` to `watch` (forward only).
fn see(ctx: &mut Context, x: &Tensor, y: &Tensor, delta: &Tensor, watch: &mut Watch) -> Result<()> {
    let (pred, loss) = ctx.predict(&(x + delta), y)?;
    watch(ctx.plugin, delta, &pred, &loss)
}

/// Per-sample loss [B] at `x + s[i] * delta` (forward only, evaluation mode):
/// what AMAT's boundary search evaluates.
pub fn loss_at(
    ctx: &mut Context,
    x: &Tensor,
    y: &Tensor,
    delta: &Tensor,
    s: &Tensor,
) -> Result<Tensor> {
    Ok(ctx.predict(&(x + delta * per_sample(s, delta)), y)?.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn projection_puts_each_sample_inside_its_own_ball() {
        let d = Tensor::randn([3, 1, 4, 4], (Kind::Float, Device::Cpu)) * 5.0;
        let eps = Tensor::from_slice(&[0.0f32, 0.5, 100.0]);
        for norm in [Norm::L2, Norm::Linf] {
            let p = project(&d, &eps, norm);
            let n: Vec<f32> = Vec::try_from(sample_norms(&p, norm)).unwrap();
            let orig: Vec<f32> = Vec::try_from(sample_norms(&d, norm)).unwrap();
            assert_eq!(n[0], 0.0);
            assert!((n[1] - 0.5).abs() < 1e-5, "{norm}: {n:?}");
            assert!(
                (n[2] - orig[2]).abs() < 1e-5,
                "inside the ball stays: {n:?} {orig:?}"
            );
        }
    }

    #[test]
    fn random_start_stays_inside_the_ball() {
        let x = Tensor::zeros([4, 2, 8, 8], (Kind::Float, Device::Cpu));
        let eps = Tensor::from_slice(&[0.1f32, 1.0, 2.0, 0.0]);
        for norm in [Norm::L2, Norm::Linf] {
            let d = random_in_ball(&x, &eps, norm);
            let n: Vec<f32> = Vec::try_from(sample_norms(&d, norm)).unwrap();
            for (ni, ei) in n.iter().zip([0.1f32, 1.0, 2.0, 0.0]) {
                assert!(*ni <= ei * (1.0 + 1e-5), "{norm}: {n:?}");
            }
            assert!(
                n[2] > 0.5,
                "a draw in a ball of 128 dims lies near its surface: {n:?}"
            );
        }
    }
}
