//! Wasm backend: tensor handles are the host's `tensor` resource of
//! `amat:task/tensors`. A failed host op traps the component; the host reports
//! its own reason.

use crate::types::{
    BinaryOp, DType, DecodeRequest, Example, File, Metric, ReduceOp, SampleScore, ScalarOp,
    TargetKind, TaskInfo, UnaryOp,
};
use crate::{Task, Tensor};
use std::mem::ManuallyDrop;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "task",
        pub_export_macro: true,
        export_macro_name: "export_wasm",
        default_bindings_module: "amat_plugin_sdk::wasm::bindings",
    });
}

use bindings::amat::task::tensors as host;
use bindings::amat::task::types as wit;

pub(crate) struct Raw {
    inner: ManuallyDrop<host::Tensor>,
    owned: bool,
}

impl Drop for Raw {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: an owned resource is dropped once, here; `into_owned`
            // clears `owned` before it takes the resource out.
            unsafe { ManuallyDrop::drop(&mut self.inner) }
        }
    }
}

fn own(t: host::Tensor) -> Raw {
    Raw {
        inner: ManuallyDrop::new(t),
        owned: true,
    }
}

// The WIT enums and ours list the same cases in the same order (a host test
// checks ours against the WIT), so the ABI index converts one to the other.
fn dtype_to_wit(d: DType) -> host::Dtype {
    // SAFETY: `d as u8` is a case index of the WIT enum (see above).
    unsafe { host::Dtype::_lift(d as u8) }
}

macro_rules! lift {
    ($($f:ident: $ours:ident => $wit:ident),*) => {$(
        fn $f(op: $ours) -> host::$wit {
            // SAFETY: `op as u8` is a case index of the WIT enum (see above).
            unsafe { host::$wit::_lift(op as u8) }
        }
    )*};
}

lift!(
    lift_unaryop: UnaryOp => UnaryOp,
    lift_binaryop: BinaryOp => BinaryOp,
    lift_scalarop: ScalarOp => ScalarOp,
    lift_reduceop: ReduceOp => ReduceOp
);

impl Raw {
    pub(crate) fn borrowed(t: &host::Tensor) -> Raw {
        Raw {
            // SAFETY: a second view of a live resource handle, never dropped
            // (`owned` is false), so the resource is released once, by its owner.
            inner: ManuallyDrop::new(unsafe { host::Tensor::from_handle(t.handle()) }),
            owned: false,
        }
    }
    pub(crate) fn from_f32(data: &[f32], shape: &[i64]) -> Raw {
        own(host::Tensor::from_f32(data, shape))
    }
    pub(crate) fn from_s64(data: &[i64], shape: &[i64]) -> Raw {
        own(host::Tensor::from_s64(data, shape))
    }
    pub(crate) fn full(value: f64, shape: &[i64]) -> Raw {
        own(host::Tensor::full(value, shape))
    }
    pub(crate) fn shape(&self) -> Vec<i64> {
        self.inner.shape()
    }
    pub(crate) fn dtype(&self) -> DType {
        DType::from_code(self.inner.dtype() as u32).expect("host dtype")
    }
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        self.inner.to_f32()
    }
    pub(crate) fn unary(&self, op: UnaryOp) -> Raw {
        own(self.inner.unary(lift_unaryop(op)))
    }
    pub(crate) fn binary(&self, op: BinaryOp, other: &Raw) -> Raw {
        own(self.inner.binary(lift_binaryop(op), &other.inner))
    }
    pub(crate) fn scalar(&self, op: ScalarOp, value: f64) -> Raw {
        own(self.inner.scalar(lift_scalarop(op), value))
    }
    pub(crate) fn reduce(&self, op: ReduceOp, dims: &[i64], keep: bool) -> Raw {
        own(self.inner.reduce(lift_reduceop(op), dims, keep))
    }
    pub(crate) fn argmax(&self, dim: i64, keep: bool) -> Raw {
        own(self.inner.argmax(dim, keep))
    }
    pub(crate) fn softmax(&self, dim: i64) -> Raw {
        own(self.inner.softmax(dim))
    }
    pub(crate) fn log_softmax(&self, dim: i64) -> Raw {
        own(self.inner.log_softmax(dim))
    }
    pub(crate) fn clamp(&self, min: f64, max: f64) -> Raw {
        own(self.inner.clamp(min, max))
    }
    pub(crate) fn reshape(&self, shape: &[i64]) -> Raw {
        own(self.inner.reshape(shape))
    }
    pub(crate) fn permute(&self, dims: &[i64]) -> Raw {
        own(self.inner.permute(dims))
    }
    pub(crate) fn narrow(&self, dim: i64, start: i64, length: i64) -> Raw {
        own(self.inner.narrow(dim, start, length))
    }
    pub(crate) fn one_hot(&self, classes: i64) -> Raw {
        own(self.inner.one_hot(classes))
    }
    pub(crate) fn gather(&self, dim: i64, index: &Raw) -> Raw {
        own(self.inner.gather(dim, &index.inner))
    }
    pub(crate) fn where_else(&self, cond: &Raw, other: &Raw) -> Raw {
        own(self.inner.where_else(&cond.inner, &other.inner))
    }
    pub(crate) fn to_dtype(&self, dtype: DType) -> Raw {
        own(self.inner.to_dtype(dtype_to_wit(dtype)))
    }
    /// An owned resource to hand back to the host: a borrowed input is copied
    /// (through an op, so it stays in the graph).
    fn into_owned(self) -> host::Tensor {
        let mut raw = if self.owned {
            self
        } else {
            self.scalar(ScalarOp::Add, 0.0)
        };
        raw.owned = false;
        // SAFETY: taken once; with `owned` cleared, `drop` leaves it alone.
        unsafe { ManuallyDrop::take(&mut raw.inner) }
    }
}

