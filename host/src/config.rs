//! A run's configuration: TOML, every key known (unknown keys are errors),
//! every value checked before any work starts. `examples/run.toml` documents
//! each key and its default.

use crate::attack::{Norm, PgdConfig};
use crate::data::source::DataSource;
use crate::model::sliding::Window;
use crate::model::{DeviceChoice, ModelConfig, Net};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Clean training.
    Std,
    /// Adversarial training at one fixed noise level.
    Sat,
    /// Adaptive-margin adversarial training: one noise level per sample.
    Amat,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Std => "std",
            Method::Sat => "sat",
            Method::Amat => "amat",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    #[serde(default)]
    pub run: RunSection,
    pub data: DataSource,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub sat: SatConfig,
    #[serde(default)]
    pub amat: AmatConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    /// Limits on every call of a wasm plugin.
    #[serde(default)]
    pub sandbox: crate::plugin::SandboxLimits,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// std | sat | amat; `--method` overrides.
    pub method: Option<Method>,
    /// The task plugin; `--plugin` overrides.
    pub plugin: Option<PathBuf>,
    pub seed: u64,
    /// libtorch intra-op threads; 0 keeps libtorch's choice (one per core).
    /// Results are bitwise reproducible for a fixed count on one machine.
    pub threads: usize,
    /// cpu | cuda | auto; `--device` overrides.
    pub device: DeviceChoice,
    /// Write a checkpoint every this many epochs (and always after the last).
    pub checkpoint_every: usize,
    /// Checkpoints kept on disk, newest first.
    pub keep_checkpoints: usize,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            method: None,
            plugin: None,
            seed: 0,
            threads: 0,
            device: DeviceChoice::Auto,
            checkpoint_every: 1,
            keep_checkpoints: 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Sgd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    /// Multiply the rate by `step_gamma` every `step_epochs` epochs.
    Step,
    /// Cosine decay from `lr` to 0 over the run.
    Cosine,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Adam's (beta1, beta2).
    pub adam_betas: [f64; 2],
    pub adam_eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    pub schedule: Schedule,
    pub step_epochs: usize,
    pub step_gamma: f64,
    /// Epochs of clean training (STD) at the start of SAT and AMAT; AMAT's
    /// margins do not move during them.
    pub warmup_epochs: usize,
    /// Weight of the adversarial term: (1 - beta) * clean + beta * adversarial.
    pub beta: f64,
    /// Train on random patches of this spatial size ([D, H, W] for a 3D
    /// model, [H, W] for 2D) instead of whole samples; evaluation then
    /// predicts whole samples window by window (`eval.overlap`). Left out:
    /// whole samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<Vec<i64>>,
    /// With `patch`: the share of patches centred on a random foreground
    /// voxel of the target (nnU-Net's 0.33); the rest lie anywhere.
    #[serde(skip_serializing_if = "is_default_foreground")]
    pub patch_foreground: f64,
    /// With `patch`: patches drawn from each case per epoch. AMAT's margin
    /// stays one per case; the reference rule averages the case's visits.
    #[serde(skip_serializing_if = "is_one")]
    pub patches_per_case: usize,
    /// The attack used in training (SAT and AMAT).
    pub attack: PgdConfig,
    /// f32 | bf16 (left out of saved configs when f32).
    #[serde(skip_serializing_if = "is_default")]
    pub precision: Precision,
}

