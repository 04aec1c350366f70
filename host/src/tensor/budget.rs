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

/// A plugin call asked for more than its [`TensorBudget`] grants. Both plugin
/// backends find it in an op's error chain (see [`BudgetExceeded::find`]) to
/// report a limit rather than a failed op.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BudgetExceeded {
    #[error("tensor budget: more than {max} live tensors")]
    Live { max: usize },
    #[error(
        "tensor budget: the plugin holds {held} tensor handles it never dropped (limit {max} live)"
    )]
    Held { held: usize, max: usize },
    #[error(
        "tensor budget: more than {max} ops in one call (each is a node of the autograd graph)"
    )]
    Ops { max: u64 },
    #[error(
        "tensor budget: {elements} more elements would make {total}, over the limit of {max} per call"
    )]
    Elements { elements: u64, total: u64, max: u64 },
    #[error("tensor budget: {what} has {len} dimensions, over the limit of {max}")]
    Dims {
        what: String,
        len: usize,
        max: usize,
    },
    #[error(
        "tensor budget: one-hot needs its number of classes, got {classes} \
         (sizing it from the largest index is refused)"
    )]
    OneHotClasses { classes: i64 },
}

impl BudgetExceeded {
    /// The budget error anywhere in `e`'s chain (ops add context around it).
    pub fn find(e: &anyhow::Error) -> Option<&BudgetExceeded> {
        e.chain().find_map(|c| c.downcast_ref::<BudgetExceeded>())
    }
}
