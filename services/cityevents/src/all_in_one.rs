//! Zero-setup mode: every service in one process on embedded defaults, and the defaults the
//! launcher gives each service (ports, upstream URLs, the shared in-process bus and, in the
//! development profile, development secrets kept in `data/dev-secrets.json`).
//!
//! Defaults sit below a service's config file and environment: `CITYEVENTS_AUTH__HTTP__PORT=9001`
//! still wins.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use cityevents_common::services;
use keel::app::Loader;
use keel::config::Profile;
use keel::security::crypto::{MasterKey, generate_key};
use serde::{Deserialize, Serialize};

/// Where development secrets live (created on first run, mode 0600).
const DEV_SECRETS: &str = "data/dev-secrets.json";
/// The JWT key id used in development.
const DEV_KID: &str = "dev";

/// Randomly generated on first run so no secret is ever written in the source or a template.
#[derive(Serialize, Deserialize)]
struct DevSecrets {
    jwt_secret: String,
    master_key: String,
    blind_index_key: String,
    data_key: String,
    /// The audit log's chain key; added to a file written before it existed.
    #[serde(default)]
    audit_key: String,
    /// Every service's `management.admin_token` (the operator page); added to a file written
    /// before it existed.
    #[serde(default)]
    admin_token: String,
    /// Auth's `http.proxy_secret`, which the gateway sends; added to a file written before it
    /// existed.
    #[serde(default)]
    proxy_secret: String,
}

/// The profile from `KEEL_ENV`, or the exit code for an invalid one.
pub fn profile() -> Result<Profile, ExitCode> {
    Profile::parse(std::env::var(keel::config::PROFILE_ENV).ok().as_deref()).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(keel::app::exit::CONFIG)
    })
}

/// The development secrets, read (or created) once per process: every service asks for them.
fn dev_secrets() -> Result<&'static DevSecrets, String> {
    static SECRETS: std::sync::OnceLock<Result<DevSecrets, String>> = std::sync::OnceLock::new();
    SECRETS.get_or_init(load_or_create_dev_secrets).as_ref().map_err(Clone::clone)
}

/// The development secrets of `data/dev-secrets.json` when it exists, else new ones kept in
/// memory: for commands that must not write (`config check`, `--help`).
fn dev_secrets_unwritten() -> Result<DevSecrets, String> {
    match std::fs::read_to_string(DEV_SECRETS) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{DEV_SECRETS} is not valid: {e} (delete it)")),
        Err(_) => new_dev_secrets(),
    }
}

fn new_dev_secrets() -> Result<DevSecrets, String> {
    let master_key = generate_key();
    let master = MasterKey::from_secret(&keel::config::Secret::new(master_key.clone())).map_err(|e| e.to_string())?;
    Ok(DevSecrets {
        jwt_secret: generate_key(),
        data_key: master.new_data_key(DEV_KID).map_err(|e| e.to_string())?,
        master_key,
        blind_index_key: generate_key(),
        audit_key: generate_key(),
        admin_token: generate_key(),
        proxy_secret: generate_key(),
    })
}

fn load_or_create_dev_secrets() -> Result<DevSecrets, String> {
    let path = Path::new(DEV_SECRETS);
    if let Ok(text) = std::fs::read_to_string(path) {
        let mut secrets: DevSecrets =
            serde_json::from_str(&text).map_err(|e| format!("{DEV_SECRETS} is not valid: {e} (delete it)"))?;
        if secrets.audit_key.is_empty() || secrets.admin_token.is_empty() || secrets.proxy_secret.is_empty() {
            for key in [&mut secrets.audit_key, &mut secrets.admin_token, &mut secrets.proxy_secret] {
                if key.is_empty() {
                    *key = generate_key();
                }
            }
            let text = serde_json::to_string_pretty(&secrets).map_err(|e| e.to_string())?;
            // The file exists, owner-only: writing keeps its mode.
            std::fs::write(path, text).map_err(|e| format!("cannot write {DEV_SECRETS}: {e}"))?;
        }
        return Ok(secrets);
    }
    let secrets = new_dev_secrets()?;
    // Owner only, like the SQLite files beside it.
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create("data")
        .map_err(|e| format!("cannot create ./data: {e}"))?;
    let text = serde_json::to_string_pretty(&secrets).map_err(|e| e.to_string())?;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {DEV_SECRETS}: {e}"))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("cannot write {DEV_SECRETS}: {e}"))?;
    Ok(secrets)
}

