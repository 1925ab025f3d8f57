//! The static checks, one module per kind of file. Each module owns its rules (`RULES`) and a
//! `check` over the repository; [`rules`] is the whole checklist.

mod code;
mod compose;
mod dockerfile;
mod kubernetes;
mod prometheus;
mod repository;
mod secrets;

use std::path::PathBuf;

use crate::{AuditError, Collector, Repo, Rule};

/// Every rule, in checklist order: the static ones, then the live ones.
pub fn rules() -> impl Iterator<Item = &'static Rule> {
    [
        repository::RULES,
        code::RULES,
        dockerfile::RULES,
        compose::RULES,
        kubernetes::RULES,
        prometheus::RULES,
        crate::live::RULES,
    ]
    .into_iter()
    .flatten()
    .copied()
}

/// The rule with this id.
pub fn rule(id: &str) -> Option<&'static Rule> {
    rules().find(|r| r.id == id)
}

/// Runs every static check over `repo`; `manifests` are rendered Kubernetes manifests read
/// besides the repository's own.
pub(crate) fn run(repo: &Repo, manifests: &[PathBuf], out: &mut Collector) -> Result<(), AuditError> {
    repository::check(repo, out);
    code::check(repo, out);
    dockerfile::check(repo, out);
    compose::check(repo, out);
    kubernetes::check(repo, manifests, out)?;
    prometheus::check(repo, out);
    Ok(())
}

/// The 1-based line of the first line of `text` containing `needle`.
pub(crate) fn line_containing(text: &str, needle: &str) -> Option<u32> {
    text.lines().position(|l| l.contains(needle)).and_then(|i| u32::try_from(i + 1).ok())
}

/// A line of evidence: whitespace (newlines included) collapsed, cut at 160 characters.
pub(crate) fn excerpt(line: &str) -> String {
    let t = line.split_whitespace().collect::<Vec<_>>().join(" ");
    if t.chars().count() > 160 { format!("{}…", t.chars().take(160).collect::<String>()) } else { t.to_owned() }
}

/// A repository of `files` (path, text) in a temporary directory, for the checks' tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_repo(files: &[(&str, &str)]) -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let repo = Repo::open(dir.path(), &[]).unwrap();
    (dir, repo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_are_unique_and_complete() {
        let mut seen = std::collections::BTreeSet::new();
        for r in rules() {
            assert!(seen.insert(r.id), "duplicate rule {}", r.id);
            assert!(r.id.contains('/'), "{}", r.id);
            assert!(!r.title.is_empty() && !r.why.is_empty() && !r.fix.is_empty(), "{}", r.id);
        }
        assert!(seen.len() >= 40, "{} rules", seen.len());
    }
}