fn is_default_foreground(v: &f64) -> bool {
    *v == DEFAULT_PATCH_FOREGROUND
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

fn is_default_overlap(v: &f64) -> bool {
    *v == DEFAULT_OVERLAP
}

/// nnU-Net's share of foreground-centred patches.
pub const DEFAULT_PATCH_FOREGROUND: f64 = 0.33;

/// nnU-Net's sliding-window overlap.
pub const DEFAULT_OVERLAP: f64 = 0.5;

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 20,
            batch_size: 8,
            optimizer: OptimizerKind::Adam,
            lr: 1e-2,
            momentum: 0.9,
            adam_betas: [0.9, 0.999],
            adam_eps: 1e-8,
            weight_decay: 0.0,
            schedule: Schedule::Constant,
            step_epochs: 10,
            step_gamma: 0.1,
            warmup_epochs: 1,
            beta: 0.5,
            patch: None,
            patch_foreground: DEFAULT_PATCH_FOREGROUND,
            patches_per_case: 1,
            // The authors' training attack for segmentation (5 for landmarks
            // and detection).
            attack: PgdConfig {
                steps: 20,
                step_factor: 4.0,
                ..PgdConfig::default()
            },
            precision: Precision::F32,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SatConfig {
    /// The one noise level, in units of `train.attack.norm`.
    pub eps: f64,
}

impl Default for SatConfig {
    fn default() -> Self {
        Self { eps: 1.0 }
    }
}

/// How AMAT moves margins (AMAT.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AmatRule {
    /// The authors' AMAT: per-epoch update; a crossing is any PGD iterate
    /// judged wrong; crossed samples move to the average of their noise norms.
    #[default]
    Reference,
    /// The authors' earlier, IMA-like rule: per-batch update; crossed samples
    /// move to the boundary found by a binary search along their noise.
    Boundary,
}

/// How the boundary rule searches along a crossed sample's noise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SearchKind {
    /// Halve the bracket at each probe.
    #[default]
    Bisection,
    /// Interpolate between the losses at the bracket's ends (ITP, a
    /// safeguarded regula falsi): never more probes than bisection plus one,
    /// usually fewer; the same stopping rule and answer within tolerance.
    RegulaFalsi,
}

/// The arithmetic of the network's forward and backward passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bfloat16 compute with float32 master weights, optimizer state and
    /// losses (autocast-like). Fast only where the hardware has bf16 units
    /// (AMX or AVX512-BF16 on the CPU, tensor cores on a GPU).
    Bf16,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl std::fmt::Display for AmatRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AmatRule::Reference => "reference",
            AmatRule::Boundary => "boundary",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmatConfig {
    /// reference (the authors' AMAT) | boundary (their earlier rule).
    pub rule: AmatRule,
    /// Growth step of a margin and every margin's start; when left out,
    /// `eps_max / grow_epochs`.
    pub delta_eps: Option<f64>,
    /// Largest margin, in units of `train.attack.norm`; may be `inf`
    /// (then `delta_eps` must be set).
    pub eps_max: f64,
    /// A convenience for `delta_eps`: epochs for a margin to grow from 0 to
    /// `eps_max`.
    pub grow_epochs: usize,
    /// The clean gate: only samples whose clean loss is at most this get the
    /// adversarial term and a margin update. Left out: off (every sample),
    /// as in the authors' runs.
    pub tau_clean: Option<f64>,
    /// A sample that fails the clean gate goes back to delta_eps (IMA);
    /// otherwise its margin stays.
    pub reset_wrong: bool,
    /// Boundary rule: N_bs, at most this many probes in the search.
    pub search_steps: usize,
    /// Boundary rule: bisection | regula-falsi (left out of saved configs
    /// when bisection, so existing configs hash as before).
    #[serde(skip_serializing_if = "is_default")]
    pub search: SearchKind,
    /// Boundary rule: the search stops once the boundary is bracketed to
    /// within `search_tolerance * delta_eps`; 0 always runs all `search_steps`.
    pub search_tolerance: f64,
    /// The adversarial judgement when `judge` is empty: a prediction still
    /// counts as correct while its loss is at most tau (the plugin's value
    /// when left out).
    pub tau: Option<f64>,
    /// The adversarial judgement on the plugin's per-sample scores: score
    /// name -> threshold; a sample is correct when every listed score is at
    /// least (higher is better) or at most (lower is better) its threshold.
    /// `loss` names the loss itself. `amat-host calibrate` suggests values.
    pub judge: BTreeMap<String, f64>,
}

impl Default for AmatConfig {
    fn default() -> Self {
        Self {
            rule: AmatRule::Reference,
            delta_eps: None,
            eps_max: 2.0,
            grow_epochs: 10,
            tau_clean: None,
            reset_wrong: false,
            search_steps: 10,
            search: SearchKind::Bisection,
            search_tolerance: 0.25,
            tau: None,
            judge: BTreeMap::new(),
        }
    }
}

