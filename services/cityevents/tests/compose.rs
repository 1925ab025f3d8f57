//! The production compose file `deploy/compose/compose.yaml` keeps the invariants
//! docs/compose.md describes: each service with a database has its one-off `migrate` job of the
//! same image and configuration and starts only after it exited 0; every container has CPU and
//! memory limits and reservations, rotated logs, a read-only root file system, no capabilities
//! (PostgreSQL's entrypoint excepted, named) and no privilege escalation; the City Events
//! containers run as 65532:65532 with the image's liveness healthcheck, a restart policy and
//! more than drain delay + shutdown timeout to stop; only the gateway publishes a port, and no
//! management port; only the notifier (for its SMTP server) has a network out of the host; every secret is a file under /run/secrets declared by the file (none is
//! written in it); every `${VAR}` the service's config requires is given; the config file is
//! `deploy/config/<service>.yaml`, mounted where KEEL_CONFIG names it; docs/compose.md lists
//! every variable the file reads.
//!
//! One test has docker-compose (Debian's 1.29 validates without an engine) load the file
//! with secrets from `deploy/compose/make-secrets.sh`, and refuse it without either required
//! setting (CITYEVENTS_ORIGIN, CITYEVENTS_SMTP_HOST); without docker-compose it skips with a
//! message, except under `CI=true`, where it fails (`.ci/compose.sh` installs it and also checks
//! the file against the compose specification's JSON schema).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use cityevents_common::services::ALL;
use serde_norway::Value;

/// (service, public port, management port) of every row of the module table
/// (`cityevents_common::services`): the compose file must agree with it.
fn modules() -> Vec<(&'static str, u16, u16)> {
    ALL.iter().map(|m| (m.short, m.port, m.management_port())).collect()
}

/// The services with a database, hence a migrate job.
fn with_database() -> Vec<&'static str> {
    ALL.iter().filter(|m| m.database).map(|m| m.short).collect()
}

/// On the bus (auth: its outbox).
const WITH_BUS: [&str; 4] = ["auth", "events", "joins", "notifier"];
/// The network of the notifier's SMTP connections: the only one with a route out of the host.
const MAIL_NETWORK: &str = "mail";
/// What PostgreSQL's entrypoint needs as root (data directory, socket directory, password file,
/// then `gosu postgres`); nothing else gets a capability.
const POSTGRES_CAPS: [&str; 5] = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"];
/// shutdown.drain_delay (5 s) + shutdown.timeout (30 s) in production, plus a margin.
const MIN_STOP_GRACE_SECS: u64 = 40;
const SECRETS_DIR: &str = "${CITYEVENTS_SECRETS_DIR:-./secrets}/";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn have(program: &str, args: &[&str]) -> bool {
    keel::testing::require_command(program, args)
}

/// The compose file with its anchors and `<<` merge keys resolved, as compose reads it.
fn compose() -> Value {
    compose_file("compose.yaml")
}

/// `deploy/compose/<name>`, anchors and `<<` merge keys resolved.
fn compose_file(name: &str) -> Value {
    let text = std::fs::read_to_string(root().join("deploy/compose").join(name)).unwrap();
    let mut v: Value = serde_norway::from_str(&text).unwrap();
    v.apply_merge().unwrap();
    assert!(!has_merge_key(&v), "a `<<` merge key is left after merging: do not nest them at an anchor's top level");
    v
}

fn has_merge_key(v: &Value) -> bool {
    match v {
        Value::Mapping(m) => m.iter().any(|(k, v)| k == "<<" || has_merge_key(v)),
        Value::Sequence(s) => s.iter().any(has_merge_key),
        _ => false,
    }
}

/// Every service of the file: name → definition.
fn services(v: &Value) -> BTreeMap<String, Value> {
    v["services"].as_mapping().unwrap().iter().map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone())).collect()
}

fn service<'a>(v: &'a Value, name: &str) -> &'a Value {
    let s = &v["services"][name];
    assert!(s.is_mapping(), "service {name} is missing");
    s
}

/// A list of strings (`[a, b]`); empty when absent.
fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().map(|x| x.as_str().unwrap().to_owned()).collect()).unwrap_or_default()
}

