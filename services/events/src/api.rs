//! The HTTP API under `/api/v1`: organizer CRUD, publish and cancel, the public list, the batch
//! lookup the gateway uses, and the organizer's own list.
//!
//! Every change that other services must hear about enqueues its event through the outbox in
//! the transaction that makes the change (the envelope carries the request id and trace).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as JsonResponse, Router};
use cityevents_api::events::{BatchRequest, BatchResponse, CityList as Cities, ReasonBody};
use cityevents_common::catalogue::{EVENTS_TOPIC, EventPublished, EventUpdated, MODERATION_TOPIC, ModerationRecorded};
use cityevents_common::time::{now, to_micros};
use cityevents_common::validate;
use http::{StatusCode, header};
use keel::data::{DataError, Db};
use keel::events::outbox::Outbox;
use keel::http::Problem;
use keel::http::client::{self, Client};
use keel::http::extract::{Json, OptionalJson, Path, Query};
use keel::http::page::Paginated;
use serde::Deserialize;
use uuid::Uuid;

use crate::list::{self, Check as _, CitiesParams, EventsParams, MINE, MyEventsParams};
use crate::metrics::{Change, SearchOutcome};
use crate::model::{Caller, Event, EventPatch, EventView, Fields, NewEvent, Status, conflict, parse_reason};
use crate::store;

/// Most ids `POST /api/v1/events/batch` takes.
pub const MAX_BATCH: usize = cityevents_api::limits::MAX_BATCH;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The service database.
    pub db: Db,
    /// The outbox on it.
    pub outbox: Outbox,
    /// `app.require_verified_email`: only callers with a verified address create events.
    pub require_verified_email: bool,
    /// The joins service (`upstreams.joins`): asked whether anyone joined before an organizer
    /// unpublishes.
    pub joins: Client,
    /// `events_changes_total`, `events_searches_total`.
    pub metrics: crate::metrics::EventMetrics,
    /// Full-text searches' own limits (`app.search`).
    pub search: Searches,
    /// The day's salt of trend signals.
    pub salts: crate::trend::Salts,
    /// Trending answers kept for a while (`app.trending_cache`).
    pub trending: crate::trend::TrendingCache,
    /// Cover pictures: the object store and the decoding pipeline.
    pub covers: cityevents_media::Pictures,
    /// `app.reports`: the limits on reports.
    pub reports: crate::reports::ReportsConfig,
}

/// Full-text searches' own concurrency limit and what each may cost (`app.search`): a flood of
/// expensive searches queues here, never for the connections the rest of the API needs.
#[derive(Debug, Clone)]
pub struct Searches {
    slots: keel::resilience::bulkhead::Bulkhead,
    bounds: store::SearchBounds,
}

impl Searches {
    /// The limits `cfg` sets.
    pub fn new(cfg: &crate::SearchConfig) -> Self {
        let slots = keel::resilience::bulkhead::BulkheadConfig {
            max_concurrent: cfg.max_concurrent,
            max_queue: cfg.max_queue,
            queue_timeout: cfg.queue_timeout,
        };
        Self {
            slots: keel::resilience::bulkhead::Bulkhead::new("search", slots, None),
            bounds: store::SearchBounds { timeout: cfg.timeout, max_ranked: cfg.max_ranked },
        }
    }
}

/// 503 `search-busy`: every search slot and the queue are taken. Overloaded: the gateway's
/// search breaker is for searches that fail or time out, not for ones refused at once.
fn search_busy() -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "search-busy", "Too many searches")
        .code("SEARCH_BUSY")
        .detail("this service is running as many searches as it allows; retry shortly")
        .retry_after(1)
        .overloaded()
}

