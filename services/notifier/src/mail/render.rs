//! Turns a [`Mail`] into a message: subject, plain text and HTML from the templates in
//! `templates/` (askama: checked at compile time, HTML auto-escaped).

use askama::Template;
use cityevents_common::catalogue::Mail;
use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use time::OffsetDateTime;
use time::macros::format_description;

use super::Mailer;

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
    /// When a followed event starts.
    when: String,
    /// Empty for account-security mail, which cannot be turned off.
    settings_link: String,
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
/// same one and mail clients show it once.
pub(crate) fn render(mailer: &Mailer, to: Mailbox, name: &str, mail: &Mail, id: &str) -> Result<Rendered, String> {
    let v = view(mailer.base_url(), name, mail);
    let text = Text { v: &v }.render().map_err(|e| format!("text template: {e}"))?;
    let html = Html { v: &v }.render().map_err(|e| format!("HTML template: {e}"))?;
    let local: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')).collect();
    let message = Message::builder()
        .message_id(Some(format!("<{local}@{}>", mailer.from().email.domain())))
        .from(mailer.from().clone())
        .to(to)
        .subject(v.subject.clone())
        .multipart(MultiPart::alternative_plain_html(text, html))
        .map_err(|e| format!("cannot build the message: {e}"))?;
    Ok(Rendered { message, link: v.link })
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
        when: String::new(),
        settings_link: String::new(),
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
}
