//! Native dylib plugins: trusted code, loaded with libloading, talking to the
//! host through the C tables of `amat_plugin_sdk::abi`. Tensors cross as
//! handles of a [`TensorTable`], never as `tch::Tensor`, so the plugin uses the
//! host's libtorch and no Rust-ABI type crosses the boundary.

use super::{Backend, CallError, SandboxLimits, Usage};
use crate::plugin::{DecodeRequest, Example, Metric, SampleScore, TaskInfo};
use crate::tensor::{BudgetExceeded, CallScope, HoldsTable, TensorTable};
use amat_plugin_sdk::abi::{self, Bytes, Ctx, FileRef, Handle, PluginApi, PluginApiV1, Sink};
use anyhow::{Result, anyhow, bail};
use std::ffi::c_void;
use std::path::Path;
use tch::{Device, Tensor};

mod host_table;

use host_table::{handle, host_api};

/// The per-plugin state behind the `ctx` pointer the plugin passes back.
struct NativeCtx {
    table: TensorTable,
    device: Device,
}

impl HoldsTable for NativeCtx {
    fn tensor_table(&mut self) -> &mut TensorTable {
        &mut self.table
    }
}

pub(super) struct NativeBackend {
    /// The fields every ABI version has.
    api: &'static PluginApiV1,
    /// The whole table, from ABI version 2 on.
    api_v2: Option<&'static PluginApi>,
    ctx: Box<NativeCtx>,
    // Dropped last: `api` points into it.
    _lib: libloading::Library,
}

impl NativeBackend {
    pub(super) fn load(path: &Path, limits: &SandboxLimits) -> Result<Self> {
        // SAFETY: native plugins are trusted code by definition (see `plugin
        // check`): loading runs the library's initialisers.
        let lib = unsafe { libloading::Library::new(path) }
            // The loader's own words (dlopen's) are the error's source.
            .map_err(|e| anyhow::Error::new(e).context("cannot load library"))?;
        // SAFETY: the symbol, when present, has the SDK's entry signature
        // (trusted code, as above).
        let entry: libloading::Symbol<abi::EntryFn> = unsafe { lib.get(abi::ENTRY_SYMBOL) }
            .map_err(|_| anyhow!("not an amat plugin: the library exports no `amat_task_v1`"))?;
        // Offer the current ABI first; a plugin of an earlier one refuses it and
        // gets the same table (it only ever grew at its end) under its version.
        let mut found = None;
        for version in (abi::OLDEST_ABI_VERSION..=abi::ABI_VERSION).rev() {
            let host = host_api(version);
            // SAFETY: `host` is 'static; the plugin returns null or a pointer to
            // its static table, which `_lib` keeps loaded.
            if let Some(api) = unsafe { entry(host).cast::<PluginApiV1>().as_ref() } {
                found = Some(api);
                break;
            }
        }
        let api: &'static PluginApiV1 = found.ok_or_else(|| {
            anyhow!(
                "the plugin refused every native ABI this host speaks ({}..={}): rebuild it against the plugin-sdk of contract {}",
                abi::OLDEST_ABI_VERSION,
                abi::ABI_VERSION,
                super::CONTRACT_VERSION
            )
        })?;
        if !(abi::OLDEST_ABI_VERSION..=abi::ABI_VERSION).contains(&api.version) {
            bail!(
                "plugin speaks native ABI version {}, the host {}..={}",
                api.version,
                abi::OLDEST_ABI_VERSION,
                abi::ABI_VERSION
            );
        }
        // SAFETY: a table of version 2 is a `PluginApi`, which starts with
        // its `PluginApiV1` (repr(C)), so the pointer is the whole table's.
        let api_v2 = (api.version >= 2)
            .then(|| unsafe { &*(api as *const PluginApiV1).cast::<PluginApi>() });
        let ctx = Box::new(NativeCtx {
            table: TensorTable::new(limits.tensors),
            device: Device::Cpu,
        });
        Ok(Self {
            api,
            api_v2,
            ctx,
            _lib: lib,
        })
    }

    /// Runs one tensor call: lends `pred` and `target`, maps the status, and
    /// lets `result` move its outcome out of the table while the call lasts.
    /// The call's handles are released when it ends, whatever the path.
    fn tensor_call<R, O>(
        &mut self,
        pred: &Tensor,
        target: &Tensor,
        call: impl FnOnce(&PluginApiV1, Ctx, Handle, Handle, &Sink) -> (i32, R),
        result: impl FnOnce(&mut NativeCtx, R, Vec<u8>) -> Result<O, CallError>,
    ) -> Result<O, CallError> {
        let mut scope = CallScope::begin(&mut *self.ctx);
        scope.device = pred.device();
        let p = scope.table.lend(pred.shallow_clone()) as Handle;
        let t = scope.table.lend(target.shallow_clone()) as Handle;
        let mut bytes = Vec::new();
        let sink = vec_sink(&mut bytes);
        // Derived from the scope: the plugin's callbacks reach the context
        // through it only while `call` runs.
        let ctx = &mut *scope as *mut NativeCtx as Ctx;
        let (status, out) = call(self.api, ctx, p, t, &sink);
        status_of(&mut scope.table, status, &bytes)?;
        result(&mut scope, out, bytes)
    }
}

