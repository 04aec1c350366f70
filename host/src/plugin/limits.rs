use crate::tensor::TensorBudget;
use serde::{Deserialize, Serialize};

/// Limits on every wasm call. Native plugins are trusted code and get only the
/// tensor budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxLimits {
    /// Wall-clock deadline of one call, in milliseconds (epoch interruption).
    pub call_timeout_ms: u64,
    /// Cap on the component's linear memory, in MiB.
    pub max_memory_mib: u64,
    /// Cap on the wasm stack, in KiB (deep recursion traps).
    pub max_stack_kib: u64,
    pub max_tables: u32,
    pub max_table_elements: usize,
    pub max_instances: u32,
    pub tensors: TensorBudget,
}

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
