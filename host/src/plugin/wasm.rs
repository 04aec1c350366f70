//! Wasm component plugins: sandboxed, portable. One engine for the process,
//! an epoch ticker for call deadlines, a memory limiter, a host-side tensor
//! budget, and only the WASI interfaces Rust's runtime needs for stdio (with
//! no environment, arguments or real streams behind them). A component that
//! imports anything else — filesystem, sockets, clocks, randomness — is refused
//! at load. The one exception is `wasi:random/insecure-seed`, which Rust's
//! `HashMap` asks for (e.g. inside the `tiff` crate): it gets a fixed seed,
//! so it grants no entropy and keeps plugins deterministic.

use super::output::PluginOutput;
use super::{Backend, CallError, SandboxLimits, Usage};
use crate::plugin::{DecodeRequest, Example, Metric, SampleScore, TaskInfo};
use crate::tensor::{Op, TensorTable};
use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};
use wasmtime::component::{Component, Linker, Resource, ResourceTable, types::ComponentItem};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod contract;

pub use contract::{CURRENT as CONTRACT_VERSION, LOADED as CONTRACT_VERSIONS};

/// The host type behind the WIT `tensor` resource: the resource's rep is a
/// handle of the plugin's [`TensorTable`].
pub enum TensorRep {}

/// Interfaces a component may import. Rust's wasm32-wasip2 runtime imports
/// the stdio ones even when a plugin prints nothing.
const ALLOWED_IMPORTS: &[&str] = &[
    "amat:task/tensors",
    "amat:task/types",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/streams",
    "wasi:io/poll",
    // Fixed (see `HASH_SEED`): a hash seed, not a source of randomness.
    "wasi:random/insecure-seed",
];

/// The value of `wasi:random/insecure-seed` for every instance.
const HASH_SEED: u128 = 0x616d_6174;

/// How often the engine's epoch advances: the resolution of call deadlines.
const TICK: Duration = Duration::from_millis(5);

/// A host op failed inside a plugin call; `limit` when a budget refused it.
#[derive(Debug)]
struct HostOpFailure {
    message: String,
    limit: bool,
}

impl std::fmt::Display for HostOpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for HostOpFailure {}

/// The memory limiter refused a grow.
#[derive(Debug)]
struct MemoryCapHit(String);
impl std::fmt::Display for MemoryCapHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for MemoryCapHit {}

/// The component refused at load: another world, or an import not granted.
#[derive(Debug)]
pub(super) struct Refusal(pub String);
impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Refusal {}

/// Linear memories a component may create. A plugin built by Rust has one;
/// every extra memory would be another `max_memory_mib` without the sum below.
const MAX_MEMORIES: usize = 2;

struct Limiter {
    /// Cap on the sum of every linear memory of the plugin.
    max_memory: usize,
    max_tables: usize,
    max_table_elements: usize,
    max_instances: usize,
    /// Bytes of all linear memories together (memories never shrink).
    total_memory: usize,
    /// The largest `total_memory` so far.
    peak_memory: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called with `current` 0 when a memory is created: the sum covers
        // every memory of every core instance.
        let total = self
            .total_memory
            .saturating_add(desired.saturating_sub(current));
        if total > self.max_memory {
            return Err(wasmtime::Error::new(MemoryCapHit(format!(
                "linear memory grow from {} MiB to {} MiB refused (cap {} MiB over all memories)",
                self.total_memory >> 20,
                total >> 20,
                self.max_memory >> 20
            ))));
        }
        self.total_memory = total;
        self.peak_memory = self.peak_memory.max(total);
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_table_elements {
            return Err(wasmtime::Error::new(MemoryCapHit(format!(
                "table grow to {desired} elements refused (cap {})",
                self.max_table_elements
            ))));
        }
        Ok(true)
    }
    fn instances(&self) -> usize {
        self.max_instances
    }
    fn tables(&self) -> usize {
        self.max_tables
    }
    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

