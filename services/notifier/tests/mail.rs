//! The mail channel end to end, through NATS and a real SMTP server the test starts (aiosmtpd):
//!
//! * STARTTLS required, a private CA pinned, AUTH: account mail goes to the address it names;
//!   event mail goes to the verified contact auth announced, plain text and HTML, the title
//!   escaped in HTML; addresses are stored encrypted;
//! * preferences turn event mail off per kind (the in-app notification stays); unverified
//!   contacts get no event mail; a refused address is dead-lettered at once;
//! * with the server down the mail consumer pauses, spends no attempt, and delivers once it is up;
//! * the development file transport writes `.eml` files into a 0700 directory.
//!
//! Tests skip when NATS or python3 with aiosmtpd is missing here, except under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use cityevents_common::catalogue::{
    ACCOUNTS_TOPIC, AccountContact, JOINS_TOPIC, JoinCanceled, JoinChange, JoinKicked, JoinPromoted, MAIL_TOPIC, Mail,
    MailRequested,
};
use cityevents_common::testing::{SmtpOptions, SmtpSink, decode_quoted_printable, eventually, free_port};
use common::{Broker, Notifier, database, nats_bus, pool};
use keel::data::Backend;
use keel::events::{Envelope, Event};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

fn envelope<E: Event>(e: &E) -> Envelope {
    Envelope::new("cityevents-test", e).unwrap()
}

fn change(user: Uuid, title: &str, reason: Option<&str>) -> JoinChange {
    JoinChange {
        join_id: Uuid::now_v7(),
        event_id: Uuid::now_v7(),
        user_id: user,
        event_title: title.into(),
        status: "canceled".into(),
        reason: reason.map(str::to_owned),
        note: None,
        organizer_id: None,
        at: OffsetDateTime::now_utc(),
    }
}

/// The value of counter `name{labels}` in a metrics text (0 when absent).
fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

async fn wait_metric(n: &Notifier, series: &str, at_least: f64) {
    eventually(&format!("{series} >= {at_least}"), Duration::from_secs(20), || async {
        (metric(&n.metrics().await, series) >= at_least).then_some(())
    })
    .await;
}

