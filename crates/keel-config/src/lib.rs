//! Layered, validated configuration: built-in defaults < YAML file < environment variables.
//!
//! This is `keel-config`, re-exported by `keel` as `keel::config`. It depends on no other Keel
//! crate: every other one owns its configuration section and depends on this one.
//!
//! A service's configuration is a set of top-level sections (an [`Aggregate`]; Keel's is
//! `keel::app::KeelConfig`: `http`, `management`, `cors`, `log`, …) plus the service's own typed
//! section under `app`. Each section is a [`Section`]: it validates itself, production rules
//! included, and knows nothing of the others. This crate names no section.
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
//! An aggregate of one section, `http` (Keel's `KeelConfig` is the same, with more sections):
//!
//! ```
//! use keel_config::{Aggregate, Loader, NoConfig, Profile, Reader, Section, Validation};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Default, Serialize, Deserialize)]
//! #[serde(default)]
//! struct Http {
//!     port: u16,
//! }
//!
//! impl Section for Http {
//!     fn validate(&self, v: &mut Validation<'_>) {
//!         if v.profile() == Profile::Production && self.port < 1024 {
//!             v.production("port", "use a port of 1024 or more");
//!         }
//!     }
//! }
//!
//! #[derive(Debug, Clone, Serialize)]
//! struct Sections {
//!     http: Http,
//! }
//!
//! impl Aggregate for Sections {
//!     fn for_profile(_: Profile) -> Self {
//!         Self { http: Http { port: 8080 } }
//!     }
//!     fn read(&mut self, r: &mut Reader<'_>) {
//!         r.section("http", &mut self.http);
//!     }
//!     fn validate(&self, v: &mut Validation<'_>) {
//!         v.section("http", &self.http);
//!     }
//! }
//!
//! let loaded = Loader::<Sections>::new("hello", Profile::Production)
//!     .env([("HELLO__HTTP__PORT", "9000")])
//!     .load::<NoConfig>()
//!     .unwrap();
//! assert_eq!(loaded.config.keel.http.port, 9000);
//!
//! let err = Loader::<Sections>::new("hello", Profile::Production)
//!     .env([("HELLO__HTTP__PROT", "1"), ("HELLO__HTTP__PORT", "80")])
//!     .load::<NoConfig>()
//!     .unwrap_err();
//! let text = err.to_string();
//! assert!(text.contains("unknown key `http.prot`"));
//! assert!(text.contains("http.port (in env HELLO__HTTP__PORT): use a port of 1024 or more"));
//! ```

pub mod bytes;
pub mod duration;
mod interpolate;
mod reloads;
mod secret;
mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_norway::Value;

pub use reloads::{RELOAD_LOG_CAPACITY, ReloadEvent, ReloadLog};
#[doc(hidden)]
pub use secret::is_common_password;
pub use secret::{MASK, Secret, weak_secret};
use tree::{KeyPath, Tree, join};

/// The environment variable that names the config file.
pub const CONFIG_ENV: &str = "KEEL_CONFIG";
/// The environment variable that selects the profile.
pub const PROFILE_ENV: &str = "KEEL_ENV";
/// The key of the service's own section.
pub const APP_SECTION: &str = "app";

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
    /// configuration gives it returns this, so the process exits with the configuration exit
    /// code (`keel::app::exit::CONFIG`) rather than as a failed start.
    ///
    /// ```
    /// let e = keel_config::ConfigError::invalid("redis.url", "is required");
    /// assert_eq!(e.to_string(), "invalid configuration (1 problem):\n  - redis.url: is required");
    /// ```
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::single(Problem { path: path.into(), source: None, kind: ProblemKind::Invalid, message: message.into() })
    }
}

/// A configuration section: one top-level key of the file (`http`, `database`, or a service's
/// own under `app`), or a part of one (`database.connect`). It checks its own values,
/// production rules included, with paths relative to where it sits.
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
/// impl keel_config::Section for Greeter {
///     fn validate(&self, v: &mut keel_config::Validation<'_>) {
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

    /// Gives the entries of maps in this section defaults (see [`Templates::map_entries`]).
    fn templates(t: &mut Templates<'_>) {
        let _ = t;
    }
}

/// A map of named sections (`upstreams.<name>`): each entry validates itself under its name,
/// and has the section's defaults, so its secrets can be given as `<key>_file` too.
impl<T: Section> Section for BTreeMap<String, T> {
    fn validate(&self, v: &mut Validation<'_>) {
        for (name, entry) in self {
            v.section(name, entry);
        }
    }

    fn templates(t: &mut Templates<'_>) {
        t.map_entries("", &T::default());
    }
}

/// A service with no section of its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NoConfig {}

impl Section for NoConfig {}

