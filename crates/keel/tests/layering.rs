//! Keel's crates form layers: each depends (normal or dev) only on crates below it in
//! [`LAYERS`], `keel-config` on no other Keel crate, and `keel` (the facade) on all of them.
//! Cargo already refuses a cycle; this keeps the order the docs give, so a new dependency that
//! reaches up a layer fails here, with the edge named, before it grows into a tangle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::process::Command;

/// Bottom first: the order of `crates/keel/src/lib.rs`'s table and the README's layout.
const LAYERS: &[&str] = &[
    "keel-config",
    "keel-problem",
    "keel-tls",
    "keel-resilience",
    "keel-slo",
    "keel-telemetry",
    "keel-health",
    "keel-http",
    "keel-server",
    "keel-data",
    "keel-redis",
    "keel-storage",
    "keel-rate-limit",
    "keel-security",
    "keel-grpc",
    "keel-features",
    "keel-workers",
    "keel-events",
    "keel-management",
    "keel-app",
    "keel-testing",
];

/// Each workspace package whose name starts with `keel` → the `keel*` packages it depends on.
/// `cargo metadata` of the workspace, without its dependencies.
fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

fn keel_dependencies() -> BTreeMap<String, Vec<String>> {
    let meta = metadata();
    let mut graph = BTreeMap::new();
    for pkg in meta["packages"].as_array().expect("packages") {
        let name = pkg["name"].as_str().expect("name");
        // keel-audit is a tool over any repository, not a layer of the library.
        if !name.starts_with("keel") || name == "keel-bench" || name == "keel-fixture" || name == "keel-audit" {
            continue;
        }
        let deps = pkg["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter_map(|d| d["name"].as_str())
            .filter(|d| d.starts_with("keel"))
            .map(str::to_owned)
            .collect();
        graph.insert(name.to_owned(), deps);
    }
    graph
}

#[test]
fn every_keel_crate_is_in_a_layer_and_depends_only_on_lower_ones() {
    let graph = keel_dependencies();
    let layer = |name: &str| LAYERS.iter().position(|l| *l == name);
    for (name, deps) in &graph {
        if name == "keel" {
            continue;
        }
        let Some(own) = layer(name) else {
            panic!("{name} is a Keel crate missing from LAYERS (and from the docs' crate table)");
        };
        for dep in deps {
            let Some(theirs) = layer(dep) else { panic!("{name} depends on {dep}, which is in no layer") };
            assert!(theirs < own, "{name} depends on {dep}, which is not below it in the layers");
        }
    }
    assert_eq!(graph.get("keel-config").map(Vec::len), Some(0), "keel-config depends on no other Keel crate");
    for l in LAYERS {
        assert!(graph.contains_key(*l), "{l} is listed but is not a workspace crate");
    }
}

#[test]
fn the_facade_re_exports_every_layer() {
    let graph = keel_dependencies();
    let facade = graph.get("keel").expect("the keel crate");
    for l in LAYERS {
        assert!(facade.iter().any(|d| d == l), "keel does not depend on {l}");
    }
}

/// A library or binary marked `test = false` gets no unit-test binary (one link fewer in every
/// test run), so a unit test added to it later would silently never run. Such a target's
/// sources must hold none: the library's whole `src/` (less the binaries'), a binary's file
/// and the modules it declares.
#[test]
fn targets_built_without_unit_tests_have_none() {
    fn sources(dir: &std::path::Path, skip: &[std::path::PathBuf], out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if skip.contains(&path) {
                continue;
            }
            if path.is_dir() {
                sources(&path, skip, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let meta = metadata();
    let mut checked = 0;
    let mut offending = Vec::new();
    for pkg in meta["packages"].as_array().expect("packages") {
        let targets = pkg["targets"].as_array().expect("targets");
        let bins: Vec<std::path::PathBuf> = targets
            .iter()
            .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
            .map(|t| std::path::PathBuf::from(t["src_path"].as_str().unwrap()))
            .collect();
        for t in targets {
            let kinds = t["kind"].as_array().unwrap();
            let (lib, bin) = (kinds.iter().any(|k| k == "lib"), kinds.iter().any(|k| k == "bin"));
            if t["test"].as_bool() != Some(false) || !(lib || bin) {
                continue;
            }
            let src = std::path::PathBuf::from(t["src_path"].as_str().unwrap());
            let mut files = Vec::new();
            if lib {
                let mut skip = bins.clone();
                skip.push(src.parent().unwrap().join("bin"));
                sources(src.parent().unwrap(), &skip, &mut files);
            } else {
                let text = std::fs::read_to_string(&src).unwrap();
                for m in text.lines().filter_map(|l| l.trim().strip_prefix("mod ")?.strip_suffix(';')) {
                    let dir = src.parent().unwrap();
                    files.extend(
                        [dir.join(format!("{m}.rs")), dir.join(m).join("mod.rs")].into_iter().filter(|f| f.exists()),
                    );
                }
                files.push(src);
            }
            checked += 1;
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap();
                if ["#[test]", "#[tokio::test", "#[cfg(test)]", "proptest!"].iter().any(|n| text.contains(n)) {
                    offending.push(format!("{} ({}): {}", pkg["name"], t["name"], f.display()));
                }
            }
        }
    }
    assert!(checked >= 18, "only {checked} targets with `test = false`: did the manifests change?");
    assert!(offending.is_empty(), "unit tests in targets with `test = false` (remove it): {offending:#?}");
}
