//! `amat-host plugin check`: loads a plugin under the sandbox's limits and
//! runs a battery on random inputs shaped by what the plugin describes, one
//! line per check. The loss must be per-sample, finite, deterministic,
//! differentiable (its gradient agrees with finite differences and reaches
//! the input of a small net) and decrease under gradient steps; decode and
//! metrics must behave; every call must stay within the limits.

mod reach;

pub(crate) use reach::Quantiles;
pub use reach::quantile;

use super::{CallStats, Example, File, Plugin, PluginKind, SandboxLimits, TargetKind, TaskInfo};
use crate::plugin::DecodeRequest;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
    /// Sound, but AMAT will not work as meant (a tau no prediction reaches);
    /// the verdict stays a pass.
    Warn,
}

/// One check's outcome: what was checked and a short reason with numbers.
#[derive(Clone, Debug, Serialize)]
pub struct Line {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub plugin: PathBuf,
    /// "wasm" or "native"; None when the plugin did not load.
    pub kind: Option<&'static str>,
    pub sandboxed: bool,
    /// What runs the plugin: its limits, or that it is trusted native code.
    pub note: Option<String>,
    pub checks: Vec<Line>,
    /// True when no check failed.
    pub passed: bool,
}

impl Report {
    pub fn line(&self, name: &str) -> Option<&Line> {
        self.checks.iter().find(|l| l.name == name)
    }

    /// The human form: one line per check, then the verdict.
    pub fn text(&self) -> String {
        let mut out = format!("plugin check: {}\n", self.plugin.display());
        if let Some(note) = &self.note {
            out += &format!("note: {note}\n");
        }
        for l in &self.checks {
            let status = match l.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Skip => "SKIP",
                Status::Warn => "WARN",
            };
            out += &format!("{status}  {:<16} {}\n", l.name, l.detail);
        }
        let count = |s| self.checks.iter().filter(|l| l.status == s).count();
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|l| l.status == Status::Fail)
            .map(|l| l.name)
            .collect();
        if self.passed {
            let warned = match count(Status::Warn) {
                0 => String::new(),
                n => format!(", {n} warning(s)"),
            };
            out += &format!(
                "verdict: PASS ({} checks passed, {} skipped{warned})\n",
                count(Status::Pass),
                count(Status::Skip)
            );
        } else {
            out += &format!(
                "verdict: FAIL ({} of {} checks failed: {})\n",
                failed.len(),
                self.checks.len(),
                failed.join(", ")
            );
        }
        out
    }
}

/// Batch size of the random cases.
const BATCH: i64 = 4;
/// Height and width of the random cases.
const SIDE: i64 = 8;
/// Gradient steps of the "loss decreases" check.
const DESCENT_STEPS: usize = 10;
/// Coordinates compared with finite differences.
const FD_COORDS: i64 = 6;

