//! The host's `tensor` resource: what a wasm plugin's tensor methods do.
//! A resource's rep is a handle of the store's [`TensorTable`]; every method
//! is one op of the table, the same ops the native ABI's trampolines apply.

use super::TensorRep;
use super::contract::{v0_1, v0_2};
use super::errors::HostOpFailure;
use super::policy::State;
use crate::tensor::{HoldsTable, Op, TensorTable, dtype_of};
use amat_plugin_sdk::types::{BinaryOp, DType, ReduceOp, ScalarOp, UnaryOp};
use anyhow::Result;
use wasmtime::Store;
use wasmtime::component::Resource;

impl HoldsTable for Store<State> {
    fn tensor_table(&mut self) -> &mut TensorTable {
        &mut self.data_mut().table
    }
}

fn op_err(e: anyhow::Error) -> wasmtime::Error {
    wasmtime::Error::new(HostOpFailure::new(e))
}

fn own(h: Result<u32>) -> wasmtime::Result<Resource<TensorRep>> {
    h.map(Resource::new_own).map_err(op_err)
}

impl State {
    fn apply(&mut self, t: &Resource<TensorRep>, op: Op) -> wasmtime::Result<Resource<TensorRep>> {
        own(self.table.apply(t.rep(), op))
    }
}

/// The WIT enums and the SDK's list the same cases in the same order.
fn same_case<T>(code: u32, from: fn(u32) -> Option<T>) -> wasmtime::Result<T> {
    from(code).ok_or_else(|| wasmtime::Error::msg(format!("op code {code} unknown to the host")))
}

/// Implements the `tensor` resource of one contract version on [`State`].
macro_rules! tensor_resource {
    ($v:ident) => {
        impl $v::amat::task::tensors::Host for State {}
        impl $v::amat::task::types::Host for State {}

        impl $v::amat::task::tensors::HostTensor for State {
            fn from_f32(
                &mut self,
                data: Vec<f32>,
                shape: Vec<i64>,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                own(self.table.from_f32(&data, &shape, self.device))
            }
            fn from_s64(
                &mut self,
                data: Vec<i64>,
                shape: Vec<i64>,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                own(self.table.from_s64(&data, &shape, self.device))
            }
            fn full(
                &mut self,
                value: f64,
                shape: Vec<i64>,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                own(self.table.full(value, &shape, self.device))
            }
            fn shape(&mut self, t: Resource<TensorRep>) -> wasmtime::Result<Vec<i64>> {
                self.table.get(t.rep()).map(|t| t.size()).map_err(op_err)
            }
            fn dtype(
                &mut self,
                t: Resource<TensorRep>,
            ) -> wasmtime::Result<$v::amat::task::tensors::Dtype> {
                use $v::amat::task::tensors::Dtype as D;
                let d = self
                    .table
                    .get(t.rep())
                    .map(|t| dtype_of(t.kind()))
                    .map_err(op_err)?;
                Ok(match d {
                    DType::Float => D::Float,
                    DType::Long => D::Long,
                    DType::Boolean => D::Boolean,
                })
            }
            fn to_f32(&mut self, t: Resource<TensorRep>) -> wasmtime::Result<Vec<f32>> {
                self.table.to_f32(t.rep()).map_err(op_err)
            }
            fn unary(
                &mut self,
                t: Resource<TensorRep>,
                op: $v::amat::task::tensors::UnaryOp,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                self.apply(&t, Op::Unary(same_case(op as u32, UnaryOp::from_code)?))
            }
            fn binary(
                &mut self,
                t: Resource<TensorRep>,
                op: $v::amat::task::tensors::BinaryOp,
                other: Resource<TensorRep>,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                let op = same_case(op as u32, BinaryOp::from_code)?;
                self.apply(&t, Op::Binary(op, other.rep()))
            }
            fn scalar(
                &mut self,
                t: Resource<TensorRep>,
                op: $v::amat::task::tensors::ScalarOp,
                value: f64,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                let op = same_case(op as u32, ScalarOp::from_code)?;
                self.apply(&t, Op::Scalar(op, value))
            }
            fn reduce(
                &mut self,
                t: Resource<TensorRep>,
                op: $v::amat::task::tensors::ReduceOp,
                dims: Vec<i64>,
                keep: bool,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                let op = same_case(op as u32, ReduceOp::from_code)?;
                self.apply(&t, Op::Reduce(op, &dims, keep))
            }
            fn argmax(
                &mut self,
                t: Resource<TensorRep>,
                dim: i64,
                keep: bool,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                self.apply(&t, Op::Argmax(dim, keep))
            }
            fn softmax(
                &mut self,
                t: Resource<TensorRep>,
                dim: i64,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                self.apply(&t, Op::Softmax(dim))
            }
            fn log_softmax(
                &mut self,
                t: Resource<TensorRep>,
                dim: i64,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                self.apply(&t, Op::LogSoftmax(dim))
            }
            fn clamp(
                &mut self,
                t: Resource<TensorRep>,
                min: f64,
                max: f64,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                self.apply(&t, Op::Clamp(min, max))
            }
            fn reshape(
                &mut self,
                t: Resource<TensorRep>,
                shape: Vec<i64>,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                self.apply(&t, Op::Reshape(&shape))
            }
            fn permute(
                &mut self,
                t: Resource<TensorRep>,
                dims: Vec<i64>,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                self.apply(&t, Op::Permute(&dims))
            }
            fn narrow(
                &mut self,
                t: Resource<TensorRep>,
                dim: i64,
                start: i64,
                length: i64,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                self.apply(&t, Op::Narrow(dim, start, length))
            }
            fn one_hot(
                &mut self,
                t: Resource<TensorRep>,
                classes: i64,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                self.apply(&t, Op::OneHot(classes))
            }
            fn gather(
                &mut self,
                t: Resource<TensorRep>,
                dim: i64,
                index: Resource<TensorRep>,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                self.apply(&t, Op::Gather(dim, index.rep()))
            }
            fn where_else(
                &mut self,
                t: Resource<TensorRep>,
                cond: Resource<TensorRep>,
                other: Resource<TensorRep>,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                self.apply(&t, Op::WhereElse(cond.rep(), other.rep()))
            }
            fn to_dtype(
                &mut self,
                t: Resource<TensorRep>,
                d: $v::amat::task::tensors::Dtype,
            ) -> wasmtime::Result<Resource<TensorRep>> {
                self.apply(&t, Op::ToDtype(same_case(d as u32, DType::from_code)?))
            }
            fn drop(&mut self, t: Resource<TensorRep>) -> wasmtime::Result<()> {
                self.table.remove(t.rep());
                Ok(())
            }
        }
    };
}

tensor_resource!(v0_1);
tensor_resource!(v0_2);
