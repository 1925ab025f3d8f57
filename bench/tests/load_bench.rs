//! load-bench's command line: bad input gets a clear message and a usage exit status, and a
//! gateway that cannot be reached fails the run with the reason, at once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

fn load_bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_load-bench")).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_prints_the_usage_and_succeeds() {
    let o = load_bench(&["--help"]);
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    for flag in
        ["--base", "--rate", "--step", "--mix", "--refusals-ok", "--start-after", "--bound", "--burst", "--timeline"]
    {
        assert!(out.contains(flag), "{flag} missing from: {out}");
    }
}

#[test]
fn bad_arguments_exit_2_saying_what_is_wrong() {
    for (args, says) in [
        (&[][..], "usage: load-bench --base URL"),
        (&["--base", "http://127.0.0.1:1", "--step", "10:20"][..], "--step is FROM:BY:SECS:UPTO"),
        (&["--base", "http://127.0.0.1:1", "--mix", "browse=1,dance=2"][..], "no operation dance"),
        (&["--base", "http://127.0.0.1:1", "--mix", "browse"][..], "--mix is OP=WEIGHT"),
        (&["--base", "http://127.0.0.1:1", "--rate", "0"][..], "--rate must be above 0"),
        (&["--base", "http://127.0.0.1:1", "--rate", "fast"][..], "--rate"),
        (&["--base", "http://127.0.0.1:1", "--bound", "browse"][..], "--bound is OP=MS"),
        (&["--base", "http://127.0.0.1:1", "--burst", "50"][..], "--burst is PEOPLE:ROUNDS"),
        (&["--base", "http://127.0.0.1:1", "--burst", "0:3"][..], "--burst is PEOPLE:ROUNDS"),
        (&["--base", "http://127.0.0.1:1", "--frobnicate"][..], "unknown argument --frobnicate"),
        (&["--base"][..], "--base needs a value"),
    ] {
        let o = load_bench(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn an_unreachable_gateway_fails_the_run_with_the_reason() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let o = load_bench(&["--base", "http://127.0.0.1:1", "--rate", "1", "--secs", "1", "--persons", "1"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(stderr(&o).contains("register"), "names the step that failed: {}", stderr(&o));
}
