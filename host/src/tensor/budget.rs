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
    /// Ops (tensors created) in one call. Each op is a node of libtorch's
    /// autograd graph whatever its size: a million ops on an empty view hold
    /// gigabytes that the element count never sees.
    pub max_ops_per_call: u64,
    /// Dimensions of any tensor, and length of any shape or dims list a
    /// plugin passes: libtorch copies sizes and strides at every op.
    pub max_dims: usize,
}

impl Default for TensorBudget {
    fn default() -> Self {
        Self {
            max_live: 10_000,
            max_elements_per_call: 1 << 28,
            max_ops_per_call: 100_000,
            max_dims: 16,
        }
    }
}
