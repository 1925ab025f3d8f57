//! Layered, validated configuration: built-in defaults < YAML file < environment variables.
//!
//! A service's configuration is Keel's sections ([`KeelConfig`]: `http`, `management`, `cors`,
//! `log`, `shutdown`, `telemetry`, `health`) plus the service's own typed section under `app`.
//!
//! * **File** — `--config PATH` or `KEEL_CONFIG`. String values may use `${VAR}` and
//!   `${VAR:-default}`; `$${` is a literal `${`.
//! * **Environment** — `<SERVICE>__SECTION__KEY`, e.g. `HELLO__HTTP__PORT=9000` or
//!   `HELLO__CORS__ALLOWED_ORIGINS=https://a.example,https://b.example` (lists are comma-separated).
//! * **Secret files** — any setting `x` can be given as `x_file: /run/secrets/x`.
//! * **Profile** — `KEEL_ENV` = `development` (default), `production` or `test`.
//!
//! Loading never stops at the first problem: unknown keys (named with the file or variable they
//! came from), type errors (named by key path), unset variables, unreadable secret files,
//! invalid values and production rules all come back together in one [`ConfigError`].
//!
//! # Example
//!
//! ```
//! use keel::config::{Loader, NoConfig, Profile};
//!
//! let loaded = Loader::new("hello", Profile::Production)
//!     .env([("HELLO__CORS__ALLOWED_ORIGINS", "https://app.example"), ("HELLO__HTTP__PORT", "9000")])
//!     .load::<NoConfig>()
//!     .unwrap();
//! assert_eq!(loaded.config.keel.http.port, 9000);
//!
//! let err = Loader::new("hello", Profile::Production)
//!     .env([("HELLO__HTTP__PROT", "1"), ("HELLO__LOG__LEVEL", "trace")])
//!     .load::<NoConfig>()
//!     .unwrap_err();
//! let text = err.to_string();
//! assert!(text.contains("unknown key `http.prot`"));
//! assert!(text.contains("cors.allowed_origins"));
//! assert!(text.contains("log.level"));
//! ```

pub mod bytes;
pub mod duration;
mod interpolate;
mod reloads;
pub(crate) mod secret;
mod sections;
mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_norway::Value;

pub use reloads::{RELOAD_LOG_CAPACITY, ReloadEvent, ReloadLog};
pub use secret::{MASK, Secret, weak_secret};
pub use sections::{
    BusBackend, BusConfig, ConnectConfig, CorsConfig, DatabaseConfig, EncryptionConfig, FeaturesConfig, HealthConfig,
    HstsConfig, Http2Config, HttpConfig, JwtAlgorithm, JwtConfig, JwtKeyConfig, KeelConfig, LogConfig, LogFormat,
    ManagementConfig, OtlpConfig, OtlpProtocol, OutboxConfig, PasswordsConfig, PoolConfig, RedisConfig, SecurityConfig,
    ShutdownConfig, TelemetryConfig, UpstreamConfig,
};
use tree::{KeyPath, Tree, join};

/// The environment variable that names the config file.
pub const CONFIG_ENV: &str = "KEEL_CONFIG";
/// The environment variable that selects the profile.
pub const PROFILE_ENV: &str = "KEEL_ENV";
/// The key of the service's own section.
pub const APP_SECTION: &str = "app";

const KEEL_SECTIONS: &[&str] = &[
    "http",
    "management",
    "cors",
    "log",
    "shutdown",
    "telemetry",
    "health",
    "database",
    "redis",
    "rate_limits",
    "upstreams",
    "bus",
    "outbox",
    "features",
    "security",
];

/// Which rules and defaults apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// A developer's machine: pretty logs, no drain delay, relaxed rules.
    #[default]
    Development,
    /// Production: JSON logs, a drain delay, and strict rules (see [`Loader::load`]).
    Production,
    /// Automated tests: JSON logs, development rules.
    Test,
}

impl Profile {
    /// Reads `KEEL_ENV`'s value; unset means development.
    pub fn parse(value: Option<&str>) -> Result<Self, ConfigError> {
        match value.map(str::trim) {
            None | Some("") | Some("development") | Some("dev") => Ok(Self::Development),
            Some("production") | Some("prod") => Ok(Self::Production),
            Some("test") => Ok(Self::Test),
            Some(other) => Err(ConfigError::single(Problem {
                path: PROFILE_ENV.into(),
                source: Some(Source::Env(PROFILE_ENV.into())),
                kind: ProblemKind::Invalid,
                message: format!("`{other}` is not a profile: use development, production or test"),
            })),
        }
    }

    /// The profile's name as `KEEL_ENV` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Production => "production",
            Self::Test => "test",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The config file; `interpolated` when the value came through `${VAR}`.
    File {
        /// The file.
        path: PathBuf,
        /// The value came through `${VAR}` interpolation.
        interpolated: bool,
    },
    /// An environment variable.
    Env(String),
    /// A `<key>_file` secret file.
    SecretFile(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { path, interpolated: false } => write!(f, "{}", path.display()),
            Self::File { path, interpolated: true } => write!(f, "{} (interpolated)", path.display()),
            Self::Env(name) => write!(f, "env {name}"),
            Self::SecretFile(path) => write!(f, "secret file {}", path.display()),
        }
    }
}

