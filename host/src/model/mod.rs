//! Networks the host trains. For now a 2D U-Net whose head has one channel
//! per output channel of the task (class logits, heatmaps, ...).

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

/// Normalisation after each convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// Batch statistics in training, running statistics in evaluation.
    Batch,
    /// Per-sample, per-channel statistics (affine): training and evaluation
    /// behave alike, so an attack sees the network it trains.
    Instance,
    None,
}

/// The `[model]` section of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Resolution levels below the input (each halves height and width).
    pub depth: usize,
    /// Channels of the first level; each level below doubles them.
    pub width: i64,
    pub norm: NormKind,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            depth: 2,
            width: 8,
            norm: NormKind::Instance,
        }
    }
}

impl ModelConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.depth > 6 {
            return Err(format!(
                "model.depth = {} is too deep (at most 6)",
                self.depth
            ));
        }
        if self.width < 1 {
            return Err(format!("model.width = {} must be at least 1", self.width));
        }
        // The widest level has width << depth channels.
        if self.width > (1i64 << 16) >> self.depth {
            return Err(format!(
                "model.width = {} is too wide for model.depth = {} (at most {} channels at the bottom)",
                self.width,
                self.depth,
                1 << 16
            ));
        }
        Ok(())
    }

    /// Refuses images too small for `depth` halvings (a level of size 0).
    pub fn check_input(&self, height: i64, width: i64) -> Result<(), String> {
        let need = 1i64 << self.depth;
        if height < need || width < need {
            return Err(format!(
                "model.depth = {} halves the image {} times: it needs at least {need} x {need} pixels, \
                 the images are {height} x {width}",
                self.depth, self.depth
            ));
        }
        Ok(())
    }
}

/// Where tensors live: `cpu`, `cuda` (the first GPU) or `auto` (a GPU when
/// libtorch sees one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    #[default]
    Auto,
}

impl DeviceChoice {
    pub fn resolve(self) -> Result<Device, String> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceChoice::Cuda => {
                Err("device `cuda` asked for, but libtorch sees no CUDA device".into())
            }
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        }
    }
}

/// conv3x3 -> norm -> ReLU, twice.
#[derive(Debug)]
struct ConvBlock {
    convs: [nn::Conv2D; 2],
    norms: [Norm; 2],
}

#[derive(Debug)]
enum Norm {
    Batch(nn::BatchNorm),
    Instance(nn::GroupNorm),
    None,
}

impl Norm {
    fn new(p: nn::Path, kind: NormKind, channels: i64) -> Self {
        match kind {
            NormKind::Batch => Norm::Batch(nn::batch_norm2d(p, channels, Default::default())),
            // Group norm with one group per channel is instance norm with an affine map.
            NormKind::Instance => {
                Norm::Instance(nn::group_norm(p, channels, channels, Default::default()))
            }
            NormKind::None => Norm::None,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Norm::Batch(bn) => bn.forward_t(x, train),
            Norm::Instance(gn) => x.apply(gn),
            Norm::None => x.shallow_clone(),
        }
    }
}

impl ConvBlock {
    fn new(p: nn::Path, norm: NormKind, c_in: i64, c_out: i64) -> Self {
        let cfg = nn::ConvConfig {
            padding: 1,
            // A bias before a normalisation is cancelled by it.
            bias: norm == NormKind::None,
            ..Default::default()
        };
        Self {
            convs: [
                nn::conv2d(&p / "conv1", c_in, c_out, 3, cfg),
                nn::conv2d(&p / "conv2", c_out, c_out, 3, cfg),
            ],
            norms: [
                Norm::new(&p / "norm1", norm, c_out),
                Norm::new(&p / "norm2", norm, c_out),
            ],
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let x = self.norms[0]
            .forward_t(&x.apply(&self.convs[0]), train)
            .relu();
        self.norms[1]
            .forward_t(&x.apply(&self.convs[1]), train)
            .relu()
    }
}

/// A 2D U-Net: `depth` max-pool levels down, transposed convolutions up,
/// skip connections by concatenation, and a 1x1 head.
#[derive(Debug)]
pub struct UNet {
    down: Vec<ConvBlock>,
    bottom: ConvBlock,
    up: Vec<(nn::ConvTranspose2D, ConvBlock)>,
    head: nn::Conv2D,
}

impl UNet {
    pub fn new(p: &nn::Path, cfg: &ModelConfig, in_channels: i64, out_channels: i64) -> Self {
        let w = |level: usize| cfg.width << level;
        let mut down = Vec::new();
        let mut c_in = in_channels;
        for level in 0..cfg.depth {
            down.push(ConvBlock::new(
                p / format!("down{level}"),
                cfg.norm,
                c_in,
                w(level),
            ));
            c_in = w(level);
        }
        let bottom = ConvBlock::new(p / "bottom", cfg.norm, c_in, w(cfg.depth));
        let up = (0..cfg.depth)
            .rev()
            .map(|level| {
                let upconv = nn::conv_transpose2d(
                    p / format!("upconv{level}"),
                    w(level + 1),
                    w(level),
                    2,
                    nn::ConvTransposeConfig {
                        stride: 2,
                        ..Default::default()
                    },
                );
                let block =
                    ConvBlock::new(p / format!("up{level}"), cfg.norm, 2 * w(level), w(level));
                (upconv, block)
            })
            .collect();
        let head = nn::conv2d(p / "head", w(0), out_channels, 1, Default::default());
        Self {
            down,
            bottom,
            up,
            head,
        }
    }
}

impl ModuleT for UNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut skips = Vec::with_capacity(self.down.len());
        let mut h = x.shallow_clone();
        for block in &self.down {
            let s = block.forward_t(&h, train);
            h = s.max_pool2d_default(2);
            skips.push(s);
        }
        h = self.bottom.forward_t(&h, train);
        for ((upconv, block), skip) in self.up.iter().zip(skips.iter().rev()) {
            let u = h.apply(upconv);
            // Odd sizes lose a row or column to pooling: pad back to the skip's size.
            let (dh, dw) = (skip.size()[2] - u.size()[2], skip.size()[3] - u.size()[3]);
            let u = if dh != 0 || dw != 0 {
                u.constant_pad_nd([0, dw, 0, dh])
            } else {
                u
            };
            h = block.forward_t(&Tensor::cat(&[skip, &u], 1), train);
        }
        h.apply(&self.head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn a_model_too_deep_for_the_images_is_refused() {
        let cfg = ModelConfig {
            depth: 4,
            ..ModelConfig::default()
        };
        cfg.check_input(16, 16).unwrap();
        let e = cfg.check_input(8, 64).unwrap_err();
        assert!(e.contains("at least 16 x 16"), "{e}");
        let wide = ModelConfig {
            depth: 6,
            width: 1 << 40,
            ..ModelConfig::default()
        };
        assert!(wide.validate().unwrap_err().contains("too wide"));
    }

    #[test]
    fn output_has_the_input_size_and_head_channels() {
        for norm in [NormKind::Batch, NormKind::Instance, NormKind::None] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = ModelConfig {
                depth: 2,
                width: 4,
                norm,
            };
            let net = UNet::new(&vs.root(), &cfg, 1, 3);
            for (h, w) in [(16, 16), (17, 23)] {
                let x = Tensor::rand([2, 1, h, w], (Kind::Float, Device::Cpu));
                assert_eq!(net.forward_t(&x, true).size(), [2, 3, h, w]);
                assert_eq!(net.forward_t(&x, false).size(), [2, 3, h, w]);
            }
        }
    }
}
