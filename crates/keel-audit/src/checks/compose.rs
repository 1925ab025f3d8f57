//! Docker Compose files: secrets in `environment:`, resource limits, health checks, restart
//! policies and image tags, after seeds 000 (#18), 002 and 004.
//!
//! A file whose name or directory says it is for development (`docker-compose.dev.yml`,
//! `deploy/local/compose.yaml`, `compose.override.yaml`) is only checked for committed secrets:
//! a database without limits on a laptop is not a production risk, a password in git is.

use serde_norway::{Mapping, Value};

use super::secrets::{literal_value, masked, secret_name};
use super::{excerpt, line_containing};
use crate::{Area, Collector, Repo, Rule, Severity, is_test_path};

pub(crate) static SECRET_IN_ENVIRONMENT: Rule = Rule {
    id: "compose/secret-in-environment",
    title: "Compose files hold no secret values",
    severity: Severity::Critical,
    area: Area::Configuration,
    seed: "seed 004 (hardcoded secrets in version control), seed 002",
    why: "A password or token written into a compose file's `environment:` is committed with it: everyone with \
          the repository (and every fork and clone) has the credential, and it outlives its rotation in git history.",
    fix: "Remove the value and rotate it; read it from the environment (`REDIS_PASSWORD: ${REDIS_PASSWORD:?}`) \
          or, better, a compose secret mounted as a file (`secrets: [redis-password]` and \
          `REDIS_PASSWORD_FILE: /run/secrets/redis-password`).",
};

pub(crate) static NO_RESOURCE_LIMITS: Rule = Rule {
    id: "compose/no-resource-limits",
    title: "Compose services set memory and CPU limits",
    severity: Severity::Medium,
    area: Area::Deployment,
    seed: "seed 000 #18, seed 004",
    why: "Without limits one leaking or busy container takes the host's memory and CPU from every other service \
          on it, and the kernel's OOM killer picks its victim among all of them.",
    fix: "Give every service `deploy: {resources: {limits: {cpus: \"1\", memory: 512M}, reservations: {memory: 256M}}}` \
          (or `mem_limit`/`cpus`), sized from its observed use.",
};

pub(crate) static NO_HEALTHCHECK: Rule = Rule {
    id: "compose/no-healthcheck",
    title: "Compose services have a health check",
    severity: Severity::Medium,
    area: Area::Health,
    seed: "seed 004",
    why: "Without a health check Docker only knows whether the process exists: a hung service stays `running`, \
          `depends_on: {condition: service_healthy}` cannot wait for it, and nothing restarts it.",
    fix: "Add `healthcheck: {test: [\"CMD\", \"wget\", \"-q\", \"--spider\", \"http://127.0.0.1:8080/health/live\"], \
          interval: 10s, timeout: 3s, retries: 3, start_period: 30s}` (or a `HEALTHCHECK` in the image's Dockerfile); \
          for databases and brokers their own probe (`pg_isready`, `redis-cli ping`).",
};

pub(crate) static HEALTHCHECK_LOCALHOST: Rule = Rule {
    id: "compose/healthcheck-localhost",
    title: "Compose health checks use 127.0.0.1, not localhost",
    severity: Severity::Low,
    area: Area::Health,
    seed: "seed 004",
    why: "`localhost` may resolve to `::1` first while the server listens on IPv4 only (or the reverse): the check \
          then fails on a healthy container, which is marked unhealthy and restarted or never routed to.",
    fix: "Name the address the server listens on: `test: [\"CMD\", \"curl\", \"-f\", \"http://127.0.0.1:3000/health\"]`.",
};

pub(crate) static NO_RESTART_POLICY: Rule = Rule {
    id: "compose/no-restart-policy",
    title: "Compose services restart after a crash or a reboot",
    severity: Severity::Low,
    area: Area::Resilience,
    seed: "",
    why: "Compose's default is `restart: \"no\"`: a service that crashes, or every service after the host reboots, \
          stays down until someone notices and starts it by hand.",
    fix: "Set `restart: unless-stopped` (or `deploy: {restart_policy: {condition: on-failure}}`) on long-running \
          services; one-off jobs that others wait for with `service_completed_successfully` need none.",
};

