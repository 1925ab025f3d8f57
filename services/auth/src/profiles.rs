//! Public profiles: what anyone may see of a person on their organizer page (name, a few words
//! about them, since when they are a member), and the person's own changes to it.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /api/v1/profiles/{id}` | anyone | `{id, name, bio, city, member_since}`; 404 for an unknown or banned account |
//! | `PATCH /api/v1/me/profile` | the user | `{name?, bio?, city?}` → the profile; a new name is announced to the notifier (`account.contact`) |
//! | `PUT /api/v1/me/avatar` | the user | a picture (multipart `file`: JPEG, PNG or WebP, ≤ 5 MiB) → the profile with its `avatar` |
//! | `DELETE /api/v1/me/avatar` | the user | no picture (204); its files deleted at once |
//! | `GET /api/v1/profiles/{id}/avatar/{hash}/{small,large}.jpg` | anyone | a 96×96 or 400×400 JPEG, cacheable for good |
//!
//! Avatars go through `cityevents_media` like the events service's covers: checked by content,
//! bounded, cleaned of metadata, resized, stored under `avatars/<id>/<hash>/` in the object store
//! (`storage.*`); a removed or taken-down picture's files are deleted at once, and any other
//! files no account shows (a replaced picture's) swept by `avatars-sweep` after
//! `app.pictures.sweep_grace`. Served without a database read, like covers: the URL is on the
//! profile only.

use axum::extract::State;
use cityevents_api::auth::{Avatar, MAX_BIO, Profile, ProfilePatch};
use cityevents_common::time::from_micros;
use keel::http::Problem;
use keel::http::extract::{Json, Path};
use keel::security::jwt::{Auth, Claims};
use uuid::Uuid;

use crate::accounts::validate_name;
use crate::error::FieldError;
use crate::mail::contact_of;
use crate::routes::AppState;
use crate::store::accounts as store;

/// Checks a bio: at most [`MAX_BIO`] characters, no control characters but line breaks and tabs
/// (which become spaces).
pub(crate) fn validate_bio(raw: &str) -> Result<String, FieldError> {
    let bio = raw.trim().replace("\r\n", "\n").replace('\t', " ");
    if bio.chars().count() > MAX_BIO {
        return Err(FieldError::new("bio", format!("must be at most {MAX_BIO} characters")));
    }
    if bio.chars().any(|c| c.is_control() && c != '\n') {
        return Err(FieldError::new("bio", "must not contain control characters"));
    }
    Ok(bio)
}

fn not_found() -> Problem {
    Problem::not_found().detail("no such person")
}

/// What anyone may see of `id`, from its row.
fn public(id: Uuid, p: store::ProfileRow) -> Profile {
    Profile {
        id,
        avatar: p.avatar.as_deref().map(|h| Avatar::of(id, h)),
        name: p.name,
        bio: p.bio,
        city: p.city,
        member_since: from_micros(p.created_at),
    }
}