/// The `environment` mapping (the file writes every one as a mapping).
fn env(s: &Value) -> BTreeMap<String, String> {
    s["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        other => panic!("environment value {other:?} is not a scalar"),
                    };
                    (k.as_str().unwrap().to_owned(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `${VAR:-default}` → `default`, `${VAR}` / `${VAR:?message}` → `` (compose's interpolation,
/// with nothing set).
fn defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').map(|e| at + e).unwrap();
        let inner = &rest[at + 2..end];
        if let Some((_, d)) = inner.split_once(":-") {
            out.push_str(d);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => defaults(s),
        Value::Number(n) => n.to_string(),
        other => panic!("{other:?} is not a scalar"),
    }
}

/// `40s`, `1m30s`, `2m` → seconds.
fn seconds(text: &str) -> u64 {
    let (mut total, mut number) = (0, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
        } else {
            let n: u64 = number.parse().unwrap_or_else(|_| panic!("duration {text}"));
            total += n * match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => panic!("duration {text}: unit {c}"),
            };
            number.clear();
        }
    }
    assert!(number.is_empty(), "duration {text} has no unit");
    total
}

/// `512M`, `1G`, `64m` → bytes.
fn bytes(text: &str) -> u64 {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let n: u64 = text[..split].parse().unwrap_or_else(|_| panic!("memory {text}"));
    n * match text[split..].to_ascii_lowercase().trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        unit => panic!("memory {text}: unit {unit}"),
    }
}

/// The `${VAR}`s of a config file that have no default, comments left out.
fn required_vars(config: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    for line in config.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(at) = rest.find("${") {
            let escaped = rest[..at].ends_with('$');
            rest = &rest[at + 2..];
            let end = rest.find('}').unwrap();
            let inner = &rest[..end];
            if !escaped && !inner.contains(":-") {
                vars.insert(inner.to_owned());
            }
            rest = &rest[end..];
        }
    }
    vars
}

/// A one-off job: the migrate jobs and postgres-init.
fn is_one_off(name: &str) -> bool {
    name.ends_with("-migrate") || name == "postgres-init"
}

/// The City Events containers: the five services and the migrate jobs.
fn is_city_events(name: &str) -> bool {
    modules().iter().any(|(s, _, _)| name == *s || name == format!("{s}-migrate"))
}

#[test]
fn the_helpers_read_what_compose_reads() {
    assert_eq!(defaults("${A:-2}"), "2");
    assert_eq!(defaults("x${A:?must be set}y"), "xy");
    assert_eq!(defaults("${R:-localhost}/img:${V:-latest}"), "localhost/img:latest");
    assert_eq!(seconds("40s"), 40);
    assert_eq!(seconds("1m30s"), 90);
    assert_eq!(bytes("512M"), 512 << 20);
    assert_eq!(bytes("1G"), 1 << 30);
    assert_eq!(
        required_vars("# `${VAR}` in a comment\na: ${A}\nb: ${B:-x}\nc: $${C}\n"),
        BTreeSet::from(["A".to_owned()])
    );
}