struct State {
    /// When the running call must stop; checked at every epoch tick.
    call_deadline: Instant,
    table: TensorTable,
    device: Device,
    limiter: Limiter,
    wasi: WasiCtx,
    resources: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.resources,
        }
    }
}

fn op_err(e: anyhow::Error) -> wasmtime::Error {
    let message = format!("{e:#}");
    let limit = message.contains("tensor budget");
    wasmtime::Error::new(HostOpFailure { message, limit })
}

fn own(h: Result<u32>) -> wasmtime::Result<Resource<TensorRep>> {
    h.map(Resource::new_own).map_err(op_err)
}

impl State {
    fn apply(&mut self, t: &Resource<TensorRep>, op: Op) -> wasmtime::Result<Resource<TensorRep>> {
        own(self.table.apply(t.rep(), op))
    }
}

/// The WIT enums and the SDK's list the same cases in the same order.
fn same_case<T>(code: u32, from: fn(u32) -> Option<T>) -> wasmtime::Result<T> {
    from(code).ok_or_else(|| wasmtime::Error::msg(format!("op code {code} unknown to the host")))
}

/// The engine settings that limits decide: the wasm stack cap and whether
/// calls have a deadline (epoch interruption). One engine per distinct pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct EngineKey {
    stack_bytes: usize,
    deadline: bool,
}

impl EngineKey {
    fn of(limits: &SandboxLimits) -> Self {
        Self {
            stack_bytes: (limits.max_stack_kib as usize) << 10,
            deadline: limits.call_timeout_ms > 0,
        }
    }
}

fn engine(key: EngineKey) -> Engine {
    static ENGINES: OnceLock<Mutex<HashMap<EngineKey, Engine>>> = OnceLock::new();
    let mut engines = ENGINES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    engines
        .entry(key)
        .or_insert_with(|| new_engine(key))
        .clone()
}

fn new_engine(key: EngineKey) -> Engine {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.max_wasm_stack(key.stack_bytes);
    config.epoch_interruption(key.deadline);
    let engine = Engine::new(&config).expect("wasmtime engine");
    if key.deadline {
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("amat-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .expect("epoch thread");
    }
    engine
}

/// The call ran past its wall-clock deadline.
#[derive(Debug)]
struct DeadlineHit;
impl std::fmt::Display for DeadlineHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("call deadline passed")
    }
}
impl std::error::Error for DeadlineHit {}

/// Compares the clock with the call's deadline at every epoch tick, rather
/// than counting ticks: a loaded machine that wakes the ticker late would
/// stretch a count of ticks, but not the clock.
fn check_deadline(
    ctx: wasmtime::StoreContextMut<'_, State>,
) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    if Instant::now() >= ctx.data().call_deadline {
        Err(wasmtime::Error::new(DeadlineHit))
    } else {
        Ok(wasmtime::UpdateDeadline::Continue(1))
    }
}

/// Starts a call's clock (a no-op without a deadline).
fn start_clock(store: &mut Store<State>, limits: &SandboxLimits) {
    if limits.call_timeout_ms > 0 {
        store.data_mut().call_deadline =
            Instant::now() + Duration::from_millis(limits.call_timeout_ms);
        store.set_epoch_deadline(1);
    }
}

/// Where compiled components are kept: `AMAT_CACHE_DIR`, else the user's cache.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("AMAT_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("amat").join("components"))
}

/// Whether a component came from the on-disk cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompileSource {
    Compiled,
    Cached,
}

/// Compiles a component for the default limits' engine, or loads it compiled
/// from `cache` (keyed by the bytes and the engine's settings), storing it
/// there atomically.
pub fn compile(bytes: &[u8], cache: Option<&Path>) -> Result<(Component, CompileSource)> {
    compile_for(
        &engine(EngineKey::of(&SandboxLimits::default())),
        bytes,
        cache,
    )
}