impl AmatConfig {
    pub fn delta_eps(&self) -> f64 {
        self.delta_eps
            .unwrap_or(self.eps_max / self.grow_epochs as f64)
    }

    fn validate(&self) -> Result<(), String> {
        if self.eps_max.is_nan() || self.eps_max <= 0.0 {
            return Err(bad(format!(
                "amat.eps_max = {} must be positive (inf allowed)",
                self.eps_max
            )));
        }
        if self.grow_epochs == 0 {
            return Err(bad("amat.grow_epochs must be at least 1"));
        }
        match self.delta_eps {
            Some(d) => positive("amat.delta_eps", d)?,
            None if self.eps_max.is_infinite() => {
                return Err(bad(
                    "amat.eps_max = inf needs amat.delta_eps (the growth step) set",
                ));
            }
            None => {}
        }
        non_negative("amat.search_tolerance", self.search_tolerance)?;
        if let Some(tau) = self.tau {
            non_negative("amat.tau", tau)?;
        }
        if let Some(tau) = self.tau_clean {
            non_negative("amat.tau_clean", tau)?;
        }
        for (name, v) in &self.judge {
            if !v.is_finite() {
                return Err(bad(format!("amat.judge.{name} = {v} must be finite")));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Noise levels of the robustness curve, in units of `eval.attack.norm`;
    /// ascending, starting with 0 (the clean point). Same list for every method.
    pub eps: Vec<f64>,
    /// Attacks per level; each sample keeps its worst (highest-loss) iterate
    /// over every step of every restart.
    pub restarts: usize,
    pub batch_size: usize,
    /// The split evaluated: test | val | train.
    pub split: String,
    /// With `train.patch`: the share of a window its neighbour overlaps in
    /// sliding-window inference, in [0, 0.9].
    #[serde(skip_serializing_if = "is_default_overlap")]
    pub overlap: f64,
    /// How the plugin's metrics cover the split: per case, then averaged
    /// (memory bounded by the largest case), or on the whole split at once.
    #[serde(skip_serializing_if = "Aggregate::is_case")]
    pub aggregate: Aggregate,
    pub attack: PgdConfig,
}

/// How the plugin's `metrics` are taken over an evaluated split.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// One `metrics` call per case (the samples a prepared dataset decoded
    /// from one case), each metric then averaged over the cases that define
    /// it: the field's per-case convention. Only one case's predictions are
    /// held at a time. A split without cases (synthetic data) is one case.
    #[default]
    Case,
    /// One `metrics` call on every prediction of the split at once: a
    /// set-level metric (pooled counts, detection AP) exactly, with memory
    /// that grows with the split.
    Set,
}

impl Aggregate {
    fn is_case(&self) -> bool {
        *self == Aggregate::Case
    }

    pub fn name(&self) -> &'static str {
        match self {
            Aggregate::Case => "case",
            Aggregate::Set => "set",
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            eps: vec![0.0, 0.25, 0.5, 1.0, 2.0],
            restarts: 2,
            batch_size: 16,
            split: "test".into(),
            // Paper strength: PGD-100, step 0.05 eps, random start.
            overlap: DEFAULT_OVERLAP,
            aggregate: Aggregate::Case,
            attack: PgdConfig {
                steps: 100,
                step_factor: 5.0,
                ..PgdConfig::default()
            },
        }
    }
}

/// A one-line problem with a config.
fn bad(msg: impl Into<String>) -> String {
    msg.into()
}

fn positive(name: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(bad(format!("{name} = {v} must be positive")))
    }
}

fn non_negative(name: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(bad(format!("{name} = {v} must be >= 0")))
    }
}

