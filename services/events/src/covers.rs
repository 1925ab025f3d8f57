//! Cover pictures (see `cityevents_media`): `PUT /api/v1/events/{id}/cover` (multipart, field
//! `file`) and `DELETE` by the organizer (`DELETE` also by a moderator or admin, whatever the
//! event's state); `GET /api/v1/events/{id}/cover/{hash}/{card|wide}.jpg`
//! for anyone, cacheable for good.
//!
//! The files live in the object store under `covers/<event id>/<hash>/`. A new cover is stored
//! first and recorded after, so the event never names files that are not there; what is no
//! longer named (a replaced or removed cover, an upload whose recording failed) is deleted by
//! the `covers-sweep` worker once older than `app.pictures.sweep_grace`. A cover's URL holds
//! its content hash (64 bits): it is not listed anywhere but on the event, so a draft's cover
//! is served to whoever was shown the draft, without a database read per picture.

use std::time::Duration;

use axum::extract::{Multipart, State};
use axum::response::{IntoResponse, Response};
use cityevents_common::time::{now, to_micros};
use http::StatusCode;
use keel::data::Db;
use keel::http::Problem;
use keel::http::extract::Path;
use keel::storage::Store;
use uuid::Uuid;

use crate::api::{AppState, Personal};
use crate::model::Caller;
use crate::store;

/// The object store's folder of covers.
pub const KIND: &str = "covers";

type Result<T, E = Problem> = std::result::Result<T, E>;

/// The event `caller` may change the cover of: theirs, not canceled, not over.
async fn editable(st: &AppState, caller: &Caller, id: Uuid) -> Result<crate::model::Event> {
    let Some(event) = store::get(&st.db, id).await?.filter(|e| e.visible_to(Some(caller))) else {
        return Err(Problem::not_found());
    };
    event.check_organizer(caller)?;
    event.check_editable(to_micros(now()))?;
    Ok(event)
}

/// `PUT /api/v1/events/{id}/cover`: a new cover from the form's `file` field (JPEG, PNG or
/// WebP, ≤ 5 MiB); the event with its `cover`.
///
/// The upload is read (bounded by the route's limit) before the caller and the event are
/// checked: a refusal answered while the client is still sending would reach it as a reset
/// connection instead of the refusal.
pub async fn put(
    State(st): State<AppState>,
    caller: Result<Caller, Problem>,
    Path(id): Path<Uuid>,
    form: Multipart,
) -> Result<Personal> {
    let upload = cityevents_media::read_upload(form, cityevents_api::limits::MAX_PICTURE).await;
    let caller = caller?;
    editable(&st, &caller, id).await?;
    let processed = st.covers.pipeline.process(upload?, cityevents_media::COVER).await.map_err(|e| e.problem())?;
    cityevents_media::store(&st.covers.store, KIND, &id.to_string(), &processed).await?;
    // Checked again: the event may have been canceled while the picture was processed.
    editable(&st, &caller, id).await?;
    store::set_cover(&st.db, id, Some(&processed.hash), to_micros(now())).await?;
    st.metrics.picture("uploaded");
    let event = store::get(&st.db, id).await?.ok_or_else(Problem::not_found)?;
    Ok(Personal::of(event.view_for(Some(&caller))))
}

/// `DELETE /api/v1/events/{id}/cover`: no cover (204, also when there was none). The organizer
/// while the event may change; a moderator or admin whenever (a picture that breaks the rules
/// comes down, on a canceled or past event too).
pub async fn delete(State(st): State<AppState>, caller: Caller, Path(id): Path<Uuid>) -> Result<StatusCode> {
    let event = if caller.moderator || caller.admin {
        store::get(&st.db, id).await?.filter(|e| e.visible_to(Some(&caller))).ok_or_else(Problem::not_found)?
    } else {
        editable(&st, &caller, id).await?
    };
    if event.cover.is_some() {
        store::set_cover(&st.db, id, None, to_micros(now())).await?;
        st.metrics.picture("removed");
        if event.organizer_id != caller.id {
            tracing::info!(event_id = %id, moderator = %caller.id, "cover removed by a moderator");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/events/{id}/cover/{hash}/{file}`: one variant of a cover.
pub async fn get(State(st): State<AppState>, Path((id, hash, file)): Path<(Uuid, String, String)>) -> Response {
    let Some(variant) = cityevents_media::variant_of(&file, cityevents_media::COVER) else {
        return cityevents_media::not_found();
    };
    if !cityevents_media::is_hash(&hash) {
        return cityevents_media::not_found();
    }
    cityevents_media::answer(&st.covers.store, &cityevents_media::key(KIND, &id.to_string(), &hash, variant.name))
        .await
        .into_response()
}

/// The `covers-sweep` worker's run: deletes cover files no event shows (see the module docs).
pub async fn sweep(db: Db, store: Store, grace: Duration) -> Result<(), keel::workers::RunError> {
    if !db.is_available() {
        return Ok(());
    }
    let swept = cityevents_media::sweep(&store, KIND, grace, |owners| {
        let db = db.clone();
        async move {
            let ids: Vec<Uuid> = owners.iter().filter_map(|o| Uuid::parse_str(o).ok()).collect();
            let found = store::covers(&db, &ids).await?;
            Ok(found.into_iter().map(|(id, cover)| (id.to_string(), cover)).collect())
        }
    })
    .await?;
    if swept.deleted > 0 {
        tracing::info!(seen = swept.seen, deleted = swept.deleted, "cover files no event shows deleted");
    }
    Ok(())
}
