//! The contract versions a wasm plugin may be built for, after Zed's
//! extension host: one set of generated bindings per version, the host's
//! `tensor` resource implemented once for all of them (`resource.rs`), and an [`Instance`]
//! that answers every call in the newest version's terms.
//!
//! - `amat:task@0.2.0` (`wit/task.wit`): the current contract.
//! - `amat:task@0.1.0` (`wit/since_v0.1.0/task.wit`): no `scores` (it has
//!   `correct`, a predicate with its threshold compiled in) and four fewer
//!   unary ops; its enums are a prefix of 0.2.0's, so op codes agree.

use super::TensorRep;
use super::policy::State;
use crate::plugin::{CallError, DecodeRequest, Example, Metric, SampleScore, TargetKind, TaskInfo};
use amat_plugin_sdk::types::Dense;
use wasmtime::Store;
use wasmtime::component::Resource;

pub(super) mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.0",
        world: "task",
        imports: { default: trappable },
        with: { "amat:task/tensors.tensor": crate::plugin::wasm::TensorRep },
    });
}

pub(super) mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "task",
        imports: { default: trappable },
        with: { "amat:task/tensors.tensor": crate::plugin::wasm::TensorRep },
    });
}

/// The version this host speaks, and every version it loads, newest first.
pub const CURRENT: &str = "0.2.0";
pub const LOADED: &[&str] = &["0.2.0", "0.1.0"];

/// The exports each version's world requires.
pub(super) fn exports(version: &str) -> &'static [&'static str] {
    match version {
        "0.1.0" => &["describe", "decode", "loss", "correct", "metrics"],
        _ => &["describe", "decode", "loss", "scores", "metrics"],
    }
}

/// Adds every loaded version's host interfaces to `linker`.
pub(super) fn add_to_linker(linker: &mut wasmtime::component::Linker<State>) -> anyhow::Result<()> {
    use wasmtime::component::HasSelf;
    v0_1::Task::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    v0_2::Task::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    Ok(())
}

/// A component linked for its contract version.
pub(super) enum Pre {
    V1(v0_1::TaskPre<State>),
    V2(v0_2::TaskPre<State>),
}

/// A live instance of a component of either version.
pub(super) enum Instance {
    V1(v0_1::Task),
    V2(v0_2::Task),
}

impl Pre {
    pub(super) fn new(
        version: &str,
        pre: wasmtime::component::InstancePre<State>,
    ) -> anyhow::Result<Self> {
        Ok(match version {
            "0.1.0" => Pre::V1(v0_1::TaskPre::new(pre)?),
            _ => Pre::V2(v0_2::TaskPre::new(pre)?),
        })
    }

    pub(super) fn engine(&self) -> &wasmtime::Engine {
        match self {
            Pre::V1(p) => p.engine(),
            Pre::V2(p) => p.engine(),
        }
    }

    pub(super) fn instantiate(&self, store: &mut Store<State>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Pre::V1(p) => Instance::V1(p.instantiate(store)?),
            Pre::V2(p) => Instance::V2(p.instantiate(store)?),
        })
    }
}

/// A version's `task-info` in the host's terms, without scores.
macro_rules! info {
    ($v:ident, $i:expr) => {{
        use $v::amat::task::types::TargetKind as K;
        let i = $i;
        TaskInfo {
            name: i.name,
            version: i.version,
            description: i.description,
            input_channels: i.input_channels,
            output_channels: i.output_channels,
            target_kind: match i.target_kind {
                K::ClassMap => TargetKind::ClassMap,
                K::Heatmaps => TargetKind::Heatmaps,
                K::DenseBoxes => TargetKind::DenseBoxes,
                K::Labels => TargetKind::Labels,
            },
            tau: i.tau,
            intensity_min: i.intensity_min,
            intensity_max: i.intensity_max,
            metric_names: i.metric_names,
            scores: Vec::new(),
        }
    }};
}

