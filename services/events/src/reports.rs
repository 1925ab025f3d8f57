//! Reports to the moderators (`app.reports`): a member reports an event or an account with a
//! reason; moderators see the reported targets in one queue, the most reported first, and
//! resolve a target's open reports together, after acting through the events' or accounts' own
//! routes (unpublish, cancel, ban, remove a picture).
//!
//! | route | does |
//! |---|---|
//! | `POST /api/v1/reports` `{kind, target_id, reason, details}` (signed in) | 201 the report; 409 `already_reported` (the caller's own report on it is open), `own_content`, `enough_reports` (the target has `app.reports.max_open_per_target` open); 429 `too_many_reports` past `app.reports.per_reporter_per_hour` |
//! | `GET /api/v1/moderation/reports` (moderator) | the queue: targets with open reports, their latest ten, the event's context |
//! | `POST /api/v1/moderation/reports/resolve` `{kind, target_id, outcome, note}` (moderator; `dismissed`, `unpublished`, `canceled`, `banned`, `picture_removed`) | closes the target's open reports: `moderation.recorded` (the audit log) and a `report.resolved` per reporter (the notifier tells them), in the same transaction; 404 `no_open_reports` |

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cityevents_api::reports::{
    EventContext, Kind, MAX_DETAILS, MAX_NOTE, NewReport, Outcome, Queue, QueueItem, QueuedReport, Reason, Report,
    Resolve, Resolved,
};
use cityevents_common::caller::Caller;
use cityevents_common::catalogue::{MODERATION_TOPIC, ModerationRecorded, ReportResolved};
use cityevents_common::time::{from_micros, now, to_micros};
use cityevents_common::validate;
use keel::config::{Section, Validation};
use keel::data::{DataError, Db};
use keel::http::Problem;
use keel::http::extract::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::AppState;
use crate::model::conflict;
use sql::V;

/// The targets one queue answer lists at most.
const QUEUE_TARGETS: u32 = 50;
/// The reports of one target the queue shows (the newest).
const QUEUE_REPORTS: u32 = 10;

/// `app.reports`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsConfig {
    /// Reports one member may send in an hour; past it 429 `too_many_reports`. Default `10`,
    /// between `1` and `1000`.
    pub per_reporter_per_hour: u32,
    /// Open reports one target gathers at most; past it 409 `enough_reports` (the moderators
    /// have it in their queue already). Default `20`, between `1` and `10000`.
    pub max_open_per_target: u32,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self { per_reporter_per_hour: 10, max_open_per_target: 20 }
    }
}

impl Section for ReportsConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if !(1..=1000).contains(&self.per_reporter_per_hour) {
            v.invalid("per_reporter_per_hour", "must be between 1 and 1000");
        }
        if !(1..=10_000).contains(&self.max_open_per_target) {
            v.invalid("max_open_per_target", "must be between 1 and 10000");
        }
    }
}

fn forbidden() -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail("this needs the role `moderator` or `admin`")
}

/// Trimmed, bounded text free of control characters but tab and newline (the API's `TEXT`);
/// `None` when empty.
fn text(value: Option<&str>, field: &str, max: usize) -> Result<Option<String>, Problem> {
    let v = validate::optional_text(field, value.unwrap_or_default(), max)?;
    Ok((!v.is_empty()).then_some(v))
}

/// `POST /api/v1/reports`.
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    Json(b): Json<NewReport>,
) -> Result<impl IntoResponse, Problem> {
    let details = text(b.details.as_deref(), "details", MAX_DETAILS)?;
    if b.reason == Reason::Other && details.is_none() {
        return Err(validate::invalid("details", "is required when the reason is `other`"));
    }
    match b.kind {
        Kind::Event => {
            let event = crate::store::get(&st.db, b.target_id).await?;
            let event = event.filter(|e| e.visible_to(Some(&caller))).ok_or_else(Problem::not_found)?;
            if event.organizer_id == caller.id {
                return Err(conflict("own_content", "this is your own event"));
            }
        }
        Kind::User if b.target_id == caller.id => return Err(conflict("own_content", "this is your own account")),
        Kind::User => {}
    }
    let cfg = &st.reports;
    let at = to_micros(now());
    let db = &st.db;
    let mut tx = db.begin_write().await?;
    let hour_ago = at - 3_600_000_000;
    let reporter = caller.id.to_string();
    let sent =
        sql::count(db, &mut tx, "reporter_id = $1 AND created_at > $2", &[V::Text(&reporter), V::Micros(hour_ago)])
            .await?;
    if sent >= i64::from(cfg.per_reporter_per_hour) {
        return Err(Problem::new(StatusCode::TOO_MANY_REQUESTS, "too-many-reports", "Too many reports")
            .code("too_many_reports")
            .detail(format!("at most {} reports an hour; try again later", cfg.per_reporter_per_hour))
            .retry_after(3600));
    }
    let target = (b.kind.as_str(), b.target_id.to_string());
    let mine = sql::count(
        db,
        &mut tx,
        "target_kind = $1 AND target_id = $2 AND reporter_id = $3 AND resolved_at IS NULL",
        &[V::Text(target.0), V::Text(&target.1), V::Text(&reporter)],
    )
    .await?;
    if mine > 0 {
        return Err(conflict("already_reported", "you reported this already; the moderators will look at it"));
    }
    let open = sql::count(
        db,
        &mut tx,
        "target_kind = $1 AND target_id = $2 AND resolved_at IS NULL",
        &[V::Text(target.0), V::Text(&target.1)],
    )
    .await?;
    if open >= i64::from(cfg.max_open_per_target) {
        return Err(conflict("enough_reports", "this was reported by many people already; the moderators are on it"));
    }
    let id = Uuid::now_v7();
    let row = sql::NewRow { id, reporter: caller.id, kind: b.kind, target: b.target_id, reason: b.reason, details, at };
    sql::insert(db, &mut tx, &row).await?;
    db.commit(tx).await?;
    let report = Report { id, kind: b.kind, target_id: b.target_id, reason: b.reason, created_at: from_micros(at) };
    Ok((StatusCode::CREATED, axum::Json(report)))
}

