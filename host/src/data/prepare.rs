//! `amat-host data prepare`: decode a dataset through the task plugin, one
//! call per case (see [`super::decoding`]), into the per-case cache (see
//! [`super::cache`]); split it (slabs of one volume, or by case, see
//! [`super::case_split`]); write the manifest. And the loader that turns a
//! manifest back into splits, decoding again only the cases whose cache no
//! longer matches.

use super::cases::{self, Cases};
use super::decoding::{Decoder, Done, Job};
use super::manifest::{
    CaseRecord, CaseSplitRecord, DataSpec, FileRecord, Manifest, PluginRecord, SampleRecord,
    SliceId, Split, assign_splits,
};
use super::validate::{check_example, check_same_shapes};
use super::{Dataset, DiskSample, OnDisk, Sample, Splits, cache, case_split, normalize};
use crate::plugin::{LimitArgs, Plugin, SandboxLimits};
use amat_plugin_sdk::{DecodeRequest, File};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Decoding one whole volume is one long call; it gets this deadline
/// instead of the per-call training one.
const VOLUME_TIMEOUT_MS: u64 = 600_000;
/// One case's deadline unless `--call-timeout-ms` says otherwise.
const CASE_TIMEOUT_MS: u64 = 60_000;
const MANIFEST: &str = "manifest.json";
/// The optional spec inside a dataset folder given to `--spec`.
pub const FOLDER_SPEC: &str = "amat-data.toml";
const SPLITS_FILE: &str = "splits_final.json";

#[derive(Default)]
pub struct PrepareArgs {
    pub plugin: PathBuf,
    /// A spec file, or a folder holding `dataset.json` (and optionally `amat-data.toml`).
    pub spec: PathBuf,
    /// Default: `data/prepared/<spec name>`.
    pub out: Option<PathBuf>,
    /// Plugin instances decoding in parallel (default: the number of cores).
    pub jobs: Option<usize>,
    /// Prepare without the cases that fail (else: an error listing them).
    pub skip_failed: bool,
    /// K-fold cross-validation: the fold whose held-out cases are the test split.
    pub fold: Option<usize>,
    /// Overrides `split.folds`.
    pub folds: Option<usize>,
    /// Overrides `split.seed`.
    pub seed: Option<u64>,
    /// An nnU-Net style splits file (default with `--fold`: the dataset
    /// folder's `splits_final.json` if there is one, else folds made from the seed).
    pub splits: Option<PathBuf>,
    /// Decode options (JSON object) over the spec's `[decode]`.
    pub decode: Option<String>,
    /// Overrides `normalize.scheme` ("field" or "plugin").
    pub normalize: Option<String>,
    pub limits: LimitArgs,
}

/// What `prepare` did.
pub struct Prepared {
    pub manifest: PathBuf,
    pub layout: String,
    pub counts: BTreeMap<String, usize>,
    pub slabs: Vec<super::manifest::SlabRecord>,
    /// Cases per split (case datasets).
    pub case_counts: BTreeMap<String, usize>,
    pub cases: usize,
    pub decoded: usize,
    pub from_cache: usize,
    /// Cases left out (with `skip_failed`), with why.
    pub skipped: Vec<(String, String)>,
    pub jobs: usize,
    pub decode_seconds: f64,
    pub total_seconds: f64,
    /// The host's normalisation, if it normalised.
    pub normalization: Option<normalize::NormRecord>,
}

