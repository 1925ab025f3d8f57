//! An organizer's public page (`/organizers/{id}`): who they are (name, bio, since when), how
//! many follow them, *Follow* / *Unfollow*, their upcoming events and their last ten past ones.
//! Also the profile form of the account page (`POST /account/profile`).

use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, State};
use axum::response::{IntoResponse, Redirect};
use cityevents_api::auth::Profile;
use cityevents_api::gateway::EventPage;
use cityevents_api::notifications::Followers;
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::Site;
use super::events::{Card, seats_line};
use super::pages::{self, Layout, Page, PageResult, PathId, render};
use crate::routes::Upstream;

/// Upcoming events listed (the rest are a search away).
const UPCOMING: u32 = 20;
/// Past events listed.
const PAST: u32 = 10;

#[derive(Template)]
#[template(path = "web/organizer.html")]
struct OrganizerPage {
    layout: Layout,
    profile: Profile,
    since: String,
    bio: Vec<String>,
    /// `None` when the count is not known right now.
    followers: Option<u64>,
    /// `Some(following)` for a signed-in viewer who is not the organizer.
    follow: Option<bool>,
    upcoming: Vec<Card>,
    past: Vec<Card>,
    /// The site's origin, for the picture's absolute address (`og:image`).
    origin: String,
}

impl OrganizerPage {
    /// Whether the page offers to report the person: to anyone but themselves.
    fn reportable(&self) -> bool {
        self.layout.user.as_ref().is_none_or(|u| u.id != self.profile.id)
    }
}

/// The organizer's published events on one side of now.
async fn events(site: &Site, page: &Page, id: Uuid, upcoming: bool) -> Vec<Card> {
    let now = pages::machine_time(time::OffsetDateTime::now_utc());
    let path = if upcoming {
        format!("/api/v1/events?organizer={id}&exclude_expired=true&sort=starts_at&limit={UPCOMING}")
    } else {
        let to: String = form_urlencoded::byte_serialize(now.as_bytes()).collect();
        format!("/api/v1/events?organizer={id}&to={to}&sort=-starts_at&limit={PAST}")
    };
    let Ok(mut answer) = site.get::<Value>(Upstream::Events, &path, page.token(), &page.address).await else {
        return Vec::new();
    };
    if upcoming && let Some(items) = answer.get_mut("items").and_then(Value::as_array_mut) {
        crate::compose::seats(&site.gw, items).await;
    }
    let Ok(listed) = serde_json::from_value::<EventPage>(answer) else { return Vec::new() };
    listed
        .items
        .iter()
        // The past side holds events that started before now and are not over: those are upcoming.
        .filter(|item| upcoming || item.event.ends_at <= time::OffsetDateTime::now_utc())
        .map(|item| {
            let (seats, full) = seats_line(&item.seats);
            Card::new(page, &item.event, &seats, full)
        })
        .collect()
}

/// `GET /organizers/{id}`.
pub(crate) async fn show(State(site): State<Arc<Site>>, page: Page, id: PathId) -> PageResult {
    let Ok(keel::http::extract::Path(id)) = id else { return Ok(pages::not_found(&page)) };
    let back = format!("/organizers/{id}");
    let profile_path = format!("/api/v1/profiles/{id}");
    let followers_path = format!("/api/v1/organizers/{id}/followers");
    let follow_path = format!("/api/v1/organizers/{id}/follow");
    let me = page.viewer.user().map(|u| u.id);
    let (profile, followers, follow, upcoming, past) = tokio::join!(
        site.get::<Profile>(Upstream::Auth, &profile_path, None, &page.address),
        site.get::<Followers>(Upstream::Notifier, &followers_path, None, &page.address),
        async {
            match (page.token(), me) {
                (Some(token), Some(me)) if me != id => Some(
                    site.send(Upstream::Notifier, Method::GET, &follow_path, Some(token), None, &page.address, &[])
                        .await
                        .is_ok(),
                ),
                _ => None,
            }
        },
        events(&site, &page, id, true),
        events(&site, &page, id, false),
    );
    let profile = match profile {
        Ok(p) => p,
        Err(f) => return Ok(pages::failed(&page, &f, &back)),
    };
    let t = OrganizerPage {
        layout: page.layout(&site, profile.name.clone()).await,
        since: profile
            .member_since
            .format(time::macros::format_description!("[month repr:long] [year]"))
            .unwrap_or_default(),
        bio: profile.bio.split("\n\n").map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect(),
        profile,
        followers: followers.ok().map(|f| f.followers),
        follow,
        upcoming,
        past,
        origin: site.gw.origin.of_host(page.host.as_ref()),
    };
    Ok(render(StatusCode::OK, &t))
}

