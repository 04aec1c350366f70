//! The study file: a base run config, seeds, and arms that each set a method
//! and override keys of the base. Overrides are applied to the base's TOML
//! before it becomes a `RunConfig`, so any key the config knows works here.

use crate::app::resolve_paths;
use crate::config::{Method, RunConfig};
use crate::model::DeviceChoice;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudyFile {
    study: StudySection,
    #[serde(default)]
    arm: Vec<ArmSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudySection {
    name: String,
    /// A run config, relative to the study file.
    base: PathBuf,
    seeds: Vec<u64>,
    /// Default `runs/study-<name>`, relative to the current folder.
    out: Option<PathBuf>,
    /// Default: the first metric of the runs' curves.
    metric: Option<String>,
    /// The arm collapses are judged against; default: the first STD arm.
    reference: Option<String>,
    /// The task plugin, relative to the study file; default: the base's.
    plugin: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArmSpec {
    name: String,
    /// Default: run.method of the base config.
    method: Option<Method>,
    /// Dotted keys of the run config and their values.
    #[serde(default)]
    set: toml::Table,
}

/// What the command line adds to a study.
#[derive(Clone, Debug, Default)]
pub struct StudyOptions {
    pub plugin: Option<PathBuf>,
    pub device: Option<DeviceChoice>,
    pub out: Option<PathBuf>,
    /// Only reading finished runs: the plugin and data need not exist.
    pub report_only: bool,
}

/// One arm: a method and its overrides, one checked config per seed.
#[derive(Clone, Debug)]
pub struct Arm {
    pub name: String,
    /// Its folder name under the study's folder.
    pub slug: String,
    pub method: Method,
    /// `key = value` for each override, as written.
    pub set: Vec<String>,
}

/// One run of the grid.
#[derive(Clone, Debug)]
pub struct Cell {
    /// Index into `Study::arms`.
    pub arm: usize,
    pub seed: u64,
    pub dir: PathBuf,
    pub cfg: RunConfig,
}

#[derive(Clone, Debug)]
pub struct Study {
    pub file: PathBuf,
    pub name: String,
    pub out: PathBuf,
    pub seeds: Vec<u64>,
    pub metric: Option<String>,
    pub reference: Option<usize>,
    pub arms: Vec<Arm>,
    /// Seed-major: every arm of the first seed, then the next seed.
    pub cells: Vec<Cell>,
}

/// Lower-case letters and digits, other runs of characters as one `-`.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// The overrides as (dotted key, value): nested tables (`set = { sat = {
/// eps = 2 } }` or `set = { sat.eps = 2 }`) become dotted keys too.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if !t.is_empty() => flatten(&key, t, out),
            _ => out.push((key, v.clone())),
        }
    }
}

