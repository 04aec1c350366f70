//! Adam and SGD with momentum over a VarStore's trainable tensors, written
//! here (a few lines each) so that their state is ours to checkpoint: tch's
//! optimizers cannot export their moments, and an exact resume needs them.
//! The update rules are PyTorch's (`torch.optim.Adam`, `torch.optim.SGD`).

use crate::config::{OptimizerKind, Schedule, TrainConfig};
use anyhow::{Context, Result, bail};
use tch::{Kind, Tensor, nn::VarStore};

pub struct Optimizer {
    kind: OptimizerKind,
    momentum: f64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    /// Trainable parameters, sorted by name (a stable order for checkpoints).
    params: Vec<(String, Tensor)>,
    /// Adam: first and second moments; SGD: the momentum buffer in `first`.
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    /// Updates taken so far (Adam's bias correction).
    pub steps: i64,
}

impl Optimizer {
    pub fn new(vs: &VarStore, cfg: &TrainConfig) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = || {
            params
                .iter()
                .map(|(_, t)| t.zeros_like())
                .collect::<Vec<_>>()
        };
        Self {
            kind: cfg.optimizer,
            momentum: cfg.momentum,
            betas: cfg.adam_betas,
            eps: cfg.adam_eps,
            weight_decay: cfg.weight_decay,
            first: zeros(),
            second: zeros(),
            params,
            steps: 0,
        }
    }

    pub fn params(&self) -> Vec<&Tensor> {
        self.params.iter().map(|(_, t)| t).collect()
    }

    /// Gradients of `loss` w.r.t. the parameters (never stored in `.grad`),
    /// then one update at rate `lr`.
    pub fn minimize(&mut self, loss: &Tensor, lr: f64) {
        let grads = self.gradients(loss);
        self.step(&grads, lr);
    }

    /// Gradients of `loss` w.r.t. the parameters, in `params` order.
    pub fn gradients(&self, loss: &Tensor) -> Vec<Tensor> {
        Tensor::run_backward(&[loss], &self.params(), false, false)
    }

    /// Moments and step count, which every rank of a data-parallel run
    /// must share (the moments in place, `steps` as a tensor to copy back).
    pub fn shared_state(&self) -> (Vec<Tensor>, Tensor) {
        let moments = self
            .first
            .iter()
            .chain(&self.second)
            .map(Tensor::shallow_clone)
            .collect();
        (moments, Tensor::from_slice(&[self.steps]))
    }

    /// Gradients of a loss computed through `copies` of the parameters (a
    /// reduced-precision network, in the order of [`Optimizer::names`]),
    /// cast to the parameters' kind, in `params` order.
    pub fn gradients_via(&self, loss: &Tensor, copies: &[Tensor]) -> Vec<Tensor> {
        Tensor::run_backward(&[loss], copies, false, false)
            .iter()
            .zip(&self.params)
            .map(|(g, (_, p))| g.to_kind(p.kind()))
            .collect()
    }

    /// Copies the (updated) parameters into `copies`.
    pub fn copy_into(&self, copies: &[Tensor]) {
        let _guard = tch::no_grad_guard();
        for (c, (_, p)) in copies.iter().zip(&self.params) {
            c.shallow_clone().copy_(p);
        }
    }

    /// The parameters' names, in the order of [`Optimizer::gradients_via`].
    pub fn names(&self) -> Vec<&str> {
        self.params.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// One update at rate `lr` from `grads` (in `params` order).
    pub fn step(&mut self, grads: &[Tensor], lr: f64) {
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        for (i, g) in grads.iter().enumerate() {
            let p = &mut self.params[i].1;
            let g = if self.weight_decay > 0.0 {
                g + &*p * self.weight_decay
            } else {
                g.shallow_clone()
            };
            match self.kind {
                OptimizerKind::Sgd => {
                    let buf = &mut self.first[i];
                    if self.momentum > 0.0 {
                        // PyTorch: the first step copies the gradient into the buffer.
                        if self.steps == 1 {
                            buf.copy_(&g);
                        } else {
                            let _ = buf.g_mul_scalar_(self.momentum).g_add_(&g);
                        }
                        let _ = p.g_sub_(&(&*buf * lr));
                    } else {
                        let _ = p.g_sub_(&(g * lr));
                    }
                }
                OptimizerKind::Adam => {
                    // torch.optim.Adam's update, in place: two temporaries per parameter.
                    let [b1, b2] = self.betas;
                    let (m, v) = (&mut self.first[i], &mut self.second[i]);
                    let _ = m.lerp_(&g, 1.0 - b1);
                    let _ = v
                        .g_mul_scalar_(b2)
                        .g_add_(&g.square().g_mul_scalar_(1.0 - b2));
                    let c1 = 1.0 - b1.powi(self.steps as i32);
                    let c2 = 1.0 - b2.powi(self.steps as i32);
                    // p -= lr / c1 * m / (sqrt(v) / sqrt(c2) + eps), the factor folded into the divisor.
                    let mut denom = v.sqrt();
                    let _ = denom
                        .g_div_scalar_(c2.sqrt())
                        .g_add_scalar_(self.eps)
                        .g_mul_scalar_(-c1 / lr);
                    let _ = p.addcdiv_(m, &denom);
                }
            }
        }
    }

    /// The state as named tensors (on the CPU) for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("first.{name}"), self.first[i].to(tch::Device::Cpu)));
            if self.kind == OptimizerKind::Adam {
                out.push((
                    format!("second.{name}"),
                    self.second[i].to(tch::Device::Cpu),
                ));
            }
        }
        out.push(("steps".into(), Tensor::from_slice(&[self.steps])));
        out
    }

    pub fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<()> {
        let mut map: std::collections::HashMap<String, Tensor> = state.into_iter().collect();
        let mut take = |key: String, like: &Tensor| -> Result<Tensor> {
            let t = map
                .remove(&key)
                .with_context(|| format!("optimizer state has no `{key}`"))?;
            if t.size() != like.size() {
                bail!(
                    "optimizer state `{key}` has shape {:?}, the model {:?}",
                    t.size(),
                    like.size()
                );
            }
            Ok(t.to_kind(like.kind()).to(like.device()))
        };
        for i in 0..self.params.len() {
            let (name, p) = (&self.params[i].0.clone(), self.params[i].1.shallow_clone());
            self.first[i] = take(format!("first.{name}"), &p)?;
            if self.kind == OptimizerKind::Adam {
                self.second[i] = take(format!("second.{name}"), &p)?;
            }
        }
        let steps = map
            .remove("steps")
            .context("optimizer state has no `steps`")?;
        self.steps = steps.to_kind(Kind::Int64).int64_value(&[0]);
        Ok(())
    }
}