/// `POST /organizers/{id}/{follow,unfollow}`.
pub(crate) async fn act(
    State(site): State<Arc<Site>>,
    page: Page,
    axum::extract::Path((id, action)): axum::extract::Path<(String, String)>,
) -> PageResult {
    let Ok(id) = Uuid::parse_str(&id) else { return Ok(pages::not_found(&page)) };
    let back = format!("/organizers/{id}");
    let token = page.signed(&back)?;
    let (method, notice) = match action.as_str() {
        "follow" => (Method::PUT, "followed"),
        "unfollow" => (Method::DELETE, "unfollowed"),
        _ => return Ok(pages::not_found(&page)),
    };
    let path = format!("/api/v1/organizers/{id}/follow");
    let body = json!({});
    let body = (method == Method::PUT).then_some(&body);
    Ok(match site.send(Upstream::Notifier, method, &path, Some(token), body, &page.address, &[]).await {
        Ok(_) => Redirect::to(&format!("{back}?notice={notice}")).into_response(),
        Err(f) => pages::failed(&page, &f, &back),
    })
}

/// The account page's profile form.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ProfileForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    bio: String,
    #[serde(default)]
    city: String,
}

/// `POST /account/profile`.
pub(crate) async fn save_profile(
    State(site): State<Arc<Site>>,
    page: Page,
    Form(form): Form<ProfileForm>,
) -> PageResult {
    let token = page.signed("/account")?;
    let bio = form.bio.replace("\r\n", "\n");
    let body = json!({ "name": form.name, "bio": bio, "city": form.city });
    let sent = site
        .send(Upstream::Auth, Method::PATCH, "/api/v1/me/profile", Some(token), Some(&body), &page.address, &[])
        .await;
    Ok(match sent {
        Ok(_) => {
            // The header shows the name from the session: refresh it at the next page.
            if let Some(signed) = &page.viewer.signed {
                site.sessions.forget(&signed.refresh).await;
            }
            if let Some(user) = page.viewer.user() {
                site.profiles.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&user.id);
            }
            Redirect::to("/account?notice=profile_saved").into_response()
        }
        Err(f) if f.status == StatusCode::BAD_REQUEST => {
            super::settings::profile_errors(&site, &page, &f, (form.name, bio, form.city)).await
        }
        Err(f) => pages::failed(&page, &f, "/account"),
    })
}

/// How long a profile is kept ([`profile`]).
const PROFILE_KEPT: std::time::Duration = std::time::Duration::from_secs(60);
/// Most profiles kept per instance.
const PROFILES_KEPT: usize = 10_000;

/// `id`'s public profile, kept a [`PROFILE_KEPT`] per instance (a change shows within it; the
/// person's own is dropped when they save it here).
pub(crate) async fn profile(site: &Site, page: &Page, id: Uuid) -> Option<Profile> {
    let lock = || site.profiles.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((at, p)) = lock().get(&id)
        && at.elapsed() < PROFILE_KEPT
    {
        return Some(p.clone());
    }
    let path = format!("/api/v1/profiles/{id}");
    let p = site.get::<Profile>(Upstream::Auth, &path, None, &page.address).await.ok()?;
    let mut kept = lock();
    if kept.len() >= PROFILES_KEPT {
        kept.retain(|_, (at, _)| at.elapsed() < PROFILE_KEPT);
        if kept.len() >= PROFILES_KEPT {
            kept.clear();
        }
    }
    kept.insert(id, (std::time::Instant::now(), p.clone()));
    Some(p)
}
