//! The flags file: its model, its validation, and the compiled form evaluations read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::FlagProblem;
use super::rules::{CompiledGates, Condition, Window};

/// One flag as written in the file (the map key is the flag's key).
///
/// ```yaml
/// new_checkout:
///   enabled: true
///   strategy: percentage
///   rules:
///     percentage: 25
///   description: The new checkout flow
///   tags: [checkout]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagDef {
    /// The kill switch: `false` turns the flag off for everyone, whatever the strategy.
    #[serde(default)]
    pub enabled: bool,
    /// How an enabled flag decides. Default `simple` (on for everyone).
    #[serde(default)]
    pub strategy: Strategy,
    /// The strategy's parameters.
    #[serde(default)]
    pub rules: Rules,
    /// What the flag is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Free-form labels (owner, area).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// How an enabled flag decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// On for everyone.
    #[default]
    Simple,
    /// On for `rules.percentage` percent of users, chosen by a stable hash of flag key and user
    /// id (the same user always gets the same answer; no user id: off).
    Percentage,
    /// On for the user ids in `rules.users`.
    User,
    /// On in the environments in `rules.environments` (the service profile unless the caller
    /// names one).
    Environment,
    /// On from `rules.start` (inclusive) until `rules.end` (exclusive), RFC 3339 times.
    Time,
}

impl Strategy {
    /// Its name in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Percentage => "percentage",
            Self::User => "user",
            Self::Environment => "environment",
            Self::Time => "time",
        }
    }
}

/// A strategy's parameters; only those of the flag's strategy are allowed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// `percentage`: 0 to 100, up to two decimals (`0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
    /// `user`: user ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// `environment`: environment names (`production`, `staging`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
    /// `time`: on from (RFC 3339, e.g. `2026-12-01T00:00:00Z` or `…+01:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// `time`: off from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Any strategy: additionally, each named attribute of the evaluation context must be one
    /// of the listed values (`plan: [pro, enterprise]`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, Vec<String>>,
    /// Any strategy: never on for these user ids, whatever else holds (checked first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_users: Vec<String>,
    /// Any strategy: additionally, the client's version ([`EvalContext::version`](super::EvalContext::version))
    /// must match this semantic-version requirement (`>=2.3, <3`); no version: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<String>,
    /// Any strategy: additionally, now must be inside one of these windows (days and hours in a
    /// time zone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
    /// Any strategy: additionally, every one of these conditions holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<Condition>,
    /// Any strategy: additionally, at least one of these conditions holds (when any are listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<Condition>,
}

impl Rules {
    /// The gates besides the deny list, as one condition (cloned: read when a flag is validated
    /// or compiled, never per evaluation).
    fn gate_condition(&self) -> Condition {
        Condition {
            attributes: self.attributes.clone(),
            versions: self.versions.clone(),
            windows: self.windows.clone(),
            all: self.all.clone(),
            any: self.any.clone(),
            ..Condition::default()
        }
    }
}

/// A flag ready to evaluate: parsed times, a user set, cached metric handles.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) def: FlagDef,
    basis_points: u32,
    users: HashSet<String>,
    start: Option<SystemTime>,
    end: Option<SystemTime>,
    gates: Option<CompiledGates>,
    pub(crate) source: super::Source,
    pub(crate) stats: Arc<super::FlagStats>,
    pub(crate) on: Option<IntCounter>,
    pub(crate) off: Option<IntCounter>,
}

/// The counters a compiled flag increments.
pub(crate) struct Handles {
    pub(crate) on: Option<IntCounter>,
    pub(crate) off: Option<IntCounter>,
    pub(crate) stats: Arc<super::FlagStats>,
}

impl Compiled {
    pub(crate) fn decide(&self, key: &str, ctx: &super::EvalContext, default_env: &str) -> bool {
        let def = &self.def;
        if !def.enabled {
            return false;
        }
        if let Some(gates) = &self.gates
            && !gates.pass(key, ctx, default_env)
        {
            return false;
        }
        match def.strategy {
            Strategy::Simple => true,
            Strategy::Percentage => ctx.user_id.as_deref().is_some_and(|u| bucket(key, u) < self.basis_points),
            Strategy::User => ctx.user_id.as_deref().is_some_and(|u| self.users.contains(u)),
            Strategy::Environment => {
                let env = ctx.environment.as_deref().unwrap_or(default_env);
                def.rules.environments.iter().any(|e| e.eq_ignore_ascii_case(env))
            }
            Strategy::Time => {
                let now = SystemTime::now();
                self.start.is_none_or(|s| now >= s) && self.end.is_none_or(|e| now < e)
            }
        }
    }
}

/// The user's bucket for a flag, 0..10000 (basis points): the first 8 bytes of
/// SHA-256(`<flag key>:<user id>`). Stable across processes, versions and machines, so every
/// replica gives a user the same answer, and independent between flags.
///
/// ```
/// let b = keel_features::bucket("new_checkout", "user-42");
/// assert!(b < 10_000);
/// assert_eq!(b, keel_features::bucket("new_checkout", "user-42"));
/// ```
pub fn bucket(flag: &str, user_id: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(flag.as_bytes());
    h.update(b":");
    h.update(user_id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % 10_000) as u32
}

/// Largest flag key: keys become metric label values.
const MAX_KEY_LEN: usize = 100;

fn check_key(key: &str) -> Result<(), FlagProblem> {
    let segments_ok = key.split('.').all(|s| !s.is_empty());
    if key.is_empty()
        || key.len() > MAX_KEY_LEN
        || !segments_ok
        || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(FlagProblem {
            path: key.to_owned(),
            message: format!(
                "a flag key is 1 to {MAX_KEY_LEN} characters of A-Z, a-z, 0-9, `_`, `-`, in segments joined by `.` (`feed.live`)"
            ),
        });
    }
    Ok(())
}