/// The spec behind `--spec`: a file, or a dataset folder with an optional
/// `amat-data.toml` beside its `dataset.json`. Returns it with the folder
/// its relative paths start from.
fn read_spec(path: &Path) -> Result<(DataSpec, PathBuf)> {
    if path.is_dir() {
        let beside = path.join(FOLDER_SPEC);
        let mut spec = if beside.is_file() {
            DataSpec::read_unchecked(&beside).map_err(anyhow::Error::msg)?
        } else {
            DataSpec::read_unchecked_str("", path).map_err(anyhow::Error::msg)?
        };
        if spec.dataset.is_none() && spec.cases.is_empty() && spec.case_glob.is_none() {
            spec.dataset = Some(".".into());
        }
        spec.validate_at(&beside).map_err(anyhow::Error::msg)?;
        Ok((spec, path.to_path_buf()))
    } else {
        let spec = DataSpec::read(path).map_err(anyhow::Error::msg)?;
        Ok((spec, path.parent().unwrap_or(Path::new(".")).to_path_buf()))
    }
}

/// The options as JSON: `[decode]` with `--decode` over it.
fn options_of(spec: &DataSpec, over: Option<&str>) -> Result<serde_json::Value> {
    let mut options = serde_json::to_value(&spec.decode)?;
    if let Some(text) = over {
        let over: serde_json::Value = serde_json::from_str(text).context("--decode: not JSON")?;
        let Some(over) = over.as_object() else {
            bail!("--decode: not a JSON object");
        };
        let map = options.as_object_mut().expect("a table is an object");
        for (k, v) in over {
            map.insert(k.clone(), v.clone());
        }
    }
    if options.get("case").is_some() {
        bail!("decode option `case` is the host's: it describes each case to the plugin");
    }
    Ok(options)
}

fn with_case(options: &serde_json::Value, describe: &serde_json::Value) -> serde_json::Value {
    let mut o = options.clone();
    o.as_object_mut()
        .expect("options are an object")
        .insert("case".into(), describe.clone());
    o
}

/// The cases of a case spec.
fn cases_of(spec: &DataSpec, base: &Path, what: &str) -> Result<Cases> {
    let labels = cases::spec_labels(&spec.labels, what)?;
    if let Some(dir) = &spec.dataset {
        cases::from_dataset_folder(&base.join(dir))
    } else if !spec.cases.is_empty() {
        cases::from_list(base, &spec.cases, labels, what)
    } else {
        let glob = spec.case_glob.as_ref().expect("validated: one form");
        cases::from_glob(base, glob, labels, what)
    }
}

pub fn sha256_of_plugin(path: &Path) -> Result<String> {
    cache::sha256_of_file(path).with_context(|| format!("plugin {}", path.display()))
}