/// The routes (add the JWT extension layer outside).
pub fn router(state: AppState) -> Router {
    Router::new()
        // An organizer's own events, drafts included: not for shared caches. The rest below is
        // the public catalogue or answers a write.
        .route("/api/v1/me/events", get(list_mine))
        .route_layer(cityevents_common::private::no_store())
        .route("/api/v1/events", get(list_public).post(create))
        .route("/api/v1/events/batch", post(batch))
        .route("/api/v1/events/trending", get(crate::trend::trending))
        .route("/api/v1/events/views", post(crate::trend::views))
        .route("/api/v1/events/suggestions", post(crate::trend::suggestions))
        .route("/api/v1/events/{id}", get(show).patch(update))
        .route("/api/v1/events/{id}/publish", post(publish))
        .route("/api/v1/events/{id}/cancel", post(cancel))
        .route("/api/v1/events/{id}/unpublish", post(unpublish))
        .route("/api/v1/events/{id}/online-link", get(online_link))
        .route(
            "/api/v1/events/{id}/cover",
            axum::routing::put(crate::covers::put)
                .delete(crate::covers::delete)
                .layer(axum::extract::DefaultBodyLimit::max(cityevents_api::limits::MAX_PICTURE_REQUEST)),
        )
        .route("/api/v1/events/{id}/cover/{hash}/{file}", get(crate::covers::get))
        .route("/api/v1/meta/cities", get(cities))
        .route("/api/v1/reports", post(crate::reports::create))
        .route("/api/v1/moderation/reports", get(crate::reports::queue))
        .route("/api/v1/moderation/reports/resolve", post(crate::reports::resolve))
        .with_state(state)
}

/// One event as answered to a caller: kept out of every cache (`private, no-store`) when it
/// carries the join link, which is its organizer's only.
pub struct Personal(EventView);

impl Personal {
    /// `view`, answered as the caller's own.
    pub fn of(view: EventView) -> Self {
        Self(view)
    }
}

impl IntoResponse for Personal {
    fn into_response(self) -> Response {
        let private = self.0.online_url.is_some();
        let mut resp = JsonResponse(self.0).into_response();
        if private {
            resp.headers_mut().insert(header::CACHE_CONTROL, http::HeaderValue::from_static("private, no-store"));
        }
        resp
    }
}

/// Every failure is a problem: Keel's errors (database, outbox, upstream) convert into one
/// with `?`, their causes logged, never sent.
type Result<T, E = Problem> = std::result::Result<T, E>;

/// `POST /api/v1/events`: a new draft of the caller's.
async fn create(State(st): State<AppState>, caller: Caller, Json(body): Json<NewEvent>) -> Result<Response> {
    if st.require_verified_email && !caller.verified && !caller.admin {
        return Err(Problem::new(StatusCode::FORBIDDEN, "email-unverified", "E-mail address not verified")
            .code("email_unverified")
            .detail("confirm your e-mail address first: follow the link in the mail, or ask for a new one"));
    }
    let f = crate::model::validate_new(body)?;
    let now = to_micros(now());
    let event = Event {
        id: Uuid::now_v7(),
        organizer_id: caller.id,
        title: f.title,
        description: f.description,
        city: f.city,
        category: f.category,
        venue: f.venue,
        time_zone: f.time_zone,
        online_url: f.online_url,
        cover: None,
        starts_at: f.starts_at,
        ends_at: f.ends_at,
        capacity: f.capacity,
        status: Status::Draft,
        published_at: None,
        status_reason: None,
        hidden: false,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    let mut tx = st.db.begin_write().await?;
    store::insert(&st.db, &mut tx, &event).await?;
    st.db.commit(tx).await?;
    st.metrics.count(Change::Created, false);
    let location = format!("/api/v1/events/{}", event.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Personal(event.view_for(Some(&caller)))).into_response())
}

/// `GET /api/v1/events/{id}`: public once published; a draft only to its organizer (404 to
/// anyone else).
async fn show(State(st): State<AppState>, caller: Option<Caller>, Path(id): Path<Uuid>) -> Result<Personal> {
    match store::get(&st.db, id).await? {
        Some(e) if e.visible_to(caller.as_ref()) => Ok(Personal(e.view_for(caller.as_ref()))),
        _ => Err(Problem::not_found()),
    }
}

/// The outcome of a change: what to write, and which event announces it.
#[expect(clippy::large_enum_variant, reason = "one short-lived value per change, on the stack")]
enum Plan {
    /// Nothing changes (a patch equal to the current state).
    Unchanged,
    /// Write these fields, status and status reason, then enqueue `emit`.
    Write { fields: Fields, status: Status, reason: Option<String>, emit: Emit },
}

