//! An organizer's pages: their events, creating and editing one, publishing, unpublishing and
//! canceling it, and who is in it (participants, waitlist, bans; kick and ban).

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, State};
use axum::response::{IntoResponse, Redirect, Response};
use cityevents_api::events::{Event, EventStatus};
use cityevents_api::gateway::EventPage;
use cityevents_api::joins::{BanPage, ParticipantPage};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use keel::http::extract::Path;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Site;
use super::call::Failure;
use super::events::{Card, seats_line};
use super::pages::{self, ConfirmPage, Halt, Layout, Page, PageResult, PathId, render};
use crate::routes::Upstream;

/// Most people a list on the manage page shows.
const PEOPLE: u32 = 100;

#[derive(Template)]
#[template(path = "web/my_events.html")]
struct MyEvents {
    layout: Layout,
    rows: Vec<(Card, &'static str)>,
}

fn status_label(s: EventStatus) -> &'static str {
    match s {
        EventStatus::Draft => "Draft",
        EventStatus::Published => "Published",
        EventStatus::Canceled => "Canceled",
    }
}

/// `GET /my/events`: the viewer's events, every status.
pub(crate) async fn mine(State(site): State<Arc<Site>>, page: Page) -> PageResult {
    let token = page.signed("/my/events")?;
    let path = format!("/api/v1/me/events?limit={PEOPLE}");
    let mut answer = match site.get::<Value>(Upstream::Events, &path, Some(token), &page.address).await {
        Ok(a) => a,
        Err(f) => return Ok(pages::failed(&page, &f, "/my/events")),
    };
    if let Some(items) = answer.get_mut("items").and_then(Value::as_array_mut) {
        crate::compose::seats(&site.gw, items).await;
    }
    let Ok(list) = serde_json::from_value::<EventPage>(answer) else {
        return Ok(pages::failed(&page, &Failure::unreadable(Upstream::Events), "/my/events"));
    };
    let rows = list
        .items
        .iter()
        .map(|item| {
            let (seats, full) = seats_line(&item.seats);
            (Card::new(&page, &item.event, &seats, full), status_label(item.event.status))
        })
        .collect();
    let t = MyEvents { layout: page.layout(&site, "My events").await, rows };
    Ok(render(StatusCode::OK, &t))
}

/// The fields of the event form, as typed.
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct EventForm {
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    city: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    venue: String,
    #[serde(default)]
    time_zone: String,
    #[serde(default)]
    online_url: String,
    #[serde(default)]
    starts_at: String,
    #[serde(default)]
    ends_at: String,
    #[serde(default)]
    capacity: String,
    #[serde(default)]
    key: String,
    /// `yes` once the organizer saw the warning that fewer seats than people holding one leaves
    /// those people be, and saved anyway.
    #[serde(default)]
    confirm_capacity: String,
}

impl EventForm {
    /// The form filled with `e`, times as `datetime-local` values in its zone.
    fn of(e: &Event) -> Self {
        Self {
            title: e.title.clone(),
            description: e.description.clone(),
            city: e.city.clone(),
            category: e.category.clone(),
            venue: e.venue.clone(),
            time_zone: e.time_zone.clone(),
            online_url: e.online_url.clone().unwrap_or_default(),
            starts_at: e.starts_at_local.chars().take(16).collect(),
            ends_at: e.ends_at_local.chars().take(16).collect(),
            capacity: e.capacity.to_string(),
            key: String::new(),
            confirm_capacity: String::new(),
        }
    }

    /// The fields as the API takes them; `capacity` must be a whole number (empty is 0).
    fn body(&self) -> Result<Map<String, Value>, (String, String)> {
        let capacity = match self.capacity.trim() {
            "" => 0,
            c => c
                .parse::<i64>()
                .map_err(|_| ("capacity".to_owned(), "Enter a whole number, 0 for no limit.".to_owned()))?,
        };
        let mut m = Map::new();
        // Browsers send a text area's line breaks as CRLF; the API takes text with LF only.
        let description = self.description.replace("\r\n", "\n");
        for (k, v) in [
            ("title", &self.title),
            ("description", &description),
            ("city", &self.city),
            ("category", &self.category),
            ("venue", &self.venue),
            ("online_url", &self.online_url),
            ("starts_at", &self.starts_at),
            ("ends_at", &self.ends_at),
        ] {
            m.insert(k.to_owned(), Value::String(v.trim().to_owned()));
        }
        let zone = self.time_zone.trim();
        m.insert(
            "time_zone".to_owned(),
            Value::String(if zone.is_empty() { "UTC".to_owned() } else { zone.to_owned() }),
        );
        m.insert("capacity".to_owned(), json!(capacity));
        Ok(m)
    }
}

