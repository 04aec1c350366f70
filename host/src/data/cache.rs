//! The per-case cache: one safetensors file per case, holding its decoded
//! examples (`<k>.image`, `<k>.target`) and their ids (`ids`, JSON bytes).
//! The file name carries the case's key (a sha256 of the plugin binary, the
//! decode options and the case's file hashes), so a changed file, option or
//! plugin never meets an old file; files are written to a temporary name and
//! renamed, so a file under its final name is complete.

use super::Sample;
use amat_plugin_sdk::{Dense, Example};
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Folder of the case files, inside the prepared dataset's folder.
pub const DIR: &str = "cases";

/// The case's key: what its examples were decoded from.
pub fn key(plugin_sha256: &str, options: &serde_json::Value, files: &[(String, String)]) -> String {
    let text = serde_json::json!({
        "plugin_sha256": plugin_sha256,
        "options": options,
        "files": files,
    })
    .to_string();
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

/// `cases/<case>-<key prefix>.safetensors`, relative to the dataset folder.
pub fn file_name(case: &str, key: &str) -> PathBuf {
    Path::new(DIR).join(format!("{case}-{}.safetensors", &key[..16.min(key.len())]))
}

pub fn sha256_of_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn tensor(d: &Dense) -> Tensor {
    Tensor::from_slice(&d.data).reshape(&d.shape)
}

/// Writes a case's examples to `path` (through a temporary file).
pub fn write(path: &Path, examples: &[Example]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let ids: Vec<&str> = examples.iter().map(|e| e.id.as_str()).collect();
    let mut named = Vec::with_capacity(examples.len() * 2 + 1);
    named.push((
        "ids".to_string(),
        Tensor::from_slice(serde_json::to_string(&ids)?.as_bytes()),
    ));
    for (i, e) in examples.iter().enumerate() {
        named.push((format!("{i}.image"), tensor(&e.image)));
        named.push((format!("{i}.target"), tensor(&e.target)));
    }
    crate::fsio::write_atomic_with(path, |tmp| {
        Tensor::write_safetensors(&named, tmp)
            .with_context(|| format!("cannot write the cache {}", path.display()))
    })
}

/// A case file's example ids and shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub ids: Vec<String>,
    /// Image and target shape of each example.
    pub shapes: Vec<(Vec<i64>, Vec<i64>)>,
}

#[derive(serde::Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<i64>,
    data_offsets: [u64; 2],
}

/// Where one tensor of a case file lies: absolute byte offset and length,
/// and its shape (always f32: the cache writes nothing else).
#[derive(Clone, Debug, PartialEq)]
pub struct Loc {
    pub offset: u64,
    pub len: u64,
    pub shape: Vec<i64>,
}

/// Every example of a case file: its id, and where its image and target lie.
#[derive(Clone, Debug, PartialEq)]
pub struct Index {
    pub examples: Vec<(String, Loc, Loc)>,
}

/// Reads a case file's header and ids without its tensors; fails when the
/// file is not a whole safetensors file of this layout.
pub fn index(path: &Path) -> Result<Index> {
    let bad = |why: &str| anyhow::anyhow!("data cache {}: {why}", path.display());
    let mut f =
        std::fs::File::open(path).with_context(|| format!("data cache {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| bad("truncated"))?;
    let n = u64::from_le_bytes(n);
    if n > len.saturating_sub(8) || n > 100 << 20 {
        bail!(bad("not a safetensors file"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|_| bad("truncated"))?;
    let mut entries: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|_| bad("not a safetensors header"))?;
    entries.remove("__metadata__");
    let entries: HashMap<String, Entry> = entries
        .into_iter()
        .map(|(k, v)| serde_json::from_value(v).map(|e| (k, e)))
        .collect::<Result<_, _>>()
        .map_err(|_| bad("not a safetensors header"))?;
    let end = entries
        .values()
        .map(|e| e.data_offsets[1])
        .max()
        .unwrap_or(0);
    if 8 + n + end != len {
        bail!(bad("truncated or padded"));
    }
    let ids_entry = entries.get("ids").ok_or_else(|| bad("no `ids`"))?;
    let [a, b] = ids_entry.data_offsets;
    let mut ids = vec![0u8; b.saturating_sub(a) as usize];
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(8 + n + a))?;
    f.read_exact(&mut ids)?;
    let ids: Vec<String> =
        serde_json::from_slice(&ids).map_err(|_| bad("`ids` is not a list of ids"))?;
    let examples = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let loc = |part: &str| {
                let e = entries
                    .get(&format!("{i}.{part}"))
                    .ok_or_else(|| bad(&format!("no `{i}.{part}`")))?;
                let [a, b] = e.data_offsets;
                let count: i64 = e.shape.iter().product();
                if e.dtype != "F32" || b < a || (b - a) as i64 != 4 * count {
                    return Err(bad(&format!("`{i}.{part}` is not f32 of its shape")));
                }
                Ok(Loc {
                    offset: 8 + n + a,
                    len: b - a,
                    shape: e.shape.clone(),
                })
            };
            Ok((id, loc("image")?, loc("target")?))
        })
        .collect::<Result<_>>()?;
    Ok(Index { examples })
}

