//! The `amat-host` command line.

use crate::data::generate::Deform;
use crate::plugin::{Plugin, PluginKind, SandboxLimits};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "amat-host",
    version,
    about = "Adaptive-margin adversarial training for medical-image networks"
)]
pub struct Cli {
    /// Show what wasm plugins print (prefixed, escaped, cut; a few lines per call).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Inspect task plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Train a model with STD, SAT or AMAT, then evaluate its robustness.
    #[command(
        after_help = "Every config key and its default: amat-host run --help",
        after_long_help = concat!(
            "The config file (TOML; unknown keys are errors). Every key with its default, as in examples/run.toml:\n\n",
            include_str!("../../examples/run.toml")
        )
    )]
    Run(RunCommand),
    /// Robustness curve of a checkpoint (metric vs noise level, JSON + CSV + PNG).
    Eval(EvalCommand),
    /// Attack one sample of a checkpoint's data; save the noise and the predictions as .npy.
    Attack(AttackCommand),
    /// AMAT's adversarial judgement from a trained STD model: the per-sample
    /// score (and loss) distribution of a split and the thresholds it implies,
    /// printed and written as an [amat.judge] snippet (calibration.toml).
    Calibrate(CalibrateCommand),
    /// Compare finished runs: a table of a metric at every noise level and one plot.
    Compare(CompareCommand),
    /// Run a study: arms (a method and config overrides) x seeds, each run
    /// resumable; then mean ± sd over seeds in study.{md,json,csv} and plots.
    #[command(after_long_help = STUDY_HELP)]
    Study(StudyCommand),
    /// Prepare datasets: decode through the task plugin, split, cache.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Decode a dataset through the plugin, one call per case (one call for a
    /// single-volume spec), in parallel, into a per-case cache; split it (by
    /// case, or by slab for one volume); write DIR/manifest.json.
    Prepare(PrepareCommand),
    /// Write pseudo-subjects as an nnU-Net v2 raw folder: random elastic and
    /// affine deformations, bias fields, gamma and noise applied to real
    /// subjects (Colin27, MNI152 2009cAsym) and their AAL labels grouped into
    /// the segmentation classes. They are deformations of two real subjects,
    /// not new subjects.
    Generate(GenerateCommand),
}

#[derive(clap::Args, Debug)]
pub struct GenerateCommand {
    /// The subjects to deform (repeat or comma-separate).
    #[arg(long, value_enum, value_delimiter = ',', required = true)]
    pub source: Vec<crate::data::generate::SourceName>,
    /// Cases per source.
    #[arg(long)]
    pub cases: usize,
    /// The dataset folder to create (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Voxel size of the cases in mm [default: the atlas's 1 mm].
    #[arg(long)]
    pub spacing: Option<f64>,
    /// The fetched raw data (host/scripts/fetch-data.sh).
    #[arg(long, default_value = "data/raw")]
    pub raw: PathBuf,
    /// RMS displacement of the elastic field per axis, mm.
    #[arg(long, default_value_t = Deform::default().elastic_mm)]
    pub elastic_mm: f64,
    /// Smoothness of the elastic field (Gaussian sigma), mm.
    #[arg(long, default_value_t = Deform::default().elastic_sigma_mm)]
    pub elastic_sigma_mm: f64,
    /// Largest rotation about each axis, degrees.
    #[arg(long, default_value_t = Deform::default().rotate_deg)]
    pub rotate_deg: f64,
    /// Largest log scale change per axis.
    #[arg(long, default_value_t = Deform::default().scale)]
    pub scale: f64,
    /// Largest translation per axis, mm.
    #[arg(long, default_value_t = Deform::default().translate_mm)]
    pub translate_mm: f64,
    /// RMS of the log bias field.
    #[arg(long, default_value_t = Deform::default().bias)]
    pub bias: f64,
    /// Smoothness of the bias field (Gaussian sigma), mm.
    #[arg(long, default_value_t = Deform::default().bias_sigma_mm)]
    pub bias_sigma_mm: f64,
    /// Largest log gamma change of contrast.
    #[arg(long, default_value_t = Deform::default().gamma)]
    pub gamma: f64,
    /// Rician noise sd as a fraction of the bright end (drawn in 0.5..1.5 x this).
    #[arg(long, default_value_t = Deform::default().noise)]
    pub noise: f64,
}