/// Which catalogue event a change enqueues.
#[derive(Clone, Copy)]
enum Emit {
    Nothing,
    Published,
    Updated,
    Canceled,
    Unpublished,
}

fn fields_of(e: &Event) -> Fields {
    Fields {
        title: e.title.clone(),
        description: e.description.clone(),
        city: e.city.clone(),
        category: e.category.clone(),
        venue: e.venue.clone(),
        time_zone: e.time_zone.clone(),
        online_url: e.online_url.clone(),
        starts_at: e.starts_at,
        ends_at: e.ends_at,
        capacity: e.capacity,
    }
}

/// Locks and reads the event, lets `plan` check it and decide (at the current time), and writes
/// the change with its event in the same transaction.
async fn change(st: &AppState, id: Uuid, plan: impl FnOnce(&Event, i64) -> Result<Plan>) -> Result<Event> {
    change_recorded(st, id, None, plan).await
}

/// [`change`], also enqueueing `record` (a moderator's action, for the audit log) in the
/// transaction when the change is written.
async fn change_recorded(
    st: &AppState,
    id: Uuid,
    record: Option<ModerationRecorded>,
    plan: impl FnOnce(&Event, i64) -> Result<Plan>,
) -> Result<Event> {
    let mut tx = st.db.begin_write().await?;
    // Dropping `tx` on any early return rolls it back and releases the lock.
    let Some(current) = store::get_for_update(&st.db, &mut tx, id).await? else {
        return Err(Problem::not_found());
    };
    let now = to_micros(now());
    let (fields, status, reason, emit) = match plan(&current, now)? {
        Plan::Unchanged => return Ok(current),
        Plan::Write { fields, status, reason, emit } => (fields, status, reason, emit),
    };
    let Some(new) = store::update(&st.db, &mut tx, &current, &fields, (status, reason), now).await? else {
        return Err(conflict("concurrent_change", "the event was changed by another request at the same time; retry"));
    };
    match emit {
        Emit::Nothing => {}
        Emit::Published => {
            st.outbox.enqueue_event(&mut tx, EVENTS_TOPIC, &EventPublished(new.snapshot())).await?;
        }
        Emit::Updated => {
            st.outbox.enqueue_event(&mut tx, EVENTS_TOPIC, &EventUpdated(new.snapshot())).await?;
        }
        Emit::Canceled => {
            st.outbox.enqueue_event(&mut tx, EVENTS_TOPIC, &new.canceled()).await?;
        }
        Emit::Unpublished => {
            st.outbox.enqueue_event(&mut tx, EVENTS_TOPIC, &new.unpublished()).await?;
        }
    }
    if let Some(record) = &record {
        st.outbox.enqueue_event(&mut tx, MODERATION_TOPIC, record).await?;
    }
    st.db.commit(tx).await?;
    if !matches!(emit, Emit::Nothing) || record.is_some() {
        st.outbox.wake();
    }
    let change = match emit {
        // A draft canceled announces nothing (nobody could join it), but it was canceled.
        Emit::Nothing if new.status == Status::Canceled && current.status != Status::Canceled => Some(Change::Canceled),
        Emit::Nothing => None,
        Emit::Published => Some(Change::Published),
        Emit::Updated => Some(Change::Updated),
        Emit::Canceled => Some(Change::Canceled),
        Emit::Unpublished => Some(Change::Unpublished),
    };
    if let Some(change) = change {
        st.metrics.count(change, record.is_some());
    }
    Ok(new)
}

/// `PATCH /api/v1/events/{id}`: changes any field (organizer only; not once canceled or over).
/// A change to a published event announces `event.updated` with the full new state.
async fn update(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(patch): Json<EventPatch>,
) -> Result<Personal> {
    let event = change(&st, id, |current, now| {
        current.check_organizer(&caller)?;
        current.check_editable(now)?;
        let fields = crate::model::apply_patch(patch, current)?;
        if fields.same_as(current) {
            return Ok(Plan::Unchanged);
        }
        let emit = if current.status == Status::Published { Emit::Updated } else { Emit::Nothing };
        Ok(Plan::Write { fields, status: current.status, reason: current.status_reason.clone(), emit })
    })
    .await?;
    Ok(Personal(event.view_for(Some(&caller))))
}

