//! `deploy/local/run-distributed.sh`'s supervision, through its bash test
//! (`deploy/local/test-run-distributed.sh`, stub services: no database, broker or build needed):
//! a service that exits is restarted with back-off and the script says so; SIGTERM stops the
//! gateway first, then the rest together, killing one that ignores SIGTERM after the bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The bash test takes about 15 s; this bounds a hang.
const WITHIN: Duration = Duration::from_secs(120);

#[test]
fn the_script_restarts_what_exits_and_stops_in_parallel_gateway_first() {
    if !keel::testing::require_program("openssl (the script creates its JWT key pair with it)", "/usr/bin/openssl") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut child = Command::new("bash")
        .arg(root.join("deploy/local/test-run-distributed.sh"))
        .env_remove("RUN_DISTRIBUTED")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // One reader per pipe, so neither can fill up and block the script.
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let out = move || format!("{}{}", stdout.join().unwrap(), stderr.join().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > WITHIN {
            // The test script's own EXIT trap stops what it started; SIGTERM lets it run.
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
            panic!("the script test did not finish within {WITHIN:?}:\n{}", out());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = out();
    assert!(status.success(), "{status}:\n{text}");
    assert!(text.contains("ok: restart with back-off"), "{text}");
    eprintln!("{text}");
}
