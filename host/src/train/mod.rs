//! STD, SAT and AMAT (AMAT.md) in one loop: the methods differ only in the
//! noise level each sample gets (none, one for all, one per sample) and in
//! AMAT's margin update after each batch.

pub mod amat;
pub mod checkpoint;
pub mod margins;
pub mod memory;
pub mod optim;
pub mod patches;
pub mod preflight;
pub mod report;

use crate::attack::{self, Range, sample_norms};
use crate::config::{AmatRule, Precision, SearchKind};
use crate::config::{Method, RunConfig};
use crate::data::Dataset;
use crate::dist::{Dist, Row};
use crate::model::{Net, NormKind};
use crate::plugin::Plugin;
use amat::{Judge, Search};
use anyhow::{Result, bail};
use indicatif::ProgressBar;
use margins::Margins;
use optim::Optimizer;
use patches::Patches;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

/// Bins of the margin histogram in each epoch's record.
pub const HISTOGRAM_BINS: usize = 10;

/// What one epoch did; one line of `epochs.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// `clean` (STD, and SAT/AMAT warm-up) or `adversarial`.
    pub phase: String,
    pub lr: f64,
    /// Mean per-sample loss on clean inputs (training mode, before the step).
    pub clean_loss: f64,
    /// Mean per-sample loss on attacked inputs; absent in clean epochs.
    pub adv_loss: Option<f64>,
    /// Noise levels used in this epoch's attacks after the epoch: min, median, max.
    pub eps_min: f64,
    pub eps_median: f64,
    pub eps_max: f64,
    /// AMAT: margins in equal bins over [0, eps_max]; empty otherwise.
    pub eps_histogram: Vec<usize>,
    /// AMAT: shares of the epoch's margin updates.
    pub grown: f64,
    pub crossed: f64,
    pub stayed: f64,
    pub not_learned: f64,
    /// AMAT: single-sample forward passes spent in boundary searches.
    pub search_forwards: usize,
    /// AMAT: seconds spent judging samples and searching boundaries (part
    /// of `seconds`): AMAT's cost over SAT.
    #[serde(default)]
    pub margin_seconds: f64,
    pub seconds: f64,
    /// AMAT, first adversarial epoch: why the margins cannot move, if they
    /// cannot (`preflight::after_warmup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Everything a run changes, and what a checkpoint holds.
pub struct Trainer {
    pub cfg: RunConfig,
    pub method: Method,
    pub device: Device,
    pub vs: VarStore,
    pub model: Net,
    pub opt: Optimizer,
    /// AMAT only.
    pub margins: Option<Margins>,
    /// Shuffles the training set; its position is checkpointed.
    pub rng: ChaCha8Rng,
    /// Epochs completed.
    pub epoch: usize,
    pub history: Vec<EpochRecord>,
    pub judge: Judge,
    pub range: Range,
    /// With `train.patch`: draws each batch's patches (from `rng`).
    pub patches: Option<Patches>,
    /// Search forwards and margin-update seconds of the current epoch.
    search_forwards: usize,
    margin_seconds: f64,
    /// Data-parallel: this rank's place in the group; None in one process.
    dist: Option<Dist>,
    /// Data-parallel AMAT: this rank's margin observations of the epoch
    /// (global position in the epoch's order, sample, gated, held or
    /// crossed, norm or boundary), replayed by every rank at its end.
    events: Vec<Row>,
    /// With `train.precision = "bf16"`: the network training runs through.
    compute: Option<Compute>,
}

/// What rank 0 hands the other ranks when they join, besides tensors.
#[derive(Serialize, Deserialize)]
struct Shared {
    epoch: usize,
    rng_seed: [u8; 32],
    rng_word_pos: String,
    history: Vec<EpochRecord>,
    margins: Option<Vec<f32>>,
}

/// A bfloat16 copy of the network (autocast-like mixed precision): forwards
/// and backwards run in it; the float32 `Trainer::vs` stays the master copy
/// that the optimizer updates, checkpoints save and evaluation uses.
pub struct Compute {
    vs: VarStore,
    net: Net,
    /// Its trainable variables, in the optimizer's order.
    params: Vec<Tensor>,
    /// (master, copy) of every variable that is not trained (batch-norm
    /// statistics): they move in the copy and are copied back.
    buffers: Vec<(Tensor, Tensor)>,
}