/// `GET /api/v1/moderation/reports`.
pub async fn queue(State(st): State<AppState>, caller: Caller) -> Result<axum::Json<Queue>, Problem> {
    if !caller.moderator {
        return Err(forbidden());
    }
    let mut items = Vec::new();
    for t in sql::targets(&st.db, QUEUE_TARGETS).await? {
        let reports = sql::open_reports(&st.db, t.kind, &t.target_id, QUEUE_REPORTS).await?;
        let event = match t.kind {
            Kind::Event => crate::store::get(&st.db, t.target_id).await?.map(|e| EventContext {
                title: e.title,
                status: e.status.as_str().to_owned(),
                organizer_id: e.organizer_id,
                starts_at: from_micros(e.starts_at),
                city: e.city,
            }),
            Kind::User => None,
        };
        items.push(QueueItem {
            kind: t.kind,
            target_id: t.target_id,
            open: t.open,
            first_reported_at: from_micros(t.first),
            reports,
            event,
        });
    }
    Ok(axum::Json(Queue { items }))
}

/// `POST /api/v1/moderation/reports/resolve`.
pub async fn resolve(
    State(st): State<AppState>,
    caller: Caller,
    Json(b): Json<Resolve>,
) -> Result<axum::Json<Resolved>, Problem> {
    if !caller.moderator {
        return Err(forbidden());
    }
    let note = text(b.note.as_deref(), "note", MAX_NOTE)?;
    let fits = matches!(
        (b.kind, b.outcome),
        (_, Outcome::Dismissed | Outcome::Banned)
            | (Kind::Event, Outcome::Unpublished | Outcome::Canceled)
            | (Kind::User, Outcome::PictureRemoved)
    );
    if !fits {
        return Err(validate::invalid(
            "outcome",
            "an event is dismissed, unpublished, canceled or its organizer banned; an account dismissed, banned or its \
             picture removed",
        ));
    }
    let (event_id, subject) = match b.kind {
        Kind::Event => {
            let title = crate::store::get(&st.db, b.target_id).await?.map(|e| e.title);
            (Some(b.target_id), title.unwrap_or_else(|| "an event".to_owned()))
        }
        Kind::User => (None, "an account".to_owned()),
    };
    let at = now();
    let db = &st.db;
    let mut tx = db.begin_write().await?;
    let reporters =
        sql::close(db, &mut tx, b.kind, b.target_id, (caller.id, b.outcome, note.as_deref()), to_micros(at)).await?;
    if reporters.is_empty() {
        return Err(Problem::not_found().code("no_open_reports").detail("nothing reported about this is open"));
    }
    let record = ModerationRecorded {
        actor: caller.id,
        action: "report.resolve".to_owned(),
        target: format!("{}:{}", b.kind.as_str(), b.target_id),
        reason: note,
        details: serde_json::json!({ "outcome": b.outcome.as_str(), "reports": reporters.len() }),
        at,
    };
    st.outbox.enqueue_event(&mut tx, MODERATION_TOPIC, &record).await?;
    for (report_id, reporter_id) in &reporters {
        let told = ReportResolved {
            report_id: *report_id,
            reporter_id: *reporter_id,
            event_id,
            subject: subject.clone(),
            outcome: b.outcome.as_str().to_owned(),
            at,
        };
        st.outbox.enqueue_event(&mut tx, MODERATION_TOPIC, &told).await?;
    }
    db.commit(tx).await?;
    st.outbox.wake();
    Ok(axum::Json(Resolved { resolved: reporters.len() as u64 }))
}

/// The statements on `reports` (migration 0014).
mod sql {
    use super::*;
    use sqlx::{Any, Transaction};

    pub(super) struct NewRow {
        pub(super) id: Uuid,
        pub(super) reporter: Uuid,
        pub(super) kind: Kind,
        pub(super) target: Uuid,
        pub(super) reason: Reason,
        pub(super) details: Option<String>,
        pub(super) at: i64,
    }

    /// A value bound to a `$n` of [`count`]'s filter.
    pub(super) enum V<'a> {
        Text(&'a str),
        Micros(i64),
    }

