//! Following organizers: a follower is told (in the app, and by mail unless they turned it off)
//! when an organizer they follow publishes an event (see [`crate::activity`]).
//!
//! | route | who | what |
//! |---|---|---|
//! | `PUT /api/v1/organizers/{id}/follow` | user | follow: 200 `{organizer_id, since}` (a repeat answers the follow there is); 409 `cannot_follow_self`; 404 `organizer_not_found` for someone with no published event |
//! | `GET /api/v1/organizers/{id}/follow` | user | 200 the follow, 404 `not_following` |
//! | `DELETE /api/v1/organizers/{id}/follow` | user | unfollow: 204 (also when not following) |
//! | `GET /api/v1/organizers/{id}/followers` | anyone | `{followers}` |
//! | `GET /api/v1/me/following` | user | the organizers the caller follows, newest first (keyset) |

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use cityevents_api::notifications::{Follow, Followers};
use cityevents_common::time::{from_micros, now, to_micros};
use http::StatusCode;
use keel::data::Db;
use keel::http::Problem;
use keel::http::extract::Path;
use keel::http::page::{Cursor, Page, Paginated};
use keel::security::jwt::{Auth, Claims};
use uuid::Uuid;

use crate::store::follows as store;

fn caller(claims: &Claims) -> Result<Uuid, Problem> {
    // Every token Keel accepts names a user by UUID; another is no caller of ours.
    Uuid::parse_str(&claims.sub).map_err(|_| Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"))
}

fn not_following() -> Problem {
    Problem::not_found().code("not_following").detail("you do not follow this organizer")
}

/// `PUT /api/v1/organizers/{id}/follow`.
pub(crate) async fn follow(
    State(db): State<Db>,
    Auth(claims): Auth<Claims>,
    Path(organizer): Path<Uuid>,
) -> Result<Json<Follow>, Problem> {
    let me = caller(&claims)?;
    if me == organizer {
        return Err(Problem::new(StatusCode::CONFLICT, "conflict", "Conflict")
            .code("cannot_follow_self")
            .detail("you cannot follow yourself"));
    }
    if !store::is_organizer(&db, organizer).await? {
        return Err(Problem::not_found()
            .code("organizer_not_found")
            .detail("nobody by that id has published an event"));
    }
    store::follow(&db, organizer, me, to_micros(now())).await?;
    let since = store::since(&db, organizer, me).await?.ok_or_else(not_following)?;
    Ok(Json(Follow { organizer_id: organizer, since: from_micros(since) }))
}

/// `GET /api/v1/organizers/{id}/follow`.
pub(crate) async fn show(
    State(db): State<Db>,
    Auth(claims): Auth<Claims>,
    Path(organizer): Path<Uuid>,
) -> Result<Json<Follow>, Problem> {
    let since = store::since(&db, organizer, caller(&claims)?).await?.ok_or_else(not_following)?;
    Ok(Json(Follow { organizer_id: organizer, since: from_micros(since) }))
}

/// `DELETE /api/v1/organizers/{id}/follow`.
pub(crate) async fn unfollow(
    State(db): State<Db>,
    Auth(claims): Auth<Claims>,
    Path(organizer): Path<Uuid>,
) -> Result<StatusCode, Problem> {
    store::unfollow(&db, organizer, caller(&claims)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/organizers/{id}/followers`.
pub(crate) async fn followers(State(db): State<Db>, Path(organizer): Path<Uuid>) -> Result<Json<Followers>, Problem> {
    let n = store::count(&db, organizer).await?;
    Ok(Json(Followers { followers: u64::try_from(n).unwrap_or(0) }))
}

/// `GET /api/v1/me/following`.
pub(crate) async fn following(
    State(db): State<Db>,
    Auth(claims): Auth<Claims>,
    page: Page,
) -> Result<Response, Problem> {
    let after = page.after.as_ref().map(|c| (c.key, c.id.clone()));
    let rows = store::following(&db, caller(&claims)?, after, page.limit).await?;
    let page = Paginated::from_rows(rows, page.limit, |(id, at)| Cursor::new(*at, id.clone()));
    let page =
        page.map(|(id, at)| Follow { organizer_id: Uuid::parse_str(&id).unwrap_or_default(), since: from_micros(at) });
    Ok(Json(page).into_response())
}