impl Compute {
    fn new(
        cfg: &RunConfig,
        info: &crate::plugin::TaskInfo,
        master: &VarStore,
        opt: &Optimizer,
    ) -> Result<Self> {
        let mut vs = VarStore::new(master.device());
        let net = cfg.network(&vs.root(), info).computing_in(Kind::BFloat16);
        vs.bfloat16();
        let vars = vs.variables();
        let params = opt
            .names()
            .iter()
            .map(|n| vars.get(*n).map(Tensor::shallow_clone))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| anyhow::anyhow!("the bf16 copy of the network lacks a parameter"))?;
        let buffers = master
            .variables()
            .into_iter()
            .filter(|(_, t)| !t.requires_grad())
            .filter_map(|(n, t)| vars.get(&n).map(|c| (t, c.shallow_clone())))
            .collect();
        let c = Self {
            vs,
            net,
            params,
            buffers,
        };
        c.vs_from(master)?;
        Ok(c)
    }

    /// Every variable from the master copy (at the start of each epoch: the
    /// master may have been loaded or replaced since).
    fn vs_from(&self, master: &VarStore) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let vars = self.vs.variables();
        for (name, t) in master.variables() {
            if let Some(c) = vars.get(&name) {
                c.shallow_clone().f_copy_(&t)?;
            }
        }
        Ok(())
    }
}

/// The network a training step runs through: the bf16 copy if there is one.
fn net<'a>(model: &'a Net, compute: &'a Option<Compute>) -> &'a Net {
    compute.as_ref().map_or(model, |c| &c.net)
}