/// Runs the battery on the plugin at `path`. `samples` are files for one
/// `decode` call with the JSON `options`; the loss checks then run on the
/// decoded targets instead of synthesised ones.
pub fn check(path: &Path, samples: &[PathBuf], options: &str, limits: &SandboxLimits) -> Report {
    tch::manual_seed(0);
    let mut report = Report {
        plugin: path.to_path_buf(),
        kind: None,
        sandboxed: false,
        note: None,
        checks: Vec::new(),
        passed: false,
    };
    let mut plugin = match Plugin::load(path, limits) {
        Ok(p) => p,
        Err(e) => {
            report.checks.push(fail(e.call, e.to_string()));
            return report;
        }
    };
    let mut run = Battery {
        stats: vec![plugin.last_call()],
        plugin: &mut plugin,
        lines: Vec::new(),
    };
    let info = run.plugin.info().clone();
    run.lines.push(pass("describe", describe_line(&info)));
    let decoded = run.decode(samples, options);
    match case(&info, decoded.as_deref(), BATCH, SIDE, Kind::Float) {
        Ok(c) => run.loss_checks(&info, &c, decoded.as_deref()),
        Err(why) => {
            for name in LOSS_CHECKS {
                run.lines.push(skip(name, why.clone()));
            }
        }
    }
    let line = reach::tau_line(&mut run, &info, decoded.as_deref());
    run.lines.push(line);
    run.limits_line();
    let lines = std::mem::take(&mut run.lines);
    report.kind = Some(match plugin.kind() {
        PluginKind::Wasm => "wasm",
        PluginKind::Native => "native",
        PluginKind::Builtin => "built-in",
    });
    report.sandboxed = plugin.kind() == PluginKind::Wasm;
    report.note = Some(match plugin.kind() {
        PluginKind::Wasm => format!(
            "wasm component, sandboxed: deadline {} per call, linear memory {} MiB, stack {} KiB, \
             tensors {} live / {} elements / {} ops per call; no filesystem, network, environment, clock or randomness",
            if limits.call_timeout_ms > 0 {
                format!("{} ms", limits.call_timeout_ms)
            } else {
                "none".into()
            },
            limits.max_memory_mib,
            limits.max_stack_kib,
            limits.tensors.max_live,
            limits.tensors.max_elements_per_call,
            limits.tensors.max_ops_per_call
        ),
        PluginKind::Native => {
            "native library: trusted code, NOT sandboxed (no time, memory or stack \
             limits; only the tensor budget applies). Run only native plugins you trust."
                .into()
        }
        PluginKind::Builtin => "built into the host: trusted code, not sandboxed".into(),
    });
    report.passed = lines.iter().all(|l| l.status != Status::Fail);
    report.checks = lines;
    report
}

const LOSS_CHECKS: [&str; 9] = [
    "loss shape",
    "loss finite",
    "loss attached",
    "deterministic",
    "per-sample",
    "gradient",
    "input gradient",
    "loss decreases",
    "metrics",
];

pub(crate) fn pass(name: &'static str, detail: impl Into<String>) -> Line {
    Line {
        name,
        status: Status::Pass,
        detail: detail.into(),
    }
}
pub(crate) fn fail(name: &'static str, detail: impl Into<String>) -> Line {
    Line {
        name,
        status: Status::Fail,
        detail: detail.into(),
    }
}
pub(crate) fn skip(name: &'static str, detail: impl Into<String>) -> Line {
    Line {
        name,
        status: Status::Skip,
        detail: detail.into(),
    }
}

fn describe_line(info: &TaskInfo) -> String {
    format!(
        "`{}` {}: {} input -> {} output channel(s), target {:?}, tau {}, intensity [{}, {}]",
        info.name,
        info.version,
        info.input_channels,
        info.output_channels,
        info.target_kind,
        info.tau,
        info.intensity_min,
        info.intensity_max
    )
}

/// A prediction and a target the plugin should accept.
pub(crate) struct Case {
    pub pred: Tensor,
    pub target: Tensor,
}

pub(crate) fn dense(d: &amat_plugin_sdk::types::Dense) -> Tensor {
    Tensor::from_slice(&d.data).reshape(d.shape.as_slice())
}

