//! The host table handed to native plugins: one trampoline per function of
//! the SDK's table (`amat_plugin_sdk::for_each_host_fn!`), each converting
//! its C arguments and running the same table op a wasm plugin's `tensor`
//! resource runs.
//!
//! Every function here is an `unsafe extern "C" fn` of `abi::HostApi`, with
//! its contract: `ctx` is null or the `NativeCtx` of the call running on
//! this thread, and pointer and length pairs address that many elements.
//! Handles are never trusted: a wrong one is an error kept in the table.

use super::NativeCtx;
use crate::tensor::Op;
use amat_plugin_sdk::abi::{Ctx, Handle, HostApi};
use amat_plugin_sdk::types::{BinaryOp, DType, ReduceOp, ScalarOp, UnaryOp};
use anyhow::{Context, Result, anyhow, bail};

/// Runs `f` on the call's context; its error (or panic: unwinding out of an
/// `extern "C"` function would abort) is kept in the table for the backend,
/// and the plugin gets a 0 handle.
///
/// # Safety
/// `ctx` must be null or point at the `NativeCtx` of the running call, with
/// no other reference to it in use.
unsafe fn with_ctx(ctx: Ctx, f: impl FnOnce(&mut NativeCtx) -> Result<u32>) -> Handle {
    // SAFETY: the caller's contract: null or the running call's context.
    let Some(ctx) = (unsafe { (ctx as *mut NativeCtx).as_mut() }) else {
        return 0;
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(ctx)))
        .unwrap_or_else(|_| Err(anyhow!("the host panicked in a tensor op")));
    match r {
        Ok(h) => h as Handle,
        Err(e) => {
            ctx.table.set_error(e);
            0
        }
    }
}

/// A handle of the table: the native ABI's handles are 64-bit, the table's
/// 32-bit, so a larger one was never issued (truncating it would alias
/// another tensor).
pub(super) fn handle(h: Handle) -> Result<u32> {
    u32::try_from(h).map_err(|_| anyhow!("tensor handle {h} was never issued"))
}

