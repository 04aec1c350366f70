//! Native dylib plugins: trusted code, loaded with libloading, talking to the
//! host through the C tables of `amat_plugin_sdk::abi`. Tensors cross as
//! handles of a [`TensorTable`], never as `tch::Tensor`, so the plugin uses the
//! host's libtorch and no Rust-ABI type crosses the boundary.

use super::{Backend, CallError, SandboxLimits, Usage};
use crate::plugin::{DecodeRequest, Example, Metric, SampleScore, TaskInfo};
use crate::tensor::{Op, TensorTable};
use amat_plugin_sdk::abi::{
    self, Bytes, Ctx, FileRef, Handle, HostApi, PluginApi, PluginApiV1, Sink,
};
use amat_plugin_sdk::types::{BinaryOp, DType, ReduceOp, ScalarOp, UnaryOp};
use anyhow::{Context, Result, anyhow, bail};
use std::ffi::c_void;
use std::path::Path;
use tch::{Device, Tensor};

/// The per-plugin state behind the `ctx` pointer the plugin passes back.
struct NativeCtx {
    table: TensorTable,
    device: Device,
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

// The plugin table is immutable and the library stays loaded while the
// backend lives; calls go through `&mut self`.
unsafe impl Send for NativeBackend {}

impl NativeBackend {
    pub(super) fn load(path: &Path, limits: &SandboxLimits) -> Result<Self> {
        // SAFETY: native plugins are trusted code by definition (see `plugin check`).
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| anyhow!("cannot load library: {e}"))?;
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

    fn ctx_ptr(&mut self) -> Ctx {
        &mut *self.ctx as *mut NativeCtx as Ctx
    }

    /// Runs one tensor call: lends `pred` and `target`, maps the status, and
    /// frees every handle afterwards.
    fn tensor_call<R>(
        &mut self,
        pred: &Tensor,
        target: &Tensor,
        call: impl FnOnce(&PluginApiV1, Ctx, Handle, Handle, &Sink) -> (i32, R),
    ) -> Result<(R, Vec<u8>), CallError> {
        self.ctx.table.begin_call();
        self.ctx.device = pred.device();
        let p = self.ctx.table.lend(pred.shallow_clone()) as Handle;
        let t = self.ctx.table.lend(target.shallow_clone()) as Handle;
        let mut bytes = Vec::new();
        let sink = vec_sink(&mut bytes);
        let ctx = self.ctx_ptr();
        let (status, out) = call(self.api, ctx, p, t, &sink);
        let result = self.status(status, &bytes).map(|()| out);
        match result {
            Ok(out) => Ok((out, bytes)),
            Err(e) => {
                self.ctx.table.end_call();
                Err(e)
            }
        }
    }

    fn status(&mut self, status: i32, bytes: &[u8]) -> Result<(), CallError> {
        let text = || String::from_utf8_lossy(bytes).into_owned();
        match status {
            abi::OK => Ok(()),
            abi::ERR_PLUGIN => Err(CallError::Plugin(text())),
            abi::ERR_HOST_OP => {
                let why = self
                    .ctx
                    .table
                    .take_error()
                    .unwrap_or_else(|| "unknown host op failure".into());
                Err(if why.contains("tensor budget") {
                    CallError::Limit(why)
                } else {
                    CallError::HostOp(why)
                })
            }
            abi::ERR_PANIC => Err(CallError::Trap(text())),
            other => Err(CallError::BadResult(format!("unknown status code {other}"))),
        }
    }

    fn take_tensor(&mut self, h: Handle) -> Result<Tensor, CallError> {
        let t = self
            .ctx
            .table
            .take(h as u32)
            .map_err(|e| CallError::BadResult(format!("{e:#}")));
        self.ctx.table.end_call();
        t
    }
}

fn vec_sink(v: &mut Vec<u8>) -> Sink {
    extern "C" fn write(target: *mut c_void, data: *const u8, len: usize) {
        let v = unsafe { &mut *(target as *mut Vec<u8>) };
        v.extend_from_slice(unsafe { Bytes { ptr: data, len }.as_slice() });
    }
    Sink {
        target: v as *mut Vec<u8> as *mut c_void,
        write,
    }
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
        let status = (self.api.describe)(&vec_sink(&mut bytes));
        self.status(status, &bytes)?;
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
        let status = (self.api.decode)(
            files.as_ptr(),
            files.len(),
            Bytes::of(request.options.as_bytes()),
            &vec_sink(&mut bytes),
        );
        self.status(status, &bytes)?;
        abi::codec::decode(&bytes).map_err(CallError::BadResult)
    }