pub fn prepare(args: &PrepareArgs) -> Result<Prepared> {
    let start = Instant::now();
    let (mut spec, base) = read_spec(&args.spec)?;
    if let Some(seed) = args.seed {
        spec.split.seed = seed;
    }
    if let Some(folds) = args.folds {
        spec.split.folds = folds;
    }
    if let Some(scheme) = &args.normalize {
        spec.normalize.scheme = Some(scheme.clone());
    }
    let what = format!("data spec {}", args.spec.display());
    let options = options_of(&spec, args.decode.as_deref())?;

    // The jobs: one volume, or one per case.
    let mut modalities = spec.normalize.channels.clone();
    let field = normalize::field_scheme(spec.normalize.scheme.as_deref(), spec.files.is_empty())
        .with_context(|| what.clone())?;
    let (layout, jobs, name, description) = if !spec.files.is_empty() {
        let files = spec
            .files
            .iter()
            .map(|p| {
                let path = absolute(&base.join(p));
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("data file {}: no file name", path.display()))?
                    .to_string();
                Ok((name, path))
            })
            .collect::<Result<_>>()?;
        let job = Job {
            case: cases::safe_id(&spec.name),
            files,
            options: options.clone(),
            describe: None,
        };
        ("volume".to_string(), vec![job], spec.name.clone(), None)
    } else {
        let cases = cases_of(&spec, &base, &what)?;
        if modalities.is_empty() {
            modalities = cases.channels.clone();
        }
        let name = [spec.name.clone(), cases.name.clone().unwrap_or_default()]
            .into_iter()
            .find(|n| !n.is_empty())
            .or_else(|| {
                absolute(&base)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "dataset".into());
        let jobs = cases
            .cases
            .iter()
            .map(|c| {
                let mut describe = c.describe(&cases.labels);
                if field {
                    // The host normalises: the plugin returns intensities as stored.
                    describe["intensity"] = "raw".into();
                }
                Job {
                    case: c.id.clone(),
                    files: c
                        .named_files()
                        .into_iter()
                        .map(|(n, p)| (n, absolute(&p)))
                        .collect(),
                    options: with_case(&options, &describe),
                    describe: Some(describe),
                }
            })
            .collect();
        (cases.layout.to_string(), jobs, name, cases.description)
    };
    let volume = layout == "volume";
    if volume && args.fold.is_some() {
        bail!("--fold splits cases; {what} names one volume (split by slab)");
    }

    let defaults = SandboxLimits {
        call_timeout_ms: if volume {
            VOLUME_TIMEOUT_MS
        } else {
            CASE_TIMEOUT_MS
        },
        ..SandboxLimits::default()
    };
    let limits = args.limits.apply(defaults);
    let plugin = Plugin::load(&args.plugin, &limits)?;
    let plugin_record = PluginRecord {
        name: plugin.info().name.clone(),
        version: plugin.info().version.clone(),
        sha256: sha256_of_plugin(&args.plugin)?,
    };
    let info = plugin.info().clone();
    drop(plugin);

    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("data/prepared").join(&name));
    std::fs::create_dir_all(dir.join(cache::DIR))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let threads = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        bail!("--jobs must be at least 1");
    }
    let decoder = Decoder {
        plugin: &args.plugin,
        plugin_sha256: &plugin_record.sha256,
        info: &info,
        limits,
        dir: &dir,
        raw: field,
    };
    let decode_start = Instant::now();
    let results = decoder.run(&jobs, threads, !volume);
    let decode_seconds = decode_start.elapsed().as_secs_f64();

    let mut done: Vec<Done> = Vec::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    for (job, r) in jobs.iter().zip(results) {
        match r {
            Ok(d) => done.push(d),
            Err(e) => failed.push((job.case.clone(), e)),
        }
    }
    let context = format!("plugin {}, decode", args.plugin.display());
    if volume && let Some((_, e)) = failed.first() {
        return Err(anyhow::anyhow!("{e}").context(context));
    }
    if !failed.is_empty() && (!args.skip_failed || done.is_empty()) {
        let list: Vec<String> = failed
            .iter()
            .map(|(c, e)| format!("case `{c}`: {e}"))
            .collect();
        bail!(
            "{context}: {} of {} cases failed ({}); {}",
            failed.len(),
            jobs.len(),
            list.join("; "),
            if done.is_empty() {
                "no case is left"
            } else {
                "fix them, or prepare the rest with --skip-failed"
            }
        );
    }
    check_all_alike(&done).with_context(|| context.clone())?;

    // Each example with its case and split.
    let case_split = if volume {
        None
    } else {
        Some(split_cases(&done, &spec, args, &dir)?)
    };
    let mut samples = Vec::new();
    let mut decoded_examples = 0;
    let slab_splits = if volume {
        let ids = done[0]
            .summary
            .ids
            .iter()
            .map(|id| SliceId::parse(id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("plugin {}: {e}", args.plugin.display()))?;
        Some(assign_splits(&ids, &spec.split))
    } else {
        None
    };
    for d in &done {
        for (k, id) in d.summary.ids.iter().enumerate() {
            decoded_examples += 1;
            let parsed = SliceId::parse(id).ok();
            let split = match (&slab_splits, &case_split) {
                (Some(slabs), _) => slabs[k],
                (None, Some((of_case, _))) => {
                    let split = of_case[&d.case];
                    let augmented = parsed.as_ref().and_then(|p| p.augmented).is_some();
                    // Augmented copies train; elsewhere they would be counted twice.
                    (split == Split::Train || !augmented).then_some(split)
                }
                (None, None) => unreachable!("one of the two"),
            };
            let Some(split) = split else { continue };
            let (source, axis, index, augmented) = match parsed {
                Some(p) => (p.source, p.axis, p.index, p.augmented),
                None => (d.case.clone(), String::new(), k, None),
            };
            samples.push(SampleRecord {
                id: id.clone(),
                case: d.case.clone(),
                source,
                axis,
                index,
                split,
                augmented,
            });
        }
    }
    let mut counts: BTreeMap<String, usize> = Split::ALL
        .iter()
        .map(|s| {
            let n = samples.iter().filter(|r| r.split == *s).count();
            (s.name().to_string(), n)
        })
        .collect();
    // Examples no split kept: the gaps, augmented copies outside training.
    counts.insert("dropped".into(), decoded_examples - samples.len());
    if counts["train"] == 0 || counts["test"] == 0 {
        bail!(
            "{what}: the plugin returned {} usable examples; too few for a train and a test split",
            samples.len()
        );
    }

    let case_records: Vec<CaseRecord> = done
        .iter()
        .map(|d| CaseRecord {
            id: d.case.clone(),
            files: d.files.clone(),
            case: d.describe.clone(),
            cache: d.cache.clone(),
            key: d.key.clone(),
            examples: d.summary.ids.len(),
            norm: None,
        })
        .collect();
    let files: Vec<FileRecord> = done.iter().flat_map(|d| d.files.clone()).collect();
    let slabs = if volume {
        Manifest::slabs_of(&samples)
    } else {
        Vec::new()
    };
    let (case_split_record, case_counts) = match case_split {
        Some((_, record)) => {
            let counts = record
                .cases
                .iter()
                .map(|(k, v)| (k.clone(), v.len()))
                .collect();
            (Some(record), counts)
        }
        None => (None, BTreeMap::new()),
    };
    let mut manifest = Manifest {
        name,
        description,
        plugin: plugin_record,
        layout: layout.clone(),
        files,
        options,
        split: spec.split,
        case_split: case_split_record,
        counts: counts.clone(),
        slabs,
        cache: cache::DIR.into(),
        cache_key: String::new(),
        cases: case_records,
        normalization: None,
        samples,
    };
    if field {
        normalise(
            &mut manifest,
            &dir,
            &modalities,
            info.input_channels as usize,
        )
        .with_context(|| what.clone())?;
    }
    manifest.cache_key = manifest_key(&manifest);
    let path = dir.join(MANIFEST);
    write_manifest(&path, &manifest)?;
    remove_unlisted(&dir, &manifest);
    Ok(Prepared {
        manifest: path,
        layout,
        counts,
        slabs: manifest.slabs,
        case_counts,
        cases: jobs.len(),
        decoded: done.iter().filter(|d| !d.from_cache).count(),
        from_cache: done.iter().filter(|d| d.from_cache).count(),
        skipped: failed,
        jobs: threads.min(jobs.len()),
        decode_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
        normalization: manifest.normalization,
    })
}

