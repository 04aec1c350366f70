//! Datasets of many cases, in the forms users hold them: an nnU-Net v2 raw
//! folder, a Medical Segmentation Decathlon (MSD) folder, cases listed in a
//! spec (`[[cases]]`), or cases found by a pattern (`[case_glob]`).
//!
//! A case is the files of one subject: its image channels (in channel order)
//! and its label map. It is one decode call; the plugin is told which file
//! is which in `options.case` (see [`CaseInput::describe`]).

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `[[cases]]`: one case of a spec. Paths are relative to the spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseSpec {
    pub id: String,
    /// Image channels, in channel order.
    pub images: Vec<PathBuf>,
    #[serde(default)]
    pub label: Option<PathBuf>,
}

/// `[case_glob]`: `images[0]` holds one `*`, whose match is the case id;
/// the other channel paths and `label` name the same case with `{case}`.
/// E.g. `images = ["subjects/*/t1.nii.gz", "subjects/{case}/t2.nii.gz"]`,
/// `label = "subjects/{case}/seg.nii.gz"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseGlob {
    pub images: Vec<String>,
    #[serde(default)]
    pub label: Option<String>,
}

/// One case's files.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseInput {
    pub id: String,
    pub images: Vec<PathBuf>,
    pub label: Option<PathBuf>,
}

/// The cases of a dataset, in case-id order, and what its label values mean.
#[derive(Clone, Debug, PartialEq)]
pub struct Cases {
    /// "nnunet-v2", "msd", "list" or "glob".
    pub layout: &'static str,
    /// `dataset.json`'s `name`, if it has one.
    pub name: Option<String>,
    /// `dataset.json`'s `description`: where the data comes from (generated
    /// cases say they are deformations of real subjects).
    pub description: Option<String>,
    /// Label value -> class name.
    pub labels: BTreeMap<u32, String>,
    /// Each image channel's modality as the dataset names it (nnU-Net's
    /// `channel_names`, MSD's `modality`; e.g. "CT", "T1"); empty when not named.
    pub channels: Vec<String>,
    pub cases: Vec<CaseInput>,
}

impl CaseInput {
    /// Every file, images first, with the name the plugin sees it under.
    pub fn files(&self) -> Vec<PathBuf> {
        self.images.iter().chain(&self.label).cloned().collect()
    }

    /// Every file with the name the plugin sees it under ([`plugin_name`]).
    pub fn named_files(&self) -> Vec<(String, PathBuf)> {
        self.files()
            .into_iter()
            .map(|p| (plugin_name(&p), p))
            .collect()
    }

    /// `options.case` for the plugin: `id`, `images` and `label` by the
    /// names the plugin sees them under, and `labels` (value -> class name).
    pub fn describe(&self, labels: &BTreeMap<u32, String>) -> serde_json::Value {
        let name = |p: &PathBuf| plugin_name(p);
        serde_json::json!({
            "id": self.id,
            "images": self.images.iter().map(name).collect::<Vec<_>>(),
            "label": self.label.as_ref().map(name),
            "labels": labels.iter().map(|(v, n)| (v.to_string(), n.clone())).collect::<BTreeMap<_, _>>(),
        })
    }
}

/// `<folder>/<file>`: MSD names an image and its label map alike
/// (`imagesTr/x.nii.gz`, `labelsTr/x.nii.gz`), so the folder tells them apart.
pub fn plugin_name(p: &Path) -> String {
    let file = file_name(p).unwrap_or_default();
    match p
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|d| d.to_str())
    {
        Some(dir) => format!("{dir}/{file}"),
        None => file,
    }
}

fn file_name(p: &Path) -> Option<String> {
    p.file_name().and_then(|n| n.to_str()).map(str::to_string)
}

/// `name` with every character a case id may not hold replaced by `_`.
pub fn safe_id(name: &str) -> String {
    let id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match id.strip_prefix('.') {
        Some(rest) => format!("_{rest}"),
        None if id.is_empty() => "_".into(),
        None => id,
    }
}

