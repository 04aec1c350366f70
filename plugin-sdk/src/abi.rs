//! The native (dylib) ABI: the same contract as `wit/task.wit`, as C function
//! tables. The host passes a [`HostApi`] to the plugin's [`ENTRY_SYMBOL`] and
//! gets a [`PluginApi`] back. Tensors cross as opaque `u64` handles (0 means the
//! host op failed; the host keeps the reason); structured data crosses as JSON
//! or, for decoded examples, the compact encoding in [`codec`].
//!
//! Every function of `HostApi` is one method of the WIT `tensor` resource, with
//! the same name in snake case; a host test checks names, argument and result
//! types against the WIT.
//!
//! Every function pointer here is an `unsafe extern "C" fn`: each takes raw
//! pointers (or a context only the other side may interpret) that a caller
//! must keep valid, as its `# Safety` section says. The layout is that of a
//! plain `extern "C" fn`, so this changed no table's shape.

use std::ffi::c_void;

/// Bumped whenever a table below changes shape. Tables only ever grow at
/// their end, so a host keeps loading plugins of earlier versions: version 2
/// (contract 0.2.0) appends `scores` to [`PluginApi`]; [`HostApi`] is
/// unchanged (its new unary ops are new codes of `unary`).
pub const ABI_VERSION: u32 = 2;
/// The earliest plugin ABI the host still loads.
pub const OLDEST_ABI_VERSION: u32 = 1;
/// The one symbol a native plugin exports.
pub const ENTRY_SYMBOL: &[u8] = b"amat_task_v1\0";

pub type Handle = u64;
/// Per-call host context, opaque to the plugin.
pub type Ctx = *mut c_void;

/// A borrowed byte slice.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Bytes {
    pub ptr: *const u8,
    pub len: usize,
}

