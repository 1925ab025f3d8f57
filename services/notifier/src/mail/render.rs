//! Turns a [`Mail`] into a message: subject, plain text and HTML from the templates in
//! `templates/` (askama: checked at compile time, HTML auto-escaped).

use askama::Template;
use cityevents_common::catalogue::Mail;
use cityevents_common::ical::{self, Calendar, Entry, Method, Party};
use cityevents_common::zone::Zone;
use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart};
use time::OffsetDateTime;
use time::macros::format_description;

use super::Mailer;
use crate::store::activity::EventFacts;

/// What the templates fill in.
struct View {
    kind: &'static str,
    subject: String,
    name: String,
    title: String,
    link: String,
    token: String,
    expires: String,
    /// Why an event was called off (empty: no reason given).
    reason: String,
    /// Who published a followed event (empty: not known).
    organizer: String,
    /// The provider linked (a `sign_in_added` mail).
    provider: String,
    /// When a followed event starts.
    when: String,
    /// Empty for account-security mail, which cannot be turned off.
    settings_link: String,
    /// What changed (an `event_changed` mail).
    change: String,
    /// What, when and where, for a mail about an event the notifier knows.
    facts: Vec<(&'static str, String)>,
    /// What the attached calendar file does (empty: none attached).
    calendar: String,
}

#[derive(Template)]
#[template(path = "mail.txt", escape = "none")]
struct Text<'a> {
    v: &'a View,
}

#[derive(Template)]
#[template(path = "mail.html")]
struct Html<'a> {
    v: &'a View,
}

/// A rendered message and the link it carries (logged by the file transport).
pub(crate) struct Rendered {
    pub(crate) message: Message,
    pub(crate) link: String,
}

/// Longest title quoted (characters).
const MAX_TITLE: usize = 200;

fn expires(at: OffsetDateTime) -> String {
    at.format(format_description!("[year]-[month]-[day] [hour]:[minute] UTC")).unwrap_or_default()
}

fn title(t: &str) -> String {
    t.trim().chars().filter(|c| !c.is_control()).take(MAX_TITLE).collect()
}

/// Longest reason quoted (characters).
const MAX_REASON: usize = 500;

fn reason(r: &str) -> String {
    r.trim().chars().filter(|c| !c.is_control()).take(MAX_REASON).collect()
}

/// Renders `mail` for `to`, greeting `name`, as the message of request `id`: its `Message-ID`
/// is made from `id`, so a mail sent again (its sender died before recording it) carries the
/// same one and mail clients show it once. A mail about an event the notifier knows (`event`)
/// says what, when (on the venue's clock) and where, and one that puts the recipient in the
/// event or takes them out carries it as `event.ics` (`REQUEST` or `CANCEL`, see [`invitation`]).
pub(crate) fn render(
    mailer: &Mailer,
    to: Mailbox,
    name: &str,
    mail: &Mail,
    id: &str,
    event: Option<&EventFacts>,
    going: bool,
) -> Result<Rendered, String> {
    let mut v = view(mailer.base_url(), name, mail);
    let ics = event.and_then(|e| {
        v.facts = facts(e);
        invitation(mailer, &to, name, mail, e).filter(|(method, _)| *method == Method::Cancel || going)
    });
    if let Some((method, _)) = &ics {
        v.calendar = match method {
            Method::Cancel => "The attached event.ics takes it out of your calendar.",
            _ => "The attached event.ics puts it in your calendar.",
        }
        .to_owned();
    }
    let text = Text { v: &v }.render().map_err(|e| format!("text template: {e}"))?;
    let html = Html { v: &v }.render().map_err(|e| format!("HTML template: {e}"))?;
    let local: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')).collect();
    let builder = Message::builder()
        .message_id(Some(format!("<{local}@{}>", mailer.from().email.domain())))
        .from(mailer.from().clone())
        .to(to)
        .subject(v.subject.clone());
    let body = MultiPart::alternative_plain_html(text, html);
    let message = match ics {
        Some((method, file)) => {
            let method = if method == Method::Cancel { "CANCEL" } else { "REQUEST" };
            let kind = ContentType::parse(&format!("text/calendar; charset=utf-8; method={method}"))
                .map_err(|e| format!("calendar content type: {e}"))?;
            let attachment = Attachment::new("event.ics".to_owned()).body(file, kind);
            builder.multipart(MultiPart::mixed().multipart(body).singlepart(attachment))
        }
        None => builder.multipart(body),
    }
    .map_err(|e| format!("cannot build the message: {e}"))?;
    Ok(Rendered { message, link: v.link })
}

