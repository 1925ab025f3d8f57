//! Headless Chromium for tests of pages a person uses (the operator page): load a URL in a fresh
//! profile and read the DOM it ended on and what the browser logged to its console.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's Chromium, which the CI's `.ci/browser.sh` installs. Check it with
/// [`crate::require_program`] first.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one page may take.
const DEADLINE: Duration = Duration::from_secs(90);

/// What headless Chromium made of a page.
#[derive(Debug, Clone)]
pub struct Page {
    /// Its standard output: the DOM with `--dump-dom`.
    pub dom: String,
    /// Its console messages (the `CONSOLE` lines of its log): script errors, Content-Security-
    /// Policy violations, failed loads. A page that runs and loads only what it should has none.
    pub console: Vec<String>,
}

/// Opens `url` in headless Chromium with `args` (`--dump-dom`, `--screenshot=…`), its profile and
/// output in `dir` (cookies set on the way, a sign-in redirect's, are sent after). Blocking; an
/// error when Chromium cannot start, fails or takes more than 90 s.
///
/// ```no_run
/// let dir = std::env::temp_dir().join("page-test");
/// let page = keel_testing::browser::chromium(&dir, &["--dump-dom"], "http://127.0.0.1:9080/admin/login").unwrap();
/// assert!(page.console.is_empty(), "{:?}", page.console);
/// ```
pub fn chromium(dir: &Path, args: &[&str], url: &str) -> Result<Page, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (out_path, err_path) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
    // Files, not pipes: a large DOM would fill a pipe nobody reads while we wait.
    let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(file(&out_path)?)
        .stderr(file(&err_path)?)
        .spawn()
        .map_err(|e| format!("cannot start {CHROMIUM}: {e}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(status)) => return Err(format!("chromium exited with {status}")),
            Ok(None) if started.elapsed() > DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("chromium did not finish within {}s", DEADLINE.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for chromium: {e}")),
        }
    }
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let console = read(&err_path)?.lines().filter(|l| l.contains(":CONSOLE")).map(str::to_owned).collect();
    Ok(Page { dom: read(&out_path)?, console })
}
