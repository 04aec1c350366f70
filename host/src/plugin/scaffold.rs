//! `amat-host plugin new NAME`: writes a plugin crate outside this
//! repository, depending on the SDK as an outside author would (a path to
//! this checkout's `plugin-sdk`), with this workspace's `Cargo.lock` so the
//! same registry versions build offline, and a tiny synthetic dataset with
//! its data spec and run config, so the steps it prints go from the new
//! crate to an AMAT run. The templates are `host/templates/plugin/`.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

const CARGO_TOML: &str = include_str!("../../templates/plugin/Cargo.toml.in");
const LIB_RS: &str = include_str!("../../templates/plugin/lib.rs.in");
const README: &str = include_str!("../../templates/plugin/README.md.in");
const GITIGNORE: &str = include_str!("../../templates/plugin/gitignore.in");
const SPEC: &str = include_str!("../../templates/plugin/spec.toml.in");
const RUN: &str = include_str!("../../templates/plugin/run.toml.in");

/// Side and count of the demo slices.
const DEMO_SIDE: usize = 32;
const DEMO_SLICES: usize = 48;
/// The template's tau: above what a trained demo model's clean loss reaches.
const TAU: &str = "0.5";

/// The checkout `amat-host` was built from.
fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A written crate.
#[derive(Debug)]
pub struct NewPlugin {
    pub dir: PathBuf,
    /// The crate's name; its library is `lib` (`-` becomes `_`).
    pub name: String,
    pub lib: String,
    pub sdk: PathBuf,
    /// Whether the workspace's lock file was copied.
    pub locked: bool,
}

impl NewPlugin {
    /// The commands from here to an AMAT run, for the terminal.
    pub fn next_steps(&self) -> String {
        let wasm = format!("target/wasm32-wasip2/release/{}.wasm", self.lib);
        format!(
            "created {dir}: task `{name}`, SDK {sdk}{lock}\n\
             next, in {dir}:\n  \
             cargo test                                    # unit tests\n  \
             cargo build --release --target wasm32-wasip2  # {wasm} (sandboxed)\n  \
             cargo build --release                         # target/release/{so} (native, trusted)\n  \
             amat-host plugin check {wasm} --sample demo/image.f32 demo/mask.f32 --options '{{\"size\": {DEMO_SIDE}}}'\n  \
             amat-host data prepare --plugin {wasm} --spec demo/spec.toml\n  \
             amat-host run --plugin {wasm} --config demo/run.toml --method amat --out runs/amat\n",
            dir = self.dir.display(),
            name = self.name,
            sdk = self.sdk.display(),
            lock = if self.locked {
                ", Cargo.lock of the amat workspace"
            } else {
                ""
            },
            so = native_file(&self.lib),
        )
    }
}

fn native_file(lib: &str) -> String {
    format!(
        "{}{lib}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// A task name is a crate name: a lowercase letter, then lowercase letters,
/// digits, `-` or `_`; at most 64 characters.
fn check_name(name: &str) -> Result<()> {
    let ok_start = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok_start || !ok_rest || name.len() > 64 {
        bail!(
            "plugin name `{}`: use a lowercase letter, then lowercase letters, digits, - or _ (at most 64), e.g. brain-mask",
            crate::plugin::escape_controls(name)
        );
    }
    Ok(())
}

/// `brain-mask` -> `BrainMask`.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn fill(template: &str, pairs: &[(&str, &str)]) -> String {
    pairs.iter().fold(template.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{{{k}}}}}"), v)
    })
}