#[derive(clap::Args, Debug)]
pub struct PrepareCommand {
    /// The task plugin (.wasm or native library).
    #[arg(long)]
    pub plugin: PathBuf,
    /// A data spec (TOML: name, files | dataset | [[cases]] | [case_glob],
    /// [decode] options, [split]), or a folder holding an nnU-Net v2 or MSD
    /// dataset.json (with an optional amat-data.toml beside it).
    #[arg(long)]
    pub spec: PathBuf,
    /// Output folder [default: data/prepared/<dataset name>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Plugin instances decoding cases in parallel [default: the number of cores].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Prepare the cases that decode and leave out (and list) those that fail.
    #[arg(long)]
    pub skip_failed: bool,
    /// K-fold cross-validation by case: fold K's held-out cases are the test split.
    #[arg(long, value_name = "K")]
    pub fold: Option<usize>,
    /// Number of folds [default: split.folds, 5].
    #[arg(long, value_name = "N")]
    pub folds: Option<usize>,
    /// Seed of the case shuffle [default: split.seed, 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// An nnU-Net style splits_final.json to take the folds from [default
    /// with --fold: the dataset folder's, if any, else made from the seed].
    #[arg(long, value_name = "FILE")]
    pub splits: Option<PathBuf>,
    /// Decode options as a JSON object, over the spec's [decode].
    #[arg(long, value_name = "JSON")]
    pub decode: Option<String>,
    /// Intensity normalisation, over the spec's [normalize] scheme: "field"
    /// (nnU-Net's, by modality: CT clipped to the training foreground's
    /// percentiles and z-scored with its statistics, MRI z-scored per case
    /// over non-zero voxels; the default for cases) or "plugin" (the
    /// plugin's own scaling; the only one for a single volume).
    #[arg(long, value_name = "SCHEME")]
    pub normalize: Option<String>,
    #[command(flatten)]
    pub limits: crate::plugin::LimitArgs,
}

#[derive(clap::Args, Debug)]
pub struct CompareCommand {
    /// Run folders (each with robustness.json, attacked alike).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where comparison.{md,csv,json,png} go.
    #[arg(long)]
    pub out: PathBuf,
    /// The metric compared [default: the first metric of the curves].
    #[arg(long)]
    pub metric: Option<String>,
}

