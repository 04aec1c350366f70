//! The tensors a plugin sees: handles into a per-plugin table of
//! `tch::Tensor`s, the ops it may apply to them, and the budget that keeps a
//! plugin from exhausting host or GPU memory through them.

mod budget;
mod ops;
mod table;

pub use budget::{BudgetExceeded, TensorBudget};
pub use ops::{Op, dtype_of, kind_of};
pub use table::{CallScope, HoldsTable, TensorTable, TensorUsage};