/// How the launcher runs a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every service in this process: the upstreams a service calls (the gateway's, events'
    /// joins) are on 127.0.0.1 in any profile.
    AllInOne,
    /// One service as its own process: in production its upstreams must be configured
    /// (a loopback default would hide a missing setting behind connection errors).
    Single,
    /// [`Mode::Single`] for a command that writes nothing (`config check`, `--help`): development
    /// secrets are read when they exist, else made up in memory, never written.
    SingleReadOnly,
}

/// The defaults the launcher gives service `name` (a Keel name of the module table,
/// [`services`]): its port,
/// the URLs of the services it calls (all-in-one, or outside production), the shared in-process bus,
/// JWT issuer and audience, and in development the secrets from `data/dev-secrets.json`
/// (created on first use).
pub fn defaults(name: &str, profile: Profile, mode: Mode) -> Result<Vec<(String, String)>, String> {
    let p = keel::config::env_prefix(name);
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| vars.push((format!("{p}__{k}"), v));
    let module = services::by_name(name);
    if let Some(m) = module {
        set("HTTP__PORT", m.port.to_string());
    }
    if profile != Profile::Production {
        // One bus for the whole process when the backend is in_process (ignored by brokers).
        set("BUS__URL", "memory://cityevents".into());
    }
    set("SECURITY__JWT__ISSUER", "cityevents".into());
    set("SECURITY__JWT__AUDIENCE", "cityevents".into());
    if mode == Mode::AllInOne || profile != Profile::Production {
        for target in module.into_iter().flat_map(|m| m.upstream_modules()) {
            // The port the target listens on: its own setting when one is given, else its default.
            let port = std::env::var(format!("{}__HTTP__PORT", keel::config::env_prefix(target.name)))
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .unwrap_or(target.port);
            set(&format!("UPSTREAMS__{}__BASE_URL", target.short.to_uppercase()), format!("http://127.0.0.1:{port}"));
        }
    }
    if name != services::GATEWAY.name && profile != Profile::Production {
        // Behind the gateway: not reachable from other machines.
        set("HTTP__ADDR", "127.0.0.1".into());
    }
    if name == services::AUTH.name {
        // The gateway's X-Forwarded-For gives lockout and the audit log the client's address.
        set("HTTP__TRUSTED_PROXIES", "127.0.0.1/32".into());
    }
    if mode == Mode::AllInOne && profile != Profile::Development {
        // Every other process on the machine shares 127.0.0.1: only the gateway, which has this
        // process's secret, may tell auth a client's address.
        set_proxy_secret(name, &mut set, process_proxy_secret());
    }
    if profile == Profile::Development {
        let unwritten;
        let s = if mode == Mode::SingleReadOnly {
            unwritten = dev_secrets_unwritten()?;
            &unwritten
        } else {
            dev_secrets()?
        };
        set(&format!("SECURITY__JWT__KEYS__{DEV_KID}__ALGORITHM"), "HS256".into());
        // One token for every service: one sign-in opens every operator page of the process.
        set("MANAGEMENT__ADMIN_TOKEN", s.admin_token.clone());
        set(&format!("SECURITY__JWT__KEYS__{DEV_KID}__SECRET"), s.jwt_secret.clone());
        if name == services::AUTH.name {
            set("SECURITY__JWT__SIGNING_KEY", DEV_KID.into());
            set("SECURITY__ENCRYPTION__MASTER_KEY", s.master_key.clone());
            set("SECURITY__ENCRYPTION__BLIND_INDEX_KEY", s.blind_index_key.clone());
            set("SECURITY__ENCRYPTION__ACTIVE_KEY", DEV_KID.into());
            set(&format!("SECURITY__ENCRYPTION__DATA_KEYS__{DEV_KID}"), s.data_key.clone());
            set("SECURITY__AUDIT__ACTIVE_KEY", DEV_KID.into());
            set(&format!("SECURITY__AUDIT__KEYS__{DEV_KID}__SECRET"), s.audit_key.clone());
        }
        set_proxy_secret(name, &mut set, &s.proxy_secret);
        if name == services::NOTIFIER.name {
            // Mail contacts are encrypted at rest like auth's accounts (development: same keys).
            set("SECURITY__ENCRYPTION__MASTER_KEY", s.master_key.clone());
            set("SECURITY__ENCRYPTION__ACTIVE_KEY", DEV_KID.into());
            set(&format!("SECURITY__ENCRYPTION__DATA_KEYS__{DEV_KID}"), s.data_key.clone());
        }
    }
    Ok(vars)
}