/// What, when and where, as a mail lists them.
fn facts(e: &EventFacts) -> Vec<(&'static str, String)> {
    let zone = Zone::named(&e.place.time_zone).unwrap_or_else(Zone::utc);
    let (start, end) = (e.place.starts_at, e.place.ends_at);
    let day = |micros: i64| zone.human(micros).and_then(|t| t.split_once(", ").map(|(d, _)| d.to_owned()));
    let when = match (zone.human(start), zone.human(end)) {
        (Some(from), Some(to)) if day(start) == day(end) => {
            format!("{from} to {} ({})", to.rsplit_once(", ").map_or(to.as_str(), |(_, t)| t), zone.name())
        }
        (Some(from), Some(to)) => format!("{from} to {to} ({})", zone.name()),
        _ => String::new(),
    };
    let place = match (e.place.link_tag.is_empty(), location(e)) {
        (false, _) => "Online: the join link is on the event's page".to_owned(),
        (true, l) if l.is_empty() => "See the event's page".to_owned(),
        (true, l) => l,
    };
    vec![("What", title(&e.title)), ("When", when), ("Where", place)]
}

/// `venue, city`, either alone when the other is empty, or empty.
fn location(e: &EventFacts) -> String {
    let (venue, city) = (e.place.venue.trim(), e.city.trim());
    match (venue.is_empty(), city.is_empty()) {
        (false, false) => format!("{venue}, {city}"),
        (false, true) => venue.to_owned(),
        (true, _) => city.to_owned(),
    }
}

/// The calendar file `mail` carries, and its method: `REQUEST` (joined, promoted, or the event
/// changed; [`render`] sends it only to who holds a seat, and never for an event no longer
/// published: a mail handled after a cancel must not put the event back) or `CANCEL` (the event
/// canceled; a removal takes only the recipient out, without `STATUS`), with the platform as
/// the organizer and the recipient as the attendee, as iTIP (RFC 5546) requires of a message
/// sent by mail. `None` for other mail.
fn invitation(mailer: &Mailer, to: &Mailbox, name: &str, mail: &Mail, e: &EventFacts) -> Option<(Method, String)> {
    let (event_id, method) = match mail {
        Mail::Joined { event_id, .. }
        | Mail::WaitlistPromoted { event_id, .. }
        | Mail::EventChanged { event_id, .. } => (event_id, Method::Request),
        Mail::EventCanceled { event_id, .. } | Mail::Removed { event_id, .. } => (event_id, Method::Cancel),
        _ => return None,
    };
    if method == Method::Request && e.status != "published" {
        return None;
    }
    let now = cityevents_common::time::to_micros(cityevents_common::time::now());
    let status = match mail {
        Mail::EventCanceled { .. } => ical::Status::Cancelled,
        Mail::Removed { .. } => ical::Status::Unset,
        _ => ical::Status::Confirmed,
    };
    let entry = Entry {
        uid: ical::uid(event_id),
        sequence: u64::try_from(e.version).unwrap_or(0),
        summary: title(&e.title),
        description: String::new(),
        location: location(e),
        url: Some(format!("{}/events/{event_id}", mailer.base_url())),
        starts_at: e.place.starts_at,
        ends_at: e.place.ends_at,
        zone: Zone::named(&e.place.time_zone).unwrap_or_else(Zone::utc),
        status,
        created_at: now,
        updated_at: now,
        category: String::new(),
    };
    let from = mailer.from();
    let organizer =
        Party { name: from.name.clone().unwrap_or_else(|| "City Events".to_owned()), email: from.email.to_string() };
    let attendee = Party { name: name.to_owned(), email: to.email.to_string() };
    let mut cal = Calendar::new(method).between(organizer, attendee);
    cal.push(entry);
    Some((method, cal.render()))
}

