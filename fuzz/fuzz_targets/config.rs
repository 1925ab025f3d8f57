//! The configuration loader: YAML, `<SERVICE>__…` environment overrides, `${VAR}` and
//! `${VAR:-default}` interpolation, `<key>_file` secrets, durations, byte sizes and every
//! section's validation, for Keel's own sections in both profiles.
//!
//! Input (text, so seeds are readable): an optional first line `production`, then `NAME=value`
//! environment lines, a line `---`, and the YAML file. Without `---` it is all YAML.
//! Whatever it holds, loading answers a configuration or a list of problems, never a panic,
//! and a problem never repeats a value taken from the environment through `${VAR}` (unless the
//! input itself spells it).

#![no_main]

use std::io::Write as _;
use std::sync::OnceLock;

use keel::config::{NoConfig, Profile};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret-value-7f3a9c";

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (head, yaml) = text.split_once("\n---\n").unwrap_or(("", text));
    let mut lines = head.lines().peekable();
    let profile = if lines.peek() == Some(&"production") {
        lines.next();
        Profile::Production
    } else {
        Profile::Test
    };
    let mut env: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    // A secret the file may point at through `${FUZZ_SECRET}`: never echoed in a problem.
    env.push(("FUZZ_SECRET".to_owned(), SECRET.to_owned()));
    let path = dir().path().join("config.yaml");
    let mut file = std::fs::File::create(&path).expect("the config file");
    file.write_all(yaml.as_bytes()).expect("written");
    drop(file);
    let loaded = keel::app::Loader::new("fuzz", profile).file(&path).env(env).load::<NoConfig>();
    match loaded {
        Ok(loaded) => {
            // What `config show` prints: secrets masked.
            let shown = loaded.to_yaml();
            assert!(!shown.contains(SECRET) || text.contains(SECRET), "a secret in config show");
        }
        Err(e) => {
            let said = e.to_string();
            assert!(!said.is_empty());
            assert!(!said.contains(SECRET) || text.contains(SECRET), "a secret in a problem: {said}");
        }
    }
    // The parsers the sections use, on the YAML text as one value.
    let value = yaml.trim();
    let _ = keel::config::duration::parse(value);
    if let Ok(n) = keel::config::bytes::parse(value) {
        assert!(value.chars().any(|c| c.is_ascii_digit()), "{value:?} is {n} bytes");
    }
});