/// Runs `$body` with `$task` bound to the instance's bindings and `w` to
/// its version's `types` module.
macro_rules! each_version {
    ($inst:expr, $task:ident => $body:expr) => {
        match $inst {
            Instance::V1($task) => {
                #[allow(unused_imports)]
                use v0_1::amat::task::types as w;
                $body
            }
            Instance::V2($task) => {
                #[allow(unused_imports)]
                use v0_2::amat::task::types as w;
                $body
            }
        }
    };
}

/// A plugin's `Err(message)` as a call error.
fn plugin_err<T>(r: Result<T, String>) -> Result<T, CallError> {
    r.map_err(CallError::Plugin)
}

type Call<T> = wasmtime::Result<Result<T, CallError>>;

impl Instance {
    pub(super) fn describe(&self, store: &mut Store<State>) -> wasmtime::Result<TaskInfo> {
        Ok(match self {
            Instance::V1(task) => info!(v0_1, task.call_describe(store)?),
            Instance::V2(task) => {
                let i = task.call_describe(store)?;
                let scores = i
                    .scores
                    .iter()
                    .map(|s| {
                        amat_plugin_sdk::types::ScoreInfo::new(
                            &s.name,
                            s.higher_is_better,
                            &s.description,
                        )
                    })
                    .collect();
                TaskInfo {
                    scores,
                    ..info!(v0_2, i)
                }
            }
        })
    }

    pub(super) fn decode(
        &self,
        store: &mut Store<State>,
        request: &DecodeRequest,
    ) -> Call<Vec<Example>> {
        each_version!(self, task => {
            let req = w::DecodeRequest {
                files: request
                    .files
                    .iter()
                    .map(|f| w::File { name: f.name.clone(), bytes: f.bytes.clone() })
                    .collect(),
                options: request.options.clone(),
            };
            Ok(plugin_err(task.call_decode(store, &req)?).and_then(|out| {
                out.into_iter()
                    .map(|e| {
                        Ok(Example {
                            id: e.id,
                            image: dense(e.image.shape, e.image.data)?,
                            target: dense(e.target.shape, e.target.data)?,
                        })
                    })
                    .collect()
            }))
        })
    }

    pub(super) fn loss(
        &self,
        store: &mut Store<State>,
        p: u32,
        t: u32,
    ) -> Call<Resource<TensorRep>> {
        let (p, t) = (Resource::new_borrow(p), Resource::new_borrow(t));
        each_version!(self, task => Ok(plugin_err(task.call_loss(store, p, t)?)))
    }

    /// 0.1.0's predicate; none from a 0.2.0 plugin, which judges by scores.
    pub(super) fn correct(
        &self,
        store: &mut Store<State>,
        p: u32,
        t: u32,
    ) -> Call<Option<Resource<TensorRep>>> {
        let (p, t) = (Resource::new_borrow(p), Resource::new_borrow(t));
        match self {
            Instance::V1(task) => Ok(plugin_err(task.call_correct(store, p, t)?)),
            Instance::V2(_) => Ok(Ok(None)),
        }
    }

    /// 0.2.0's per-sample scores; none from a 0.1.0 plugin.
    pub(super) fn scores(
        &self,
        store: &mut Store<State>,
        p: u32,
        t: u32,
    ) -> Call<Vec<SampleScore>> {
        let (p, t) = (Resource::new_borrow(p), Resource::new_borrow(t));
        match self {
            Instance::V1(_) => Ok(Ok(Vec::new())),
            Instance::V2(task) => Ok(plugin_err(task.call_scores(store, p, t)?).map(|s| {
                s.into_iter()
                    .map(|s| SampleScore {
                        name: s.name,
                        values: s.values,
                    })
                    .collect()
            })),
        }
    }

    pub(super) fn metrics(&self, store: &mut Store<State>, p: u32, t: u32) -> Call<Vec<Metric>> {
        let (p, t) = (Resource::new_borrow(p), Resource::new_borrow(t));
        each_version!(self, task => Ok(plugin_err(task.call_metrics(store, p, t)?).map(|m| {
            m.into_iter()
                .map(|m| Metric { name: m.name, value: m.value })
                .collect()
        })))
    }
}

fn dense(shape: Vec<i64>, data: Vec<f32>) -> Result<Dense, CallError> {
    Dense::new(shape, data).map_err(CallError::BadResult)
}
