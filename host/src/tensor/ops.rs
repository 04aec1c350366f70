//! The ops of the WIT `tensor` resource, applied to the table. Both plugin
//! kinds (wasm and native) reach the host through [`TensorTable::apply`] and
//! the constructors here, so they cannot differ in behaviour.

use super::{BudgetExceeded, TensorTable};
use amat_plugin_sdk::types::{BinaryOp, DType, ReduceOp, ScalarOp, UnaryOp};
use anyhow::{Context, Result, anyhow, bail};
use tch::{Device, Kind, Tensor};

/// One op on the tensor at a handle; tensor operands are handles too.
#[derive(Clone, Copy, Debug)]
pub enum Op<'a> {
    Unary(UnaryOp),
    Binary(BinaryOp, u32),
    Scalar(ScalarOp, f64),
    Reduce(ReduceOp, &'a [i64], bool),
    Argmax(i64, bool),
    Softmax(i64),
    LogSoftmax(i64),
    Clamp(f64, f64),
    Reshape(&'a [i64]),
    Permute(&'a [i64]),
    Narrow(i64, i64, i64),
    OneHot(i64),
    Gather(i64, u32),
    WhereElse(u32, u32),
    ToDtype(DType),
}

impl Op<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Unary(op) => op.wit_name(),
            Op::Binary(op, _) => op.wit_name(),
            Op::Scalar(op, _) => op.wit_name(),
            Op::Reduce(op, ..) => op.wit_name(),
            Op::Argmax(..) => "argmax",
            Op::Softmax(_) => "softmax",
            Op::LogSoftmax(_) => "log-softmax",
            Op::Clamp(..) => "clamp",
            Op::Reshape(_) => "reshape",
            Op::Permute(_) => "permute",
            Op::Narrow(..) => "narrow",
            Op::OneHot(_) => "one-hot",
            Op::Gather(..) => "gather",
            Op::WhereElse(..) => "where-else",
            Op::ToDtype(_) => "to-dtype",
        }
    }
}

pub fn kind_of(d: DType) -> Kind {
    match d {
        DType::Float => Kind::Float,
        DType::Long => Kind::Int64,
        DType::Boolean => Kind::Bool,
    }
}

pub fn dtype_of(k: Kind) -> DType {
    match k {
        Kind::Bool => DType::Boolean,
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 => DType::Long,
        _ => DType::Float,
    }
}

fn numel(shape: &[i64]) -> Result<u64> {
    shape.iter().try_fold(1u64, |acc, &d| {
        if d < 0 {
            bail!("negative dimension in shape {shape:?}");
        }
        acc.checked_mul(d as u64)
            .ok_or_else(|| anyhow!("shape {shape:?} overflows"))
    })
}

fn broadcast(a: &[i64], b: &[i64]) -> Result<Vec<i64>> {
    let n = a.len().max(b.len());
    let at = |s: &[i64], i: usize| {
        if i + s.len() >= n {
            s[i + s.len() - n]
        } else {
            1
        }
    };
    (0..n)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            _ => bail!("shapes {a:?} and {b:?} do not broadcast"),
        })
        .collect()
}

/// Elements the op will allocate, computed from shapes alone so the budget
/// can refuse it before anything is allocated. Every size is the plugin's
/// explicit one: a one-hot's classes are never inferred from the data (with
/// -1 libtorch sizes the result from the largest index, unbounded).
fn predicted_elements(table: &TensorTable, t: &Tensor, op: &Op) -> Result<u64> {
    let own = numel(&t.size())?;
    let dims = |what: &str, len: usize| table.check_dims(what, len);
    Ok(match *op {
        Op::Binary(_, o) => numel(&broadcast(&t.size(), &table.get(o)?.size())?)?,
        Op::WhereElse(c, o) => {
            let s = broadcast(&t.size(), &table.get(c)?.size())?;
            numel(&broadcast(&s, &table.get(o)?.size())?)?
        }
        Op::OneHot(classes) => {
            if classes < 1 {
                return Err(BudgetExceeded::OneHotClasses { classes }.into());
            }
            dims("the result", t.dim() + 1)?;
            own.checked_mul(classes as u64)
                .ok_or_else(|| anyhow!("one-hot overflows"))?
        }
        Op::Gather(_, i) => numel(&table.get(i)?.size())?,
        Op::Reshape(shape) => {
            dims("the shape", shape.len())?;
            if let Some(d) = shape.iter().find(|&&d| d < -1) {
                bail!("negative size {d} in shape {shape:?}");
            }
            own
        }
        Op::Permute(order) => {
            dims("the permutation", order.len())?;
            own
        }
        Op::Reduce(_, list, _) => {
            dims("the dims list", list.len())?;
            own
        }
        _ => own,
    })
}