/// # Safety
/// `ptr` must address `len` readable elements when `len` is not 0.
unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if len == 0 {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

fn code<T>(c: u32, from: fn(u32) -> Option<T>) -> Result<T> {
    from(c).with_context(|| format!("unknown op code {c}"))
}

/// # Safety
/// `ctx` as for [`with_ctx`].
unsafe fn apply(ctx: Ctx, t: Handle, op: impl FnOnce() -> Result<Op<'static>>) -> Handle {
    // SAFETY: passed on from the caller.
    unsafe {
        with_ctx(ctx, |c| {
            let op = op()?;
            let h = handle(t).with_context(|| op.name().to_string())?;
            c.table.apply(h, op)
        })
    }
}

/// # Safety
/// See the host table's contract above.
unsafe extern "C" fn from_f32(
    ctx: Ctx,
    data: *const f32,
    len: usize,
    shape: *const i64,
    ndim: usize,
) -> Handle {
    // SAFETY: the table's contract: the call's context, and `len` values at
    // `data`, `ndim` at `shape`.
    unsafe {
        with_ctx(ctx, |c| {
            c.table
                .from_f32(slice(data, len), slice(shape, ndim), c.device)
        })
    }
}
/// # Safety
/// See the host table's contract above.
unsafe extern "C" fn from_s64(
    ctx: Ctx,
    data: *const i64,
    len: usize,
    shape: *const i64,
    ndim: usize,
) -> Handle {
    // SAFETY: as for `from_f32`.
    unsafe {
        with_ctx(ctx, |c| {
            c.table
                .from_s64(slice(data, len), slice(shape, ndim), c.device)
        })
    }
}
/// # Safety
/// See the host table's contract above.
unsafe extern "C" fn full(ctx: Ctx, value: f64, shape: *const i64, ndim: usize) -> Handle {
    // SAFETY: the call's context, and `ndim` values at `shape`.
    unsafe { with_ctx(ctx, |c| c.table.full(value, slice(shape, ndim), c.device)) }
}
/// # Safety
/// See the host table's contract above; `out` must hold `cap` values.
unsafe extern "C" fn shape(ctx: Ctx, t: Handle, out: *mut i64, cap: usize) -> i64 {
    let mut rank = -1;
    // SAFETY: the call's context; `out` holds `cap` values and at most `cap`
    // are written.
    unsafe {
        with_ctx(ctx, |c| {
            let s = c.table.get(handle(t)?)?.size();
            let n = s.len().min(cap);
            std::ptr::copy_nonoverlapping(s.as_ptr(), out, n);
            rank = s.len() as i64;
            Ok(1)
        })
    };
    rank
}
/// # Safety
/// See the host table's contract above.
unsafe extern "C" fn dtype(ctx: Ctx, t: Handle) -> i64 {
    let mut code = -1;
    // SAFETY: the call's context.
    unsafe {
        with_ctx(ctx, |c| {
            code = crate::tensor::dtype_of(c.table.get(handle(t)?)?.kind()) as i64;
            Ok(1)
        })
    };
    code
}
/// # Safety
/// See the host table's contract above; `out` must hold `len` values.
unsafe extern "C" fn to_f32(ctx: Ctx, t: Handle, out: *mut f32, len: usize) -> i64 {
    // SAFETY: the call's context; exactly `len` values are written to `out`.
    let h = unsafe {
        with_ctx(ctx, |c| {
            let v = c.table.to_f32(handle(t)?)?;
            if v.len() != len {
                bail!("to-f32: tensor has {} values, buffer {len}", v.len());
            }
            std::ptr::copy_nonoverlapping(v.as_ptr(), out, len);
            Ok(1)
        })
    };
    if h == 0 { -1 } else { 0 }
}

/// The trampolines of the ops that make one tensor from another: each
/// converts its C arguments and applies one [`Op`].
macro_rules! op_trampolines {
    ($($name:ident($($arg:ident: $ty:ty),*) => $op:expr;)+) => {$(
        /// # Safety
        /// See the host table's contract above.
        unsafe extern "C" fn $name(ctx: Ctx, t: Handle $(, $arg: $ty)*) -> Handle {
            // SAFETY: the call's context, and every pointer and length pair
            // (read by `slice`) addresses that many values.
            unsafe { apply(ctx, t, || Ok($op)) }
        }
    )+};
}

op_trampolines! {
    unary(op: u32) => Op::Unary(code(op, UnaryOp::from_code)?);
    binary(op: u32, other: Handle) => Op::Binary(code(op, BinaryOp::from_code)?, handle(other)?);
    scalar(op: u32, value: f64) => Op::Scalar(code(op, ScalarOp::from_code)?, value);
    reduce(op: u32, dims: *const i64, n: usize, keep: bool) =>
        Op::Reduce(code(op, ReduceOp::from_code)?, slice(dims, n), keep);
    argmax(dim: i64, keep: bool) => Op::Argmax(dim, keep);
    softmax(dim: i64) => Op::Softmax(dim);
    log_softmax(dim: i64) => Op::LogSoftmax(dim);
    clamp(min: f64, max: f64) => Op::Clamp(min, max);
    reshape(shape: *const i64, n: usize) => Op::Reshape(slice(shape, n));
    permute(dims: *const i64, n: usize) => Op::Permute(slice(dims, n));
    narrow(dim: i64, start: i64, length: i64) => Op::Narrow(dim, start, length);
    one_hot(classes: i64) => Op::OneHot(classes);
    gather(dim: i64, index: Handle) => Op::Gather(dim, handle(index)?);
    where_else(cond: Handle, other: Handle) => Op::WhereElse(handle(cond)?, handle(other)?);
    to_dtype(dtype: u32) => Op::ToDtype(code(dtype, DType::from_code)?);
}

/// # Safety
/// See the host table's contract above.
unsafe extern "C" fn drop(ctx: Ctx, t: Handle) {
    // SAFETY: the call's context. A handle that is not the table's is
    // ignored, as a dropped resource the runtime already forgot would be.
    unsafe {
        with_ctx(ctx, |c| {
            if let Ok(h) = handle(t) {
                c.table.remove(h);
            }
            Ok(1)
        })
    };
}

/// The host table as ABI `version` labels it, one trampoline above per
/// function of the SDK's table (a function without one does not build); the
/// functions are the same for every version.
macro_rules! host_table {
    ($($(#[$m:meta])* $name:ident : fn($($arg:ident : $ty:ty),*) -> $ret:ty;)+) => {
        const fn host_table(version: u32) -> HostApi {
            HostApi {
                version,
                $($name,)+
            }
        }
    };
}

amat_plugin_sdk::for_each_host_fn!(host_table);

static HOST_API_V1: HostApi = host_table(1);
static HOST_API_V2: HostApi = host_table(2);

pub(super) fn host_api(version: u32) -> &'static HostApi {
    match version {
        1 => &HOST_API_V1,
        _ => &HOST_API_V2,
    }
}