/// The class of a configuration problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The file could not be read or parsed.
    File,
    /// A key no section knows.
    UnknownKey,
    /// A value of the wrong type.
    Type,
    /// `${VAR}` could not be resolved.
    Interpolation,
    /// A `<key>_file` could not be read, or conflicts with `<key>`.
    SecretFile,
    /// A value of the right type that is not acceptable.
    Invalid,
    /// Allowed elsewhere, refused in production.
    Production,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path (`http.port`); empty for the file as a whole.
    pub path: String,
    /// Where the offending value came from, when known.
    pub source: Option<Source>,
    /// The class of problem.
    pub kind: ProblemKind,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ProblemKind::UnknownKey => write!(f, "unknown key `{}`", self.path)?,
            _ if self.path.is_empty() => {}
            _ => write!(f, "{}", self.path)?,
        }
        if let Some(src) = &self.source {
            let space = if self.path.is_empty() && self.kind != ProblemKind::UnknownKey { "" } else { " " };
            write!(f, "{space}(in {src})")?;
        }
        if self.kind == ProblemKind::UnknownKey {
            return if self.message.is_empty() { Ok(()) } else { write!(f, ": {}", self.message) };
        }
        if self.path.is_empty() && self.source.is_none() {
            write!(f, "{}", self.message)
        } else {
            write!(f, ": {}", self.message)
        }
    }
}

/// Every problem found while loading, never just the first.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n{}", .problems.len(), if .problems.len() == 1 { "" } else { "s" }, list(.problems))]
pub struct ConfigError {
    /// The problems, in the order found.
    pub problems: Vec<Problem>,
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}

impl ConfigError {
    fn single(p: Problem) -> Self {
        Self { problems: vec![p] }
    }

    /// One invalid value at `path`, found after loading: a set-up step that refuses what the
    /// configuration gives it returns this, so the process exits with
    /// [`exit::CONFIG`](crate::app::exit::CONFIG) rather than as a failed start.
    ///
    /// ```
    /// let e = keel::config::ConfigError::invalid("redis.url", "is required");
    /// assert_eq!(e.to_string(), "invalid configuration (1 problem):\n  - redis.url: is required");
    /// ```
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::single(Problem { path: path.into(), source: None, kind: ProblemKind::Invalid, message: message.into() })
    }
}

/// A service's own configuration section (the `app` key).
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Default, Serialize, Deserialize)]
/// #[serde(default)]
/// struct Greeter {
///     /// What `/hello` answers.
///     greeting: String,
/// }
///
/// impl keel::config::Section for Greeter {
///     fn validate(&self, v: &mut keel::config::Validation<'_>) {
///         if self.greeting.len() > 64 {
///             v.invalid("greeting", "at most 64 characters");
///         }
///     }
/// }
/// ```
pub trait Section: Serialize + DeserializeOwned + Default + Clone + fmt::Debug + Send + Sync + 'static {
    /// Adds a problem for every invalid value; paths are relative to the section.
    fn validate(&self, v: &mut Validation<'_>) {
        let _ = v;
    }
}

/// A service with no section of its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NoConfig {}

impl Section for NoConfig {}

/// Collects validation problems for one section.
pub struct Validation<'a> {
    prefix: &'a str,
    profile: Profile,
    tree: &'a Tree,
    problems: &'a mut Vec<Problem>,
}

impl Validation<'_> {
    /// The profile being loaded.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Reports an unacceptable value at `path` (relative to the section).
    pub fn invalid(&mut self, path: &str, message: impl Into<String>) {
        self.push(path, ProblemKind::Invalid, message.into());
    }

    /// Reports a value that production refuses.
    pub fn production(&mut self, path: &str, message: impl Into<String>) {
        self.push(path, ProblemKind::Production, message.into());
    }

    fn push(&mut self, path: &str, kind: ProblemKind, message: String) {
        let path = join(self.prefix, path);
        let source = self.tree.source_of(&path).cloned();
        self.problems.push(Problem { path, source, kind, message });
    }
}

/// The whole effective configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config<C> {
    /// Keel's sections.
    #[serde(flatten)]
    pub keel: KeelConfig,
    /// The service's section.
    pub app: C,
}

/// A loaded configuration and what is known about it.
#[derive(Debug, Clone)]
pub struct Loaded<C> {
    /// The configuration.
    pub config: Config<C>,
    /// The profile it was loaded for.
    pub profile: Profile,
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
    /// Where each non-default value came from, by key path.
    pub sources: BTreeMap<String, Source>,
}

