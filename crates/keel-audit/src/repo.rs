//! The repository under audit: its files (git's view when it is a git work tree, so ignored
//! files are not "committed"), read with a size bound.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::AuditError;

/// Files larger than this are not read: generated bundles and data, not code or configuration.
pub(crate) const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Directories never descended into when the root is not a git work tree.
const SKIPPED_DIRS: &[&str] = &[".git", "target", "node_modules", "vendor", "dist", "build", ".venv", "__pycache__"];

/// The files of a repository, as paths relative to its root with `/` separators.
#[derive(Debug)]
pub struct Repo {
    root: PathBuf,
    files: Vec<String>,
}

impl Repo {
    /// Lists the files under `root`: `git ls-files` (tracked and untracked, not ignored) in a git
    /// work tree, otherwise a walk that skips build output and dependency folders. `exclude`
    /// holds path prefixes (`deploy/dev`, `third_party/`) left out of every check.
    pub fn open(root: &Path, exclude: &[String]) -> Result<Repo, AuditError> {
        if !root.is_dir() {
            return Err(AuditError::NotADirectory(root.to_path_buf()));
        }
        let excluded: Vec<String> =
            exclude.iter().map(|e| e.trim_matches('/').to_owned()).filter(|e| !e.is_empty()).collect();
        let mut files = match git_files(root) {
            Some(f) => f,
            None => {
                let mut out = Vec::new();
                walk(root, "", &mut out)?;
                out
            }
        };
        files.retain(|f| !excluded.iter().any(|e| f == e || f.starts_with(&format!("{e}/"))));
        files.sort();
        files.dedup();
        Ok(Repo { root: root.to_path_buf(), files })
    }

    /// The audited root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every file, sorted.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Whether `rel` is one of the repository's files.
    pub fn has(&self, rel: &str) -> bool {
        self.files.binary_search_by(|f| f.as_str().cmp(rel)).is_ok()
    }

    /// The text of `rel`, or `None` when it is too large, unreadable or not UTF-8.
    pub fn read(&self, rel: &str) -> Option<String> {
        let path = self.root.join(rel);
        let meta = std::fs::metadata(&path).ok()?;
        if meta.len() > MAX_FILE_BYTES {
            return None;
        }
        std::fs::read_to_string(path).ok()
    }

    /// Files whose name (last component) satisfies `pred`.
    pub fn named(&self, pred: impl Fn(&str) -> bool) -> impl Iterator<Item = &str> {
        self.files.iter().map(String::as_str).filter(move |f| pred(file_name(f)))
    }
}

/// The last component of a `/`-separated path.
pub fn file_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

/// Whether a path is test code, test data or an example fixture rather than what runs in
/// production: `_test.go`, `*.test.js`, `*.spec.ts`, files under `test/`, `tests/`,
/// `__tests__/`, `testdata/`, `fixtures/`, `mocks/`, `bench/`, `benches/`, `e2e/` or `fuzz/` are
/// not. Examples are audited: people copy them.
pub fn is_test_path(rel: &str) -> bool {
    let name = file_name(rel);
    if name.ends_with("_test.go")
        || name.contains(".test.")
        || name.contains(".spec.")
        || name.ends_with("_test.rs")
        || name.ends_with("_spec.rb")
    {
        return true;
    }
    rel.split('/').rev().skip(1).any(|dir| {
        matches!(
            dir,
            "test"
                | "tests"
                | "__tests__"
                | "__mocks__"
                | "testdata"
                | "testing"
                | "fixtures"
                | "bench"
                | "benches"
                | "e2e"
                | "mocks"
                | "fuzz"
        )
    })
}

fn git_files(root: &Path) -> Option<Vec<String>> {
    let inside = Command::new("git").arg("-C").arg(root).args(["rev-parse", "--is-inside-work-tree"]).output().ok()?;
    if !inside.status.success() || inside.stdout.trim_ascii() != b"true" {
        return None;
    }
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "."])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let files = out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .filter_map(|p| std::str::from_utf8(p).ok())
        // Deleted but still indexed files are listed by --cached.
        .filter(|p| root.join(p).is_file())
        .map(str::to_owned)
        .collect();
    Some(files)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), AuditError> {
    let entries = std::fs::read_dir(dir).map_err(|e| AuditError::Read(dir.to_path_buf(), e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let rel = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            if !SKIPPED_DIRS.contains(&name) {
                walk(&entry.path(), &rel, out)?;
            }
        } else if kind.is_file() {
            out.push(rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_paths_are_recognised() {
        for p in
            ["a/b_test.go", "web/app.test.js", "x/y.spec.ts", "tests/it.rs", "pkg/testdata/a.go", "src/__tests__/a.js"]
        {
            assert!(is_test_path(p), "{p}");
        }
        for p in ["cmd/main.go", "src/server.js", "src/main.rs", "testimony/a.go", "latest.go"] {
            assert!(!is_test_path(p), "{p}");
        }
    }

    #[test]
    fn a_plain_directory_is_walked_without_build_output() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::create_dir_all(dir.path().join("node_modules/x")).unwrap();
        std::fs::write(dir.path().join("src/a.js"), "x").unwrap();
        std::fs::write(dir.path().join("node_modules/x/b.js"), "x").unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "x").unwrap();
        let repo = Repo::open(dir.path(), &[]).unwrap();
        assert_eq!(repo.files(), ["Dockerfile", "src/a.js"]);
        let repo = Repo::open(dir.path(), &["src/".into()]).unwrap();
        assert_eq!(repo.files(), ["Dockerfile"]);
    }
}