/// Ids unique over the dataset; every example shaped like the first (batches
/// stack them), except that volumes may differ in their spatial shape
/// (training cuts patches of one size from them; see [`check_same_shapes`]).
fn check_all_alike(done: &[Done]) -> Result<()> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    let mut first: Option<(&str, &[i64], &[i64])> = None;
    for d in done {
        for (id, (image, target)) in d.summary.ids.iter().zip(&d.summary.shapes) {
            if let Some(other) = seen.insert(id, &d.case) {
                bail!(
                    "example id `{}` comes from case `{other}` and case `{}`; ids must be unique",
                    crate::plugin::one_line_text(id),
                    d.case
                );
            }
            let this = (id.as_str(), image.as_slice(), target.as_slice());
            match first {
                None => first = Some(this),
                Some(f) => check_same_shapes(f, this).map_err(anyhow::Error::msg)?,
            }
        }
    }
    Ok(())
}

/// Case -> split, and the record of how: k-fold with `--fold`, else fractions.
fn split_cases(
    done: &[Done],
    spec: &DataSpec,
    args: &PrepareArgs,
    dir: &Path,
) -> Result<(BTreeMap<String, Split>, CaseSplitRecord)> {
    let ids: Vec<String> = done.iter().map(|d| d.case.clone()).collect();
    let (of_case, record) = match args.fold {
        None => (
            case_split::by_fractions(&ids, &spec.split)?,
            CaseSplitRecord {
                method: "fractions".into(),
                seed: spec.split.seed,
                folds: None,
                fold: None,
                splits_file: None,
                cases: BTreeMap::new(),
            },
        ),
        Some(fold) => {
            let given = args.splits.clone().or_else(|| {
                let folder = spec.dataset.as_ref().map(|d| {
                    let base = if args.spec.is_dir() {
                        args.spec.clone()
                    } else {
                        args.spec.parent().unwrap_or(Path::new(".")).to_path_buf()
                    };
                    base.join(d).join(SPLITS_FILE)
                });
                folder.filter(|p| p.is_file())
            });
            let (folds, file) = match given {
                Some(path) => (case_split::read_folds(&path, &ids)?, absolute(&path)),
                None => {
                    let folds = case_split::k_fold(&ids, spec.split.folds, spec.split.seed)?;
                    let path = dir.join(SPLITS_FILE);
                    crate::fsio::write_atomic(
                        &path,
                        (serde_json::to_string_pretty(&folds)? + "\n").as_bytes(),
                    )?;
                    (folds, absolute(&path))
                }
            };
            (
                case_split::of_fold(&folds, fold, &spec.split)?,
                CaseSplitRecord {
                    method: "k-fold".into(),
                    seed: spec.split.seed,
                    folds: Some(folds.len()),
                    fold: Some(fold),
                    splits_file: Some(file),
                    cases: BTreeMap::new(),
                },
            )
        }
    };
    // Cases a splits file leaves out (or skipped ones) are in no split.
    let mut cases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (c, s) in &of_case {
        cases
            .entry(s.name().to_string())
            .or_default()
            .push(c.clone());
    }
    let of_case = ids
        .iter()
        .filter_map(|c| of_case.get(c).map(|s| (c.clone(), *s)))
        .collect();
    Ok((of_case, CaseSplitRecord { cases, ..record }))
}