/// Writes the crate `name` into `dir` (default `./name`), which must not
/// exist or be empty, and must lie outside the amat checkout.
pub fn new_plugin(name: &str, dir: Option<&Path>) -> Result<NewPlugin> {
    check_name(name)?;
    let root = checkout();
    let sdk = root.join("plugin-sdk");
    if !sdk.join("Cargo.toml").is_file() {
        bail!(
            "the plugin SDK is not at {} (amat-host was built from a checkout that moved); \
             build amat-host from the checkout you want the plugin to use",
            sdk.display()
        );
    }
    let dir = std::path::absolute(dir.map(Path::to_path_buf).unwrap_or_else(|| name.into()))?;
    let root_abs = std::fs::canonicalize(&root).unwrap_or(root.clone());
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let inside = std::fs::canonicalize(parent)
        .map(|p| p.starts_with(&root_abs))
        .unwrap_or(false);
    if inside {
        bail!(
            "{} lies inside the amat checkout {}: a plugin crate of your own belongs outside it \
             (pass --dir, e.g. --dir ../{name})",
            dir.display(),
            root_abs.display()
        );
    }
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!(
            "{} exists and is not empty: choose another --dir",
            dir.display()
        );
    }
    let lib = name.replace('-', "_");
    let sdk_text = std::fs::canonicalize(&sdk).unwrap_or(sdk.clone());
    let sdk_str = sdk_text.to_string_lossy().into_owned();
    let ty = type_name(name);
    let contract = crate::plugin::CONTRACT_VERSION;
    let pairs = [
        ("crate", name),
        ("task", name),
        ("lib", lib.as_str()),
        ("Type", ty.as_str()),
        ("sdk", sdk_str.as_str()),
        ("tau", TAU),
        ("contract", contract),
    ];
    let write = |rel: &str, text: &[u8]| -> Result<()> {
        let path = dir.join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("Cargo.toml", fill(CARGO_TOML, &pairs).as_bytes())?;
    write("src/lib.rs", fill(LIB_RS, &pairs).as_bytes())?;
    write("README.md", fill(README, &pairs).as_bytes())?;
    write(".gitignore", GITIGNORE.as_bytes())?;
    write("demo/spec.toml", fill(SPEC, &pairs).as_bytes())?;
    write("demo/run.toml", fill(RUN, &pairs).as_bytes())?;
    let (image, mask) = demo_data();
    write("demo/image.f32", &image)?;
    write("demo/mask.f32", &mask)?;
    let lock = root.join("Cargo.lock");
    let locked = lock.is_file();
    if locked {
        std::fs::copy(&lock, dir.join("Cargo.lock"))
            .with_context(|| format!("cannot copy {}", lock.display()))?;
    }
    Ok(NewPlugin {
        dir,
        name: name.into(),
        lib,
        sdk: sdk_text,
        locked,
    })
}

/// `DEMO_SLICES` slices of one bright disk on a noisy background, and their
/// masks, as little-endian f32 (fixed seed: the same files every time).
fn demo_data() -> (Vec<u8>, Vec<u8>) {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut uniform = move || {
        // xorshift64*: plenty for test images.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
    };
    let n = DEMO_SIDE as f32;
    let (mut image, mut mask) = (Vec::new(), Vec::new());
    for _ in 0..DEMO_SLICES {
        let r = n * (0.15 + 0.15 * uniform());
        let (cy, cx) = (r + (n - 2.0 * r) * uniform(), r + (n - 2.0 * r) * uniform());
        let bright = 0.5 + 0.3 * uniform();
        for y in 0..DEMO_SIDE {
            for x in 0..DEMO_SIDE {
                let inside = (y as f32 + 0.5 - cy).powi(2) + (x as f32 + 0.5 - cx).powi(2) <= r * r;
                let base = if inside { bright } else { 0.2 };
                let v = (base + 0.2 * (uniform() - 0.5)).clamp(0.0, 1.0);
                image.extend_from_slice(&v.to_le_bytes());
                mask.extend_from_slice(&(inside as u8 as f32).to_le_bytes());
            }
        }
    }
    (image, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_crate_library_and_type_names() {
        assert_eq!(type_name("brain-mask"), "BrainMask");
        assert_eq!(type_name("ct_organ2"), "CtOrgan2");
        check_name("brain-mask").unwrap();
        for bad in ["", "Brain", "9lives", "a b", "x\u{1b}[2J"] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(!e.contains('\u{1b}'), "{e}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        let pairs = [
            ("crate", "a-b"),
            ("task", "a-b"),
            ("lib", "a_b"),
            ("Type", "AB"),
            ("sdk", "/sdk"),
            ("tau", TAU),
            ("contract", "0.2.0"),
        ];
        for t in [CARGO_TOML, LIB_RS, README, SPEC, RUN] {
            let filled = fill(t, &pairs);
            assert!(!filled.contains("{{"), "{filled}");
        }
    }

    #[test]
    fn the_demo_masks_match_their_slices() {
        let (image, mask) = demo_data();
        let plane = DEMO_SIDE * DEMO_SIDE * 4;
        assert_eq!(image.len(), DEMO_SLICES * plane);
        assert_eq!(mask.len(), image.len());
        let ones = mask
            .chunks_exact(4)
            .filter(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) == 1.0)
            .count();
        // Disks of radius 0.15-0.3 of the side: 7-28 % of the pixels.
        let share = ones as f64 / (DEMO_SLICES * DEMO_SIDE * DEMO_SIDE) as f64;
        assert!((0.05..0.3).contains(&share), "{share}");
    }
}