/// Auth's `http.proxy_secret` and the gateway's `upstreams.auth.proxy_secret`, for service
/// `name`.
fn set_proxy_secret(name: &str, set: &mut impl FnMut(&str, String), secret: &str) {
    if name == services::AUTH.name {
        set("HTTP__PROXY_SECRET", secret.to_owned());
    } else if name == services::GATEWAY.name {
        set("UPSTREAMS__AUTH__PROXY_SECRET", secret.to_owned());
    }
}

/// A proxy secret made for this process, the same for every service in it.
fn process_proxy_secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(generate_key)
}

fn loader(name: &str, profile: Profile) -> Result<Loader, String> {
    Ok(Loader::new(name, profile).defaults(defaults(name, profile, Mode::AllInOne)?).process_env())
}

/// Runs every service in this process (the launcher without arguments).
pub fn run(args: &[OsString]) -> ExitCode {
    if args.len() > 2 {
        eprintln!(
            "cityevents: the all-in-one mode takes no options; configure each service by env \
             (CITYEVENTS_<SERVICE>__…), or run one with `cityevents serve <service> --config FILE`"
        );
        return ExitCode::from(keel::app::exit::USAGE);
    }
    let profile = match profile() {
        Ok(p) => p,
        Err(code) => return code,
    };
    // Every row of the module table, in its (start) order.
    let group =
        crate::modules::BUILD.iter().try_fold(keel::app::Group::new(keel::build_info!()), |group, (m, build)| {
            Ok::<_, String>(build().join(group, loader(m.name, profile)?))
        });
    let group = match group {
        Ok(g) => g,
        Err(e) => {
            eprintln!("cityevents: {e}");
            return ExitCode::from(keel::app::exit::CONFIG);
        }
    };
    // Where mail goes, for the banner (the notifier's own settings, read the way it reads them).
    let mail = loader(services::NOTIFIER.name, profile)
        .ok()
        .and_then(|l| l.load::<cityevents_notifier::NotifierConfig>().ok())
        .map(|l| l.config.app.mail.destination());
    group
        .on_started(move |running| {
            let banner = banner(running, profile, mail.as_deref());
            let members: Vec<(String, keel::health::Health)> =
                running.iter().map(|r| (r.name().to_owned(), r.health().clone())).collect();
            // Listening is not usable yet: databases connect and migrate in the background. The
            // banner (and its "running") waits until every service is ready, or says who is not.
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + READY_WAIT;
                loop {
                    let mut waiting = Vec::new();
                    for (name, health) in &members {
                        health.run_all().await;
                        if !health.report(keel::health::Kind::Readiness).is_ok() {
                            waiting.push(name.as_str());
                        }
                    }
                    if waiting.is_empty() {
                        println!("{banner}");
                        return;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        println!("{banner}");
                        tracing::warn!(
                            not_ready = ?waiting,
                            "started, but not every service is ready yet; their /readyz says why"
                        );
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            });
        })
        .run()
}