impl<C: Serialize> Loaded<C> {
    /// The effective configuration as YAML, every secret shown as `"***"` and the management
    /// address resolved.
    pub fn to_yaml(&self) -> String {
        let mut cfg = self.config.keel.clone();
        cfg.management.addr = cfg.management_addr();
        let view = Config { keel: cfg, app: &self.config.app };
        serde_norway::to_string(&view).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Loads configuration for one service.
#[derive(Debug, Clone)]
pub struct Loader {
    service: String,
    profile: Profile,
    file: Option<PathBuf>,
    env: Vec<(String, String)>,
    defaults: Vec<(String, String)>,
}

impl Loader {
    /// A loader for `service` (its name gives the env prefix: `cityevents-auth` →
    /// `CITYEVENTS_AUTH__`) with no file and no environment.
    pub fn new(service: impl Into<String>, profile: Profile) -> Self {
        Self { service: service.into(), profile, file: None, env: Vec::new(), defaults: Vec::new() }
    }

    /// Settings that override the built-in defaults but not the file or the environment, written
    /// as this service's env variables (`<SERVICE>__HTTP__PORT=8081`): what a launcher that hosts
    /// several services uses to give each its port. Variables of other services are ignored.
    ///
    /// ```
    /// use keel::config::{Loader, NoConfig, Profile};
    ///
    /// let loaded = Loader::new("api", Profile::Test)
    ///     .defaults([("API__HTTP__PORT", "8081"), ("API__LOG__LEVEL", "debug")])
    ///     .env([("API__HTTP__PORT", "9000")])
    ///     .load::<NoConfig>()
    ///     .unwrap();
    /// assert_eq!(loaded.config.keel.http.port, 9000); // the environment wins
    /// assert_eq!(loaded.config.keel.log.level, "debug");
    /// ```
    pub fn defaults<K: Into<String>, V: Into<String>>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self {
        self.defaults.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Reads this file.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Defaults beneath those given to [`Loader::defaults`] (a service's own, under a launcher's).
    pub(crate) fn beneath_defaults(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut below: Vec<(String, String)> = vars.into_iter().collect();
        below.append(&mut self.defaults);
        self.defaults = below;
        self
    }

    /// Uses these environment variables (for `${VAR}` and `<SERVICE>__…` overrides).
    pub fn env<K: Into<String>, V: Into<String>>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self {
        self.env.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Uses the process environment.
    pub fn process_env(self) -> Self {
        self.env(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))))
    }

    /// The prefix of this service's variables, without the trailing `__`.
    pub fn env_prefix(&self) -> String {
        env_prefix(&self.service)
    }

    /// Loads, validates and returns the configuration, or every problem found.
    ///
    /// In `production` it also refuses: an empty CORS allowlist or one with `*`; a secret written
    /// inline in the YAML file (use env, `${VAR}` or `<key>_file`); a known weak or default
    /// secret value (see [`weak_secret`]); a `trace` log level.
    pub fn load<C: Section>(&self) -> Result<Loaded<C>, ConfigError> {
        let mut problems = Vec::new();
        let defaults = KeelConfig::for_profile(self.profile);
        let mut default_tree = to_value(&defaults);
        if let Value::Mapping(m) = &mut default_tree {
            m.insert(Value::String(APP_SECTION.into()), to_value(&C::default()));
        }
        let mut tree = Tree::new(default_tree);
        let lookup = |name: &str| self.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let mut raw = Vec::new();
        tree.merge_env(&self.env_prefix(), self.defaults.iter().map(|(k, v)| (k.as_str(), v.as_str())));

        if let Some(file) = &self.file {
            match std::fs::read_to_string(file) {
                Err(e) => problems.push(file_problem(file, format!("cannot read: {e}"))),
                Ok(text) => match serde_norway::from_str::<Value>(&text) {
                    Err(e) => problems.push(file_problem(file, format!("not valid YAML: {e}"))),
                    Ok(value) => tree.merge_file(file, value, &lookup, &mut raw),
                },
            }
            for (path, message) in raw.drain(..) {
                let source = Some(Source::File { path: file.clone(), interpolated: false });
                problems.push(Problem { path, source, kind: ProblemKind::Interpolation, message });
            }
        }
        tree.merge_env(&self.env_prefix(), self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        jwt_key_templates(&mut tree);
        otlp_header_templates(&mut tree);
        tree.resolve_files(&mut raw);
        for (path, message) in raw {
            let source = tree.source_of(&path).cloned();
            problems.push(Problem { path, source, kind: ProblemKind::SecretFile, message });
        }

        // Deserialize section by section so one bad section does not hide the others.
        let mut failed: Vec<&str> = Vec::new();
        if let Value::Mapping(m) = &tree.root {
            for key in m.keys() {
                let name = key.as_str().unwrap_or_default();
                if name != APP_SECTION && !KEEL_SECTIONS.contains(&name) {
                    let path = name.to_owned();
                    let source = tree.source_of(&path).cloned();
                    problems.push(Problem { path, source, kind: ProblemKind::UnknownKey, message: String::new() });
                }
            }
        }
        let mut keel = defaults.clone();
        macro_rules! section {
            ($field:ident) => {
                match section(&tree, stringify!($field), &mut problems) {
                    Some(v) => keel.$field = v,
                    None => failed.push(stringify!($field)),
                }
            };
        }
        section!(http);
        section!(management);
        section!(cors);
        section!(log);
        section!(shutdown);
        section!(telemetry);
        section!(health);
        section!(database);
        section!(redis);
        section!(rate_limits);
        section!(upstreams);
        section!(bus);
        section!(outbox);
        section!(features);
        section!(security);
        let app: C = section(&tree, APP_SECTION, &mut problems).unwrap_or_else(|| {
            failed.push(APP_SECTION);
            C::default()
        });

        let mut found = Vec::new();
        validate_keel(&keel, self.profile, &lookup, &tree, &mut found);
        app.validate(&mut Validation { prefix: APP_SECTION, profile: self.profile, tree: &tree, problems: &mut found });
        let config = Config { keel, app };
        if self.profile == Profile::Production {
            inline_secrets(&config, &tree, &self.env_prefix(), &mut found);
            weak_secrets(&config, &tree, &mut found);
        }
        // Checks of a section that did not parse would only repeat its defaults.
        found.retain(|p| !failed.iter().any(|s| p.path == *s || p.path.starts_with(&format!("{s}."))));
        problems.extend(found);

        if problems.is_empty() {
            Ok(Loaded { config, profile: self.profile, file: self.file.clone(), sources: tree.sources })
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// The env prefix of a service's variables, without the trailing `__`:
/// `cityevents-auth` → `CITYEVENTS_AUTH`.
///
/// ```
/// assert_eq!(keel::config::env_prefix("cityevents-auth"), "CITYEVENTS_AUTH");
/// ```
pub fn env_prefix(service: &str) -> String {
    service.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_norway::to_value(v).unwrap_or(Value::Null)
}

fn file_problem(file: &Path, message: String) -> Problem {
    Problem {
        path: String::new(),
        source: Some(Source::File { path: file.to_path_buf(), interpolated: false }),
        kind: ProblemKind::File,
        message,
    }
}

/// Deserializes one top-level section, reporting every unknown key and every mistyped key.
fn section<T: DeserializeOwned>(tree: &Tree, name: &str, problems: &mut Vec<Problem>) -> Option<T> {
    let value = tree.root.get(name).cloned().unwrap_or(Value::Null);
    let mut value = if value.is_null() { Value::Mapping(Default::default()) } else { value };
    let mut unknown = Vec::new();
    let mut result = deserialize_tracking::<T>(value.clone(), &mut unknown);
    // Environment text for a setting of unknown type (an optional one) is kept as a string;
    // where the target asked for a number or bool and the text reads as one, use that.
    for _ in 0..32 {
        let Err((path, message)) = &result else { break };
        if !message.starts_with("invalid type: string") {
            break;
        }
        let Some(slot) = value_at_mut(&mut value, path) else { break };
        let Some(text) = slot.as_str() else { break };
        let typed = if message.contains("expected a sequence") {
            // A list given as text (env): comma-separated.
            Value::Sequence(
                text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_owned())).collect(),
            )
        } else {
            let Some(v) = tree::scalar(text) else { break };
            v
        };
        *slot = typed;
        unknown.clear();
        result = deserialize_tracking::<T>(value.clone(), &mut unknown);
    }
    let mut bad = Vec::new();
    if let Err(first) = &result {
        // Deserialization stopped at the first bad value, so keys after it were never seen. Try
        // each user key alone on top of the defaults to find every bad value and unknown key.
        if let (Value::Mapping(user), Some(Value::Mapping(defaults))) = (&value, tree.defaults.get(name)) {
            for (k, v) in user {
                let mut candidate = defaults.clone();
                candidate.insert(k.clone(), v.clone());
                if let Err(e) = deserialize_tracking::<T>(Value::Mapping(candidate), &mut unknown) {
                    bad.push(e);
                }
            }
        }
        if bad.is_empty() {
            bad.push(first.clone());
        }
    }
    unknown.sort();
    unknown.dedup();
    for path in unknown {
        let path = join(name, &path);
        let source = tree.source_of(&path).cloned();
        problems.push(Problem { path, source, kind: ProblemKind::UnknownKey, message: String::new() });
    }
    for (path, message) in bad {
        let path = if path.is_empty() || path == "." { name.to_owned() } else { join(name, &path) };
        let source = tree.source_of(&path).cloned();
        problems.push(Problem { path, source, kind: ProblemKind::Type, message });
    }
    result.ok()
}

fn value_at_mut<'a>(root: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.').try_fold(root, |node, key| node.get_mut(key))
}

fn deserialize_tracking<T: DeserializeOwned>(value: Value, unknown: &mut Vec<String>) -> Result<T, (String, String)> {
    let mut track = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
    let de = serde_ignored::Deserializer::new(value, &mut track);
    serde_path_to_error::deserialize(de).map_err(|e| (e.path().to_string(), e.inner().to_string()))
}

fn validate_keel(
    k: &KeelConfig,
    profile: Profile,
    lookup: &dyn Fn(&str) -> Option<String>,
    tree: &Tree,
    out: &mut Vec<Problem>,
) {
    let prod = profile == Profile::Production;
    let mut v = Validation { prefix: "", profile, tree, problems: out };

    if k.http.request_timeout.is_zero() {
        v.invalid("http.request_timeout", "must be more than 0s");
    }
    if k.http.body_limit == 0 {
        v.invalid("http.body_limit", "must be more than 0 bytes");
    }
    if k.http.max_in_flight == 0 {
        v.invalid("http.max_in_flight", "must be at least 1");
    }
    if k.http.max_connections == 0 {
        v.invalid("http.max_connections", "must be at least 1");
    }
    if k.http.max_connections_per_ip == 0 {
        v.invalid("http.max_connections_per_ip", "must be at least 1");
    }
    if k.http.header_read_timeout.is_zero() {
        v.invalid("http.header_read_timeout", "must be more than 0s");
    }
    let h2 = &k.http.http2;
    for (key, d) in [
        ("http.http2.idle_timeout", h2.idle_timeout),
        ("http.http2.keep_alive_interval", h2.keep_alive_interval),
        ("http.http2.keep_alive_timeout", h2.keep_alive_timeout),
    ] {
        if d.is_zero() {
            v.invalid(key, "must be more than 0s");
        }
    }
    if h2.max_concurrent_streams == 0 {
        v.invalid("http.http2.max_concurrent_streams", "must be at least 1");
    }
    if !(1 << 10..=MAX_HEADER_LIST_SIZE).contains(&h2.max_header_list_size) {
        v.invalid("http.http2.max_header_list_size", "must be between 1KiB and 16MiB");
    }
    match k.management_addr() {
        None => v.invalid("management.addr", "http.port + 1000 is past 65535: set management.addr"),
        Some(m) if m.port() != 0 && m.port() == k.http.port && m.ip() != k.http.addr => v.invalid(
            "management.addr",
            "uses the public port on another address; use the same address to share one listener",
        ),
        Some(_) => {}
    }

    let mut wildcard = false;
    for (i, origin) in k.cors.allowed_origins.iter().enumerate() {
        if origin == "*" {
            wildcard = true;
        } else if let Err(e) = crate::http::cors::normalize_origin(origin) {
            v.invalid(&format!("cors.allowed_origins[{i}]"), e);
        }
    }
    if wildcard && k.cors.allow_credentials {
        v.invalid("cors.allowed_origins", "`*` cannot be combined with allow_credentials: list the origins");
    }
    for (i, m) in k.cors.allowed_methods.iter().enumerate() {
        if http::Method::from_bytes(m.as_bytes()).is_err() {
            v.invalid(&format!("cors.allowed_methods[{i}]"), format!("`{m}` is not an HTTP method"));
        }
    }
    for (field, list) in
        [("cors.allowed_headers", &k.cors.allowed_headers), ("cors.exposed_headers", &k.cors.exposed_headers)]
    {
        for (i, h) in list.iter().enumerate() {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                v.invalid(&format!("{field}[{i}]"), format!("`{h}` is not a header name"));
            }
        }
    }
    if prod && k.cors.allowed_origins.is_empty() {
        v.production("cors.allowed_origins", "production needs the list of browser origins allowed to call the API");
    }
    if prod && wildcard {
        v.production("cors.allowed_origins", "`*` lets any site call the API: list the origins in production");
    }