impl RunConfig {
    /// Parses TOML; errors are one line naming the file, line and key.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let at = e
                .span()
                .map(|s| {
                    format!(
                        " line {}",
                        text[..s.start.min(text.len())].matches('\n').count() + 1
                    )
                })
                .unwrap_or_default();
            format!("config {}{at}: {}", origin.display(), e.message().trim())
        })
    }

    pub fn read(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
        Self::parse(&text, path)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a run config always serialises")
    }

    pub fn method(&self) -> Method {
        self.run.method.unwrap_or(Method::Amat)
    }

    /// Checks every value. Files named (plugin, data) must exist.
    pub fn validate(&self) -> Result<(), String> {
        // Bounds that keep libtorch and the attack's arithmetic finite.
        const MAX_THREADS: usize = 1024;
        const MAX_EPS: f64 = 1e6;
        let Some(_) = self.run.method else {
            return Err(bad(
                "no method: pass --method std|sat|amat or set run.method",
            ));
        };
        match &self.run.plugin {
            None => return Err(bad("no plugin: pass --plugin FILE or set run.plugin")),
            Some(p) if !p.is_file() => {
                return Err(bad(format!("plugin {}: no such file", p.display())));
            }
            Some(_) => {}
        }
        if self.run.checkpoint_every == 0 {
            return Err(bad("run.checkpoint_every must be at least 1"));
        }
        if self.run.keep_checkpoints == 0 {
            return Err(bad("run.keep_checkpoints must be at least 1"));
        }
        if self.run.threads > MAX_THREADS {
            return Err(bad(format!(
                "run.threads = {} is above {MAX_THREADS}",
                self.run.threads
            )));
        }
        self.data.validate()?;
        self.model.validate()?;
        let t = &self.train;
        if t.epochs == 0 {
            return Err(bad("train.epochs must be at least 1"));
        }
        if t.batch_size == 0 {
            return Err(bad("train.batch_size must be at least 1"));
        }
        positive("train.lr", t.lr)?;
        non_negative("train.momentum", t.momentum)?;
        non_negative("train.weight_decay", t.weight_decay)?;
        positive("train.adam_eps", t.adam_eps)?;
        for (i, b) in t.adam_betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                return Err(bad(format!(
                    "train.adam_betas[{i}] = {b} must lie in [0, 1)"
                )));
            }
        }
        if t.schedule == Schedule::Step && t.step_epochs == 0 {
            return Err(bad("train.step_epochs must be at least 1"));
        }
        positive("train.step_gamma", t.step_gamma)?;
        if !(0.0..=1.0).contains(&t.beta) {
            return Err(bad(format!("train.beta = {} must lie in [0, 1]", t.beta)));
        }
        t.attack.validate("train.attack")?;
        if let Some(patch) = &t.patch {
            if patch.len() != self.model.dims {
                return Err(bad(format!(
                    "train.patch = {patch:?} must have {} sizes for model.dims = {}",
                    self.model.dims, self.model.dims
                )));
            }
            if patch.iter().any(|&p| !(1..=4096).contains(&p)) {
                return Err(bad(format!(
                    "train.patch = {patch:?}: each size must lie in 1..=4096"
                )));
            }
            self.model
                .check_shape(patch)
                .map_err(|e| format!("train.patch = {patch:?}: {e}"))?;
        }
        if !(0.0..=1.0).contains(&t.patch_foreground) {
            return Err(bad(format!(
                "train.patch_foreground = {} must lie in [0, 1]",
                t.patch_foreground
            )));
        }
        if t.patches_per_case == 0 {
            return Err(bad("train.patches_per_case must be at least 1"));
        }
        non_negative("sat.eps", self.sat.eps)?;
        self.amat.validate()?;
        let e = &self.eval;
        for (i, &v) in e.eps.iter().enumerate() {
            non_negative(&format!("eval.eps[{i}]"), v)?;
            if v > MAX_EPS {
                return Err(bad(format!("eval.eps[{i}] = {v} is above {MAX_EPS}")));
            }
        }
        if e.eps.first() != Some(&0.0) {
            return Err(bad("eval.eps must start with 0 (the clean point)"));
        }
        if e.eps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("eval.eps must be strictly ascending"));
        }
        if e.restarts == 0 || e.batch_size == 0 {
            return Err(bad("eval.restarts and eval.batch_size must be at least 1"));
        }
        if !["train", "val", "test"].contains(&e.split.as_str()) {
            return Err(bad(format!(
                "eval.split = `{}` must be train, val or test",
                e.split
            )));
        }
        e.attack.validate("eval.attack")?;
        if !(0.0..=0.9).contains(&e.overlap) {
            return Err(bad(format!(
                "eval.overlap = {} must lie in [0, 0.9]",
                e.overlap
            )));
        }
        self.sandbox.validate()?;
        Ok(())
    }

    /// What a checkpoint must agree with to be resumed: everything but where
    /// the plugin file lies, which device runs it and the sandbox's limits
    /// (none of which changes the results).
    pub fn hash(&self) -> String {
        let mut c = self.clone();
        c.run.plugin = None;
        c.run.device = DeviceChoice::Auto;
        c.sandbox = Default::default();
        hex(&Sha256::digest(c.to_toml().as_bytes()))
    }

    /// The windows evaluation predicts whole samples in: the training patch
    /// with `eval.overlap`; none without patches.
    pub fn window(&self) -> Option<Window> {
        self.train.patch.as_ref().map(|size| Window {
            size: size.clone(),
            overlap: self.eval.overlap,
        })
    }

    /// The run's network for `task`, under `root`: trained on patches, it
    /// predicts whole samples window by window.
    pub fn network(&self, root: &tch::nn::Path, task: &crate::plugin::TaskInfo) -> Net {
        Net::new(
            root,
            &self.model,
            task.input_channels as i64,
            task.output_channels as i64,
        )
        .with_window(self.window())
    }

    /// The norm training margins are measured in.
    pub fn train_norm(&self) -> Norm {
        self.train.attack.norm
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[run]\nmethod = \"amat\"\n[data]\nsynthetic = { train = 4 }\n";

    #[test]
    fn the_example_config_parses_and_its_values_are_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/run.toml");
        let cfg = RunConfig::read(&path).unwrap();
        let defaults = RunConfig {
            run: RunSection::default(),
            data: DataSource::Synthetic(Default::default()),
            model: Default::default(),
            train: Default::default(),
            sat: Default::default(),
            amat: Default::default(),
            eval: Default::default(),
            sandbox: Default::default(),
        };
        // The example names a method and a plugin; everything else is a default.
        let mut cfg_no_names = cfg.clone();
        cfg_no_names.run.method = None;
        cfg_no_names.run.plugin = None;
        assert_eq!(cfg_no_names, defaults);
    }

    #[test]
    fn unknown_keys_are_one_line_errors_with_a_line_number() {
        let text = format!("{MINIMAL}[train]\nepochs = 2\nlearning_rate = 3\n");
        let err = RunConfig::parse(&text, Path::new("x.toml")).unwrap_err();
        assert!(
            err.starts_with("config x.toml line 7: unknown field `learning_rate`"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        let err = RunConfig::parse("[data]\nsynthetic = { trian = 4 }\n", Path::new("x.toml"))
            .unwrap_err();
        assert!(err.contains("unknown field `trian`"), "{err}");
    }

    #[test]
    fn round_trips_through_toml() {
        let cfg = RunConfig::parse(MINIMAL, Path::new("x")).unwrap();
        let again = RunConfig::parse(&cfg.to_toml(), Path::new("y")).unwrap();
        assert_eq!(cfg, again);
        assert_eq!(cfg.hash(), again.hash());
    }

    #[test]
    fn negative_noise_levels_are_refused() {
        let mut cfg = RunConfig::parse(MINIMAL, Path::new("x")).unwrap();
        cfg.run.plugin = Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        cfg.validate().unwrap();
        cfg.sat.eps = -0.5;
        assert_eq!(cfg.validate().unwrap_err(), "sat.eps = -0.5 must be >= 0");
        cfg.sat.eps = 0.5;
        cfg.eval.eps = vec![0.0, -1.0];
        assert!(cfg.validate().unwrap_err().starts_with("eval.eps[1] = -1"));
    }
}
