//! A 3D U-Net for volumes [B, C, D, H, W], built as nnU-Net builds its
//! networks: per level two convolutions, each followed by instance norm
//! (affine) and leaky ReLU (slope 0.01); kernel sizes and pooling factors
//! per axis and per level, so anisotropic data (thick slices) can pool
//! in-plane only (`[1, 2, 2]`) and convolve in-plane only (`[1, 3, 3]`).
//! Down by max pooling, up by transposed convolutions of the pooling
//! factor, skips by concatenation, a 1x1x1 head.

use super::{ModelConfig, NormKind};
use tch::Tensor;
use tch::nn::{self, ModuleT};

#[derive(Debug)]
enum Norm3d {
    Batch(nn::BatchNorm),
    Instance(nn::GroupNorm),
    None,
}

impl Norm3d {
    fn new(p: nn::Path, kind: NormKind, channels: i64) -> Self {
        match kind {
            NormKind::Batch => Norm3d::Batch(nn::batch_norm3d(p, channels, Default::default())),
            // One group per channel: instance norm with an affine map.
            NormKind::Instance => {
                Norm3d::Instance(nn::group_norm(p, channels, channels, Default::default()))
            }
            NormKind::None => Norm3d::None,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Norm3d::Batch(bn) => bn.forward_t(x, train),
            Norm3d::Instance(gn) => x.apply(gn),
            Norm3d::None => x.shallow_clone(),
        }
    }
}

/// conv -> norm -> leaky ReLU (libtorch's slope 0.01, nnU-Net's), twice,
/// with one kernel size per axis.
#[derive(Debug)]
struct Block {
    convs: [nn::Conv3D; 2],
    norms: [Norm3d; 2],
}

fn conv3d(p: nn::Path, c_in: i64, c_out: i64, kernel: [i64; 3], bias: bool) -> nn::Conv3D {
    let cfg = nn::ConvConfigND::<[i64; 3]> {
        stride: [1, 1, 1],
        // Odd kernels, half on each side: the output keeps the input's size.
        padding: kernel.map(|k| k / 2),
        dilation: [1, 1, 1],
        groups: 1,
        bias,
        ws_init: nn::init::DEFAULT_KAIMING_UNIFORM,
        bs_init: nn::Init::Const(0.0),
        padding_mode: nn::PaddingMode::Zeros,
    };
    nn::conv(p, c_in, c_out, kernel, cfg)
}