    fn loss(&mut self, pred: &Tensor, target: &Tensor) -> Result<Tensor, CallError> {
        let (h, _) = self.tensor_call(pred, target, |api, ctx, p, t, err| {
            let mut out: Handle = 0;
            ((api.loss)(ctx, p, t, &mut out, err), out)
        })?;
        self.take_tensor(h)
    }

    fn correct(&mut self, pred: &Tensor, target: &Tensor) -> Result<Option<Tensor>, CallError> {
        let (h, _) = self.tensor_call(pred, target, |api, ctx, p, t, err| {
            let mut out: Handle = 0;
            ((api.correct)(ctx, p, t, &mut out, err), out)
        })?;
        if h == 0 {
            self.ctx.table.end_call();
            return Ok(None);
        }
        self.take_tensor(h).map(Some)
    }

    fn scores(&mut self, pred: &Tensor, target: &Tensor) -> Result<Vec<SampleScore>, CallError> {
        let Some(v2) = self.api_v2 else {
            return Ok(Vec::new());
        };
        let ((), bytes) = self.tensor_call(pred, target, |_, ctx, p, t, out| {
            ((v2.scores)(ctx, p, t, out), ())
        })?;
        self.ctx.table.end_call();
        serde_json::from_slice(&bytes).map_err(|e| CallError::BadResult(format!("scores: {e}")))
    }

    fn contract(&self) -> String {
        format!("native ABI {}", self.api.version)
    }

    fn metrics(&mut self, pred: &Tensor, target: &Tensor) -> Result<Vec<Metric>, CallError> {
        let ((), bytes) = self.tensor_call(pred, target, |api, ctx, p, t, out| {
            ((api.metrics)(ctx, p, t, out), ())
        })?;
        self.ctx.table.end_call();
        serde_json::from_slice(&bytes).map_err(|e| CallError::BadResult(format!("metrics: {e}")))
    }
}

// ---- the host table handed to native plugins ----

fn with_ctx(ctx: Ctx, f: impl FnOnce(&mut NativeCtx) -> Result<u32>) -> Handle {
    let ctx = unsafe { &mut *(ctx as *mut NativeCtx) };
    match f(ctx) {
        Ok(h) => h as Handle,
        Err(e) => {
            ctx.table.set_error(&e);
            0
        }
    }
}

unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if len == 0 {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

fn code<T>(c: u32, from: fn(u32) -> Option<T>) -> Result<T> {
    from(c).with_context(|| format!("unknown op code {c}"))
}

fn apply(ctx: Ctx, t: Handle, op: impl FnOnce() -> Result<Op<'static>>) -> Handle {
    with_ctx(ctx, |c| c.table.apply(t as u32, op()?))
}

extern "C" fn h_from_f32(
    ctx: Ctx,
    data: *const f32,
    len: usize,
    shape: *const i64,
    ndim: usize,
) -> Handle {
    with_ctx(ctx, |c| {
        c.table.from_f32(
            unsafe { slice(data, len) },
            unsafe { slice(shape, ndim) },
            c.device,
        )
    })
}
extern "C" fn h_from_s64(
    ctx: Ctx,
    data: *const i64,
    len: usize,
    shape: *const i64,
    ndim: usize,
) -> Handle {
    with_ctx(ctx, |c| {
        c.table.from_s64(
            unsafe { slice(data, len) },
            unsafe { slice(shape, ndim) },
            c.device,
        )
    })
}
extern "C" fn h_full(ctx: Ctx, value: f64, shape: *const i64, ndim: usize) -> Handle {
    with_ctx(ctx, |c| {
        c.table.full(value, unsafe { slice(shape, ndim) }, c.device)
    })
}
extern "C" fn h_shape(ctx: Ctx, t: Handle, out: *mut i64, cap: usize) -> i64 {
    let mut rank = -1;
    with_ctx(ctx, |c| {
        let s = c.table.get(t as u32)?.size();
        let n = s.len().min(cap);
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), out, n) };
        rank = s.len() as i64;
        Ok(1)
    });
    rank
}
extern "C" fn h_dtype(ctx: Ctx, t: Handle) -> i64 {
    let mut code = -1;
    with_ctx(ctx, |c| {
        code = crate::tensor::dtype_of(c.table.get(t as u32)?.kind()) as i64;
        Ok(1)
    });
    code
}
extern "C" fn h_to_f32(ctx: Ctx, t: Handle, out: *mut f32, len: usize) -> i64 {
    let h = with_ctx(ctx, |c| {
        let v = c.table.to_f32(t as u32)?;
        if v.len() != len {
            bail!("to-f32: tensor has {} values, buffer {len}", v.len());
        }
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out, len) };
        Ok(1)
    });
    if h == 0 { -1 } else { 0 }
}
extern "C" fn h_unary(ctx: Ctx, t: Handle, op: u32) -> Handle {
    apply(ctx, t, || Ok(Op::Unary(code(op, UnaryOp::from_code)?)))
}
extern "C" fn h_binary(ctx: Ctx, t: Handle, op: u32, other: Handle) -> Handle {
    apply(ctx, t, || {
        Ok(Op::Binary(code(op, BinaryOp::from_code)?, other as u32))
    })
}
extern "C" fn h_scalar(ctx: Ctx, t: Handle, op: u32, value: f64) -> Handle {
    apply(ctx, t, || {
        Ok(Op::Scalar(code(op, ScalarOp::from_code)?, value))
    })
}
extern "C" fn h_reduce(
    ctx: Ctx,
    t: Handle,
    op: u32,
    dims: *const i64,
    n: usize,
    keep: bool,
) -> Handle {
    apply(ctx, t, || {
        Ok(Op::Reduce(
            code(op, ReduceOp::from_code)?,
            unsafe { slice(dims, n) },
            keep,
        ))
    })
}
extern "C" fn h_argmax(ctx: Ctx, t: Handle, dim: i64, keep: bool) -> Handle {
    apply(ctx, t, || Ok(Op::Argmax(dim, keep)))
}
extern "C" fn h_softmax(ctx: Ctx, t: Handle, dim: i64) -> Handle {
    apply(ctx, t, || Ok(Op::Softmax(dim)))
}
extern "C" fn h_log_softmax(ctx: Ctx, t: Handle, dim: i64) -> Handle {
    apply(ctx, t, || Ok(Op::LogSoftmax(dim)))
}
extern "C" fn h_clamp(ctx: Ctx, t: Handle, min: f64, max: f64) -> Handle {
    apply(ctx, t, || Ok(Op::Clamp(min, max)))
}
extern "C" fn h_reshape(ctx: Ctx, t: Handle, shape: *const i64, n: usize) -> Handle {
    apply(ctx, t, || Ok(Op::Reshape(unsafe { slice(shape, n) })))
}
extern "C" fn h_permute(ctx: Ctx, t: Handle, dims: *const i64, n: usize) -> Handle {
    apply(ctx, t, || Ok(Op::Permute(unsafe { slice(dims, n) })))
}
extern "C" fn h_narrow(ctx: Ctx, t: Handle, dim: i64, start: i64, length: i64) -> Handle {
    apply(ctx, t, || Ok(Op::Narrow(dim, start, length)))
}
extern "C" fn h_one_hot(ctx: Ctx, t: Handle, classes: i64) -> Handle {
    apply(ctx, t, || Ok(Op::OneHot(classes)))
}
extern "C" fn h_gather(ctx: Ctx, t: Handle, dim: i64, index: Handle) -> Handle {
    apply(ctx, t, || Ok(Op::Gather(dim, index as u32)))
}
extern "C" fn h_where_else(ctx: Ctx, t: Handle, cond: Handle, other: Handle) -> Handle {
    apply(ctx, t, || Ok(Op::WhereElse(cond as u32, other as u32)))
}
extern "C" fn h_to_dtype(ctx: Ctx, t: Handle, dtype: u32) -> Handle {
    apply(ctx, t, || Ok(Op::ToDtype(code(dtype, DType::from_code)?)))
}
extern "C" fn h_drop(ctx: Ctx, t: Handle) {
    let ctx = unsafe { &mut *(ctx as *mut NativeCtx) };
    ctx.table.remove(t as u32);
}

/// The host table as ABI `version` labels it; the functions are the same
/// for every version.
const fn host_table(version: u32) -> HostApi {
    HostApi {
        version,
        from_f32: h_from_f32,
        from_s64: h_from_s64,
        full: h_full,
        shape: h_shape,
        dtype: h_dtype,
        to_f32: h_to_f32,
        unary: h_unary,
        binary: h_binary,
        scalar: h_scalar,
        reduce: h_reduce,
        argmax: h_argmax,
        softmax: h_softmax,
        log_softmax: h_log_softmax,
        clamp: h_clamp,
        reshape: h_reshape,
        permute: h_permute,
        narrow: h_narrow,
        one_hot: h_one_hot,
        gather: h_gather,
        where_else: h_where_else,
        to_dtype: h_to_dtype,
        drop: h_drop,
    }
}

static HOST_API_V1: HostApi = host_table(1);
static HOST_API_V2: HostApi = host_table(2);

fn host_api(version: u32) -> &'static HostApi {
    match version {
        1 => &HOST_API_V1,
        _ => &HOST_API_V2,
    }
}