/// The top-level sections a framework gives every service: everything in the file but `app`.
/// Keel's is `keel::app::KeelConfig`; the [`Loader`] is generic over it so that this crate
/// need not name a section.
pub trait Aggregate: Serialize + Clone + fmt::Debug + Send + Sync + 'static {
    /// The defaults for a profile.
    fn for_profile(profile: Profile) -> Self;

    /// Names each section with [`Reader::section`], in the order they are read and reported.
    fn read(&mut self, r: &mut Reader<'_>);

    /// Validates every section ([`Validation::section`]) and the rules that span sections.
    fn validate(&self, v: &mut Validation<'_>);

    /// The configuration as `config check` prints it: settings derived from others filled in.
    fn shown(&self) -> Self {
        self.clone()
    }
}

/// Reads an [`Aggregate`]'s sections out of the merged tree, one at a time so one bad section
/// does not hide the others.
pub struct Reader<'a> {
    mode: ReadMode<'a>,
}

enum ReadMode<'a> {
    /// Collects the section names and applies their templates, before secret files resolve.
    Declare { tree: &'a mut Tree, names: &'a mut Vec<&'static str> },
    /// Deserializes each section, reporting every unknown key and mistyped value.
    Parse { tree: &'a Tree, problems: &'a mut Vec<Problem>, failed: &'a mut Vec<&'static str> },
}

impl Reader<'_> {
    /// The top-level section `name`, read into `slot`; a section that does not parse keeps
    /// its defaults and its problems are reported.
    pub fn section<T: Section>(&mut self, name: &'static str, slot: &mut T) {
        match &mut self.mode {
            ReadMode::Declare { tree, names } => {
                names.push(name);
                T::templates(&mut Templates { prefix: name.to_owned(), tree });
            }
            ReadMode::Parse { tree, problems, failed } => match section(tree, name, problems) {
                Some(v) => *slot = v,
                None => failed.push(name),
            },
        }
    }
}

/// Defaults for the entries of a map, which has none of its own.
pub struct Templates<'a> {
    prefix: String,
    tree: &'a mut Tree,
}

impl Templates<'_> {
    /// Gives every entry of the map at `path` (relative to the section) the defaults of
    /// `template`, so that its `<key>_file` settings resolve like any other secret's.
    pub fn map_entries<T: Serialize>(&mut self, path: &str, template: &T) {
        let path = if path.is_empty() { self.prefix.clone() } else { join(&self.prefix, path) };
        let names: Vec<Value> = match value_at(&self.tree.root, &path) {
            Some(Value::Mapping(m)) => m.keys().cloned().collect(),
            _ => return,
        };
        let template = to_value(template);
        let Some(Value::Mapping(entries)) = value_at_mut(&mut self.tree.defaults, &path) else {
            return;
        };
        for name in names {
            entries.entry(name).or_insert_with(|| template.clone());
        }
    }

    /// Gives every `<name>_file` entry of the map at `path` (relative to the section) an empty
    /// `<name>`, so that a map of secrets (`headers: {x-api-key_file: …}`) resolves its files.
    pub fn file_entries(&mut self, path: &str) {
        let path = join(&self.prefix, path);
        let names: Vec<Value> = match value_at(&self.tree.root, &path) {
            Some(Value::Mapping(m)) => m
                .keys()
                .filter_map(|k| k.as_str().and_then(|k| k.strip_suffix("_file")).map(|b| Value::String(b.to_owned())))
                .collect(),
            _ => return,
        };
        let Some(Value::Mapping(entries)) = value_at_mut(&mut self.tree.defaults, &path) else {
            return;
        };
        for name in names {
            entries.entry(name).or_insert_with(|| Value::String(String::new()));
        }
    }
}

/// Collects validation problems for one section.
pub struct Validation<'a> {
    prefix: &'a str,
    profile: Profile,
    tree: &'a Tree,
    env: &'a dyn Fn(&str) -> Option<String>,
    problems: &'a mut Vec<Problem>,
}

