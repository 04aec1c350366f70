//! Write an amat task plugin once; build it as a sandboxed wasm component
//! (`--target wasm32-wasip2`) or as a native dylib from the same source.
//!
//! ```ignore
//! use amat_plugin_sdk::{Task, Tensor, TaskInfo, ...};
//! struct MyTask;
//! impl Task for MyTask { ... }
//! amat_plugin_sdk::export_task!(MyTask);
//! ```
//!
//! Tensors live in the host: every `Tensor` method is a host op recorded in
//! the host's autograd graph, so a loss written here is differentiable with
//! respect to the network's weights and its input.

pub mod losses;
mod tensor;
pub mod types;

#[cfg(not(target_arch = "wasm32"))]
pub mod abi;
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod native;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wasm;

#[cfg(not(target_arch = "wasm32"))]
use native as backend;
#[cfg(target_arch = "wasm32")]
use wasm as backend;

pub use tensor::Tensor;
pub use types::*;

/// A task: what a plugin supplies. Everything else (models, training,
/// attacks, evaluation) is the host's.
pub trait Task {
    fn describe() -> TaskInfo;
    /// Files to examples. Plain data: no host tensors here.
    fn decode(request: &DecodeRequest) -> Result<Vec<Example>, String>;
    /// Per-sample loss: `pred` is [B, ...], the result must be [B].
    fn loss(pred: &Tensor, target: &Tensor) -> Result<Tensor, String>;
    /// Per-sample judgement scores, one per `TaskInfo::scores` entry in that
    /// order, each with one value per sample. The host compares them with
    /// thresholds a run sets to judge "still correct" under attack; without
    /// scores it judges `loss <= tau`.
    fn scores(_pred: &Tensor, _target: &Tensor) -> Result<Vec<SampleScore>, String> {
        Ok(Vec::new())
    }
    /// Quality of a whole evaluation set, one value per `metric_names` entry.
    fn metrics(pred: &Tensor, target: &Tensor) -> Result<Vec<Metric>, String>;
}

/// Exports a [`Task`] as a wasm component or as a native plugin, whichever
/// the crate is being built as.
#[macro_export]
macro_rules! export_task {
    ($task:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct AmatExport;
            type Host = $crate::wasm::bindings::amat::task::tensors::Tensor;
            type Wit = $crate::wasm::bindings::amat::task::types::TaskInfo;
            impl $crate::wasm::bindings::Guest for AmatExport {
                fn describe() -> Wit {
                    $crate::wasm::describe::<$task>()
                }
                fn decode(
                    r: $crate::wasm::bindings::amat::task::types::DecodeRequest,
                ) -> Result<Vec<$crate::wasm::bindings::amat::task::types::Example>, String>
                {
                    $crate::wasm::decode::<$task>(r)
                }
                fn loss(p: &Host, t: &Host) -> Result<Host, String> {
                    $crate::wasm::loss::<$task>(p, t)
                }
                fn scores(
                    p: &Host,
                    t: &Host,
                ) -> Result<Vec<$crate::wasm::bindings::amat::task::types::SampleScore>, String>
                {
                    $crate::wasm::scores::<$task>(p, t)
                }
                fn metrics(
                    p: &Host,
                    t: &Host,
                ) -> Result<Vec<$crate::wasm::bindings::amat::task::types::Metric>, String>
                {
                    $crate::wasm::metrics::<$task>(p, t)
                }
            }
    $crate::wasm::bindings::export_wasm!(AmatExport with_types_in $crate::wasm::bindings);
        };

        #[cfg(not(target_arch = "wasm32"))]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn amat_task_v1(
            host: *const $crate::abi::HostApi,
        ) -> *const $crate::abi::PluginApi {
            static API: $crate::abi::PluginApi = $crate::native::plugin_api::<$task>();
            // SAFETY: this function's caller (the host) keeps its table alive
            // for the process, which is `entry`'s contract.
            unsafe { $crate::native::entry(host, &API) }
        }
    };
}