/// A case id must name a cache file and an example id (`<case>:<axis>:<index>`).
pub(crate) fn check_id(id: &str, what: &str) -> Result<()> {
    if id.is_empty()
        || id.starts_with('.')
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        bail!("{what}: case id `{id}` must be letters, digits, `_`, `-` or `.`");
    }
    Ok(())
}

/// The folder holding `dataset.json`: nnU-Net v2 (`channel_names`,
/// `labels` name -> value, `file_ending`, `imagesTr/<case>_<XXXX><ending>`,
/// `labelsTr/<case><ending>`) or MSD (`training`: [{image, label}],
/// `labels` value -> name).
pub fn from_dataset_folder(dir: &Path) -> Result<Cases> {
    let path = dir.join("dataset.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("dataset {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("dataset {}: not JSON", path.display()))?;
    let at = |what: &str| format!("dataset {}: {what}", path.display());
    let text_of = |key: &str| json.get(key).and_then(|n| n.as_str()).map(str::to_string);
    let (name, description) = (text_of("name"), text_of("description"));
    let (cases, names) = if json.get("channel_names").is_some() {
        (nnunet_v2(dir, &json, &at)?, "channel_names")
    } else if json.get("training").is_some() {
        (msd(dir, &json, &at)?, "modality")
    } else {
        bail!(
            "{}",
            at("neither nnU-Net v2 (`channel_names`) nor MSD (`training`)")
        );
    };
    let channels = channel_names(&json, names, &at)?;
    Ok(Cases {
        name,
        description,
        channels,
        ..cases
    })
}

/// `{"0": "CT", "1": ...}` in channel order; empty when the key is absent.
fn channel_names(
    json: &serde_json::Value,
    key: &str,
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<String>> {
    let Some(table) = json.get(key) else {
        return Ok(Vec::new());
    };
    let table = table
        .as_object()
        .with_context(|| at(&format!("`{key}` is not an object")))?;
    let mut named: BTreeMap<usize, String> = BTreeMap::new();
    for (k, v) in table {
        let index: usize = k.parse().map_err(|_| {
            anyhow::anyhow!(at(&format!("`{key}` key `{k}` is not a channel index")))
        })?;
        let name = v
            .as_str()
            .with_context(|| at(&format!("`{key}`.{k} is not a string")))?;
        named.insert(index, name.to_string());
    }
    if named.keys().copied().ne(0..named.len()) {
        bail!(
            "{}",
            at(&format!("`{key}` must number the channels 0, 1, ..."))
        );
    }
    Ok(named.into_values().collect())
}

fn labels_of(
    json: &serde_json::Value,
    name_to_value: bool,
    at: &dyn Fn(&str) -> String,
) -> Result<BTreeMap<u32, String>> {
    let table = json
        .get("labels")
        .and_then(|l| l.as_object())
        .with_context(|| at("`labels` is missing or not an object"))?;
    let mut labels = BTreeMap::new();
    for (k, v) in table {
        let (value, name) = if name_to_value {
            let value = v.as_u64().with_context(|| {
                at(&format!(
                    "label `{k}` = {v}: only one integer value per class is supported (no region lists)"
                ))
            })?;
            (value, k.clone())
        } else {
            let value = k
                .parse::<u64>()
                .map_err(|_| anyhow::anyhow!(at(&format!("label key `{k}` is not an integer"))))?;
            let name = v
                .as_str()
                .with_context(|| at(&format!("label {k}: the name is not a string")))?;
            (value, name.to_string())
        };
        let value =
            u32::try_from(value).map_err(|_| anyhow::anyhow!(at("label value too large")))?;
        if labels.insert(value, name).is_some() {
            bail!("{}", at(&format!("label value {value} is named twice")));
        }
    }
    if labels.is_empty() {
        bail!("{}", at("`labels` is empty"));
    }
    Ok(labels)
}

fn nnunet_v2(dir: &Path, json: &serde_json::Value, at: &dyn Fn(&str) -> String) -> Result<Cases> {
    let channels = json
        .get("channel_names")
        .and_then(|c| c.as_object())
        .with_context(|| at("`channel_names` is not an object"))?
        .len();
    if channels == 0 {
        bail!("{}", at("`channel_names` is empty"));
    }
    let ending = json
        .get("file_ending")
        .and_then(|e| e.as_str())
        .with_context(|| at("`file_ending` is missing"))?;
    let labels = labels_of(json, true, at)?;
    let images_dir = dir.join("imagesTr");
    let mut found: BTreeMap<String, BTreeMap<usize, PathBuf>> = BTreeMap::new();
    let entries = std::fs::read_dir(&images_dir)
        .with_context(|| format!("dataset {}: imagesTr", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Some(name) = file_name(&path) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(ending) else {
            continue;
        };
        // `<case>_<XXXX>`: a four-digit channel index.
        let parsed = stem
            .rsplit_once('_')
            .filter(|(_, c)| c.len() == 4 && c.chars().all(|d| d.is_ascii_digit()));
        let Some((case, channel)) = parsed else {
            bail!(
                "{}: not `<case>_<XXXX>{ending}` (XXXX: the channel, 0000 for the first)",
                path.display()
            );
        };
        found
            .entry(case.to_string())
            .or_default()
            .insert(channel.parse().expect("four digits"), path);
    }
    if found.is_empty() {
        bail!(
            "dataset {}: imagesTr holds no `*{ending}` image",
            dir.display()
        );
    }
    let mut cases = Vec::new();
    for (id, channel_files) in found {
        check_id(&id, &format!("dataset {}", dir.display()))?;
        let images: Vec<PathBuf> = (0..channels)
            .map(|c| {
                channel_files.get(&c).cloned().with_context(|| {
                    format!(
                        "dataset {}: case `{id}` has no imagesTr/{id}_{c:04}{ending} (dataset.json names {channels} channel(s))",
                        dir.display()
                    )
                })
            })
            .collect::<Result<_>>()?;
        if channel_files.len() > channels {
            bail!(
                "dataset {}: case `{id}` has {} channel files; dataset.json names {channels}",
                dir.display(),
                channel_files.len()
            );
        }
        let label = dir.join("labelsTr").join(format!("{id}{ending}"));
        if !label.is_file() {
            bail!(
                "dataset {}: case `{id}` has no label map labelsTr/{id}{ending}",
                dir.display()
            );
        }
        cases.push(CaseInput {
            id,
            images,
            label: Some(label),
        });
    }
    finish(
        "nnunet-v2",
        labels,
        cases,
        &format!("dataset {}", dir.display()),
    )
}

fn msd(dir: &Path, json: &serde_json::Value, at: &dyn Fn(&str) -> String) -> Result<Cases> {
    let labels = labels_of(json, false, at)?;
    let training = json
        .get("training")
        .and_then(|t| t.as_array())
        .with_context(|| at("`training` is not a list"))?;
    let mut cases = Vec::new();
    for (i, entry) in training.iter().enumerate() {
        let field = |key: &str| -> Result<PathBuf> {
            let rel = entry
                .get(key)
                .and_then(|v| v.as_str())
                .with_context(|| at(&format!("training[{i}] has no `{key}` path")))?;
            let path = dir.join(rel);
            if !path.is_file() {
                bail!(
                    "{}",
                    at(&format!(
                        "training[{i}].{key}: {} is missing",
                        path.display()
                    ))
                );
            }
            Ok(path)
        };
        let image = field("image")?;
        let label = field("label")?;
        let name = file_name(&image).unwrap_or_default();
        let id = name
            .strip_suffix(".gz")
            .unwrap_or(&name)
            .strip_suffix(".nii")
            .unwrap_or(&name)
            .to_string();
        check_id(&id, &at(&format!("training[{i}]")))?;
        cases.push(CaseInput {
            id,
            images: vec![image],
            label: Some(label),
        });
    }
    finish("msd", labels, cases, &at("training"))
}

/// Sorted by id; ids unique; a case's file names unique (the plugin finds
/// files by name).
fn finish(
    layout: &'static str,
    labels: BTreeMap<u32, String>,
    mut cases: Vec<CaseInput>,
    what: &str,
) -> Result<Cases> {
    if cases.is_empty() {
        bail!("{what}: no case");
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    for pair in cases.windows(2) {
        if pair[0].id == pair[1].id {
            bail!("{what}: two cases are called `{}`", pair[0].id);
        }
    }
    for case in &cases {
        let mut names: Vec<String> = case.files().iter().map(|p| plugin_name(p)).collect();
        names.sort();
        if let Some(pair) = names.windows(2).find(|p| p[0] == p[1]) {
            bail!(
                "{what}: case `{}` has two files named `{}`; the plugin tells files apart by name",
                case.id,
                pair[0]
            );
        }
    }
    Ok(Cases {
        layout,
        name: None,
        description: None,
        labels,
        channels: Vec::new(),
        cases,
    })
}

/// Label values of a spec's `labels` table (keys are TOML strings).
pub fn spec_labels(table: &BTreeMap<String, String>, what: &str) -> Result<BTreeMap<u32, String>> {
    table
        .iter()
        .map(|(k, v)| {
            k.parse::<u32>()
                .map(|k| (k, v.clone()))
                .map_err(|_| anyhow::anyhow!("{what}: labels key `{k}` is not a label value"))
        })
        .collect()
}

/// `[[cases]]` of a spec at `base`.
pub fn from_list(
    base: &Path,
    list: &[CaseSpec],
    labels: BTreeMap<u32, String>,
    what: &str,
) -> Result<Cases> {
    let mut cases = Vec::new();
    for c in list {
        check_id(&c.id, what)?;
        if c.images.is_empty() {
            bail!("{what}: case `{}` names no image", c.id);
        }
        let existing = |p: &PathBuf| -> Result<PathBuf> {
            let path = base.join(p);
            if !path.is_file() {
                bail!("{what}: case `{}`: {} is missing", c.id, path.display());
            }
            Ok(path)
        };
        cases.push(CaseInput {
            id: c.id.clone(),
            images: c.images.iter().map(existing).collect::<Result<_>>()?,
            label: c.label.as_ref().map(existing).transpose()?,
        });
    }
    finish("list", labels, cases, what)
}

/// `[case_glob]` of a spec at `base`.
pub fn from_glob(
    base: &Path,
    glob: &CaseGlob,
    labels: BTreeMap<u32, String>,
    what: &str,
) -> Result<Cases> {
    let Some(pattern) = glob.images.first() else {
        bail!("{what}: case_glob.images is empty");
    };
    let ids = matches(base, pattern).with_context(|| format!("{what}: case_glob.images[0]"))?;
    let mut cases = Vec::new();
    for id in ids {
        let path = |template: &str| -> Result<PathBuf> {
            let p = base.join(template.replace('*', &id).replace("{case}", &id));
            if !p.is_file() {
                bail!("{what}: case `{id}`: {} is missing", p.display());
            }
            Ok(p)
        };
        check_id(&id, what)?;
        cases.push(CaseInput {
            images: glob.images.iter().map(|t| path(t)).collect::<Result<_>>()?,
            label: glob.label.as_deref().map(path).transpose()?,
            id,
        });
    }
    finish("glob", labels, cases, what)
}

/// What the one `*` of `pattern` (relative to `base`, in one path
/// component) matches, for every existing path.
fn matches(base: &Path, pattern: &str) -> Result<Vec<String>> {
    if pattern.matches('*').count() != 1 {
        bail!("`{pattern}` must hold exactly one `*`");
    }
    let parts: Vec<&str> = pattern.split('/').collect();
    let k = parts
        .iter()
        .position(|p| p.contains('*'))
        .expect("one star");
    let dir = base.join(parts[..k].join("/"));
    let (prefix, suffix) = parts[k].split_once('*').expect("one star");
    let rest = parts[k + 1..].join("/");
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(id) = name
            .strip_prefix(prefix)
            .and_then(|n| n.strip_suffix(suffix))
            .filter(|id| !id.is_empty())
        else {
            continue;
        };
        let full = if rest.is_empty() {
            entry.path()
        } else {
            entry.path().join(&rest)
        };
        if full.is_file() {
            ids.push(id.to_string());
        }
    }
    if ids.is_empty() {
        bail!("`{pattern}` matches no file under {}", base.display());
    }
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn nnunet_folder_groups_channels_by_case() {
        let d = tempfile::tempdir().unwrap();
        let json = r#"{"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "a": 1},
                       "numTraining": 2, "file_ending": ".nii.gz"}"#;
        std::fs::write(d.path().join("dataset.json"), json).unwrap();
        for case in ["c_2", "c_1"] {
            for ch in ["0000", "0001"] {
                touch(&d.path().join(format!("imagesTr/{case}_{ch}.nii.gz")));
            }
            touch(&d.path().join(format!("labelsTr/{case}.nii.gz")));
        }
        let c = from_dataset_folder(d.path()).unwrap();
        assert_eq!(c.layout, "nnunet-v2");
        let ids: Vec<&str> = c.cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["c_1", "c_2"]);
        assert!(c.cases[0].images[1].ends_with("imagesTr/c_1_0001.nii.gz"));
        assert_eq!(c.labels[&1], "a");
        let desc = c.cases[0].describe(&c.labels);
        assert_eq!(desc["label"], "labelsTr/c_1.nii.gz");
        assert_eq!(desc["images"][0], "imagesTr/c_1_0000.nii.gz");
        assert_eq!(desc["labels"]["0"], "background");

        std::fs::remove_file(d.path().join("imagesTr/c_2_0001.nii.gz")).unwrap();
        let e = format!("{:#}", from_dataset_folder(d.path()).unwrap_err());
        assert!(e.contains("`c_2`") && e.contains("c_2_0001.nii.gz"), "{e}");
    }

    #[test]
    fn msd_folder_and_glob() {
        let d = tempfile::tempdir().unwrap();
        let json = r#"{"name": "Hippo", "description": "Left and right hippocampus",
                       "labels": {"0": "background", "1": "Anterior"},
                       "training": [{"image": "./imagesTr/h_3.nii.gz", "label": "./labelsTr/h_3.nii.gz"}]}"#;
        std::fs::write(d.path().join("dataset.json"), json).unwrap();
        touch(&d.path().join("imagesTr/h_3.nii.gz"));
        touch(&d.path().join("labelsTr/h_3.nii.gz"));
        let c = from_dataset_folder(d.path()).unwrap();
        assert_eq!((c.layout, c.name.as_deref()), ("msd", Some("Hippo")));
        assert_eq!(c.description.as_deref(), Some("Left and right hippocampus"));
        assert_eq!(c.cases[0].id, "h_3");
        let names: Vec<String> = c.cases[0]
            .named_files()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["imagesTr/h_3.nii.gz", "labelsTr/h_3.nii.gz"]);

        for s in ["s1", "s2"] {
            touch(&d.path().join(format!("subj/{s}/t1.nii.gz")));
            touch(&d.path().join(format!("subj/{s}/seg.nii.gz")));
        }
        let glob = CaseGlob {
            images: vec!["subj/*/t1.nii.gz".into()],
            label: Some("subj/{case}/seg.nii.gz".into()),
        };
        let c = from_glob(d.path(), &glob, BTreeMap::new(), "spec").unwrap();
        let ids: Vec<&str> = c.cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["s1", "s2"]);
        assert!(
            c.cases[1]
                .label
                .as_ref()
                .unwrap()
                .ends_with("subj/s2/seg.nii.gz")
        );
    }

    #[test]
    fn the_example_case_spec_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/cases.toml");
        let spec = crate::data::manifest::DataSpec::read(&path).unwrap();
        let glob = spec.case_glob.unwrap();
        assert_eq!(glob.images, ["subjects/*/t1.nii.gz"]);
        assert_eq!(spec_labels(&spec.labels, "x").unwrap()[&1], "hippocampus");
    }
}
