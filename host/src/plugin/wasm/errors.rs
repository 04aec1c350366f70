//! What can stop a wasm plugin call or load, as typed errors, and
//! [`classify`], which names each as the host's [`CallError`].

use crate::plugin::output::PluginOutput;
use crate::plugin::{CallError, SandboxLimits};
use crate::tensor::BudgetExceeded;
use wasmtime::Trap;

/// A host op failed inside a plugin call. A budget's refusal keeps its type
/// so the call is reported as a limit.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(super) struct HostOpFailure {
    message: String,
    budget: Option<BudgetExceeded>,
}

impl HostOpFailure {
    pub(super) fn new(e: anyhow::Error) -> Self {
        Self {
            message: format!("{e:#}"),
            budget: BudgetExceeded::find(&e).cloned(),
        }
    }
}

/// The memory limiter refused a grow.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct MemoryCapHit(pub(super) String);

/// The component refused at load: another world, or an import not granted.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refusal(pub String);

/// The call ran past its wall-clock deadline.
#[derive(Debug, thiserror::Error)]
#[error("call deadline passed")]
pub(super) struct DeadlineHit;

/// Names what stopped a call: a limit, a failed host op, or a trap (with the
/// plugin's panic message when it left one on stderr).
pub(super) fn classify(
    e: wasmtime::Error,
    limits: &SandboxLimits,
    stderr: &PluginOutput,
) -> CallError {
    if let Some(f) = e.downcast_ref::<HostOpFailure>() {
        return match f.budget {
            Some(_) => CallError::Limit(f.message.clone()),
            None => CallError::HostOp(f.message.clone()),
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
