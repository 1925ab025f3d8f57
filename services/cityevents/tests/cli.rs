//! The command line a newcomer meets: `version` and `--version` everywhere, `--help` at every
//! level exits 0 and says how to configure, commands a service cannot use are neither offered
//! nor run, and nothing of this writes a file (no `data/dev-secrets.json`, no database).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_cityevents");
/// Every service's short name, from the module table.
fn services() -> Vec<&'static str> {
    cityevents_common::services::ALL.iter().map(|m| m.short).collect()
}

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
    for s in services() {
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

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_module_table_is_printed_and_is_what_the_scripts_read() {
    use cityevents_common::services::{ALL, table};
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(dir.path(), &["services"]);
    assert_eq!((code, out.as_str()), (0, table().as_str()), "{err}");
    let checked_in = std::fs::read_to_string(repo().join("deploy/services.tsv")).unwrap();
    assert_eq!(checked_in, out, "deploy/services.tsv is stale: `cityevents services > deploy/services.tsv`");
    let (code, out, err) = run(dir.path(), &["services", "--json"]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = json.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ALL.iter().map(|m| m.name).collect::<Vec<_>>());
    assert_eq!(json[4]["upstreams"], serde_json::json!(["auth", "events", "joins", "notifier"]));
    let (code, _, err) = run(dir.path(), &["services", "--yaml"]);
    assert_eq!(code, 64, "{err}");
    assert_wrote_nothing(dir.path(), "services");

    // The scripts read the table (deploy/services.sh): what it gives them is the table.
    let script = format!(
        "source {}/deploy/services.sh; echo \"${{SERVICES[*]}}|${{DB_SERVICES[*]}}|${{CALLED[*]}}|${{ENTRY[*]}}|${{PORT[events]}}|${{MANAGEMENT_PORT[joins]}}|${{UPSTREAMS[events]}}\"",
        repo().display()
    );
    let got = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "auth events joins notifier gateway|auth events joins notifier|auth events joins notifier|gateway|8082|9083|joins"
    );

    // Each service's config file, and only those, with the table's port as its default.
    let mut files: Vec<String> = std::fs::read_dir(repo().join("deploy/config"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut want: Vec<String> = ALL.iter().map(|m| format!("{}.yaml", m.short)).collect();
    want.sort();
    assert_eq!(files, want);
    for m in &ALL {
        let text = std::fs::read_to_string(repo().join(format!("deploy/config/{}.yaml", m.short))).unwrap();
        let port = format!("port: ${{CITYEVENTS_{}_PORT:-{}}}", m.short.to_uppercase(), m.port);
        assert!(text.contains(&port), "deploy/config/{}.yaml: no `{port}`", m.short);
    }
}

#[test]
fn no_script_keeps_its_own_list_of_services() {
    // Three or more services named in a row on a line of code: a list that can drift from the
    // module table. Scripts source deploy/services.sh instead.
    let names = services().join("|");
    let list = three_in_a_row(&names);
    let mut found = Vec::new();
    let mut dirs = vec![repo().join("deploy"), repo().join(".ci"), repo().join("bench")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "sh") {
                for (i, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
                    let code = line.split(" #").next().unwrap_or_default();
                    if !code.trim_start().starts_with('#') && list(code) {
                        found.push(format!("{}:{}: {line}", path.display(), i + 1));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "scripts listing services themselves:\n{}", found.join("\n"));
}

/// Whether `line` names three of `names` (`a|b|c`) in a row, separated by spaces or commas.
fn three_in_a_row(names: &str) -> impl Fn(&str) -> bool + use<> {
    let names: Vec<String> = names.split('|').map(str::to_owned).collect();
    move |line: &str| {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || matches!(c, ',' | '(' | ')' | ';' | '[' | ']' | '"'))
            .filter(|w| !w.is_empty())
            .collect();
        words.windows(3).any(|w| w.iter().all(|x| names.iter().any(|n| n == x)))
    }
}
