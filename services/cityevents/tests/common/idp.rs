//! The local OpenID Provider of `tests/oidc/provider.mjs` (panva's oidc-provider on Node.js),
//! started per test on a port of its own and stopped on drop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const CLIENT_ID: &str = "cityevents-test";
pub const CLIENT_SECRET: &str = "a-client-secret-only-the-test-knows";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// Whether the provider can run here; says why not (and fails under `CI=true`).
pub fn ready() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let missing = if Command::new("node").arg("--version").output().is_err() {
        Some("Node.js (node)")
    } else if !dir().join("node_modules/oidc-provider").is_dir() {
        Some("the provider's npm packages (npm ci in services/cityevents/tests/oidc; .ci/oidc.sh does it)")
    } else {
        None
    };
    match missing {
        None => true,
        Some(what) if ci => panic!("{what} is missing, and CI=true requires the OpenID Connect tests to run"),
        Some(what) => {
            eprintln!("skipped: {what} is missing");
            false
        }
    }
}

/// A running provider.
pub struct Idp {
    child: Child,
    pub issuer: String,
    _lines: mpsc::Receiver<String>,
}

impl Idp {
    /// The provider, its one client allowed to redirect to `redirect_uri`.
    pub fn start(redirect_uri: &str) -> Self {
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(dir())
            .env("PORT", "0")
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("REDIRECT_URIS", redirect_uri)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let issuer = loop {
            let line = rx.recv_timeout(Duration::from_secs(30)).expect("the provider did not start within 30 s");
            if let Some(url) = line.strip_prefix("oidc-provider listening on ") {
                break url.trim().to_owned();
            }
        };
        Self { child, issuer, _lines: rx }
    }

    /// The platform's settings for this provider as `corp` ("Corp"), the site at `site`.
    pub fn env(&self, site: &str) -> Vec<(String, String)> {
        let p = "CITYEVENTS_AUTH__APP__OIDC";
        vec![
            (format!("{p}__REDIRECT_BASE"), site.to_owned()),
            (format!("{p}__PROVIDERS__CORP__NAME"), "Corp".to_owned()),
            (format!("{p}__PROVIDERS__CORP__ISSUER"), self.issuer.clone()),
            (format!("{p}__PROVIDERS__CORP__CLIENT_ID"), CLIENT_ID.to_owned()),
            (format!("{p}__PROVIDERS__CORP__CLIENT_SECRET"), CLIENT_SECRET.to_owned()),
        ]
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