fn compile_for(
    engine: &Engine,
    bytes: &[u8],
    cache: Option<&Path>,
) -> Result<(Component, CompileSource)> {
    check_magic(bytes)?;
    let digest = format!("{:x}", Sha256::digest(bytes));
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        format!("{digest}-{:016x}", h.finish())
    };
    let cached = cache
        .filter(|d| private_dir(d))
        .map(|d| d.join(format!("{key}.cwasm")));
    if let Some(path) = &cached
        && let Some(compiled) = verified(path, &digest)
    {
        // SAFETY: these are the bytes whose digest `verified` checked against
        // the one written beside them when this process's engine serialized
        // the component of `digest`, in a folder only this user can write.
        if let Ok(c) = unsafe { Component::deserialize(engine, &compiled) } {
            return Ok((c, CompileSource::Cached));
        }
    }
    let component = Component::new(engine, bytes)
        .map_err(anyhow::Error::from)
        .context("not a valid wasm component")?;
    if let Some(path) = cached {
        let compiled = component.serialize()?;
        let seal = format!("{digest} {:x}\n", Sha256::digest(&compiled));
        // The seal last: a compiled file without its seal is never trusted.
        let _ = store_atomically(&path, &compiled)
            .and_then(|()| store_atomically(&seal_path(&path), seal.as_bytes()));
    }
    Ok((component, CompileSource::Compiled))
}

/// `<key>.cwasm.sha256`: the component's digest and the compiled file's.
fn seal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".sha256");
    PathBuf::from(name)
}

/// The compiled file's bytes when its seal names this component and matches
/// them: a compiled file copied from another component, or changed on disk,
/// is compiled again instead of deserialized (which runs native code).
fn verified(path: &Path, digest: &str) -> Option<Vec<u8>> {
    let seal = std::fs::read_to_string(seal_path(path)).ok()?;
    let (component, compiled) = seal.trim().split_once(' ')?;
    let bytes = std::fs::read(path).ok()?;
    (component == digest && compiled == format!("{:x}", Sha256::digest(&bytes))).then_some(bytes)
}

/// Whether `dir` (created if missing) is a folder only this user can write:
/// another user able to write there could plant both a compiled file and its
/// seal. Elsewhere than Unix, the seal alone.
fn private_dir(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        use std::sync::atomic::{AtomicBool, Ordering};
        static WARNED: AtomicBool = AtomicBool::new(false);
        if std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .is_err()
        {
            return false;
        }
        let Ok(meta) = std::fs::symlink_metadata(dir) else {
            return false;
        };
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc_geteuid() };
        let private = meta.is_dir() && meta.uid() == me && meta.mode() & 0o022 == 0;
        if !private && !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "component cache {} is writable by others or not yours: not used",
                dir.display()
            );
        }
        private
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).is_ok()
}

#[cfg(unix)]
unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn store_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn check_magic(bytes: &[u8]) -> Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!("not a WebAssembly file");
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        bail!("a core wasm module, not a component: build the plugin with --target wasm32-wasip2");
    }
    Ok(())
}

/// The contract version a component was built for: the version of the
/// `amat:task` interfaces it imports (a loss needs `tensors`).
fn contract_version(engine: &Engine, component: &Component) -> Result<String> {
    let ty = component.component_type();
    let versions: Vec<String> = ty
        .imports(engine)
        .filter_map(|(name, _)| name.strip_prefix("amat:task/").map(str::to_string))
        .filter_map(|rest| rest.split_once('@').map(|(_, v)| v.to_string()))
        .collect();
    let Some(version) = versions.first().cloned() else {
        return Err(Refusal(
            "a component of another world: it imports no amat:task interface (build a task plugin against plugin-sdk)"
                .into(),
        )
        .into());
    };
    if versions.iter().any(|v| *v != version) {
        return Err(Refusal(format!(
            "imports amat:task at several versions ({})",
            versions.join(", ")
        ))
        .into());
    }
    if !contract::LOADED.contains(&version.as_str()) {
        return Err(Refusal(format!(
            "built for amat:task@{version}; this host provides amat:task@{} (and loads {}): rebuild it against the plugin-sdk of contract {}",
            contract::CURRENT,
            contract::LOADED.join(", "),
            contract::CURRENT
        ))
        .into());
    }
    Ok(version)
}

