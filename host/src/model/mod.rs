//! Networks the host trains: a 2D U-Net for images [C, H, W] and a 3D U-Net
//! ([`unet3d`]) for volumes [C, D, H, W], whose heads have one channel per
//! output channel of the task (class logits, heatmaps, ...).

pub mod sliding;
pub mod unet3d;

use sliding::Window;

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
    /// 2: a 2D U-Net on images [C, H, W]; 3: a 3D U-Net on volumes [C, D, H, W].
    /// Left out of a saved config when 2, so 2D configs hash as before.
    #[serde(skip_serializing_if = "is_planar")]
    pub dims: usize,
    /// Resolution levels below the input (2D: each halves height and width;
    /// 3D: each divides every axis by its `pool` factor).
    pub depth: usize,
    /// Channels of the first level; each level below doubles them.
    pub width: i64,
    pub norm: NormKind,
    /// 3D only: the pooling factor per axis [D, H, W] of each level (`depth`
    /// entries); 2 on every axis when left out. `[1, 2, 2]` pools in-plane
    /// only, for volumes with thick slices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<Vec<[i64; 3]>>,
    /// 3D only: the odd convolution kernel per axis of each level, the bottom
    /// included (`depth + 1` entries); 3 on every axis when left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Vec<[i64; 3]>>,
}