#[test]
fn each_service_with_a_database_waits_for_its_migrate_job_of_the_same_image() {
    let v = compose();
    for s in with_database() {
        let svc = service(&v, s);
        let job = service(&v, &format!("{s}-migrate"));
        assert_eq!(strings(&job["command"]), ["migrate"], "{s}-migrate runs `migrate`");
        assert_eq!(job["restart"], "no", "{s}-migrate runs once");
        assert_eq!(
            defaults(job["image"].as_str().unwrap()),
            format!("localhost/cityevents-{s}:latest"),
            "{s}-migrate: the image .ci/images.sh and docs/deployment.md build"
        );
        // The same image, configuration, environment and secrets as the service; its networks
        // (the service may have one more: the notifier's way out to its SMTP server).
        for key in ["image", "environment", "env_file", "secrets", "volumes", "user"] {
            assert_eq!(job[key], svc[key], "{s}-migrate and {s} differ in `{key}`");
        }
        let service_networks = strings(&svc["networks"]);
        for n in strings(&job["networks"]) {
            assert!(service_networks.contains(&n), "{s}-migrate is on {n}, {s} is not");
        }
        assert_eq!(
            svc["depends_on"][format!("{s}-migrate").as_str()]["condition"],
            "service_completed_successfully",
            "{s} starts once its migrate job exited 0"
        );
        assert_eq!(svc["depends_on"]["postgres"]["condition"], "service_healthy", "{s}");
        assert_eq!(job["depends_on"]["postgres"]["condition"], "service_healthy", "{s}-migrate");
        assert_eq!(
            job["depends_on"]["postgres-init"]["condition"], "service_completed_successfully",
            "{s}-migrate needs its role and database"
        );
        let vars = env(svc);
        assert_eq!(
            vars[&format!("CITYEVENTS_{}_DATABASE_URL", s.to_ascii_uppercase())],
            format!("postgres://cityevents_{s}@postgres:5432/cityevents_{s}"),
            "{s}: its own database and role (deploy/backup/backup.sh's default names)"
        );
    }
    for s in WITH_BUS {
        assert_eq!(service(&v, s)["depends_on"]["bus"]["condition"], "service_healthy", "{s}");
    }
    // The gateway has no database, so no migrate job.
    let gateway = service(&v, "gateway");
    assert!(v["services"]["gateway-migrate"].is_null());
    assert_eq!(gateway["depends_on"]["redis"]["condition"], "service_healthy");
    for s in with_database() {
        assert_eq!(gateway["depends_on"][s]["condition"], "service_healthy", "the gateway starts after {s}");
    }
    let init = service(&v, "postgres-init");
    assert_eq!(init["depends_on"]["postgres"]["condition"], "service_healthy");
    assert!(root().join("deploy/compose/init-databases.sh").is_file());
}

#[test]
fn every_container_has_cpu_and_memory_limits_and_reservations() {
    let v = compose();
    for (name, s) in services(&v) {
        let resources = &s["deploy"]["resources"];
        for kind in ["limits", "reservations"] {
            for what in ["cpus", "memory"] {
                assert!(!resources[kind][what].is_null(), "{name}: no deploy.resources.{kind}.{what}");
            }
        }
        let cpus = |kind: &str| -> f64 {
            let c = scalar(&resources[kind]["cpus"]);
            c.parse().unwrap_or_else(|_| panic!("{name}: {kind}.cpus is {c}"))
        };
        let memory = |kind: &str| bytes(&scalar(&resources[kind]["memory"]));
        assert!(cpus("limits") > 0.0 && cpus("reservations") > 0.0, "{name}: cpus");
        assert!(cpus("reservations") <= cpus("limits"), "{name}: cpu reservation above the limit");
        assert!(memory("reservations") > 0 && memory("reservations") <= memory("limits"), "{name}: memory");
        assert!(memory("limits") >= 32 << 20, "{name}: a memory limit under 32 MiB");
    }
}

#[test]
fn long_running_containers_have_a_healthcheck_and_a_restart_policy() {
    let v = compose();
    for (name, s) in services(&v) {
        if is_one_off(&name) {
            assert_eq!(s["restart"], "no", "{name} runs once");
            continue;
        }
        assert_eq!(s["restart"], "unless-stopped", "{name}");
        let hc = &s["healthcheck"];
        assert!(hc["disable"].is_null() && !strings(&hc["test"]).is_empty(), "{name} has no healthcheck");
        assert!(seconds(hc["interval"].as_str().unwrap()) > 0, "{name}: healthcheck interval");
        assert!(seconds(hc["timeout"].as_str().unwrap()) > 0, "{name}: healthcheck timeout");
    }
    for (s, _, _) in modules() {
        let hc = &service(&v, s)["healthcheck"];
        // Liveness, as the image's HEALTHCHECK: never readiness, which fails while a shared
        // dependency is down and would have every container restarted or held back.
        assert_eq!(strings(&hc["test"]), ["CMD", "/app/service", "healthcheck"], "{s}");
        assert!(seconds(hc["start_period"].as_str().unwrap()) >= 30, "{s}: start period");
    }
}

