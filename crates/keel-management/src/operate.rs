//! The console's operations page, `GET /admin/console`: what an on-call engineer changes on one
//! instance of a service, each a form with a reason and a ticked confirmation, checked and
//! recorded like every console change ([`crate::console`]):
//!
//! | Form | Path | Effect | Audit action |
//! |---|---|---|---|
//! | Drain / undrain | `POST /admin/console/instance` (`action` = `drain` or `undrain`) | readiness answers down (`drained: <reason>`) until undrained; liveness and serving are unchanged | `instance.drain`, `instance.undrain` |
//! | Log level | `POST /admin/console/log-level` (`level`, `expires_in`) | the process's log filter, reverted when the expiry passes ([`crate::level`]) | `log_level.set` |
//! | Run now | `POST /admin/console/workers/{name}` | a run of the periodic worker outside its schedule | `worker.run` |
//! | Pause / resume | `POST /admin/console/consumers/{topic}/{group}` (`action` = `pause` or `resume`) | the consumer takes no new message until resumed; readiness degraded, not down | `consumer.pause`, `consumer.resume` |
//! | Rotate data key | `POST /admin/console/data-keys` | a new field-encryption data key, active once every instance knows it; values move to it in the background | `data_keys.rotate` |
//! | Dead letters | `POST /admin/console/dead-letters/{topic}` (`action` = `replay` or `discard` with `id`, `replay-all`, `purge`) | replays to the group that gave up, or deletes | `dead_letters.replay`, `dead_letters.discard`, `dead_letters.purge` |
//!
//! The page lists up to [`LETTERS`] dead letters per topic, each with its reason, attempts and
//! data (cut at [`MAX_DATA`](crate::ops::MAX_DATA) bytes); a broker that does not answer within
//! [`BROKER_TIMEOUT`] is named on the page instead. A change to dead letters runs to its end
//! (the bus bounds each broker call): cut off, a replay could leave a letter both replayed and
//! still dead.
//!
//! A change acts on the instance whose listener the browser is on: the page names it. After a
//! change the browser is sent back to the page (`?done=…`), which says what was done.

use askama::Template;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;

use keel_health::{Kind, Report};
use keel_workers::{RunNowError, WorkerStatus};

use crate::console::{self, Signed};
use crate::level::{self, LevelState};
use crate::ops::{ConsumerOps, Letter};
use crate::routes::Admin;

#[derive(Template)]
#[template(path = "admin/console.html")]
struct ConsolePage<'a> {
    stylesheet: &'a str,
    service: &'a str,
    instance: String,
    csrf: Option<String>,
    audit: bool,
    notice: Option<String>,
    error: Option<String>,
    readiness: Report,
    drained: Option<String>,
    level: LevelState,
    workers: Vec<WorkerStatus>,
    journal: Vec<crate::console::JournalEntry>,
    consumers: Vec<ConsumerRow>,
    topics: Vec<TopicLetters>,
    keys: Option<crate::ops::KeysView>,
}

struct ConsumerRow {
    topic: String,
    group: String,
    paused: Option<String>,
}

struct TopicLetters {
    topic: String,
    letters: Vec<Letter>,
    error: Option<String>,
}

/// Dead letters listed per topic.
pub(crate) const LETTERS: usize = 20;
/// The longest the page or an action waits for the broker.
pub(crate) const BROKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads from the broker for the page, within [`BROKER_TIMEOUT`] (changes are never cut off).
async fn broker<T>(f: crate::ops::OpsFuture<'_, T>) -> Result<T, String> {
    tokio::time::timeout(BROKER_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(format!("the broker did not answer within {} s", BROKER_TIMEOUT.as_secs())))
}

impl ConsolePage<'_> {
    fn ready(&self) -> bool {
        self.readiness.is_ok()
    }

    fn when(&self, w: &WorkerStatus) -> String {
        w.last_run_finished.clone().unwrap_or_else(|| "never".into())
    }

    /// `text` as one path segment of a form's action.
    fn segment(&self, text: &str) -> String {
        segment(text)
    }

    fn outcome(&self, w: &WorkerStatus) -> String {
        w.last_outcome.map_or_else(|| "–".into(), |o| o.as_str().to_owned())
    }
}

/// `text` percent-encoded as one path segment (`/`, `?`, `#`, `%` and the like escaped).
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PageQuery {
    done: Option<String>,
}