/// What the templates say for `mail` to `name`, with links under `base`.
fn view(base: &str, name: &str, mail: &Mail) -> View {
    let mut v = View {
        kind: mail.template(),
        subject: String::new(),
        name: name.trim().chars().filter(|c| !c.is_control()).take(100).collect(),
        title: String::new(),
        link: String::new(),
        token: String::new(),
        expires: String::new(),
        reason: String::new(),
        organizer: String::new(),
        provider: String::new(),
        when: String::new(),
        settings_link: String::new(),
        change: String::new(),
        facts: Vec::new(),
        calendar: String::new(),
    };
    if v.name.is_empty() {
        v.name = "there".into();
    }
    match mail {
        Mail::VerifyEmail { token, expires_at } => {
            v.subject = "Confirm your e-mail address".into();
            v.link = format!("{base}/verify-email?token={token}");
            v.token.clone_from(token);
            v.expires = expires(*expires_at);
        }
        Mail::ResetPassword { token, expires_at } => {
            v.subject = "Choose a new password".into();
            v.link = format!("{base}/reset-password?token={token}");
            v.token.clone_from(token);
            v.expires = expires(*expires_at);
        }
        Mail::PasswordChanged => {
            v.subject = "Your password was changed".into();
            v.link = format!("{base}/reset-password");
        }
        Mail::SignInAdded { provider } => {
            v.provider = title(provider);
            v.subject = format!("You can now log in with {}", v.provider);
            v.link = format!("{base}/account");
        }
        Mail::AlreadyRegistered => {
            v.subject = "You already have an account".into();
            v.link = format!("{base}/reset-password");
        }
        Mail::AddressUnavailable => {
            v.subject = "This address cannot be used".into();
        }
        Mail::EventCanceled { event_id, title: t, reason } => {
            v.title = title(t);
            v.reason = reason.as_deref().map(self::reason).unwrap_or_default();
            v.subject = format!("Called off: {}", v.title);
            v.link = format!("{base}/events/{event_id}");
        }
        Mail::WaitlistPromoted { event_id, title: t } => {
            v.title = title(t);
            v.subject = format!("You're in: {}", v.title);
            v.link = format!("{base}/events/{event_id}");
        }
        Mail::Removed { event_id, title: t } => {
            v.title = title(t);
            v.subject = format!("You were removed from {}", v.title);
            v.link = format!("{base}/events/{event_id}");
        }
        Mail::FollowedPublished { event_id, title: t, organizer, when } => {
            v.title = title(t);
            v.organizer = organizer.as_deref().map(self::title).unwrap_or_default();
            v.when = self::title(when);
            v.subject = if v.organizer.is_empty() {
                format!("New event: {}", v.title)
            } else {
                format!("New from {}: {}", v.organizer, v.title)
            };
            v.link = format!("{base}/events/{event_id}");
        }
        Mail::Joined { event_id, title: t } => {
            v.title = title(t);
            v.subject = format!("You're going: {}", v.title);
            v.link = format!("{base}/events/{event_id}");
        }
        Mail::Reminder { event_id, title: t, soon } => {
            v.title = title(t);
            v.when = self::title(soon);
            v.subject = format!("Soon: {} starts {}", v.title, v.when);
            v.link = format!("{base}/events/{event_id}");
        }
        Mail::EventChanged { event_id, title: t, change } => {
            v.title = title(t);
            v.change = self::reason(change);
            v.subject = format!("Changed: {}", v.title);
            v.link = format!("{base}/events/{event_id}");
        }
    }
    if mail.preference().is_some() {
        v.settings_link = format!("{base}/settings/notifications");
    }
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use uuid::Uuid;

    #[test]
    fn every_template_renders_in_text_and_escaped_html() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let event = Uuid::nil();
        let mails = [
            Mail::VerifyEmail { token: "tok".into(), expires_at: at },
            Mail::ResetPassword { token: "tok".into(), expires_at: at },
            Mail::PasswordChanged,
            Mail::SignInAdded { provider: "Gitea <b>".into() },
            Mail::AlreadyRegistered,
            Mail::AddressUnavailable,
            Mail::EventCanceled { event_id: event, title: "Jazz <b>".into(), reason: Some("Storm <warning>".into()) },
            Mail::WaitlistPromoted { event_id: event, title: "Jazz <b>".into() },
            Mail::Removed { event_id: event, title: "Jazz <b>".into() },
            Mail::FollowedPublished {
                event_id: event,
                title: "Jazz <b>".into(),
                organizer: Some("Olive <i>".into()),
                when: "2031-06-20 21:00 (Europe/Lisbon)".into(),
            },
            Mail::Joined { event_id: event, title: "Jazz <b>".into() },
            Mail::EventChanged {
                event_id: event,
                title: "Jazz <b>".into(),
                change: "Jazz <b> changed: at Clube <de> Fado".into(),
            },
            Mail::Reminder { event_id: event, title: "Jazz <b>".into(), soon: "in 1 hour".into() },
        ];
        assert_eq!(mails.len(), super::super::TEMPLATES.len(), "one case per template");
        for mail in &mails {
            let v = view("https://city.example", "Ada <script>", mail);
            assert_eq!(v.kind, mail.template());
            assert!(!v.subject.is_empty(), "{}", v.kind);
            let text = Text { v: &v }.render().unwrap();
            let html = Html { v: &v }.render().unwrap();
            // Each template has a body of its own, not only the greeting and the footer.
            let body = text.lines().filter(|l| !l.trim().is_empty()).count();
            assert!(body >= 4, "{}: {text}", v.kind);
            assert!(text.contains("Ada <script>"), "{text}");
            assert!(!html.contains("<script>") && html.contains("Ada &#60;script&#62;"), "{}: {html}", v.kind);
            assert_eq!(v.settings_link.is_empty(), mail.preference().is_none(), "{}", v.kind);
            if let Mail::FollowedPublished { .. } = mail {
                assert_eq!(v.subject, "New from Olive <i>: Jazz <b>");
                assert!(
                    text.contains("Olive <i>, whom you follow, published a new event: \"Jazz <b>\", 2031-06-20 21:00"),
                    "{text}"
                );
                assert!(html.contains("Olive &#60;i&#62;"), "{html}");
            }
            if let Mail::EventCanceled { .. } = mail {
                assert!(text.contains("Storm <warning>"), "the reason reaches the participant: {text}");
                assert!(html.contains("Storm &#60;warning&#62;"), "{html}");
            }
        }
    }

    fn facts(link_tag: &str) -> EventFacts {
        // 2030-06-01 18:00 to 20:00 UTC: 19:00 to 21:00 in Lisbon (summer time), a Saturday.
        EventFacts {
            title: "Fado <night>".into(),
            place: crate::activity::Place {
                starts_at: 1_906_567_200_000_000,
                ends_at: 1_906_574_400_000_000,
                venue: "Tasca do Chico".into(),
                time_zone: "Europe/Lisbon".into(),
                link_tag: link_tag.into(),
            },
            city: "Lisbon".into(),
            version: 4,
            status: "published".into(),
        }
    }

    fn mailer() -> Mailer {
        let dir = tempfile::tempdir().unwrap();
        let cfg = super::super::MailConfig {
            base_url: "https://city.example".into(),
            dir: dir.path().join("mail"),
            ..Default::default()
        };
        Mailer::new(&cfg, &keel::telemetry::Metrics::new(), false).unwrap()
    }

    /// The raw message as sent, quoted-printable and base64 undone where it matters.
    fn raw(r: &Rendered) -> String {
        String::from_utf8(r.message.formatted()).unwrap()
    }

    #[test]
    fn event_mail_says_what_when_and_where_and_carries_the_event() {
        let mailer = mailer();
        let event = Uuid::nil();
        let to: Mailbox = "Ada <ada@example.com>".parse().unwrap();
        let joined = Mail::Joined { event_id: event, title: "Fado <night>".into() };
        let r = render(&mailer, to.clone(), "Ada", &joined, "m-1", Some(&facts("")), true).unwrap();
        let m = raw(&r);
        assert!(m.contains("Content-Type: multipart/mixed"), "{m}");
        assert!(m.contains("text/calendar; charset=utf-8; method=REQUEST"), "{m}");
        assert!(m.contains("filename=\"event.ics\""), "{m}");
        let v = {
            let mut v = view("https://city.example", "Ada", &joined);
            v.facts = super::facts(&facts(""));
            v
        };
        assert_eq!(
            v.facts,
            [
                ("What", "Fado <night>".to_owned()),
                ("When", "Sat 1 Jun 2030, 19:00 to 21:00 (Europe/Lisbon)".to_owned()),
                ("Where", "Tasca do Chico, Lisbon".to_owned()),
            ]
        );
        let (method, ics) = invitation(&mailer, &to, "Ada", &joined, &facts("")).unwrap();
        assert_eq!(method, Method::Request);
        for line in [
            "METHOD:REQUEST",
            "UID:00000000-0000-0000-0000-000000000000@cityevents",
            "SEQUENCE:4",
            "DTSTART;TZID=Europe/Lisbon:20300601T190000",
            "LOCATION:Tasca do Chico\\, Lisbon",
            "ORGANIZER;CN=\"City Events\":mailto:no-reply@cityevents.invalid",
            "STATUS:CONFIRMED",
        ] {
            assert!(ics.contains(line), "{line} not in {ics}");
        }
        assert!(ics.contains("ATTENDEE;CN=\"Ada\""), "{ics}");
        // A cancellation takes it out again; an online event says so instead of a venue.
        let canceled = Mail::EventCanceled { event_id: event, title: "Fado".into(), reason: None };
        let (method, ics) = invitation(&mailer, &to, "Ada", &canceled, &facts("abc")).unwrap();
        assert_eq!(method, Method::Cancel);
        assert!(ics.contains("METHOD:CANCEL") && ics.contains("STATUS:CANCELLED"), "{ics}");
        assert_eq!(super::facts(&facts("abc"))[2].1, "Online: the join link is on the event's page");
        // Mail about no event, or an event not known yet: no calendar file.
        assert!(invitation(&mailer, &to, "Ada", &Mail::PasswordChanged, &facts("")).is_none());
        let unknown = render(&mailer, to.clone(), "Ada", &joined, "m-2", None, true).unwrap();
        assert!(!raw(&unknown).contains("text/calendar"));
        // Not holding a seat (waitlisted), or the event no longer on: no REQUEST to put it in.
        let waiting = render(&mailer, to.clone(), "Ada", &joined, "m-3", Some(&facts("")), false).unwrap();
        assert!(!raw(&waiting).contains("text/calendar"));
        let off = EventFacts { status: "canceled".into(), ..facts("") };
        assert!(invitation(&mailer, &to, "Ada", &joined, &off).is_none());
        // A removal takes the attendee out, not the event: no STATUS.
        let removed = Mail::Removed { event_id: event, title: "Fado".into() };
        let (method, ics) = invitation(&mailer, &to, "Ada", &removed, &facts("")).unwrap();
        assert!(method == Method::Cancel && !ics.contains("STATUS:"), "{ics}");
    }
}