/// All dims when `dims` is empty.
fn dims_or_all(t: &Tensor, dims: &[i64]) -> Vec<i64> {
    if dims.is_empty() {
        (0..t.dim() as i64).collect()
    } else {
        dims.to_vec()
    }
}

fn run(table: &TensorTable, t: &Tensor, op: Op) -> Result<Tensor> {
    use BinaryOp as B;
    use ScalarOp as S;
    use UnaryOp as U;
    let r = match op {
        Op::Unary(u) => match u {
            U::Neg => t.f_neg(),
            U::Exp => t.f_exp(),
            U::Log => t.f_log(),
            U::Sqrt => t.f_sqrt(),
            U::Abs => t.f_abs(),
            U::Sigmoid => t.f_sigmoid(),
            U::Tanh => t.f_tanh(),
            U::Relu => t.f_relu(),
            U::Sign => t.f_sign(),
            U::Floor => t.f_floor(),
            U::Ceil => t.f_ceil(),
            U::Round => t.f_round(),
            U::Square => t.f_square(),
            U::Reciprocal => t.f_reciprocal(),
            U::LogicalNot => t.f_logical_not(),
            U::Isnan => t.f_isnan(),
            U::Isfinite => t.f_isfinite(),
            U::Detach => Ok(t.detach()),
            U::Softplus => t.f_softplus(),
            U::LogSigmoid => t.f_log_sigmoid(),
            U::Log1p => t.f_log1p(),
            U::Expm1 => t.f_expm1(),
        },
        Op::Binary(b, o) => {
            let o = table.get(o)?;
            match b {
                B::Add => t.f_add(o),
                B::Sub => t.f_sub(o),
                B::Mul => t.f_mul(o),
                B::Div => t.f_div(o),
                B::Pow => t.f_pow(o),
                B::Maximum => t.f_maximum(o),
                B::Minimum => t.f_minimum(o),
                B::Eq => t.f_eq_tensor(o),
                B::Ne => t.f_ne_tensor(o),
                B::Lt => t.f_lt_tensor(o),
                B::Le => t.f_le_tensor(o),
                B::Gt => t.f_gt_tensor(o),
                B::Ge => t.f_ge_tensor(o),
                B::LogicalAnd => t.f_logical_and(o),
                B::LogicalOr => t.f_logical_or(o),
            }
        }
        Op::Scalar(s, v) => match s {
            S::Add => t.f_add_scalar(v),
            S::Sub => t.f_sub_scalar(v),
            S::Mul => t.f_mul_scalar(v),
            S::Div => t.f_div_scalar(v),
            S::Pow => t.f_pow_tensor_scalar(v),
            S::Rsub => t.f_rsub_scalar(v),
            S::Rdiv => t.f_reciprocal().and_then(|r| r.f_mul_scalar(v)),
            S::Eq => t.f_eq(v),
            S::Ne => t.f_ne(v),
            S::Lt => t.f_lt(v),
            S::Le => t.f_le(v),
            S::Gt => t.f_gt(v),
            S::Ge => t.f_ge(v),
        },
        Op::Reduce(r, dims, keep) => {
            let dims = dims_or_all(t, dims);
            match r {
                ReduceOp::Sum => t.f_sum_dim_intlist(dims.as_slice(), keep, None::<Kind>),
                ReduceOp::Mean => t.f_mean_dim(dims.as_slice(), keep, None::<Kind>),
                ReduceOp::Amax => t.f_amax(dims.as_slice(), keep),
                ReduceOp::Amin => t.f_amin(dims.as_slice(), keep),
                ReduceOp::Prod => {
                    let mut sorted: Vec<i64> = dims
                        .iter()
                        .map(|&d| if d < 0 { d + t.dim() as i64 } else { d })
                        .collect();
                    sorted.sort_unstable_by(|a, b| b.cmp(a));
                    sorted.iter().try_fold(t.shallow_clone(), |acc, &d| {
                        acc.f_prod_dim_int(d, keep, None::<Kind>)
                    })
                }
            }
        }
        Op::Argmax(dim, keep) => t.f_argmax(dim, keep),
        Op::Softmax(dim) => t.f_softmax(dim, None::<Kind>),
        Op::LogSoftmax(dim) => t.f_log_softmax(dim, None::<Kind>),
        Op::Clamp(lo, hi) => {
            if lo > hi {
                bail!("clamp: min {lo} is above max {hi}");
            }
            t.f_clamp(lo, hi)
        }
        Op::Reshape(shape) => t.f_reshape(shape),
        Op::Permute(dims) => t.f_permute(dims),
        Op::Narrow(dim, start, len) => t.f_narrow(dim, start, len),
        Op::OneHot(classes) => {
            if t.kind() != Kind::Int64 {
                bail!("one-hot needs a long tensor, got {:?}", dtype_of(t.kind()));
            }
            t.f_one_hot(classes).and_then(|o| o.f_to_kind(Kind::Float))
        }
        Op::Gather(dim, i) => t.f_gather(dim, table.get(i)?, false),
        Op::WhereElse(c, o) => {
            let cond = table.get(c)?;
            if cond.kind() != Kind::Bool {
                bail!("where-else: the condition must be a boolean mask");
            }
            t.f_where_self(cond, table.get(o)?)
        }
        Op::ToDtype(d) => t.f_to_kind(kind_of(d)),
    };
    Ok(r?)
}

