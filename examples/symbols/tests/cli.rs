//! The binaries as an operator meets them: a configuration that cannot work is refused with exit
//! 78 and the keys at fault — never a panic — and nothing is written or dialled to say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};

const API: &str = env!("CARGO_BIN_EXE_symbols");
const WORKER: &str = env!("CARGO_BIN_EXE_symbols-worker");

/// Runs `bin` with only `env` (plus `PATH`) in an empty directory: exit code, stdout, stderr.
fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("symbols-cli-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(bin)
        .args(args)
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let left = std::fs::read_dir(&dir).unwrap().count();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(left, 0, "{args:?} wrote files");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn both_binaries_say_who_they_are() {
    for (bin, name) in [(API, "symbols"), (WORKER, "symbols-worker")] {
        let (code, out, err) = run(bin, &["version"], &[]);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with(&format!("name: {name}\n")), "{out}");
        let (code, out, _) = run(bin, &["--help"], &[]);
        assert_eq!(code, 0);
        assert!(out.contains("healthcheck") && out.contains("migrate"), "{out}");
    }
    let (_, out, _) = run(WORKER, &["--help"], &[]);
    assert!(out.contains("dlq"), "the worker manages its dead letters: {out}");
}

#[test]
fn production_refuses_what_cannot_work_with_exit_78_and_no_panic() {
    // Nothing set: every missing production setting at once.
    let (code, out, err) = run(API, &["config", "check"], &[("KEEL_ENV", "production")]);
    assert_eq!(code, 78, "{out}{err}");
    assert!(format!("{out}{err}").contains("cors.allowed_origins"), "{out}{err}");
    // A CORS wildcard.
    let (code, out, err) = run(API, &["serve"], &[("KEEL_ENV", "production"), ("SYMBOLS__CORS__ALLOWED_ORIGINS", "*")]);
    assert_eq!(code, 78, "{out}{err}");
    assert!(err.contains("cors.allowed_origins"), "{err}");
    // A sound configuration but no database URL: refused before binding, one JSON line.
    let env = [
        ("KEEL_ENV", "production"),
        ("SYMBOLS__CORS__ALLOWED_ORIGINS", "https://app.example"),
        ("SYMBOLS__BUS__BACKEND", "rabbitmq"),
        ("SYMBOLS__BUS__URL", "amqp://symbols:a-long-broker-password@broker.invalid:5672/%2f"),
    ];
    let (code, out, err) = run(API, &["serve"], &env);
    assert_eq!(code, 78, "{out}{err}");
    assert!(err.contains("database"), "{err}");
    // The broker's password never shows.
    assert!(!format!("{out}{err}").contains("a-long-broker-password"));
    for text in [&out, &err] {
        assert!(!text.contains("panicked"), "{text}");
    }
    // The worker: the in-process bus loses events on restart, so production refuses it.
    let env = [
        ("KEEL_ENV", "production"),
        ("SYMBOLS_WORKER__CORS__ALLOWED_ORIGINS", "https://app.example"),
        ("SYMBOLS_WORKER__DATABASE__URL", "mysql://symbols:a-long-database-password@db.invalid:3306/symbols"),
        ("SYMBOLS_WORKER__APP__MAX_ATTEMPTS", "0"),
    ];
    let (code, out, err) = run(WORKER, &["config", "check"], &env);
    assert_eq!(code, 78, "{out}{err}");
    let all = format!("{out}{err}");
    assert!(all.contains("app.max_attempts"), "{all}");
    assert!(!all.contains("a-long-database-password") && !all.contains("panicked"), "{all}");
}