/// A case of `batch` samples with a random prediction. The targets are the
/// decoded examples' when there are any (repeated to fill the batch, the
/// prediction sized like their images); otherwise random ones of the task's
/// target kind, `side`x`side`, where the host knows the layout: a class map or
/// labels. Heatmap and box targets are laid out by each plugin (points,
/// dense maps, ...), so those need decoded examples.
fn case(
    info: &TaskInfo,
    decoded: Option<&[Example]>,
    batch: i64,
    side: i64,
    kind: Kind,
) -> Result<Case, String> {
    let classes = info.output_channels as i64;
    let cpu = Device::Cpu;
    let (target, side_h, side_w) = match (decoded.filter(|e| !e.is_empty()), info.target_kind) {
        (Some(examples), _) => {
            let targets: Vec<Tensor> = (0..batch as usize)
                .map(|i| dense(&examples[i % examples.len()].target))
                .collect();
            let first = targets[0].size();
            if targets.iter().any(|t| t.size() != first) {
                return Err("skipped: the decoded targets differ in shape".into());
            }
            let img = &examples[0].image.shape;
            let (h, w) = (
                img.get(1).copied().unwrap_or(side),
                img.get(2).copied().unwrap_or(side),
            );
            (Tensor::stack(&targets, 0), h, w)
        }
        (None, TargetKind::ClassMap) => (
            Tensor::randint_low(0, classes, [batch, side, side], (Kind::Int64, cpu))
                .to_kind(Kind::Float),
            side,
            side,
        ),
        (None, TargetKind::Labels) => (
            Tensor::randint_low(0, classes, [batch], (Kind::Int64, cpu)).to_kind(Kind::Float),
            side,
            side,
        ),
        (None, TargetKind::Heatmaps | TargetKind::DenseBoxes) => {
            return Err(format!(
                "skipped: {:?} targets are laid out by the plugin; pass --sample FILE \
                 (and --options JSON) so decode supplies real ones",
                info.target_kind
            ));
        }
    };
    let pred = Tensor::randn([batch, classes, side_h, side_w], (kind, cpu));
    Ok(Case { pred, target })
}

/// Largest |a - b| over two tensors of one shape.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

pub(crate) fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.detach().to_kind(Kind::Double).flatten(0, -1)).unwrap_or_default()
}

pub(crate) struct Battery<'a> {
    pub plugin: &'a mut Plugin,
    /// Every call's cost, for the limits line.
    pub stats: Vec<CallStats>,
    pub lines: Vec<Line>,
}