    let rust_log = lookup("RUST_LOG").filter(|s| !s.trim().is_empty());
    if let Err(e) = crate::telemetry::parse_filter(&k.log.level) {
        v.invalid("log.level", e);
    }
    if prod && crate::telemetry::mentions_trace(&k.log.level) {
        v.production("log.level", "`trace` logs too much (and may log secrets) for production");
    }
    if let Some(rl) = &rust_log {
        let problem = match crate::telemetry::parse_filter(rl) {
            Err(e) => Some((ProblemKind::Invalid, e)),
            Ok(()) if prod && crate::telemetry::mentions_trace(rl) => {
                Some((ProblemKind::Production, "`trace` logs too much (and may log secrets) for production".into()))
            }
            Ok(()) => None,
        };
        if let Some((kind, message)) = problem {
            v.problems.push(Problem {
                path: "RUST_LOG".into(),
                source: Some(Source::Env("RUST_LOG".into())),
                kind,
                message,
            });
        }
    }

    if k.shutdown.timeout.is_zero() {
        v.invalid("shutdown.timeout", "must be more than 0s");
    }
    // Keel's telemetry keys and the `OTEL_*` variables beneath them.
    for p in crate::telemetry::otlp::problems(&k.telemetry, lookup) {
        match p.origin {
            crate::telemetry::otlp::Origin::Key(path) => v.invalid(&path, p.message),
            crate::telemetry::otlp::Origin::Env(var) => v.problems.push(Problem {
                path: var.into(),
                source: Some(Source::Env(var.into())),
                kind: ProblemKind::Invalid,
                message: p.message,
            }),
        }
    }
    for (name, policy) in &k.rate_limits {
        for (field, message) in policy.problems() {
            v.invalid(&format!("rate_limits.{name}.{field}"), message);
        }
        if prod {
            for (field, message) in
                policy.production_problems(crate::resilience::rate_limit::OnBackendError::FailClosed)
            {
                v.production(&format!("rate_limits.{name}.{field}"), message);
            }
        }
    }
    for (name, u) in &k.upstreams {
        let base = u.base_url.parse::<http::Uri>().ok();
        let plain = base.as_ref().is_some_and(|b| b.query().is_none() && !u.base_url.contains('#'));
        if !plain || !base.is_some_and(|b| matches!(b.scheme_str(), Some("http" | "https")) && b.host().is_some()) {
            v.invalid(
                &format!("upstreams.{name}.base_url"),
                "must be an http(s) URL without query or fragment, such as http://events:8082",
            );
        }
        let ratio = u.retry.budget.ratio;
        if !ratio.is_finite() || ratio < 0.0 {
            v.invalid(&format!("upstreams.{name}.retry.budget.ratio"), "must be a number of at least 0");
        }
        for (field, d) in [("connect_timeout", u.connect_timeout), ("request_timeout", u.request_timeout)] {
            if d.is_zero() {
                v.invalid(&format!("upstreams.{name}.{field}"), "must be more than 0s: no call may wait forever");
            }
        }
        if u.max_response_bytes == 0 {
            v.invalid(&format!("upstreams.{name}.max_response_bytes"), "must be more than 0");
        }
        if u.retry.max_attempts == 0 {
            v.invalid(&format!("upstreams.{name}.retry.max_attempts"), "must be at least 1 (1 = no retries)");
        }
        for (field, message) in u.breaker.problems() {
            v.invalid(&format!("upstreams.{name}.breaker.{field}"), message);
        }
        if u.bulkhead.max_concurrent == 0 {
            v.invalid(&format!("upstreams.{name}.bulkhead.max_concurrent"), "must be at least 1");
        }
        if let Some(p) = &u.health_path
            && !p.starts_with('/')
        {
            v.invalid(&format!("upstreams.{name}.health_path"), "must start with /");
        }
    }
    validate_security(&k.security, prod, &mut v);
    validate_database(&k.database, prod, &mut v);
    validate_redis(&k.redis, &mut v);
    validate_bus(&k.bus, &k.outbox, &mut v);
    if k.health.interval.is_zero() {
        v.invalid("health.interval", "must be more than 0s");
    }
    if k.health.ttl <= k.health.interval {
        v.invalid("health.ttl", "must be longer than health.interval, or every result would be stale");
    }
    if k.features.poll_interval.is_zero() {
        v.invalid("features.poll_interval", "must be more than 0s");
    }
    // A bad flags file is a configuration error: refuse it before any port is bound, and let
    // `config check` show every problem in it.
    if let Some(file) = &k.features.file
        && let Err(e) = crate::features::check_file(file)
    {
        v.invalid("features.file", e.to_string());
    }
}