impl Block {
    fn new(p: nn::Path, norm: NormKind, c_in: i64, c_out: i64, kernel: [i64; 3]) -> Self {
        // A bias before a normalisation is cancelled by it.
        let bias = norm == NormKind::None;
        Self {
            convs: [
                conv3d(&p / "conv1", c_in, c_out, kernel, bias),
                conv3d(&p / "conv2", c_out, c_out, kernel, bias),
            ],
            norms: [
                Norm3d::new(&p / "norm1", norm, c_out),
                Norm3d::new(&p / "norm2", norm, c_out),
            ],
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let x = self.norms[0]
            .forward_t(&x.apply(&self.convs[0]), train)
            .leaky_relu();
        self.norms[1]
            .forward_t(&x.apply(&self.convs[1]), train)
            .leaky_relu()
    }
}

/// A transposed convolution whose kernel and stride are one level's
/// pooling factors (tch builds only cubic ones).
#[derive(Debug)]
struct Up {
    weight: Tensor,
    bias: Tensor,
    factor: [i64; 3],
}

impl Up {
    fn new(p: nn::Path, c_in: i64, c_out: i64, factor: [i64; 3]) -> Self {
        let mut shape = vec![c_in, c_out];
        shape.extend(factor);
        Self {
            weight: p.var("weight", &shape, nn::init::DEFAULT_KAIMING_UNIFORM),
            bias: p.var("bias", &[c_out], nn::Init::Const(0.0)),
            factor,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv_transpose3d(
            &self.weight,
            Some(&self.bias),
            self.factor,
            [0, 0, 0],
            [0, 0, 0],
            1,
            [1, 1, 1],
        )
    }
}

/// The 3D U-Net of a `[model]` section with `dims = 3`.
#[derive(Debug)]
pub struct UNet3d {
    down: Vec<Block>,
    pools: Vec<[i64; 3]>,
    bottom: Block,
    up: Vec<(Up, Block)>,
    head: nn::Conv3D,
}

impl UNet3d {
    pub fn new(p: &nn::Path, cfg: &ModelConfig, in_channels: i64, out_channels: i64) -> Self {
        let w = |level: usize| cfg.width << level;
        let pools = cfg.pools3d();
        let kernels = cfg.kernels3d();
        let mut down = Vec::new();
        let mut c_in = in_channels;
        for (level, &kernel) in kernels.iter().enumerate().take(cfg.depth) {
            down.push(Block::new(
                p / format!("down{level}"),
                cfg.norm,
                c_in,
                w(level),
                kernel,
            ));
            c_in = w(level);
        }
        let bottom = Block::new(
            p / "bottom",
            cfg.norm,
            c_in,
            w(cfg.depth),
            kernels[cfg.depth],
        );
        let up = (0..cfg.depth)
            .rev()
            .map(|level| {
                let upconv = Up::new(
                    p / format!("upconv{level}"),
                    w(level + 1),
                    w(level),
                    pools[level],
                );
                let block = Block::new(
                    p / format!("up{level}"),
                    cfg.norm,
                    2 * w(level),
                    w(level),
                    kernels[level],
                );
                (upconv, block)
            })
            .collect();
        let head = conv3d(p / "head", w(0), out_channels, [1, 1, 1], true);
        Self {
            down,
            pools,
            bottom,
            up,
            head,
        }
    }
}

impl ModuleT for UNet3d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut skips = Vec::with_capacity(self.down.len());
        let mut h = x.shallow_clone();
        for (block, &pool) in self.down.iter().zip(&self.pools) {
            let s = block.forward_t(&h, train);
            h = s.max_pool3d(pool, pool, [0, 0, 0], [1, 1, 1], false);
            skips.push(s);
        }
        h = self.bottom.forward_t(&h, train);
        for ((upconv, block), skip) in self.up.iter().zip(skips.iter().rev()) {
            let u = upconv.forward(&h);
            // Sizes not divisible by the pooling factor lose voxels to
            // pooling: pad back to the skip's size.
            let (s, us) = (skip.size(), u.size());
            let pad = [s[4] - us[4], s[3] - us[3], s[2] - us[2]];
            let u = if pad.iter().any(|&d| d != 0) {
                u.constant_pad_nd([0, pad[0], 0, pad[1], 0, pad[2]])
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
    use tch::{Device, Kind};

    fn cfg(
        depth: usize,
        pool: Option<Vec<[i64; 3]>>,
        kernel: Option<Vec<[i64; 3]>>,
    ) -> ModelConfig {
        ModelConfig {
            dims: 3,
            depth,
            width: 4,
            pool,
            kernel,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn output_has_the_volume_size_and_head_channels() {
        let anisotropic = cfg(
            2,
            Some(vec![[1, 2, 2], [2, 2, 2]]),
            Some(vec![[1, 3, 3], [3, 3, 3], [3, 3, 3]]),
        );
        for c in [cfg(1, None, None), cfg(2, None, None), anisotropic] {
            c.validate().unwrap();
            for norm in [NormKind::Batch, NormKind::Instance, NormKind::None] {
                let c = ModelConfig { norm, ..c.clone() };
                let vs = nn::VarStore::new(Device::Cpu);
                let net = UNet3d::new(&vs.root(), &c, 1, 3);
                for shape in [[2, 1, 12, 16, 16], [1, 1, 9, 13, 11]] {
                    let x = Tensor::rand(shape, (Kind::Float, Device::Cpu));
                    let want = [shape[0], 3, shape[2], shape[3], shape[4]];
                    assert_eq!(net.forward_t(&x, true).size(), want, "{c:?}");
                    assert_eq!(net.forward_t(&x, false).size(), want, "{c:?}");
                }
            }
        }
    }

    #[test]
    fn in_plane_pooling_keeps_the_depth_axis() {
        // Pooling [1, 2, 2] twice: a volume 2 slices thick is deep enough.
        let c = cfg(2, Some(vec![[1, 2, 2], [1, 2, 2]]), None);
        c.check_shape(&[2, 8, 8]).unwrap();
        let e = cfg(2, None, None).check_shape(&[2, 8, 8]).unwrap_err();
        assert!(e.contains("at least 4 x 4 x 4"), "{e}");
        let vs = nn::VarStore::new(Device::Cpu);
        let net = UNet3d::new(&vs.root(), &c, 1, 2);
        let x = Tensor::rand([1, 1, 2, 8, 8], (Kind::Float, Device::Cpu));
        assert_eq!(net.forward_t(&x, false).size(), [1, 2, 2, 8, 8]);
        // The transposed convolution's kernel is the pooling factor.
        let names: Vec<(String, Vec<i64>)> = vs
            .variables()
            .into_iter()
            .map(|(n, v)| (n, v.size()))
            .collect();
        assert!(
            names.contains(&("upconv0.weight".into(), vec![8, 4, 1, 2, 2])),
            "{names:?}"
        );
    }
}
