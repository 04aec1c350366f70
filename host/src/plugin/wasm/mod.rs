//! Wasm component plugins: sandboxed, portable. Split by concern, after
//! Zed's `extension_host`:
//!
//! - `engine`: one engine per setting of the limits, its epoch ticker for
//!   call deadlines;
//! - `cache`: the compiled-component cache (sealed `.cwasm` files);
//! - `policy`: what a component may import, the contract it speaks, and the
//!   store (memory limiter, tensor table) it runs in;
//! - `contract`: the bindings of each contract version;
//! - `resource`: the host's `tensor` resource over the tensor table;
//! - `errors`: what stops a call, typed, and its [`CallError`].

use super::output::PluginOutput;
use super::{Backend, CallError, SandboxLimits, Usage};
use crate::plugin::{DecodeRequest, Example, Metric, SampleScore, TaskInfo};
use crate::tensor::CallScope;
use anyhow::{Context, Result, anyhow};
use std::path::Path;
use tch::Tensor;
use wasmtime::Store;
use wasmtime::component::{Linker, Resource};

mod cache;
mod contract;
mod engine;
mod errors;
mod policy;
mod resource;

pub use cache::{CompileSource, cache_dir, compile};
pub use contract::{CURRENT as CONTRACT_VERSION, LOADED as CONTRACT_VERSIONS};
pub(super) use errors::Refusal;

use engine::{EngineKey, engine, start_clock};
use errors::classify;
use policy::{State, check_shape, new_store};

/// The host type behind the WIT `tensor` resource: the resource's rep is a
/// handle of the plugin's tensor table.
pub enum TensorRep {}

pub(super) struct WasmBackend {
    pre: contract::Pre,
    store: Store<State>,
    task: contract::Instance,
    /// The contract version the component was built for.
    version: String,
    stderr: PluginOutput,
    /// Names the plugin in its `--verbose` output.
    file: String,
    limits: SandboxLimits,
    last: Usage,
}

impl WasmBackend {
    pub(super) fn load(path: &Path, limits: &SandboxLimits) -> Result<Self> {
        let bytes = std::fs::read(path).context("cannot read file")?;
        let engine = engine(EngineKey::of(limits));
        let (component, _) = cache::compile_for(&engine, &bytes, cache_dir().as_deref())?;
        let version = check_shape(&engine, &component)?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        contract::add_to_linker(&mut linker)?;
        let pre = contract::Pre::new(
            &version,
            linker
                .instantiate_pre(&component)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot link a component of amat:task@{version}"))?,
        )?;
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (store, task, stderr) = instantiate(&pre, limits, &file)?;
        Ok(Self {
            pre,
            store,
            task,
            stderr,
            version,
            file,
            limits: limits.clone(),
            last: Usage::default(),
        })
    }

    /// A trapped instance may not be entered again: start a fresh one.
    fn reset(&mut self) {
        if let Ok((store, task, stderr)) = instantiate(&self.pre, &self.limits, &self.file) {
            (self.store, self.task, self.stderr) = (store, task, stderr);
        }
    }

    /// Runs one export under the deadline, lending it `lent` (as handles)
    /// when given; the call's handles are released when it ends, whatever
    /// the path, and what it used is recorded.
    fn guarded<R>(
        &mut self,
        lent: Option<(&Tensor, &Tensor)>,
        f: impl FnOnce(
            &contract::Instance,
            &mut Store<State>,
            (u32, u32),
        ) -> wasmtime::Result<Result<R, CallError>>,
    ) -> Result<R, CallError> {
        start_clock(&mut self.store, &self.limits);
        self.stderr.begin_call();
        let r = {
            let mut scope = CallScope::begin(&mut self.store);
            let handles = match lent {
                Some((pred, target)) => {
                    let state = scope.data_mut();
                    state.device = pred.device();
                    (
                        state.table.lend(pred.shallow_clone()),
                        state.table.lend(target.shallow_clone()),
                    )
                }
                None => (0, 0),
            };
            f(&self.task, &mut scope, handles)
        };
        let state = self.store.data_mut();
        self.last = Usage {
            tensors: state.table.last_call(),
            memory_bytes: Some(state.limiter.peak_memory as u64),
        };
        let r = r.map_err(|e| classify(e, &self.limits, &self.stderr));
        if r.is_err() {
            self.reset();
        }
        r.and_then(|r| r)
    }
}

/// Moves the tensor a call returned out of the table (before the call ends).
fn take(store: &mut Store<State>, r: Resource<TensorRep>) -> Result<Tensor, CallError> {
    store
        .data_mut()
        .table
        .take(r.rep())
        .map_err(|e| CallError::BadResult(format!("{e:#}")))
}

fn instantiate(
    pre: &contract::Pre,
    limits: &SandboxLimits,
    file: &str,
) -> Result<(Store<State>, contract::Instance, PluginOutput)> {
    let stdout = PluginOutput::new(format!("{file} stdout"));
    let stderr = PluginOutput::new(format!("{file} stderr"));
    let mut store = new_store(pre.engine(), limits, stdout, stderr.clone());
    let task = pre
        .instantiate(&mut store)
        .map_err(|e| anyhow!("{}", classify(e, limits, &stderr)))?;
    Ok((store, task, stderr))
}

impl Backend for WasmBackend {
    fn describe(&mut self) -> Result<TaskInfo, CallError> {
        self.guarded(None, |task, store, _| Ok(Ok(task.describe(store)?)))
    }

    fn decode(&mut self, request: &DecodeRequest) -> Result<Vec<Example>, CallError> {
        self.guarded(None, |task, store, _| task.decode(store, request))
    }

    fn loss(&mut self, pred: &Tensor, target: &Tensor) -> Result<Tensor, CallError> {
        self.guarded(Some((pred, target)), |task, store, (p, t)| {
            Ok(match task.loss(&mut *store, p, t)? {
                Ok(res) => take(store, res),
                Err(e) => Err(e),
            })
        })
    }

    fn correct(&mut self, pred: &Tensor, target: &Tensor) -> Result<Option<Tensor>, CallError> {
        self.guarded(Some((pred, target)), |task, store, (p, t)| {
            Ok(match task.correct(&mut *store, p, t)? {
                Ok(Some(res)) => take(store, res).map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            })
        })
    }

    fn scores(&mut self, pred: &Tensor, target: &Tensor) -> Result<Vec<SampleScore>, CallError> {
        self.guarded(Some((pred, target)), |task, store, (p, t)| {
            task.scores(store, p, t)
        })
    }

    fn metrics(&mut self, pred: &Tensor, target: &Tensor) -> Result<Vec<Metric>, CallError> {
        self.guarded(Some((pred, target)), |task, store, (p, t)| {
            task.metrics(store, p, t)
        })
    }

    fn last_usage(&self) -> Usage {
        self.last
    }

    fn contract(&self) -> String {
        format!("amat:task@{}", self.version)
    }
}