/// `POST /api/v1/events/{id}/publish`: a draft that has not started becomes public
/// (`event.published`).
async fn publish(State(st): State<AppState>, caller: Caller, Path(id): Path<Uuid>) -> Result<Personal> {
    let event = change(&st, id, |current, now| {
        current.check_organizer(&caller)?;
        current.check_publishable(now)?;
        Ok(Plan::Write { fields: fields_of(current), status: Status::Published, reason: None, emit: Emit::Published })
    })
    .await?;
    Ok(Personal(event.view_for(Some(&caller))))
}

/// Checks who may call off `current` and that a moderator acting on someone else's event gave
/// a reason; `Ok(true)` when moderating.
fn moderation(current: &Event, caller: &Caller, reason: Option<&String>, action: &str) -> Result<bool, Problem> {
    let moderating = current.check_can_moderate(caller)?;
    if moderating && reason.is_none() {
        return Err(validate::invalid("reason", &format!("is required to {action} someone else's event")));
    }
    Ok(moderating)
}

/// What the audit log keeps of a moderator's `action` on `event`.
fn moderation_record(caller: &Caller, action: &str, event: &Event, reason: Option<&String>) -> ModerationRecorded {
    ModerationRecorded {
        actor: caller.id,
        action: action.to_owned(),
        target: format!("event:{}", event.id),
        reason: reason.cloned(),
        details: serde_json::json!({ "organizer_id": event.organizer_id, "title": event.title }),
        at: now(),
    }
}

/// How an event is called off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallOff {
    Cancel,
    Unpublish,
}

impl CallOff {
    /// The verb in messages, and the action's name in the audit log.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Self::Cancel => ("cancel", "event.cancel"),
            Self::Unpublish => ("unpublish", "event.unpublish"),
        }
    }

    /// Checks `current` may be called off so at `now` and says what to write.
    fn plan(self, current: &Event, now: i64, reason: Option<String>) -> Result<Plan> {
        match self {
            Self::Cancel => {
                current.check_cancelable(now)?;
                let emit = if current.status == Status::Published { Emit::Canceled } else { Emit::Nothing };
                Ok(Plan::Write { fields: fields_of(current), status: Status::Canceled, reason, emit })
            }
            Self::Unpublish => {
                current.check_unpublishable(now)?;
                Ok(Plan::Write { fields: fields_of(current), status: Status::Draft, reason, emit: Emit::Unpublished })
            }
        }
    }
}

/// Cancels or unpublishes event `id` for `caller` with the reason in `body`: its organizer, or a
/// moderator or admin (any event, with a reason, recorded for the audit log). An organizer's
/// unpublish is refused while anyone holds a seat or waits (the joins service is asked).
async fn call_off(st: &AppState, caller: &Caller, id: Uuid, body: Option<ReasonBody>, how: CallOff) -> Result<Event> {
    let reason = parse_reason(body.unwrap_or_default().reason.as_deref())?;
    let (verb, action) = how.names();
    let Some(current) = store::get(&st.db, id).await? else {
        return Err(Problem::not_found());
    };
    // The organizer never changes: who is moderating is known before the lock.
    let moderating = moderation(&current, caller, reason.as_ref(), verb)?;
    if how == CallOff::Unpublish && !moderating {
        current.check_unpublishable(to_micros(now()))?;
        if anyone_joined(st, id).await? {
            return Err(conflict(
                "event_has_participants",
                "people have joined this event: it cannot go back to draft; cancel it instead",
            ));
        }
    }
    let record = moderating.then(|| moderation_record(caller, action, &current, reason.as_ref()));
    let event = change_recorded(st, id, record, |current, now| {
        moderation(current, caller, reason.as_ref(), verb)?;
        how.plan(current, now, reason)
    })
    .await?;
    if moderating {
        tracing::info!(event_id = %event.id, moderator = %caller.id, action, "a moderator acted on another user's event");
    }
    Ok(event)
}

