//! The joins HTTP API (paths as the gateway exposes them; bearer required except `counts`).
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /api/v1/events/{id}/join` | user | join (header `Idempotency-Key`): 201 confirmed or waitlisted |
//! | `DELETE /api/v1/events/{id}/join` | user | leave: 204; a freed seat goes to the oldest waitlisted user |
//! | `GET /api/v1/events/{id}/join` | user | my participation, or 404 |
//! | `GET /api/v1/me/joins` | user | my joins, newest first (keyset) |
//! | `GET /api/v1/events/{id}/participants` | organizer, moderator, admin | confirmed joins (keyset) |
//! | `GET /api/v1/events/{id}/waitlist` | organizer, moderator, admin | waitlisted joins in FIFO order with positions (keyset) |
//! | `GET /api/v1/events/{id}/stats` | organizer, moderator, admin | `{capacity, confirmed, waitlisted, canceled, kicked}` |
//! | `DELETE /api/v1/events/{id}/participants/{user_id}` | organizer, moderator, admin | kick: 204 |
//! | `POST /api/v1/events/{id}/bans` | organizer, moderator, admin | `{user_id, reason?, expires_at?}`: ban (and kick): 201 (a moderator on someone else's event gives a reason) |
//! | `GET /api/v1/events/{id}/bans` | organizer, moderator, admin | the bans in force |
//! | `DELETE /api/v1/events/{id}/bans/{user_id}` | organizer, moderator, admin | lifts a ban: 204 |
//! | `GET /api/v1/events/{id}/counts` | anyone | `{capacity, confirmed, waitlisted}` |
//! | `GET\|POST\|DELETE /api/v1/me/calendar-feed` | user | the personal calendar feed: whether there is one, a new secret address (replacing the old), revoke it |
//! | `POST /api/v1/calendar-feeds/resolve` | whoever has the secret (`{token}`) | the feed's events for the gateway to render: `{items: [{event_id, status}]}`, 404 for an unknown secret |
//! | `GET /api/v1/events/counts?ids=a,b,…` | anyone | the same for up to 100 events: `{items: [{event_id, …}]}` (events it does not know are left out) |
//!
//! Writes run in one transaction that locks the event's capacity row first (see [`crate::store`])
//! and enqueue their `join.*` events in it; a transaction that hits a deadlock, a serialization
//! failure or a busy SQLite is run again (up to six runs in all, with a jittered pause from
//! `keel::resilience::Backoff` between them).

use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cityevents_api::joins::{Ban as BanView, BanItem, BanRequest as BanBody, Counts, Join as JoinView, MyJoin, Stats};
use cityevents_api::limits::MAX_REASON as MAX_BAN_REASON;
use cityevents_common::time::{from_micros, now, to_micros};
use cityevents_common::validate;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use keel::Problem;
use keel::data::{DataError, Db};
use keel::events::outbox::Outbox;
use keel::http::extract::{Json as JsonBody, Path, Query};
use keel::http::page::{Cursor, Page, Paginated};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Fail, conflict, forbidden, not_found};
use crate::metrics::{JoinMetrics, Tally};
use crate::store::{self, Announce, EventRow, JoinRow, StoredResponse, Tx, status};
use cityevents_common::caller::Caller;

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct Shared(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) db: Db,
    outbox: Outbox,
    idempotency_ttl: Duration,
    change_batch: i64,
    joins_topic: String,
    metrics: JoinMetrics,
}

impl Shared {
    /// Handler state over the service's database and outbox.
    pub(crate) fn new(db: Db, outbox: Outbox, cfg: &crate::JoinsConfig, metrics: JoinMetrics) -> Self {
        Self(Arc::new(Inner {
            db,
            outbox,
            idempotency_ttl: cfg.idempotency_ttl,
            change_batch: i64::try_from(cfg.change_batch).unwrap_or(i64::MAX),
            joins_topic: cfg.joins_topic.clone(),
            metrics,
        }))
    }
}

type AppState = axum::extract::State<Shared>;

/// The routes (add `jwt.extension()` around them).
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/api/v1/events/{id}/join", post(join).delete(leave).get(my_join))
        .route("/api/v1/me/joins", get(my_joins))
        .route("/api/v1/events/{id}/participants", get(participants))
        .route("/api/v1/events/{id}/participants/{user_id}", axum::routing::delete(kick))
        .route("/api/v1/events/{id}/waitlist", get(waitlist))
        .route("/api/v1/events/{id}/stats", get(stats))
        .route("/api/v1/events/{id}/bans", post(ban).get(bans))
        .route("/api/v1/events/{id}/bans/{user_id}", axum::routing::delete(unban))
        .route(
            "/api/v1/me/calendar-feed",
            get(crate::feeds::show).post(crate::feeds::create).delete(crate::feeds::revoke),
        )
        // The gateway's, for `GET /api/v1/calendars/{token}/events.ics`: the secret is the key,
        // sent in the body so no path or log holds it.
        .route("/api/v1/calendar-feeds/resolve", post(crate::feeds::items))
        // Who joined what: personal. Seat counts below are public.
        .route_layer(cityevents_common::private::no_store())
        .route("/api/v1/events/{id}/counts", get(counts))
        .route("/api/v1/events/counts", get(counts_of))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Views

/// Builds a [`JoinView`].
fn join_view(j: &JoinRow, position: Option<i64>) -> JoinView {
    JoinView {
        join_id: j.id,
        event_id: j.event_id,
        user_id: j.user_id,
        status: j.status.clone(),
        position,
        reason: j.reason.clone(),
        created_at: from_micros(j.created_at),
    }
}

#[derive(Debug, Serialize)]
struct ParticipantItem {
    join_id: Uuid,
    user_id: Uuid,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    joined_at: OffsetDateTime,
}

#[derive(Debug, Serialize)]
struct EventCounts {
    event_id: Uuid,
    capacity: i64,
    confirmed: i64,
    waitlisted: i64,
}

/// Most events one `GET /api/v1/events/counts` may ask for (a list page's largest size).
const MAX_COUNTS_IDS: usize = keel::http::page::MAX_LIMIT as usize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountsQuery {
    ids: Option<String>,
}

/// A ban as the API shows it.
fn ban_item(b: store::BanRow) -> BanItem {
    BanItem {
        user_id: b.user_id,
        banned_by: b.banned_by,
        created_at: from_micros(b.created_at),
        reason: b.reason,
        expires_at: b.expires_at.map(from_micros),
    }
}

/// The checked `reason` and `expires_at` of a ban: the reason trimmed (≤ 500 characters, empty
/// is none), the expiry RFC 3339 after `now_us` and before the year 2201.
fn ban_terms(body: &BanBody, now_us: i64) -> Result<(Option<String>, Option<i64>), Problem> {
    let reason = match body.reason.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(r) => Some(validate::text("reason", r, MAX_BAN_REASON)?),
    };
    let expires_at = match body.expires_at.as_deref() {
        None => None,
        Some(raw) => {
            let at = OffsetDateTime::parse(raw.trim(), &time::format_description::well_known::Rfc3339)
                .map_err(|_| validate::invalid("expires_at", "must be an RFC 3339 time, e.g. 2030-05-01T19:00:00Z"))?;
            if at.year() > 2200 {
                return Err(validate::invalid("expires_at", "must be before the year 2201"));
            }
            let at = to_micros(at);
            if at <= now_us {
                return Err(validate::invalid("expires_at", "must be in the future"));
            }
            Some(at)
        }
    };
    Ok((reason, expires_at))
}

/// What the audit log keeps of a moderator's `action` on `user_id` in `ev` (none when the
/// organizer acts on their own event).
fn moderation_record(
    caller: &Caller,
    ev: &EventRow,
    user_id: Uuid,
    action: &str,
    details: serde_json::Value,
) -> Option<cityevents_common::catalogue::ModerationRecorded> {
    (caller.id != ev.organizer_id).then(|| cityevents_common::catalogue::ModerationRecorded {
        actor: caller.id,
        action: action.to_owned(),
        target: format!("event:{}/user:{user_id}", ev.event_id),
        reason: details.get("reason").and_then(|r| r.as_str()).map(str::to_owned),
        details,
        at: now(),
    })
}

/// Enqueues `record` (if any) for the audit log in `tx`.
async fn record(
    tx: &mut Tx,
    st: &Shared,
    record: Option<cityevents_common::catalogue::ModerationRecorded>,
) -> Result<(), Fail> {
    if let Some(r) = record {
        st.0.outbox.enqueue_event(tx, cityevents_common::catalogue::MODERATION_TOPIC, &r).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Join (idempotent)

enum Joined {
    /// Made now; this is the answer (also stored under the key), and what it did.
    Created(StoredResponse, Tally),
    /// The key was already used (by a concurrent request that won the lock).
    Stored(StoredResponse),
}

async fn join(
    axum::extract::State(st): AppState,
    caller: Caller,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let answer = join_inner(&st, &caller, id, &headers).await;
    if let Err(p) = &answer
        && let Some(code) = p.code_str()
    {
        st.0.metrics.refused(code);
    }
    answer
}

async fn join_inner(st: &Shared, caller: &Caller, event_id: Uuid, headers: &HeaderMap) -> Result<Response, Problem> {
    let key = cityevents_common::idempotency::from_headers(headers)?;
    let fingerprint = format!("POST /api/v1/events/{event_id}/join");
    let db = &st.0.db;
    let cutoff = store::idempotency_cutoff(st.0.idempotency_ttl);
    if let Some(stored) =
        store::find_idempotency(db.exec(), db.backend(), caller.id, &key, cutoff).await.map_err(DataError::from)?
    {
        // A ban made since answers instead of the old 201: the join it replays is gone. (A key
        // used for another request is that conflict first.)
        let now_us = to_micros(now());
        if stored.fingerprint == fingerprint
            && store::is_banned(db.exec(), db.backend(), event_id, caller.id, now_us).await.map_err(DataError::from)?
        {
            return Err(banned());
        }
        return replay(stored, &fingerprint);
    }
    let outcome =
        keel::data::transaction!(db, |tx| join_tx(&mut tx, st, caller, event_id, &key, &fingerprint, cutoff))?;
    match outcome {
        Joined::Created(stored, tally) => {
            st.0.metrics.count(tally);
            st.0.outbox.wake();
            Ok(stored_response(stored, false))
        }
        Joined::Stored(stored) => replay(stored, &fingerprint),
    }
}

async fn join_tx(
    tx: &mut Tx,
    st: &Shared,
    caller: &Caller,
    event_id: Uuid,
    key: &str,
    fingerprint: &str,
    cutoff: i64,
) -> Result<Joined, Fail> {
    let db = &st.0.db;
    let now_us = to_micros(now());
    let Some(mut ev) = store::lock_event(tx, db, event_id).await? else {
        return Err(not_found("no such event (or it is not published)").code("event_not_found").into());
    };
    let ctx = store::join_context(tx, db, &ev, caller.id, key, now_us).await?;
    // A concurrent request with the same key and event waited on the lock above: answer as it did.
    let expired = match ctx.key {
        Some((stored, made)) if made >= cutoff => {
            if ctx.banned && stored.fingerprint == fingerprint {
                return Err(banned().into());
            }
            return Ok(Joined::Stored(stored));
        }
        Some(_) => true,
        None => false,
    };
    if !ev.is_open(now_us) {
        return Err(conflict("event_closed", "the event is canceled, unpublished or over; it takes no joins").into());
    }
    if ev.organizer_id == caller.id {
        return Err(forbidden("organizer_cannot_join", "you organize this event; an organizer does not join it").into());
    }
    if ctx.organizer_banned {
        // Its organizer's account is banned: the event is hidden and takes no one new.
        return Err(conflict("event_closed", "the event is not taking joins").into());
    }
    if ctx.banned {
        return Err(banned().into());
    }
    let existing = ctx.join;
    if existing.as_ref().is_some_and(JoinRow::is_active) {
        return Err(conflict("already_joined", "you already joined this event (or wait for a seat)").into());
    }
    let confirmed = ev.has_free_seat();
    ev.next_seq += 1;
    let j = JoinRow {
        id: Uuid::now_v7(),
        event_id,
        user_id: caller.id,
        status: if confirmed { status::CONFIRMED } else { status::WAITLISTED }.to_owned(),
        reason: None,
        queue_seq: ev.next_seq,
        queued_at: now_us,
        created_at: now_us,
        // A rejoin's change comes after the participation's last one.
        updated_at: existing.as_ref().map_or(now_us, |e| store::changed_at(e.updated_at, now_us)),
    };
    store::put_join(tx, db, &j, existing.is_some()).await?;
    let position = if confirmed {
        ev.confirmed += 1;
        None
    } else {
        // Everyone waiting holds an earlier ticket: the newcomer is last.
        ev.waitlisted += 1;
        Some(ev.waitlisted)
    };
    store::save_event(tx, db, &ev, now_us).await?;
    let body = serde_json::to_string(&join_view(&j, position)).map_err(|_| Problem::internal())?;
    let stored = StoredResponse { fingerprint: fingerprint.to_owned(), status: StatusCode::CREATED.as_u16(), body };
    store::store_idempotency(tx, db, caller.id, key, &stored, cutoff, now_us, expired).await?;
    let kind = if confirmed { Announce::Confirmed } else { Announce::Waitlisted };
    let tally =
        store::announce(tx, &st.0.outbox, &st.0.joins_topic, vec![(kind, store::change(&ev, &j, None))]).await?;
    Ok(Joined::Created(stored, tally))
}

fn banned() -> Problem {
    forbidden("banned", "the organizer banned you from this event")
}

/// The stored answer again, or 409 when the key was used for another request.
fn replay(stored: StoredResponse, fingerprint: &str) -> Result<Response, Problem> {
    if stored.fingerprint != fingerprint {
        return Err(conflict(
            "idempotency_key_reused",
            "this Idempotency-Key was used for another request; use a new key per request",
        ));
    }
    Ok(stored_response(stored, true))
}

fn stored_response(stored: StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, stored.body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if replayed {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Leave, kick, ban

async fn leave(
    axum::extract::State(st): AppState,
    caller: Caller,
    Path(event_id): Path<Uuid>,
) -> Result<Response, Problem> {
    let tally = keel::data::transaction!(&st.0.db, |tx| leave_tx(&mut tx, &st, &caller, event_id))?;
    st.0.metrics.count(tally);
    st.0.outbox.wake();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn leave_tx(tx: &mut Tx, st: &Shared, caller: &Caller, event_id: Uuid) -> Result<Tally, Fail> {
    let db = &st.0.db;
    let backend = db.backend();
    let now_us = to_micros(now());
    let Some(mut ev) = store::lock_event(tx, db, event_id).await? else {
        return Err(not_found("no such event").into());
    };
    let Some(mut j) =
        store::find_join(db.on(&mut **tx), backend, event_id, caller.id).await?.filter(JoinRow::is_active)
    else {
        return Err(not_found("you have not joined this event").into());
    };
    let mut items = Vec::new();
    end_and_refill(tx, st, &mut ev, &mut j, status::CANCELED, None, now_us, &mut items).await?;
    store::save_event(tx, db, &ev, now_us).await?;
    Ok(store::announce(tx, &st.0.outbox, &st.0.joins_topic, items).await?)
}

/// Ends `j` (left, kicked or banned) and gives a freed seat to the oldest waitlisted user;
/// collects the announcements.
#[allow(clippy::too_many_arguments)]
async fn end_and_refill(
    tx: &mut Tx,
    st: &Shared,
    ev: &mut EventRow,
    j: &mut JoinRow,
    new_status: &str,
    reason: Option<&str>,
    now_us: i64,
    items: &mut Vec<(Announce, cityevents_common::catalogue::JoinChange)>,
) -> Result<(), Fail> {
    let db = &st.0.db;
    let had_seat = j.status == status::CONFIRMED;
    store::end_join(tx, db, ev, j, new_status, reason, now_us).await?;
    let kind = if new_status == status::KICKED { Announce::Kicked } else { Announce::Canceled };
    items.push((kind, store::change(ev, j, reason)));
    if had_seat {
        for p in store::promote(tx, db, ev, now_us, st.0.change_batch).await? {
            items.push((Announce::Promoted, store::change(ev, &p, Some("seat_freed"))));
        }
    }
    Ok(())
}

/// Locks the event for a management action: 404 unknown, 403 unless organizer, moderator or admin.
async fn lock_managed(tx: &mut Tx, st: &Shared, caller: &Caller, event_id: Uuid) -> Result<EventRow, Fail> {
    let ev = store::lock_event(tx, &st.0.db, event_id).await?;
    manageable(ev, caller, "do this")
}

/// `ev` if `caller` may manage it: 404 when there is no such event, 403 unless organizer,
/// moderator or admin.
fn manageable(ev: Option<EventRow>, caller: &Caller, action: &str) -> Result<EventRow, Fail> {
    let Some(ev) = ev else {
        return Err(not_found("no such event").into());
    };
    if !ev.may_manage(caller.id, caller.moderator) {
        return Err(forbidden("not_organizer", &format!("only the event's organizer may {action}")).into());
    }
    Ok(ev)
}

async fn kick(st: AppState, caller: Caller, ids: Path<(Uuid, Uuid)>) -> Result<Response, Problem> {
    on_user(st, caller, ids, UserAction::Kick).await
}

/// What an organizer does to one user of an event with `DELETE`.
#[derive(Debug, Clone, Copy)]
enum UserAction {
    Kick,
    Unban,
}

/// `DELETE /api/v1/events/{id}/…/{user_id}`: both ids checked, the action in a transaction, 204.
async fn on_user(
    axum::extract::State(st): AppState,
    caller: Caller,
    Path((event_id, user_id)): Path<(Uuid, Uuid)>,
    action: UserAction,
) -> Result<Response, Problem> {
    match action {
        UserAction::Kick => {
            let tally = keel::data::transaction!(&st.0.db, |tx| kick_tx(&mut tx, &st, &caller, event_id, user_id))?;
            st.0.metrics.count(tally);
        }
        UserAction::Unban => {
            keel::data::transaction!(&st.0.db, |tx| unban_tx(&mut tx, &st, &caller, event_id, user_id))?
        }
    }
    st.0.outbox.wake();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn kick_tx(tx: &mut Tx, st: &Shared, caller: &Caller, event_id: Uuid, user_id: Uuid) -> Result<Tally, Fail> {
    let db = &st.0.db;
    let backend = db.backend();
    let now_us = to_micros(now());
    let mut ev = lock_managed(tx, st, caller, event_id).await?;
    let Some(mut j) = store::find_join(db.on(&mut **tx), backend, event_id, user_id).await?.filter(JoinRow::is_active)
    else {
        return Err(not_found("that user has not joined this event").into());
    };
    let mut items = Vec::new();
    end_and_refill(tx, st, &mut ev, &mut j, status::KICKED, Some("kicked"), now_us, &mut items).await?;
    store::save_event(tx, db, &ev, now_us).await?;
    let tally = store::announce(tx, &st.0.outbox, &st.0.joins_topic, items).await?;
    record(tx, st, moderation_record(caller, &ev, user_id, "event.kick", serde_json::json!({}))).await?;
    Ok(tally)
}

async fn ban(
    axum::extract::State(st): AppState,
    caller: Caller,
    Path(event_id): Path<Uuid>,
    JsonBody(body): JsonBody<BanBody>,
) -> Result<Response, Problem> {
    let user_id = cityevents_common::validate::uuid("user_id", &body.user_id)?;
    let (reason, expires_at) = ban_terms(&body, to_micros(now()))?;
    let new = store::NewBan { by: caller.id, reason, expires_at };
    let (ban, made, tally) =
        keel::data::transaction!(&st.0.db, |tx| ban_tx(&mut tx, &st, &caller, (event_id, user_id), &new))?;
    st.0.metrics.count(tally);
    st.0.outbox.wake();
    let view = BanView { event_id, ban: ban_item(ban) };
    // A repeated ban changes nothing and answers the ban there is.
    let status = if made { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view)).into_response())
}

/// Bans a participant or waitlisted user (ending their join); `(the ban, made now, what the
/// joins did)`. A user who is already banned keeps that ban; the organizer and anyone without a
/// join are refused; a moderator acting on someone else's event gives a reason, and the ban is
/// recorded for the audit log.
async fn ban_tx(
    tx: &mut Tx,
    st: &Shared,
    caller: &Caller,
    (event_id, user_id): (Uuid, Uuid),
    new: &store::NewBan,
) -> Result<(store::BanRow, bool, Tally), Fail> {
    let db = &st.0.db;
    let backend = db.backend();
    let now_us = to_micros(now());
    let mut ev = lock_managed(tx, st, caller, event_id).await?;
    if caller.id != ev.organizer_id && new.reason.is_none() {
        return Err(validate::invalid("reason", "is required to ban a user from someone else's event").into());
    }
    if user_id == ev.organizer_id {
        return Err(conflict("cannot_ban_organizer", "the organizer of an event cannot be banned from it").into());
    }
    if let Some(ban) = store::find_ban(db.on(&mut **tx), backend, event_id, user_id, now_us).await? {
        return Ok((ban, false, Tally::default()));
    }
    let Some(mut j) = store::find_join(db.on(&mut **tx), backend, event_id, user_id).await?.filter(JoinRow::is_active)
    else {
        return Err(Problem::not_found()
            .code("not_a_participant")
            .detail("only a participant or a waitlisted user of this event can be banned from it")
            .into());
    };
    let ban = store::ban(tx, db, (event_id, user_id), new, now_us).await?;
    let mut items = Vec::new();
    end_and_refill(tx, st, &mut ev, &mut j, status::KICKED, Some("banned"), now_us, &mut items).await?;
    store::save_event(tx, db, &ev, now_us).await?;
    let tally = store::announce(tx, &st.0.outbox, &st.0.joins_topic, items).await?;
    let expires_at = new
        .expires_at
        .map(|at| from_micros(at).format(&time::format_description::well_known::Rfc3339).unwrap_or_default());
    let details = serde_json::json!({ "reason": new.reason, "expires_at": expires_at });
    record(tx, st, moderation_record(caller, &ev, user_id, "event.ban", details)).await?;
    Ok((ban, true, tally))
}

/// `GET /api/v1/events/{id}/bans`: the bans in force, oldest first (organizer, moderator or admin).
async fn bans(
    axum::extract::State(st): AppState,
    caller: Caller,
    Path(id): Path<Uuid>,
    page: Page,
) -> Result<Response, Problem> {
    let ev = managed(&st, &caller, id).await?;
    let now_us = to_micros(now());
    let rows = store::event_bans(&st.0.db, ev.event_id, page.after.as_ref(), (page.limit, now_us))
        .await
        .map_err(DataError::from)?;
    let page =
        Paginated::from_rows(rows, page.limit, |b| Cursor::new(b.created_at, b.user_id.to_string())).map(ban_item);
    Ok(Json(page).into_response())
}

/// `DELETE /api/v1/events/{id}/bans/{user_id}`: lifts a ban (the user may join again).
async fn unban(st: AppState, caller: Caller, ids: Path<(Uuid, Uuid)>) -> Result<Response, Problem> {
    on_user(st, caller, ids, UserAction::Unban).await
}

async fn unban_tx(tx: &mut Tx, st: &Shared, caller: &Caller, event_id: Uuid, user_id: Uuid) -> Result<(), Fail> {
    let ev = lock_managed(tx, st, caller, event_id).await?;
    if !store::lift_ban(tx, &st.0.db, (event_id, user_id), to_micros(now())).await? {
        return Err(Problem::not_found()
            .code("ban_not_found")
            .detail("that user is not banned from this event")
            .into());
    }
    tracing::info!(event_id = %event_id, user_id = %user_id, by = %caller.id, "ban lifted");
    record(tx, st, moderation_record(caller, &ev, user_id, "event.unban", serde_json::json!({}))).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reads

async fn my_join(
    axum::extract::State(st): AppState,
    caller: Caller,
    Path(event_id): Path<Uuid>,
) -> Result<Response, Problem> {
    let db = &st.0.db;
    let Some(j) = store::find_join(db.exec(), db.backend(), event_id, caller.id).await.map_err(DataError::from)? else {
        return Err(not_found("you have not joined this event"));
    };
    let position = if j.status == status::WAITLISTED {
        Some(store::waitlist_position(db.exec(), db.backend(), event_id, j.queue_seq).await.map_err(DataError::from)?)
    } else {
        None
    };
    Ok(Json(join_view(&j, position)).into_response())
}

async fn my_joins(axum::extract::State(st): AppState, caller: Caller, page: Page) -> Result<Response, Problem> {
    let rows =
        store::user_joins(&st.0.db, caller.id, page.after.as_ref(), page.limit).await.map_err(DataError::from)?;
    let page = Paginated::from_rows(rows, page.limit, |r| Cursor::new(r.join.created_at, r.join.id.to_string()));
    let page = page.map(|r| MyJoin {
        join_id: r.join.id,
        event_id: r.join.event_id,
        status: r.join.status,
        title: r.title,
        starts_at: from_micros(r.starts_at),
        ends_at: from_micros(r.ends_at),
        event_status: r.event_status,
        created_at: from_micros(r.join.created_at),
    });
    Ok(Json(page).into_response())
}

/// The event, if the caller may manage it: 404 unknown, 403 otherwise.
async fn managed(st: &Shared, caller: &Caller, event_id: Uuid) -> Result<EventRow, Problem> {
    Ok(manageable(store::load_event(&st.0.db, event_id).await.map_err(DataError::from)?, caller, "see this")?)
}

async fn participants(
    axum::extract::State(st): AppState,
    caller: Caller,
    Path(id): Path<Uuid>,
    page: Page,
) -> Result<Response, Problem> {
    let ev = managed(&st, &caller, id).await?;
    let rows = store::event_joins(&st.0.db, ev.event_id, status::CONFIRMED, page.after.as_ref(), page.limit)
        .await
        .map_err(DataError::from)?;
    let page = Paginated::from_rows(rows, page.limit, |j| Cursor::new(j.queue_seq, j.id.to_string())).map(|j| {
        ParticipantItem {
            join_id: j.id,
            user_id: j.user_id,
            status: j.status,
            position: None,
            joined_at: from_micros(j.created_at),
        }
    });
    Ok(Json(page).into_response())
}

async fn waitlist(
    axum::extract::State(st): AppState,
    caller: Caller,
    Path(id): Path<Uuid>,
    page: Page,
) -> Result<Response, Problem> {
    let ev = managed(&st, &caller, id).await?;
    let db = &st.0.db;
    let rows = store::event_joins(db, ev.event_id, status::WAITLISTED, page.after.as_ref(), page.limit)
        .await
        .map_err(DataError::from)?;
    // Positions are contiguous in FIFO order: count those ahead of the first row once.
    let first = match rows.first() {
        Some(j) => store::waitlist_position(db.exec(), db.backend(), ev.event_id, j.queue_seq)
            .await
            .map_err(DataError::from)?,
        None => 1,
    };
    let page = Paginated::from_rows(rows, page.limit, |j| Cursor::new(j.queue_seq, j.id.to_string()));
    let items = page
        .items
        .into_iter()
        .zip(first..)
        .map(|(j, position)| ParticipantItem {
            join_id: j.id,
            user_id: j.user_id,
            status: j.status,
            position: Some(position),
            joined_at: from_micros(j.queued_at),
        })
        .collect();
    Ok(Json(Paginated { items, next_cursor: page.next_cursor }).into_response())
}

async fn stats(axum::extract::State(st): AppState, caller: Caller, Path(id): Path<Uuid>) -> Result<Response, Problem> {
    let ev = managed(&st, &caller, id).await?;
    let counts = store::status_counts(&st.0.db, ev.event_id).await.map_err(DataError::from)?;
    let of = |s: &str| counts.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
    Ok(Json(Stats {
        capacity: ev.capacity,
        confirmed: of(status::CONFIRMED),
        waitlisted: of(status::WAITLISTED),
        canceled: of(status::CANCELED),
        kicked: of(status::KICKED),
    })
    .into_response())
}

async fn counts(axum::extract::State(st): AppState, Path(event_id): Path<Uuid>) -> Result<Response, Problem> {
    let Some(ev) = store::load_event(&st.0.db, event_id).await.map_err(DataError::from)? else {
        return Err(not_found("no such event"));
    };
    Ok(Json(Counts { capacity: ev.capacity, confirmed: ev.confirmed, waitlisted: ev.waitlisted }).into_response())
}

/// The `ids` of `GET /api/v1/events/counts`: 1–100 comma-separated UUIDs, repeats dropped.
fn counts_ids(q: CountsQuery) -> Result<Vec<Uuid>, Problem> {
    validate::uuid_list("ids", q.ids.as_deref(), MAX_COUNTS_IDS)
}

async fn counts_of(axum::extract::State(st): AppState, Query(q): Query<CountsQuery>) -> Result<Response, Problem> {
    let ids = counts_ids(q)?;
    let rows = store::counts_of(&st.0.db, &ids).await.map_err(DataError::from)?;
    let items: Vec<EventCounts> = rows
        .into_iter()
        .map(|ev| EventCounts {
            event_id: ev.event_id,
            capacity: ev.capacity,
            confirmed: ev.confirmed,
            waitlisted: ev.waitlisted,
        })
        .collect();
    Ok(Json(serde_json::json!({ "items": items })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ids_are_bounded_and_deduplicated() {
        let id = Uuid::now_v7();
        let ids = |s: &str| counts_ids(CountsQuery { ids: Some(s.to_owned()) });
        assert_eq!(ids(&format!("{id},{id}")).unwrap(), vec![id]);
        assert!(ids("").is_err());
        assert!(counts_ids(CountsQuery { ids: None }).is_err());
        assert!(ids("nope").is_err());
        let many: Vec<String> = (0..=MAX_COUNTS_IDS).map(|_| Uuid::now_v7().to_string()).collect();
        assert!(ids(&many.join(",")).is_err());
        assert_eq!(ids(&many[..MAX_COUNTS_IDS].join(",")).unwrap().len(), MAX_COUNTS_IDS);
    }
}