impl Validation<'_> {
    /// The profile being loaded.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Reports an unacceptable value at `path` (relative to the section; empty for the section
    /// itself).
    pub fn invalid(&mut self, path: &str, message: impl Into<String>) {
        self.push(path, ProblemKind::Invalid, message.into());
    }

    /// Reports a value that production refuses.
    pub fn production(&mut self, path: &str, message: impl Into<String>) {
        self.push(path, ProblemKind::Production, message.into());
    }

    /// An environment variable of the configuration's environment (the process's, or the one
    /// given to [`Loader::env`]), for a section whose settings have variables beneath them.
    pub fn env(&self, name: &str) -> Option<String> {
        (self.env)(name)
    }

    /// Reports an unacceptable value of the environment variable `var` (not a key of the file):
    /// the problem's path is the variable's name.
    pub fn invalid_env(&mut self, var: &str, message: impl Into<String>) {
        self.push_env(var, ProblemKind::Invalid, message.into());
    }

    /// Reports a value of the environment variable `var` that production refuses.
    pub fn production_env(&mut self, var: &str, message: impl Into<String>) {
        self.push_env(var, ProblemKind::Production, message.into());
    }

    /// Validates `section`, which sits at `path` relative to this one.
    pub fn section<S: Section>(&mut self, path: &str, section: &S) {
        let prefix = self.path(path);
        section.validate(&mut Validation {
            prefix: &prefix,
            profile: self.profile,
            tree: self.tree,
            env: self.env,
            problems: &mut *self.problems,
        });
    }

    fn path(&self, path: &str) -> String {
        if path.is_empty() { self.prefix.to_owned() } else { join(self.prefix, path) }
    }

    fn push(&mut self, path: &str, kind: ProblemKind, message: String) {
        let path = self.path(path);
        let source = self.tree.source_of(&path).cloned();
        self.problems.push(Problem { path, source, kind, message });
    }

    fn push_env(&mut self, var: &str, kind: ProblemKind, message: String) {
        self.problems.push(Problem { path: var.into(), source: Some(Source::Env(var.into())), kind, message });
    }
}

/// The whole effective configuration: the framework's sections (`K`) and the service's (`C`).
#[derive(Debug, Clone, Serialize)]
pub struct Config<K, C> {
    /// The framework's sections.
    #[serde(flatten)]
    pub keel: K,
    /// The service's section.
    pub app: C,
}

/// A loaded configuration and what is known about it.
#[derive(Debug, Clone)]
pub struct Loaded<K, C> {
    /// The configuration.
    pub config: Config<K, C>,
    /// The profile it was loaded for.
    pub profile: Profile,
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
    /// Where each non-default value came from, by key path.
    pub sources: BTreeMap<String, Source>,
}

