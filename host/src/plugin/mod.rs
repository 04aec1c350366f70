//! Task plugins: one [`Plugin`] type over two loaders, a sandboxed wasm
//! component (wasmtime) and a trusted native dylib (libloading). The loader is
//! picked by the file's extension.
//!
//! Every call's result is checked here, once for both kinds: a loss must be a
//! finite float tensor of shape [B].

mod builtin;
pub mod check;
mod error;
mod info;
mod limits;
mod native;
mod output;
pub mod scaffold;
mod wasm;

pub use amat_plugin_sdk::types::{
    DecodeRequest, Example, File, Metric, SampleScore, ScoreInfo, TargetKind, TaskInfo,
};
pub(crate) use error::one_line as one_line_text;
pub use error::{CallError, PluginError};
pub(crate) use info::escaped as escape_controls;
pub use limits::{LimitArgs, SandboxLimits};
pub use output::TARGET as OUTPUT_TARGET;
pub use wasm::{
    CONTRACT_VERSION, CONTRACT_VERSIONS, CompileSource, cache_dir, compile as compile_component,
};

use crate::tensor::TensorUsage;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PluginKind {
    /// Sandboxed wasm component.
    Wasm,
    /// Trusted native dylib: not sandboxed.
    Native,
    /// A loss compiled into the host (`Plugin::builtin_segmentation`).
    Builtin,
}

/// What a backend measured of its last call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub tensors: TensorUsage,
    /// Linear memory of the wasm instance (its peak: memories never shrink);
    /// None for a native plugin, whose memory the host cannot see.
    pub memory_bytes: Option<u64>,
}

/// What the last plugin call cost; read by `plugin check` and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    pub call: &'static str,
    pub elapsed: Duration,
    pub usage: Usage,
}

/// What a loader provides. Tensors passed in are lent for the call only.
trait Backend: Send {
    /// What the last call used.
    fn last_usage(&self) -> Usage;
    fn describe(&mut self) -> Result<TaskInfo, CallError>;
    fn decode(&mut self, request: &DecodeRequest) -> Result<Vec<Example>, CallError>;
    fn loss(&mut self, pred: &Tensor, target: &Tensor) -> Result<Tensor, CallError>;
    /// Contract 0.1.0's predicate; `None` from newer plugins.
    fn correct(&mut self, pred: &Tensor, target: &Tensor) -> Result<Option<Tensor>, CallError>;
    /// Contract 0.2.0's per-sample scores; empty from older plugins.
    fn scores(&mut self, pred: &Tensor, target: &Tensor) -> Result<Vec<SampleScore>, CallError>;
    fn metrics(&mut self, pred: &Tensor, target: &Tensor) -> Result<Vec<Metric>, CallError>;
    /// The contract (or native ABI) the plugin was built for, for reports.
    fn contract(&self) -> String;
}