const STUDY_HELP: &str = "The study file (TOML; unknown keys are errors):

  [study]
  name = \"segmentation\"
  base = \"segmentation-long.toml\"   # a run config, relative to this file
  seeds = [0, 1, 2]
  # out = \"runs/study-segmentation\" # default runs/study-<name>
  # metric = \"dice_mean\"            # default: the curves' first metric
  # reference = \"STD\"               # collapse flags against; default: the first std arm
  # plugin = \"../target/...wasm\"    # relative to this file; default: the base's run.plugin

  [[arm]]
  name = \"STD\"
  method = \"std\"

  [[arm]]
  name = \"SAT eps 2 beta 1\"
  method = \"sat\"
  set = { \"sat.eps\" = 2.0, \"train.beta\" = 1.0 }

`set` holds dotted keys of the run config, applied to the base before it is
read; eval.*, run.seed and run.method cannot be set. Runs go to
<out>/<arm name as a slug>/seed-<s>/; the same command again resumes
unfinished runs from their checkpoints and skips finished ones.";

#[derive(clap::Args, Debug)]
pub struct StudyCommand {
    /// The study file (TOML).
    pub study: PathBuf,
    /// The task plugin for every run [default: study.plugin, else the base's run.plugin].
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// cpu | cuda | auto for every run [default: the base's run.device].
    #[arg(long, value_enum)]
    pub device: Option<crate::model::DeviceChoice>,
    /// The study folder [default: study.out, else runs/study-<name>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only rebuild the report from the finished runs.
    #[arg(long)]
    pub report_only: bool,
    /// Stop each run it trains after this many epochs (with a checkpoint);
    /// the same command without it continues.
    #[arg(long, conflicts_with = "report_only")]
    pub stop_after: Option<usize>,
    /// Train each run even when the plugin fails the checks before training.
    #[arg(long)]
    pub skip_checks: bool,
}

#[derive(clap::Args, Debug)]
pub struct RunCommand {
    /// The task plugin (.wasm or native library); default: run.plugin of the config.
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// std | sat | amat; default: run.method of the config.
    #[arg(long, value_enum)]
    pub method: Option<crate::config::Method>,
    /// The run's config (TOML).
    #[arg(long, required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// The run folder to create [default: runs/<method>-<unix time>].
    #[arg(long, conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// cpu | cuda | auto [default: run.device of the config, else auto].
    #[arg(long, value_enum)]
    pub device: Option<crate::model::DeviceChoice>,
    /// Continue the run in this folder from its newest checkpoint.
    #[arg(long, conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    /// Stop after this many epochs (with a checkpoint); finish later with --resume.
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Train even when the plugin fails the checks before training (a fast
    /// part of `plugin check` on the first training batch: loss shape, finite
    /// values, per-sample independence, a gradient at the input, metric names).
    #[arg(long)]
    pub skip_checks: bool,
    /// Data-parallel: start this many workers on this machine (Gloo on CPU,
    /// NCCL on CUDA, one GPU each); train.batch_size is the global batch.
    /// Under torchrun (RANK, WORLD_SIZE, ... set) leave it out.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub nproc: u32,
    /// Data-parallel: seconds a worker waits for the others before it stops
    /// with an error [default: AMAT_DIST_TIMEOUT, else 300].
    #[arg(long)]
    pub dist_timeout: Option<f64>,
}

#[derive(clap::Args, Debug)]
pub struct CheckpointOptions {
    /// A run folder (its newest checkpoint) or a checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The task plugin; default: run.plugin of the checkpoint's config.
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// A config whose [eval] and [data] replace the checkpoint's ([model] must match).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// cpu | cuda | auto [default: run.device of the config].
    #[arg(long, value_enum)]
    pub device: Option<crate::model::DeviceChoice>,
    /// Where the files go [default: a folder in the run folder].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct EvalCommand {
    #[command(flatten)]
    pub checkpoint: CheckpointOptions,
}

#[derive(clap::Args, Debug)]
pub struct AttackCommand {
    #[command(flatten)]
    pub checkpoint: CheckpointOptions,
    /// Index of the sample in the split.
    #[arg(long)]
    pub sample: usize,
    /// Noise level, in units of eval.attack.norm.
    #[arg(long)]
    pub eps: f64,
    /// train | val | test.
    #[arg(long, default_value = "test")]
    pub split: String,
}

#[derive(clap::Args, Debug)]
pub struct CalibrateCommand {
    #[command(flatten)]
    pub checkpoint: CheckpointOptions,
    /// The split scored: train (the authors' choice) | val | test.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Set each threshold where this share of the split is judged wrong on
    /// clean input, instead of at the mean (the authors' choice).
    #[arg(long)]
    pub wrong_share: Option<f64>,
    /// A score to calibrate (repeatable; `loss` for the loss) [default: every
    /// score the plugin describes].
    #[arg(long = "score")]
    pub scores: Vec<String>,
}

impl From<CheckpointOptions> for crate::app::evaluate::CheckpointArgs {
    fn from(o: CheckpointOptions) -> Self {
        Self {
            checkpoint: o.checkpoint,
            plugin: o.plugin,
            config: o.config,
            device: o.device,
            out: o.out,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Write a new task plugin crate (outside this repository) that builds
    /// for wasm32-wasip2 and as a native library and passes `plugin check`.
    New {
        /// The task's name: lowercase letters, digits and `_` or `-`.
        name: String,
        /// The crate's folder [default: ./NAME].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Load a plugin (.wasm component or native .so) and print what it describes.
    Info {
        /// The plugin file.
        plugin: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Load a plugin under the sandbox's limits and run the check battery on
    /// it, one line per check; exit 0 only when every check passes.
    Check {
        /// The plugin file.
        plugin: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Files for the plugin's decode (one sample); without, decode is skipped.
        #[arg(long = "sample", value_name = "FILE", num_args = 1..)]
        samples: Vec<PathBuf>,
        /// The decode options for the samples, JSON (a data spec's `[decode]`).
        #[arg(long, value_name = "JSON", default_value = "{}")]
        options: String,
        #[command(flatten)]
        limits: crate::plugin::LimitArgs,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = if cli.verbose {
        format!("warn,{}=debug", crate::plugin::OUTPUT_TARGET)
    } else {
        "warn".into()
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMAT_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// One line, control characters (a plugin's or a file's ANSI escapes) escaped.
fn one_line(s: &str) -> String {
    crate::plugin::escape_controls(&s.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(c) => {
            if c.nproc > 1 && crate::dist::worker_from_env()?.is_none() {
                crate::app::launch::launch(c.nproc as usize, c.dist_timeout)?;
                return Ok(ExitCode::SUCCESS);
            }
            let done = crate::app::run(&crate::app::RunArgs {
                config: c.config,
                plugin: c.plugin,
                method: c.method,
                out: c.out,
                device: c.device,
                resume: c.resume,
                stop_after: c.stop_after,
                skip_checks: c.skip_checks,
                dist_timeout: c.dist_timeout,
            })?;
            match &done.curve {
                _ if done.rank > 0 => {
                    println!("rank {}: training done (rank 0 reports)", done.rank)
                }
                Some(curve) => {
                    println!("run finished: {}", done.dir.display());
                    print_curve(curve);
                }
                None => println!(
                    "run stopped: {} (continue with --resume {0})",
                    done.dir.display()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Calibrate(c) => {
            let cal = crate::app::calibrate::calibrate(&crate::app::calibrate::CalibrateArgs {
                checkpoint: c.checkpoint.into(),
                split: c.split,
                wrong_share: c.wrong_share,
                scores: c.scores,
            })?;
            println!(
                "{} split, {} samples; threshold = {}",
                cal.split, cal.samples, cal.rule
            );
            println!(
                "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7}",
                "score", "mean", "sd", "min", "q25", "median", "max", "threshold", "wrong"
            );
            for s in &cal.scores {
                println!(
                    "{:<16} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>10.4} {:>6.1}%",
                    s.name,
                    s.mean,
                    s.sd,
                    s.min,
                    s.q25,
                    s.median,
                    s.max,
                    s.threshold,
                    100.0 * s.judged_wrong
                );
            }
            println!("\n{}", cal.snippet());
            println!("written: {}", cal.dir.join("calibration.toml").display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval(c) => {
            let (dir, curve) = crate::app::evaluate::evaluate(&c.checkpoint.into())?;
            println!("robustness curve: {}", dir.display());
            print_curve(&curve);
            Ok(ExitCode::SUCCESS)
        }
        Command::Attack(c) => {
            let r = crate::app::attack::attack(&crate::app::attack::AttackArgs {
                checkpoint: c.checkpoint.into(),
                split: c.split,
                sample: c.sample,
                eps: c.eps,
            })?;
            println!(
                "sample {} at eps {}: noise norm {:.4}",
                r.sample, r.eps, r.noise_norm
            );
            println!(
                "loss clean {:.4} -> attacked {:.4}",
                r.clean_loss, r.adversarial_loss
            );
            for (c, a) in r.clean_metrics.iter().zip(&r.adversarial_metrics) {
                println!(
                    "{:<16} clean {:.4} -> attacked {:.4}",
                    c.name, c.value, a.value
                );
            }
            println!("files: {}", r.dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Compare(c) => {
            let cmp = crate::app::compare::compare(&c.runs, c.metric.as_deref())?;
            crate::app::compare::write(&c.out, &cmp)?;
            print!("{}", crate::app::compare::markdown(&cmp));
            println!(
                "written: {}/comparison.{{md,csv,json,png}}",
                c.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Study(c) => {
            use crate::app::study::{self, Study, StudyOptions};
            let s = Study::load(
                &c.study,
                &StudyOptions {
                    plugin: c.plugin,
                    device: c.device,
                    out: c.out,
                    report_only: c.report_only,
                },
            )?;
            if !c.report_only {
                study::keep_spec(&s)?;
                let o = study::run(&s, c.stop_after, c.skip_checks)?;
                if !o.complete() {
                    println!(
                        "study stopped: {} of {} runs finished, {} stopped; the same command without --stop-after continues",
                        o.skipped + o.trained,
                        s.cells.len(),
                        o.stopped
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "study {}: {} run(s) trained, {} already finished",
                    s.name, o.trained, o.skipped
                );
            }
            let r = study::report::build(&s)?;
            study::report::write(&s, &r)?;
            print!("{}", study::report::markdown(&r));
            println!(
                "written: {}/study.{{md,json,csv}}, curves.png, clean-vs-robust.png",
                s.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Data(DataCommand::Generate(c)) => {
            let g = crate::data::generate::generate(&crate::data::generate::GenerateArgs {
                sources: c.source,
                cases: c.cases,
                out: c.out,
                seed: c.seed,
                spacing: c.spacing,
                raw: c.raw,
                deform: Deform {
                    elastic_mm: c.elastic_mm,
                    elastic_sigma_mm: c.elastic_sigma_mm,
                    rotate_deg: c.rotate_deg,
                    scale: c.scale,
                    translate_mm: c.translate_mm,
                    bias: c.bias,
                    bias_sigma_mm: c.bias_sigma_mm,
                    gamma: c.gamma,
                    noise: c.noise,
                },
                progress: true,
            })?;
            println!(
                "{} cases ({}), grid {:?}: {}",
                g.cases.len(),
                g.cases.first().map_or("", String::as_str),
                g.dims,
                g.dir.display()
            );
            println!(
                "they are deformations of real subjects, not new subjects (dataset.json says so)"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Data(DataCommand::Prepare(c)) => {
            let p = crate::data::prepare::prepare(&crate::data::prepare::PrepareArgs {
                plugin: c.plugin,
                spec: c.spec,
                out: c.out,
                jobs: c.jobs,
                skip_failed: c.skip_failed,
                fold: c.fold,
                folds: c.folds,
                seed: c.seed,
                splits: c.splits,
                decode: c.decode,
                normalize: c.normalize,
                limits: c.limits,
            })?;
            for slab in &p.slabs {
                println!(
                    "{:<5} {:>4} slices  {} {} {}..={}",
                    slab.split.name(),
                    slab.slices,
                    slab.source,
                    slab.axis,
                    slab.first,
                    slab.last
                );
            }
            for (split, n) in &p.case_counts {
                println!("{split:<5} {n:>4} cases");
            }
            for (case, why) in &p.skipped {
                eprintln!("skipped case `{case}`: {}", one_line(why));
            }
            let counts: Vec<String> = p.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("samples: {}", counts.join(", "));
            if let Some(n) = &p.normalization {
                let channels: Vec<String> = n
                    .channels
                    .iter()
                    .map(|c| format!("{} {}", c.modality, c.scheme))
                    .collect();
                println!(
                    "intensities: normalised by the host ({}); attacks clamp to [{:.3}, {:.3}]; eps in z-score units",
                    channels.join(", "),
                    n.range[0],
                    n.range[1]
                );
            }
            println!(
                "decoded {} of {} cases; {} from cache{} ({} jobs, {:.1} s decoding, {:.1} s in all); manifest: {}",
                p.decoded,
                p.cases,
                p.from_cache,
                if p.skipped.is_empty() {
                    String::new()
                } else {
                    format!("; {} skipped", p.skipped.len())
                },
                p.jobs,
                p.decode_seconds,
                p.total_seconds,
                p.manifest.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Check {
            plugin,
            json,
            samples,
            options,
            limits,
        }) => {
            let limits = limits.apply(SandboxLimits::default());
            limits.validate().map_err(anyhow::Error::msg)?;
            let report = crate::plugin::check::check(&plugin, &samples, &options, &limits);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            Ok(if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Plugin(PluginCommand::New { name, dir }) => {
            let made = crate::plugin::scaffold::new_plugin(&name, dir.as_deref())?;
            print!("{}", made.next_steps());
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Info { plugin, json }) => {
            let p = Plugin::load(&plugin, &SandboxLimits::default())?;
            let info = p.info();
            if json {
                println!("{}", serde_json::to_string_pretty(info)?);
            } else {
                let kind = match p.kind() {
                    PluginKind::Wasm => "wasm component (sandboxed)",
                    PluginKind::Native => "native library (trusted, not sandboxed)",
                    PluginKind::Builtin => "built into the host",
                };
                println!("plugin:          {}", plugin.display());
                println!("kind:            {kind}");
                println!("contract:        {}", p.contract());
                println!("task:            {} {}", info.name, info.version);
                println!("description:     {}", info.description);
                println!("input channels:  {}", info.input_channels);
                println!("output channels: {}", info.output_channels);
                println!("target kind:     {:?}", info.target_kind);
                println!("tau (AMAT):      {}", info.tau);
                println!(
                    "intensity range: [{}, {}]",
                    info.intensity_min, info.intensity_max
                );
                println!("metrics:         {}", info.metric_names.join(", "));
                let scores: Vec<String> = info
                    .scores
                    .iter()
                    .map(|s| {
                        let better = if s.higher_is_better {
                            "higher"
                        } else {
                            "lower"
                        };
                        format!("{} ({better} is better)", s.name)
                    })
                    .collect();
                println!(
                    "scores (AMAT):   {}",
                    if scores.is_empty() {
                        "none: judged by loss <= tau".to_string()
                    } else {
                        scores.join(", ")
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The curve as a small table on stdout.
fn print_curve(curve: &crate::eval::Curve) {
    let names: Vec<&str> = curve
        .metrics
        .iter()
        .map(|m| m.name.as_str())
        .take(4)
        .collect();
    println!(
        "{:>8} {:>10} {}",
        "eps",
        "loss",
        names.iter().map(|n| format!("{n:>12}")).collect::<String>()
    );
    for (i, eps) in curve.eps.iter().enumerate() {
        let values: String = curve
            .metrics
            .iter()
            .take(4)
            .map(|m| format!("{:>12.4}", m.values[i]))
            .collect();
        println!("{eps:>8} {:>10.4} {values}", curve.loss[i]);
    }
    let areas: String = curve
        .metrics
        .iter()
        .take(4)
        .map(|m| format!("{:>12.4}", m.area))
        .collect();
    println!("{:>8} {:>10} {areas}", "area", "");
}