#[derive(Template)]
#[template(path = "web/event_form.html")]
struct EventFormPage {
    layout: Layout,
    heading: String,
    action: String,
    submit: &'static str,
    form: EventForm,
    fields: BTreeMap<String, String>,
    summary: Option<String>,
    /// A capacity cut below the seats taken: what happens, and the form asks to confirm it.
    cut: Option<String>,
}

/// One input of the event form: name, label, type, value and its limits.
type Input<'a> = (&'static str, &'static str, &'static str, &'a str, &'static str);

impl EventFormPage {
    /// The one-line inputs, in order (the description is a text area).
    fn inputs(&self) -> Vec<Input<'_>> {
        let f = &self.form;
        vec![
            ("title", "Title", "text", f.title.as_str(), "required maxlength=120"),
            ("city", "City", "text", f.city.as_str(), "required maxlength=80"),
            ("venue", "Venue", "text", f.venue.as_str(), "maxlength=200"),
            ("time_zone", "Time zone (IANA name, such as Europe/Berlin)", "text", f.time_zone.as_str(), "maxlength=64"),
            (
                "online_url",
                "Online join link (https://; only people with a seat see it)",
                "url",
                f.online_url.as_str(),
                "maxlength=500",
            ),
            ("starts_at", "Starts (in that time zone)", "datetime-local", f.starts_at.as_str(), "required"),
            ("ends_at", "Ends", "datetime-local", f.ends_at.as_str(), "required"),
            ("capacity", "Seats (0 for no limit)", "number", f.capacity.as_str(), "min=0 max=100000 step=1"),
        ]
    }

    fn error(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    /// The category choices `(name, label, selected)`; an event's category from before the set
    /// was fixed is offered as it is, so saving the form keeps it.
    fn categories(&self) -> Vec<(String, String, bool)> {
        let current = self.form.category.trim();
        let mut out: Vec<(String, String, bool)> = cityevents_api::events::CATEGORIES
            .iter()
            .map(|(n, l)| ((*n).to_owned(), (*l).to_owned(), n.eq_ignore_ascii_case(current)))
            .collect();
        if !current.is_empty() && cityevents_api::events::category_name(current).is_none() {
            out.push((current.to_owned(), current.to_owned(), true));
        }
        out
    }
}

/// `GET /my/events/new`.
pub(crate) async fn new_form(State(site): State<Arc<Site>>, page: Page) -> PageResult {
    page.confirmed("/my/events/new")?;
    let form = EventForm {
        time_zone: page.zone.as_ref().map_or("UTC", |z| z.name()).to_owned(),
        key: uuid::Uuid::now_v7().simple().to_string(),
        ..EventForm::default()
    };
    let t = EventFormPage {
        layout: page.layout(&site, "Create an event").await,
        heading: "Create an event".into(),
        action: "/my/events/new".into(),
        submit: "Save as draft",
        form,
        fields: BTreeMap::new(),
        summary: None,
        cut: None,
    };
    Ok(render(StatusCode::OK, &t))
}