/// A plugin's status code as a call result; a failed host op's reason comes
/// from the table, and a budget refusal is a limit.
fn status_of(table: &mut TensorTable, status: i32, bytes: &[u8]) -> Result<(), CallError> {
    let text = || String::from_utf8_lossy(bytes).into_owned();
    match status {
        abi::OK => Ok(()),
        abi::ERR_PLUGIN => Err(CallError::Plugin(text())),
        abi::ERR_HOST_OP => Err(match table.take_error() {
            Some(e) if BudgetExceeded::find(&e).is_some() => CallError::Limit(format!("{e:#}")),
            Some(e) => CallError::HostOp(format!("{e:#}")),
            None => CallError::HostOp("unknown host op failure".into()),
        }),
        abi::ERR_PANIC => Err(CallError::Trap(text())),
        other => Err(CallError::BadResult(format!("unknown status code {other}"))),
    }
}

/// Moves the tensor a call returned out of the table.
fn take_tensor(ctx: &mut NativeCtx, h: Handle) -> Result<Tensor, CallError> {
    handle(h)
        .and_then(|h| ctx.table.take(h))
        .map_err(|e| CallError::BadResult(format!("{e:#}")))
}

fn vec_sink(v: &mut Vec<u8>) -> Sink {
    /// # Safety
    /// `target` must be the `Vec<u8>` of `vec_sink`, alive and not otherwise
    /// borrowed; `data` must point at `len` readable bytes.
    unsafe extern "C" fn write(target: *mut c_void, data: *const u8, len: usize) {
        // SAFETY: the caller passes the sink's own target, a live `Vec<u8>`.
        let v = unsafe { &mut *(target as *mut Vec<u8>) };
        // SAFETY: the caller passes `len` readable bytes at `data`.
        v.extend_from_slice(unsafe { Bytes { ptr: data, len }.as_slice() });
    }
    // SAFETY: `write` appends to the vector at `target`, which the caller
    // keeps alive and unborrowed while the sink is in use (one call).
    unsafe { Sink::new(v as *mut Vec<u8> as *mut c_void, write) }
}

impl Backend for NativeBackend {
    fn last_usage(&self) -> Usage {
        Usage {
            tensors: self.ctx.table.last_call(),
            memory_bytes: None,
        }
    }

    fn describe(&mut self) -> Result<TaskInfo, CallError> {
        let mut bytes = Vec::new();
        let sink = vec_sink(&mut bytes);
        // SAFETY: `describe` takes no raw pointer; the library is trusted.
        let status = unsafe { (self.api.describe)(&sink) };
        status_of(&mut self.ctx.table, status, &bytes)?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::BadResult(format!("task info: {e}")))
    }

    fn decode(&mut self, request: &DecodeRequest) -> Result<Vec<Example>, CallError> {
        let files: Vec<FileRef> = request
            .files
            .iter()
            .map(|f| FileRef {
                name: Bytes::of(f.name.as_bytes()),
                bytes: Bytes::of(&f.bytes),
            })
            .collect();
        let mut bytes = Vec::new();
        let sink = vec_sink(&mut bytes);
        // SAFETY: `files` and every slice it and `options` point at belong
        // to `request` and `files`, both alive for the whole call.
        let status = unsafe {
            (self.api.decode)(
                files.as_ptr(),
                files.len(),
                Bytes::of(request.options.as_bytes()),
                &sink,
            )
        };
        status_of(&mut self.ctx.table, status, &bytes)?;
        abi::codec::decode(&bytes).map_err(CallError::BadResult)
    }

    fn loss(&mut self, pred: &Tensor, target: &Tensor) -> Result<Tensor, CallError> {
        self.tensor_call(
            pred,
            target,
            |api, ctx, p, t, err| {
                let mut out: Handle = 0;
                // SAFETY: `ctx` is this call's context, alive and used by
                // nothing else while the plugin runs; `out` is writable.
                let status = unsafe { (api.loss)(ctx, p, t, &mut out, err) };
                (status, out)
            },
            |ctx, h, _| take_tensor(ctx, h),
        )
    }

    fn correct(&mut self, pred: &Tensor, target: &Tensor) -> Result<Option<Tensor>, CallError> {
        self.tensor_call(
            pred,
            target,
            |api, ctx, p, t, err| {
                let mut out: Handle = 0;
                // SAFETY: as for `loss`.
                let status = unsafe { (api.correct)(ctx, p, t, &mut out, err) };
                (status, out)
            },
            |ctx, h, _| match h {
                0 => Ok(None),
                h => take_tensor(ctx, h).map(Some),
            },
        )
    }

    fn scores(&mut self, pred: &Tensor, target: &Tensor) -> Result<Vec<SampleScore>, CallError> {
        let Some(v2) = self.api_v2 else {
            return Ok(Vec::new());
        };
        self.tensor_call(
            pred,
            target,
            // SAFETY: `ctx` is this call's context, as for `loss`.
            |_, ctx, p, t, out| (unsafe { (v2.scores)(ctx, p, t, out) }, ()),
            |_, (), bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| CallError::BadResult(format!("scores: {e}")))
            },
        )
    }

    fn contract(&self) -> String {
        format!("native ABI {}", self.api.version)
    }

    fn metrics(&mut self, pred: &Tensor, target: &Tensor) -> Result<Vec<Metric>, CallError> {
        self.tensor_call(
            pred,
            target,
            // SAFETY: `ctx` is this call's context, as for `loss`.
            |api, ctx, p, t, out| (unsafe { (api.metrics)(ctx, p, t, out) }, ()),
            |_, (), bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| CallError::BadResult(format!("metrics: {e}")))
            },
        )
    }
}