/// The learning rate of `epoch` (0-based).
pub fn learning_rate(cfg: &TrainConfig, epoch: usize) -> f64 {
    match cfg.schedule {
        Schedule::Constant => cfg.lr,
        Schedule::Step => cfg.lr * cfg.step_gamma.powi((epoch / cfg.step_epochs) as i32),
        Schedule::Cosine => {
            let t = epoch as f64 / cfg.epochs as f64;
            cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn};

    /// One parameter, loss = sum(w^2): compare with PyTorch's Adam by hand.
    #[test]
    fn adam_matches_the_reference_update() {
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2], nn::Init::Const(1.0));
        let cfg = TrainConfig::default();
        let mut opt = Optimizer::new(&vs, &cfg);
        for _ in 0..2 {
            opt.minimize(&w.square().sum(Kind::Float), 0.1);
        }
        // Step 1: g = 2, m_hat = 2, v_hat = 4 -> w = 1 - 0.1 * 2 / (2 + 1e-8) = 0.9.
        // Step 2: g = 1.8, m = 0.1*(0.9*2) ... -> computed in f64 below.
        let (b1, b2, lr, e) = (0.9f64, 0.999f64, 0.1, 1e-8);
        let (mut m, mut v, mut x) = (0.0, 0.0, 1.0f64);
        for t in 1..=2 {
            let g = 2.0 * x;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            x -= lr / (1.0 - b1.powi(t)) * m / ((v / (1.0 - b2.powi(t))).sqrt() + e);
        }
        let got = w.double_value(&[0]);
        assert!((got - x).abs() < 1e-6, "{got} vs {x}");
        assert!(!w.grad().defined() || w.grad().abs().sum(Kind::Float).double_value(&[]) == 0.0);
    }

    #[test]
    fn state_round_trips() {
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[3], nn::Init::Const(1.0));
        let cfg = TrainConfig::default();
        let mut a = Optimizer::new(&vs, &cfg);
        a.minimize(&w.square().sum(Kind::Float), 0.1);
        let mut b = Optimizer::new(&vs, &cfg);
        b.load_state(a.state()).unwrap();
        assert_eq!(b.steps, 1);
        assert!(b.first[0].equal(&a.first[0]) && b.second[0].equal(&a.second[0]));
    }

    #[test]
    fn schedules() {
        let mut cfg = TrainConfig {
            lr: 1.0,
            epochs: 10,
            ..Default::default()
        };
        assert_eq!(learning_rate(&cfg, 7), 1.0);
        cfg.schedule = Schedule::Step;
        cfg.step_epochs = 5;
        assert!((learning_rate(&cfg, 7) - 0.1).abs() < 1e-12);
        cfg.schedule = Schedule::Cosine;
        assert!((learning_rate(&cfg, 5) - 0.5).abs() < 1e-12);
    }
}