#[test]
fn only_the_gateway_publishes_a_port_and_never_a_management_port() {
    let v = compose();
    for (name, s) in services(&v) {
        assert!(s["network_mode"].is_null(), "{name}: network_mode");
        if name != "gateway" {
            assert!(s["ports"].is_null(), "{name} publishes a port");
        }
    }
    let ports = strings(&service(&v, "gateway")["ports"]);
    assert_eq!(ports.len(), 1, "the gateway publishes its public port only: {ports:?}");
    let published = defaults(&ports[0]);
    assert!(published.ends_with(":8080"), "{published}: the container side is the gateway's http.port");
    for (_, _, management) in modules() {
        assert!(!published.contains(&management.to_string()), "{published}: a management port");
    }
    // Four networks: the gateway's public one, the internal one of everything else, the
    // notifier's way out to its SMTP server (not its migrate job's: it sends nothing) and auth's
    // and the events service's to their object store.
    assert_eq!(v["networks"]["backend"]["internal"], true);
    assert!(v["networks"][MAIL_NETWORK].is_mapping(), "no network {MAIL_NETWORK}");
    assert_ne!(v["networks"][MAIL_NETWORK]["internal"], true, "{MAIL_NETWORK} must reach the SMTP server");
    assert_ne!(v["networks"]["objects"]["internal"], true, "objects must reach the object store");
    for (name, s) in services(&v) {
        let networks = strings(&s["networks"]);
        match name.as_str() {
            "gateway" => assert_eq!(networks, ["public", "backend"]),
            "notifier" => assert_eq!(networks, ["backend", MAIL_NETWORK]),
            // Their pictures' object store is outside the host (docs/compose.md#pictures).
            "auth" | "events" => assert_eq!(networks, ["backend", "objects"], "{name}"),
            _ => assert_eq!(networks, ["backend"], "{name}"),
        }
    }
}

#[test]
fn containers_are_read_only_without_capabilities_and_city_events_runs_as_65532() {
    let v = compose();
    for (name, s) in services(&v) {
        assert_eq!(s["read_only"], true, "{name}: read-only root file system");
        assert_eq!(strings(&s["cap_drop"]), ["ALL"], "{name}: cap_drop");
        assert!(strings(&s["security_opt"]).iter().any(|o| o == "no-new-privileges:true"), "{name}");
        assert!(s["privileged"].is_null() || s["privileged"] == false, "{name}: privileged");
        let added = strings(&s["cap_add"]);
        if name == "postgres" {
            assert!(added.iter().all(|c| POSTGRES_CAPS.contains(&c.as_str())), "postgres: cap_add {added:?}");
        } else {
            assert!(added.is_empty(), "{name}: cap_add {added:?}");
        }
        if is_city_events(&name) || name == "postgres-init" || name == "redis" {
            assert_eq!(s["user"], "65532:65532", "{name}: the images' non-root user");
        }
        let logging = &s["logging"];
        assert_eq!(logging["driver"], "json-file", "{name}: logging");
        assert!(!scalar(&logging["options"]["max-size"]).is_empty(), "{name}: log rotation max-size");
        assert!(scalar(&logging["options"]["max-file"]).parse::<u32>().unwrap() >= 1, "{name}: max-file");
    }
}

#[test]
fn services_get_more_than_drain_delay_plus_shutdown_timeout_to_stop() {
    let v = compose();
    for (s, _, _) in modules() {
        let grace = seconds(service(&v, s)["stop_grace_period"].as_str().unwrap());
        assert!(grace >= MIN_STOP_GRACE_SECS, "{s}: stop_grace_period {grace} s");
    }
}