#[tokio::test]
async fn mail_over_starttls_with_auth_preferences_and_dead_letters() {
    let namespace = keel::testing::unique_topic("nmail");
    let Some(bus) = nats_bus(&namespace).await else { return };
    let pki_dir = tempfile::tempdir().unwrap();
    let keel::testing::TestPki { ca, cert, key, .. } = keel::testing::test_pki(&["127.0.0.1"]);
    let (ca_file, cert_file, key_file) =
        (pki_dir.path().join("ca.pem"), pki_dir.path().join("cert.pem"), pki_dir.path().join("key.pem"));
    std::fs::write(&ca_file, ca).unwrap();
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let options = SmtpOptions {
        tls: Some((cert_file, key_file)),
        auth: Some(("mailer".into(), "s3cret-pass".into())),
        port: None,
    };
    let Some(smtp) = SmtpSink::start(&options) else { return };
    let Some(db) = database(Backend::Sqlite).await else { return };
    let port = smtp.port().to_string();
    let ca_path = ca_file.display().to_string();
    let n = Notifier::start_with(
        db,
        &Broker::Nats { namespace },
        &[
            ("APP__MAIL__TRANSPORT", "smtp"),
            ("APP__MAIL__FROM", "City Events <no-reply@example.org>"),
            ("APP__MAIL__BASE_URL", "https://events.example.org"),
            ("APP__MAIL__SMTP__HOST", "127.0.0.1"),
            ("APP__MAIL__SMTP__PORT", &port),
            ("APP__MAIL__SMTP__SECURITY", "starttls"),
            ("APP__MAIL__SMTP__USERNAME", "mailer"),
            ("APP__MAIL__SMTP__PASSWORD", "s3cret-pass"),
            ("APP__MAIL__SMTP__CA_FILE", &ca_path),
        ],
    )
    .await;
    let (ann, una) = (Uuid::now_v7(), Uuid::now_v7());

    // Account mail names its address: sent before any contact is known, over STARTTLS with AUTH.
    let expires_at = OffsetDateTime::now_utc() + time::Duration::hours(24);
    let verify = MailRequested {
        user_id: ann,
        to: Some("ann@example.com".into()),
        name: Some("Ann".into()),
        mail: Mail::VerifyEmail { token: "tok-123_ABC".into(), expires_at },
    };
    let verify = envelope(&verify);
    bus.publish(MAIL_TOPIC, &verify).await.unwrap();
    let m = decode_quoted_printable(&smtp.wait_for("ann@example.com", |m| m.contains("Subject: Confirm")).await);
    // Its Message-ID is made from the request's id: a resend carries the same one.
    assert!(m.contains(&format!("Message-ID: <{}@example.org>\r\n", verify.id)), "{m}");
    assert!(m.contains("X-Sink-Tls: yes\r\n") && m.contains("X-Sink-Auth: mailer\r\n"), "{m}");
    assert!(
        m.contains("From: \"City Events\" <no-reply@example.org>")
            || m.contains("From: City Events <no-reply@example.org>"),
        "{m}"
    );
    assert!(m.contains("multipart/alternative") && m.contains("text/plain") && m.contains("text/html"), "{m}");
    assert!(m.contains("https://events.example.org/verify-email?token=tok-123_ABC"), "{m}");
    assert!(m.contains("Hello Ann,"), "{m}");

    // Contacts: Ann verified, Una not. Stored encrypted.
    for (user, email, name, verified) in [(ann, "ann@example.com", "Ann", true), (una, "una@example.com", "Una", false)]
    {
        let c = AccountContact { user_id: user, email: email.into(), name: name.into(), verified, version: None };
        bus.publish(ACCOUNTS_TOPIC, &envelope(&c)).await.unwrap();
    }
    let p = pool(&n.db).await;
    let stored: Vec<(String,)> = eventually("both contacts stored", Duration::from_secs(20), || async {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT email_ciphertext FROM mail_contacts").fetch_all(&p).await.unwrap();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    for (ct,) in &stored {
        assert!(ct.starts_with("v1:n1:") && !ct.contains("example"), "{ct}");
    }

    // Versions: Ora's newer contact applied before an older one (as several notifier instances
    // can have it) stays; the older changes nothing.
    let ora = Uuid::now_v7();
    let contact = |email: &str, version| AccountContact {
        user_id: ora,
        email: email.into(),
        name: "Ora".into(),
        verified: true,
        version: Some(version),
    };
    bus.publish(ACCOUNTS_TOPIC, &envelope(&contact("ora.new@example.com", 20))).await.unwrap();
    let older = envelope(&contact("ora.old@example.com", 15));
    bus.publish(ACCOUNTS_TOPIC, &older).await.unwrap();
    eventually("the older contact handled", Duration::from_secs(20), || async {
        let seen: Vec<(String,)> = sqlx::query_as("SELECT message_id FROM keel_inbox WHERE message_id = ?")
            .bind(&older.id)
            .fetch_all(&p)
            .await
            .unwrap();
        (!seen.is_empty()).then_some(())
    })
    .await;
    let (version,): (i64,) = sqlx::query_as("SELECT version FROM mail_contacts WHERE user_id = ?")
        .bind(ora.to_string())
        .fetch_one(&p)
        .await
        .unwrap();
    assert_eq!(version, 20, "the newer contact stays");
    bus.publish(JOINS_TOPIC, &envelope(&JoinKicked(change(ora, "Tango", Some("kicked"))))).await.unwrap();
    smtp.wait_for("ora.new@example.com", |m| m.contains("Subject: You were removed from Tango")).await;
    assert!(!smtp.messages().iter().any(|m| m.contains("ora.old@example.com")), "the older address is not used");

    // A canceled event: the in-app notification and a mail, the title escaped in HTML.
    let title = "<b>Jazz & Blues</b>";
    bus.publish(JOINS_TOPIC, &envelope(&JoinCanceled(change(ann, title, Some("event_canceled"))))).await.unwrap();
    let m = decode_quoted_printable(&smtp.wait_for("ann@example.com", |m| m.contains("Subject: Called off")).await);
    assert!(m.contains("&#60;b&#62;Jazz &#38; Blues&#60;/b&#62;</a>"), "HTML escaped: {m}");
    assert!(m.contains("\"<b>Jazz & Blues</b>\", which you joined"), "plain text as is: {m}");
    assert!(m.contains("https://events.example.org/settings/notifications"), "event mail links its settings: {m}");
    n.wait_for(&ann.to_string(), 1).await;

    // Preferences: all on by default; bad bodies are refused naming the field.
    let user = ann.to_string();
    let all_on = json!({"event_canceled": true, "waitlist_promoted": true, "removed": true, "followed_published": true,
            "joined": true, "event_changed": true, "reminders": true});
    assert_eq!(n.preferences(&user, None).await, (200, all_on));
    let (status, body) = n.preferences(&user, Some(json!({"event_canceled": false}))).await;
    let one_off = json!({"event_canceled": false, "waitlist_promoted": true, "removed": true, "followed_published": true,
            "joined": true, "event_changed": true, "reminders": true});
    assert_eq!((status, &body), (200, &one_off));
    for (bad, field) in [(json!({}), "body"), (json!({"nope": true}), "nope"), (json!({"removed": "yes"}), "removed")] {
        let (status, body) = n.preferences(&user, Some(bad.clone())).await;
        assert_eq!((status, body["errors"][0]["field"].as_str()), (400, Some(field)), "{bad}: {body}");
    }
    let r = n.http.get(n.url("/api/v1/me/mail-preferences")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Turned off: no mail, but the notification is written; the kind still on is mailed.
    bus.publish(JOINS_TOPIC, &envelope(&JoinCanceled(change(ann, "Opera", Some("event_canceled"))))).await.unwrap();
    wait_metric(&n, "notifier_mail_total{outcome=\"skipped\",template=\"event_canceled\"}", 1.0).await;
    bus.publish(JOINS_TOPIC, &envelope(&JoinKicked(change(ann, "Ballet", Some("kicked"))))).await.unwrap();
    smtp.wait_for("ann@example.com", |m| m.contains("Subject: You were removed from Ballet")).await;
    assert!(!smtp.messages().iter().any(|m| m.contains("Opera")), "turned off");
    n.wait_for(&user, 3).await;

    // A request another instance is sending (its record's lease holds) is not sent again
    // meanwhile; once the lease ends it is sent, once, and recorded as sent.
    let held = envelope(&MailRequested {
        user_id: ann,
        to: Some("held@example.com".into()),
        name: Some("Hal".into()),
        mail: Mail::PasswordChanged,
    });
    let lease_until = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64 + 5_000_000;
    sqlx::query(
        "INSERT INTO mail_log (message_id, template, outcome, created_at, lease_until) \
         VALUES (?, 'password_changed', 'sending', 0, ?)",
    )
    .bind(&held.id)
    .bind(lease_until)
    .execute(&p)
    .await
    .unwrap();
    let retried = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("consumer_messages_total{group=\"notifier-mail\",outcome=\"retry\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = retried(&n.metrics().await);
    bus.publish(MAIL_TOPIC, &held).await.unwrap();
    eventually("the held request put off", Duration::from_secs(20), || async {
        (retried(&n.metrics().await) > before).then_some(())
    })
    .await;
    assert!(!smtp.messages().iter().any(|m| m.contains("held@example.com")), "not sent while another sends it");
    smtp.wait_for("held@example.com", |_| true).await;
    // The SMTP server has the message before the notifier records the outcome.
    eventually("the held request recorded as sent", Duration::from_secs(20), || async {
        let (outcome,): (String,) = sqlx::query_as("SELECT outcome FROM mail_log WHERE message_id = ?")
            .bind(&held.id)
            .fetch_one(&p)
            .await
            .unwrap();
        (outcome == "sent").then_some(())
    })
    .await;
    assert_eq!(smtp.messages().iter().filter(|m| m.contains("X-Sink-Rcpt-To: held@example.com")).count(), 1);

    // Unverified: no event mail.
    bus.publish(JOINS_TOPIC, &envelope(&JoinPromoted(change(una, "Circus", None)))).await.unwrap();
    wait_metric(&n, "notifier_mail_total{outcome=\"skipped\",template=\"waitlist_promoted\"}", 1.0).await;
    assert!(!smtp.messages().iter().any(|m| m.contains("una@example.com")));

    // A refused address (550) is dead-lettered at once.
    let refused = MailRequested {
        user_id: una,
        to: Some("reject-me@example.com".into()),
        name: None,
        mail: Mail::PasswordChanged,
    };
    let refused = envelope(&refused);
    bus.publish(MAIL_TOPIC, &refused).await.unwrap();
    let dead = eventually("the refused mail in the DLQ", Duration::from_secs(20), || async {
        let dead = bus.dlq_list(MAIL_TOPIC, 10).await.unwrap();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!((dead.len(), dead[0].envelope.id.as_str(), dead[0].attempts), (1, refused.id.as_str(), 1));
    assert!(!dead[0].reason.contains("reject-me"), "no address in the reason: {}", dead[0].reason);
    let text = n.metrics().await;
    assert_eq!(metric(&text, "notifier_mail_total{outcome=\"rejected\",template=\"password_changed\"}"), 1.0);
    assert_eq!(metric(&text, "notifier_mail_total{outcome=\"sent\",template=\"verify_email\"}"), 1.0);
    // The status page counts the refusal (the first read happens now, after it).
    let figures = n.figures().await;
    assert_eq!(figures["mails failed"], (1, 1), "{figures:?}");
    assert!(figures["mails sent"].0 >= 1, "{figures:?}");
    n.stop().await;
}

#[tokio::test]
async fn mail_waits_for_the_smtp_server_without_spending_attempts() {
    let namespace = keel::testing::unique_topic("nmaildown");
    let Some(bus) = nats_bus(&namespace).await else { return };
    if !keel::testing::require_command("python3", &["-c", "import aiosmtpd"]) {
        return;
    }
    let Some(db) = database(Backend::Sqlite).await else { return };
    let port = free_port();
    let port_text = port.to_string();
    let n = Notifier::start_with(
        db,
        &Broker::Nats { namespace },
        &[
            ("APP__MAIL__TRANSPORT", "smtp"),
            ("APP__MAIL__SMTP__HOST", "127.0.0.1"),
            ("APP__MAIL__SMTP__PORT", &port_text),
            ("APP__MAIL__SMTP__SECURITY", "none"),
            ("APP__MAIL__SMTP__TIMEOUT", "2s"),
            // Few attempts: an outage that spent them would dead-letter the mail.
            ("APP__MAX_ATTEMPTS", "2"),
        ],
    )
    .await;
    let request = MailRequested {
        user_id: Uuid::now_v7(),
        to: Some("bob@example.com".into()),
        name: None,
        mail: Mail::PasswordChanged,
    };
    bus.publish(MAIL_TOPIC, &envelope(&request)).await.unwrap();
    wait_metric(&n, "notifier_mail_total{outcome=\"failed\",template=\"password_changed\"}", 1.0).await;
    // Down for longer than the attempts would last.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let Some(smtp) = SmtpSink::start(&SmtpOptions { port: Some(port), ..SmtpOptions::default() }) else { return };
    let m = smtp.wait_for("bob@example.com", |m| m.contains("Subject: Your password was changed")).await;
    assert!(m.contains("X-Sink-Tls: no"), "{m}");
    assert!(bus.dlq_list(MAIL_TOPIC, 10).await.unwrap().is_empty(), "the outage spent no attempt");
    let text = n.metrics().await;
    assert_eq!(metric(&text, "notifier_mail_total{outcome=\"sent\",template=\"password_changed\"}"), 1.0);
    n.stop().await;
}

#[tokio::test]
async fn the_file_transport_writes_private_eml_files() {
    let namespace = keel::testing::unique_topic("nmailfile");
    let Some(bus) = nats_bus(&namespace).await else { return };
    let Some(db) = database(Backend::Sqlite).await else { return };
    let n = Notifier::start(db, &Broker::Nats { namespace }).await;
    let request = MailRequested {
        user_id: Uuid::now_v7(),
        to: Some("dev@example.com".into()),
        name: Some("Dev".into()),
        mail: Mail::VerifyEmail { token: "file-token".into(), expires_at: OffsetDateTime::now_utc() },
    };
    bus.publish(MAIL_TOPIC, &envelope(&request)).await.unwrap();
    let m = eventually("a mail file", Duration::from_secs(20), || async { n.mail_files().into_iter().next() }).await;
    let m = decode_quoted_printable(&m);
    assert!(
        m.contains("To: dev@example.com") && m.contains("http://127.0.0.1:8080/verify-email?token=file-token"),
        "{m}"
    );
    n.stop().await;
}