/// The torch seed of an epoch: random starts depend only on (seed, epoch),
/// so a run resumed at an epoch boundary draws what it would have drawn.
pub fn epoch_seed(seed: u64, epoch: usize) -> i64 {
    let mut z = seed
        ^ (epoch as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// This rank's part of one global batch.
struct Batch<'a> {
    /// Its samples.
    idx: &'a [usize],
    /// The position of `idx[0]` in the epoch's order.
    first: usize,
    /// The size of the global batch.
    global: usize,
}

/// One margin observation of data-parallel AMAT (see `Trainer::events`).
fn event(position: usize, sample: usize, gated: bool, flag: bool, value: f64) -> Row {
    let bit = |b: bool| if b { 1.0 } else { 0.0 };
    [position as f64, sample as f64, bit(gated), bit(flag), value]
}

impl Trainer {
    /// A fresh model (seeded), optimizer, margins and shuffler. `train_len`
    /// is the size of the training split.
    pub fn new(cfg: &RunConfig, plugin: &Plugin, device: Device, train_len: usize) -> Result<Self> {
        let info = plugin.info();
        let method = cfg.run.method.unwrap_or(Method::Std);
        memory::keep_freed_memory();
        tch::manual_seed(cfg.run.seed as i64);
        let vs = VarStore::new(device);
        let model = cfg.network(&vs.root(), info);
        let opt = Optimizer::new(&vs, &cfg.train);
        let patches = cfg.train.patch.as_ref().map(|size| {
            Patches::new(
                size.clone(),
                cfg.train.patch_foreground,
                info.intensity_min as f64,
            )
        });
        let margins = (method == Method::Amat).then(|| Margins::new(train_len, &cfg.amat));
        let judge = Judge::new(&cfg.amat, info).map_err(anyhow::Error::msg)?;
        let compute = match cfg.train.precision {
            Precision::Bf16 => Some(Compute::new(cfg, info, &vs, &opt)?),
            Precision::F32 => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            method,
            device,
            vs,
            model,
            opt,
            margins,
            rng: ChaCha8Rng::seed_from_u64(cfg.run.seed),
            epoch: 0,
            history: Vec::new(),
            judge,
            range: Range {
                min: info.intensity_min as f64,
                max: info.intensity_max as f64,
            },
            patches,
            search_forwards: 0,
            margin_seconds: 0.0,
            dist: None,
            events: Vec::new(),
            compute,
        })
    }

    /// Makes this trainer one rank of a data-parallel run: every rank takes
    /// rank 0's weights, optimizer state, margins, shuffler and history (so
    /// only rank 0 reads a checkpoint, and a resume may use any number of
    /// ranks). From then on `train.batch_size` is the global batch: each
    /// rank takes its part of every batch of the epoch's order.
    pub fn join(&mut self, mut dist: Dist) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let mut weights: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        dist.broadcast(&weights.iter().map(|(_, t)| t).collect::<Vec<_>>())?;
        let (moments, steps) = self.opt.shared_state();
        dist.broadcast(&moments.iter().chain([&steps]).collect::<Vec<_>>())?;
        self.opt.steps = steps.int64_value(&[0]);
        let mine = Shared {
            epoch: self.epoch,
            rng_seed: self.rng.get_seed(),
            rng_word_pos: self.rng.get_word_pos().to_string(),
            history: self.history.clone(),
            margins: self.margins.as_ref().map(|m| m.values.clone()),
        };
        let root: Shared =
            serde_json::from_slice(&dist.broadcast_bytes(&serde_json::to_vec(&mine)?)?)?;
        self.epoch = root.epoch;
        self.rng = ChaCha8Rng::from_seed(root.rng_seed);
        self.rng.set_word_pos(root.rng_word_pos.parse()?);
        self.history = root.history;
        if let (Some(m), Some(values)) = (&mut self.margins, root.margins) {
            m.values = values;
        }
        self.dist = Some(dist);
        Ok(())
    }

    /// This rank and the number of ranks ((0, 1) in one process).
    pub fn rank(&self) -> (usize, usize) {
        self.dist.as_ref().map_or((0, 1), |d| (d.rank(), d.world()))
    }

    /// Images normalised by the host (see `data::normalize`): attacks clamp
    /// to the dataset's normalised range, and patches are padded with 0,
    /// the normalised background, as nnU-Net pads.
    pub fn normalised(&mut self, n: &crate::data::normalize::NormRecord) {
        self.range = Range {
            min: n.range[0],
            max: n.range[1],
        };
        if let Some(p) = &mut self.patches {
            p.pad_value = 0.0;
        }
    }

    fn adversarial(&self, epoch: usize) -> bool {
        self.method != Method::Std && epoch >= self.cfg.train.warmup_epochs
    }

    /// One epoch over `data` (the training split). `bar` counts batches.
    pub fn train_epoch(
        &mut self,
        plugin: &mut Plugin,
        data: &Dataset,
        bar: &ProgressBar,
    ) -> Result<EpochRecord> {
        if let Some(m) = &self.margins
            && m.values.len() != data.len()
        {
            bail!(
                "the margins hold {} samples, the training split {}",
                m.values.len(),
                data.len()
            );
        }
        let start = Instant::now();
        let epoch = self.epoch;
        let adversarial = self.adversarial(epoch);
        let lr = optim::learning_rate(&self.cfg.train, epoch);
        let warning = match self.cfg.train.warmup_epochs {
            w if w > 0 && w == epoch && adversarial && self.margins.is_some() => {
                preflight::after_warmup(
                    plugin,
                    &mut self.judge,
                    &self.model,
                    data,
                    self.cfg.train.batch_size,
                    self.device,
                    w,
                )?
            }
            _ => None,
        };
        if let Some(c) = &self.compute {
            c.vs_from(&self.vs)?;
        }
        // Each rank draws its own random starts; rank 0 those of one process.
        let rank = self.rank().0 as u64;
        tch::manual_seed(epoch_seed(
            self.cfg.run.seed ^ rank.wrapping_mul(0xD1B5_4A32_D192_ED03),
            epoch,
        ));
        // On patches, each case is visited `patches_per_case` times; its
        // visits share its one margin (AMAT.md's F_i average).
        let visits = if self.patches.is_some() {
            self.cfg.train.patches_per_case
        } else {
            1
        };
        let mut order: Vec<usize> = (0..visits).flat_map(|_| 0..data.len()).collect();
        order.shuffle(&mut self.rng);
        if let Some(m) = &mut self.margins {
            m.begin_epoch();
        }
        // Data-parallel: the margins every rank replays the epoch from.
        let start_margins = match (&self.dist, &self.margins) {
            (Some(_), Some(m)) => m.values.clone(),
            _ => Vec::new(),
        };
        self.events.clear();
        self.search_forwards = 0;
        self.margin_seconds = 0.0;
        // Summed on the device and read once, after the epoch: no step waits
        // for the device to hand a loss back.
        let zero = || Tensor::zeros([], (Kind::Double, self.device));
        let (mut clean_sum, mut adv_sum) = (zero(), zero());
        bar.set_length(order.len().div_ceil(self.cfg.train.batch_size) as u64);
        bar.set_position(0);
        let global = self.cfg.train.batch_size;
        for (step, chunk) in order.chunks(global).enumerate() {
            let part = match &self.dist {
                Some(d) => d.shard(chunk.len()),
                None => 0..chunk.len(),
            };
            let batch = Batch {
                idx: &chunk[part.clone()],
                first: step * global + part.start,
                global: chunk.len(),
            };
            let xy = match &mut self.patches {
                Some(p) => p.part_of_batch(data, chunk, part, &mut self.rng, self.device)?,
                None => (!batch.idx.is_empty())
                    .then(|| data.batch(batch.idx, self.device))
                    .transpose()?,
            };
            let (clean, adv) = match xy {
                None => self.idle_step(adversarial, lr)?,
                Some((x, y)) if adversarial => self.adversarial_step(plugin, &x, &y, &batch, lr)?,
                Some((x, y)) => self.clean_step(plugin, &x, &y, batch.global, lr)?,
            };
            clean_sum += clean;
            if let Some(adv) = adv {
                adv_sum += adv;
            }
            bar.inc(1);
        }
        if adversarial && self.margins.is_some() {
            let start = Instant::now();
            self.gather_margins(start_margins)?;
            self.margins.as_mut().expect("AMAT").end_epoch();
            self.margin_seconds += start.elapsed().as_secs_f64();
        }
        // The epoch's one read of the losses from the device.
        let (mut clean_sum, mut adv_sum) = (clean_sum.double_value(&[]), adv_sum.double_value(&[]));
        if let Some(d) = &mut self.dist {
            let sums = d.sum(&[clean_sum, adv_sum, self.search_forwards as f64])?;
            (clean_sum, adv_sum) = (sums[0], sums[1]);
            self.search_forwards = sums[2] as usize;
        }
        let n = order.len().max(1) as f64;
        let mut record = self.record(
            epoch,
            adversarial,
            lr,
            clean_sum / n,
            adv_sum / n,
            start.elapsed().as_secs_f64(),
        );
        record.warning = warning;
        self.epoch += 1;
        self.history.push(record.clone());
        Ok(record)
    }

    /// STD: returns the batch's summed clean loss (on the device).
    fn clean_step(
        &mut self,
        plugin: &mut Plugin,
        x: &Tensor,
        y: &Tensor,
        global: usize,
        lr: f64,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let loss = plugin.loss(&net(&self.model, &self.compute).forward_t(x, true), y)?;
        let objective = self.batch_mean(&loss, global);
        self.descend(&objective, lr)?;
        Ok((loss.detach().sum(Kind::Double), None))
    }

    /// The mean of per-sample `loss` over the global batch of `global`
    /// samples: over ranks, the sum of each rank's part, so that summing the
    /// ranks' gradients gives the gradient one process would take.
    fn batch_mean(&self, loss: &Tensor, global: usize) -> Tensor {
        match self.dist {
            Some(_) => loss.sum(Kind::Float) / global as f64,
            None => loss.mean(Kind::Float),
        }
    }

    /// One update from `objective`'s gradients, summed over the ranks.
    /// Through the bf16 copy if there is one: its gradients update the
    /// float32 master, which is then copied back into it.
    fn descend(&mut self, objective: &Tensor, lr: f64) -> Result<()> {
        let grads = match &self.compute {
            None => self.opt.gradients(objective),
            Some(c) => self.opt.gradients_via(objective, &c.params),
        };
        self.step_with(grads, lr)
    }

    fn step_with(&mut self, grads: Vec<Tensor>, lr: f64) -> Result<()> {
        if let Some(d) = &mut self.dist {
            d.all_reduce_sum(&grads.iter().collect::<Vec<_>>())?;
        }
        self.opt.step(&grads, lr);
        if let Some(c) = &self.compute {
            self.opt.copy_into(&c.params);
            let _guard = tch::no_grad_guard();
            for (master, copy) in &c.buffers {
                master.shallow_clone().copy_(copy);
            }
        }
        Ok(())
    }

    /// A rank with no sample in a (short, last) batch joins the step's
    /// collectives with nothing to add.
    fn idle_step(&mut self, adversarial: bool, lr: f64) -> Result<(Tensor, Option<Tensor>)> {
        if adversarial && self.gates() {
            self.gated_over_ranks(0)?;
        }
        let grads = self.opt.params().iter().map(|p| p.zeros_like()).collect();
        self.step_with(grads, lr)?;
        Ok((Tensor::zeros([], (Kind::Double, self.device)), None))
    }

    /// Whether AMAT's clean gate can leave samples out.
    fn gates(&self) -> bool {
        self.method == Method::Amat && self.cfg.amat.tau_clean.is_some()
    }

    /// The number of gated samples of the global batch.
    fn gated_over_ranks(&mut self, local: usize) -> Result<usize> {
        Ok(match &mut self.dist {
            Some(d) => d.sum(&[local as f64])?[0] as usize,
            None => local,
        })
    }

    /// The noise level of each sample of the batch.
    fn noise_levels(&self, idx: &[usize]) -> Vec<f32> {
        match (&self.margins, self.method) {
            (Some(m), _) => m.get(idx),
            (None, Method::Sat) => vec![self.cfg.sat.eps as f32; idx.len()],
            (None, _) => vec![0.0; idx.len()],
        }
    }

    /// SAT / AMAT: (1 - beta) * clean + beta * adversarial (AMAT: the
    /// adversarial mean over the samples the clean gate lets through), then
    /// AMAT's margin bookkeeping, with the weights the attack saw. Returns
    /// the summed clean and adversarial losses (on the device).
    fn adversarial_step(
        &mut self,
        plugin: &mut Plugin,
        x: &Tensor,
        y: &Tensor,
        batch: &Batch,
        lr: f64,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let idx = batch.idx;
        let levels = self.noise_levels(idx);
        // On the host: PGD moves it to the device after reading its largest level there.
        let eps = Tensor::from_slice(&levels);
        let reference = self.margins.as_ref().map(|m| m.rule) == Some(AmatRule::Reference);
        let (delta, crossed) = if reference {
            let found = amat::crossings(
                &mut attack::Context::new(net(&self.model, &self.compute), plugin, self.range),
                &mut self.judge,
                (x, y),
                &eps,
                &self.cfg.train.attack,
            )?;
            self.margin_seconds += found.judge_seconds;
            (found.delta, Some(found.crossed))
        } else {
            let delta = attack::pgd(
                &mut attack::Context::new(net(&self.model, &self.compute), plugin, self.range),
                x,
                y,
                &eps,
                &self.cfg.train.attack,
            )?;
            (delta, None)
        };
        let beta = self.cfg.train.beta;
        let (_, clean, pred_adv, adv) = if levels.iter().all(|&e| e == 0.0) {
            // No noise: the adversarial term is the clean term.
            let pred_clean = net(&self.model, &self.compute).forward_t(x, true);
            let clean = plugin.loss(&pred_clean, y)?;
            (
                pred_clean.shallow_clone(),
                clean.shallow_clone(),
                pred_clean,
                clean,
            )
        } else {
            self.clean_and_adversarial(plugin, x, &(x + &delta), y)?
        };
        let gate = self.clean_gate(&clean)?;
        let gated = Tensor::from_slice(&gate)
            .to_kind(Kind::Float)
            .to_device(self.device);
        let local_gated = gate.iter().filter(|&&g| g).count();
        let n_gated = match (self.gates(), &self.dist) {
            (true, _) => self.gated_over_ranks(local_gated)?,
            (false, Some(_)) => batch.global,
            (false, None) => local_gated,
        };
        let adv_term = if n_gated == 0 {
            adv.sum(Kind::Float) * 0.0
        } else {
            (&adv * &gated).sum(Kind::Float) / n_gated as f64
        };
        let objective = self.batch_mean(&clean, batch.global) * (1.0 - beta) + adv_term * beta;
        if self.margins.is_some() {
            let start = Instant::now();
            match crossed {
                Some(crossed) => self.observe(&delta, batch, &gate, &crossed)?,
                None => self.update_margins(
                    plugin,
                    (x, y),
                    &delta,
                    batch,
                    &gate,
                    (&clean, &pred_adv, &adv),
                )?,
            }
            self.margin_seconds += start.elapsed().as_secs_f64();
        }
        self.descend(&objective, lr)?;
        let sum = |t: &Tensor| t.detach().sum(Kind::Double);
        Ok((sum(&clean), Some(sum(&adv))))
    }

    /// AMAT's clean gate: which samples are learned on clean input (every
    /// sample when the gate is off, and for SAT).
    fn clean_gate(&self, clean: &Tensor) -> Result<Vec<bool>> {
        let n = clean.size()[0] as usize;
        match (self.method, self.cfg.amat.tau_clean) {
            (Method::Amat, Some(tau)) => {
                let l = Vec::<f64>::try_from(
                    clean.detach().to_device(Device::Cpu).to_kind(Kind::Double),
                )?;
                Ok(l.into_iter().map(|l| l <= tau).collect())
            }
            _ => Ok(vec![true; n]),
        }
    }

    /// Reference rule: records this batch's visits; margins move at the end
    /// of the epoch.
    fn observe(
        &mut self,
        delta: &Tensor,
        batch: &Batch,
        gate: &[bool],
        crossed: &[bool],
    ) -> Result<()> {
        let norms = Vec::<f32>::try_from(
            sample_norms(delta, self.cfg.train.attack.norm).to_device(Device::Cpu),
        )?;
        let margins = self.margins.as_mut().expect("AMAT");
        for (r, &i) in batch.idx.iter().enumerate() {
            margins.observe(i, gate[r], crossed[r], norms[r] as f64);
            if self.dist.is_some() {
                self.events.push(event(
                    batch.first + r,
                    i,
                    gate[r],
                    crossed[r],
                    norms[r] as f64,
                ));
            }
        }
        Ok(())
    }

    /// Data-parallel AMAT, at the end of an epoch: every rank's
    /// observations, replayed in the epoch's order from the margins it
    /// started with, so each rank holds what one process would.
    fn gather_margins(&mut self, start: Vec<f32>) -> Result<()> {
        let Some(d) = &mut self.dist else {
            return Ok(());
        };
        let mut all = d.gather_rows(&self.events)?;
        all.sort_by(|a, b| a[0].total_cmp(&b[0]));
        let m = self.margins.as_mut().expect("AMAT");
        m.values = start;
        m.begin_epoch();
        for [_, i, gated, flag, value] in all {
            let (i, gated, flag) = (i as usize, gated != 0.0, flag != 0.0);
            match m.rule {
                AmatRule::Reference => m.observe(i, gated, flag, value),
                AmatRule::Boundary => {
                    m.update(i, gated, flag, value.is_finite().then_some(value));
                }
            }
        }
        Ok(())
    }

    /// Predictions and per-sample losses on clean and attacked inputs, in
    /// training mode. Without batch norm each sample is normalised on its
    /// own, so one forward and one loss call over both halves give exactly
    /// what two would, with half the kernel launches and plugin calls.
    fn clean_and_adversarial(
        &self,
        plugin: &mut Plugin,
        x: &Tensor,
        x_adv: &Tensor,
        y: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        if self.cfg.model.norm == NormKind::Batch {
            // Batch statistics would mix the halves: keep two forwards.
            let pred_clean = net(&self.model, &self.compute).forward_t(x, true);
            let clean = plugin.loss(&pred_clean, y)?;
            let pred_adv = net(&self.model, &self.compute).forward_t(x_adv, true);
            let adv = plugin.loss(&pred_adv, y)?;
            return Ok((pred_clean, clean, pred_adv, adv));
        }
        let b = x.size()[0];
        let pred = net(&self.model, &self.compute).forward_t(&Tensor::cat(&[x, x_adv], 0), true);
        let loss = plugin.loss(&pred, &Tensor::cat(&[y, y], 0))?;
        Ok((
            pred.narrow(0, 0, b),
            loss.narrow(0, 0, b),
            pred.narrow(0, b, b),
            loss.narrow(0, b, b),
        ))
    }

    /// Boundary rule: judges the attacked predictions, searches the
    /// boundary of the samples that crossed, and moves every margin now.
    fn update_margins(
        &mut self,
        plugin: &mut Plugin,
        (x, y): (&Tensor, &Tensor),
        delta: &Tensor,
        batch: &Batch,
        gate: &[bool],
        (clean, pred_adv, adv): (&Tensor, &Tensor, &Tensor),
    ) -> Result<()> {
        let idx = batch.idx;
        let adv_ok = self
            .judge
            .correct(plugin, &pred_adv.detach(), y, Some(adv))?;
        let crossed: Vec<usize> = (0..idx.len()).filter(|&r| gate[r] && !adv_ok[r]).collect();
        let mut boundary = vec![None; idx.len()];
        if !crossed.is_empty() {
            let margins = self.margins.as_ref().expect("AMAT");
            let a = &self.cfg.amat;
            let rows = Tensor::from_slice(&crossed.iter().map(|&r| r as i64).collect::<Vec<_>>())
                .to_device(self.device);
            let d = delta.index_select(0, &rows);
            let norms: Vec<f64> = Vec::<f32>::try_from(
                sample_norms(&d, self.cfg.train.attack.norm).to_device(Device::Cpu),
            )?
            .into_iter()
            .map(f64::from)
            .collect();
            let search = Search {
                steps: a.search_steps,
                tolerance: a.search_tolerance * margins.delta_eps,
                floor: margins.delta_eps,
                kind: a.search,
            };
            // Regula falsi starts from the losses at both ends of the noise,
            // which this step has computed already.
            let ends = match a.search {
                SearchKind::RegulaFalsi => {
                    let host = |t: &Tensor| -> Result<Vec<f64>> {
                        Ok(Vec::<f64>::try_from(
                            t.detach()
                                .index_select(0, &rows)
                                .to_device(Device::Cpu)
                                .to_kind(Kind::Double),
                        )?)
                    };
                    Some((host(clean)?, host(adv)?))
                }
                SearchKind::Bisection => None,
            };
            let (found, forwards) = amat::boundary(
                &mut attack::Context::new(net(&self.model, &self.compute), plugin, self.range),
                &mut self.judge,
                &x.index_select(0, &rows),
                &y.index_select(0, &rows),
                &d,
                &norms,
                ends.as_ref().map(|(a, b)| (a.as_slice(), b.as_slice())),
                search,
            )?;
            self.search_forwards += forwards;
            for (&r, b) in crossed.iter().zip(found) {
                boundary[r] = Some(b);
            }
        }
        let margins = self.margins.as_mut().expect("AMAT");
        for (r, &i) in idx.iter().enumerate() {
            margins.update(i, gate[r], adv_ok[r], boundary[r]);
            if self.dist.is_some() {
                let b = boundary[r].unwrap_or(f64::NAN);
                self.events
                    .push(event(batch.first + r, i, gate[r], adv_ok[r], b));
            }
        }
        Ok(())
    }

    fn record(
        &self,
        epoch: usize,
        adversarial: bool,
        lr: f64,
        clean: f64,
        adv: f64,
        seconds: f64,
    ) -> EpochRecord {
        let (eps_min, eps_median, eps_max, eps_histogram, counts) =
            match (&self.margins, adversarial) {
                (Some(m), _) => {
                    let (lo, med, hi) = m.summary();
                    (lo, med, hi, m.histogram(HISTOGRAM_BINS), m.counts)
                }
                (None, true) => (
                    self.cfg.sat.eps,
                    self.cfg.sat.eps,
                    self.cfg.sat.eps,
                    Vec::new(),
                    Default::default(),
                ),
                (None, false) => (0.0, 0.0, 0.0, Vec::new(), Default::default()),
            };
        let share = |k: usize| {
            if counts.total() == 0 {
                0.0
            } else {
                k as f64 / counts.total() as f64
            }
        };
        EpochRecord {
            epoch: epoch + 1,
            phase: if adversarial { "adversarial" } else { "clean" }.into(),
            lr,
            clean_loss: clean,
            adv_loss: adversarial.then_some(adv),
            eps_min,
            eps_median,
            eps_max,
            eps_histogram,
            grown: share(counts.grown),
            crossed: share(counts.crossed),
            stayed: share(counts.stayed),
            not_learned: share(counts.not_learned),
            search_forwards: self.search_forwards,
            margin_seconds: self.margin_seconds,
            seconds,
            warning: None,
        }
    }
}