impl TensorTable {
    /// Applies `op` to the tensor at `h`, checking the budget first; returns
    /// the new handle.
    pub fn apply(&mut self, h: u32, op: Op) -> Result<u32> {
        let t = self.get(h).with_context(|| op.name().to_string())?;
        let shape = t.size();
        let elements = predicted_elements(self, t, &op).with_context(|| op.name().to_string())?;
        self.reserve(elements)
            .with_context(|| op.name().to_string())?;
        let out =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(self, self.get(h)?, op)))
                .map_err(|_| anyhow!("libtorch panicked"))
                .and_then(|r| r)
                .with_context(|| format!("{} on a tensor of shape {shape:?}", op.name()))?;
        Ok(self.insert(out))
    }

    /// A float tensor from plugin data, on the call's device.
    pub fn from_f32(&mut self, data: &[f32], shape: &[i64], device: Device) -> Result<u32> {
        self.insert_slice("from-f32", data, shape, device)
    }

    /// A long tensor from plugin data, on the call's device.
    pub fn from_s64(&mut self, data: &[i64], shape: &[i64], device: Device) -> Result<u32> {
        self.insert_slice("from-s64", data, shape, device)
    }

    fn insert_slice<T: tch::kind::Element>(
        &mut self,
        op: &str,
        data: &[T],
        shape: &[i64],
        device: Device,
    ) -> Result<u32> {
        self.check_dims(op, shape.len())?;
        let n = numel(shape)?;
        if n != data.len() as u64 {
            bail!("{op}: {} values do not fill shape {shape:?}", data.len());
        }
        self.reserve(n)?;
        let t = Tensor::f_from_slice(data)?
            .f_reshape(shape)?
            .f_to_device(device)?;
        Ok(self.insert(t))
    }

    pub fn full(&mut self, value: f64, shape: &[i64], device: Device) -> Result<u32> {
        self.check_dims("full", shape.len())?;
        self.reserve(numel(shape)?).context("full")?;
        let t = Tensor::f_full(shape, value, (Kind::Float, device))?;
        Ok(self.insert(t))
    }

    /// Row-major values as f32 (detached, copied to the CPU).
    pub fn to_f32(&self, h: u32) -> Result<Vec<f32>> {
        let t = self
            .get(h)?
            .detach()
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?
            .f_contiguous()?;
        let mut out = vec![0f32; t.numel()];
        t.f_copy_data(&mut out, t.numel())?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorBudget;

    #[test]
    fn broadcast_follows_numpy_rules() {
        assert_eq!(broadcast(&[4, 1, 3], &[5, 1]).unwrap(), vec![4, 5, 3]);
        assert!(broadcast(&[2, 3], &[4, 3]).is_err());
    }

    #[test]
    fn one_hot_bomb_is_refused_before_allocation() {
        let mut table = TensorTable::new(TensorBudget {
            max_live: 100,
            max_elements_per_call: 1_000_000,
            ..TensorBudget::default()
        });
        let h = table.from_s64(&[0, 1, 2, 3], &[4], Device::Cpu).unwrap();
        let err = table.apply(h, Op::OneHot(1 << 40)).unwrap_err();
        assert!(format!("{err:#}").contains("tensor budget"), "{err:#}");
        assert_eq!(table.live(), 1);
    }

    #[test]
    fn handles_never_dropped_count_across_calls() {
        let mut table = TensorTable::new(TensorBudget {
            max_live: 3,
            max_elements_per_call: 1000,
            ..TensorBudget::default()
        });
        let mut first = None;
        for _ in 0..3 {
            first.get_or_insert(table.full(1.0, &[2], Device::Cpu).unwrap());
            table.end_call();
        }
        let err = table.full(1.0, &[2], Device::Cpu).unwrap_err();
        assert!(format!("{err:#}").contains("never dropped"), "{err:#}");
        // Dropping a stale handle gives its entry back.
        table.remove(first.unwrap());
        table.full(1.0, &[2], Device::Cpu).unwrap();
    }

    #[test]
    fn stale_handles_are_refused() {
        let mut table = TensorTable::new(TensorBudget::default());
        let h = table.full(1.0, &[2], Device::Cpu).unwrap();
        table.end_call();
        let err = table.apply(h, Op::Unary(UnaryOp::Exp)).unwrap_err();
        assert!(format!("{err:#}").contains("stale"), "{err:#}");
    }

    #[test]
    fn one_hot_never_infers_its_classes_from_the_data() {
        let mut table = TensorTable::new(TensorBudget::default());
        // With -1 libtorch would size the result from this index: 2^40 columns.
        let h = table.from_s64(&[0, 1 << 40], &[2], Device::Cpu).unwrap();
        for classes in [-1, 0, -5] {
            let err = table.apply(h, Op::OneHot(classes)).unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains("tensor budget"), "{text}");
            assert!(text.contains("number of classes"), "{text}");
        }
        assert_eq!(table.live(), 1);
        let small = table.from_s64(&[0, 2], &[2], Device::Cpu).unwrap();
        let one_hot = table.apply(small, Op::OneHot(3)).unwrap();
        assert_eq!(table.get(one_hot).unwrap().size(), [2, 3]);
    }

    #[test]
    fn shapes_with_too_many_dims_are_refused() {
        let mut table = TensorTable::new(TensorBudget::default());
        // One element, but 8M sizes and strides copied at every op.
        let err = table
            .full(0.0, &vec![1; 8_000_000], Device::Cpu)
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("over the limit of 16"),
            "{err:#}"
        );
        let h = table.full(0.0, &[1; 16], Device::Cpu).unwrap();
        for op in [
            Op::Reshape(&[1; 17]),
            Op::Permute(&[0; 40]),
            Op::Reduce(ReduceOp::Sum, &[0; 100], false),
        ] {
            let err = table.apply(h, op).unwrap_err();
            assert!(format!("{err:#}").contains("tensor budget"), "{err:#}");
        }
        // A one-hot adds a dimension: refused at the 17th.
        let long = table.apply(h, Op::ToDtype(DType::Long)).unwrap();
        let err = table.apply(long, Op::OneHot(1)).unwrap_err();
        assert!(format!("{err:#}").contains("17 dimensions"), "{err:#}");
        let err = table.apply(h, Op::Reshape(&[-2, 1])).unwrap_err();
        assert!(format!("{err:#}").contains("negative size"), "{err:#}");
    }

    #[test]
    fn ops_on_an_empty_view_are_counted() {
        let mut table = TensorTable::new(TensorBudget {
            max_ops_per_call: 1000,
            ..TensorBudget::default()
        });
        let h = table.full(1.0, &[0], Device::Cpu).unwrap();
        let mut last = h;
        let err = (0..2000)
            .find_map(|_| match table.apply(last, Op::Unary(UnaryOp::Exp)) {
                Ok(next) => {
                    last = next;
                    None
                }
                Err(e) => Some(e),
            })
            .expect("a thousand ops on zero elements were never refused");
        assert!(format!("{err:#}").contains("more than 1000 ops"), "{err:#}");
        table.end_call();
        assert_eq!(table.last_call().ops, 1000);
        assert_eq!(table.last_call().elements, 0);
    }

    #[test]
    fn the_handle_counter_wraps_instead_of_panicking() {
        let mut table = TensorTable::new(TensorBudget::default());
        table.set_next_handle(u32::MAX - 1);
        let kept = table.full(1.0, &[1], Device::Cpu).unwrap();
        assert_eq!(kept, u32::MAX - 1);
        let handles: Vec<u32> = (0..4)
            .map(|_| table.full(1.0, &[1], Device::Cpu).unwrap())
            .collect();
        // 0 is never a handle (the native ABI's "none").
        assert_eq!(handles, [u32::MAX, 1, 2, 3]);
        table.end_call();
        table.set_next_handle(u32::MAX);
        let a = table.full(1.0, &[1], Device::Cpu).unwrap();
        // A handle still in the table is skipped at the wrap.
        table.set_next_handle(a);
        let b = table.full(1.0, &[1], Device::Cpu).unwrap();
        assert_ne!(a, b);
    }
}