/// `POST /api/v1/events/{id}/cancel`, optionally `{reason}`: the organizer, or a moderator or
/// admin (any event, with a reason), calls the event off. A published event announces
/// `event.canceled` with the reason, which reaches its participants; a draft was never public
/// and announces nothing.
async fn cancel(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    OptionalJson(body): OptionalJson<ReasonBody>,
) -> Result<Personal> {
    Ok(Personal(call_off(&st, &caller, id, body, CallOff::Cancel).await?.view_for(Some(&caller))))
}

/// Whether anyone holds a seat or waits in `event`, as the joins service knows it (an event it
/// has not heard of has no one yet).
async fn anyone_joined(st: &AppState, event: Uuid) -> Result<bool> {
    #[derive(Deserialize)]
    struct Counts {
        confirmed: i64,
        waitlisted: i64,
    }
    let req = client::Request::new(http::Method::GET, format!("/api/v1/events/{event}/counts"))
        .header(header::ACCEPT, http::HeaderValue::from_static("application/json"))
        .timeout(UPSTREAM_TIMEOUT);
    let resp = st.joins.send(req).await?;
    match resp.status {
        StatusCode::NOT_FOUND => Ok(false),
        StatusCode::OK => {
            let c: Counts = resp.json()?;
            Ok(c.confirmed + c.waitlisted > 0)
        }
        other => {
            tracing::warn!(status = other.as_u16(), "the joins service could not say whether anyone joined");
            Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "service-degraded", "Service unavailable")
                .code("SERVICE_DEGRADED")
                .detail("whether anyone joined cannot be checked right now; try again shortly"))
        }
    }
}

/// `GET /api/v1/events/{id}/online-link`: an online event's join link, to its organizer, a
/// moderator or an admin, and to a user who holds a seat (the joins service is asked with the
/// caller's own bearer); 403 `seat_required` to anyone else who may see the event, 404 when
/// the event is not online or not visible to the caller, 409 `event_canceled` once it is called
/// off. Never stored by caches.
async fn online_link(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    headers: http::HeaderMap,
) -> Result<Response> {
    let Some(event) = store::get(&st.db, id).await?.filter(|e| e.visible_to(Some(&caller))) else {
        return Err(Problem::not_found());
    };
    let Some(url) = event.online_url.clone() else {
        return Err(Problem::not_found().detail("the event is not online"));
    };
    if event.status == Status::Canceled {
        return Err(conflict("event_canceled", "the event was called off"));
    }
    if !event.link_without_seat(&caller) && !holds_seat(&st, id, headers.get(header::AUTHORIZATION)).await? {
        return Err(crate::model::forbidden("the join link is for the people who hold a seat").code("seat_required"));
    }
    let mut resp = JsonResponse(cityevents_api::events::OnlineLink { url }).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, http::HeaderValue::from_static("private, no-store"));
    Ok(resp)
}

/// Whether the bearer of `authorization` holds a seat at `event`, as the joins service says.
async fn holds_seat(st: &AppState, event: Uuid, authorization: Option<&http::HeaderValue>) -> Result<bool> {
    #[derive(Deserialize)]
    struct Mine {
        status: String,
    }
    let Some(authorization) = authorization else { return Ok(false) };
    let req = client::Request::new(http::Method::GET, format!("/api/v1/events/{event}/join"))
        .header(header::ACCEPT, http::HeaderValue::from_static("application/json"))
        .header(header::AUTHORIZATION, authorization.clone())
        .timeout(UPSTREAM_TIMEOUT);
    let resp = st.joins.send(req).await?;
    match resp.status {
        StatusCode::NOT_FOUND => Ok(false),
        StatusCode::OK => Ok(resp.json::<Mine>()?.status == "confirmed"),
        other => {
            tracing::warn!(status = other.as_u16(), "the joins service could not say whether the caller holds a seat");
            Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "service-degraded", "Service unavailable")
                .code("SERVICE_DEGRADED")
                .detail("whether you hold a seat cannot be checked right now; try again shortly"))
        }
    }
}

