//! `amat-host data prepare`: one decode call through the task plugin, slab
//! splits, the manifest, and the cache of decoded tensors; and the loader
//! that turns a manifest back into splits (from the cache when it is still
//! valid, else by decoding again).

use super::manifest::{
    DataSpec, FileRecord, Manifest, PluginRecord, SampleRecord, SliceId, Split, assign_splits,
};
use super::{Dataset, Sample, Splits};
use crate::plugin::{Plugin, SandboxLimits};
use amat_plugin_sdk::{DecodeRequest, Dense, Example, File};
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// Decoding a whole dataset is one long call; it gets its own plugin
/// instance with this deadline instead of the per-call training one.
const DECODE_TIMEOUT_MS: u64 = 600_000;
const MANIFEST: &str = "manifest.json";
const CACHE: &str = "samples.safetensors";

pub struct PrepareArgs {
    pub plugin: PathBuf,
    pub spec: PathBuf,
    /// Default: `data/prepared/<spec name>`.
    pub out: Option<PathBuf>,
}

/// What `prepare` did.
pub struct Prepared {
    pub manifest: PathBuf,
    pub counts: BTreeMap<String, usize>,
    pub slabs: Vec<super::manifest::SlabRecord>,
    pub decode_seconds: f64,
    pub total_seconds: f64,
}

pub fn prepare(args: &PrepareArgs) -> Result<Prepared> {
    let start = Instant::now();
    let spec = DataSpec::read(&args.spec).map_err(anyhow::Error::msg)?;
    let base = args.spec.parent().unwrap_or(Path::new("."));
    let paths: Vec<PathBuf> = spec.files.iter().map(|p| absolute(&base.join(p))).collect();
    let (records, files) = read_files(&paths)?;
    let options = serde_json::to_value(&spec.decode)?;

    let mut plugin = decoder(&args.plugin)?;
    let plugin_record = PluginRecord {
        name: plugin.info().name.clone(),
        version: plugin.info().version.clone(),
    };
    let decode_start = Instant::now();
    let examples = plugin.decode(&DecodeRequest {
        files,
        options: options.to_string(),
    })?;
    let decode_seconds = decode_start.elapsed().as_secs_f64();
    check_examples(&examples, plugin.info().input_channels)
        .with_context(|| format!("plugin {}, decode", args.plugin.display()))?;

    let ids = examples
        .iter()
        .map(|e| SliceId::parse(&e.id))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("plugin {}: {e}", args.plugin.display()))?;
    let splits = assign_splits(&ids, &spec.split);
    let decoded = examples.len();
    let mut samples = Vec::new();
    let mut kept = Vec::new();
    for ((example, id), split) in examples.into_iter().zip(ids).zip(splits) {
        let Some(split) = split else { continue };
        samples.push(SampleRecord {
            id: example.id.clone(),
            source: id.source,
            axis: id.axis,
            index: id.index,
            split,
            augmented: id.augmented,
        });
        kept.push(example);
    }
    let mut counts: BTreeMap<String, usize> = Split::ALL
        .iter()
        .map(|s| {
            (
                s.name().to_string(),
                samples.iter().filter(|r| r.split == *s).count(),
            )
        })
        .collect();
    // Examples no split kept: the gaps, augmented copies outside training.
    counts.insert("dropped".into(), decoded - kept.len());
    if counts["train"] == 0 || counts["test"] == 0 {
        bail!(
            "data spec {}: the plugin returned {} usable examples; too few for a train and a test split",
            args.spec.display(),
            kept.len()
        );
    }

    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("data/prepared").join(&spec.name));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = cache_key(&plugin_record, &records, &options, &samples);
    write_cache(&dir.join(CACHE), &kept)?;
    let manifest = Manifest {
        name: spec.name.clone(),
        plugin: plugin_record,
        files: records,
        options,
        split: spec.split,
        counts: counts.clone(),
        slabs: Manifest::slabs_of(&samples),
        cache: CACHE.into(),
        cache_key: key,
        samples,
    };
    let path = dir.join(MANIFEST);
    write_manifest(&path, &manifest)?;
    Ok(Prepared {
        manifest: path,
        counts,
        slabs: manifest.slabs,
        decode_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
    })
}

