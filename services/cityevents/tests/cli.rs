//! The command line a newcomer meets: `version` and `--version` everywhere, `--help` at every
//! level exits 0 and says how to configure, commands a service cannot use are neither offered
//! nor run, and nothing of this writes a file (no `data/dev-secrets.json`, no database).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_cityevents");
const SERVICES: [&str; 5] = ["auth", "events", "joins", "notifier", "gateway"];

/// Runs the launcher in `dir` (development profile, nothing on stdin): exit code, stdout, stderr.
fn run(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KEEL_ENV", "development")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn assert_wrote_nothing(dir: &std::path::Path, after: &str) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "{after} wrote {left:?}");
}

#[test]
fn the_launcher_answers_help_and_version_at_every_level() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["--help"][..], &["-h"], &["help"], &["all", "--help"], &["all", "-h"]] {
        let (code, out, err) = run(dir.path(), args);
        assert_eq!(code, 0, "{args:?}: {err}");
        for needle in [
            "cityevents serve <service>",
            "CITYEVENTS_<SERVICE>__<SECTION>__<KEY>",
            "KEEL_ENV=development|test|production",
            "--config FILE",
            "management 127.0.0.1:9080",
            "data/dev-secrets.json",
            "operator page",
        ] {
            assert!(out.contains(needle), "{args:?}: no `{needle}` in\n{out}");
        }
    }
    for args in [&["version"][..], &["--version"], &["-V"], &["all", "--version"]] {
        let (code, out, err) = run(dir.path(), args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.starts_with("name: cityevents\n") && out.contains("commit: "), "{args:?}: {out}");
    }
    let (code, _, err) = run(dir.path(), &["nonsense"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("unknown service or command `nonsense`"), "{err}");
    let (code, _, err) = run(dir.path(), &["all", "--port", "1"]);
    assert_eq!(code, 64, "{err}");
    assert_wrote_nothing(dir.path(), "help, version and refused commands");
}

#[test]
fn every_service_answers_help_and_version_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for s in SERVICES {
        let prefix = format!("CITYEVENTS_{}__<SECTION>__<KEY>", s.to_uppercase());
        for args in [vec![s, "--help"], vec![s, "help"], vec!["serve", s, "--help"]] {
            let (code, out, err) = run(dir.path(), &args);
            assert_eq!(code, 0, "{args:?}: {err}");
            for needle in ["serve", "healthcheck", "config", &prefix, "KEEL_ENV", "--config", "ADMIN_TOKEN"] {
                assert!(out.contains(needle), "{args:?}: no `{needle}` in\n{out}");
            }
        }
        for args in [vec![s, "version"], vec![s, "--version"], vec![s, "-V"]] {
            let (code, out, err) = run(dir.path(), &args);
            assert_eq!(code, 0, "{args:?}: {err}");
            assert!(out.starts_with(&format!("name: cityevents-{s}\n")), "{args:?}: {out}");
        }
        for sub in ["config", "healthcheck", "dlq", "keys", "slo"] {
            let (code, out, err) = run(dir.path(), &[s, sub, "--help"]);
            assert_eq!(code, 0, "{s} {sub} --help: {err}");
            assert!(out.contains("Usage:"), "{s} {sub} --help: {out}");
        }
    }
    for args in
        [&["auth", "admin", "--help"][..], &["auth", "admin", "create", "--help"], &["auth", "migrate", "--help"]]
    {
        let (code, out, err) = run(dir.path(), args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
    let (_, out, _) = run(dir.path(), &["auth", "admin", "create", "--help"]);
    assert!(out.contains("--promote"), "{out}");
    assert_wrote_nothing(dir.path(), "--help and version");
}

#[test]
fn commands_a_service_cannot_use_are_neither_offered_nor_run() {
    let dir = tempfile::tempdir().unwrap();
    let lists = |help: &str, c: &str| help.contains(&format!("\n  {c} "));
    let (_, gateway, _) = run(dir.path(), &["gateway", "--help"]);
    assert!(!lists(&gateway, "migrate") && !lists(&gateway, "audit"), "the gateway has no database:\n{gateway}");
    let (_, events, _) = run(dir.path(), &["events", "--help"]);
    assert!(lists(&events, "migrate") && !lists(&events, "audit"), "events keeps no audit log:\n{events}");
    let (_, auth, _) = run(dir.path(), &["auth", "--help"]);
    assert!(lists(&auth, "migrate") && lists(&auth, "audit") && lists(&auth, "admin"), "{auth}");

    for (args, why) in [
        (&["gateway", "migrate"][..], "has no database"),
        (&["gateway", "migrate", "status"], "has no database"),
        (&["gateway", "audit", "verify"], "has no database"),
        (&["events", "audit", "verify"], "keeps no audit log"),
    ] {
        let (code, _, err) = run(dir.path(), args);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains("does not apply") && err.contains(why), "{args:?}: {err}");
    }
    // An incomplete command is a usage error, and writes nothing either.
    let (code, _, err) = run(dir.path(), &["auth", "admin"]);
    assert_eq!(code, 64, "{err}");
    assert_wrote_nothing(dir.path(), "refused commands");
    // --promote reads no password: one given is a contradiction, not ignored.
    let (code, _, err) =
        run(dir.path(), &["auth", "admin", "create", "--email", "a@example.com", "--promote", "--password-file", "x"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--promote") && err.contains("--password-file"), "{err}");
}