fn validate_database(d: &DatabaseConfig, prod: bool, v: &mut Validation<'_>) {
    if let Some(url) = &d.url {
        let u = url.expose();
        let known = ["postgres://", "postgresql://", "mysql://", "mariadb://", "sqlite:"];
        if !known.iter().any(|p| u.starts_with(p)) {
            v.invalid("database.url", "must start with postgres://, mysql://, mariadb:// or sqlite:");
        }
    }
    if prod && d.auto_migrate {
        v.production(
            "database.auto_migrate",
            "production never migrates on start-up: run `<service> migrate` as a separate step",
        );
    }
    let p = &d.pool;
    if p.max_connections == 0 {
        v.invalid("database.pool.max_connections", "must be at least 1");
    }
    if p.min_connections > p.max_connections {
        v.invalid("database.pool.min_connections", "must not exceed database.pool.max_connections");
    }
    if p.acquire_timeout.is_zero() {
        v.invalid("database.pool.acquire_timeout", "must be more than 0s, or a lost database hangs requests");
    }
    if p.idle_timeout.is_zero() {
        v.invalid("database.pool.idle_timeout", "must be more than 0s");
    }
    if p.max_lifetime.is_zero() {
        v.invalid("database.pool.max_lifetime", "must be more than 0s");
    }
    if d.check_timeout.is_zero() {
        v.invalid("database.check_timeout", "must be more than 0s");
    }
    validate_connect(&d.connect, "database.connect", v);
}