/// Validates one flag as an override is validated before it is stored or applied.
pub(crate) fn check_one(key: &str, def: &FlagDef) -> Result<(), Vec<FlagProblem>> {
    check_key(key).map_err(|p| vec![p])?;
    let mut problems = Vec::new();
    validate(key, def, &mut problems);
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

/// Parses and validates a whole file; every problem is reported, each naming its path.
pub(crate) fn parse(text: &str) -> Result<BTreeMap<String, FlagDef>, Vec<FlagProblem>> {
    let problem = |path: &str, message: String| FlagProblem { path: path.to_owned(), message };
    let raw: Option<BTreeMap<String, serde_norway::Value>> =
        serde_norway::from_str(text).map_err(|e| vec![problem("", format!("not a map of flags: {e}"))])?;
    let mut problems = Vec::new();
    let mut flags = BTreeMap::new();
    for (key, value) in raw.unwrap_or_default() {
        if let Err(p) = check_key(&key) {
            problems.push(p);
            continue;
        }
        let value = if value.is_null() { serde_norway::Value::Mapping(Default::default()) } else { value };
        match serde_path_to_error::deserialize::<_, FlagDef>(value) {
            Err(e) => {
                let at = e.path().to_string();
                let path = if at.is_empty() || at == "." { key.clone() } else { format!("{key}.{at}") };
                problems.push(problem(&path, e.inner().to_string()));
            }
            Ok(def) => {
                validate(&key, &def, &mut problems);
                flags.insert(key, def);
            }
        }
    }
    if problems.is_empty() { Ok(flags) } else { Err(problems) }
}

fn validate(key: &str, def: &FlagDef, out: &mut Vec<FlagProblem>) {
    super::rules::validate(&format!("{key}.rules"), &def.rules.deny_users, &def.rules.gate_condition(), out);
    let mut push = |field: &str, message: String| {
        out.push(FlagProblem { path: format!("{key}.rules.{field}"), message });
    };
    let (r, s) = (&def.rules, def.strategy);
    let given = [
        (r.percentage.is_some(), "percentage", Strategy::Percentage),
        (!r.users.is_empty(), "users", Strategy::User),
        (!r.environments.is_empty(), "environments", Strategy::Environment),
        (r.start.is_some(), "start", Strategy::Time),
        (r.end.is_some(), "end", Strategy::Time),
    ];
    for (set, field, owner) in given {
        if set && s != owner {
            push(field, format!("does not apply to strategy `{}`", s.as_str()));
        }
    }
    match s {
        Strategy::Simple => {}
        Strategy::Percentage => match r.percentage {
            None => push("percentage", "is required for strategy `percentage`".into()),
            Some(p) if !(0.0..=100.0).contains(&p) || p.is_nan() => {
                push("percentage", format!("must be between 0 and 100, not {p}"))
            }
            Some(_) => {}
        },
        Strategy::User if r.users.is_empty() => push("users", "needs at least one user id".into()),
        Strategy::Environment if r.environments.is_empty() => {
            push("environments", "needs at least one environment".into())
        }
        Strategy::Time => {
            let start = r.start.as_deref().map(|t| parse_time(t).map_err(|e| push("start", e)));
            let end = r.end.as_deref().map(|t| parse_time(t).map_err(|e| push("end", e)));
            match (start, end) {
                (None, None) => push("start", "strategy `time` needs `start`, `end` or both".into()),
                (Some(Ok(a)), Some(Ok(b))) if b <= a => push("end", "must be after `start`".into()),
                _ => {}
            }
        }
        Strategy::User | Strategy::Environment => {}
    }
}

/// RFC 3339 with `Z` or a numeric offset.
pub(crate) fn parse_time(text: &str) -> Result<SystemTime, String> {
    let bad = || format!("`{text}` is not an RFC 3339 time such as 2026-12-01T00:00:00Z");
    if let Ok(t) = humantime::parse_rfc3339(text) {
        return Ok(t);
    }
    // humantime reads UTC only: shift a `±HH:MM` offset by hand.
    let (base, offset) = text.split_at_checked(text.len().saturating_sub(6)).ok_or_else(bad)?;
    let sign = match offset.as_bytes().first() {
        Some(b'+') => 1i64,
        Some(b'-') => -1,
        _ => return Err(bad()),
    };
    let (h, m) = offset[1..].split_once(':').ok_or_else(bad)?;
    let (h, m): (u64, u64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    let local = humantime::parse_rfc3339(&format!("{base}Z")).map_err(|_| bad())?;
    let shift = Duration::from_secs(h * 3600 + m * 60);
    // Local time = UTC + offset, so UTC = local − offset.
    let t = if sign > 0 { local.checked_sub(shift) } else { local.checked_add(shift) };
    t.ok_or_else(bad)
}

/// Compiles validated definitions; `handles` gives each flag its counters.
pub(crate) fn compile(
    defs: BTreeMap<String, (FlagDef, super::Source)>,
    handles: impl Fn(&str) -> Handles,
) -> HashMap<String, Compiled> {
    defs.into_iter()
        .map(|(key, (def, source))| {
            let Handles { on, off, stats } = handles(&key);
            let basis_points = def.rules.percentage.map_or(0, |p| (p * 100.0).round() as u32);
            let users = def.rules.users.iter().cloned().collect();
            let start = def.rules.start.as_deref().and_then(|t| parse_time(t).ok());
            let end = def.rules.end.as_deref().and_then(|t| parse_time(t).ok());
            let gates = CompiledGates::new(&def.rules.deny_users, &def.rules.gate_condition());
            (key, Compiled { def, basis_points, users, start, end, gates, source, stats, on, off })
        })
        .collect()
}
