//! The sandbox's policy: what a component may import (only the WASI
//! interfaces Rust's runtime needs for stdio, with no environment, arguments
//! or real streams behind them; a component that imports anything else —
//! filesystem, sockets, clocks, randomness — is refused at load), which
//! contract version it speaks, and the store every instance runs in: a
//! memory limiter and a tensor table under the run's [`SandboxLimits`].
//! The one exception to "no randomness" is `wasi:random/insecure-seed`,
//! which Rust's `HashMap` asks for (e.g. inside the `tiff` crate): it gets a
//! fixed seed, so it grants no entropy and keeps plugins deterministic.

use super::contract;
use super::engine::{check_deadline, start_clock};
use super::errors::{MemoryCapHit, Refusal};
use crate::plugin::SandboxLimits;
use crate::plugin::output::PluginOutput;
use crate::tensor::TensorTable;
use anyhow::Result;
use std::time::Instant;
use tch::Device;
use wasmtime::component::{Component, ResourceTable, types::ComponentItem};
use wasmtime::{Engine, ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

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

/// Linear memories a component may create. A plugin built by Rust has one;
/// every extra memory would be another `max_memory_mib` without the sum below.
const MAX_MEMORIES: usize = 2;

pub(super) struct Limiter {
    /// Cap on the sum of every linear memory of the plugin.
    max_memory: usize,
    max_tables: usize,
    max_table_elements: usize,
    max_instances: usize,
    /// Bytes of all linear memories together (memories never shrink).
    total_memory: usize,
    /// The largest `total_memory` so far.
    pub(super) peak_memory: usize,
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
/// The data of a plugin's store.
pub(super) struct State {
    /// When the running call must stop; checked at every epoch tick.
    pub(super) call_deadline: Instant,
    pub(super) table: TensorTable,
    /// Where the running call's tensors live (its prediction's device).
    pub(super) device: Device,
    pub(super) limiter: Limiter,
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

/// A store under `limits`: memory limiter, call deadline, and a WASI context
/// with nothing behind it but captured stdout and stderr (no environment variables,
/// arguments, stdin or stdout).
pub(super) fn new_store(
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

/// The contract version a component was built for: the version in the names
/// of the `amat:task` interfaces it imports or exports (a loss needs
/// `tensors`). A version this host does not load is refused with what to do,
/// before the linker would fail with a message about missing resources.
fn contract_version(engine: &Engine, component: &Component) -> Result<String> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .chain(ty.exports(engine).map(|(name, _)| name.to_string()))
        .collect();
    let versions: Vec<&str> = names
        .iter()
        .filter_map(|name| name.strip_prefix("amat:task/"))
        .map(|rest| rest.split_once('@').map_or("", |(_, v)| v))
        .collect();
    let Some(&version) = versions.first() else {
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
    if !contract::LOADED.contains(&version) {
        let built = match version {
            "" => "amat:task without a version".to_string(),
            v => format!("amat:task@{v}"),
        };
        return Err(Refusal(format!(
            "built for {built}; this host provides amat:task@{} (and loads {}): rebuild it against the plugin-sdk of contract {}",
            contract::CURRENT,
            contract::LOADED.join(", "),
            contract::CURRENT
        ))
        .into());
    }
    Ok(version.to_string())
}

/// Refuses components of another world or with imports the sandbox does not
/// grant; returns the contract version the component speaks.
pub(super) fn check_shape(engine: &Engine, component: &Component) -> Result<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::wasm::engine::{EngineKey, engine};

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
}