fn validate_redis(r: &RedisConfig, v: &mut Validation<'_>) {
    if let Some(url) = &r.url {
        let u = url.expose();
        if u.starts_with("rediss://") {
            v.invalid(
                "redis.url",
                "rediss:// (TLS) is not supported by this build: terminate TLS in front, or use redis://",
            );
        } else if !["redis://", "unix://", "redis+unix://"].iter().any(|p| u.starts_with(p)) {
            v.invalid("redis.url", "must start with redis:// or unix://");
        }
    }
    if r.command_timeout.is_zero() {
        v.invalid("redis.command_timeout", "must be more than 0s");
    }
    validate_connect(&r.connect, "redis.connect", v);
}

/// The name in an in-process bus URL, `memory://<name>` (1–64 of `[A-Za-z0-9._-]`).
pub(crate) fn memory_bus_name(url: &str) -> Option<&str> {
    let name = url.strip_prefix("memory://")?;
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(name)
}

/// The largest `outbox.batch_size`.
const MAX_OUTBOX_BATCH: u32 = 10_000;

/// The largest `http.http2.max_header_list_size`: far beyond any real request's headers.
const MAX_HEADER_LIST_SIZE: usize = 16 << 20;

fn validate_bus(b: &BusConfig, o: &OutboxConfig, v: &mut Validation<'_>) {
    // Whether a broker is needed at all is known only once the service asks for the bus
    // (`Setup::bus`), which is where a missing URL or `in_process` in production is refused.
    match (b.backend, b.url.as_ref().map(Secret::expose)) {
        (BusBackend::Nats, Some(u)) if !(u.starts_with("nats://") || u.starts_with("tls://")) => {
            v.invalid("bus.url", "must start with nats:// for the nats backend")
        }
        (BusBackend::Rabbitmq, Some(u)) if !(u.starts_with("amqp://") || u.starts_with("amqps://")) => {
            v.invalid("bus.url", "must start with amqp:// or amqps:// for the rabbitmq backend")
        }
        (BusBackend::InProcess, Some(u)) if memory_bus_name(u).is_none() => v.invalid(
            "bus.url",
            "must be memory://<name> for the in_process backend (services with the same name share one bus)",
        ),
        _ => {}
    }
    if let Some(ns) = &b.namespace {
        let ok = !ns.is_empty()
            && ns.len() <= 50
            && ns
                .split('.')
                .all(|w| !w.is_empty() && w.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'));
        if !ok {
            v.invalid("bus.namespace", "must be dot-separated words of [A-Za-z0-9_-], at most 50 characters");
        }
    }
    if b.publish_timeout.is_zero() {
        v.invalid("bus.publish_timeout", "must be more than 0s");
    }
    if b.capacity == 0 {
        v.invalid("bus.capacity", "must be at least 1");
    }
    validate_connect(&b.connect, "bus.connect", v);
    if o.batch_size == 0 {
        v.invalid("outbox.batch_size", "must be at least 1");
    } else if o.batch_size > MAX_OUTBOX_BATCH {
        // One statement binds a parameter per claimed row; SQLite takes at most 32 766.
        v.invalid("outbox.batch_size", format!("must be at most {MAX_OUTBOX_BATCH}"));
    }
    if o.max_attempts == 0 {
        v.invalid("outbox.max_attempts", "must be at least 1");
    }
    if o.max_in_flight == 0 {
        v.invalid("outbox.max_in_flight", "must be at least 1");
    }
    if o.lease.is_zero() || o.poll_interval.is_zero() || o.backoff_min.is_zero() {
        v.invalid("outbox", "lease, poll_interval and backoff_min must be more than 0s");
    }
    if o.backoff_max < o.backoff_min {
        v.invalid("outbox.backoff_max", "must be at least outbox.backoff_min");
    }
}

fn validate_connect(c: &ConnectConfig, prefix: &str, v: &mut Validation<'_>) {
    if c.initial_delay.is_zero() {
        v.invalid(&format!("{prefix}.initial_delay"), "must be more than 0s");
    }
    if c.max_delay < c.initial_delay {
        v.invalid(&format!("{prefix}.max_delay"), "must be at least initial_delay");
    }
    if c.attempt_timeout.is_zero() {
        v.invalid(&format!("{prefix}.attempt_timeout"), "must be more than 0s");
    }
}

/// `security.jwt.keys` is a map, so its entries have no defaults; give each entry the key
/// template so `secret_file` / `private_key_file` resolve like any other secret.
fn jwt_key_templates(tree: &mut Tree) {
    let kids: Vec<Value> = match tree.root.get("security").and_then(|s| s.get("jwt")).and_then(|j| j.get("keys")) {
        Some(Value::Mapping(m)) => m.keys().cloned().collect(),
        _ => return,
    };
    let template = to_value(&JwtKeyConfig::default());
    let Some(Value::Mapping(keys)) =
        tree.defaults.get_mut("security").and_then(|s| s.get_mut("jwt")).and_then(|j| j.get_mut("keys"))
    else {
        return;
    };
    for kid in kids {
        keys.entry(kid).or_insert_with(|| template.clone());
    }
}

/// `telemetry.otlp.headers` is a map too: give `<name>_file` entries their `<name>` so header
/// values resolve from secret files.
fn otlp_header_templates(tree: &mut Tree) {
    let names: Vec<Value> = match tree.root.get("telemetry").and_then(|t| t.get("otlp")).and_then(|o| o.get("headers"))
    {
        Some(Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().and_then(|k| k.strip_suffix("_file")).map(|b| Value::String(b.to_owned())))
            .collect(),
        _ => return,
    };
    let Some(Value::Mapping(headers)) =
        tree.defaults.get_mut("telemetry").and_then(|t| t.get_mut("otlp")).and_then(|o| o.get_mut("headers"))
    else {
        return;
    };
    for name in names {
        headers.entry(name).or_insert_with(|| Value::String(String::new()));
    }
}

fn validate_security(s: &SecurityConfig, prod: bool, v: &mut Validation<'_>) {
    let j = &s.jwt;
    if j.leeway > std::time::Duration::from_secs(300) {
        v.invalid("security.jwt.leeway", "at most 5m: a large leeway keeps expired tokens alive");
    }
    if j.ttl.is_zero() {
        v.invalid("security.jwt.ttl", "must be more than 0s");
    }
    if let Some(kid) = &j.signing_key
        && !j.keys.contains_key(kid)
    {
        v.invalid("security.jwt.signing_key", format!("`{kid}` is not one of security.jwt.keys"));
    }
    for (kid, key) in &j.keys {
        let at = |f: &str| format!("security.jwt.keys.{kid}.{f}");
        match key.algorithm {
            None => v.invalid(&at("algorithm"), "required: HS256, RS256 or EdDSA"),
            Some(JwtAlgorithm::HS256) => match &key.secret {
                None => v.invalid(&at("secret"), "HS256 needs a secret (env or secret_file)"),
                Some(secret) if secret.expose().len() < 32 => {
                    v.invalid(&at("secret"), "HS256 needs at least 32 bytes (256 bits) of secret")
                }
                Some(_) => {}
            },
            Some(_) => {
                if key.public_key.is_none() {
                    v.invalid(&at("public_key"), "RS256 and EdDSA need the public key (PEM) to verify");
                }
                if key.secret.is_some() {
                    v.invalid(&at("secret"), "only HS256 keys have a shared secret");
                }
            }
        }
        if j.signing_key.as_deref() == Some(kid.as_str())
            && key.algorithm.is_some_and(|a| a != JwtAlgorithm::HS256)
            && key.private_key.is_none()
        {
            v.invalid(&at("private_key"), "the signing key needs its private key (PEM)");
        }
    }
    let p = &s.passwords;
    if p.min_length == 0 || p.max_length < p.min_length || p.max_length > 4096 {
        v.invalid("security.passwords.max_length", "must be at least min_length and at most 4096");
    }
    if prod && p.min_length < 12 {
        v.production("security.passwords.min_length", "production needs passwords of at least 12 characters");
    }
    if p.iterations == 0 || p.parallelism == 0 || p.memory_kib < 8 * p.parallelism {
        v.invalid(
            "security.passwords",
            "iterations and parallelism must be at least 1 and memory_kib at least 8 × parallelism",
        );
    }
    if p.queue_timeout.is_zero() {
        v.invalid("security.passwords.queue_timeout", "must be more than 0s");
    }
    let e = &s.encryption;
    if let Some(active) = &e.active_key
        && !e.data_keys.contains_key(active)
    {
        v.invalid("security.encryption.active_key", format!("`{active}` is not one of security.encryption.data_keys"));
    }
    if !e.data_keys.is_empty() && e.master_key.is_none() {
        v.invalid("security.encryption.master_key", "data keys need the master key that wraps them");
    }
    for (name, key) in [("master_key", &e.master_key), ("blind_index_key", &e.blind_index_key)] {
        if let Some(k) = key
            && decoded_len(k.expose()).is_none_or(|n| n < 32)
        {
            v.invalid(&format!("security.encryption.{name}"), "must be at least 32 random bytes, base64-encoded");
        }
    }
}

/// Length of standard base64 (with or without padding), without pulling a base64 crate into
/// builds that do not use `security`.
fn decoded_len(b64: &str) -> Option<usize> {
    let t = b64.trim().trim_end_matches('=');
    if t.is_empty() || !t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/') {
        return None;
    }
    Some(t.len() * 3 / 4)
}