/// The field's normalisation of every case of `m` (read from its cache file
/// under `dir`), recorded in the manifest: per case in `cases[].norm`, the
/// scheme, CT statistics and the attack's range in `normalization`. CT
/// statistics come from the training split's cases only.
fn normalise(m: &mut Manifest, dir: &Path, modalities: &[String], channels: usize) -> Result<()> {
    if !modalities.is_empty() && modalities.len() != channels {
        bail!(
            "the dataset names {} channel modalities ({}); the task takes {channels} channel(s)",
            modalities.len(),
            modalities.join(", ")
        );
    }
    let train: std::collections::HashSet<String> = match &m.case_split {
        Some(r) => r
            .cases
            .get("train")
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        None => m.cases.iter().map(|c| c.id.clone()).collect(),
    };
    let cases = m.cases.iter().map(|c| {
        let samples = cache::read(&dir.join(&c.cache))?;
        Ok((c.id.clone(), train.contains(&c.id), samples))
    });
    let (norms, record) = normalize::compute(modalities, channels, cases)?;
    for (case, norm) in m.cases.iter_mut().zip(norms) {
        case.norm = Some(norm);
    }
    m.normalization = Some(record);
    Ok(())
}

/// Over every case's key and the sample list: what the manifest loads as.
fn manifest_key(m: &Manifest) -> String {
    let keys: Vec<&str> = m.cases.iter().map(|c| c.key.as_str()).collect();
    let text = serde_json::json!({ "cases": keys, "samples": m.samples }).to_string();
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(text.as_bytes()))
}

