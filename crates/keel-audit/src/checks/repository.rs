//! The repository as a whole: CI, lock files, committed environment files and secrets in
//! configuration, and whether the service has metrics and tracing at all.

use std::sync::LazyLock;

use regex::Regex;

use super::secrets::{literal_value, masked, secret_name, secret_value};
use crate::{Area, Collector, Repo, Rule, Severity, file_name, is_test_path};

pub(crate) static NO_CI: Rule = Rule {
    id: "repo/no-ci",
    title: "A CI pipeline builds and tests every change",
    severity: Severity::Medium,
    area: Area::Delivery,
    seed: "seed 001 P2-4",
    why: "Without a pipeline nothing runs the tests, linters or this audit before a change ships; a regression reaches production the first time anyone runs the code.",
    fix: "Add a pipeline (`.github/workflows/ci.yml`, `.gitlab-ci.yml`, …) that builds, lints, tests and runs `keel audit --fail-on high` on every change.",
};

pub(crate) static NO_LOCKFILE: Rule = Rule {
    id: "repo/no-lockfile",
    title: "Dependencies are locked (Cargo.lock, go.sum, package-lock.json)",
    severity: Severity::Medium,
    area: Area::Delivery,
    seed: "",
    why: "Without a lock file every build resolves dependencies anew: two images of one commit can run different code, and a compromised or broken release enters the next build unnoticed.",
    fix: "Commit the lock file (`cargo generate-lockfile`, `go mod tidy` for go.sum, `npm install` for package-lock.json) and build with it (`--locked`, `npm ci`).",
};

pub(crate) static ENV_COMMITTED: Rule = Rule {
    id: "repo/env-committed",
    title: "No environment file (.env) is committed",
    severity: Severity::Critical,
    area: Area::Configuration,
    seed: "seed 004 (hardcoded secrets in version control)",
    why: "A committed `.env` puts whatever it holds, usually passwords and API keys, in every clone and in the history for good.",
    fix: "Remove it from git (`git rm --cached .env`), add it to `.gitignore`, commit a `.env.example` with empty values, and rotate every secret it held.",
};

pub(crate) static SECRET_IN_CONFIG: Rule = Rule {
    id: "repo/secret-in-config",
    title: "Configuration files hold no secrets",
    severity: Severity::Critical,
    area: Area::Configuration,
    seed: "seed 002 (secrets and credential handling), seed 004 (hardcoded secrets)",
    why: "A password or key written into a configuration file is in every clone, image and backup of the repository, and shared by every environment that uses the file.",
    fix: "Read secrets from the environment or from files mounted by the platform (`/run/secrets/…`, Kubernetes Secrets), leave the key empty or as `${VAR}` in the file, and rotate the exposed value.",
};

pub(crate) static NO_METRICS: Rule = Rule {
    id: "repo/no-metrics",
    title: "The service exports Prometheus metrics",
    severity: Severity::High,
    area: Area::Observability,
    seed: "seed 003 P0 (Prometheus metrics), seed 000 #6",
    why: "Without request, error and latency metrics nobody sees a service degrade until users report it, and no alert can fire.",
    fix: "Add a Prometheus client (`prometheus/client_golang`, `prom-client`, the `prometheus` crate or Keel) and expose `/metrics` with request rate, errors and duration.",
};

pub(crate) static NO_TRACING: Rule = Rule {
    id: "repo/no-tracing",
    title: "Requests are traced (OpenTelemetry)",
    severity: Severity::Medium,
    area: Area::Observability,
    seed: "seed 000 #13, seed 001 NEW-1, seed 003 P0",
    why: "Without distributed tracing a slow or failed request cannot be followed across services; every incident becomes a search through several services' logs.",
    fix: "Add the OpenTelemetry SDK (`go.opentelemetry.io/otel`, `@opentelemetry/sdk-node`, `opentelemetry` + `tracing-opentelemetry` or Keel), propagate `traceparent` and export over OTLP.",
};

pub(crate) const RULES: &[&Rule] = &[&NO_CI, &NO_LOCKFILE, &ENV_COMMITTED, &SECRET_IN_CONFIG, &NO_METRICS, &NO_TRACING];

const CI_FILES: &[&str] = &[
    ".gitlab-ci.yml",
    ".circleci/config.yml",
    "Jenkinsfile",
    "azure-pipelines.yml",
    "bitbucket-pipelines.yml",
    ".drone.yml",
    ".travis.yml",
    "cloudbuild.yaml",
];
const CI_DIRS: &[&str] = &[
    ".github/workflows/",
    ".ci/",
    ".buildkite/",
    ".woodpecker/",
    ".tekton/",
    ".gitea/workflows/",
    ".forgejo/workflows/",
];