impl<K: Aggregate, C: Serialize> Loaded<K, C> {
    /// The effective configuration as YAML, every secret shown as `"***"` and settings derived
    /// from others (such as the management address) filled in.
    pub fn to_yaml(&self) -> String {
        let view = Config { keel: self.config.keel.shown(), app: &self.config.app };
        serde_norway::to_string(&view).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Loads configuration for one service whose framework sections are `K`.
#[derive(Debug, Clone)]
pub struct Loader<K> {
    service: String,
    profile: Profile,
    file: Option<PathBuf>,
    env: Vec<(String, String)>,
    defaults: Vec<(String, String)>,
    sections: PhantomData<fn() -> K>,
}

impl<K: Aggregate> Loader<K> {
    /// A loader for `service` (its name gives the env prefix: `cityevents-auth` →
    /// `CITYEVENTS_AUTH__`) with no file and no environment.
    pub fn new(service: impl Into<String>, profile: Profile) -> Self {
        Self {
            service: service.into(),
            profile,
            file: None,
            env: Vec::new(),
            defaults: Vec::new(),
            sections: PhantomData,
        }
    }

    /// Settings that override the built-in defaults but not the file or the environment, written
    /// as this service's env variables (`<SERVICE>__HTTP__PORT=8081`): what a launcher that hosts
    /// several services uses to give each its port. Variables of other services are ignored.
    ///
    /// ```
    /// use keel_config::{Aggregate, Loader, NoConfig, Profile, Reader, Section, Validation};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    /// # #[serde(default)]
    /// # struct Http { port: u16, host: String }
    /// # impl Section for Http {}
    /// # #[derive(Debug, Clone, Default, Serialize)]
    /// # struct Sections { http: Http }
    /// # impl Aggregate for Sections {
    /// #     fn for_profile(_: Profile) -> Self { Self::default() }
    /// #     fn read(&mut self, r: &mut Reader<'_>) { r.section("http", &mut self.http); }
    /// #     fn validate(&self, v: &mut Validation<'_>) { v.section("http", &self.http); }
    /// # }
    ///
    /// // `Sections` is an aggregate with an `http` section of `port` and `host`.
    /// let loaded = Loader::<Sections>::new("api", Profile::Test)
    ///     .defaults([("API__HTTP__PORT", "8081"), ("API__HTTP__HOST", "::")])
    ///     .env([("API__HTTP__PORT", "9000")])
    ///     .load::<NoConfig>()
    ///     .unwrap();
    /// assert_eq!(loaded.config.keel.http.port, 9000); // the environment wins
    /// assert_eq!(loaded.config.keel.http.host, "::");
    /// ```
    pub fn defaults<N: Into<String>, V: Into<String>>(mut self, vars: impl IntoIterator<Item = (N, V)>) -> Self {
        self.defaults.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Reads this file.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Defaults beneath those given to [`Loader::defaults`] (a service's own, under a launcher's).
    #[doc(hidden)]
    pub fn beneath_defaults(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut below: Vec<(String, String)> = vars.into_iter().collect();
        below.append(&mut self.defaults);
        self.defaults = below;
        self
    }

    /// Uses these environment variables (for `${VAR}` and `<SERVICE>__…` overrides).
    pub fn env<N: Into<String>, V: Into<String>>(mut self, vars: impl IntoIterator<Item = (N, V)>) -> Self {
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
    /// Each section validates itself ([`Section::validate`]); in `production` the loader also
    /// refuses a secret written inline in the YAML file (use env, `${VAR}` or `<key>_file`) and
    /// a known weak or default secret value (see [`weak_secret`]).
    pub fn load<C: Section>(&self) -> Result<Loaded<K, C>, ConfigError> {
        let mut problems = Vec::new();
        let defaults = K::for_profile(self.profile);
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
        let mut keel = defaults.clone();
        let mut names = Vec::new();
        keel.read(&mut Reader { mode: ReadMode::Declare { tree: &mut tree, names: &mut names } });
        C::templates(&mut Templates { prefix: APP_SECTION.to_owned(), tree: &mut tree });
        tree.resolve_files(&mut raw);
        for (path, message) in raw {
            let source = tree.source_of(&path).cloned();
            problems.push(Problem { path, source, kind: ProblemKind::SecretFile, message });
        }

        let mut failed: Vec<&str> = Vec::new();
        if let Value::Mapping(m) = &tree.root {
            for key in m.keys() {
                let name = key.as_str().unwrap_or_default();
                if name != APP_SECTION && !names.contains(&name) {
                    let path = name.to_owned();
                    let source = tree.source_of(&path).cloned();
                    problems.push(Problem { path, source, kind: ProblemKind::UnknownKey, message: String::new() });
                }
            }
        }
        keel.read(&mut Reader { mode: ReadMode::Parse { tree: &tree, problems: &mut problems, failed: &mut failed } });
        let app: C = section(&tree, APP_SECTION, &mut problems).unwrap_or_else(|| {
            failed.push(APP_SECTION);
            C::default()
        });

        let mut found = Vec::new();
        let mut v = Validation { prefix: "", profile: self.profile, tree: &tree, env: &lookup, problems: &mut found };
        keel.validate(&mut v);
        v.section(APP_SECTION, &app);
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
            // A value the file took from the environment through `${VAR}` may be a secret put
            // under the wrong key: a problem names the key and the variable's place, never the
            // value (a message quoting it would put it in the start-up log). Every problem is
            // masked, not only those whose source says so: keys written with dots can make two
            // settings share a path, and a message may quote a part of a value.
            for p in &mut problems {
                redact(&mut p.message, &tree.taken, true);
                let about_one = matches!(p.source, Some(Source::File { interpolated: true, .. }));
                redact(&mut p.message, &tree.holding, about_one);
            }
            Err(ConfigError { problems })
        }
    }
}

/// The env prefix of a service's variables, without the trailing `__`:
/// `cityevents-auth` → `CITYEVENTS_AUTH`.
///
/// ```
/// assert_eq!(keel_config::env_prefix("cityevents-auth"), "CITYEVENTS_AUTH");
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

/// Production refuses secrets whose value is a well-known default or a common password.
fn weak_secrets(config: &impl Serialize, tree: &Tree, out: &mut Vec<Problem>) {
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

/// Replaces in `message` each of `texts` and each of its words with [`MASK`] where quoted;
/// `loose`: also where not quoted, those of four characters or more.
fn redact(message: &mut String, texts: &[String], loose: bool) {
    // Longest first so none is left half-shown; a short word only where quoted, so that
    // masking "a" does not mangle the message's own words.
    let mut parts: Vec<&str> =
        texts.iter().flat_map(|t| std::iter::once(t.trim()).chain(t.split_whitespace())).collect();
    parts.retain(|t| !t.is_empty());
    parts.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    parts.dedup();
    for t in parts {
        for quoted in [format!("\"{t}\""), format!("`{t}`")] {
            *message = message.replace(&quoted, &format!("`{MASK}`"));
        }
        if loose && t.len() >= 4 {
            *message = message.replace(t, MASK);
        }
    }
}

fn value_at<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |node, key| node.get(key))
}

/// Production refuses secrets written literally into the YAML file.
fn inline_secrets(config: &impl Serialize, tree: &Tree, prefix: &str, out: &mut Vec<Problem>) {
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
