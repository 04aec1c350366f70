//! A worker process: one implementation of amat's training steps (the
//! built-in loss, the native plugin or the wasm plugin), started from the
//! shared state directory, answering the driver's JSON commands one per line.
//! Each implementation runs in its own process so that its peak memory is its own.

use amat_host::config::{AmatRule, Method, Precision, RunConfig, SearchKind};
use amat_host::data::{Dataset, Sample};
use amat_host::model::Net;
use amat_host::plugin::Plugin;
use amat_host::reference::{read_dataset, read_weights};
use amat_host::train::Trainer;
use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Minor page faults of this process so far (Linux `/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time this process has used, in seconds (all its threads): less
/// disturbed by other processes on a shared machine than wall-clock time.
fn cpu_seconds() -> f64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut t = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer it is given.
    let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    if rc == 0 {
        t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
    } else {
        f64::NAN
    }
}

/// The bench's method names: `amat` trains with the config's rule (the
/// authors' `reference` by default), `amat-b` with the `boundary` rule.
pub fn parse_method(s: &str) -> Result<(Method, Option<AmatRule>)> {
    Ok(match s {
        "std" => (Method::Std, None),
        "sat" => (Method::Sat, None),
        "amat" => (Method::Amat, None),
        "amat-b" => (Method::Amat, Some(AmatRule::Boundary)),
        _ => bail!("unknown method `{s}` (std, sat, amat, amat-b)"),
    })
}

/// An amat worker's options after its loss kind (`builtin-rf`, `wasm-bf16`):
/// `rf` the boundary search by regula falsi, `bf16` bf16 compute.
pub fn apply_options(cfg: &mut RunConfig, options: &[&str]) -> Result<()> {
    for o in options {
        match *o {
            "rf" => cfg.amat.search = SearchKind::RegulaFalsi,
            "bf16" => cfg.train.precision = Precision::Bf16,
            _ => bail!("unknown worker option `{o}` (rf, bf16)"),
        }
    }
    Ok(())
}

/// The CPU's model name (`/proc/cpuinfo`).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, m)| m.trim().to_string())
}

struct Worker {
    cfg: RunConfig,
    plugin: Plugin,
    device: Device,
    data: Dataset,
    /// The weights every timed epoch starts from.
    init: VarStore,
    margins: Vec<f32>,
}

impl Worker {
    /// One epoch of `method` over `data` from the initial weights (and
    /// margins, for AMAT) with batch size `batch`.
    fn epoch(
        &mut self,
        (method, rule): (Method, Option<AmatRule>),
        data: &Dataset,
        batch: usize,
        margins: &[f32],
    ) -> Result<Value> {
        let mut cfg = self.cfg.clone();
        cfg.run.method = Some(method);
        if let Some(rule) = rule {
            cfg.amat.rule = rule;
        }
        cfg.train.batch_size = batch;
        let mut t = Trainer::new(&cfg, &self.plugin, self.device, data.len())?;
        t.vs.copy(&self.init)?;
        if let Some(m) = &mut t.margins {
            m.values = margins.to_vec();
        }
        let (faults, cpu) = (minor_faults(), cpu_seconds());
        let r = t.train_epoch(&mut self.plugin, data, &ProgressBar::hidden())?;
        let (faults, cpu) = (minor_faults() - faults, cpu_seconds() - cpu);
        Ok(json!({
            "seconds": r.seconds,
            "cpu_seconds": cpu,
            "steps": data.len().div_ceil(batch),
            "clean_loss": r.clean_loss,
            "adv_loss": r.adv_loss.unwrap_or(0.0),
            "search_forwards": r.search_forwards,
            "minor_faults": faults,
            "peak_rss_mib": peak_rss_mib(),
        }))
    }

    fn command(&mut self, cmd: &Value) -> Result<Option<Value>> {
        let field = |k: &str| {
            cmd.get(k)
                .with_context(|| format!("command without `{k}`: {cmd}"))
        };
        let int = |k: &str| -> Result<usize> {
            Ok(field(k)?
                .as_u64()
                .with_context(|| format!("`{k}` is not a count"))? as usize)
        };
        match field("cmd")?.as_str().unwrap_or("") {
            "quit" => Ok(None),
            "rss" => Ok(Some(json!({ "peak_rss_mib": peak_rss_mib() }))),
            "epoch" => {
                let method = parse_method(field("method")?.as_str().unwrap_or(""))?;
                let data = std::mem::take(&mut self.data);
                let (batch, margins) = (self.cfg.train.batch_size, self.margins.clone());
                let out = self.epoch(method, &data, batch, &margins);
                self.data = data;
                out.map(Some)
            }
            "scale" => {
                let method = parse_method(field("method")?.as_str().unwrap_or(""))?;
                let (size, batch, reps) = (int("size")? as i64, int("batch")?, int("reps")?);
                tch::manual_seed(int("seed")? as i64);
                let c = self.plugin.info().input_channels as i64;
                let side = vec![size; self.cfg.model.dims];
                let image: Vec<i64> = [c].into_iter().chain(side.iter().copied()).collect();
                let samples = (0..batch)
                    .map(|i| Sample {
                        id: format!("scale-{i}"),
                        image: Tensor::rand(image.as_slice(), (Kind::Float, Device::Cpu)),
                        target: Tensor::randint(2, side.as_slice(), (Kind::Float, Device::Cpu)),
                    })
                    .collect();
                let data = Dataset::new("scale", samples);
                let margins = vec![self.cfg.sat.eps as f32; batch];
                let (mut seconds, mut cpu) = (Vec::new(), Vec::new());
                for _ in 0..reps {
                    let r = self.epoch(method, &data, batch, &margins)?;
                    seconds.push(r["seconds"].clone());
                    cpu.push(r["cpu_seconds"].clone());
                }
                Ok(Some(
                    json!({ "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": peak_rss_mib() }),
                ))
            }
            other => bail!("unknown command `{other}`"),
        }
    }
}

/// Serves commands from stdin until `quit` or end of input. `options` as
/// for [`apply_options`].
pub fn run(plugin: Plugin, state: &Path, device: Device, options: &[&str]) -> Result<()> {
    let mut cfg = RunConfig::read(&state.join("run.toml")).map_err(anyhow::Error::msg)?;
    apply_options(&mut cfg, options)?;
    tch::set_num_threads(cfg.run.threads as i32);
    let config: Value = serde_json::from_str(&std::fs::read_to_string(state.join("config.json"))?)?;
    let margins: Vec<f32> = serde_json::from_value(config["amat"]["margins"].clone())?;
    let info = plugin.info().clone();
    let init = VarStore::new(device);
    let _net = Net::new(
        &init.root(),
        &cfg.model,
        info.input_channels as i64,
        info.output_channels as i64,
    );
    read_weights(&init, &state.join("weights.npz"))?;
    let data = read_dataset(&state.join("data.npz"))?;
    let mut w = Worker {
        cfg,
        plugin,
        device,
        data,
        init,
        margins,
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        json!({
            "ready": true, "threads": tch::get_num_threads(), "cpu": cpu_model(),
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        })
    )?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let cmd: Value = serde_json::from_str(&line?)?;
        match w.command(&cmd) {
            Ok(Some(reply)) => writeln!(out, "{reply}")?,
            Ok(None) => {
                writeln!(out, "{}", json!({ "peak_rss_mib": peak_rss_mib() }))?;
                out.flush()?;
                return Ok(());
            }
            Err(e) => writeln!(out, "{}", json!({ "error": format!("{e:#}") }))?,
        }
        out.flush()?;
    }
    Ok(())
}
