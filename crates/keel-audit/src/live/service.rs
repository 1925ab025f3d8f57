//! The service under audit, started from a shell command: its output kept (bounded) for the
//! log checks, SIGTERM for the drain check, a kill when the audit ends early.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::AuditError;

/// Log lines kept, oldest dropped first.
const MAX_LINES: usize = 20_000;
/// A longer line is cut here (the rest of it is still read and dropped).
const MAX_LINE_BYTES: usize = 16 * 1024;

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

pub(crate) struct Service {
    child: Child,
    /// The process group (the leader's pid): it outlives the leader while a member runs.
    pgid: Option<rustix::process::Pid>,
    lines: Arc<Mutex<VecDeque<String>>>,
    exited: Option<Exit>,
}

impl Service {
    /// Starts `sh -c 'exec <cmd>'` with `env` added (so `$VARS` expand and the service, not a
    /// shell, gets the signal; `env A=b ./svc` sets variables), output captured.
    pub(crate) fn start(cmd: &str, env: &[(String, String)]) -> Result<Service, AuditError> {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("exec {cmd}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Its own process group: signals reach what a wrapper script started, too.
        c.process_group(0);
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().map_err(|e| AuditError::Live(format!("cannot start `{cmd}`: {e}")))?;
        let pgid = child.id().and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw);
        let lines: Arc<Mutex<VecDeque<String>>> = Arc::default();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(collect(BufReader::new(out), lines.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(collect(BufReader::new(err), lines.clone()));
        }
        Ok(Service { child, pgid, lines, exited: None })
    }

    /// The output so far (stdout and stderr interleaved as read).
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.iter().cloned().collect()).unwrap_or_default()
    }

    /// The last `n` lines, for error messages.
    pub(crate) fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether it has exited, and how (without waiting).
    pub(crate) fn try_exit(&mut self) -> Option<Exit> {
        if self.exited.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exited = Some(exit_of(status));
        }
        self.exited
    }

    /// Sends SIGTERM to the service's process group.
    pub(crate) fn terminate(&self) -> bool {
        self.signal_group(rustix::process::Signal::TERM)
    }

    fn signal_group(&self, signal: rustix::process::Signal) -> bool {
        self.pgid.is_some_and(|g| rustix::process::kill_process_group(g, signal).is_ok())
    }

    /// Whether a process of the group still runs (the leader may have exited before the rest).
    pub(crate) fn group_alive(&self) -> bool {
        self.pgid.is_some_and(|g| rustix::process::test_kill_process_group(g).is_ok())
    }

    /// Waits up to `bound` for the exit; `None` if it is still running.
    pub(crate) async fn wait(&mut self, bound: Duration) -> Option<(Exit, Duration)> {
        let start = Instant::now();
        match tokio::time::timeout(bound, self.child.wait()).await {
            Ok(Ok(status)) => {
                let e = exit_of(status);
                self.exited = Some(e);
                Some((e, start.elapsed()))
            }
            _ => None,
        }
    }

    /// SIGKILL to the process group, and reap.
    pub(crate) async fn kill(&mut self) {
        self.signal_group(rustix::process::Signal::KILL);
        let _ = self.child.kill().await;
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Whatever the audit's outcome, nothing it started outlives it: the group is killed even
        // after its leader exited (the group id is not reused while a member lives).
        self.signal_group(rustix::process::Signal::KILL);
    }
}

fn exit_of(status: std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        (None, None) => Exit::Code(-1),
    }
}

async fn collect<R: tokio::io::AsyncRead + Unpin>(mut reader: BufReader<R>, lines: Arc<Mutex<VecDeque<String>>>) {
    // Bytes, not `lines()`: output that is not UTF-8 must not stop the reading (a service
    // writing into a pipe nobody reads blocks).
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut reader).take(MAX_LINE_BYTES as u64).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if n == MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
            // Drop the rest of an over-long line, a bounded piece at a time.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match (&mut reader).take(MAX_LINE_BYTES as u64).read_until(b'\n', &mut rest).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) if rest.last() == Some(&b'\n') => break,
                    Ok(_) => {}
                }
            }
        }
        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_owned();
        if let Ok(mut l) = lines.lock() {
            if l.len() >= MAX_LINES {
                l.pop_front();
            }
            l.push_back(line);
        }
    }
}