impl Battery<'_> {
    pub(crate) fn loss(&mut self, pred: &Tensor, target: &Tensor) -> Result<Tensor, String> {
        let r = self.plugin.loss_unchecked(pred, target);
        self.stats.push(self.plugin.last_call());
        r.map_err(|e| e.to_string())
    }

    /// The loss with the contract's checks, for checks that need a sound one.
    pub(crate) fn sound_loss(&mut self, pred: &Tensor, target: &Tensor) -> Result<Tensor, String> {
        let l = self.loss(pred, target)?;
        super::check_loss(&l, pred)?;
        Ok(l)
    }

    fn decode(&mut self, samples: &[PathBuf], options: &str) -> Option<Vec<Example>> {
        if samples.is_empty() {
            self.lines
                .push(skip("decode", "skipped: no --sample FILE given"));
            return None;
        }
        let mut files = Vec::new();
        for s in samples {
            match std::fs::read(s) {
                Ok(bytes) => files.push(File {
                    name: s
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    bytes,
                }),
                Err(e) => {
                    self.lines
                        .push(fail("decode", format!("cannot read {}: {e}", s.display())));
                    return None;
                }
            }
        }
        let request = DecodeRequest {
            files,
            options: options.into(),
        };
        let r = self.plugin.decode(&request);
        self.stats.push(self.plugin.last_call());
        let examples = match r {
            Ok(e) => e,
            Err(e) => {
                self.lines.push(fail("decode", e.to_string()));
                return None;
            }
        };
        let channels = self.plugin.info().input_channels as i64;
        let problem = if examples.is_empty() {
            Some("decode returned no example".to_string())
        } else {
            examples.iter().find_map(|e| {
                if e.image.shape.len() != 3 || e.image.shape[0] != channels {
                    Some(format!(
                        "example `{}` has image shape {:?}, expected [{channels}, H, W]",
                        e.id, e.image.shape
                    ))
                } else if !e
                    .image
                    .data
                    .iter()
                    .chain(&e.target.data)
                    .all(|v| v.is_finite())
                {
                    Some(format!("example `{}` holds non-finite values", e.id))
                } else {
                    None
                }
            })
        };
        match problem {
            Some(p) => self.lines.push(fail("decode", p)),
            None => self.lines.push(pass(
                "decode",
                format!(
                    "{} example(s) from {} file(s); first `{}`: image {:?}, target {:?}",
                    examples.len(),
                    samples.len(),
                    examples[0].id,
                    examples[0].image.shape,
                    examples[0].target.shape
                ),
            )),
        }
        Some(examples)
    }

    fn loss_checks(&mut self, info: &TaskInfo, c: &Case, decoded: Option<&[Example]>) {
        let pred = c.pred.set_requires_grad(true);
        let Some((first, sound)) = self.first_loss(&pred, &c.target) else {
            for name in &LOSS_CHECKS[1..8] {
                self.lines.push(skip(name, "skipped: the loss failed"));
            }
            self.metrics_line(c);
            return;
        };
        self.determinism(&pred, &c.target, &first);
        if sound {
            self.per_sample(c, &first);
        } else {
            self.lines.push(skip(
                "per-sample",
                "skipped: needs a finite loss of shape [B]",
            ));
        }
        self.gradient(info, decoded);
        self.input_gradient(info, c);
        self.descent(c);
        self.metrics_line(c);
    }

    /// The first loss call and its `loss shape`, `loss finite` and `loss
    /// attached` lines: the loss (None when the call failed) and whether it
    /// is a finite float [B], as the per-sample check needs.
    pub(crate) fn first_loss(&mut self, pred: &Tensor, target: &Tensor) -> Option<(Tensor, bool)> {
        let batch = pred.size()[0];
        let first = match self.loss(pred, target) {
            Ok(l) => l,
            Err(e) => {
                self.lines.push(fail("loss shape", e));
                return None;
            }
        };
        let shape_ok = first.size() == [batch];
        self.lines.push(if shape_ok {
            pass("loss shape", format!("[{batch}] for a batch of {batch}"))
        } else {
            fail(
                "loss shape",
                format!(
                    "returned shape {:?}, expected [{batch}] (one value per sample)",
                    first.size()
                ),
            )
        });
        let v = values(&first);
        let bad = v.iter().filter(|x| !x.is_finite()).count();
        let is_float = matches!(
            first.kind(),
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        );
        self.lines.push(if !is_float {
            fail(
                "loss finite",
                format!("a {:?} tensor, expected float", first.kind()),
            )
        } else if bad > 0 || v.is_empty() {
            fail(
                "loss finite",
                format!("{bad} of {} values are NaN or infinite: {v:?}", v.len()),
            )
        } else {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            pass(
                "loss finite",
                format!("{} values in [{lo:.4}, {hi:.4}]", v.len()),
            )
        });
        self.lines.push(if first.requires_grad() {
            pass(
                "loss attached",
                "the loss is part of the prediction's autograd graph",
            )
        } else {
            fail(
                "loss attached",
                "detached from the prediction: no gradient can flow through it",
            )
        });
        let sound = shape_ok && bad == 0 && is_float;
        Some((first, sound))
    }

    fn determinism(&mut self, pred: &Tensor, target: &Tensor, first: &Tensor) {
        let line = match self.loss(pred, target) {
            Err(e) => fail("deterministic", format!("the second call failed: {e}")),
            Ok(again) if again.size() != first.size() => fail(
                "deterministic",
                format!("shape {:?} then {:?}", first.size(), again.size()),
            ),
            // NaN equals NaN here: a NaN loss fails its own line, not this one.
            Ok(again) if again.detach().allclose(&first.detach(), 0.0, 0.0, true) => pass(
                "deterministic",
                "the same input twice gave bitwise equal losses",
            ),
            Ok(again) => fail(
                "deterministic",
                format!(
                    "the same input twice differs by up to {:e}",
                    max_diff(&again.detach(), &first.detach())
                ),
            ),
        };
        self.lines.push(line);
    }

    /// Permuting the batch permutes the losses, and changing one sample
    /// leaves the others' losses alone.
    pub(crate) fn per_sample(&mut self, c: &Case, first: &Tensor) {
        let batch = c.pred.size()[0];
        if batch < 2 {
            self.lines
                .push(skip("per-sample", "skipped: needs a batch of 2 or more"));
            return;
        }
        let perm = Tensor::arange(batch, (Kind::Int64, c.pred.device())).flip([0]);
        let expected = first.detach().index_select(0, &perm);
        let tol = |t: &Tensor| 1e-5 * (1.0 + t.abs().max().double_value(&[]));
        let permuted = self.loss(
            &c.pred.index_select(0, &perm),
            &c.target.index_select(0, &perm),
        );
        let line = match permuted {
            Err(e) => fail(
                "per-sample",
                format!("loss of the permuted batch failed: {e}"),
            ),
            Ok(p) if p.size() != expected.size() => fail(
                "per-sample",
                format!("the permuted batch gave shape {:?}", p.size()),
            ),
            Ok(p) => {
                let d_perm = max_diff(&p.detach(), &expected);
                let changed = c.pred.copy();
                let _ = changed
                    .get(0)
                    .g_add_(&(Tensor::randn_like(&changed.get(0)) * 3.0));
                match self.loss(&changed, &c.target) {
                    Err(e) => fail("per-sample", format!("loss of a changed batch failed: {e}")),
                    Ok(q) if q.size() != expected.size() => fail(
                        "per-sample",
                        format!("a changed batch gave shape {:?}", q.size()),
                    ),
                    Ok(q) => {
                        let others = first.detach().narrow(0, 1, batch - 1);
                        let d_other = max_diff(&q.detach().narrow(0, 1, batch - 1), &others);
                        let t = tol(&first.detach());
                        if d_perm > t {
                            fail(
                                "per-sample",
                                format!(
                                    "permuting the batch does not permute the losses (off by {d_perm:.3e})"
                                ),
                            )
                        } else if d_other > t {
                            fail(
                                "per-sample",
                                format!(
                                    "changing sample 0 moved the other samples' losses by {d_other:.3e}"
                                ),
                            )
                        } else {
                            pass(
                                "per-sample",
                                format!(
                                    "permuting the batch permutes the losses (diff {d_perm:.1e}); changing sample 0 \
                                     leaves the others (diff {d_other:.1e})"
                                ),
                            )
                        }
                    }
                }
            }
        };
        self.lines.push(line);
    }

    /// The autograd gradient of the summed loss w.r.t. the prediction against
    /// central differences at a few coordinates, in float64 when the plugin
    /// accepts it.
    fn gradient(&mut self, info: &TaskInfo, decoded: Option<&[Example]>) {
        let double = case(info, decoded, 2, 4, Kind::Double).ok().filter(|c| {
            let p = c.pred.set_requires_grad(true);
            matches!(self.sound_loss(&p, &c.target), Ok(l) if l.kind() == Kind::Double)
        });
        let (c, step, tol, precision) = match double {
            Some(c) => (c, 1e-6, 1e-5, "float64"),
            None => match case(info, decoded, 2, 4, Kind::Float) {
                Ok(c) => (c, 1e-2, 2e-2, "float32 (the plugin does not keep float64)"),
                Err(why) => {
                    self.lines.push(skip("gradient", why));
                    return;
                }
            },
        };
        let pred = c.pred.set_requires_grad(true);
        let analytic = match self.sound_loss(&pred, &c.target) {
            Ok(l) => Tensor::run_backward(&[l.sum(Kind::Double)], &[&pred], false, false)
                .remove(0)
                .flatten(0, -1),
            Err(e) => {
                self.lines.push(fail("gradient", e));
                return;
            }
        };
        let n = pred.numel() as i64;
        let mut worst: f64 = 0.0;
        let mut scale: f64 = 0.0;
        // Half the coordinates spread over the prediction, half where the
        // analytic gradient is largest: a sparse loss (a few landmarks, a few
        // boxes) is flat almost everywhere, and a check there proves nothing.
        let spread = (0..FD_COORDS / 2).map(|k| (k * n / (FD_COORDS / 2) + k) % n);
        let steepest = analytic
            .abs()
            .topk(FD_COORDS - FD_COORDS / 2, 0, true, false)
            .1;
        let coords: Vec<i64> = spread
            .chain((0..steepest.numel() as i64).map(|j| steepest.int64_value(&[j])))
            .collect();
        for &i in &coords {
            let at = |sign: f64| {
                let d = c.pred.zeros_like();
                let _ = d.view([-1]).narrow(0, i, 1).fill_(sign * step);
                c.pred.detach() + d
            };
            let plus = self.loss(&at(1.0), &c.target);
            let minus = self.loss(&at(-1.0), &c.target);
            let (plus, minus) = match (plus, minus) {
                (Ok(p), Ok(m)) => (p, m),
                (Err(e), _) | (_, Err(e)) => {
                    self.lines.push(fail("gradient", e));
                    return;
                }
            };
            let numeric = (plus.sum(Kind::Double).double_value(&[])
                - minus.sum(Kind::Double).double_value(&[]))
                / (2.0 * step);
            let a = analytic.double_value(&[i]);
            worst = worst.max((a - numeric).abs());
            scale = scale.max(numeric.abs()).max(a.abs());
        }
        let rel = worst / scale.max(1e-6);
        let detail = format!(
            "{precision}: largest error {rel:.2e} relative to the largest gradient {scale:.2e} over {FD_COORDS} \
             coordinates (step {step:e}, tolerance {tol:e})"
        );
        self.lines
            .push(if rel.is_finite() && rel <= tol && scale > 0.0 {
                pass("gradient", detail)
            } else if scale == 0.0 {
                fail(
                    "gradient",
                    format!("{precision}: the gradient is zero at every coordinate tried"),
                )
            } else {
                fail("gradient", detail)
            });
    }

    /// A gradient reaches the input through a one-layer conv net.
    fn input_gradient(&mut self, info: &TaskInfo, c: &Case) {
        let size = c.pred.size();
        let x = Tensor::rand(
            [size[0], info.input_channels as i64, size[2], size[3]],
            (Kind::Float, Device::Cpu),
        )
        .set_requires_grad(true);
        let w = Tensor::randn(
            [size[1], info.input_channels as i64, 3, 3],
            (Kind::Float, Device::Cpu),
        ) * 0.5;
        let pred = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let line = match self.sound_loss(&pred, &c.target) {
            Err(e) => fail("input gradient", e),
            Ok(l) => {
                let g = Tensor::run_backward(&[l.sum(Kind::Float)], &[&x], false, false).remove(0);
                let finite = g.isfinite().all().int64_value(&[]) == 1;
                let norm = g.norm().double_value(&[]);
                if !finite {
                    fail("input gradient", "non-finite gradient w.r.t. the input")
                } else if norm == 0.0 {
                    fail(
                        "input gradient",
                        "zero gradient w.r.t. the input of a conv net",
                    )
                } else {
                    pass(
                        "input gradient",
                        format!("through a 3x3 conv net: |grad x| = {norm:.3e}, all finite"),
                    )
                }
            }
        };
        self.lines.push(line);
    }

    /// A few normalised gradient steps on the prediction lower the mean loss.
    fn descent(&mut self, c: &Case) {
        let mut p = c.pred.detach().copy();
        let mut first = None;
        let mut last = 0.0;
        for _ in 0..=DESCENT_STEPS {
            let leaf = p.set_requires_grad(true);
            let l = match self.sound_loss(&leaf, &c.target) {
                Ok(l) => l.mean(Kind::Double),
                Err(e) => {
                    self.lines.push(fail("loss decreases", e));
                    return;
                }
            };
            last = l.double_value(&[]);
            first.get_or_insert(last);
            let g = Tensor::run_backward(&[&l], &[&leaf], false, false).remove(0);
            let rms = g.square().mean(Kind::Double).sqrt().double_value(&[]);
            if rms == 0.0 || !rms.is_finite() {
                break;
            }
            p = leaf.detach() - g * (0.1 / rms);
        }
        let first = first.unwrap_or(last);
        let detail = format!(
            "mean loss {first:.4} -> {last:.4} after {DESCENT_STEPS} gradient steps on the prediction"
        );
        self.lines.push(if last < first {
            pass("loss decreases", detail)
        } else {
            fail("loss decreases", detail)
        });
    }

    pub(crate) fn metrics_line(&mut self, c: &Case) {
        let r = self.plugin.metrics(&c.pred, &c.target);
        self.stats.push(self.plugin.last_call());
        let names = &self.plugin.info().metric_names;
        let line = match r {
            Err(e) => fail("metrics", e.to_string()),
            Ok(m) => match names.iter().find(|n| !m.iter().any(|x| &x.name == *n)) {
                Some(missing) => fail(
                    "metrics",
                    format!("describe lists `{missing}` but metrics did not return it"),
                ),
                None => pass(
                    "metrics",
                    format!(
                        "{} finite value(s): {}",
                        m.len(),
                        m.iter()
                            .take(3)
                            .map(|m| format!("{} {:.4}", m.name, m.value))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            },
        };
        self.lines.push(line);
    }

    /// The costliest calls against the limits.
    fn limits_line(&mut self) {
        let limits = self.plugin.limits().clone();
        let slowest = self
            .stats
            .iter()
            .max_by_key(|s| s.elapsed)
            .copied()
            .unwrap_or_default();
        let live = self
            .stats
            .iter()
            .map(|s| s.usage.tensors.peak_live)
            .max()
            .unwrap_or(0);
        let elements = self
            .stats
            .iter()
            .map(|s| s.usage.tensors.elements)
            .max()
            .unwrap_or(0);
        let memory = self.stats.iter().filter_map(|s| s.usage.memory_bytes).max();
        let deadline = Duration::from_millis(limits.call_timeout_ms);
        let mut problems = Vec::new();
        if limits.call_timeout_ms > 0 && slowest.elapsed >= deadline {
            problems.push(format!(
                "{} ran {} ms, deadline {} ms",
                slowest.call,
                slowest.elapsed.as_millis(),
                limits.call_timeout_ms
            ));
        }
        if live > limits.tensors.max_live {
            problems.push(format!(
                "{live} live tensors, limit {}",
                limits.tensors.max_live
            ));
        }
        if elements > limits.tensors.max_elements_per_call {
            problems.push(format!(
                "{elements} tensor elements in a call, limit {}",
                limits.tensors.max_elements_per_call
            ));
        }
        if let Some(m) = memory.filter(|&m| m > limits.max_memory_mib << 20) {
            problems.push(format!(
                "{} MiB of linear memory, cap {}",
                m >> 20,
                limits.max_memory_mib
            ));
        }
        let memory = match memory {
            Some(m) => format!(
                "linear memory {:.1} of {} MiB",
                m as f64 / (1 << 20) as f64,
                limits.max_memory_mib
            ),
            None => "memory not measured (native)".into(),
        };
        let detail = format!(
            "{} calls; slowest {} {:.1} ms of {}; {memory}; peak {live} live tensors of {}; peak {elements} elements per call of {}",
            self.stats.len(),
            slowest.call,
            slowest.elapsed.as_secs_f64() * 1e3,
            if limits.call_timeout_ms > 0 {
                format!("{} ms", limits.call_timeout_ms)
            } else {
                "no deadline".into()
            },
            limits.tensors.max_live,
            limits.tensors.max_elements_per_call
        );
        self.lines.push(if problems.is_empty() {
            pass("limits", detail)
        } else {
            fail("limits", format!("{}; {detail}", problems.join("; ")))
        });
    }
}
