//! Records the git commit Keel is built from, for `version` and `build_info`.

use std::path::Path;
use std::process::Command;

fn main() {
    let commit = std::env::var("KEEL_GIT_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    println!("cargo:rustc-env=KEEL_BUILD_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
    println!("cargo:rerun-if-env-changed=KEEL_GIT_COMMIT");
    // Rebuild when HEAD moves: watch HEAD and the branch it points at.
    let git = Path::new("../../.git");
    if git.join("HEAD").exists() {
        println!("cargo:rerun-if-changed=../../.git/HEAD");
        if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
            && let Some(r) = head.strip_prefix("ref: ")
        {
            println!("cargo:rerun-if-changed=../../.git/{}", r.trim());
        }
    }
}