/// What a case file holds, read from its header and `ids` alone.
pub fn summary(path: &Path) -> Result<Summary> {
    let index = index(path)?;
    Ok(Summary {
        ids: index.examples.iter().map(|(id, _, _)| id.clone()).collect(),
        shapes: index
            .examples
            .iter()
            .map(|(_, i, t)| (i.shape.clone(), t.shape.clone()))
            .collect(),
    })
}

/// One tensor of a case file, read alone.
pub fn read_at(path: &Path, loc: &Loc) -> Result<Tensor> {
    use std::io::{Seek, SeekFrom};
    let mut f =
        std::fs::File::open(path).with_context(|| format!("data cache {}", path.display()))?;
    f.seek(SeekFrom::Start(loc.offset))?;
    let mut bytes = vec![0u8; loc.len as usize];
    f.read_exact(&mut bytes)
        .with_context(|| format!("data cache {}: truncated", path.display()))?;
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Ok(Tensor::from_slice(&values).reshape(&loc.shape))
}

/// Every example of a case file, in order.
pub fn read(path: &Path) -> Result<Vec<Sample>> {
    let named = Tensor::read_safetensors(path)
        .with_context(|| format!("data cache {}: unreadable", path.display()))?;
    let mut by_name: HashMap<String, Tensor> = named.into_iter().collect();
    let ids = by_name
        .remove("ids")
        .with_context(|| format!("data cache {}: no `ids`", path.display()))?;
    let bytes: Vec<u8> = Vec::<u8>::try_from(&ids)
        .with_context(|| format!("data cache {}: `ids` is not bytes", path.display()))?;
    let ids: Vec<String> = serde_json::from_slice(&bytes)
        .with_context(|| format!("data cache {}: `ids` is not a list", path.display()))?;
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| {
            let mut take = |part: &str| {
                by_name.remove(&format!("{i}.{part}")).with_context(|| {
                    format!("data cache {}: no `{i}.{part}` for `{id}`", path.display())
                })
            };
            Ok(Sample {
                image: take("image")?,
                target: take("target")?,
                id,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_summary_without_tensors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(file_name("c1", &"ab".repeat(32)));
        let ex = |id: &str, v: f32| Example {
            id: id.into(),
            image: Dense::new(vec![1, 2, 2], vec![v; 4]).unwrap(),
            target: Dense::new(vec![2, 2], vec![1.0; 4]).unwrap(),
        };
        write(&p, &[ex("c1:axial:0", 0.25), ex("c1:axial:1", 0.5)]).unwrap();
        let s = summary(&p).unwrap();
        assert_eq!(s.ids, ["c1:axial:0", "c1:axial:1"]);
        assert_eq!(s.shapes[1], (vec![1, 2, 2], vec![2, 2]));
        let back = read(&p).unwrap();
        assert_eq!(back[1].id, "c1:axial:1");
        assert_eq!(back[1].image.double_value(&[0, 1, 1]), 0.5);
        let (_, image, _) = &index(&p).unwrap().examples[1];
        assert!(read_at(&p, image).unwrap().equal(&back[1].image));

        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        assert!(summary(&p).is_err(), "a cut file is not a cache hit");
        assert_eq!(
            std::fs::read_dir(p.parent().unwrap()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
