//! `Tensor`: a handle to a tensor that lives in the host. Every method is a
//! host op, recorded in the host's autograd graph.

use crate::backend::Raw;
use crate::types::{BinaryOp, DType, ReduceOp, ScalarOp, UnaryOp};
use std::ops::{Add, Div, Mul, Neg, Sub};

pub struct Tensor(pub(crate) Raw);

impl Tensor {
    pub fn from_f32(data: &[f32], shape: &[i64]) -> Tensor {
        Tensor(Raw::from_f32(data, shape))
    }
    pub fn from_i64(data: &[i64], shape: &[i64]) -> Tensor {
        Tensor(Raw::from_s64(data, shape))
    }
    pub fn full(value: f64, shape: &[i64]) -> Tensor {
        Tensor(Raw::full(value, shape))
    }
    pub fn shape(&self) -> Vec<i64> {
        self.0.shape()
    }
    /// Size of one dim; negative dims count from the end.
    pub fn size(&self, dim: i64) -> i64 {
        let s = self.shape();
        let d = if dim < 0 { dim + s.len() as i64 } else { dim };
        s[d as usize]
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype()
    }
    /// Row-major copy of the values (detached from the graph).
    pub fn to_vec(&self) -> Vec<f32> {
        self.0.to_f32()
    }

    pub fn unary(&self, op: UnaryOp) -> Tensor {
        Tensor(self.0.unary(op))
    }
    pub fn binary(&self, op: BinaryOp, other: &Tensor) -> Tensor {
        Tensor(self.0.binary(op, &other.0))
    }
    pub fn scalar(&self, op: ScalarOp, value: f64) -> Tensor {
        Tensor(self.0.scalar(op, value))
    }
    pub fn reduce(&self, op: ReduceOp, dims: &[i64], keep_dim: bool) -> Tensor {
        Tensor(self.0.reduce(op, dims, keep_dim))
    }

    /// The value of a one-element tensor.
    pub fn item(&self) -> Result<f64, String> {
        match self.to_vec()[..] {
            [v] => Ok(v as f64),
            ref all => Err(format!(
                "item() of a tensor of {} elements (shape {:?})",
                all.len(),
                self.shape()
            )),
        }
    }