/// Production refuses secrets whose value is a well-known default or a common password.
fn weak_secrets<C: Serialize>(config: &Config<C>, tree: &Tree, out: &mut Vec<Problem>) {
    let mut paths = Vec::new();
    secret_paths(&to_value(config), "", &mut paths);
    for path in paths {
        let Some(raw) = value_at(&tree.root, &path).and_then(Value::as_str) else { continue };
        if let Some(why) = weak_secret(raw) {
            out.push(Problem {
                source: tree.source_of(&path).cloned(),
                kind: ProblemKind::Production,
                message: format!("{why}: production needs a strong, unique secret"),
                path,
            });
        }
    }
}

fn value_at<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |node, key| node.get(key))
}

/// Production refuses secrets written literally into the YAML file.
fn inline_secrets<C: Serialize>(config: &Config<C>, tree: &Tree, prefix: &str, out: &mut Vec<Problem>) {
    let mut paths = Vec::new();
    secret_paths(&to_value(config), "", &mut paths);
    for path in paths {
        if let Some(source @ Source::File { interpolated: false, .. }) = tree.sources.get(&path) {
            out.push(Problem {
                message: format!(
                    "secrets may not be written in the file in production: use ${{VAR}}, `{path}_file`, or the variable {prefix}__{}",
                    path.replace('.', "__").to_ascii_uppercase()
                ),
                source: Some(source.clone()),
                kind: ProblemKind::Production,
                path,
            });
        }
    }
}

/// Secrets serialize as [`MASK`]; that is how their paths are found.
fn secret_paths(value: &Value, prefix: &str, out: &mut Vec<KeyPath>) {
    match value {
        Value::String(s) if s == MASK => out.push(prefix.to_owned()),
        Value::Mapping(m) => {
            for (k, v) in m {
                if let Some(k) = k.as_str() {
                    secret_paths(v, &join(prefix, k), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_prefix_is_upper_snake() {
        assert_eq!(env_prefix("cityevents-auth"), "CITYEVENTS_AUTH");
        assert_eq!(env_prefix("hello"), "HELLO");
    }

    #[test]
    fn profile_parsing() {
        assert_eq!(Profile::parse(None).unwrap(), Profile::Development);
        assert_eq!(Profile::parse(Some("production")).unwrap(), Profile::Production);
        assert!(Profile::parse(Some("staging")).is_err());
    }
}
