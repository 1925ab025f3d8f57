//! Reports to the moderators (`app.reports`): a member reports an event or an account with a
//! reason; moderators see the reported targets in one queue, the most reported first, and
//! resolve a target's open reports together, after acting through the events' or accounts' own
//! routes (unpublish, cancel, ban, remove a picture).
//!
//! | route | does |
//! |---|---|
//! | `POST /api/v1/reports` `{kind, target_id, reason, details}` (signed in) | 201 the report; 404 `target_not_found` (an event the caller cannot see; an account auth does not know is the gateway's 404, as this service keeps no list of accounts); 409 `already_reported` (the caller's own report on it is open), `own_content`, `enough_reports` (the target has `app.reports.max_open_per_target` open); 429 `too_many_reports` past `app.reports.per_reporter_per_hour` |
//! | `GET /api/v1/moderation/reports` (moderator) | the queue: targets with open reports, their latest ten (never who sent them), the event's context |
//! | `POST /api/v1/moderation/reports/resolve` `{kind, target_id, outcome, note}` (moderator; `dismissed`, `unpublished`, `canceled`, `banned`, `picture_removed`) | closes the target's open reports: `moderation.recorded` (the audit log) and a `report.resolved` per reporter (the notifier tells them), in the same transaction; 403 `own_report_target` (the caller is the reported account or the event's organizer); 409 `outcome_mismatch` (`unpublished` of an event that is not a draft, `canceled` of one that is not canceled); 404 `no_open_reports` |
//!
//! The limits hold under concurrent reports: one open report per reporter and target is a
//! unique index (`open_key`, NULL once resolved), and a report locks its reporter's and its
//! target's rows of `report_locks` before it counts the reporter's last hour and the target's
//! open reports (migration 0014). `banned` and `picture_removed` are auth's to know (the ban
//! reaches this service later, by the bus), so they are not checked against the target.

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
use crate::model::{Status, conflict};
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

fn target_not_found() -> Problem {
    Problem::not_found().code("target_not_found").detail("there is no such event")
}