/// Longest wait for the joins service's answer (each attempt; the client retries once).
const UPSTREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `POST /api/v1/events/{id}/unpublish`, optionally `{reason}`: a published event that has not
/// ended goes back to draft (private again; `event.unpublished`). Its organizer may while nobody
/// has joined (else 409 `event_has_participants`: cancel it instead); a moderator or admin may
/// whatever the joins, with a reason, and every join is then canceled (reason
/// `event_unpublished`). A join that slips in between the check and the change is canceled the
/// same way.
async fn unpublish(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    OptionalJson(body): OptionalJson<ReasonBody>,
) -> Result<Personal> {
    Ok(Personal(call_off(&st, &caller, id, body, CallOff::Unpublish).await?.view_for(Some(&caller))))
}

/// `GET /api/v1/events`: published events, filtered, sorted and keyset-paged.
async fn list_public(
    State(st): State<AppState>,
    Query(q): Query<EventsParams>,
) -> Result<JsonResponse<Paginated<EventView>>> {
    let list = q.validate()?;
    let bounds = st.search.bounds;
    let rows = if list.search.is_some() {
        let Ok(_slot) = st.search.slots.acquire().await else {
            st.metrics.search(SearchOutcome::Busy);
            return Err(search_busy());
        };
        let result = store::list_public(&st.db, &list, bounds).await;
        st.metrics.search(match &result {
            Ok(_) => SearchOutcome::Ok,
            Err(DataError::StatementTimeout { .. }) => SearchOutcome::Timeout,
            Err(_) => SearchOutcome::Error,
        });
        result?
    } else {
        store::list_public(&st.db, &list, bounds).await?
    };
    let sort = list.sort;
    let tag = list::tag(sort, list.search.as_ref());
    let page = Paginated::from_rows(rows, list.limit, |(e, key)| list::cursor(&tag, *key, e.id));
    Ok(JsonResponse(page.map(|(e, _)| e.view())))
}

/// `GET /api/v1/me/events`: the caller's events, every status, newest first.
async fn list_mine(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<MyEventsParams>,
) -> Result<JsonResponse<Paginated<EventView>>> {
    let list = q.validate()?;
    let rows = store::list_mine(&st.db, caller.id, &list).await?;
    let page = Paginated::from_rows(rows, list.limit, |e| list::cursor(MINE, e.created_at, e.id));
    Ok(JsonResponse(page.map(|e| e.view_for(Some(&caller)))))
}

/// `GET /api/v1/meta/cities?q=`: cities of published events that have not ended, whose name
/// starts with `q` (case-insensitive; every city without it), most events first.
async fn cities(State(st): State<AppState>, Query(q): Query<CitiesParams>) -> Result<JsonResponse<Cities>> {
    let ask = q.validate()?;
    let now = cityevents_common::time::to_micros(cityevents_common::time::now());
    let items = store::cities(&st.db, &ask, now).await?;
    Ok(JsonResponse(Cities { items }))
}

/// `POST /api/v1/events/batch`: up to 100 events by id in one call; unknown ids and drafts of
/// other users are simply absent.
async fn batch(
    State(st): State<AppState>,
    caller: Option<Caller>,
    Json(body): Json<BatchRequest>,
) -> Result<JsonResponse<BatchResponse>> {
    if body.ids.is_empty() || body.ids.len() > MAX_BATCH {
        return Err(validate::invalid("ids", &format!("must hold 1 to {MAX_BATCH} ids")));
    }
    let mut ids = Vec::with_capacity(body.ids.len());
    for (i, raw) in body.ids.iter().enumerate() {
        ids.push(validate::uuid(&format!("ids[{i}]"), raw)?);
    }
    ids.sort_unstable();
    ids.dedup();
    let events = store::get_many(&st.db, &ids)
        .await?
        .into_iter()
        .filter(|e| e.visible_to(caller.as_ref()))
        .map(|e| (e.id.to_string(), e.view()))
        .collect();
    Ok(JsonResponse(BatchResponse { events }))
}