/// Removes cache files no case of `m` uses (older keys), and temporaries.
fn remove_unlisted(dir: &Path, m: &Manifest) {
    let keep: std::collections::HashSet<PathBuf> =
        m.cases.iter().map(|c| dir.join(&c.cache)).collect();
    let Ok(entries) = std::fs::read_dir(dir.join(&m.cache)) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        // Temporaries (`.NAME.tmp-PID-N.safetensors`) end alike.
        let ours = name.ends_with(".safetensors");
        if ours && !keep.contains(&path) && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The splits of a manifest in memory, each case from its cache file when
/// its key still matches (the plugin binary, its files, the options), else
/// decoded again through `plugin` and its cache file rewritten.
pub fn load_splits(manifest_path: &Path, plugin: &Plugin) -> Result<Splits> {
    let (m, files) = ensure_cases(manifest_path, plugin)?;
    let mut by_case: HashMap<String, HashMap<String, Sample>> = HashMap::new();
    for (case, path) in m.cases.iter().zip(&files) {
        let samples = cache::read(path)?;
        by_case.insert(
            case.id.clone(),
            samples.into_iter().map(|s| (s.id.clone(), s)).collect(),
        );
    }
    let norms: HashMap<&str, &normalize::CaseNorm> = m
        .cases
        .iter()
        .filter_map(|c| c.norm.as_ref().map(|n| (c.id.as_str(), n)))
        .collect();
    let mut kept = Vec::with_capacity(m.samples.len());
    for s in &m.samples {
        let mut sample = by_case
            .get_mut(&s.case)
            .and_then(|c| c.remove(&s.id))
            .with_context(|| missing(manifest_path, s))?;
        if let Some(n) = norms.get(s.case.as_str()) {
            sample.image = n.apply(&sample.image);
        }
        kept.push(sample);
    }
    splits_from(&m, kept)
}

/// The splits of a manifest read from the per-case cache at each batch
/// (see [`super::OnDisk`]): memory does not grow with the dataset. The
/// cache is checked and brought up to date as by [`load_splits`].
pub fn load_splits_on_disk(manifest_path: &Path, plugin: &Plugin) -> Result<Splits> {
    let (m, files) = ensure_cases(manifest_path, plugin)?;
    let mut by_case: HashMap<String, HashMap<String, DiskSample>> = HashMap::new();
    for (case, path) in m.cases.iter().zip(files) {
        let index = cache::index(&path)?;
        let file = Arc::new(path);
        let norm = case.norm.clone().map(Arc::new);
        by_case.insert(
            case.id.clone(),
            index
                .examples
                .into_iter()
                .map(|(id, image, target)| {
                    let s = DiskSample {
                        id: id.clone(),
                        case: case.id.clone(),
                        file: file.clone(),
                        image,
                        target,
                        norm: norm.clone(),
                    };
                    (id, s)
                })
                .collect(),
        );
    }
    let mut splits = Splits::default();
    let mut first: Option<(String, Vec<i64>, Vec<i64>)> = None;
    for s in &m.samples {
        let sample = by_case
            .get_mut(&s.case)
            .and_then(|c| c.remove(&s.id))
            .with_context(|| missing(manifest_path, s))?;
        match &first {
            None => {
                if !matches!(sample.image.shape.len(), 3 | 4) {
                    bail!(
                        "data {}: sample `{}` has image shape {:?}, not [C, H, W] or [C, D, H, W]",
                        m.name,
                        sample.id,
                        sample.image.shape
                    );
                }
                first = Some((
                    sample.id.clone(),
                    sample.image.shape.clone(),
                    sample.target.shape.clone(),
                ))
            }
            Some((id, image, target)) => check_same_shapes(
                (id, image, target),
                (&sample.id, &sample.image.shape, &sample.target.shape),
            )
            .map_err(|e| anyhow::anyhow!("data {}: {e}", m.name))?,
        }
        let set: &mut Dataset = match s.split {
            Split::Train => &mut splits.train,
            Split::Val => &mut splits.val,
            Split::Test => &mut splits.test,
        };
        set.on_disk
            .get_or_insert_with(OnDisk::default)
            .samples
            .push(sample);
    }
    for set in [&mut splits.train, &mut splits.val, &mut splits.test] {
        set.name = m.name.clone();
        set.on_disk.get_or_insert_with(OnDisk::default);
    }
    splits.about = m.description.clone();
    splits.normalization = m.normalization.clone();
    Ok(splits)
}

fn missing(manifest_path: &Path, s: &SampleRecord) -> String {
    format!(
        "data manifest {}: case `{}` no longer decodes to sample `{}`; prepare the data again",
        manifest_path.display(),
        s.case,
        s.id
    )
}

/// Reads a manifest and makes sure every case's cache file matches its key
/// now (decoding again the cases that do not); returns the manifest (brought
/// up to date, and rewritten if it changed) and each case's cache file.
fn ensure_cases(manifest_path: &Path, plugin: &Plugin) -> Result<(Manifest, Vec<PathBuf>)> {
    let mut m = Manifest::read(manifest_path).map_err(anyhow::Error::msg)?;
    let at = || format!("data manifest {}", manifest_path.display());
    let dir = manifest_path
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    if m.cases.is_empty() {
        // Written before per-case caches: its files are one case.
        m.cases.push(CaseRecord {
            id: cases::safe_id(&m.name),
            files: m.files.clone(),
            case: None,
            cache: PathBuf::new(),
            key: String::new(),
            examples: 0,
            norm: None,
        });
        for s in &mut m.samples {
            s.case = cases::safe_id(&m.name);
        }
        m.cache = cache::DIR.into();
    }
    confined(&dir, &m.cache).with_context(|| format!("{}, field `cache`", at()))?;
    if plugin.info().name != m.plugin.name {
        bail!(
            "{} was prepared by the `{}` task; the plugin is `{}`",
            at(),
            m.plugin.name,
            plugin.info().name
        );
    }
    let plugin_sha = sha256_of_plugin(plugin.path()).unwrap_or_default();
    let mut decoder: Option<Plugin> = None;
    let mut changed = false;
    let mut paths = Vec::with_capacity(m.cases.len());
    for case in &mut m.cases {
        cases::check_id(&case.id, &at())?;
        let options = match &case.case {
            Some(d) => with_case(&m.options, d),
            None => m.options.clone(),
        };
        let mut files = Vec::new();
        let mut hashes = Vec::new();
        for f in &mut case.files {
            let bytes = std::fs::read(&f.path)
                .with_context(|| format!("{}: data file {}", at(), f.path.display()))?;
            use sha2::Digest;
            f.sha256 = format!("{:x}", sha2::Sha256::digest(&bytes));
            f.bytes = bytes.len() as u64;
            hashes.push((f.name.clone(), f.sha256.clone()));
            files.push(File {
                name: f.name.clone(),
                bytes,
            });
        }
        let key = cache::key(&plugin_sha, &options, &hashes);
        let rel = m.cache.join(
            cache::file_name(&case.id, &key)
                .file_name()
                .expect("a file name"),
        );
        let path = confined(&dir, &rel).with_context(|| format!("{}, field `cache`", at()))?;
        let examples = match cache::summary(&path) {
            Ok(summary) => summary.ids.len(),
            Err(e) => {
                if key == case.key {
                    eprintln!("note: {e:#}; decoding case `{}` again", case.id);
                } else {
                    eprintln!(
                        "note: {}: the plugin, files or options of case `{}` changed since it was prepared; decoding it again",
                        at(),
                        case.id
                    );
                }
                if decoder.is_none() {
                    let limits = SandboxLimits {
                        call_timeout_ms: VOLUME_TIMEOUT_MS,
                        ..plugin.limits().clone()
                    };
                    decoder = Some(Plugin::load(plugin.path(), &limits)?);
                }
                let p = decoder.as_mut().expect("loaded");
                let examples = p.decode(&DecodeRequest {
                    files,
                    options: options.to_string(),
                })?;
                for e in &examples {
                    check_example(e, plugin.info(), m.normalization.is_some())
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("plugin {}, decode", plugin.path().display()))?;
                }
                // A read-only data folder cannot be updated: say so.
                cache::write(&path, &examples).with_context(|| {
                    format!("{}: case `{}` decoded again, but its cache", at(), case.id)
                })?;
                changed = true;
                examples.len()
            }
        };
        case.key = key;
        case.cache = rel;
        case.examples = examples;
        paths.push(path);
    }
    if changed && let Some(record) = &m.normalization {
        // A case decoded again may hold other intensities: its statistics, and
        // the dataset's, are taken again.
        let modalities: Vec<String> = record.channels.iter().map(|c| c.modality.clone()).collect();
        let channels = record.channels.len();
        normalise(&mut m, &dir, &modalities, channels).with_context(at)?;
    }
    let key = manifest_key(&m);
    if changed || key != m.cache_key {
        m.cache_key = key;
        m.plugin.sha256 = plugin_sha;
        m.plugin.version = plugin.info().version.clone();
        m.files = m.cases.iter().flat_map(|c| c.files.clone()).collect();
        if let Err(e) = write_manifest(manifest_path, &m) {
            eprintln!("note: {e:#}; the manifest was not updated");
        }
    }
    Ok((m, paths))
}

