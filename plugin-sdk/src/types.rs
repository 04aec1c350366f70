//! Plain data shared by plugins and the host: what `describe`, `decode` and
//! `metrics` exchange, and the op codes of the host's tensor API.
//!
//! The op enums list their cases in the order of `wit/task.wit`; the native
//! ABI passes them as that index, and a host test checks both against the WIT.

use serde::{Deserialize, Serialize};

/// What the model's output and the target mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    ClassMap,
    Heatmaps,
    DenseBoxes,
    Labels,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub input_channels: u32,
    pub output_channels: u32,
    pub target_kind: TargetKind,
    /// Loss at or below which a prediction still counts as correct (AMAT).
    pub tau: f32,
    /// Valid intensity range of decoded images: attacks clip to it.
    pub intensity_min: f32,
    pub intensity_max: f32,
    /// Names of the values `metrics` returns, in order.
    pub metric_names: Vec<String>,
    /// The per-sample judgement scores `Task::scores` returns, in order
    /// (contract 0.2.0; empty for plugins built for 0.1.0).
    #[serde(default)]
    pub scores: Vec<ScoreInfo>,
}

/// A per-sample score the host can judge "still correct" by, against a
/// threshold the run's config sets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreInfo {
    pub name: String,
    /// Larger is better (a Dice) or worse (an error, a loss component).
    pub higher_is_better: bool,
    pub description: String,
}

impl ScoreInfo {
    pub fn new(name: &str, higher_is_better: bool, description: &str) -> Self {
        Self {
            name: name.into(),
            higher_is_better,
            description: description.into(),
        }
    }
}

/// One score's value for every sample of a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleScore {
    pub name: String,
    pub values: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct File {
    pub name: String,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecodeRequest {
    pub files: Vec<File>,
    /// Task-specific options as JSON.
    pub options: String,
}

impl DecodeRequest {
    /// The bytes of the file called `name`, or an error naming it and the
    /// files the request has.
    pub fn file(&self, name: &str) -> Result<&[u8], String> {
        self.files
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.bytes.as_slice())
            .ok_or_else(|| {
                let names: Vec<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
                format!(
                    "decode request has no file named `{name}`; it has: {}",
                    if names.is_empty() {
                        "no files".to_string()
                    } else {
                        names.join(", ")
                    }
                )
            })
    }
}

/// Row-major f32 data with its shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dense {
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

impl Dense {
    /// Checks that the data fills the shape exactly.
    pub fn new(shape: Vec<i64>, data: Vec<f32>) -> Result<Self, String> {
        // Checked: a shape from untrusted bytes must not overflow (a panic in
        // a debug build, a wrong count in a release one).
        let want = shape
            .iter()
            .try_fold(1i64, |n, &d| if d < 0 { None } else { n.checked_mul(d) });
        if want.and_then(|w| usize::try_from(w).ok()) != Some(data.len()) {
            return Err(format!(
                "dense data of {} values does not fill shape {shape:?}",
                data.len()
            ));
        }
        Ok(Self { shape, data })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    /// [channels, *spatial]
    pub image: Dense,
    pub target: Dense,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
}

/// Declares an op enum together with its WIT case names, in WIT order.
macro_rules! wit_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $wit:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every case, in the order of the WIT enum.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The WIT (kebab-case) name of each case, in order.
            pub const WIT_NAMES: &'static [&'static str] = &[$($wit),+];

            /// The case with this ABI code, if any.
            pub fn from_code(code: u32) -> Option<Self> {
                Self::ALL.get(code as usize).copied()
            }

            pub fn wit_name(self) -> &'static str {
                Self::WIT_NAMES[self as usize]
            }
        }
    };
}

wit_enum!(
    /// Element type of a host tensor.
    DType { Float = "float", Long = "long", Boolean = "boolean" }
);

wit_enum!(UnaryOp {
    Neg = "neg", Exp = "exp", Log = "log", Sqrt = "sqrt", Abs = "abs",
    Sigmoid = "sigmoid", Tanh = "tanh", Relu = "relu", Sign = "sign",
    Floor = "floor", Ceil = "ceil", Round = "round", Square = "square",
    Reciprocal = "reciprocal", LogicalNot = "logical-not", Isnan = "isnan",
    Isfinite = "isfinite", Detach = "detach",
    // Contract 0.2.0 appends; 0.1.0 codes keep their meaning.
    Softplus = "softplus", LogSigmoid = "log-sigmoid", Log1p = "log1p", Expm1 = "expm1",
});

wit_enum!(BinaryOp {
    Add = "add", Sub = "sub", Mul = "mul", Div = "div", Pow = "pow",
    Maximum = "maximum", Minimum = "minimum", Eq = "eq", Ne = "ne",
    Lt = "lt", Le = "le", Gt = "gt", Ge = "ge",
    LogicalAnd = "logical-and", LogicalOr = "logical-or",
});

wit_enum!(ScalarOp {
    Add = "add", Sub = "sub", Mul = "mul", Div = "div", Pow = "pow",
    Rsub = "rsub", Rdiv = "rdiv", Eq = "eq", Ne = "ne", Lt = "lt",
    Le = "le", Gt = "gt", Ge = "ge",
});

wit_enum!(ReduceOp {
    Sum = "sum", Mean = "mean", Amax = "amax", Amin = "amin", Prod = "prod",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named_with_the_names_there_are() {
        let request = DecodeRequest {
            files: vec![
                File {
                    name: "image.nii.gz".into(),
                    bytes: vec![1],
                },
                File {
                    name: "label.nii.gz".into(),
                    bytes: vec![2],
                },
            ],
            options: String::new(),
        };
        assert_eq!(request.file("label.nii.gz").unwrap(), [2]);
        let err = request.file("seg.nii.gz").unwrap_err();
        assert!(
            err.contains("`seg.nii.gz`") && err.contains("image.nii.gz, label.nii.gz"),
            "{err}"
        );
    }
}