/// Refuses components of another world or with imports the sandbox does not
/// grant; returns the contract version the component speaks.
fn check_shape(engine: &Engine, component: &Component) -> Result<String> {
    let version = contract_version(engine, component)?;
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let missing: Vec<&str> = contract::exports(&version)
        .iter()
        .copied()
        .filter(|e| !exports.iter().any(|x| x == e))
        .collect();
    if !missing.is_empty() {
        return Err(Refusal(format!(
            "a component of another world: it exports [{}], not the amat:task/task@{version} functions (missing {})",
            exports.join(", "),
            missing.join(", ")
        ))
        .into());
    }
    let mut refused = Vec::new();
    for (name, item) in ty.imports(engine) {
        let bare = name.split('@').next().unwrap_or(name);
        let granted = match item.ty {
            ComponentItem::ComponentInstance(_) => ALLOWED_IMPORTS.contains(&bare),
            // Type imports (the world's `use tensors.{tensor}`) grant nothing.
            ComponentItem::Type(_) | ComponentItem::Resource(_) => true,
            _ => false,
        };
        if !granted {
            refused.push(format!("`{name}`"));
        }
    }
    if !refused.is_empty() {
        return Err(Refusal(format!(
            "imports {}, which the amat sandbox does not grant (no filesystem, network, clock or randomness)",
            refused.join(", ")
        ))
        .into());
    }
    Ok(version)
}

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
        let (component, _) = compile_for(&engine, &bytes, cache_dir().as_deref())?;
        let version = check_shape(&engine, &component)?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        contract::add_to_linker(&mut linker)?;
        let pre = contract::Pre::new(
            &version,
            linker
                .instantiate_pre(&component)
                .map_err(anyhow::Error::from)
                .context("cannot link component")?,
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

    /// Runs one export under the deadline; frees every tensor handle after
    /// and records what the call used.
    fn guarded<R>(
        &mut self,
        f: impl FnOnce(&contract::Instance, &mut Store<State>) -> wasmtime::Result<Result<R, CallError>>,
    ) -> Result<R, CallError> {
        start_clock(&mut self.store, &self.limits);
        self.stderr.begin_call();
        let r = f(&self.task, &mut self.store);
        let state = self.store.data_mut();
        state.table.end_call();
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

    /// Lends `pred` and `target` to the call about to start.
    fn lend(&mut self, pred: &Tensor, target: &Tensor) -> (u32, u32) {
        let state = self.store.data_mut();
        state.table.begin_call();
        state.device = pred.device();
        (
            state.table.lend(pred.shallow_clone()),
            state.table.lend(target.shallow_clone()),
        )
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

/// A store under `limits`: memory limiter, call deadline, and a WASI context
/// with nothing behind it but captured stdout and stderr (no environment variables,
/// arguments, stdin or stdout).
fn new_store(
    engine: &Engine,
    limits: &SandboxLimits,
    stdout: PluginOutput,
    stderr: PluginOutput,
) -> Store<State> {
    let wasi = WasiCtxBuilder::new()
        .stdout(stdout)
        .stderr(stderr)
        .insecure_random_seed(HASH_SEED)
        .build();
    let state = State {
        call_deadline: Instant::now(),
        table: TensorTable::new(limits.tensors),
        device: Device::Cpu,
        limiter: Limiter {
            max_memory: (limits.max_memory_mib as usize) << 20,
            max_tables: limits.max_tables as usize,
            max_table_elements: limits.max_table_elements,
            max_instances: limits.max_instances as usize,
            total_memory: 0,
            peak_memory: 0,
        },
        wasi,
        resources: ResourceTable::new(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    if limits.call_timeout_ms > 0 {
        store.epoch_deadline_callback(check_deadline);
        start_clock(&mut store, limits);
    }
    store
}

/// Names what stopped a call: a limit, a failed host op, or a trap (with the
/// plugin's panic message when it left one on stderr).
fn classify(e: wasmtime::Error, limits: &SandboxLimits, stderr: &PluginOutput) -> CallError {
    if let Some(f) = e.downcast_ref::<HostOpFailure>() {
        return if f.limit {
            CallError::Limit(f.message.clone())
        } else {
            CallError::HostOp(f.message.clone())
        };
    }
    if let Some(m) = e.downcast_ref::<MemoryCapHit>() {
        return CallError::Limit(format!("memory cap: {m}"));
    }
    // wasmtime's own cap on the bytes one call moves from guest to host
    // (its "hostcall fuel", 128 MiB), hit by a large `decode` result.
    if format!("{e:#}").contains("fuel allocated for hostcalls has been exhausted") {
        return CallError::Limit(
            "copy limit: the plugin handed the host more than 128 MiB in one call; \
             lower the size in the decode options or split the request into smaller ones"
                .into(),
        );
    }
    let deadline = e.downcast_ref::<DeadlineHit>().is_some();
    match e.downcast_ref::<Trap>() {
        _ if deadline => CallError::Limit(format!(
            "time limit: the call ran past its deadline of {} ms",
            limits.call_timeout_ms
        )),
        Some(Trap::Interrupt) => CallError::Limit(format!(
            "time limit: the call ran past its deadline of {} ms",
            limits.call_timeout_ms
        )),
        Some(Trap::StackOverflow) => CallError::Limit(format!(
            "stack limit: the wasm stack ran past its cap of {} KiB (deep recursion?)",
            limits.max_stack_kib
        )),
        _ => {
            let said = String::from_utf8_lossy(&stderr.contents())
                .trim()
                .to_string();
            let panic_line = said.lines().find(|l| l.contains("panicked")).map(|l| {
                // Rust prints the panic's message on the line after its location.
                let rest = said
                    .split_once(l)
                    .and_then(|(_, r)| r.lines().find(|x| !x.trim().is_empty()))
                    .unwrap_or("");
                format!("{l} {rest}")
            });
            let root = e.root_cause().to_string();
            // The innermost wasm frame, without the whole backtrace.
            let frame = e
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .and_then(|bt| bt.frames().first())
                .and_then(|f| f.func_name().map(str::to_string));
            let at = frame.map(|f| format!(" in {f}")).unwrap_or_default();
            match panic_line {
                Some(p) => CallError::Trap(format!("{} ({root})", p.trim())),
                None => CallError::Trap(format!("{root}{at}")),
            }
        }
    }
}

impl Backend for WasmBackend {
    fn describe(&mut self) -> Result<TaskInfo, CallError> {
        self.guarded(|task, store| Ok(Ok(task.describe(store)?)))
    }

    fn decode(&mut self, request: &DecodeRequest) -> Result<Vec<Example>, CallError> {
        self.guarded(|task, store| task.decode(store, request))
    }

    fn loss(&mut self, pred: &Tensor, target: &Tensor) -> Result<Tensor, CallError> {
        let (p, t) = self.lend(pred, target);
        self.guarded(|task, store| {
            Ok(match task.loss(&mut *store, p, t)? {
                Ok(res) => take(store, res),
                Err(e) => Err(e),
            })
        })
    }

    fn correct(&mut self, pred: &Tensor, target: &Tensor) -> Result<Option<Tensor>, CallError> {
        let (p, t) = self.lend(pred, target);
        self.guarded(|task, store| {
            Ok(match task.correct(&mut *store, p, t)? {
                Ok(Some(res)) => take(store, res).map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            })
        })
    }

    fn scores(&mut self, pred: &Tensor, target: &Tensor) -> Result<Vec<SampleScore>, CallError> {
        let (p, t) = self.lend(pred, target);
        self.guarded(|task, store| task.scores(store, p, t))
    }

    fn metrics(&mut self, pred: &Tensor, target: &Tensor) -> Result<Vec<Metric>, CallError> {
        let (p, t) = self.lend(pred, target);
        self.guarded(|task, store| task.metrics(store, p, t))
    }

    fn last_usage(&self) -> Usage {
        self.last
    }

    fn contract(&self) -> String {
        format!("amat:task@{}", self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Instantiates a core module under `limits` and calls its `grow` export
    /// when it has one.
    fn run(limits: &SandboxLimits, wat: &str) -> wasmtime::Result<()> {
        let engine = engine(EngineKey::of(limits));
        let module = wasmtime::Module::new(&engine, wat::parse_str(wat).unwrap())?;
        let out = || PluginOutput::new("test".into());
        let mut store = new_store(&engine, limits, out(), out());
        let instance = wasmtime::Instance::new(&mut store, &module, &[])?;
        if let Ok(grow) = instance.get_typed_func::<(), i32>(&mut store, "grow") {
            grow.call(&mut store, ())?;
        }
        Ok(())
    }

    fn refused(e: wasmtime::Error) -> String {
        e.downcast_ref::<MemoryCapHit>()
            .unwrap_or_else(|| panic!("not refused by the limiter: {e:?}"))
            .0
            .clone()
    }

    #[test]
    fn the_limiter_refuses_memories_and_tables_past_their_caps() {
        let limits = SandboxLimits {
            max_memory_mib: 2,
            max_table_elements: 1000,
            ..SandboxLimits::default()
        };
        run(&limits, "(module (memory 16) (table 10 funcref))").unwrap();
        // 48 pages of 64 KiB: 3 MiB from the start.
        let m = refused(run(&limits, "(module (memory 48))").unwrap_err());
        assert!(m.contains("cap 2 MiB"), "{m}");
        let grow = r#"(module (memory 1)
            (func (export "grow") (result i32) (memory.grow (i32.const 40))))"#;
        let m = refused(run(&limits, grow).unwrap_err());
        assert!(
            m.contains("to 2 MiB refused") || m.contains("refused (cap 2 MiB)"),
            "{m}"
        );
        let m = refused(run(&limits, "(module (table 5000 funcref))").unwrap_err());
        assert!(m.contains("5000 elements refused (cap 1000)"), "{m}");
    }

    #[test]
    fn the_memory_cap_is_one_sum_over_every_memory() {
        let limits = SandboxLimits {
            max_memory_mib: 2,
            ..SandboxLimits::default()
        };
        // Two memories of 1.5 MiB: each under the cap, together over it.
        run(&limits, "(module (memory 24))").unwrap();
        let m = refused(run(&limits, "(module (memory 24) (memory 24))").unwrap_err());
        assert!(m.contains("cap 2 MiB over all memories"), "{m}");
        // More memories than a plugin needs are refused whatever their size.
        let many = "(module (memory 0) (memory 0) (memory 0) (memory 0) (memory 0) (memory 0))";
        let e = run(&limits, many).unwrap_err();
        assert!(format!("{e:#}").contains("memor"), "{e:#}");
    }

    #[test]
    fn the_stack_cap_and_the_deadline_pick_the_engine() {
        let a = EngineKey::of(&SandboxLimits::default());
        let b = EngineKey::of(&SandboxLimits {
            max_stack_kib: 256,
            ..SandboxLimits::default()
        });
        let c = EngineKey::of(&SandboxLimits {
            call_timeout_ms: 0,
            ..SandboxLimits::default()
        });
        assert_eq!(a.stack_bytes, 1024 << 10);
        assert_eq!(b.stack_bytes, 256 << 10);
        assert!(a.deadline && !c.deadline);
        assert!(!Engine::same(&engine(a), &engine(b)));
        assert!(Engine::same(&engine(a), &engine(a)));
    }
}