/// `GET /api/v1/profiles/{id}`.
pub(crate) async fn show(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<axum::Json<Profile>, Problem> {
    match store::profile(&s.accounts.db, id).await? {
        Some(p) if !p.banned => Ok(axum::Json(public(id, p))),
        _ => Err(not_found()),
    }
}

/// `PATCH /api/v1/me/profile`.
pub(crate) async fn update(
    State(s): State<AppState>,
    Auth(claims): Auth<Claims>,
    Json(patch): Json<ProfilePatch>,
) -> Result<axum::Json<Profile>, Problem> {
    let id = Uuid::parse_str(&claims.sub).map_err(|_| not_found())?;
    let name = patch.name.as_deref().map(validate_name).transpose();
    let bio = patch.bio.as_deref().map(validate_bio).transpose();
    let city = patch.city.as_deref().map(validate_city).transpose();
    let (name, bio, city) = match (name, bio, city) {
        (Ok(n), Ok(b), Ok(c)) => (n, b, c),
        (n, b, c) => {
            // Every bad field at once.
            let mut errors = [n.err(), b.err(), c.err()].into_iter().flatten();
            let first = errors.next().map_or_else(|| Problem::bad_request("check the fields"), Problem::from);
            return Err(errors.fold(first, |p, e| p.field(e.field, &e.message)));
        }
    };
    let mut tx = s.accounts.db.begin_write().await?;
    // Locked first: a concurrent change of another field is applied after this one, not lost.
    let old = store::profile_for_update(&s.accounts.db, &mut tx, id).await?.ok_or_else(not_found)?;
    let row = s.accounts.by_id_on(&mut tx, id).await?.ok_or_else(not_found)?;
    let name = name.unwrap_or_else(|| row.name.clone());
    let bio = bio.unwrap_or(old.bio);
    let city = city.unwrap_or(old.city);
    store::set_profile(&s.accounts.db, &mut tx, id, (&name, &bio, &city)).await?;
    if name != row.name {
        // The notifier greets people by the name it was told.
        let mut user = s.accounts.user(&row)?;
        user.name.clone_from(&name);
        s.mail.contact(&mut tx, &contact_of(&user)).await?;
    }
    s.accounts.db.commit(tx).await?;
    let avatar = old.avatar.as_deref().map(|h| Avatar::of(id, h));
    Ok(axum::Json(Profile { id, name, bio, city, member_since: from_micros(old.created_at), avatar }))
}

/// The object store's folder of avatars.
pub(crate) const AVATARS: &str = "avatars";

/// `PUT /api/v1/me/avatar`: a new picture from the form's `file` field; the profile. The upload
/// is read whole before the caller is checked: a refusal mid-upload would reach the client as a
/// reset connection.
pub(crate) async fn put_avatar(
    State(s): State<AppState>,
    claims: Result<Auth<Claims>, keel::security::jwt::AuthRejection>,
    form: axum::extract::Multipart,
) -> Result<axum::Json<Profile>, Problem> {
    let upload = cityevents_media::read_upload(form, cityevents_api::limits::MAX_PICTURE).await;
    let Auth(claims) = claims.map_err(Problem::from)?;
    let id = Uuid::parse_str(&claims.sub).map_err(|_| not_found())?;
    store::profile(&s.accounts.db, id).await?.filter(|p| !p.banned).ok_or_else(not_found)?;
    let processed = s.pictures.pipeline.process(upload?, cityevents_media::AVATAR).await.map_err(|e| e.problem())?;
    cityevents_media::store(&s.pictures.store, AVATARS, &id.to_string(), &processed).await?;
    store::set_avatar(&s.accounts.db, id, Some(&processed.hash)).await?;
    let p = store::profile(&s.accounts.db, id).await?.ok_or_else(not_found)?;
    Ok(axum::Json(public(id, p)))
}

/// `DELETE /api/v1/me/avatar`: no picture (204, also when there was none).
pub(crate) async fn delete_avatar(
    State(s): State<AppState>,
    Auth(claims): Auth<Claims>,
) -> Result<http::StatusCode, Problem> {
    let id = Uuid::parse_str(&claims.sub).map_err(|_| not_found())?;
    let shown = store::profile(&s.accounts.db, id).await?.and_then(|p| p.avatar);
    store::set_avatar(&s.accounts.db, id, None).await?;
    forget_files(&s, id, shown.as_deref()).await;
    Ok(http::StatusCode::NO_CONTENT)
}

/// Deletes the files of `id`'s picture `hash` now, so its URLs answer 404 at once (copies that
/// browsers or shared caches keep are beyond reach). A failure is logged: `avatars-sweep`
/// deletes them later.
pub(crate) async fn forget_files(s: &AppState, id: Uuid, hash: Option<&str>) {
    let Some(hash) = hash else { return };
    let owner = id.to_string();
    if let Err(e) = cityevents_media::delete(&s.pictures.store, AVATARS, &owner, hash, cityevents_media::AVATAR).await {
        tracing::warn!(error = %e, user_id = %id, "cannot delete a removed avatar's files now: the sweep will");
    }
}

/// `GET /api/v1/profiles/{id}/avatar/{hash}/{file}`: one size of an avatar.
pub(crate) async fn avatar(
    State(s): State<AppState>,
    Path((id, hash, file)): Path<(Uuid, String, String)>,
) -> axum::response::Response {
    let Some(variant) = cityevents_media::variant_of(&file, cityevents_media::AVATAR) else {
        return cityevents_media::not_found();
    };
    if !cityevents_media::is_hash(&hash) {
        return cityevents_media::not_found();
    }
    cityevents_media::answer(&s.pictures.store, &cityevents_media::key(AVATARS, &id.to_string(), &hash, variant.name))
        .await
}

/// The `avatars-sweep` worker's run: deletes avatar files no account shows (replaced or
/// removed ones).
pub(crate) async fn sweep(
    db: keel::data::Db,
    store: keel::storage::Store,
    grace: std::time::Duration,
) -> Result<(), keel::workers::RunError> {
    if !db.is_available() {
        return Ok(());
    }
    let swept = cityevents_media::sweep(&store, AVATARS, grace, |owners| {
        let db = db.clone();
        async move {
            let ids: Vec<Uuid> = owners.iter().filter_map(|o| Uuid::parse_str(o).ok()).collect();
            let found = store::avatars(&db, &ids).await?;
            Ok(found.into_iter().map(|(id, a)| (id.to_string(), a)).collect())
        }
    })
    .await?;
    if swept.deleted > 0 {
        tracing::info!(seen = swept.seen, deleted = swept.deleted, "avatar files no account shows deleted");
    }
    Ok(())
}

/// Checks a home city: at most 80 characters, no control characters (may be empty).
pub(crate) fn validate_city(raw: &str) -> Result<String, FieldError> {
    let city = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    if city.chars().count() > cityevents_api::limits::MAX_CITY {
        return Err(FieldError::new(
            "city",
            format!("must be at most {} characters", cityevents_api::limits::MAX_CITY),
        ));
    }
    if city.chars().any(char::is_control) {
        return Err(FieldError::new("city", "must not contain control characters"));
    }
    Ok(city)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bio_is_bounded_and_keeps_its_line_breaks() {
        assert_eq!(
            validate_bio("  Jazz lover.\r\nOrganizes on Fridays. ").unwrap(),
            "Jazz lover.\nOrganizes on Fridays."
        );
        assert_eq!(validate_bio("").unwrap(), "");
        assert_eq!(validate_bio(&"é".repeat(500)).unwrap().chars().count(), 500);
        assert_eq!(validate_bio(&"é".repeat(501)).unwrap_err().field, "bio");
        assert_eq!(validate_bio("bell\u{7}").unwrap_err().field, "bio");
    }
}
