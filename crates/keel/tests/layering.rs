//! `keel::config` is the bottom layer: it names no other Keel module, so that every module can
//! own its configuration section and depend on config without a cycle (and config can become a
//! crate of its own). This reads the sources, so a violation fails here rather than at the split.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::…` and `super::…` path in `text` that leaves the config module, with its line.
fn escapes(text: &str, top: bool) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for (at, _) in line.match_indices("crate::") {
            let before = line[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue; // `$crate::` or part of a longer name
            }
            let rest = &line[at + "crate::".len()..];
            if !(rest.starts_with("config::") || rest.starts_with("config;") || rest == "config") {
                found.push((n + 1, line[at..].to_owned()));
            }
        }
        // At the top level of `config/mod.rs` (unindented), `super` is the crate root; in the
        // files below it, `super::super` is.
        let outward = if top && !line.starts_with(char::is_whitespace) { "super::" } else { "super::super::" };
        if let Some(at) = line.find(outward) {
            found.push((n + 1, line[at..].to_owned()));
        }
    }
    found
}

#[test]
fn config_names_no_other_keel_module() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let mut files = Vec::new();
    sources(&dir, &mut files);
    files.sort();
    assert!(files.len() > 3, "no sources under {}", dir.display());
    let mut bad = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.strip_prefix(&dir).unwrap().to_string_lossy().into_owned();
        for (line, path) in escapes(&text, name == "mod.rs") {
            bad.push(format!("src/config/{name}:{line}: {path}"));
        }
    }
    assert!(bad.is_empty(), "config must not name other Keel modules:\n{}", bad.join("\n"));
}

#[test]
fn the_check_sees_an_escape() {
    assert_eq!(escapes("use crate::http::Problem;", false).len(), 1);
    assert_eq!(escapes("/// [`x`](crate::app::exit)", false).len(), 1);
    assert_eq!(escapes("use super::super::app;", false).len(), 1);
    assert_eq!(escapes("use super::Secret;", true).len(), 1);
    assert!(escapes("use super::Secret; #[serde(with = \"crate::config::duration\")]", false).is_empty());
    assert!(escapes("$crate::x", false).is_empty());
    assert!(escapes("    use super::*;", true).is_empty());
}