/// The splits of a manifest: from its cache when the cache key still
/// matches (plugin name and version, file hashes, options), else decoded
/// again through `plugin` and the cache rewritten.
pub fn load_splits(manifest_path: &Path, plugin: &Plugin) -> Result<Splits> {
    let mut m = Manifest::read(manifest_path).map_err(anyhow::Error::msg)?;
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let cache = confined(dir, &m.cache)
        .with_context(|| format!("data manifest {}, field `cache`", manifest_path.display()))?;
    let paths: Vec<PathBuf> = m.files.iter().map(|f| f.path.clone()).collect();
    let (records, files) =
        read_files(&paths).with_context(|| format!("data manifest {}", manifest_path.display()))?;
    let plugin_record = PluginRecord {
        name: plugin.info().name.clone(),
        version: plugin.info().version.clone(),
    };
    let key = cache_key(&plugin_record, &records, &m.options, &m.samples);
    if key == m.cache_key {
        match read_cache(&cache, &m) {
            Ok(splits) => return Ok(splits),
            Err(e) => eprintln!("note: {e:#}; decoding again"),
        }
    } else {
        eprintln!(
            "note: data manifest {}: plugin, files, options or the sample list changed since it was prepared; decoding again",
            manifest_path.display()
        );
    }
    if plugin_record.name != m.plugin.name {
        bail!(
            "data manifest {} was prepared by the `{}` task; the plugin is `{}`",
            manifest_path.display(),
            m.plugin.name,
            plugin_record.name
        );
    }

    let examples = decoder(plugin.path())?.decode(&DecodeRequest {
        files,
        options: m.options.to_string(),
    })?;
    check_examples(&examples, plugin.info().input_channels)
        .with_context(|| format!("plugin {}, decode", plugin.path().display()))?;
    let mut by_id: HashMap<String, Example> =
        examples.into_iter().map(|e| (e.id.clone(), e)).collect();
    let mut kept = Vec::with_capacity(m.samples.len());
    for s in &m.samples {
        let e = by_id.remove(&s.id).with_context(|| {
            format!(
                "data manifest {}: the plugin no longer decodes sample `{}`; prepare the data again",
                manifest_path.display(),
                s.id
            )
        })?;
        kept.push(e);
    }
    m.plugin = plugin_record;
    m.files = records;
    m.cache_key = key;
    // A read-only data folder still trains; it just decodes again next time.
    if let Err(e) = write_cache(&cache, &kept).and_then(|()| write_manifest(manifest_path, &m)) {
        eprintln!("note: {e:#}; the cache was not updated");
    }
    splits_from(
        &m,
        kept.into_iter()
            .map(|e| to_sample(e, manifest_path))
            .collect::<Result<_>>()?,
    )
}

/// A plugin instance for one whole-dataset decode call.
fn decoder(path: &Path) -> Result<Plugin> {
    let limits = SandboxLimits {
        call_timeout_ms: DECODE_TIMEOUT_MS,
        ..SandboxLimits::default()
    };
    Ok(Plugin::load(path, &limits)?)
}

/// Reads every file, names it by its file name for the plugin, and hashes it.
fn read_files(paths: &[PathBuf]) -> Result<(Vec<FileRecord>, Vec<File>)> {
    let mut records = Vec::new();
    let mut files: Vec<File> = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).with_context(|| format!("data file {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("data file {}: no file name", path.display()))?
            .to_string();
        if files.iter().any(|f| f.name == name) {
            bail!("data file {}: two files are named `{name}`", path.display());
        }
        records.push(FileRecord {
            name: name.clone(),
            path: path.clone(),
            bytes: bytes.len() as u64,
            sha256: format!("{:x}", Sha256::digest(&bytes)),
        });
        files.push(File { name, bytes });
    }
    Ok((records, files))
}

/// What the cache holds: decoded tensors of these samples, in this order and
/// these splits, from this plugin, input files and options. The cache is
/// read by position, so an edited sample list must never meet an old cache.
pub fn cache_key(
    plugin: &PluginRecord,
    files: &[FileRecord],
    options: &serde_json::Value,
    samples: &[SampleRecord],
) -> String {
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|f| (f.name.as_str(), f.sha256.as_str()))
        .collect();
    let text = serde_json::json!({
        "plugin": plugin,
        "files": files,
        "options": options,
        "samples": samples,
    })
    .to_string();
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

fn tensor(d: &Dense) -> Tensor {
    Tensor::from_slice(&d.data).reshape(&d.shape)
}

