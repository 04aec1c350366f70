//! The host's modules form layers, `cli → app → {train, eval} → attack →
//! plugin → tensor`: a module may import only modules of a lower rank, so
//! there is no cycle and nothing reaches back up. Checked on the source text
//! (every `crate::NAME` path, grouped imports included), which is all the
//! compiler would follow.

use crate::support;
use std::path::Path;

/// Rank of each top-level module of `host/src`; equal ranks may not import
/// each other either (train and eval are independent).
const RANKS: &[(&str, u32)] = &[
    ("fsio", 0),
    ("builtin", 0),
    ("tensor", 1),
    ("model", 1),
    ("dist", 1),
    ("plugin", 2),
    ("data", 3),
    ("attack", 3),
    ("config", 4),
    ("train", 5),
    ("eval", 5),
    ("reference", 5),
    ("app", 6),
    ("cli", 7),
];

fn rank(module: &str) -> Option<u32> {
    RANKS.iter().find(|(m, _)| *m == module).map(|&(_, r)| r)
}

/// The top-level modules a line of code names through `crate::`.
fn imported(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                out.push(head(item.trim()));
            }
        } else {
            out.push(head(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn head(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Every `(file:line, from, to)` import that breaks the layering.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let from = top.trim_end_matches(".rs").to_string();
        let Some(from_rank) = rank(&from) else {
            assert!(
                ["lib", "main"].contains(&from.as_str()),
                "host/src/{from} has no rank: add it to RANKS in tests/layering.rs"
            );
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for to in imported(code) {
                if to == from || to == "self" || to == "super" {
                    continue;
                }
                let to_rank = rank(&to).unwrap_or_else(|| {
                    panic!("{}:{}: unknown module `{to}`", rel.display(), n + 1)
                });
                if to_rank >= from_rank {
                    bad.push(format!("{}:{}: {from} -> {to}", rel.display(), n + 1));
                }
            }
        }
    }
    bad
}

#[test]
fn host_modules_import_only_lower_layers() {
    let bad = violations(&support::root().join("host/src"));
    assert!(
        bad.is_empty(),
        "imports that run up or across the layers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_sees_grouped_and_nested_imports() {
    assert_eq!(
        imported("use crate::{eval::Curve, fsio};"),
        ["eval", "fsio"]
    );
    assert_eq!(imported("let c = crate::app::run(&a);"), ["app"]);
    assert_eq!(imported("use anyhow::Result;"), Vec::<String>::new());
}