/// Samples (in manifest order) into their splits. Every sample must have
/// the first one's image and target shapes (batches stack them), but for
/// the spatial shape of volumes.
fn splits_from(m: &Manifest, samples: Vec<Sample>) -> Result<Splits> {
    if let Some(first) = samples.first() {
        if !matches!(first.image.dim(), 3 | 4) {
            bail!(
                "data {}: sample `{}` has image shape {:?}, not [C, H, W] or [C, D, H, W]",
                m.name,
                first.id,
                first.image.size()
            );
        }
        let (image, target) = (first.image.size(), first.target.size());
        for s in &samples[1..] {
            check_same_shapes(
                (&first.id, &image, &target),
                (&s.id, &s.image.size(), &s.target.size()),
            )
            .map_err(|e| anyhow::anyhow!("data {}: {e}", m.name))?;
        }
    }
    let mut splits = Splits {
        about: m.description.clone(),
        ..Splits::default()
    };
    for set in [&mut splits.train, &mut splits.val, &mut splits.test] {
        set.name = m.name.clone();
    }
    for (record, sample) in m.samples.iter().zip(samples) {
        let set: &mut Dataset = match record.split {
            Split::Train => &mut splits.train,
            Split::Val => &mut splits.val,
            Split::Test => &mut splits.test,
        };
        set.samples.push(sample);
    }
    Ok(splits)
}

fn write_manifest(path: &Path, m: &Manifest) -> Result<()> {
    crate::fsio::write_atomic(path, (serde_json::to_string_pretty(m)? + "\n").as_bytes())
}

/// `dir/name` for a path from a manifest, which must stay inside the
/// dataset folder: relative, no `..`, and no symbolic link on the way (a
/// manifest is untrusted input, and the cache is written to).
fn confined(dir: &Path, name: &Path) -> Result<PathBuf> {
    use std::path::Component;
    if name.as_os_str().is_empty() || !name.components().all(|c| matches!(c, Component::Normal(_)))
    {
        bail!(
            "`{}` must be a path inside the dataset folder (no absolute path, no `..`)",
            name.display()
        );
    }
    let mut at = dir.to_path_buf();
    for c in name.components() {
        at.push(c);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "`{}` is a symbolic link; the cache must be plain files in the dataset folder",
                at.display()
            );
        }
    }
    Ok(at)
}

/// Absolute and without `..`, when the file exists (else as given, made absolute).
fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}
