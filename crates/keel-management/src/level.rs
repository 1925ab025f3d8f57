//! The log level at run time: `GET`/`PUT /admin/log-level`, and the console's form.
//!
//! A change may carry an expiry (`expires_in`, 1 s to 24 h): when it passes, the filter goes
//! back to the one in effect before the first of the changes that expire, so a `debug` turned
//! on at 3 a.m. cannot be forgotten. A change without an expiry cancels a pending revert. The
//! filter is the process's (every service of an all-in-one shares it), and so is its expiry.
//! `trace` is refused under the production profile. Each change and revert is a reload on the
//! status page.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use keel_config::{Profile, ReloadLog};
use keel_http::problem::Problem;
use keel_telemetry as telemetry;

use crate::routes::Admin;

/// The longest expiry accepted.
pub(crate) const MAX_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// A pending revert.
struct Expiry {
    /// The filter to go back to.
    previous: String,
    at: SystemTime,
    /// Which change set it: a later change replaces it.
    generation: u64,
}

fn expiry() -> &'static Mutex<Option<Expiry>> {
    static EXPIRY: Mutex<Option<Expiry>> = Mutex::new(None);
    &EXPIRY
}

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The filter in effect and its pending revert.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LevelState {
    pub(crate) level: String,
    /// The filter it goes back to, when the change expires.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) reverts_to: Option<String>,
    /// When (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) reverts_at: Option<String>,
}

pub(crate) fn state() -> LevelState {
    let level = telemetry::log_level().unwrap_or_default();
    let e = expiry().lock().unwrap_or_else(PoisonError::into_inner);
    LevelState {
        level,
        reverts_to: e.as_ref().map(|e| e.previous.clone()),
        reverts_at: e.as_ref().map(|e| humantime::format_rfc3339_seconds(e.at).to_string()),
    }
}

/// Why a change was refused: a message for the `level` or `expires_in` field.
#[derive(Debug)]
pub(crate) enum Refused {
    Level(String),
    Expiry(String),
}

impl Refused {
    fn problem(&self) -> Problem {
        match self {
            Self::Level(why) => Problem::bad_request(why.clone()).field("level", why.clone()),
            Self::Expiry(why) => Problem::bad_request(why.clone()).field("expires_in", why.clone()),
        }
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            Self::Level(why) | Self::Expiry(why) => why,
        }
    }
}

/// Parses an expiry such as `15m` (empty: none).
pub(crate) fn parse_expiry(text: &str) -> Result<Option<Duration>, Refused> {
    let text = text.trim();
    if text.is_empty() || text == "never" {
        return Ok(None);
    }
    let d = humantime::parse_duration(text)
        .map_err(|e| Refused::Expiry(format!("`{text}` is not a duration such as 15m: {e}")))?;
    if d < Duration::from_secs(1) || d > MAX_EXPIRY {
        return Err(Refused::Expiry("an expiry is between 1s and 24h".into()));
    }
    Ok(Some(d))
}

/// Sets the filter to `level`, reverting after `expires_in` when given; records the change (or
/// the refusal) in `reloads`.
pub(crate) fn apply(
    profile: Profile,
    reloads: &ReloadLog,
    level: &str,
    expires_in: Option<Duration>,
) -> Result<LevelState, Refused> {
    let level = level.trim();
    if profile == Profile::Production && telemetry::mentions_trace(level) {
        reloads.record("log level", false, format!("`{level}` refused: trace is not allowed in production"));
        return Err(Refused::Level("`trace` is refused in production: it logs too much and may log secrets".into()));
    }
    // Held across the change, so a revert firing now cannot interleave with it; the filter
    // before is read under it too, or a revert in between would be taken for it.
    let mut pending = expiry().lock().unwrap_or_else(PoisonError::into_inner);
    let before = telemetry::log_level().unwrap_or_default();
    if let Err(e) = telemetry::set_log_level(level) {
        reloads.record("log level", false, format!("`{level}`: {e}"));
        return Err(Refused::Level(format!("not a valid level or filter: {e}")));
    }
    let generation = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    match expires_in {
        None => {
            *pending = None;
            reloads.record("log level", true, level.to_owned());
        }
        Some(d) => {
            // A change on top of one that expires goes back to where the first one started.
            let previous = pending.take().map_or(before, |e| e.previous);
            reloads.record(
                "log level",
                true,
                format!("{level} for {} (then {previous})", humantime::format_duration(d)),
            );
            *pending = Some(Expiry { previous, at: SystemTime::now() + d, generation });
            let reloads = reloads.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                revert(generation, &reloads);
            });
        }
    }
    drop(pending);
    Ok(state())
}

/// Goes back to the earlier filter if the change `generation` set is still the one pending.
fn revert(generation: u64, reloads: &ReloadLog) {
    let mut pending = expiry().lock().unwrap_or_else(PoisonError::into_inner);
    let Some(e) = pending.take_if(|e| e.generation == generation) else { return };
    match telemetry::set_log_level(&e.previous) {
        Ok(()) => {
            tracing::info!(level = %e.previous, "log level change expired; reverted");
            reloads.record("log level", true, format!("{} (the change expired)", e.previous));
        }
        Err(why) => {
            tracing::error!(level = %e.previous, error = %why, "log level change expired but could not be reverted");
            reloads.record("log level", false, format!("revert to `{}` failed: {why}", e.previous));
        }
    }
}

#[derive(Deserialize)]
struct Put {
    level: String,
    #[serde(default)]
    expires_in: Option<String>,
}

pub(crate) async fn get_level() -> Response {
    axum::Json(state()).into_response()
}

/// `PUT /admin/log-level`: `{"level": "debug", "expires_in": "15m"}`, or the filter as plain text.
pub(crate) async fn put_level(State(admin): State<Admin>, body: axum::body::Bytes) -> Response {
    let text = String::from_utf8_lossy(&body);
    let (level, expires) = match serde_json::from_str::<Put>(&text) {
        Ok(p) => (p.level, p.expires_in.unwrap_or_default()),
        Err(_) => (text.trim().to_owned(), String::new()),
    };
    let sources = admin.sources();
    let result = parse_expiry(&expires).and_then(|d| apply(sources.profile, &sources.reloads, &level, d));
    match result {
        Ok(state) => {
            let details = serde_json::json!({"after": state, "via": "api"});
            crate::console::record(&admin, crate::flags::ACTOR, "log_level.set", "log-level", details).await;
            axum::Json(state).into_response()
        }
        Err(r) => r.problem().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_are_bounded() {
        assert_eq!(parse_expiry("").ok(), Some(None));
        assert_eq!(parse_expiry("never").ok(), Some(None));
        assert_eq!(parse_expiry(" 15m ").ok(), Some(Some(Duration::from_secs(900))));
        assert_eq!(parse_expiry("24h").ok(), Some(Some(MAX_EXPIRY)));
        for bad in ["0s", "500ms", "25h", "soon", "-1m"] {
            assert!(matches!(parse_expiry(bad), Err(Refused::Expiry(_))), "{bad}");
        }
    }
}