fn to_sample(e: Example, manifest: &Path) -> Result<Sample> {
    if e.image.shape.len() != 3 {
        bail!(
            "data manifest {}: sample `{}` has image shape {:?}, not [C, H, W]",
            manifest.display(),
            e.id,
            e.image.shape
        );
    }
    Ok(Sample {
        image: tensor(&e.image),
        target: tensor(&e.target),
        id: e.id,
    })
}

/// `<i>.image` and `<i>.target` per kept example, in manifest order; written
/// to a temporary file and renamed, so a cache is whole or absent.
fn write_cache(path: &Path, examples: &[Example]) -> Result<()> {
    let mut named = Vec::with_capacity(examples.len() * 2);
    for (i, e) in examples.iter().enumerate() {
        named.push((format!("{i}.image"), tensor(&e.image)));
        named.push((format!("{i}.target"), tensor(&e.target)));
    }
    let tmp = temp_path(path);
    Tensor::write_safetensors(&named, &tmp)
        .with_context(|| format!("cannot write the cache {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

fn read_cache(path: &Path, m: &Manifest) -> Result<Splits> {
    let named = Tensor::read_safetensors(path)
        .with_context(|| format!("data cache {}: unreadable", path.display()))?;
    let mut by_name: HashMap<String, Tensor> = named.into_iter().collect();
    let mut samples = Vec::with_capacity(m.samples.len());
    for (i, s) in m.samples.iter().enumerate() {
        let mut take = |part: &str| {
            by_name.remove(&format!("{i}.{part}")).with_context(|| {
                format!(
                    "data cache {}: no `{i}.{part}` for sample `{}`",
                    path.display(),
                    s.id
                )
            })
        };
        samples.push(Sample {
            image: take("image")?,
            target: take("target")?,
            id: s.id.clone(),
        });
    }
    splits_from(m, samples)
}

/// Samples (in manifest order) into their splits. Every sample must have
/// the first one's image and target shapes: batches stack them.
fn splits_from(m: &Manifest, samples: Vec<Sample>) -> Result<Splits> {
    if let Some(first) = samples.first() {
        if first.image.dim() != 3 {
            bail!(
                "data {}: sample `{}` has image shape {:?}, not [C, H, W]",
                m.name,
                first.id,
                first.image.size()
            );
        }
        let shapes = |s: &Sample| (s.image.size(), s.target.size());
        if let Some(odd) = samples.iter().find(|s| shapes(s) != shapes(first)) {
            bail!(
                "data {}: sample `{}` has image {:?} and target {:?}, sample `{}` image {:?} and target {:?}; \
                 every sample needs the same shapes",
                m.name,
                odd.id,
                odd.image.size(),
                odd.target.size(),
                first.id,
                first.image.size(),
                first.target.size()
            );
        }
    }
    let mut splits = Splits::default();
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
    let tmp = temp_path(path);
    std::fs::write(&tmp, serde_json::to_string_pretty(m)? + "\n")
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Refuses decoded examples the host cannot batch: an image that is not
/// [channels, H, W], or shapes that differ from the first example's. Names
/// the example.
fn check_examples(examples: &[Example], channels: u32) -> Result<()> {
    let Some(first) = examples.first() else {
        return Ok(());
    };
    for e in examples {
        let id = crate::plugin::one_line_text(&e.id);
        if e.image.shape.len() != 3 || e.image.shape[0] != channels as i64 {
            bail!(
                "example `{id}` has image shape {:?}, expected [{channels}, H, W]",
                e.image.shape
            );
        }
        if e.image.shape != first.image.shape || e.target.shape != first.target.shape {
            bail!(
                "example `{id}` has image {:?} and target {:?}, the first example `{}` image {:?} and target {:?}; \
                 every example needs the same shapes",
                e.image.shape,
                e.target.shape,
                crate::plugin::one_line_text(&first.id),
                first.image.shape,
                first.target.shape
            );
        }
    }
    Ok(())
}

/// `dir/name` for a manifest's `cache` field, which must stay inside the
/// dataset folder: relative, no `..`, and no symbolic link on the way (a
/// manifest is untrusted input, and the cache is written to).
fn confined(dir: &Path, name: &Path) -> Result<PathBuf> {
    use std::path::Component;
    if name.as_os_str().is_empty() || !name.components().all(|c| matches!(c, Component::Normal(_)))
    {
        bail!(
            "`{}` must be a file name inside the dataset folder (no absolute path, no `..`)",
            name.display()
        );
    }
    let mut at = dir.to_path_buf();
    for c in name.components() {
        at.push(c);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "`{}` is a symbolic link; the cache must be a plain file in the dataset folder",
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