/// What `?done=` says, from the codes the actions redirect with (never echoed as given).
fn notice(done: &str) -> Option<String> {
    Some(match done {
        "drain" => "Drained: readiness now answers down; traffic moves to the other replicas.".into(),
        "undrain" => "Undrained: readiness follows the checks again.".into(),
        "level" => "Log level changed.".into(),
        _ => {
            let (what, rest) = done.split_once(':')?;
            if rest.len() > 200 || !rest.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c)) {
                return None;
            }
            match what {
                "run" => format!("Run of {rest} requested: it starts as soon as the worker is free."),
                "pause" => format!("Paused {rest}: it takes no new message until resumed."),
                "resume" => format!("Resumed {rest}."),
                "replay" => format!("Replayed dead letter {rest} to the group that gave up on it."),
                "discard" => format!("Discarded dead letter {rest}."),
                "rotate" => format!("Data key {rest} made: it becomes active once every instance knows it."),
                "replayall" | "purge" => {
                    let (n, topic) = rest.split_once(':')?;
                    let n: usize = n.parse().ok()?;
                    let verb = if what == "purge" { "Purged" } else { "Replayed" };
                    format!("{verb} {n} dead letter{} of {topic}.", if n == 1 { "" } else { "s" })
                }
                _ => return None,
            }
        }
    })
}

/// `GET /admin/console`.
pub(crate) async fn page(State(admin): State<Admin>, headers: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    let notice = q.done.as_deref().and_then(notice);
    render(&admin, &headers, StatusCode::OK, notice, None).await
}

/// The consumers' topics, each once, in the order the service registered them.
fn topics(consumers: &[Arc<dyn ConsumerOps>]) -> Vec<&Arc<dyn ConsumerOps>> {
    let mut seen = std::collections::HashSet::new();
    consumers.iter().filter(|c| seen.insert(c.topic().to_owned())).collect()
}

async fn render(
    admin: &Admin,
    headers: &HeaderMap,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let sources = admin.sources();
    let csrf = console::page_csrf(admin, headers);
    let instance = sources.listeners.get().map_or_else(|| "starting".to_owned(), |b| b.management.to_string());
    let page = ConsolePage {
        stylesheet: crate::status::STYLESHEET,
        service: &sources.identity.name,
        instance,
        csrf,
        audit: admin.audit.is_some(),
        notice,
        error,
        readiness: sources.health.report(Kind::Readiness),
        drained: sources.health.drained(),
        level: level::state(),
        workers: sources.workers.statuses(),
        journal: admin.journal.recent(20),
        consumers: admin
            .consumers
            .iter()
            .map(|c| ConsumerRow { topic: c.topic().to_owned(), group: c.group().to_owned(), paused: c.paused() })
            .collect(),
        topics: futures_util::future::join_all(topics(&admin.consumers).into_iter().map(|c| async move {
            let (letters, error) = match broker(c.dead_letters(LETTERS)).await {
                Ok(l) => (l, None),
                Err(e) => (Vec::new(), Some(e)),
            };
            TopicLetters { topic: c.topic().to_owned(), letters, error }
        }))
        .await,
        keys: admin.data_keys.as_ref().map(|k| k.view()),
    };
    crate::routes::page(status, page.render())
}