fn is_planar(dims: &usize) -> bool {
    *dims == 2
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            dims: 2,
            depth: 2,
            width: 8,
            norm: NormKind::Instance,
            pool: None,
            kernel: None,
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
        if self.dims != 2 && self.dims != 3 {
            return Err(format!("model.dims = {} must be 2 or 3", self.dims));
        }
        if self.dims == 2 && (self.pool.is_some() || self.kernel.is_some()) {
            return Err("model.pool and model.kernel apply to 3D models (model.dims = 3)".into());
        }
        if let Some(pool) = &self.pool {
            if pool.len() != self.depth {
                return Err(format!(
                    "model.pool has {} levels, model.depth = {} needs one per level",
                    pool.len(),
                    self.depth
                ));
            }
            if let Some((level, p)) = pool
                .iter()
                .enumerate()
                .find(|(_, p)| p.iter().any(|&f| !(1..=8).contains(&f)))
            {
                return Err(format!(
                    "model.pool[{level}] = {p:?}: each factor must lie in 1..=8"
                ));
            }
        }
        if let Some(kernel) = &self.kernel {
            if kernel.len() != self.depth + 1 {
                return Err(format!(
                    "model.kernel has {} levels, model.depth = {} needs {} (the bottom included)",
                    kernel.len(),
                    self.depth,
                    self.depth + 1
                ));
            }
            if let Some((level, k)) = kernel
                .iter()
                .enumerate()
                .find(|(_, k)| k.iter().any(|&s| !(1..=15).contains(&s) || s % 2 == 0))
            {
                return Err(format!(
                    "model.kernel[{level}] = {k:?}: each size must be odd, 1 to 15"
                ));
            }
        }
        Ok(())
    }

    /// 3D: each level's pooling factor per axis.
    pub fn pools3d(&self) -> Vec<[i64; 3]> {
        self.pool
            .clone()
            .unwrap_or_else(|| vec![[2; 3]; self.depth])
    }

    /// 3D: each level's kernel per axis, the bottom last.
    pub fn kernels3d(&self) -> Vec<[i64; 3]> {
        self.kernel
            .clone()
            .unwrap_or_else(|| vec![[3; 3]; self.depth + 1])
    }

    /// Refuses images too small for `depth` halvings (a level of size 0).
    pub fn check_input(&self, height: i64, width: i64) -> Result<(), String> {
        self.check_shape(&[height, width])
    }

    /// Refuses inputs whose spatial shape (`[H, W]` for 2D, `[D, H, W]` for
    /// 3D: what the network sees, a patch when training on patches) does
    /// not suit the model: the wrong number of axes, or an axis too short
    /// for its pooling (a level of size 0).
    pub fn check_shape(&self, spatial: &[i64]) -> Result<(), String> {
        if spatial.len() != self.dims {
            let what = |n: usize| {
                if n == 3 {
                    "volumes [C, D, H, W]"
                } else {
                    "images [C, H, W]"
                }
            };
            return Err(format!(
                "model.dims = {} takes {}, the samples have {} spatial axes {spatial:?}",
                self.dims,
                what(self.dims),
                spatial.len()
            ));
        }
        if self.dims == 2 {
            let (height, width) = (spatial[0], spatial[1]);
            let need = 1i64 << self.depth;
            if height < need || width < need {
                return Err(format!(
                    "model.depth = {} halves the image {} times: it needs at least {need} x {need} pixels, \
                     the images are {height} x {width}",
                    self.depth, self.depth
                ));
            }
            return Ok(());
        }
        let mut need = [1i64; 3];
        for p in self.pools3d() {
            for a in 0..3 {
                need[a] *= p[a];
            }
        }
        if spatial.iter().zip(need).any(|(&s, n)| s < n) {
            return Err(format!(
                "model.pool over model.depth = {} levels divides the axes [D, H, W] by {need:?}: \
                 it needs at least {} x {} x {} voxels, the inputs are {} x {} x {}",
                self.depth, need[0], need[1], need[2], spatial[0], spatial[1], spatial[2]
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

/// The network of a `[model]` section, 2D or 3D, with the windows it
/// predicts larger inputs in when it was trained on patches.
#[derive(Debug)]
pub struct Net {
    arch: Arch,
    window: Option<Window>,
    /// Set on a reduced-precision copy (`train.precision`): inputs are cast
    /// to this kind on the way in, predictions back to float on the way out.
    compute: Option<tch::Kind>,
}

#[derive(Debug)]
enum Arch {
    Planar(UNet),
    Volumetric(unet3d::UNet3d),
}

impl ModuleT for Arch {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Arch::Planar(net) => net.forward_t(x, train),
            Arch::Volumetric(net) => net.forward_t(x, train),
        }
    }
}

impl Net {
    /// The U-Net `cfg.dims` asks for. A 2D net's variables are named as
    /// they always were, so older checkpoints load.
    pub fn new(p: &nn::Path, cfg: &ModelConfig, in_channels: i64, out_channels: i64) -> Self {
        let arch = if cfg.dims == 3 {
            Arch::Volumetric(unet3d::UNet3d::new(p, cfg, in_channels, out_channels))
        } else {
            Arch::Planar(UNet::new(p, cfg, in_channels, out_channels))
        };
        Self {
            arch,
            window: None,
            compute: None,
        }
    }

    /// Predicts every input whose spatial shape differs from `window.size`
    /// window by window ([`sliding`]): a net trained on patches
    /// evaluated on whole volumes. Inputs of the window's shape (the
    /// training patches, and PGD on them) take one plain forward.
    pub fn with_window(mut self, window: Option<Window>) -> Self {
        self.window = window;
        self
    }

    /// Runs in `kind` (its variables must be of that kind), taking and
    /// giving float tensors.
    pub fn computing_in(mut self, kind: tch::Kind) -> Self {
        self.compute = Some(kind);
        self
    }

    pub fn window(&self) -> Option<&Window> {
        self.window.as_ref()
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if let Some(kind) = self.compute {
            return self
                .plain(&x.to_kind(kind), train)
                .to_kind(tch::Kind::Float);
        }
        self.plain(x, train)
    }
}

impl Net {
    fn plain(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.window {
            Some(w) if x.size()[2..] != w.size[..] => sliding::predict(&self.arch, x, w, train),
            _ => self.arch.forward_t(x, train),
        }
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
    fn a_2d_config_serialises_as_before_and_3d_keys_are_checked() {
        let text = toml::to_string(&ModelConfig::default()).unwrap();
        assert_eq!(text, "depth = 2\nwidth = 8\nnorm = \"instance\"\n");
        let pooled = ModelConfig {
            pool: Some(vec![[1, 2, 2]; 2]),
            ..ModelConfig::default()
        };
        assert!(pooled.validate().unwrap_err().contains("apply to 3D"));
        let short = ModelConfig {
            dims: 3,
            pool: Some(vec![[1, 2, 2]]),
            ..ModelConfig::default()
        };
        assert!(
            short
                .validate()
                .unwrap_err()
                .contains("2 needs one per level")
        );
        let even = ModelConfig {
            dims: 3,
            kernel: Some(vec![[3, 3, 3], [1, 2, 3], [3, 3, 3]]),
            ..ModelConfig::default()
        };
        assert!(even.validate().unwrap_err().contains("model.kernel[1]"));
        let e = ModelConfig::default()
            .check_shape(&[4, 16, 16])
            .unwrap_err();
        assert!(e.contains("model.dims = 2 takes images"), "{e}");
    }

    #[test]
    fn output_has_the_input_size_and_head_channels() {
        for norm in [NormKind::Batch, NormKind::Instance, NormKind::None] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = ModelConfig {
                depth: 2,
                width: 4,
                norm,
                ..ModelConfig::default()
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