/// Where each ecosystem's manifests and the lock files that pin them.
const LOCKS: &[(&str, &[&str])] = &[
    ("Cargo.toml", &["Cargo.lock"]),
    ("go.mod", &["go.sum"]),
    (
        "package.json",
        &["package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "bun.lockb", "bun.lock"],
    ),
];

static URL_PASSWORD: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/\s@]+:([^@\s/]{3,})@|\b\w+:([^@\s:/]{3,})@tcp\(").ok()
});
static KEY_VALUE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r#"^\s*(?:-\s*)?"?([A-Za-z_][A-Za-z0-9_.-]*)"?\s*[:=]\s*(.+?)\s*,?\s*$"#).ok());

pub(crate) fn check(repo: &Repo, out: &mut Collector) {
    ci(repo, out);
    locks(repo, out);
    env_files(repo, out);
    config_secrets(repo, out);
    observability(repo, out);
}

fn ci(repo: &Repo, out: &mut Collector) {
    out.checked(&NO_CI);
    let found = repo.files().iter().any(|f| CI_FILES.contains(&f.as_str()) || CI_DIRS.iter().any(|d| f.starts_with(d)));
    if !found {
        out.find(
            &NO_CI,
            "",
            None,
            "no CI configuration (.github/workflows, .gitlab-ci.yml, Jenkinsfile, …) in the repository",
        );
    }
}

fn locks(repo: &Repo, out: &mut Collector) {
    for (manifest, locks) in LOCKS {
        for rel in repo.named(|n| n == *manifest).filter(|f| !is_test_path(f)) {
            out.checked(&NO_LOCKFILE);
            // A lock file in the manifest's directory or any above it (workspaces lock at the root).
            let mut dir = parent(rel);
            let locked = loop {
                if locks.iter().any(|l| repo.has(&join(dir, l))) {
                    break true;
                }
                if dir.is_empty() {
                    break false;
                }
                dir = parent(dir);
            };
            if locked {
                continue;
            }
            let Some(text) = repo.read(rel) else { continue };
            // A go.mod without requirements has nothing to lock.
            if *manifest == "go.mod" && !text.contains("require") {
                continue;
            }
            if *manifest == "package.json" && !text.contains("ependencies\"") {
                continue;
            }
            out.find(&NO_LOCKFILE, rel, None, format!("{manifest} without {}", locks.join(" or ")));
        }
    }
}

fn env_files(repo: &Repo, out: &mut Collector) {
    out.checked(&ENV_COMMITTED);
    for rel in repo.named(is_env_file).filter(|f| !is_test_path(f)) {
        let text = repo.read(rel).unwrap_or_default();
        let mut keys = 0;
        let mut secrets = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((k, v)) = line.split_once('=') else { continue };
            keys += 1;
            if secret_name(k.trim()) && literal_value(v) {
                secrets.push(k.trim().to_owned());
            }
        }
        let evidence = if secrets.is_empty() {
            format!("{keys} variable(s) committed")
        } else {
            format!("{keys} variable(s) committed, secrets among them: {}", secrets.join(", "))
        };
        out.find(&ENV_COMMITTED, rel, None, evidence);
    }
}

/// `.env`, `.env.production`, `prod.env`…, not the templates meant to be committed.
fn is_env_file(name: &str) -> bool {
    let env = name == ".env" || name.starts_with(".env.") || name.ends_with(".env");
    let template =
        ["example", "sample", "template", "dist", "defaults", "tmpl", "tpl"].iter().any(|t| name.contains(t));
    env && !template
}

/// Configuration formats whose `key: value` lines are read for secrets.
fn is_config_file(rel: &str) -> bool {
    let name = file_name(rel);
    let ext_ok =
        [".yaml", ".yml", ".toml", ".json", ".properties", ".ini", ".conf", ".cfg"].iter().any(|e| name.ends_with(e));
    let generated = matches!(
        name,
        "package.json"
            | "package-lock.json"
            | "composer.lock"
            | "Cargo.lock"
            | "tsconfig.json"
            | "deny.toml"
            | "rustfmt.toml"
            | "clippy.toml"
    );
    // Compose files and Kubernetes Secrets have rules of their own.
    let own_rules = name.contains("compose");
    // Translations hold labels (`"password": "Password"`), not settings.
    let locale = rel
        .split('/')
        .any(|d| matches!(d, "locales" | "locale" | "i18n" | "l10n" | "translations" | "lang" | "langs" | "messages"));
    ext_ok && !generated && !own_rules && !locale && !is_test_path(rel)
}