#[test]
fn no_secret_is_written_in_the_file_and_every_secret_file_is_declared() {
    let v = compose();
    let text = std::fs::read_to_string(root().join("deploy/compose/compose.yaml")).unwrap();
    let declared: BTreeMap<String, String> = v["secrets"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, d)| (k.as_str().unwrap().to_owned(), d["file"].as_str().unwrap().to_owned()))
        .collect();
    for (name, file) in &declared {
        assert_eq!(file, &format!("{SECRETS_DIR}{name}"), "secret {name}: a file of the secrets directory");
    }
    let mut used = BTreeSet::new();
    for (name, s) in services(&v) {
        let mounted: BTreeSet<String> = strings(&s["secrets"]).into_iter().collect();
        for m in &mounted {
            assert!(declared.contains_key(m), "{name}: secret {m} is not declared");
        }
        used.extend(mounted.iter().cloned());
        for (key, value) in env(&s) {
            let upper = key.to_ascii_uppercase();
            if upper.ends_with("_FILE") || upper == "PGPASSFILE" {
                let secret = value
                    .strip_prefix("/run/secrets/")
                    .unwrap_or_else(|| panic!("{name}: {key}={value} is not a mounted secret"));
                assert!(mounted.contains(secret), "{name}: {key} names {secret}, which it does not mount");
            } else {
                for word in ["PASSWORD", "SECRET", "TOKEN", "PRIVATE", "MASTER", "DATA_KEY", "BLIND"] {
                    assert!(!upper.contains(word), "{name}: {key} is written in the file; use a *_FILE secret");
                }
                // A URL carries no credentials (the database password is in the PGPASSFILE).
                if let Some((_, after)) = value.split_once("://") {
                    let authority = after.split('/').next().unwrap();
                    if let Some((user, _)) = authority.split_once('@') {
                        assert!(!user.contains(':'), "{name}: {key} has a password in its URL");
                    }
                }
            }
        }
        for file in strings(&s["env_file"]) {
            assert!(file.starts_with(SECRETS_DIR), "{name}: env_file {file} outside the secrets directory");
        }
    }
    assert_eq!(used, declared.keys().cloned().collect::<BTreeSet<_>>(), "declared but never mounted");
    assert!(!text.contains("POSTGRES_PASSWORD:"), "the superuser's password comes from POSTGRES_PASSWORD_FILE");
}

#[test]
fn every_service_mounts_its_config_file_and_gets_every_variable_it_requires() {
    let v = compose();
    let make_secrets = std::fs::read_to_string(root().join("deploy/compose/make-secrets.sh")).unwrap();
    for (s, port, _) in modules() {
        let svc = service(&v, s);
        let vars = env(svc);
        assert_eq!(vars["KEEL_ENV"], "production", "{s}");
        let config_path = &vars["KEEL_CONFIG"];
        let mount = format!("${{CITYEVENTS_CONFIG_DIR:-../config}}/{s}.yaml:{config_path}:ro");
        assert!(strings(&svc["volumes"]).contains(&mount), "{s}: mounts {mount}");
        let config = std::fs::read_to_string(root().join(format!("deploy/config/{s}.yaml"))).unwrap();
        for var in required_vars(&config) {
            let name = var.split(":?").next().unwrap();
            let in_env_file = !strings(&svc["env_file"]).is_empty() && make_secrets.contains(&format!("{name}="));
            assert!(
                vars.contains_key(name) || in_env_file,
                "{s}: deploy/config/{s}.yaml needs {name}, which is not given"
            );
        }
        // The port the healthcheck, the gateway and the published port use is the default.
        assert!(!vars.contains_key(&format!("CITYEVENTS_{}_PORT", s.to_ascii_uppercase())), "{s}: port {port} moved");
        assert_eq!(
            defaults(svc["image"].as_str().unwrap()),
            format!("localhost/cityevents-{s}:latest"),
            "{s}: image name"
        );
    }
    let gateway = env(service(&v, "gateway"));
    for (s, port, _) in modules().iter().filter(|(s, _, _)| *s != "gateway") {
        assert_eq!(gateway[&format!("CITYEVENTS_{}_URL", s.to_ascii_uppercase())], format!("http://{s}:{port}"));
    }
}

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("keel-compose-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command with only PATH and HOME of this process's environment: no CITYEVENTS_* of the
/// caller reaches the file.
fn clean(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env_clear();
    for key in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(key) {
            c.env(key, value);
        }
    }
    c.current_dir(root());
    c
}