fn already_reported() -> Problem {
    conflict("already_reported", "you reported this already; the moderators will look at it")
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
            let event = event.filter(|e| e.visible_to(Some(&caller))).ok_or_else(target_not_found)?;
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
    // Read committed: each count below, made once the locks are held, sees every report
    // committed before (MySQL's default would read the snapshot of the first statement).
    let mut tx = db.begin_read_committed().await?;
    sql::lock(db, &mut tx, &[caller.id, b.target_id]).await?;
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
    // Counted before the target's cap so a repeat is told it is one; the unique `open_key` is
    // the rule itself.
    let mine = sql::count(
        db,
        &mut tx,
        "target_kind = $1 AND target_id = $2 AND reporter_id = $3 AND resolved_at IS NULL",
        &[V::Text(target.0), V::Text(&target.1), V::Text(&reporter)],
    )
    .await?;
    if mine > 0 {
        return Err(already_reported());
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
    if !sql::insert(db, &mut tx, &row).await? {
        return Err(already_reported());
    }
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
    let event = match b.kind {
        Kind::Event => crate::store::get(&st.db, b.target_id).await?,
        Kind::User => None,
    };
    // Nobody rules on reports about themselves or their own events: another moderator does.
    let own = match b.kind {
        Kind::User => b.target_id == caller.id,
        Kind::Event => event.as_ref().is_some_and(|e| e.organizer_id == caller.id),
    };
    if own {
        return Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
            .code("own_report_target")
            .detail("these reports are about you or your own event; another moderator resolves them"));
    }
    check_outcome(b.outcome, event.as_ref().map(|e| e.status))?;
    let (event_id, subject) = match (b.kind, event) {
        (Kind::Event, e) => (Some(b.target_id), e.map_or_else(|| "an event".to_owned(), |e| e.title)),
        (Kind::User, _) => (None, "an account".to_owned()),
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

/// 409 `outcome_mismatch` when `outcome` says the event was taken back to a draft or canceled
/// and its `status` (`None`: there is no such event) says otherwise. The other outcomes are not
/// the event's state: nothing to check here.
fn check_outcome(outcome: Outcome, status: Option<Status>) -> Result<(), Problem> {
    let (wanted, done) = match outcome {
        Outcome::Unpublished => (Status::Draft, "unpublish"),
        Outcome::Canceled => (Status::Canceled, "cancel"),
        Outcome::Dismissed | Outcome::Banned | Outcome::PictureRemoved => return Ok(()),
    };
    match status {
        Some(s) if s == wanted => Ok(()),
        Some(s) => Err(conflict(
            "outcome_mismatch",
            &format!("the event is {}: {done} it first, then resolve its reports", s.as_str()),
        )),
        None => Err(conflict("outcome_mismatch", "there is no such event to have been unpublished or canceled")),
    }
}

/// The statements on `reports` and `report_locks` (migration 0014).
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

    /// Rows of `report_locks`: each UUID's value modulo this.
    const LOCK_SLOTS: u128 = 64;

    /// Locks the `report_locks` rows of `ids` in `tx` until it ends, in ascending order (so two
    /// reports never wait for each other crosswise): a row lock on PostgreSQL and MySQL, the
    /// database's write lock on SQLite, which `tx` holds already.
    pub(super) async fn lock(db: &Db, tx: &mut Transaction<'static, Any>, ids: &[Uuid]) -> Result<(), DataError> {
        let mut slots: Vec<i64> =
            ids.iter().map(|id| i64::try_from(id.as_u128() % LOCK_SLOTS).unwrap_or_default()).collect();
        slots.sort_unstable();
        slots.dedup();
        for slot in slots {
            // A write that changes nothing, for its lock.
            sqlx::query(db.statement("UPDATE report_locks SET slot = slot WHERE slot = $1"))
                .bind(slot)
                .execute(db.on(&mut **tx))
                .await?;
        }
        Ok(())
    }

    /// Inserts the report, open; `false` when the reporter's report on the target is open
    /// already (the unique `open_key`).
    pub(super) async fn insert(db: &Db, tx: &mut Transaction<'static, Any>, r: &NewRow) -> Result<bool, DataError> {
        let open_key = format!("{}:{}:{}", r.kind.as_str(), r.target, r.reporter);
        let done = sqlx::query(db.statement(
            "INSERT INTO reports (id, reporter_id, target_kind, target_id, reason, details, created_at, open_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        ))
        .bind(r.id.to_string())
        .bind(r.reporter.to_string())
        .bind(r.kind.as_str())
        .bind(r.target.to_string())
        .bind(r.reason.as_str())
        .bind(r.details.as_deref())
        .bind(r.at)
        .bind(open_key)
        .execute(db.on(&mut **tx))
        .await;
        match done {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(DataError::from(e)),
        }
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

    /// The newest `limit` open reports on a target, without who sent them.
    pub(super) async fn open_reports(
        db: &Db,
        kind: Kind,
        target: &Uuid,
        limit: u32,
    ) -> Result<Vec<QueuedReport>, DataError> {
        let text = format!(
            "SELECT id, reason, details, created_at FROM reports \
             WHERE target_kind = $1 AND target_id = $2 AND resolved_at IS NULL ORDER BY created_at DESC, id LIMIT {limit}"
        );
        let mut conn = db.acquire().await?;
        let rows: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(db.statement(&text))
            .bind(kind.as_str())
            .bind(target.to_string())
            .fetch_all(db.on(&mut *conn))
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, reason, details, at)| {
                Some(QueuedReport {
                    id: Uuid::parse_str(&id).ok()?,
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
                "UPDATE reports SET resolved_at = $1, resolved_by = $2, outcome = $3, note = $4, open_key = NULL \
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