fn config_secrets(repo: &Repo, out: &mut Collector) {
    out.checked(&SECRET_IN_CONFIG);
    let (Some(url), Some(kv)) = (URL_PASSWORD.as_ref(), KEY_VALUE.as_ref()) else { return };
    for rel in repo.files().iter().filter(|f| is_config_file(f)) {
        let Some(text) = repo.read(rel) else { continue };
        // A Kubernetes Secret is judged by the manifest rules.
        if text.contains("kind: Secret") {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_start();
            if t.starts_with('#') || t.starts_with("//") || t.starts_with(';') {
                continue;
            }
            let lineno = u32::try_from(i + 1).ok();
            if let Some(c) = url.captures(line) {
                let pw = c.get(1).or_else(|| c.get(2)).map(|m| m.as_str()).unwrap_or_default();
                if !pw.starts_with('$') && !pw.starts_with('<') && !pw.contains("{{") && !pw.contains("${") {
                    out.find(&SECRET_IN_CONFIG, rel, lineno, format!("a URL with a password ({}) in it", masked(pw)));
                    continue;
                }
            }
            if let Some(c) = kv.captures(line) {
                let (key, value) = (&c[1], c[2].trim_end_matches(','));
                let value = value.split(" #").next().unwrap_or(value);
                let nested = value.starts_with('{')
                    || value.starts_with('[')
                    || value.starts_with('|')
                    || value.starts_with('>');
                let last = key.rsplit('.').next().unwrap_or(key);
                if !nested && secret_value(last, value) {
                    out.find(&SECRET_IN_CONFIG, rel, lineno, format!("{key} = {}", masked(value)));
                }
            }
        }
    }
}

/// Whether the dependency manifests show a metrics client and an OpenTelemetry SDK.
fn observability(repo: &Repo, out: &mut Collector) {
    let manifests: Vec<(&str, String)> = repo
        .files()
        .iter()
        .filter(|f| !is_test_path(f))
        .filter(|f| {
            matches!(
                file_name(f),
                "Cargo.toml"
                    | "go.mod"
                    | "package.json"
                    | "requirements.txt"
                    | "pyproject.toml"
                    | "pom.xml"
                    | "build.gradle"
            )
        })
        .filter_map(|f| repo.read(f).map(|t| (f.as_str(), t)))
        .collect();
    if manifests.is_empty() {
        return;
    }
    out.checked(&NO_METRICS);
    out.checked(&NO_TRACING);
    let any = |needles: &[&str]| manifests.iter().any(|(_, t)| needles.iter().any(|n| t.contains(n)));
    let first = manifests.iter().map(|(f, _)| *f).min_by_key(|f| f.matches('/').count()).unwrap_or_default();
    if !any(&[
        "prometheus",
        "prom-client",
        "micrometer",
        "metrics-exporter",
        "keel",
        "opentelemetry-prometheus",
        "otel/exporters/prometheus",
    ]) {
        out.find(&NO_METRICS, first, None, "no Prometheus client among the dependencies");
    }
    if !any(&["opentelemetry", "go.opentelemetry.io/otel", "@opentelemetry/", "dd-trace", "jaeger-client", "keel"]) {
        out.find(&NO_TRACING, first, None, "no OpenTelemetry (or other tracing) SDK among the dependencies");
    }
}

fn parent(rel: &str) -> &str {
    rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_owned() } else { format!("{dir}/{name}") }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(files: &[(&str, &str)]) -> Vec<(String, String, Option<u32>)> {
        let (_dir, repo) = crate::checks::test_repo(files);
        let mut out = Collector::default();
        check(&repo, &mut out);
        out.findings().iter().map(|f| (f.rule.id.to_owned(), f.path.clone(), f.line)).collect()
    }

    #[test]
    fn a_bare_node_service_misses_ci_lock_metrics_and_tracing() {
        let found = run(&[("package.json", r#"{"dependencies": {"express": "^4"}}"#), ("server.js", "x")]);
        let ids: Vec<&str> = found.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(ids, ["repo/no-ci", "repo/no-lockfile", "repo/no-metrics", "repo/no-tracing"], "{found:?}");
    }

    #[test]
    fn a_locked_instrumented_workspace_with_ci_is_clean() {
        let found = run(&[
            (".github/workflows/ci.yml", "on: push"),
            ("Cargo.toml", "[workspace]\n[workspace.dependencies]\nprometheus = \"0.14\"\nopentelemetry = \"0.33\"\n"),
            ("Cargo.lock", ""),
            ("crates/a/Cargo.toml", "[package]\nname = \"a\"\n"),
            (".env.example", "DB_PASSWORD=\n"),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn committed_env_files_and_config_secrets_are_found_but_references_are_not() {
        let found = run(&[
            (".ci/run", ""),
            (".env", "REDIS_PASSWORD=redis123\nPORT=3000\n"),
            (
                "configs/config.yaml",
                "data:\n  database:\n    source: root:123456@tcp(127.0.0.1:3306)/db\n  redis:\n    password: ${REDIS_PASSWORD}\n  jwt_secret: \"super-secret-key\"\n  # password: in a comment\n  url: amqp://guest:guest@rabbitmq:5672/\n  api_key: \n",
            ),
        ]);
        let got: Vec<(&str, Option<u32>)> = found.iter().map(|f| (f.0.as_str(), f.2)).collect();
        assert_eq!(
            got,
            [
                ("repo/env-committed", None),
                ("repo/secret-in-config", Some(3)),
                ("repo/secret-in-config", Some(6)),
                ("repo/secret-in-config", Some(8)),
            ],
            "{found:?}"
        );
    }
}