    pub fn exp(&self) -> Tensor {
        self.unary(UnaryOp::Exp)
    }
    /// log(1 + exp(t)), stable for large |t| (contract 0.2.0).
    pub fn softplus(&self) -> Tensor {
        self.unary(UnaryOp::Softplus)
    }
    /// log(sigmoid(t)), stable for large |t| (contract 0.2.0).
    pub fn log_sigmoid(&self) -> Tensor {
        self.unary(UnaryOp::LogSigmoid)
    }
    /// log(1 + t), accurate near 0 (contract 0.2.0).
    pub fn log1p(&self) -> Tensor {
        self.unary(UnaryOp::Log1p)
    }
    /// exp(t) - 1, accurate near 0 (contract 0.2.0).
    pub fn expm1(&self) -> Tensor {
        self.unary(UnaryOp::Expm1)
    }
    pub fn log(&self) -> Tensor {
        self.unary(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Tensor {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn abs(&self) -> Tensor {
        self.unary(UnaryOp::Abs)
    }
    pub fn sigmoid(&self) -> Tensor {
        self.unary(UnaryOp::Sigmoid)
    }
    pub fn tanh(&self) -> Tensor {
        self.unary(UnaryOp::Tanh)
    }
    pub fn relu(&self) -> Tensor {
        self.unary(UnaryOp::Relu)
    }
    pub fn square(&self) -> Tensor {
        self.unary(UnaryOp::Square)
    }
    pub fn detach(&self) -> Tensor {
        self.unary(UnaryOp::Detach)
    }
    pub fn isfinite(&self) -> Tensor {
        self.unary(UnaryOp::Isfinite)
    }
    /// Boolean mask of the NaN elements.
    pub fn isnan(&self) -> Tensor {
        self.unary(UnaryOp::Isnan)
    }
    /// -1, 0 or 1 per element; zero gradient (never in a loss).
    pub fn sign(&self) -> Tensor {
        self.unary(UnaryOp::Sign)
    }
    /// Zero gradient (never in a loss).
    pub fn floor(&self) -> Tensor {
        self.unary(UnaryOp::Floor)
    }
    /// Zero gradient (never in a loss).
    pub fn ceil(&self) -> Tensor {
        self.unary(UnaryOp::Ceil)
    }
    /// Half to even; zero gradient (never in a loss).
    pub fn round(&self) -> Tensor {
        self.unary(UnaryOp::Round)
    }
    /// 1 / t.
    pub fn reciprocal(&self) -> Tensor {
        self.unary(UnaryOp::Reciprocal)
    }
    /// Boolean `!t` (non-zero counts as true).
    pub fn logical_not(&self) -> Tensor {
        self.unary(UnaryOp::LogicalNot)
    }

    pub fn pow(&self, exponent: f64) -> Tensor {
        self.scalar(ScalarOp::Pow, exponent)
    }
    pub fn maximum(&self, other: &Tensor) -> Tensor {
        self.binary(BinaryOp::Maximum, other)
    }
    pub fn minimum(&self, other: &Tensor) -> Tensor {
        self.binary(BinaryOp::Minimum, other)
    }
    /// `self ^ other`, elementwise and broadcast (`pow` takes a scalar).
    pub fn pow_tensor(&self, other: &Tensor) -> Tensor {
        self.binary(BinaryOp::Pow, other)
    }
    pub fn eq(&self, other: &Tensor) -> Tensor {
        self.binary(BinaryOp::Eq, other)
    }
    pub fn ne(&self, other: &Tensor) -> Tensor {
        self.binary(BinaryOp::Ne, other)
    }
    /// Boolean `self < other` of two tensors (`lt` takes a scalar).
    pub fn lt_tensor(&self, other: &Tensor) -> Tensor {
        self.binary(BinaryOp::Lt, other)
    }
    pub fn le_tensor(&self, other: &Tensor) -> Tensor {
        self.binary(BinaryOp::Le, other)
    }
    pub fn gt_tensor(&self, other: &Tensor) -> Tensor {
        self.binary(BinaryOp::Gt, other)
    }
    pub fn ge_tensor(&self, other: &Tensor) -> Tensor {
        self.binary(BinaryOp::Ge, other)
    }
    pub fn logical_and(&self, other: &Tensor) -> Tensor {
        self.binary(BinaryOp::LogicalAnd, other)
    }
    pub fn logical_or(&self, other: &Tensor) -> Tensor {
        self.binary(BinaryOp::LogicalOr, other)
    }
    /// Boolean `self == value` (`eq` takes a tensor).
    pub fn eq_scalar(&self, value: f64) -> Tensor {
        self.scalar(ScalarOp::Eq, value)
    }
    pub fn ne_scalar(&self, value: f64) -> Tensor {
        self.scalar(ScalarOp::Ne, value)
    }
    pub fn gt(&self, value: f64) -> Tensor {
        self.scalar(ScalarOp::Gt, value)
    }
    pub fn ge(&self, value: f64) -> Tensor {
        self.scalar(ScalarOp::Ge, value)
    }
    pub fn lt(&self, value: f64) -> Tensor {
        self.scalar(ScalarOp::Lt, value)
    }
    pub fn le(&self, value: f64) -> Tensor {
        self.scalar(ScalarOp::Le, value)
    }

    pub fn sum(&self, dims: &[i64], keep_dim: bool) -> Tensor {
        self.reduce(ReduceOp::Sum, dims, keep_dim)
    }
    pub fn mean(&self, dims: &[i64], keep_dim: bool) -> Tensor {
        self.reduce(ReduceOp::Mean, dims, keep_dim)
    }
    pub fn amax(&self, dims: &[i64], keep_dim: bool) -> Tensor {
        self.reduce(ReduceOp::Amax, dims, keep_dim)
    }
    pub fn amin(&self, dims: &[i64], keep_dim: bool) -> Tensor {
        self.reduce(ReduceOp::Amin, dims, keep_dim)
    }
    pub fn prod(&self, dims: &[i64], keep_dim: bool) -> Tensor {
        self.reduce(ReduceOp::Prod, dims, keep_dim)
    }
    /// Sum over every dim but the first: the per-sample reduction of a loss.
    /// A tensor that is already [B] is returned as it is (an empty dims
    /// list would reduce every dim).
    pub fn sum_per_sample(&self) -> Tensor {
        let dims: Vec<i64> = (1..self.shape().len() as i64).collect();
        if dims.is_empty() {
            return self * 1.0;
        }
        self.sum(&dims, false)
    }
    /// Mean over every dim but the first.
    pub fn mean_per_sample(&self) -> Tensor {
        let dims: Vec<i64> = (1..self.shape().len() as i64).collect();
        if dims.is_empty() {
            return self * 1.0;
        }
        self.mean(&dims, false)
    }

    pub fn argmax(&self, dim: i64, keep_dim: bool) -> Tensor {
        Tensor(self.0.argmax(dim, keep_dim))
    }
    pub fn softmax(&self, dim: i64) -> Tensor {
        Tensor(self.0.softmax(dim))
    }
    pub fn log_softmax(&self, dim: i64) -> Tensor {
        Tensor(self.0.log_softmax(dim))
    }
    pub fn clamp(&self, min: f64, max: f64) -> Tensor {
        Tensor(self.0.clamp(min, max))
    }
    pub fn reshape(&self, shape: &[i64]) -> Tensor {
        Tensor(self.0.reshape(shape))
    }
    pub fn permute(&self, dims: &[i64]) -> Tensor {
        Tensor(self.0.permute(dims))
    }
    pub fn narrow(&self, dim: i64, start: i64, length: i64) -> Tensor {
        Tensor(self.0.narrow(dim, start, length))
    }
    pub fn one_hot(&self, classes: i64) -> Tensor {
        Tensor(self.0.one_hot(classes))
    }
    pub fn gather(&self, dim: i64, index: &Tensor) -> Tensor {
        Tensor(self.0.gather(dim, &index.0))
    }
    /// `cond ? self : other`
    pub fn where_else(&self, cond: &Tensor, other: &Tensor) -> Tensor {
        Tensor(self.0.where_else(&cond.0, &other.0))
    }
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        Tensor(self.0.to_dtype(dtype))
    }
    pub fn to_float(&self) -> Tensor {
        self.to_dtype(DType::Float)
    }
    pub fn to_long(&self) -> Tensor {
        self.to_dtype(DType::Long)
    }
}

macro_rules! operators {
    ($trait:ident, $method:ident, $bin:ident, $sc:ident) => {
        impl $trait<&Tensor> for &Tensor {
            type Output = Tensor;
            fn $method(self, rhs: &Tensor) -> Tensor {
                self.binary(BinaryOp::$bin, rhs)
            }
        }
        impl $trait<Tensor> for Tensor {
            type Output = Tensor;
            fn $method(self, rhs: Tensor) -> Tensor {
                self.binary(BinaryOp::$bin, &rhs)
            }
        }
        impl $trait<&Tensor> for Tensor {
            type Output = Tensor;
            fn $method(self, rhs: &Tensor) -> Tensor {
                self.binary(BinaryOp::$bin, rhs)
            }
        }
        impl $trait<Tensor> for &Tensor {
            type Output = Tensor;
            fn $method(self, rhs: Tensor) -> Tensor {
                self.binary(BinaryOp::$bin, &rhs)
            }
        }
        impl $trait<f64> for &Tensor {
            type Output = Tensor;
            fn $method(self, rhs: f64) -> Tensor {
                self.scalar(ScalarOp::$sc, rhs)
            }
        }
        impl $trait<f64> for Tensor {
            type Output = Tensor;
            fn $method(self, rhs: f64) -> Tensor {
                self.scalar(ScalarOp::$sc, rhs)
            }
        }
    };
}

operators!(Add, add, Add, Add);
operators!(Sub, sub, Sub, Sub);
operators!(Mul, mul, Mul, Mul);
operators!(Div, div, Div, Div);

impl Sub<&Tensor> for f64 {
    type Output = Tensor;
    fn sub(self, rhs: &Tensor) -> Tensor {
        rhs.scalar(ScalarOp::Rsub, self)
    }
}
impl Sub<Tensor> for f64 {
    type Output = Tensor;
    fn sub(self, rhs: Tensor) -> Tensor {
        rhs.scalar(ScalarOp::Rsub, self)
    }
}
impl Div<&Tensor> for f64 {
    type Output = Tensor;
    fn div(self, rhs: &Tensor) -> Tensor {
        rhs.scalar(ScalarOp::Rdiv, self)
    }
}
impl Neg for &Tensor {
    type Output = Tensor;
    fn neg(self) -> Tensor {
        self.unary(UnaryOp::Neg)
    }
}
impl Neg for Tensor {
    type Output = Tensor;
    fn neg(self) -> Tensor {
        self.unary(UnaryOp::Neg)
    }
}

#[cfg(test)]
mod tests {
    use crate::types::{BinaryOp, ReduceOp, ScalarOp, UnaryOp};

    /// Every op of the contract is reached by a method of `Tensor` (or an
    /// operator), not only through `unary`/`binary`/`scalar`/`reduce`.
    #[test]
    fn every_contract_op_has_a_method() {
        let source = include_str!("tensor.rs");
        let body = &source[..source.find("#[cfg(test)]").unwrap()];
        let mut missing = Vec::new();
        let mut look = |kind: &str, names: Vec<String>| {
            for n in names {
                let (a, b) = (format!("{kind}::{n})"), format!("{kind}::{n},"));
                // Operators reach Add/Sub/Mul/Div through the macro's `$bin`/`$sc`.
                let by_macro = ["Add", "Sub", "Mul", "Div"].contains(&n.as_str())
                    && body.contains(&format!("operators!({n}, "));
                if !(body.contains(&a) || body.contains(&b) || by_macro) {
                    missing.push(format!("{kind}::{n}"));
                }
            }
        };
        look(
            "UnaryOp",
            UnaryOp::ALL.iter().map(|o| format!("{o:?}")).collect(),
        );
        look(
            "BinaryOp",
            BinaryOp::ALL.iter().map(|o| format!("{o:?}")).collect(),
        );
        look(
            "ScalarOp",
            ScalarOp::ALL.iter().map(|o| format!("{o:?}")).collect(),
        );
        look(
            "ReduceOp",
            ReduceOp::ALL.iter().map(|o| format!("{o:?}")).collect(),
        );
        assert!(
            missing.is_empty(),
            "ops without a Tensor method: {missing:?}"
        );
    }
}