#[test]
fn docker_compose_loads_the_file_with_the_secrets_make_secrets_writes() {
    if !have("docker-compose", &["version"]) || !have("openssl", &["version"]) {
        return;
    }
    let dir = TempDir::new();
    let secrets = dir.0.join("secrets");
    let out = clean("bash").arg("deploy/compose/make-secrets.sh").arg(&secrets).output().unwrap();
    assert!(out.status.success(), "make-secrets.sh: {}", String::from_utf8_lossy(&out.stderr));
    let again = clean("bash").arg("deploy/compose/make-secrets.sh").arg(&secrets).output().unwrap();
    assert!(!again.status.success(), "make-secrets.sh overwrote its secrets without --force");
    // Every secret the file declares and the env file it reads, private to their owner (sqlx
    // ignores a pgpass file that its group or others may read).
    let v = compose();
    let mut files: Vec<String> =
        v["secrets"].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap().to_owned()).collect();
    files.extend(["auth.env".to_owned(), "notifier.env".to_owned()]);
    for f in files {
        let meta = std::fs::metadata(secrets.join(&f)).unwrap_or_else(|e| panic!("make-secrets.sh wrote no {f}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o077, 0, "{f} is readable by others");
        assert!(meta.len() > 0, "{f} is empty");
    }

    // Nothing from deploy/compose/.env, if there is one.
    let empty = dir.0.join("empty.env");
    std::fs::write(&empty, "").unwrap();
    // The two settings the file requires.
    let required = [("CITYEVENTS_ORIGIN", "https://cityevents.example"), ("CITYEVENTS_SMTP_HOST", "smtp.example.net")];
    let config = |without: Option<&str>| {
        let mut c = clean("docker-compose");
        c.arg("--env-file").arg(&empty);
        c.args(["-f", "deploy/compose/compose.yaml", "config", "-q"]).env("CITYEVENTS_SECRETS_DIR", &secrets);
        for (var, value) in required {
            if without != Some(var) {
                c.env(var, value);
            }
        }
        c.output().unwrap()
    };
    let out = config(None);
    assert!(out.status.success(), "docker-compose config: {}", String::from_utf8_lossy(&out.stderr));

    // With kafka.yaml: the bus is Kafka, as locked down as the rest, on its own volume, and
    // every City Events container is on it.
    let mut c = clean("docker-compose");
    c.arg("--env-file").arg(&empty);
    c.args(["-f", "deploy/compose/compose.yaml", "-f", "deploy/compose/kafka.yaml", "config"])
        .env("CITYEVENTS_SECRETS_DIR", &secrets)
        .envs(required);
    let out = c.output().unwrap();
    assert!(out.status.success(), "docker-compose config with kafka.yaml: {}", String::from_utf8_lossy(&out.stderr));
    let resolved: Value = serde_norway::from_slice(&out.stdout).unwrap();
    let bus = &resolved["services"]["bus"];
    assert!(bus["image"].as_str().unwrap().starts_with("apache/kafka:"), "{:?}", bus["image"]);
    assert_eq!(bus["read_only"], true);
    assert_eq!(strings(&bus["cap_drop"]), ["ALL"]);
    let volumes = bus["volumes"].as_sequence().unwrap();
    let sources: Vec<&str> = volumes.iter().filter_map(|m| m["source"].as_str()).collect();
    assert_eq!(sources, ["kafka"], "only Kafka's volume: {volumes:?}");
    for (name, s) in services(&resolved).into_iter().filter(|(n, _)| is_city_events(n)) {
        assert_eq!(s["environment"]["CITYEVENTS_BUS_BACKEND"], "kafka", "{name}");
    }
    for (var, _) in required {
        let out = config(Some(var));
        assert!(!out.status.success(), "the file loads without {var}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(var), "the refusal names {var}");
    }
}

#[test]
fn docs_compose_md_lists_every_variable_the_file_reads() {
    let text = ["compose.yaml", "kafka.yaml"]
        .map(|f| std::fs::read_to_string(root().join("deploy/compose").join(f)).unwrap())
        .join("\n");
    let docs = std::fs::read_to_string(root().join("docs/compose.md")).unwrap();
    let mut vars = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("${") {
        rest = &rest[at + 2..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap();
        vars.insert(rest[..end].to_owned());
    }
    assert!(vars.contains("CITYEVENTS_ORIGIN") && vars.contains("CITYEVENTS_VERSION"), "{vars:?}");
    for var in vars {
        assert!(docs.contains(&format!("`{var}`")), "docs/compose.md does not list {var}");
    }
}

/// kafka.yaml, over compose.yaml, makes the bus Kafka: every City Events container (each migrate
/// job as its service) gets the backend, the broker's address, a client id of its own and the
/// settings of a single plaintext broker on the internal network; the `bus` container is a
/// pinned Kafka image whose log is on a volume of its own and whose scripts write only to
/// memory. It adds no container of its own.
#[test]
fn kafka_yaml_makes_kafka_the_bus_of_every_container() {
    let base = compose();
    let kafka = compose_file("kafka.yaml");
    let over = services(&kafka);
    for name in over.keys() {
        assert!(!base["services"][name.as_str()].is_null(), "kafka.yaml adds {name}");
    }
    let on_bus: Vec<String> = services(&base)
        .into_iter()
        .filter(|(_, s)| env(s).contains_key("CITYEVENTS_BUS_BACKEND"))
        .map(|(n, _)| n)
        .collect();
    assert!(on_bus.len() >= 9, "the five services and four jobs: {on_bus:?}");
    let bus = &over["bus"];
    let advertised = env(bus)["KAFKA_ADVERTISED_LISTENERS"].clone();
    for name in &on_bus {
        let vars = env(&over[name]);
        let s = name.trim_end_matches("-migrate").to_ascii_uppercase();
        assert_eq!(vars["CITYEVENTS_BUS_BACKEND"], "kafka", "{name}");
        let url = &vars["CITYEVENTS_BUS_URL"];
        assert_eq!(
            url.strip_prefix("kafka://"),
            advertised.strip_prefix("PLAINTEXT://"),
            "{name}: the broker's address"
        );
        let setting = |k: &str| vars.get(&format!("CITYEVENTS_{s}__BUS__KAFKA__{k}")).cloned();
        assert_eq!(setting("CLIENT_ID"), Some(format!("cityevents-{}", s.to_ascii_lowercase())), "{name}");
        assert_eq!(setting("ALLOW_PLAINTEXT").as_deref(), Some("true"), "{name}: stated, on `backend` only");
        assert_eq!(setting("REPLICATION_FACTOR").as_deref(), Some("1"), "{name}: one broker");
        assert!(setting("PARTITIONS").is_some_and(|p| defaults(&p).parse::<u32>().is_ok()), "{name}");
        if let Some(service) = name.strip_suffix("-migrate") {
            assert_eq!(over[name]["environment"], over[service]["environment"], "{name}: its service's settings");
        }
    }
    let image = bus["image"].as_str().unwrap();
    let (_, tag) = image.rsplit_once(':').unwrap();
    assert!(tag != "latest" && tag.chars().next().is_some_and(|c| c.is_ascii_digit()), "a pinned image: {image}");
    assert!(!strings(&bus["command"]).is_empty(), "compose.yaml's NATS arguments replaced");
    for dir in ["/opt/kafka/config", "/tmp"] {
        assert!(strings(&bus["tmpfs"]).iter().any(|t| t == dir), "{dir}: written by the image's scripts");
    }
    assert_eq!(env(bus)["LOG_DIR"].split('/').nth(1), Some("tmp"), "Kafka's log files in memory");
    // Every mount target of compose.yaml's bus is taken over (no NATS volume left mounted).
    let targets: BTreeSet<String> = bus["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            m["target"].as_str().map(str::to_owned).unwrap_or_else(|| scalar(m).split(':').nth(1).unwrap().to_owned())
        })
        .collect();
    for m in strings(&base["services"]["bus"]["volumes"]) {
        let target = m.split(':').nth(1).unwrap().to_owned();
        assert!(targets.contains(&target), "compose.yaml's {m} is still mounted");
    }
    assert!(!kafka["volumes"]["kafka"].is_null(), "the `kafka` volume is declared");
    assert_eq!(strings(&bus["healthcheck"]["test"]).first().map(String::as_str), Some("CMD"));
    assert!(!bus["deploy"]["resources"]["limits"]["memory"].is_null());
    assert!(env(bus)["KAFKA_HEAP_OPTS"].contains("-Xmx"), "the heap within the memory limit");
}