impl Bytes {
    pub fn of(s: &[u8]) -> Self {
        Self {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// # Safety
    /// `ptr` must point at `len` readable bytes that outlive the result.
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.len == 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// Where a plugin writes bytes for the host (a result or an error message).
/// Its fields are private: only [`Sink::new`], which is unsafe, pairs a
/// writer with its target, so [`Sink::put`] can be safe.
#[repr(C)]
pub struct Sink {
    target: *mut c_void,
    write: unsafe extern "C" fn(target: *mut c_void, data: *const u8, len: usize),
}

impl Sink {
    /// # Safety
    /// `write(target, data, len)` must be sound for any `len` readable bytes
    /// at `data`, for as long as the sink is used.
    pub unsafe fn new(
        target: *mut c_void,
        write: unsafe extern "C" fn(target: *mut c_void, data: *const u8, len: usize),
    ) -> Self {
        Self { target, write }
    }

    /// Writes `data` to the sink.
    pub fn put(&self, data: &[u8]) {
        // SAFETY: `new`'s contract makes `write` sound on `target` for any
        // live slice.
        unsafe { (self.write)(self.target, data.as_ptr(), data.len()) };
    }
}

/// One input file of a decode request.
#[repr(C)]
pub struct FileRef {
    pub name: Bytes,
    pub bytes: Bytes,
}

/// The host's tensor ops as one table: the C signature of each, from which
/// [`HostApi`] and its [`HostApi::SIGNATURES`] (what the drift test compares
/// with `wit/task.wit`) are generated. The host expands it again for its
/// trampolines, so adding an op here without implementing it does not build.
#[macro_export]
#[doc(hidden)]
macro_rules! for_each_host_fn {
    ($callback:path) => {
        $callback! {
            from_f32: fn(data: *const f32, len: usize, shape: *const i64, ndim: usize) -> Handle;
            from_s64: fn(data: *const i64, len: usize, shape: *const i64, ndim: usize) -> Handle;
            full: fn(value: f64, shape: *const i64, ndim: usize) -> Handle;
            /// Writes up to `cap` dims to `out`; returns the rank, or -1 on error.
            shape: fn(t: Handle, out: *mut i64, cap: usize) -> i64;
            /// Returns the dtype code, or -1 on error.
            dtype: fn(t: Handle) -> i64;
            /// Writes exactly `len` values (the element count); returns 0, or -1 on error.
            to_f32: fn(t: Handle, out: *mut f32, len: usize) -> i64;
            unary: fn(t: Handle, op: u32) -> Handle;
            binary: fn(t: Handle, op: u32, other: Handle) -> Handle;
            scalar: fn(t: Handle, op: u32, value: f64) -> Handle;
            reduce: fn(t: Handle, op: u32, dims: *const i64, ndims: usize, keep_dim: bool) -> Handle;
            argmax: fn(t: Handle, dim: i64, keep_dim: bool) -> Handle;
            softmax: fn(t: Handle, dim: i64) -> Handle;
            log_softmax: fn(t: Handle, dim: i64) -> Handle;
            clamp: fn(t: Handle, min: f64, max: f64) -> Handle;
            reshape: fn(t: Handle, shape: *const i64, ndim: usize) -> Handle;
            permute: fn(t: Handle, dims: *const i64, ndims: usize) -> Handle;
            narrow: fn(t: Handle, dim: i64, start: i64, length: i64) -> Handle;
            one_hot: fn(t: Handle, classes: i64) -> Handle;
            gather: fn(t: Handle, dim: i64, index: Handle) -> Handle;
            where_else: fn(t: Handle, cond: Handle, other: Handle) -> Handle;
            to_dtype: fn(t: Handle, dtype: u32) -> Handle;
            /// Releases a handle the plugin owns (the WIT resource destructor).
            drop: fn(t: Handle) -> ();
        }
    };
}

macro_rules! host_api {
    ($($(#[$m:meta])* $name:ident : fn($($arg:ident : $ty:ty),*) -> $ret:ty;)+) => {
        /// The host's tensor ops, one per method of the WIT `tensor` resource.
        ///
        /// # Safety
        /// Every function has the same contract: `ctx` must be the context
        /// the host passed to the plugin export running on this thread, and
        /// the call must happen during that export; every pointer and length
        /// pair must address that many readable elements (writable for
        /// `out`), any pointer when the length is 0. Handles need no care:
        /// a wrong one (never issued, dropped, from another call) makes the
        /// function fail (a 0 handle or -1) and the host keep the reason.
        #[repr(C)]
        pub struct HostApi {
            pub version: u32,
            $($(#[$m])* pub $name: unsafe extern "C" fn(ctx: Ctx $(, $arg: $ty)*) -> $ret,)+
        }

        impl HostApi {
            /// The function names, in table order (snake case of the WIT names).
            pub const FUNCTIONS: &'static [&'static str] = &[$(stringify!($name)),+];
            /// Each function's arguments after `ctx` (name, type) and its
            /// result type, as written in the table.
            pub const SIGNATURES: &'static [HostFn] = &[$(HostFn {
                name: stringify!($name),
                args: &[$((stringify!($arg), stringify!($ty))),*],
                result: stringify!($ret),
            }),+];
        }
    };
}

/// One function of [`HostApi`], spelled out for checks against the WIT.
#[derive(Debug, Clone, Copy)]
pub struct HostFn {
    pub name: &'static str,
    pub args: &'static [(&'static str, &'static str)],
    pub result: &'static str,
}

for_each_host_fn!(host_api);

/// Status codes of the plugin's functions.
pub const OK: i32 = 0;
/// The plugin returned an error; its message is in the error sink.
pub const ERR_PLUGIN: i32 = 1;
/// A host op failed during the call; the host holds the reason.
pub const ERR_HOST_OP: i32 = 2;
/// The plugin panicked; the message is in the error sink.
pub const ERR_PANIC: i32 = 3;

/// The plugin's exports of ABI version 1: the leading fields of every
/// version's table, so a host may read them before it knows the version.
#[repr(C)]
pub struct PluginApiV1 {
    pub version: u32,
    /// Writes the `TaskInfo` as JSON.
    ///
    /// # Safety
    /// None beyond trusting the library: it takes no raw pointer.
    pub describe: unsafe extern "C" fn(out: &Sink) -> i32,
    /// Writes the examples in the [`codec`] encoding, or an error message.
    ///
    /// # Safety
    /// `files` must point at `nfiles` file references whose bytes, like
    /// `options`'s, stay readable during the call.
    pub decode: unsafe extern "C" fn(
        files: *const FileRef,
        nfiles: usize,
        options: Bytes,
        out: &Sink,
    ) -> i32,
    /// Stores the loss handle in `out`, or writes an error message.
    ///
    /// # Safety
    /// `ctx` must be a context of the host table the plugin was given, kept
    /// alive and unshared for the call; `out` must be writable.
    pub loss: unsafe extern "C" fn(
        ctx: Ctx,
        pred: Handle,
        target: Handle,
        out: *mut Handle,
        err: &Sink,
    ) -> i32,
    /// Version 1's "still correct" mask in `out` (0 for none); version 2
    /// plugins always answer none.
    ///
    /// # Safety
    /// As for `loss`.
    pub correct: unsafe extern "C" fn(
        ctx: Ctx,
        pred: Handle,
        target: Handle,
        out: *mut Handle,
        err: &Sink,
    ) -> i32,
    /// Writes the metrics as JSON, or an error message.
    ///
    /// # Safety
    /// `ctx` as for `loss`.
    pub metrics: unsafe extern "C" fn(ctx: Ctx, pred: Handle, target: Handle, out: &Sink) -> i32,
}

/// The plugin's exports, one per WIT world export: version 1's table and
/// what version 2 appends.
#[repr(C)]
pub struct PluginApi {
    pub v1: PluginApiV1,
    /// Writes the per-sample scores as JSON, or an error message.
    ///
    /// # Safety
    /// `ctx` as for `loss`.
    pub scores: unsafe extern "C" fn(ctx: Ctx, pred: Handle, target: Handle, out: &Sink) -> i32,
}

/// The signature of [`ENTRY_SYMBOL`].
pub type EntryFn = unsafe extern "C" fn(host: *const HostApi) -> *const PluginApi;

/// A compact little-endian encoding of decoded examples (JSON would spell
/// every float of a volume out as text).
pub mod codec {
    use crate::types::{Dense, Example};

    pub fn encode(examples: &[Example]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend((examples.len() as u64).to_le_bytes());
        for ex in examples {
            out.extend((ex.id.len() as u64).to_le_bytes());
            out.extend(ex.id.as_bytes());
            for d in [&ex.image, &ex.target] {
                out.extend((d.shape.len() as u64).to_le_bytes());
                d.shape.iter().for_each(|s| out.extend(s.to_le_bytes()));
                out.extend((d.data.len() as u64).to_le_bytes());
                d.data.iter().for_each(|v| out.extend(v.to_le_bytes()));
            }
        }
        out
    }

    struct Reader<'a>(&'a [u8]);

    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8], String> {
            if self.0.len() < n {
                return Err("decoded examples are truncated".into());
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn u64(&mut self) -> Result<u64, String> {
            Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
        }
        fn len(&mut self, elem: usize) -> Result<usize, String> {
            let n = self.u64()? as usize;
            if n.saturating_mul(elem) > self.0.len() {
                return Err(format!("decoded examples claim {n} items past the end"));
            }
            Ok(n)
        }
        fn dense(&mut self) -> Result<Dense, String> {
            let nd = self.len(8)?;
            let shape = (0..nd)
                .map(|_| self.u64().map(|v| v as i64))
                .collect::<Result<Vec<_>, _>>()?;
            let n = self.len(4)?;
            let data = self
                .take(n * 4)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            Dense::new(shape, data)
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Vec<Example>, String> {
        let mut r = Reader(bytes);
        let n = r.len(8)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.len(1)?;
            let id = String::from_utf8(r.take(len)?.to_vec())
                .map_err(|_| "example id is not UTF-8".to_string())?;
            let image = r.dense()?;
            let target = r.dense()?;
            out.push(Example { id, image, target });
        }
        if !r.0.is_empty() {
            return Err("decoded examples have trailing bytes".into());
        }
        Ok(out)
    }
}