/// The form again with what the service said of it.
async fn form_again(
    site: &Site,
    page: &Page,
    (heading, action, submit): (&str, String, &'static str),
    form: EventForm,
    f: Option<&Failure>,
    field: Option<(String, String)>,
) -> Response {
    let mut fields = f.map(Failure::fields).unwrap_or_default();
    fields.extend(field);
    let summary = match f {
        Some(f) if fields.is_empty() => Some(f.message()),
        _ => Some("Check the fields marked below.".to_owned()),
    };
    let status = f.map_or(StatusCode::BAD_REQUEST, |f| f.status);
    let t = EventFormPage {
        layout: page.layout(site, heading.to_owned()).await,
        heading: heading.into(),
        action,
        submit,
        form,
        fields,
        summary,
        cut: None,
    };
    render(status, &t)
}

/// How many people hold a seat at event `id` (`None` when joins cannot tell).
async fn confirmed(site: &Site, page: &Page, id: uuid::Uuid) -> Option<i64> {
    let path = format!("/api/v1/events/{id}/counts");
    site.get::<cityevents_api::joins::Counts>(Upstream::Joins, &path, None, &page.address)
        .await
        .ok()
        .map(|c| c.confirmed)
}

/// What cutting the seats to `capacity` below the `taken` ones means, for the organizer to
/// confirm before it is saved.
fn cut_warning(capacity: u64, taken: i64) -> String {
    let extra = u64::try_from(taken).unwrap_or(0).saturating_sub(capacity);
    let people = if extra == 1 { "1 person more".to_owned() } else { format!("{extra} people more") };
    let seats = if capacity == 1 { "1 seat".to_owned() } else { format!("{capacity} seats") };
    format!(
        "{taken} people already hold a seat, {people} than the {seats} you set. Everyone keeps their seat: \
         nobody is removed or told. New joins go to the waitlist, and a seat someone frees goes to the waitlist \
         only once fewer people hold a seat than there are seats. Save again to confirm, or change the seats."
    )
}

/// `POST /my/events/new`: a draft; then its manage page.
pub(crate) async fn create(State(site): State<Arc<Site>>, page: Page, Form(form): Form<EventForm>) -> PageResult {
    let token = page.confirmed("/my/events/new")?;
    let (heading, action) = ("Create an event", "/my/events/new".to_owned());
    let body = match form.body() {
        Ok(b) => Value::Object(b),
        Err(field) => {
            return Ok(form_again(&site, &page, (heading, action, "Save as draft"), form, None, Some(field)).await);
        }
    };
    let key = HeaderValue::from_str(&form.key).ok().filter(|_| {
        !form.key.is_empty() && form.key.len() <= 128 && form.key.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    let extra: Vec<(HeaderName, HeaderValue)> =
        key.into_iter().map(|k| (HeaderName::from_static("idempotency-key"), k)).collect();
    Ok(
        match site
            .send(Upstream::Events, Method::POST, "/api/v1/events", Some(token), Some(&body), &page.address, &extra)
            .await
        {
            Ok(answer) => match answer.json::<Event>() {
                Ok(e) => Redirect::to(&format!("/my/events/{}?notice=created", e.id)).into_response(),
                Err(_) => Redirect::to("/my/events").into_response(),
            },
            Err(f) if f.status.is_client_error() && f.status != StatusCode::UNAUTHORIZED => {
                form_again(&site, &page, (heading, action, "Save as draft"), form, Some(&f), None).await
            }
            Err(f) => pages::failed(&page, &f, "/my/events/new"),
        },
    )
}

/// The viewer's event `id` (the events service refuses anyone else's changes).
async fn fetch(site: &Site, page: &Page, token: &str, id: uuid::Uuid) -> Result<Event, Failure> {
    site.get(Upstream::Events, &format!("/api/v1/events/{id}"), Some(token), &page.address).await
}

/// The viewer's token, their event `id` and its edit page's path; or the page that answers
/// instead (404, log in, the events service's refusal).
async fn editing<'p>(site: &Site, page: &'p Page, id: PathId) -> Result<(&'p str, Event, String), Halt> {
    let id = page.event_id(id)?;
    let back = format!("/my/events/{id}/edit");
    let token = page.signed(&back)?;
    match fetch(site, page, token, id).await {
        Ok(event) => Ok((token, event, back)),
        Err(f) => Err(pages::failed(page, &f, &back).into()),
    }
}

/// `GET /my/events/{id}/edit`.
pub(crate) async fn edit_form(State(site): State<Arc<Site>>, page: Page, id: PathId) -> PageResult {
    let (_, event, back) = editing(&site, &page, id).await?;
    let t = EventFormPage {
        layout: page.layout(&site, "Edit the event").await,
        heading: format!("Edit “{}”", event.title),
        action: back,
        submit: "Save changes",
        form: EventForm::of(&event),
        fields: BTreeMap::new(),
        summary: None,
        cut: None,
    };
    Ok(render(StatusCode::OK, &t))
}

/// `POST /my/events/{id}/edit`: only the fields that changed are sent.
pub(crate) async fn edit(
    State(site): State<Arc<Site>>,
    page: Page,
    id: PathId,
    Form(form): Form<EventForm>,
) -> PageResult {
    let (token, event, back) = editing(&site, &page, id).await?;
    let id = event.id;
    let heading = format!("Edit “{}”", event.title);
    let (now, was) = match (form.body(), EventForm::of(&event).body()) {
        (Ok(now), Ok(was)) => (now, was),
        (Err(field), _) | (_, Err(field)) => {
            return Ok(form_again(&site, &page, (&heading, back, "Save changes"), form, None, Some(field)).await);
        }
    };
    let mut patch: Map<String, Value> = now.into_iter().filter(|(k, v)| was.get(k) != Some(v)).collect();
    // A new zone alone keeps the instants; with the form's local times it means them in it.
    if patch.contains_key("time_zone") {
        for k in ["starts_at", "ends_at"] {
            if let Some(v) = form.body().ok().and_then(|b| b.get(k).cloned()) {
                patch.insert(k.to_owned(), v);
            }
        }
    }
    if patch.is_empty() {
        return Ok(Redirect::to(&format!("/my/events/{id}?notice=unchanged")).into_response());
    }
    // Fewer seats than people holding one: say what that means before saving.
    if let Some(capacity) = patch.get("capacity").and_then(Value::as_u64).filter(|c| *c > 0)
        && form.confirm_capacity != "yes"
        && let Some(taken) = confirmed(&site, &page, id).await.filter(|t| u64::try_from(*t).unwrap_or(0) > capacity)
    {
        let t = EventFormPage {
            layout: page.layout(&site, heading.clone()).await,
            heading,
            action: back,
            submit: "Save with fewer seats",
            form: EventForm { confirm_capacity: "yes".to_owned(), ..form },
            fields: BTreeMap::new(),
            summary: None,
            cut: Some(cut_warning(capacity, taken)),
        };
        return Ok(render(StatusCode::CONFLICT, &t));
    }
    let path = format!("/api/v1/events/{id}");
    // A cut the organizer confirmed is saved with what it means, not a plain "saved".
    let notice = if form.confirm_capacity == "yes" && patch.contains_key("capacity") { "seats_cut" } else { "saved" };
    Ok(
        match site
            .send(Upstream::Events, Method::PATCH, &path, Some(token), Some(&Value::Object(patch)), &page.address, &[])
            .await
        {
            Ok(_) => Redirect::to(&format!("/my/events/{id}?notice={notice}")).into_response(),
            Err(f)
                if f.status.is_client_error()
                    && f.status != StatusCode::UNAUTHORIZED
                    && f.status != StatusCode::NOT_FOUND =>
            {
                form_again(&site, &page, (&heading, back, "Save changes"), form, Some(&f), None).await
            }
            Err(f) => pages::failed(&page, &f, &back),
        },
    )
}

#[derive(Template)]
#[template(path = "web/manage.html")]
struct Manage {
    layout: Layout,
    event: Event,
    card: Card,
    status: &'static str,
    participants: Option<ParticipantPage>,
    waitlist: Option<ParticipantPage>,
    bans: Option<BanPage>,
    error: Option<String>,
    /// A moderator acting on someone else's event (a reason is then required).
    moderating: bool,
    organizer: Option<String>,
}

impl Manage {
    fn is(&self, status: &str) -> bool {
        self.event.status.as_str() == status
    }
}

/// `GET /my/events/{id}`.
pub(crate) async fn manage(State(site): State<Arc<Site>>, page: Page, id: PathId) -> PageResult {
    let id = page.event_id(id)?;
    Ok(manage_page(&site, &page, id, None).await)
}

/// A list of people on event `id` (`participants`, `waitlist`, `bans`), with their names.
async fn people<T: serde::de::DeserializeOwned>(
    site: &Site,
    page: &Page,
    token: &str,
    id: uuid::Uuid,
    list: &str,
) -> Option<T> {
    let path = format!("/api/v1/events/{id}/{list}?limit={PEOPLE}");
    let mut answer: Value = site.get(Upstream::Joins, &path, Some(token), &page.address).await.ok()?;
    if let Some(items) = answer.get_mut("items").and_then(Value::as_array_mut) {
        let authorization = HeaderValue::from_str(&format!("Bearer {token}")).ok();
        crate::compose::names(&site.gw, authorization, items).await;
    }
    serde_json::from_value(answer).ok()
}

async fn manage_page(site: &Site, page: &Page, id: uuid::Uuid, error: Option<&Failure>) -> Response {
    let back = format!("/my/events/{id}");
    let token = match page.signed(&back) {
        Ok(t) => t,
        Err(halt) => return halt.into_response(),
    };
    let event = match fetch(site, page, token, id).await {
        Ok(e) => e,
        Err(f) => return pages::failed(page, &f, &back),
    };
    let moderating = page.viewer.user().is_none_or(|u| u.id != event.organizer_id);
    if moderating && !pages::moderator(page.viewer.user()) {
        return pages::failed(
            page,
            &Failure::forbidden(Upstream::Events, "Only the event's organizer or a moderator can manage it."),
            &back,
        );
    }
    // Only a moderator's view names the organizer (their own page needs no name).
    let organizer = async {
        if moderating { super::events::organizer_name(site, page, token, event.organizer_id).await } else { None }
    };
    let (participants, waitlist, bans, organizer, layout) = tokio::join!(
        people::<ParticipantPage>(site, page, token, id, "participants"),
        people::<ParticipantPage>(site, page, token, id, "waitlist"),
        people::<BanPage>(site, page, token, id, "bans"),
        organizer,
        page.layout(site, event.title.clone()),
    );
    let t = Manage {
        layout,
        moderating,
        organizer,
        card: Card::new(page, &event, "", false),
        status: status_label(event.status),
        participants,
        waitlist,
        bans,
        error: error.map(Failure::message),
        event,
    };
    render(error.map_or(StatusCode::OK, |f| f.status), &t)
}

/// A form on the manage page: a reason (cancel, unpublish, ban) and whom (kick, ban, unban).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ActionForm {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    user_id: String,
    /// Whom `user_id` names, as the page showed them (for the confirmation's words only).
    #[serde(default)]
    name: String,
    /// `yes`: the confirmation page's second step (cancel, kick, ban).
    #[serde(default)]
    confirmed: String,
}

/// The confirmation page of `action` on `event`, or `None` when it needs none.
fn confirmation(action: &str, event: &Event, form: &ActionForm, back: &str, layout: Layout) -> Option<ConfirmPage> {
    let who = ConfirmPage::who(&form.name, "this person");
    let (heading, lines, confirm) = match action {
        "cancel" => (
            format!("Cancel “{}”?", event.title),
            vec![
                "Canceling is final: the event cannot be published again.".to_owned(),
                "Everyone who joined or waits for a seat is told, with the reason below.".to_owned(),
            ],
            "Yes, cancel the event",
        ),
        "kick" => (
            format!("Remove {who} from “{}”?", event.title),
            vec![format!(
                "{who} loses their seat (it goes to the waitlist) and is told. They can join again while seats are free."
            )],
            "Yes, remove them",
        ),
        "ban" => (
            format!("Ban {who} from “{}”?", event.title),
            vec![format!("{who} loses their seat and cannot join this event again until you lift the ban.")],
            "Yes, ban them from this event",
        ),
        _ => return None,
    };
    let mut fields = vec![("reason", form.reason.trim().to_owned())];
    if !form.user_id.is_empty() {
        fields.push(("user_id", form.user_id.trim().to_owned()));
        fields.push(("name", form.name.trim().to_owned()));
    }
    Some(ConfirmPage {
        layout,
        heading,
        lines,
        reason: form.reason.trim().to_owned(),
        action: format!("{back}/{action}"),
        fields,
        confirm,
        back: back.to_owned(),
    })
}

/// `POST /my/events/{id}/{action}`: publish, unpublish, cancel, kick, ban, unban.
pub(crate) async fn act(
    State(site): State<Arc<Site>>,
    page: Page,
    path: Result<Path<(uuid::Uuid, String)>, keel::http::Problem>,
    Form(form): Form<ActionForm>,
) -> PageResult {
    // Anything but a UUID names no event: the 404 page.
    let Ok(Path((id, action))) = path else { return Ok(pages::not_found(&page)) };
    let back = format!("/my/events/{id}");
    let token = page.signed(&back)?;
    let user = uuid::Uuid::parse_str(form.user_id.trim()).ok();
    let reason = form.reason.trim();
    if action == "cancel" && reason.is_empty() {
        let why = "Give a reason to cancel: it is shown on the event and sent to everyone who joined.";
        return Ok(manage_page(&site, &page, id, Some(&Failure::bad_request(Upstream::Gateway, why))).await);
    }
    if form.confirmed != "yes" && matches!(action.as_str(), "cancel" | "kick" | "ban") {
        let event = match fetch(&site, &page, token, id).await {
            Ok(e) => e,
            Err(f) => return Ok(pages::failed(&page, &f, &back)),
        };
        let layout = page.layout(&site, "Are you sure?").await;
        if let Some(t) = confirmation(&action, &event, &form, &back, layout) {
            return Ok(render(StatusCode::OK, &t));
        }
    }
    let reason_body = if reason.is_empty() { json!({}) } else { json!({ "reason": reason }) };
    let (upstream, method, path, body, notice) = match (action.as_str(), user) {
        ("publish", _) => {
            (Upstream::Events, Method::POST, format!("/api/v1/events/{id}/publish"), Some(json!({})), "published")
        }
        ("unpublish", _) => {
            (Upstream::Events, Method::POST, format!("/api/v1/events/{id}/unpublish"), Some(reason_body), "unpublished")
        }
        ("cancel", _) => {
            (Upstream::Events, Method::POST, format!("/api/v1/events/{id}/cancel"), Some(reason_body), "canceled")
        }
        ("remove-cover", _) => {
            (Upstream::Events, Method::DELETE, format!("/api/v1/events/{id}/cover"), None, "cover_removed")
        }
        ("kick", Some(u)) => {
            (Upstream::Joins, Method::DELETE, format!("/api/v1/events/{id}/participants/{u}"), None, "kicked")
        }
        ("ban", Some(u)) => {
            let mut b = json!({ "user_id": u.to_string() });
            if !reason.is_empty() {
                b["reason"] = json!(reason);
            }
            (Upstream::Joins, Method::POST, format!("/api/v1/events/{id}/bans"), Some(b), "banned")
        }
        ("unban", Some(u)) => {
            (Upstream::Joins, Method::DELETE, format!("/api/v1/events/{id}/bans/{u}"), None, "unbanned")
        }
        _ => return Ok(pages::not_found(&page)),
    };
    Ok(match site.send(upstream, method, &path, Some(token), body.as_ref(), &page.address, &[]).await {
        Ok(_) => Redirect::to(&format!("{back}?notice={notice}")).into_response(),
        Err(f)
            if f.status.is_client_error()
                && f.status != StatusCode::UNAUTHORIZED
                && f.status != StatusCode::NOT_FOUND =>
        {
            manage_page(&site, &page, id, Some(&f)).await
        }
        Err(f) => pages::failed(&page, &f, &back),
    })
}

/// `POST /my/events/{id}/cover`: the multipart form of the manage page, passed on as it came
/// to `PUT /api/v1/events/{id}/cover` (the events service reads and checks the picture). Its
/// CSRF token is in the query (see `session.rs`), so the middleware leaves the body unread.
pub(crate) async fn cover(
    State(site): State<Arc<Site>>,
    page: Page,
    id: PathId,
    req: axum::extract::Request,
) -> PageResult {
    let content_type = req.headers().get(http::header::CONTENT_TYPE).cloned();
    let signed = page.event_id(id).and_then(|id| Ok((id, page.signed(&format!("/my/events/{id}"))?)));
    let (id, token) = match signed {
        Ok(v) => v,
        Err(halt) => return Err(super::after_draining(req.into_body(), halt).await),
    };
    let back = format!("/my/events/{id}");
    let path = format!("/api/v1/events/{id}/cover");
    Ok(match site.send_upload(Upstream::Events, &path, token, content_type, req.into_body(), &page.address).await {
        Ok(_) => Redirect::to(&format!("{back}?notice=cover_saved")).into_response(),
        Err(f)
            if f.status.is_client_error()
                && f.status != StatusCode::UNAUTHORIZED
                && f.status != StatusCode::NOT_FOUND =>
        {
            manage_page(&site, &page, id, Some(&f)).await
        }
        Err(f) => pages::failed(&page, &f, &back),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seat_cut_says_who_keeps_a_seat_and_what_happens_next() {
        let w = cut_warning(1, 2);
        assert!(w.starts_with("2 people already hold a seat, 1 person more than the 1 seat you set."), "{w}");
        assert!(w.contains("nobody is removed") && w.contains("fewer people hold a seat than there are seats"), "{w}");
        assert!(cut_warning(10, 14).starts_with("14 people already hold a seat, 4 people more than the 10 seats"));
    }

    #[test]
    fn the_form_sends_every_field_with_whole_capacity_and_a_zone() {
        let form = EventForm {
            title: " Jazz ".into(),
            starts_at: "2030-07-15T19:00".into(),
            capacity: "".into(),
            ..EventForm::default()
        };
        let body = form.body().unwrap();
        assert_eq!(body["title"], "Jazz");
        assert_eq!(body["capacity"], 0);
        assert_eq!(body["time_zone"], "UTC");
        assert_eq!(body["starts_at"], "2030-07-15T19:00");
        let multi = EventForm { description: "one\r\n\r\ntwo".into(), ..EventForm::default() };
        assert_eq!(multi.body().unwrap()["description"], "one\n\ntwo");
        let bad = EventForm { capacity: "ten".into(), ..EventForm::default() };
        assert_eq!(bad.body().unwrap_err().0, "capacity");
    }
}