/// How long the banner waits for every service to be ready before printing anyway.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What the launcher prints once the platform is ready: the API, the operator page (with a
/// one-time sign-in link), every service's listeners, where data and mail go, and how to create
/// the first admin.
pub fn banner(running: &[keel::Running], profile: Profile, mail: Option<&str>) -> String {
    let local = |addr: std::net::SocketAddr| {
        let mut a = addr;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{a}")
    };
    let mut out = format!("\nCity Events is running, every service in this process ({profile} profile).\n\n");
    let gateway = running.iter().find(|r| r.name() == services::GATEWAY.name);
    if let Some(gw) = gateway {
        let api = local(gw.http_addr());
        out.push_str(&format!("  Web site       {api}/   (open it in a browser: find, create and join events)\n"));
        out.push_str(&format!("  API            {api}/api/v1/   (OpenAPI: {api}/api/v1/openapi.json)\n"));
        out.push_str(&format!("  API reference  {api}/api/v1/docs/\n"));
        // A one-time link is a credential: printed where the logs are the developer's own.
        match gw.sign_in_link().filter(|_| profile == Profile::Development) {
            Some(link) => out.push_str(&format!(
                "  Operator page  {link}\n                 (a one-time sign-in link, for an hour; then sign in at {}/admin/login\n                 with admin_token from {DEV_SECRETS}, or send it as a bearer token)\n",
                local(gw.management_addr())
            )),
            None => out.push_str(&format!(
                "  Operator page  {}/admin/login (the management.admin_token of CITYEVENTS_<SERVICE>__MANAGEMENT__ADMIN_TOKEN)\n",
                local(gw.management_addr())
            )),
        }
    }
    out.push_str("\n  Service     API                      management (/metrics, /admin/status)\n");
    for r in running {
        let short = r.name().trim_start_matches("cityevents-");
        out.push_str(&format!("  {short:<11} {:<24} {}\n", local(r.http_addr()), local(r.management_addr())));
    }
    out.push('\n');
    if profile == Profile::Development {
        out.push_str(&format!(
            "  Data           ./data: SQLite databases (unless a service's database.url is set), {DEV_SECRETS}\n"
        ));
    }
    if let Some(mail) = mail {
        out.push_str(&format!("  Mail           {mail}\n"));
    }
    out.push_str(
        "\nFirst admin: cargo run --release -p cityevents -- auth admin create --email you@example.com\n\
         \x20            (reads the password from stdin; there are no default users)\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_give_each_service_its_port_and_the_gateway_its_upstreams() {
        let gw = defaults(services::GATEWAY.name, Profile::Production, Mode::AllInOne).unwrap();
        assert!(gw.contains(&("CITYEVENTS_GATEWAY__HTTP__PORT".into(), "8080".into())));
        assert!(
            gw.contains(&("CITYEVENTS_GATEWAY__UPSTREAMS__JOINS__BASE_URL".into(), "http://127.0.0.1:8083".into()))
        );
        let events = defaults(services::EVENTS.name, Profile::Production, Mode::AllInOne).unwrap();
        assert!(
            events.contains(&("CITYEVENTS_EVENTS__UPSTREAMS__JOINS__BASE_URL".into(), "http://127.0.0.1:8083".into())),
            "events asks joins before an unpublish: {events:?}"
        );
        let auth = defaults(services::AUTH.name, Profile::Production, Mode::Single).unwrap();
        assert!(!auth.iter().any(|(k, _)| k.contains("UPSTREAMS")), "auth calls no one: {auth:?}");
        assert!(!auth.iter().any(|(k, _)| k.ends_with("HTTP__ADDR") || k.ends_with("BUS__URL")), "{auth:?}");
        assert!(!auth.iter().any(|(k, _)| k.contains("SECRET") || k.contains("KEY")), "no secrets in production");
    }

    #[test]
    fn a_production_gateway_on_its_own_gets_no_loopback_upstreams() {
        let gw = defaults(services::GATEWAY.name, Profile::Production, Mode::Single).unwrap();
        assert!(!gw.iter().any(|(k, _)| k.contains("UPSTREAMS")), "{gw:?}");
        let events = defaults(services::EVENTS.name, Profile::Production, Mode::Single).unwrap();
        assert!(!events.iter().any(|(k, _)| k.contains("UPSTREAMS")), "{events:?}");
        let dev = defaults(services::GATEWAY.name, Profile::Test, Mode::Single).unwrap();
        assert!(dev.iter().any(|(k, _)| k.contains("UPSTREAMS")), "{dev:?}");
    }
}
