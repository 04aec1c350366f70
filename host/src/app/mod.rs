//! Application layer: the commands as use cases over training, evaluation,
//! attacks and data (`cli → app → {train, eval} → attack → plugin → tensor`).
//! Nothing below imports this layer; `tests/layering.rs` checks it.

pub mod attack;
pub mod calibrate;
pub mod compare;
pub mod evaluate;
pub mod launch;
pub mod progress;
pub mod run;
mod run_dir;
pub mod session;
pub mod study;
mod summary;

pub use progress::Progress;
pub use run::{Finished, Job, RunArgs, execute, run};
pub use run_dir::RunLock;
pub use session::{Session, effective_config, eval_seed, resolve_paths, split_of};
