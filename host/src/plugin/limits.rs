use crate::tensor::TensorBudget;
use serde::{Deserialize, Serialize};

/// Limits on every wasm call: the `[sandbox]` section of a run config and the
/// limit flags of `plugin check`. Native plugins are trusted code and get
/// only the tensor budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxLimits {
    /// Wall-clock deadline of one call, in milliseconds (epoch interruption,
    /// checked every 5 ms). 0 turns the deadline off: for trusted plugins only.
    pub call_timeout_ms: u64,
    /// Cap on the component's linear memory, in MiB: one sum over all its
    /// memories (a component may create at most two).
    pub max_memory_mib: u64,
    /// Cap on the wasm stack, in KiB (deep recursion traps). It must fit in
    /// the host thread's own stack, hence at most [`MAX_STACK_KIB`].
    pub max_stack_kib: u64,
    pub max_tables: u32,
    pub max_table_elements: usize,
    pub max_instances: u32,
    pub tensors: TensorBudget,
}

/// Largest wasm stack cap: the wasm stack lives on the host thread's stack
/// (2 MiB for spawned threads, 8 MiB for the main one).
pub const MAX_STACK_KIB: u64 = 1536;

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            call_timeout_ms: 10_000,
            max_memory_mib: 1024,
            max_stack_kib: 1024,
            max_tables: 8,
            max_table_elements: 100_000,
            max_instances: 32,
            tensors: TensorBudget::default(),
        }
    }
}

impl SandboxLimits {
    /// One line naming the first value that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_memory_mib", self.max_memory_mib),
            ("max_stack_kib", self.max_stack_kib),
            ("max_tables", self.max_tables as u64),
            ("max_table_elements", self.max_table_elements as u64),
            ("max_instances", self.max_instances as u64),
            ("tensors.max_live", self.tensors.max_live as u64),
            (
                "tensors.max_elements_per_call",
                self.tensors.max_elements_per_call,
            ),
            ("tensors.max_ops_per_call", self.tensors.max_ops_per_call),
            ("tensors.max_dims", self.tensors.max_dims as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("sandbox.{name} must be at least 1"));
        }
        if self.max_stack_kib > MAX_STACK_KIB {
            return Err(format!(
                "sandbox.max_stack_kib = {} is above {MAX_STACK_KIB} (the wasm stack must fit in the host thread's)",
                self.max_stack_kib
            ));
        }
        if self.max_memory_mib > 1 << 16 {
            return Err(format!(
                "sandbox.max_memory_mib = {} is above a 32-bit memory's 65536 MiB",
                self.max_memory_mib
            ));
        }
        Ok(())
    }
}

/// Command-line overrides of [`SandboxLimits`]; unset flags keep the value.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LimitArgs {
    /// Deadline of one wasm call in milliseconds (0: none) [default: 10000].
    #[arg(long, value_name = "MS")]
    pub call_timeout_ms: Option<u64>,
    /// Cap on a wasm plugin's linear memory (all memories together) in MiB [default: 1024].
    #[arg(long, value_name = "MIB")]
    pub max_memory_mib: Option<u64>,
    /// Cap on the wasm stack in KiB [default: 1024, at most 1536].
    #[arg(long, value_name = "KIB")]
    pub max_stack_kib: Option<u64>,
    /// Tables a wasm plugin may create [default: 8].
    #[arg(long, value_name = "N")]
    pub max_tables: Option<u32>,
    /// Elements of one wasm table [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_table_elements: Option<usize>,
    /// Core instances of a wasm plugin [default: 32].
    #[arg(long, value_name = "N")]
    pub max_instances: Option<u32>,
    /// Host tensors a plugin may hold alive at once [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_live_tensors: Option<usize>,
    /// Tensor elements a plugin may create in one call [default: 268435456].
    #[arg(long, value_name = "N")]
    pub max_tensor_elements: Option<u64>,
    /// Tensor ops (autograd nodes) a plugin may create in one call [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_tensor_ops: Option<u64>,
}

impl LimitArgs {
    /// `limits` with the flags that were given applied.
    pub fn apply(&self, mut limits: SandboxLimits) -> SandboxLimits {
        let l = &mut limits;
        macro_rules! set {
            ($($flag:ident => $field:expr),* $(,)?) => {
                $(if let Some(v) = self.$flag { $field = v; })*
            };
        }
        set!(
            call_timeout_ms => l.call_timeout_ms,
            max_memory_mib => l.max_memory_mib,
            max_stack_kib => l.max_stack_kib,
            max_tables => l.max_tables,
            max_table_elements => l.max_table_elements,
            max_instances => l.max_instances,
            max_live_tensors => l.tensors.max_live,
            max_tensor_elements => l.tensors.max_elements_per_call,
            max_tensor_ops => l.tensors.max_ops_per_call,
        );
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_only_what_they_name() {
        let args = LimitArgs {
            call_timeout_ms: Some(250),
            max_tensor_elements: Some(1000),
            ..LimitArgs::default()
        };
        let l = args.apply(SandboxLimits::default());
        assert_eq!(l.call_timeout_ms, 250);
        assert_eq!(l.tensors.max_elements_per_call, 1000);
        assert_eq!(l.max_memory_mib, SandboxLimits::default().max_memory_mib);
    }

    #[test]
    fn unusable_limits_are_named() {
        let mut l = SandboxLimits::default();
        l.validate().unwrap();
        l.tensors.max_live = 0;
        assert_eq!(
            l.validate().unwrap_err(),
            "sandbox.tensors.max_live must be at least 1"
        );
        l.tensors.max_live = 5;
        l.max_stack_kib = 1 << 20;
        assert!(l.validate().unwrap_err().contains("max_stack_kib"));
    }
}