pub(crate) static UNPINNED_IMAGE: Rule = Rule {
    id: "compose/unpinned-image",
    title: "Compose images are pinned to a version",
    severity: Severity::Medium,
    area: Area::Deployment,
    seed: "",
    why: "An image without a tag, or tagged `latest`, is whatever the registry has at the next pull: a restart or a \
          new host silently upgrades (or downgrades) the service, and a bad release cannot be rolled back by name.",
    fix: "Pin a version, `image: redis:7.4-bookworm` (or a digest, `redis@sha256:…`); for your own images make the \
          version required, `image: registry/app:${APP_VERSION:?set APP_VERSION}`, rather than defaulting to latest.",
};

pub(crate) static SECRETS_NOT_FILES: Rule = Rule {
    id: "compose/secrets-not-files",
    title: "Compose secrets reach services as files, not environment variables",
    severity: Severity::Low,
    area: Area::Security,
    seed: "seed 002",
    why: "A secret passed as an environment variable shows in `docker inspect`, in `/proc/<pid>/environ`, in crash \
          reports and in every child process; files under `/run/secrets` are readable only where mounted.",
    fix: "Declare top-level `secrets: {db-password: {file: ./secrets/db-password}}`, give the service \
          `secrets: [db-password]` and point it at the file: `DB_PASSWORD_FILE: /run/secrets/db-password`.",
};

/// This module's rules, in checklist order.
pub(crate) const RULES: &[&Rule] = &[
    &SECRET_IN_ENVIRONMENT,
    &NO_RESOURCE_LIMITS,
    &NO_HEALTHCHECK,
    &HEALTHCHECK_LOCALHOST,
    &NO_RESTART_POLICY,
    &UNPINNED_IMAGE,
    &SECRETS_NOT_FILES,
];

/// Rules only evaluated on production compose files.
const PRODUCTION_RULES: &[&Rule] = &[
    &NO_RESOURCE_LIMITS,
    &NO_HEALTHCHECK,
    &HEALTHCHECK_LOCALHOST,
    &NO_RESTART_POLICY,
    &UNPINNED_IMAGE,
    &SECRETS_NOT_FILES,
];

/// Checks every compose file of the repository.
pub(crate) fn check(repo: &Repo, out: &mut Collector) {
    let files: Vec<&str> = repo.named(is_compose_file).filter(|f| !is_test_path(f)).collect();
    for rel in files {
        let Some(text) = repo.read(rel) else { continue };
        check_file(repo, rel, &text, out);
    }
}

/// Whether a file name is a compose file's: `compose.yaml`, `docker-compose.yml`,
/// `docker-compose.prod.yml`, `compose.override.yaml`…
pub(crate) fn is_compose_file(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    (lower.starts_with("docker-compose.") || lower.starts_with("compose."))
        && (lower.ends_with(".yml") || lower.ends_with(".yaml"))
}

/// Whether a compose file is for development or tests rather than production: one of its
/// directories is `dev`, `development`, `local`, `test` or `tests`, or a part of its name (split
/// at `.`, `-` and `_`) is `dev`, `development`, `override`, `local` or `test`. Whole segments
/// only: `devops/docker-compose.yml` and `deploy/devices/compose.yaml` are production files.
pub(crate) fn is_dev_file(rel: &str) -> bool {
    const DIRS: &[&str] = &["dev", "development", "local", "test", "tests"];
    const NAME_PARTS: &[&str] = &["dev", "development", "override", "local", "test"];
    let lower = rel.to_ascii_lowercase();
    let (dirs, name) = lower.rsplit_once('/').unwrap_or(("", lower.as_str()));
    dirs.split('/').any(|d| DIRS.contains(&d)) || name.split(['.', '-', '_']).any(|p| NAME_PARTS.contains(&p))
}