fn borrow_pair(pred: &host::Tensor, target: &host::Tensor) -> (Tensor, Tensor) {
    (Tensor(Raw::borrowed(pred)), Tensor(Raw::borrowed(target)))
}

#[doc(hidden)]
pub fn describe<T: Task>() -> wit::TaskInfo {
    let i: TaskInfo = T::describe();
    wit::TaskInfo {
        name: i.name,
        version: i.version,
        description: i.description,
        input_channels: i.input_channels,
        output_channels: i.output_channels,
        target_kind: match i.target_kind {
            TargetKind::ClassMap => wit::TargetKind::ClassMap,
            TargetKind::Heatmaps => wit::TargetKind::Heatmaps,
            TargetKind::DenseBoxes => wit::TargetKind::DenseBoxes,
            TargetKind::Labels => wit::TargetKind::Labels,
        },
        tau: i.tau,
        intensity_min: i.intensity_min,
        intensity_max: i.intensity_max,
        metric_names: i.metric_names,
        scores: i
            .scores
            .into_iter()
            .map(|s| wit::ScoreInfo {
                name: s.name,
                higher_is_better: s.higher_is_better,
                description: s.description,
            })
            .collect(),
    }
}

fn dense_to_wit(d: crate::types::Dense) -> wit::Dense {
    wit::Dense {
        shape: d.shape,
        data: d.data,
    }
}

#[doc(hidden)]
pub fn decode<T: Task>(request: wit::DecodeRequest) -> Result<Vec<wit::Example>, String> {
    let request = DecodeRequest {
        files: request
            .files
            .into_iter()
            .map(|f| File {
                name: f.name,
                bytes: f.bytes,
            })
            .collect(),
        options: request.options,
    };
    let examples: Vec<Example> = T::decode(&request)?;
    Ok(examples
        .into_iter()
        .map(|e| wit::Example {
            id: e.id,
            image: dense_to_wit(e.image),
            target: dense_to_wit(e.target),
        })
        .collect())
}

#[doc(hidden)]
pub fn loss<T: Task>(pred: &host::Tensor, target: &host::Tensor) -> Result<host::Tensor, String> {
    let (p, t) = borrow_pair(pred, target);
    Ok(T::loss(&p, &t)?.0.into_owned())
}

#[doc(hidden)]
pub fn scores<T: Task>(
    pred: &host::Tensor,
    target: &host::Tensor,
) -> Result<Vec<wit::SampleScore>, String> {
    let (p, t) = borrow_pair(pred, target);
    let s: Vec<SampleScore> = T::scores(&p, &t)?;
    Ok(s.into_iter()
        .map(|s| wit::SampleScore {
            name: s.name,
            values: s.values,
        })
        .collect())
}

#[doc(hidden)]
pub fn metrics<T: Task>(
    pred: &host::Tensor,
    target: &host::Tensor,
) -> Result<Vec<wit::Metric>, String> {
    let (p, t) = borrow_pair(pred, target);
    let m: Vec<Metric> = T::metrics(&p, &t)?;
    Ok(m.into_iter()
        .map(|m| wit::Metric {
            name: m.name,
            value: m.value,
        })
        .collect())
}
