use serde::{Deserialize, Serialize};

/// What one plugin call may create through the tensor API. Checked before the
/// host allocates, so a "tensor bomb" is refused rather than survived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TensorBudget {
    /// Tensors alive in the table at once.
    pub max_live: usize,
    /// Elements created during one call, summed over every op.
    pub max_elements_per_call: u64,
}

impl Default for TensorBudget {
    fn default() -> Self {
        Self {
            max_live: 10_000,
            max_elements_per_call: 1 << 28,
        }
    }
}