fn check_file(repo: &Repo, rel: &str, text: &str, out: &mut Collector) {
    let mut doc: Value = match serde_norway::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            out.note(format!("{rel}: not read as a compose file ({e})"));
            return;
        }
    };
    // `<<: *defaults` is how compose files share settings.
    merge_keys(&mut doc);
    let Some(services) = doc.get("services").and_then(Value::as_mapping) else { return };
    let production = !is_dev_file(rel);
    out.checked(&SECRET_IN_ENVIRONMENT);
    if production {
        for rule in PRODUCTION_RULES {
            out.checked(rule);
        }
    }
    let has_secrets = doc.get("secrets").and_then(Value::as_mapping).is_some_and(|m| !m.is_empty());
    let one_off = one_off_services(services);
    let dir = rel.rsplit_once('/').map_or("", |(d, _)| d);

    for (name, service) in services {
        let Some(name) = scalar(name) else { continue };
        let Some(service) = service.as_mapping() else { continue };
        let line = service_line(text, &name);

        for (key, value) in environment(service) {
            let Some(value) = value else { continue };
            let at = env_line(text, line, &key);
            if secret_name(&key) && literal_value(&value) {
                out.find(&SECRET_IN_ENVIRONMENT, rel, at, format!("service {name}: {key}={}", masked(&value)));
            } else if let Some(password) = url_password(&value) {
                out.find(
                    &SECRET_IN_ENVIRONMENT,
                    rel,
                    at,
                    format!("service {name}: {key} has a password in its URL (…:{}@…)", masked(password)),
                );
            } else if production && !has_secrets && secret_name(&key) && value.contains('$') {
                out.find(
                    &SECRETS_NOT_FILES,
                    rel,
                    at,
                    format!("service {name}: {key}={} is passed as an environment variable", excerpt(&value)),
                );
            }
        }
        if !production {
            continue;
        }

        let deploy = service.get("deploy");
        let limits = deploy.and_then(|d| d.get("resources")).and_then(|r| r.get("limits"));
        let has_limits = limits.is_some_and(|l| l.get("memory").is_some() || l.get("cpus").is_some())
            || service.get("mem_limit").is_some()
            || service.get("cpus").is_some();
        if !has_limits {
            out.find(&NO_RESOURCE_LIMITS, rel, line, format!("service {name} has no memory or CPU limit"));
        }

        let healthcheck = service.get("healthcheck").and_then(Value::as_mapping);
        if let Some(test) = healthcheck.and_then(|h| h.get("test")).map(command_text)
            && test.contains("localhost")
        {
            let at = line_after(text, line, "localhost").or(line);
            out.find(&HEALTHCHECK_LOCALHOST, rel, at, format!("service {name}: healthcheck `{}`", excerpt(&test)));
        }

        // One-off jobs (migrations, init containers) are waited for, not probed or restarted.
        if one_off.contains(&name) {
            continue;
        }
        match healthcheck_state(healthcheck) {
            Healthcheck::Declared => {}
            Healthcheck::Disabled => {
                out.find(&NO_HEALTHCHECK, rel, line, format!("service {name} disables its healthcheck"));
            }
            Healthcheck::Missing => {
                if !service.get("build").is_some_and(|b| dockerfile_has_healthcheck(repo, dir, b)) {
                    out.find(&NO_HEALTHCHECK, rel, line, format!("service {name} has no healthcheck"));
                }
            }
        }

        let restart = service.get("restart").and_then(scalar).is_some_and(|r| r != "no" && r != "false");
        if !restart && deploy.and_then(|d| d.get("restart_policy")).is_none() {
            out.find(&NO_RESTART_POLICY, rel, line, format!("service {name} has no restart policy"));
        }

        if service.get("build").is_none()
            && let Some(image) = service.get("image").and_then(Value::as_str)
            && let Some(problem) = unpinned(&resolve_defaults(image))
        {
            let at = line_after(text, line, &format!("image: {image}")).or(line);
            out.find(&UNPINNED_IMAGE, rel, at, format!("service {name}: image {image} ({problem})"));
        }
    }
}