async fn refused(admin: &Admin, headers: &HeaderMap, r: console::Refusal) -> Response {
    match r {
        console::Refusal::Expired => {
            render(admin, headers, StatusCode::FORBIDDEN, None, Some(console::EXPIRED.into())).await
        }
        console::Refusal::Invalid(why) => {
            render(admin, headers, StatusCode::UNPROCESSABLE_ENTITY, None, Some(why.into())).await
        }
        other => other.respond(|_, _| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
    }
}

async fn failed(admin: &Admin, headers: &HeaderMap, status: StatusCode, why: String) -> Response {
    render(admin, headers, status, None, Some(why)).await
}

fn done(code: &str) -> Response {
    // Worker names come from code, but a Location header must never carry what a path gave.
    let code: String = code.chars().filter(|c| c.is_ascii_alphanumeric() || "_-.:".contains(*c)).collect();
    Redirect::to(&format!("/admin/console?done={code}")).into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct InstanceForm {
    #[serde(flatten)]
    signed: Signed,
    #[serde(default)]
    action: String,
}

/// `POST /admin/console/instance`: drain or undrain this instance.
pub(crate) async fn instance(
    State(admin): State<Admin>,
    headers: HeaderMap,
    form: axum::extract::Form<InstanceForm>,
) -> Response {
    let op = match console::operator(&admin, &headers, &form.signed) {
        Ok(op) => op,
        Err(r) => return refused(&admin, &headers, r).await,
    };
    let health = &admin.sources().health;
    let before = health.drained();
    let (why, action) = match form.action.as_str() {
        "drain" => (Some(op.reason.clone()), "instance.drain"),
        "undrain" => (None, "instance.undrain"),
        _ => return failed(&admin, &headers, StatusCode::UNPROCESSABLE_ENTITY, "unknown action".into()).await,
    };
    health.set_drained(why.clone());
    let details = json!({"before": {"drained": before}, "after": {"drained": why}, "reason": op.reason});
    console::record(&admin, &op.who, action, &target(&admin), details).await;
    done(&form.action)
}

/// The audit target of an instance-wide change: the management address names the instance.
fn target(admin: &Admin) -> String {
    admin.sources().listeners.get().map_or_else(|| "instance".to_owned(), |b| format!("instance:{}", b.management))
}

#[derive(Debug, Deserialize)]
pub(crate) struct LevelForm {
    #[serde(flatten)]
    signed: Signed,
    #[serde(default)]
    level: String,
    #[serde(default)]
    expires_in: String,
}

/// `POST /admin/console/log-level`.
pub(crate) async fn log_level(
    State(admin): State<Admin>,
    headers: HeaderMap,
    form: axum::extract::Form<LevelForm>,
) -> Response {
    let op = match console::operator(&admin, &headers, &form.signed) {
        Ok(op) => op,
        Err(r) => return refused(&admin, &headers, r).await,
    };
    let before = level::state();
    let sources = admin.sources();
    let result = level::parse_expiry(&form.expires_in)
        .and_then(|d| level::apply(sources.profile, &sources.reloads, &form.level, d));
    match result {
        Ok(after) => {
            let details = json!({"before": before, "after": after, "reason": op.reason});
            console::record(&admin, &op.who, "log_level.set", "log-level", details).await;
            done("level")
        }
        Err(r) => {
            failed(&admin, &headers, StatusCode::UNPROCESSABLE_ENTITY, format!("Log level: {}", r.message())).await
        }
    }
}

/// `POST /admin/console/workers/{name}`: a run now.
pub(crate) async fn run_worker(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: HeaderMap,
    form: axum::extract::Form<Signed>,
) -> Response {
    let op = match console::operator(&admin, &headers, &form) {
        Ok(op) => op,
        Err(r) => return refused(&admin, &headers, r).await,
    };
    match admin.sources().workers.run_now(&name) {
        Ok(()) => {
            console::record(&admin, &op.who, "worker.run", &format!("worker:{name}"), json!({"reason": op.reason}))
                .await;
            done(&format!("run:{name}"))
        }
        Err(e) => {
            let status = match e {
                RunNowError::Unknown(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            failed(&admin, &headers, status, format!("Nothing started: {e}.")).await
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ConsumerForm {
    #[serde(flatten)]
    signed: Signed,
    #[serde(default)]
    action: String,
}

/// `POST /admin/console/consumers/{topic}/{group}`: pause or resume.
pub(crate) async fn consumer(
    State(admin): State<Admin>,
    Path((topic, group)): Path<(String, String)>,
    headers: HeaderMap,
    form: axum::extract::Form<ConsumerForm>,
) -> Response {
    let op = match console::operator(&admin, &headers, &form.signed) {
        Ok(op) => op,
        Err(r) => return refused(&admin, &headers, r).await,
    };
    let Some(c) = admin.consumers.iter().find(|c| c.topic() == topic && c.group() == group) else {
        return failed(&admin, &headers, StatusCode::NOT_FOUND, format!("No consumer of {topic} in group {group}."))
            .await;
    };
    let before = c.paused();
    let action = match form.action.as_str() {
        "pause" => {
            c.pause(&op.reason);
            "consumer.pause"
        }
        "resume" => {
            c.resume();
            "consumer.resume"
        }
        _ => return failed(&admin, &headers, StatusCode::UNPROCESSABLE_ENTITY, "unknown action".into()).await,
    };
    let details = json!({"before": {"paused": before}, "after": {"paused": c.paused()}, "reason": op.reason});
    console::record(&admin, &op.who, action, &format!("consumer:{topic}:{group}"), details).await;
    done(&format!("{}:{topic}:{group}", form.action))
}

#[derive(Debug, Deserialize)]
pub(crate) struct LettersForm {
    #[serde(flatten)]
    signed: Signed,
    #[serde(default)]
    action: String,
    #[serde(default)]
    id: String,
}

/// `POST /admin/console/dead-letters/{topic}`: replay or discard one, replay all, purge.
pub(crate) async fn dead_letters(
    State(admin): State<Admin>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    form: axum::extract::Form<LettersForm>,
) -> Response {
    let op = match console::operator(&admin, &headers, &form.signed) {
        Ok(op) => op,
        Err(r) => return refused(&admin, &headers, r).await,
    };
    let Some(c) = admin.consumers.iter().find(|c| c.topic() == topic) else {
        return failed(&admin, &headers, StatusCode::NOT_FOUND, format!("This service consumes no topic {topic}."))
            .await;
    };
    let id = form.id.trim();
    let one = || (!id.is_empty() && id.len() <= 200).then_some(id);
    let (result, action, code) = match (form.action.as_str(), one()) {
        // Run to their end, never cut off by a timeout: a replay cut between its publish and its
        // delete would leave a letter both replayed and still dead. The bus's own timeouts
        // bound each broker call.
        ("replay", Some(id)) => (c.replay(Some(id)).await, "dead_letters.replay", "replay"),
        ("discard", Some(id)) => (c.discard(id).await, "dead_letters.discard", "discard"),
        ("replay-all", _) => (c.replay(None).await, "dead_letters.replay", "replayall"),
        ("purge", _) => (c.purge().await, "dead_letters.purge", "purge"),
        ("replay" | "discard", None) => {
            return failed(
                &admin,
                &headers,
                StatusCode::UNPROCESSABLE_ENTITY,
                "Name the dead letter's event id.".into(),
            )
            .await;
        }
        _ => return failed(&admin, &headers, StatusCode::UNPROCESSABLE_ENTITY, "unknown action".into()).await,
    };
    match result {
        Ok(0) if one().is_some() && matches!(form.action.as_str(), "replay" | "discard") => {
            failed(&admin, &headers, StatusCode::NOT_FOUND, format!("No dead letter {id} in {topic}: already handled?"))
                .await
        }
        Ok(n) => {
            let id = one().filter(|_| matches!(form.action.as_str(), "replay" | "discard"));
            let details = json!({"id": id, "count": n, "reason": op.reason});
            console::record(&admin, &op.who, action, &format!("dead-letters:{topic}"), details).await;
            let what = match id {
                Some(id) => format!("{code}:{id}"),
                None => format!("{code}:{n}:{topic}"),
            };
            done(&what)
        }
        Err(e) => {
            tracing::warn!(error = %e, %topic, "dead-letter action failed");
            failed(
                &admin,
                &headers,
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{topic}: {e} (a replay of several stops at the letter that failed)"),
            )
            .await
        }
    }
}

/// `POST /admin/console/data-keys`: a new data key now.
pub(crate) async fn rotate_data_key(
    State(admin): State<Admin>,
    headers: HeaderMap,
    form: axum::extract::Form<Signed>,
) -> Response {
    let op = match console::operator(&admin, &headers, &form) {
        Ok(op) => op,
        Err(r) => return refused(&admin, &headers, r).await,
    };
    let Some(keys) = admin.data_keys.clone() else {
        return failed(&admin, &headers, StatusCode::NOT_FOUND, "This service keeps no data keys.".into()).await;
    };
    let before = keys.view().active;
    // Never cut off: a key made after a timeout would be made all the same.
    match keys.rotate().await {
        Ok(kid) => {
            let details = json!({"before": {"active": before}, "after": {"made": kid}, "reason": op.reason});
            console::record(&admin, &op.who, "data_keys.rotate", "data-keys", details).await;
            done(&format!("rotate:{kid}"))
        }
        Err(e) => failed(&admin, &headers, StatusCode::SERVICE_UNAVAILABLE, format!("No key made: {e}.")).await,
    }
}
