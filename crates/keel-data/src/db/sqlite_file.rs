//! SQLite files hold a service's data (accounts, tokens, the audit log): they are created
//! readable by their owner only, in a directory only the owner can enter.

use std::path::{Path, PathBuf};

use super::DataError;

/// The file of a SQLite URL that may create it (`mode=rwc`); `None` for an in-memory database,
/// another backend, or a URL that only opens an existing file.
pub(crate) fn creatable_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let creates = query.split('&').any(|kv| kv == "mode=rwc");
    if !creates || path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(PathBuf::from(path))
}

/// Creates the directory (mode 0700, with missing parents) and the empty file (0600) of a
/// SQLite URL with `mode=rwc` when they do not exist, before SQLite would create them with the
/// process's umask (usually 0755 and 0644). Existing files and directories are left as they
/// are: their mode is the operator's choice. SQLite gives its `-wal` and `-shm` files the mode
/// of the database file.
pub fn prepare_sqlite_file(url: &str) -> Result<(), DataError> {
    let Some(path) = creatable_path(url) else { return Ok(()) };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    create_private_file(&path)
}

/// Creates `dir` and its missing parents with mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), DataError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|e| DataError::Config(format!("cannot create {} for SQLite: {e}", dir.display())))
}

fn create_private_file(path: &Path) -> Result<(), DataError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    match o.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(DataError::Config(format!("cannot create the SQLite file {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_creating_file_urls_have_a_path() {
        assert_eq!(creatable_path("sqlite://data/auth.db?mode=rwc"), Some(PathBuf::from("data/auth.db")));
        assert_eq!(creatable_path("sqlite:///tmp/a.db?mode=rwc&cache=shared"), Some(PathBuf::from("/tmp/a.db")));
        assert_eq!(creatable_path("sqlite:x.db?mode=rwc"), Some(PathBuf::from("x.db")));
        for url in
            ["sqlite://data/auth.db", "sqlite::memory:", "sqlite://:memory:?mode=rwc", "postgres://h/db?mode=rwc"]
        {
            assert_eq!(creatable_path(url), None, "{url}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn new_files_and_directories_are_the_owners_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/svc.db");
        prepare_sqlite_file(&format!("sqlite://{}?mode=rwc", path.display())).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&tmp.path().join("a/b")), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        // Idempotent, and an existing file keeps the mode its operator gave it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        prepare_sqlite_file(&format!("sqlite://{}?mode=rwc", path.display())).unwrap();
        assert_eq!(mode(&path), 0o640);
        // A URL that does not create files creates nothing.
        let other = tmp.path().join("c/none.db");
        prepare_sqlite_file(&format!("sqlite://{}", other.display())).unwrap();
        assert!(!tmp.path().join("c").exists());
    }
}