/// Sets the dotted `key` in `table`, creating the tables on its way.
fn apply(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{key}` is not a dotted key"));
    }
    let mut at = table;
    for (i, p) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = at
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(format!(
                    "`{}` is a value, not a section",
                    parts[..=i].join(".")
                ));
            }
        };
    }
    at.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn to_config(table: &toml::Table) -> Result<RunConfig, String> {
    let text = toml::to_string(table).map_err(|e| e.to_string())?;
    toml::from_str(&text).map_err(|e: toml::de::Error| e.message().trim().to_string())
}

/// Keys an arm may not set, and why.
fn forbidden(key: &str) -> Option<&'static str> {
    if key == "eval" || key.starts_with("eval.") {
        Some("every arm is evaluated under the base config's [eval]; change it there")
    } else if key == "run.seed" {
        Some("seeds come from study.seeds")
    } else if key == "run.method" {
        Some("set the arm's `method` instead")
    } else {
        None
    }
}

fn relative_to(file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

impl Study {
    /// Reads and checks the whole grid: every arm's config for every seed
    /// parses and validates before any run starts.
    pub fn load(file: &Path, opts: &StudyOptions) -> Result<Study> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read study {}", file.display()))?;
        let spec: StudyFile = toml::from_str(&text).map_err(|e: toml::de::Error| {
            let at = e
                .span()
                .map(|s| format!(" line {}", text[..s.start].matches('\n').count() + 1))
                .unwrap_or_default();
            anyhow::anyhow!("study {}{at}: {}", file.display(), e.message().trim())
        })?;
        let s = &spec.study;
        let who = format!("study {}", file.display());
        if s.name.trim().is_empty() {
            bail!("{who}: study.name is empty");
        }
        if s.seeds.is_empty() {
            bail!("{who}: study.seeds is empty");
        }
        if let Some((_, d)) = s
            .seeds
            .iter()
            .enumerate()
            .find(|(i, x)| s.seeds[..*i].contains(*x))
        {
            bail!("{who}: seed {d} is listed twice");
        }
        if spec.arm.is_empty() {
            bail!("{who}: no [[arm]]");
        }
        let base_path = relative_to(file, &s.base);
        let base_text = std::fs::read_to_string(&base_path)
            .with_context(|| format!("{who}: cannot read base config {}", base_path.display()))?;
        let base: toml::Table = base_text.parse().map_err(|e: toml::de::Error| {
            anyhow::anyhow!(
                "{who}: base config {}: {}",
                base_path.display(),
                e.message().trim()
            )
        })?;
        to_config(&base)
            .map_err(|e| anyhow::anyhow!("{who}: base config {}: {e}", base_path.display()))?;
        let plugin = opts
            .plugin
            .clone()
            .or_else(|| s.plugin.as_ref().map(|p| relative_to(file, p)))
            .map(|p| std::path::absolute(&p).unwrap_or(p));
        let out = opts
            .out
            .clone()
            .or_else(|| s.out.clone())
            .unwrap_or_else(|| PathBuf::from("runs").join(format!("study-{}", slug(&s.name))));

        let mut arms: Vec<Arm> = Vec::new();
        let mut tables = Vec::new();
        for a in &spec.arm {
            let arm = format!("{who}, arm `{}`", a.name);
            let slug = slug(&a.name);
            if slug.is_empty() {
                bail!("{arm}: the name needs a letter or digit");
            }
            if let Some(other) = arms.iter().find(|o| o.slug == slug) {
                bail!(
                    "{arm}: its folder `{slug}` is also arm `{}`'s; rename one",
                    other.name
                );
            }
            let mut set = Vec::new();
            flatten("", &a.set, &mut set);
            let mut table = base.clone();
            for (key, value) in &set {
                if let Some(why) = forbidden(key) {
                    bail!("{arm}: cannot set `{key}`: {why}");
                }
                // Each key alone on the base, so an error names its key.
                let mut alone = base.clone();
                apply(&mut alone, key, value.clone()).map_err(|e| anyhow::anyhow!("{arm}: {e}"))?;
                to_config(&alone).map_err(|e| anyhow::anyhow!("{arm}, key `{key}`: {e}"))?;
                apply(&mut table, key, value.clone()).map_err(|e| anyhow::anyhow!("{arm}: {e}"))?;
            }
            let combined = to_config(&table).map_err(|e| anyhow::anyhow!("{arm}: {e}"))?;
            let Some(method) = a.method.or(combined.run.method) else {
                bail!("{arm}: no method: set `method = \"std\"` (or sat, amat)");
            };
            arms.push(Arm {
                name: a.name.clone(),
                slug,
                method,
                set: set.iter().map(|(k, v)| format!("{k} = {v}")).collect(),
            });
            tables.push(table);
        }
        let reference = match &s.reference {
            Some(r) => Some(arms.iter().position(|a| &a.name == r).with_context(|| {
                format!("{who}: study.reference `{r}` is not the name of an arm")
            })?),
            None => arms.iter().position(|a| a.method == Method::Std),
        };

        let mut cells = Vec::new();
        for &seed in &s.seeds {
            for (i, (arm, table)) in arms.iter().zip(&tables).enumerate() {
                let at = format!("{who}, arm `{}`, seed {seed}", arm.name);
                let mut cfg = to_config(table).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
                cfg.run.method = Some(arm.method);
                cfg.run.seed = seed;
                resolve_paths(&mut cfg, &base_path);
                if let Some(p) = &plugin {
                    cfg.run.plugin = Some(p.clone());
                }
                if let Some(d) = opts.device {
                    cfg.run.device = d;
                }
                if !opts.report_only {
                    cfg.validate().map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
                }
                cells.push(Cell {
                    arm: i,
                    seed,
                    dir: out.join(&arm.slug).join(format!("seed-{seed}")),
                    cfg,
                });
            }
        }
        Ok(Study {
            file: file.to_path_buf(),
            name: s.name.clone(),
            out,
            seeds: s.seeds.clone(),
            metric: s.metric.clone(),
            reference,
            arms,
            cells,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_dotted_keys() {
        assert_eq!(slug("SAT eps 0.5, beta 1"), "sat-eps-0-5-beta-1");
        assert_eq!(slug("  AMAT (ref) "), "amat-ref");
        let mut t: toml::Table = "[sat]\neps = 1.0\n[train]\nepochs = 3\n".parse().unwrap();
        apply(&mut t, "sat.eps", toml::Value::Float(2.0)).unwrap();
        apply(&mut t, "amat.rule", toml::Value::String("boundary".into())).unwrap();
        assert_eq!(t["sat"]["eps"].as_float(), Some(2.0));
        assert_eq!(t["amat"]["rule"].as_str(), Some("boundary"));
        let err = apply(&mut t, "train.epochs.x", toml::Value::Integer(1)).unwrap_err();
        assert_eq!(err, "`train.epochs` is a value, not a section");
        let mut flat = Vec::new();
        let nested: toml::Table = "sat = { eps = 2.0 }\n\"train.beta\" = 1.0\n"
            .parse()
            .unwrap();
        flatten("", &nested, &mut flat);
        let keys: Vec<&str> = flat.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["sat.eps", "train.beta"]);
    }
}