/// Applies YAML merge keys (`<<: *base`, `<<: [*a, *b]`) at every depth, merges inside merged
/// mappings included (which `Value::apply_merge` leaves behind); keys written beside `<<` win,
/// then the first mapping listed.
pub(crate) fn merge_keys(value: &mut Value) {
    match value {
        Value::Mapping(m) => {
            for v in m.values_mut() {
                merge_keys(v);
            }
            let sources = match m.remove("<<") {
                Some(Value::Mapping(base)) => vec![base],
                Some(Value::Sequence(items)) => items
                    .into_iter()
                    .filter_map(|item| match item {
                        Value::Mapping(base) => Some(base),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            for base in sources {
                for (k, v) in base {
                    m.entry(k).or_insert(v);
                }
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(merge_keys),
        Value::Tagged(tagged) => merge_keys(&mut tagged.value),
        _ => {}
    }
}

/// Services others wait for with `condition: service_completed_successfully`: one-off jobs.
fn one_off_services(services: &Mapping) -> Vec<String> {
    let mut out = Vec::new();
    for service in services.values() {
        let Some(deps) = service.get("depends_on").and_then(Value::as_mapping) else { continue };
        for (dep, how) in deps {
            if how.get("condition").and_then(Value::as_str) == Some("service_completed_successfully")
                && let Some(dep) = scalar(dep)
            {
                out.push(dep);
            }
        }
    }
    out
}

enum Healthcheck {
    Declared,
    Disabled,
    Missing,
}

fn healthcheck_state(healthcheck: Option<&Mapping>) -> Healthcheck {
    let Some(h) = healthcheck else { return Healthcheck::Missing };
    if h.get("disable").and_then(Value::as_bool) == Some(true) {
        return Healthcheck::Disabled;
    }
    match h.get("test") {
        None | Some(Value::Null) => Healthcheck::Missing,
        Some(test) => {
            let t = command_text(test);
            if t.trim() == "NONE" { Healthcheck::Disabled } else { Healthcheck::Declared }
        }
    }
}

/// Whether the Dockerfile a `build:` names has a `HEALTHCHECK` other than `HEALTHCHECK NONE`.
fn dockerfile_has_healthcheck(repo: &Repo, dir: &str, build: &Value) -> bool {
    let (context, dockerfile) = match build {
        Value::String(context) => (context.as_str(), "Dockerfile"),
        Value::Mapping(m) => (
            m.get("context").and_then(Value::as_str).unwrap_or("."),
            m.get("dockerfile").and_then(Value::as_str).unwrap_or("Dockerfile"),
        ),
        _ => return false,
    };
    let Some(context) = join(dir, context) else { return false };
    let Some(path) = join(&context, dockerfile) else { return false };
    let Some(text) = repo.read(&path) else { return false };
    text.lines().map(str::trim).any(|l| {
        let upper = l.to_ascii_uppercase();
        upper.starts_with("HEALTHCHECK") && upper.split_whitespace().nth(1).is_none_or(|w| w != "NONE")
    })
}

/// `rel` resolved against the repository-relative directory `dir`, `.` and `..` applied; `None`
/// when it is absolute, a URL or leaves the repository.
pub(crate) fn join(dir: &str, rel: &str) -> Option<String> {
    if rel.starts_with('/') || rel.contains("://") || rel.starts_with("git@") {
        return None;
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// The entries of a service's `environment:`, map or `KEY=value` list: key and value (`None`
/// when passed through from the shell).
fn environment(service: &Mapping) -> Vec<(String, Option<String>)> {
    match service.get("environment") {
        Some(Value::Mapping(m)) => m.iter().filter_map(|(k, v)| Some((scalar(k)?, scalar(v)))).collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.trim().to_owned(), Some(v.to_owned())),
                None => (item.trim().to_owned(), None),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The password of a `scheme://user:password@host` URL, when it is written out.
fn url_password(value: &str) -> Option<&str> {
    let (_, rest) = value.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (literal_value(password) && !password.contains('$')).then_some(password)
}

/// A scalar as text (strings, numbers, booleans); `None` for null, sequences and maps.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A healthcheck `test` (string or list) as one line.
fn command_text(v: &Value) -> String {
    match v {
        Value::Sequence(items) => items.iter().filter_map(scalar).collect::<Vec<_>>().join(" "),
        other => scalar(other).unwrap_or_default(),
    }
}

/// `${VAR:-default}` and `${VAR-default}` replaced by their default; `${VAR}`, `${VAR:?err}` and
/// `$VAR` (set by whoever deploys) kept as `$VAR`.
pub(crate) fn resolve_defaults(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let body = &rest[at + 2..];
        let mut depth = 1usize;
        let mut end = None;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            out.push_str(&rest[at..]);
            return out;
        };
        let inner = &body[..end];
        let name_end = inner.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(inner.len());
        let (var, op) = inner.split_at(name_end);
        if let Some(default) = op.strip_prefix(":-").or_else(|| op.strip_prefix('-')) {
            out.push_str(&resolve_defaults(default));
        } else {
            out.push('$');
            out.push_str(var);
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Why an image reference is not pinned (`tag latest`, `no tag`), or `None` when it names a tag
/// or a digest. A value still holding `$` where the tag goes is the deployer's to set.
pub(crate) fn unpinned(image: &str) -> Option<&'static str> {
    let image = image.trim();
    if image.is_empty() || image.contains('@') {
        return None;
    }
    // The last path component: `registry:5000/app` has a port, not a tag.
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) => Some("tag latest"),
        Some(_) => None,
        None if last.contains('$') => None,
        None => Some("no tag"),
    }
}

/// The line of a service's key under `services:`: a key at the indentation of the mapping's
/// children (the first key under `services:`), never a deeper key of the same name (another
/// service's `depends_on: {db: …}`) nor one of a later top-level section (`volumes: {db: …}`).
fn service_line(text: &str, name: &str) -> Option<u32> {
    let start = text.lines().position(|l| l.starts_with("services:"))?;
    let quoted = [format!("{name}:"), format!("\"{name}\":"), format!("'{name}':")];
    let mut indent = None;
    for (i, l) in text.lines().enumerate().skip(start + 1) {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let depth = l.len() - t.len();
        if depth == 0 {
            // The next top-level key: the services mapping has ended.
            return None;
        }
        let children = *indent.get_or_insert(depth);
        if depth == children && quoted.iter().any(|q| t.starts_with(q.as_str())) {
            return u32::try_from(i + 1).ok();
        }
    }
    None
}

/// The first line containing `needle` after line `from` (1-based) when there is one, else
/// anywhere in the file (a shared anchor).
fn line_after(text: &str, from: Option<u32>, needle: &str) -> Option<u32> {
    let skip = from.map_or(0, |l| l as usize);
    text.lines()
        .enumerate()
        .skip(skip)
        .find(|(_, l)| l.contains(needle))
        .and_then(|(i, _)| u32::try_from(i + 1).ok())
        .or_else(|| line_containing(text, needle))
}

/// The line of an environment key: after the service's line when it is there, else anywhere
/// (an anchor shared by several services), else the service's line.
fn env_line(text: &str, service: Option<u32>, key: &str) -> Option<u32> {
    let matches = |l: &str| {
        let t = l.trim_start().trim_start_matches("- ").trim_start_matches(['"', '\'']);
        t.strip_prefix(key).is_some_and(|r| r.starts_with(':') || r.starts_with('=') || r.starts_with(['"', '\'']))
    };
    let from = service.map_or(0, |l| l as usize);
    let after = text.lines().enumerate().skip(from).find(|(_, l)| matches(l));
    let any = || text.lines().enumerate().find(|(_, l)| matches(l));
    after.or_else(any).and_then(|(i, _)| u32::try_from(i + 1).ok()).or(service)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn audit(files: &[(&str, &str)]) -> Collector {
        let (_dir, repo) = crate::checks::test_repo(files);
        let mut out = Collector::default();
        check(&repo, &mut out);
        out
    }

    fn found(out: &Collector) -> Vec<(&'static str, String, Option<u32>)> {
        let mut v: Vec<_> = out.findings().iter().map(|f| (f.rule.id, f.path.clone(), f.line)).collect();
        v.sort();
        v
    }

    fn ids(out: &Collector) -> Vec<&'static str> {
        let mut v: Vec<_> = out.findings().iter().map(|f| f.rule.id).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    const CLEAN: &str = "\
services:
  web:
    image: ghcr.io/acme/web:1.4.2
    restart: unless-stopped
    environment:
      DB_PASSWORD_FILE: /run/secrets/db-password
      DB_HOST: db
    secrets: [db-password]
    healthcheck:
      test: [\"CMD\", \"wget\", \"-q\", \"--spider\", \"http://127.0.0.1:8080/health\"]
    deploy:
      resources:
        limits: {cpus: \"1\", memory: 256M}
secrets:
  db-password:
    file: ./secrets/db-password
";

    #[test]
    fn file_names_and_dev_files() {
        for n in
            ["compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.prod.yml", "compose.override.yaml"]
        {
            assert!(is_compose_file(n), "{n}");
        }
        for n in ["kafka.yaml", "compose.rs", "docker-compose.md", "my-compose.yml"] {
            assert!(!is_compose_file(n), "{n}");
        }
        for p in ["docker-compose.dev.yml", "deploy/dev/compose.yaml", "compose.override.yml", "local/compose.yaml"] {
            assert!(is_dev_file(p), "{p}");
        }
        for p in ["docker-compose.yml", "deploy/compose/compose.yaml", "docker-compose.prod.yml"] {
            assert!(!is_dev_file(p), "{p}");
        }
    }

    #[test]
    fn dev_files_are_named_by_whole_segments() {
        for p in [
            "deploy/development/compose.yaml",
            "tests/docker-compose.yml",
            "docker-compose.local.yml",
            "compose.test.yaml",
            "docker-compose.development.yaml",
            "ops/docker-compose_dev.yml",
        ] {
            assert!(is_dev_file(p), "{p}");
        }
        for p in [
            "devops/docker-compose.yml",
            "deploy/devices/compose.yaml",
            "localization/compose.yaml",
            "contest/compose.yaml",
            "docker-compose.devices.yml",
            "compose.overrides-prod.yaml",
        ] {
            assert!(!is_dev_file(p), "{p}");
        }
        // A production file: every rule applies.
        let out = audit(&[("devops/docker-compose.yml", "services:\n  db:\n    image: postgres\n")]);
        assert!(out.was_checked(&UNPINNED_IMAGE));
        assert_eq!(
            found(&out),
            vec![
                ("compose/no-healthcheck", "devops/docker-compose.yml".to_owned(), Some(2)),
                ("compose/no-resource-limits", "devops/docker-compose.yml".to_owned(), Some(2)),
                ("compose/no-restart-policy", "devops/docker-compose.yml".to_owned(), Some(2)),
                ("compose/unpinned-image", "devops/docker-compose.yml".to_owned(), Some(3)),
            ]
        );
    }

    #[test]
    fn a_service_is_found_at_its_own_key_not_a_depends_on_key() {
        let text = "\
services:
  api:
    image: acme/api:1.0
    restart: always
    mem_limit: 256m
    healthcheck: {test: [\"CMD\", \"/app\", \"health\"]}
    depends_on:
      db:
        condition: service_healthy
    environment:
      DB_PASSWORD: ${DB_PASSWORD}

  # The database.
  db:
    image: postgres
    environment:
      DB_PASSWORD: hunter22
volumes:
  cache:
";
        assert_eq!(service_line(text, "db"), Some(14));
        assert_eq!(service_line(text, "api"), Some(2));
        assert_eq!(service_line(text, "cache"), None);
        let out = audit(&[("compose.yaml", text)]);
        let p = "compose.yaml".to_owned();
        assert_eq!(
            found(&out),
            vec![
                ("compose/no-healthcheck", p.clone(), Some(14)),
                ("compose/no-resource-limits", p.clone(), Some(14)),
                ("compose/no-restart-policy", p.clone(), Some(14)),
                ("compose/secret-in-environment", p.clone(), Some(17)),
                ("compose/secrets-not-files", p.clone(), Some(11)),
                ("compose/unpinned-image", p, Some(15)),
            ]
        );
    }

    #[test]
    fn a_clean_file_has_no_findings_and_every_rule_is_checked() {
        let out = audit(&[("compose.yaml", CLEAN)]);
        assert!(out.findings().is_empty(), "{:?}", out.findings());
        for rule in RULES {
            assert!(out.was_checked(rule), "{}", rule.id);
        }
    }

    #[test]
    fn each_rule_fires_on_its_line() {
        let text = "\
services:
  redis:
    image: redis
    environment:
      - REDIS_PASSWORD=redis123
  api:
    image: registry:5000/acme/api
    environment:
      DB_PASSWORD: ${DB_PASSWORD}
      CACHE_URL: redis://default:hunter22@redis:6379
    healthcheck:
      test: curl -f http://localhost:3000/health
";
        let out = audit(&[("docker-compose.yml", text)]);
        let p = "docker-compose.yml".to_owned();
        assert_eq!(
            found(&out),
            vec![
                ("compose/healthcheck-localhost", p.clone(), Some(12)),
                ("compose/no-healthcheck", p.clone(), Some(2)),
                ("compose/no-resource-limits", p.clone(), Some(2)),
                ("compose/no-resource-limits", p.clone(), Some(6)),
                ("compose/no-restart-policy", p.clone(), Some(2)),
                ("compose/no-restart-policy", p.clone(), Some(6)),
                ("compose/secret-in-environment", p.clone(), Some(5)),
                ("compose/secret-in-environment", p.clone(), Some(10)),
                ("compose/secrets-not-files", p.clone(), Some(9)),
                ("compose/unpinned-image", p.clone(), Some(3)),
                ("compose/unpinned-image", p, Some(7)),
            ]
        );
        let evidence: Vec<&str> = out.findings().iter().map(|f| f.evidence.as_str()).collect();
        assert!(evidence.contains(&"service redis: REDIS_PASSWORD=red…"), "{evidence:?}");
        assert!(evidence.iter().all(|e| !e.contains("redis123") && !e.contains("hunter22")), "{evidence:?}");
    }

    #[test]
    fn dev_files_are_only_checked_for_secrets() {
        let text = "services:\n  db:\n    image: postgres\n    environment:\n      POSTGRES_PASSWORD: postgres\n";
        let out = audit(&[("docker-compose.dev.yml", text)]);
        assert_eq!(found(&out), vec![("compose/secret-in-environment", "docker-compose.dev.yml".to_owned(), Some(5))]);
        assert!(!out.was_checked(&NO_RESOURCE_LIMITS));
        let out = audit(&[("deploy/dev/compose.yaml", "services:\n  db:\n    image: postgres:latest\n")]);
        assert!(out.findings().is_empty());
        assert!(out.was_checked(&SECRET_IN_ENVIRONMENT) && !out.was_checked(&UNPINNED_IMAGE));
    }

    #[test]
    fn test_paths_are_skipped() {
        let out = audit(&[("tests/compose.yaml", "services:\n  db:\n    image: postgres\n")]);
        assert!(out.findings().is_empty());
        assert!(!out.was_checked(&SECRET_IN_ENVIRONMENT));
    }

    #[test]
    fn a_dockerfile_healthcheck_counts_and_none_does_not() {
        let compose = "\
services:
  api:
    build: {context: .., dockerfile: docker/api.Dockerfile}
    image: acme/api
    restart: always
    mem_limit: 256m
  worker:
    build: ../worker
    restart: always
    mem_limit: 256m
";
        let out = audit(&[
            ("deploy/compose.yaml", compose),
            ("docker/api.Dockerfile", "FROM scratch\nHEALTHCHECK CMD [\"/app\", \"health\"]\n"),
            ("worker/Dockerfile", "FROM scratch\nHEALTHCHECK NONE\n"),
        ]);
        // The api's `image:` names its own build: not an unpinned pull.
        assert_eq!(found(&out), vec![("compose/no-healthcheck", "deploy/compose.yaml".to_owned(), Some(7))]);
    }

    #[test]
    fn one_off_jobs_and_merge_keys() {
        let text = "\
x-base: &base
  restart: unless-stopped
  deploy: {resources: {limits: {memory: 128M}}}
  healthcheck: {test: [\"CMD\", \"/app\", \"health\"]}
services:
  migrate:
    <<: *base
    image: acme/app:${VERSION:?set VERSION}
    restart: \"no\"
    healthcheck: {disable: true}
  app:
    <<: *base
    image: ${REGISTRY:-localhost}/app:${VERSION:-latest}
    depends_on: {migrate: {condition: service_completed_successfully}}
";
        let out = audit(&[("compose.yaml", text)]);
        assert_eq!(found(&out), vec![("compose/unpinned-image", "compose.yaml".to_owned(), Some(13))]);
    }

    #[test]
    fn nested_merge_keys() {
        let text = "\
x-limits: &limits
  deploy: {resources: {limits: {memory: 64M}}}
x-app: &app
  <<: *limits
  restart: always
  image: acme/app:1.0
  healthcheck: {test: [\"CMD\", \"/app\", \"health\"]}
services:
  app:
    <<: *app
  worker:
    <<: [*app]
    restart: \"no\"
";
        let out = audit(&[("compose.yaml", text)]);
        assert_eq!(found(&out), vec![("compose/no-restart-policy", "compose.yaml".to_owned(), Some(11))]);
    }

    #[test]
    fn image_references() {
        assert_eq!(unpinned("redis"), Some("no tag"));
        assert_eq!(unpinned("redis:latest"), Some("tag latest"));
        assert_eq!(unpinned("registry:5000/app"), Some("no tag"));
        assert_eq!(unpinned("registry:5000/app:1.2"), None);
        assert_eq!(unpinned("app@sha256:abcd"), None);
        assert_eq!(unpinned(&resolve_defaults("${REG:-localhost}/app:${V:-latest}")), Some("tag latest"));
        assert_eq!(unpinned(&resolve_defaults("app:${V:?required}")), None);
        assert_eq!(unpinned(&resolve_defaults("${IMAGE}")), None);
        assert_eq!(join("deploy/compose", "../../x/Dockerfile"), Some("x/Dockerfile".to_owned()));
        assert_eq!(join("a", "../../x"), None);
    }

    #[test]
    fn the_fixtures() {
        let bad = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/compose/docker-compose.yml"));
        let out = audit(&[("docker-compose.yml", bad)]);
        assert_eq!(
            ids(&out),
            vec![
                "compose/healthcheck-localhost",
                "compose/no-healthcheck",
                "compose/no-resource-limits",
                "compose/no-restart-policy",
                "compose/secret-in-environment",
                "compose/secrets-not-files",
                "compose/unpinned-image",
            ]
        );
        let good = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/compose/good/compose.yaml"));
        let out = audit(&[("compose.yaml", good)]);
        assert!(out.findings().is_empty(), "{:?}", out.findings());
    }

    #[test]
    fn the_projects_own_compose_files() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
        let prod = std::fs::read_to_string(format!("{root}/compose/compose.yaml")).unwrap();
        let dev = std::fs::read_to_string(format!("{root}/dev/compose.yaml")).unwrap();
        let out = audit(&[("deploy/compose/compose.yaml", &prod), ("deploy/dev/compose.yaml", &dev)]);
        // The five City Events images default their tag to `latest` when CITYEVENTS_VERSION is unset.
        let findings: Vec<_> = out.findings().iter().map(|f| (f.rule.id, f.evidence.clone())).collect();
        assert!(findings.iter().all(|(id, _)| *id == "compose/unpinned-image"), "{findings:#?}");
        assert_eq!(findings.len(), 5, "{findings:#?}");
    }
}
