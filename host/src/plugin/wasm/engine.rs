//! One wasmtime engine per distinct pair of engine settings, each with its
//! epoch ticker when calls have a deadline, and the per-call deadline check.

use super::errors::DeadlineHit;
use super::policy::State;
use crate::plugin::SandboxLimits;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::{Config, Engine, Store};

/// How often the engine's epoch advances: the resolution of call deadlines.
const TICK: Duration = Duration::from_millis(5);

/// The engine settings that limits decide: the wasm stack cap and whether
/// calls have a deadline (epoch interruption). One engine per distinct pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct EngineKey {
    stack_bytes: usize,
    deadline: bool,
}

impl EngineKey {
    pub(super) fn of(limits: &SandboxLimits) -> Self {
        Self {
            stack_bytes: (limits.max_stack_kib as usize) << 10,
            deadline: limits.call_timeout_ms > 0,
        }
    }
}

/// The process's engine for `key`, made on first use.
pub(super) fn engine(key: EngineKey) -> Engine {
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

/// Compares the clock with the call's deadline at every epoch tick, rather
/// than counting ticks: a loaded machine that wakes the ticker late would
/// stretch a count of ticks, but not the clock.
pub(super) fn check_deadline(
    ctx: wasmtime::StoreContextMut<'_, State>,
) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    if Instant::now() >= ctx.data().call_deadline {
        Err(wasmtime::Error::new(DeadlineHit))
    } else {
        Ok(wasmtime::UpdateDeadline::Continue(1))
    }
}

/// Starts a call's clock (a no-op without a deadline).
pub(super) fn start_clock(store: &mut Store<State>, limits: &SandboxLimits) {
    if limits.call_timeout_ms > 0 {
        store.data_mut().call_deadline =
            Instant::now() + Duration::from_millis(limits.call_timeout_ms);
        store.set_epoch_deadline(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