pub struct Plugin {
    path: PathBuf,
    kind: PluginKind,
    info: TaskInfo,
    limits: SandboxLimits,
    last: CallStats,
    backend: Box<dyn Backend>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Plugin {
    /// Loads a `.wasm` component or a native `.so`/`.dylib`/`.dll`, and asks it
    /// to describe itself.
    pub fn load(path: impl AsRef<Path>, limits: &SandboxLimits) -> Result<Plugin, PluginError> {
        let path = path.as_ref().to_path_buf();
        let load_err = |message: String| PluginError::load(&path, message);
        limits.validate().map_err(load_err)?;
        if !path.exists() {
            return Err(load_err("no such file".into()));
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let (kind, mut backend): (PluginKind, Box<dyn Backend>) = match ext {
            "wasm" => (
                PluginKind::Wasm,
                Box::new(wasm::WasmBackend::load(&path, limits).map_err(|e| {
                    match e.downcast_ref::<wasm::Refusal>() {
                        Some(r) => {
                            PluginError::call(&path, "load", CallError::Refused(r.0.clone()))
                        }
                        None => load_err(format!("{e:#}")),
                    }
                })?),
            ),
            "so" | "dylib" | "dll" => (
                PluginKind::Native,
                Box::new(
                    native::NativeBackend::load(&path, limits)
                        .map_err(|e| load_err(format!("{e:#}")))?,
                ),
            ),
            _ => {
                return Err(load_err(
                    "not a plugin: expected a .wasm component or a .so/.dylib/.dll library".into(),
                ));
            }
        };
        let start = Instant::now();
        let info = backend
            .describe()
            .map_err(|e| PluginError::call(&path, "describe", e))?;
        let last = CallStats {
            call: "describe",
            elapsed: start.elapsed(),
            usage: backend.last_usage(),
        };
        let info = info::clean(info)
            .and_then(|i| validate_info(&i).map(|()| i))
            .map_err(|m| PluginError::call(&path, "describe", CallError::BadResult(m)))?;
        Ok(Plugin {
            path,
            kind,
            info,
            limits: limits.clone(),
            last,
            backend,
        })
    }

    /// The limits the plugin was loaded with.
    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// What the last call (finished or stopped) cost.
    pub fn last_call(&self) -> CallStats {
        self.last
    }

    /// Runs one backend call, timing it and recording what it used.
    fn timed<R>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(&mut dyn Backend) -> Result<R, CallError>,
    ) -> Result<R, PluginError> {
        let start = Instant::now();
        let r = f(self.backend.as_mut());
        self.last = CallStats {
            call,
            elapsed: start.elapsed(),
            usage: self.backend.last_usage(),
        };
        r.map_err(|e| self.err(call, e))
    }

    /// The plugin's loss exactly as returned, before the contract's checks
    /// (for `plugin check`, which reports each check on its own line).
    pub fn loss_unchecked(
        &mut self,
        pred: &Tensor,
        target: &Tensor,
    ) -> Result<Tensor, PluginError> {
        self.timed("loss", |b| b.loss(pred, target))
    }

    /// The segmentation task with the host's built-in loss
    /// (`crate::builtin::dice_ce_loss`) and `classes` output channels: no
    /// file, no sandbox; the yardstick for the plugins' overhead.
    pub fn builtin_segmentation(classes: u32) -> Plugin {
        let path = PathBuf::from("<built-in segmentation>");
        let mut backend = builtin::BuiltinSegmentation { classes };
        let info = backend
            .describe()
            .expect("the built-in task describes itself");
        Plugin {
            path,
            kind: PluginKind::Builtin,
            info,
            limits: SandboxLimits::default(),
            last: CallStats::default(),
            backend: Box::new(backend),
        }
    }

    pub fn info(&self) -> &TaskInfo {
        &self.info
    }
    pub fn kind(&self) -> PluginKind {
        self.kind
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The contract the plugin was built for, e.g. `amat:task@0.1.0`.
    pub fn contract(&self) -> String {
        self.backend.contract()
    }

    fn err(&self, call: &'static str, e: CallError) -> PluginError {
        PluginError::call(&self.path, call, e).named(&self.info.name)
    }

    pub fn decode(&mut self, request: &DecodeRequest) -> Result<Vec<Example>, PluginError> {
        self.timed("decode", |b| b.decode(request))
    }

    /// Per-sample loss, shape [B], finite; differentiable where `pred` is.
    pub fn loss(&mut self, pred: &Tensor, target: &Tensor) -> Result<Tensor, PluginError> {
        let out = self.timed("loss", |b| b.loss(pred, target))?;
        check_per_sample(&out, pred, "loss", true)
            .map_err(|m| self.err("loss", CallError::BadResult(m)))?;
        Ok(out)
    }

    /// Per-sample "still correct" mask as a bool tensor [B], if the plugin has one.
    pub fn correct(
        &mut self,
        pred: &Tensor,
        target: &Tensor,
    ) -> Result<Option<Tensor>, PluginError> {
        let Some(out) = self.timed("correct", |b| b.correct(pred, target))? else {
            return Ok(None);
        };
        check_per_sample(&out, pred, "correct", false)
            .map_err(|m| self.err("correct", CallError::BadResult(m)))?;
        Ok(Some(out.detach().to_kind(Kind::Float).gt(0.5)))
    }

    /// Per-sample judgement scores: exactly the described ones, in order,
    /// each with one finite value per sample.
    pub fn scores(
        &mut self,
        pred: &Tensor,
        target: &Tensor,
    ) -> Result<Vec<SampleScore>, PluginError> {
        let out = self.timed("scores", |b| b.scores(pred, target))?;
        let batch = pred.size().first().copied().unwrap_or(0) as usize;
        check_scores(&out, &self.info.scores, batch)
            .map_err(|m| self.err("scores", CallError::BadResult(m)))?;
        Ok(out)
    }

    pub fn metrics(&mut self, pred: &Tensor, target: &Tensor) -> Result<Vec<Metric>, PluginError> {
        let m = self.timed("metrics", |b| b.metrics(pred, target))?;
        info::check_metrics(&self.info.metric_names, &m)
            .map_err(|e| self.err("metrics", CallError::BadResult(e)))?;
        if let Some(bad) = m.iter().find(|m| !m.value.is_finite()) {
            return Err(self.err(
                "metrics",
                CallError::BadResult(format!("metric `{}` is {}", bad.name, bad.value)),
            ));
        }
        Ok(m)
    }
}

fn validate_info(info: &TaskInfo) -> Result<(), String> {
    let ordered =
        info.intensity_min.partial_cmp(&info.intensity_max) == Some(std::cmp::Ordering::Less);
    let finite = info.intensity_min.is_finite() && info.intensity_max.is_finite();
    if !ordered || !finite {
        return Err(format!(
            "intensity range [{}, {}] is empty or not finite",
            info.intensity_min, info.intensity_max
        ));
    }
    if !(info.tau.is_finite() && info.tau >= 0.0) {
        return Err(format!(
            "tau is {}: set it in describe to a finite loss >= 0 (the loss at or below which a \
             sample counts as correct)",
            info.tau
        ));
    }
    for (i, s) in info.scores.iter().enumerate() {
        if s.name.is_empty() || s.name == "loss" {
            return Err(format!(
                "score {i} is named `{}`: names must be non-empty and not `loss` (the host's own)",
                s.name
            ));
        }
        if info.scores[..i].iter().any(|o| o.name == s.name) {
            return Err(format!("score `{}` is described twice", s.name));
        }
    }
    Ok(())
}

/// Scores must be the described ones, in order, with `batch` finite values.
fn check_scores(out: &[SampleScore], described: &[ScoreInfo], batch: usize) -> Result<(), String> {
    let names = |v: &mut dyn Iterator<Item = &str>| v.collect::<Vec<_>>().join(", ");
    if out.len() != described.len() || out.iter().zip(described).any(|(o, d)| o.name != d.name) {
        return Err(format!(
            "scores returned [{}], described [{}]",
            names(&mut out.iter().map(|s| s.name.as_str())),
            names(&mut described.iter().map(|s| s.name.as_str()))
        ));
    }
    for s in out {
        if s.values.len() != batch {
            return Err(format!(
                "score `{}` has {} values for a batch of {batch}",
                s.name,
                s.values.len()
            ));
        }
        if let Some(v) = s.values.iter().find(|v| !v.is_finite()) {
            return Err(format!("score `{}` holds {v}", s.name));
        }
    }
    Ok(())
}

/// The contract's checks of a loss: [B], float, finite, and attached to the
/// graph when `pred` requires gradients.
pub fn check_loss(out: &Tensor, pred: &Tensor) -> Result<(), String> {
    check_per_sample(out, pred, "loss", true)
}

/// A per-sample result must be [B] and finite; a loss must also be float and,
/// when the prediction carries gradients, carry them too.
fn check_per_sample(out: &Tensor, pred: &Tensor, call: &str, is_loss: bool) -> Result<(), String> {
    let batch = pred.size().first().copied().unwrap_or(0);
    if out.size() != [batch] {
        return Err(format!(
            "{call} returned shape {:?}, expected [{batch}] (one value per sample)",
            out.size()
        ));
    }
    if is_loss {
        if !matches!(
            out.kind(),
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        ) {
            return Err(format!(
                "{call} returned a {:?} tensor, expected float",
                out.kind()
            ));
        }
        if pred.requires_grad() && !out.requires_grad() {
            return Err(format!(
                "{call} is detached from the prediction: no gradient can flow through it"
            ));
        }
        let finite = out.detach().isfinite().all().int64_value(&[]) == 1;
        if !finite {
            let values: Vec<f32> = Vec::try_from(
                out.detach()
                    .to_kind(Kind::Float)
                    .to_device(tch::Device::Cpu),
            )
            .unwrap_or_default();
            return Err(format!("{call} returned non-finite values {values:?}"));
        }
    }
    Ok(())
}