    /// Reports matching `filter` (its `$n` bound to `values`, in order).
    pub(super) async fn count(
        db: &Db,
        tx: &mut Transaction<'static, Any>,
        filter: &str,
        values: &[V<'_>],
    ) -> Result<i64, DataError> {
        let text = format!("SELECT COUNT(*) FROM reports WHERE {filter}");
        let mut q = sqlx::query_as::<_, (i64,)>(db.statement(&text));
        for v in values {
            q = match v {
                V::Text(t) => q.bind(*t),
                V::Micros(n) => q.bind(*n),
            };
        }
        Ok(q.fetch_one(db.on(&mut **tx)).await?.0)
    }

    pub(super) async fn insert(db: &Db, tx: &mut Transaction<'static, Any>, r: &NewRow) -> Result<(), DataError> {
        sqlx::query(db.statement(
            "INSERT INTO reports (id, reporter_id, target_kind, target_id, reason, details, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        ))
        .bind(r.id.to_string())
        .bind(r.reporter.to_string())
        .bind(r.kind.as_str())
        .bind(r.target.to_string())
        .bind(r.reason.as_str())
        .bind(r.details.as_deref())
        .bind(r.at)
        .execute(db.on(&mut **tx))
        .await?;
        Ok(())
    }

    pub(super) struct Target {
        pub(super) kind: Kind,
        pub(super) target_id: Uuid,
        pub(super) open: u64,
        pub(super) first: i64,
    }

    fn kind(s: &str) -> Kind {
        if s == "user" { Kind::User } else { Kind::Event }
    }

    /// The targets with open reports, the most reported first, then the longest waiting.
    pub(super) async fn targets(db: &Db, limit: u32) -> Result<Vec<Target>, DataError> {
        let text = format!(
            "SELECT target_kind, target_id, COUNT(*), MIN(created_at) FROM reports WHERE resolved_at IS NULL \
             GROUP BY target_kind, target_id ORDER BY COUNT(*) DESC, MIN(created_at) ASC, target_id LIMIT {limit}"
        );
        let mut conn = db.acquire().await?;
        let rows: Vec<(String, String, i64, i64)> =
            sqlx::query_as(db.statement(&text)).fetch_all(db.on(&mut *conn)).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, id, open, first)| {
                Some(Target {
                    kind: kind(&k),
                    target_id: Uuid::parse_str(&id).ok()?,
                    open: open.try_into().unwrap_or(0),
                    first,
                })
            })
            .collect())
    }

    /// The newest `limit` open reports on a target.
    pub(super) async fn open_reports(
        db: &Db,
        kind: Kind,
        target: &Uuid,
        limit: u32,
    ) -> Result<Vec<QueuedReport>, DataError> {
        let text = format!(
            "SELECT id, reporter_id, reason, details, created_at FROM reports \
             WHERE target_kind = $1 AND target_id = $2 AND resolved_at IS NULL ORDER BY created_at DESC, id LIMIT {limit}"
        );
        let mut conn = db.acquire().await?;
        let rows: Vec<(String, String, String, Option<String>, i64)> = sqlx::query_as(db.statement(&text))
            .bind(kind.as_str())
            .bind(target.to_string())
            .fetch_all(db.on(&mut *conn))
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, reporter, reason, details, at)| {
                Some(QueuedReport {
                    id: Uuid::parse_str(&id).ok()?,
                    reporter_id: Uuid::parse_str(&reporter).ok()?,
                    reason: Reason::parse(&reason).unwrap_or(Reason::Other),
                    details,
                    created_at: from_micros(at),
                })
            })
            .collect())
    }

    /// Closes the open reports on a target; their `(id, reporter)`.
    pub(super) async fn close(
        db: &Db,
        tx: &mut Transaction<'static, Any>,
        kind: Kind,
        target: Uuid,
        (by, outcome, note): (Uuid, Outcome, Option<&str>),
        at: i64,
    ) -> Result<Vec<(Uuid, Uuid)>, DataError> {
        let open: Vec<(String, String)> = sqlx::query_as(db.statement(
            "SELECT id, reporter_id FROM reports WHERE target_kind = $1 AND target_id = $2 AND resolved_at IS NULL",
        ))
        .bind(kind.as_str())
        .bind(target.to_string())
        .fetch_all(db.on(&mut **tx))
        .await?;
        let mut closed = Vec::new();
        for (id, reporter) in open {
            let done = sqlx::query(db.statement(
                "UPDATE reports SET resolved_at = $1, resolved_by = $2, outcome = $3, note = $4 \
                 WHERE id = $5 AND resolved_at IS NULL",
            ))
            .bind(at)
            .bind(by.to_string())
            .bind(outcome.as_str())
            .bind(note)
            .bind(&id)
            .execute(db.on(&mut **tx))
            .await?;
            // Closed meanwhile by another moderator: theirs to tell.
            if done.rows_affected() == 1
                && let (Ok(id), Ok(reporter)) = (Uuid::parse_str(&id), Uuid::parse_str(&reporter))
            {
                closed.push((id, reporter));
            }
        }
        Ok(closed)
    }
}
