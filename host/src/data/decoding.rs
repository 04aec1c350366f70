//! Decoding cases: one plugin `decode` call per case, by N worker threads,
//! each with its own plugin instance (an instance is not shareable), each
//! case validated and written to the per-case cache by the worker that
//! decoded it. A case whose cache file is present under its key is not
//! decoded again. A failing case is reported with its name; the others go on.

use super::cache;
use super::manifest::FileRecord;
use super::validate::check_example;
use crate::plugin::{Plugin, SandboxLimits};
use amat_plugin_sdk::{DecodeRequest, File, TaskInfo};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One decode call to make.
#[derive(Clone, Debug)]
pub struct Job {
    pub case: String,
    /// Each file with the name the plugin sees it under.
    pub files: Vec<(String, PathBuf)>,
    /// The options exactly as the plugin gets them.
    pub options: serde_json::Value,
    /// `options.case`, kept in the manifest.
    pub describe: Option<serde_json::Value>,
}

/// A case decoded now or found in the cache.
#[derive(Clone, Debug)]
pub struct Done {
    pub case: String,
    pub files: Vec<FileRecord>,
    pub describe: Option<serde_json::Value>,
    /// Relative to the dataset folder.
    pub cache: PathBuf,
    pub key: String,
    pub summary: cache::Summary,
    pub from_cache: bool,
}

/// The plugin every worker loads, and where the cache lives.
pub struct Decoder<'a> {
    pub plugin: &'a Path,
    pub plugin_sha256: &'a str,
    pub info: &'a TaskInfo,
    pub limits: SandboxLimits,
    /// The dataset folder (the cache is under it).
    pub dir: &'a Path,
    /// The plugin returns raw intensities; the host normalises them.
    pub raw: bool,
}

impl Decoder<'_> {
    /// Runs every job on `jobs` threads; results in job order.
    pub fn run(&self, jobs: &[Job], threads: usize, progress: bool) -> Vec<Result<Done, String>> {
        let bar = if progress {
            ProgressBar::with_draw_target(Some(jobs.len() as u64), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "decoding [{bar:30}] {pos}/{len} cases, {per_sec}, ETA {eta} {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<Done, String>>>> = Mutex::new(vec![None; jobs.len()]);
        std::thread::scope(|s| {
            for _ in 0..threads.clamp(1, jobs.len().max(1)) {
                s.spawn(|| {
                    // Loaded at the first case that is not in the cache.
                    let mut plugin: Option<Plugin> = None;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        let r = self.one(job, &mut plugin);
                        if let Err(e) = &r {
                            bar.println(format!("case `{}` failed: {}", job.case, one_line(e)));
                        }
                        results.lock().expect("no worker panics holding it")[i] = Some(r);
                        bar.inc(1);
                    }
                });
            }
        });
        bar.finish_and_clear();
        results
            .into_inner()
            .expect("no worker panicked")
            .into_iter()
            .map(|r| r.expect("every job ran"))
            .collect()
    }

    fn one(&self, job: &Job, plugin: &mut Option<Plugin>) -> Result<Done, String> {
        let mut records = Vec::with_capacity(job.files.len());
        let mut files = Vec::with_capacity(job.files.len());
        for (name, path) in &job.files {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let name = name.clone();
            if files.iter().any(|f: &File| f.name == name) {
                return Err(format!("{}: two files are named `{name}`", path.display()));
            }
            use sha2::Digest;
            records.push(FileRecord {
                name: name.clone(),
                path: path.clone(),
                bytes: bytes.len() as u64,
                sha256: format!("{:x}", sha2::Sha256::digest(&bytes)),
            });
            files.push(File { name, bytes });
        }
        let hashes: Vec<(String, String)> = records
            .iter()
            .map(|r| (r.name.clone(), r.sha256.clone()))
            .collect();
        let key = cache::key(self.plugin_sha256, &job.options, &hashes);
        let rel = cache::file_name(&job.case, &key);
        let path = self.dir.join(&rel);
        let done = |summary, from_cache| Done {
            case: job.case.clone(),
            files: records.clone(),
            describe: job.describe.clone(),
            cache: rel.clone(),
            key: key.clone(),
            summary,
            from_cache,
        };
        if let Ok(summary) = cache::summary(&path) {
            return Ok(done(summary, true));
        }
        if plugin.is_none() {
            *plugin = Some(
                Plugin::load(self.plugin, &self.limits)
                    .map_err(|e| format!("plugin {}: {e}", self.plugin.display()))?,
            );
        }
        let p = plugin.as_mut().expect("loaded");
        let examples = p
            .decode(&DecodeRequest {
                files,
                options: job.options.to_string(),
            })
            .map_err(|e| {
                // A trapped instance is not reused.
                *plugin = None;
                e.to_string()
            })?;
        for e in &examples {
            check_example(e, self.info, self.raw)?;
        }
        cache::write(&path, &examples).map_err(|e| format!("{e:#}"))?;
        let summary = cache::Summary {
            ids: examples.iter().map(|e| e.id.clone()).collect(),
            shapes: examples
                .iter()
                .map(|e| (e.image.shape.clone(), e.target.shape.clone()))
                .collect(),
        };
        Ok(done(summary, false))
    }
}

fn one_line(s: &str) -> String {
    crate::plugin::escape_controls(&s.split_whitespace().collect::<Vec<_>>().join(" "))
}
