//! City Events end to end, through the gateway only, in both ways to run it: the all-in-one
//! binary (SQLite, in-process bus and limiter) and the distributed script (five processes in
//! production profile on PostgreSQL, Redis and NATS JetStream, then again with RabbitMQ as the
//! bus). The same scenario runs in every one.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cityevents_common::testing::{SmtpOptions, SmtpSink, decode_quoted_printable};
use common::Platform;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

fn client() -> reqwest::Client {
    keel::http::client::install_tls_provider();
    // Idle connections are dropped before the gateway's keep-alive closes them (10 s).
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(4))
        .build()
        .unwrap()
}

struct Api {
    http: reqwest::Client,
    base: String,
    mail: Mailbox,
}

/// Where the platform's mail can be read back.
#[derive(Clone)]
enum Mailbox {
    /// The all-in-one file transport's directory (`data/mail`).
    Dir(std::path::PathBuf),
    /// The SMTP server the test runs.
    Smtp(std::sync::Arc<SmtpSink>),
    /// Not read: users are not verified (the events service is told not to require it).
    Unread,
}

impl Mailbox {
    fn messages(&self) -> Vec<String> {
        match self {
            Self::Dir(dir) => cityevents_common::testing::eml_files(dir),
            Self::Smtp(sink) => sink.messages(),
            Self::Unread => Vec::new(),
        }
    }

    /// Waits for a mail to `to` whose decoded text contains `needle`; returns the decoded text.
    async fn wait_for(&self, to: &str, needle: &str) -> String {
        let header = format!("To: {to}\r\n");
        eventually_some(&format!("a mail to {to} containing {needle:?}"), || async {
            self.messages()
                .into_iter()
                .map(|m| decode_quoted_printable(&m))
                .find(|m| m.contains(&header) && m.contains(needle))
        })
        .await
    }
}

/// The token in a verification or reset link (`…?token=<token>`).
fn link_token(mail: &str) -> String {
    let at = mail.find("?token=").expect("a link with a token") + "?token=".len();
    mail[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect()
}

#[derive(Clone)]
struct User {
    id: String,
    email: String,
    access: String,
    refresh: String,
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn problem(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        let ct = self.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(ct.starts_with("application/problem+json"), "{status}: content-type {ct}: {}", self.body);
        &self.body
    }
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Reply { status, headers, body }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(Method::GET, path, token, None, &[]).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call(Method::POST, path, token, Some(body), &[]).await
    }

    /// Registers and, when the mail is read, verifies the address through the link mailed.
    async fn register(&self, name: &str) -> User {
        let user = self.register_unverified(name).await;
        if matches!(self.mail, Mailbox::Unread) {
            return user;
        }
        self.verify(&user.email).await;
        let t = self.login(&user.email, PASSWORD).await;
        assert_eq!(t.status, StatusCode::OK, "login: {}", t.body);
        User {
            access: t.body["access_token"].as_str().unwrap().to_owned(),
            refresh: t.body["refresh_token"].as_str().unwrap().to_owned(),
            ..user
        }
    }

    /// Follows the newest verification link mailed to `email`.
    async fn verify(&self, email: &str) {
        let mail = self.mail.wait_for(email, "Subject: Confirm your e-mail address").await;
        let token = link_token(&mail);
        let r = self.post("/api/v1/auth/verify-email", None, json!({"token": token})).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "verify {email}: {}", r.body);
    }

    async fn register_unverified(&self, name: &str) -> User {
        let email = format!("{}@example.com", common::unique(name));
        let r =
            self.post("/api/v1/auth/register", None, json!({"email": email, "password": PASSWORD, "name": name})).await;
        assert_eq!((r.status, &r.body), (StatusCode::ACCEPTED, &json!({"email": email})), "register: {}", r.body);
        let t = self.login(&email, PASSWORD).await;
        assert_eq!(t.status, StatusCode::OK, "login: {}", t.body);
        let access = t.body["access_token"].as_str().unwrap().to_owned();
        let me = self.get("/api/v1/me", Some(&access)).await;
        assert_eq!(me.body["email_verified"], false, "{}", me.body);
        User {
            id: me.body["id"].as_str().unwrap().to_owned(),
            email,
            access,
            refresh: t.body["refresh_token"].as_str().unwrap().to_owned(),
        }
    }

    /// The same platform seen from another client IP: requests leave from `127.0.0.<host>`.
    fn seen_from(&self, host: u8) -> Api {
        let http = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, host])).build().unwrap();
        Api { http, base: self.base.clone(), mail: self.mail.clone() }
    }

    async fn login(&self, email: &str, password: &str) -> Reply {
        self.post("/api/v1/auth/login", None, json!({"email": email, "password": password})).await
    }

    async fn create_event(&self, org: &User, title: &str, city: &str, starts_in_h: i64, capacity: u32) -> Value {
        let now = time::OffsetDateTime::now_utc();
        let starts = now + time::Duration::hours(starts_in_h);
        let fmt = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
        let body = json!({
            "title": title, "description": "end-to-end", "city": city, "category": "music",
            "starts_at": fmt(starts), "ends_at": fmt(starts + time::Duration::hours(2)), "capacity": capacity,
        });
        let r = self.post("/api/v1/events", Some(&org.access), body).await;
        assert_eq!(r.status, StatusCode::CREATED, "create event: {}", r.body);
        r.body
    }

    /// Creates and publishes an event, then waits until joins has its capacity (the
    /// `event.published` event travelled through the outbox and the bus).
    async fn published_event(&self, org: &User, title: &str, city: &str, starts_in_h: i64, capacity: u32) -> String {
        let ev = self.create_event(org, title, city, starts_in_h, capacity).await;
        let id = ev["id"].as_str().unwrap().to_owned();
        let r = self.post(&format!("/api/v1/events/{id}/publish"), Some(&org.access), json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "publish: {}", r.body);
        assert_eq!(r.body["status"], "published");
        let path = format!("/api/v1/events/{id}/counts");
        // Polled as the organizer: anonymous polls would spend the run's shared per-IP budget.
        eventually("joins learns about the published event", || async {
            self.get(&path, Some(&org.access)).await.status == StatusCode::OK
        })
        .await;
        id
    }

    async fn join(&self, user: &User, event: &str, key: &str) -> Reply {
        self.call(
            Method::POST,
            &format!("/api/v1/events/{event}/join"),
            Some(&user.access),
            None,
            &[("idempotency-key", key)],
        )
        .await
    }

    /// [`Api::join`] as a client told "503, retry after N s" does: again, with the same
    /// idempotency key, at most five times. A crowd on the test machine's two cores, with the
    /// rest of the suite running, can see the gateway's limiter time out on Redis (fail-closed
    /// for joins) once in a while; what the crowd checks is capacity and order, and the key
    /// makes a retried join count once.
    async fn join_retrying(&self, user: &User, event: &str, key: &str) -> Reply {
        let mut reply = self.join(user, event, key).await;
        for _ in 0..4 {
            if reply.status != StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            let wait = reply
                .headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1)
                .min(5);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            reply = self.join(user, event, key).await;
        }
        reply
    }

    async fn notification_kinds(&self, user: &User) -> Vec<String> {
        let r = self.get("/api/v1/me/notifications?limit=100", Some(&user.access)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body["items"].as_array().unwrap().iter().map(|n| n["kind"].as_str().unwrap().to_owned()).collect()
    }
}

/// The token of a verification mail to `email` other than `not`.
async fn eventually_token(api: &Api, email: &str, not: &str) -> String {
    let header = format!("To: {email}\r\n");
    eventually_some(&format!("a second verification mail to {email}"), || async {
        api.mail
            .messages()
            .iter()
            .map(|m| decode_quoted_printable(m))
            .filter(|m| m.contains(&header) && m.contains("Subject: Confirm your e-mail address"))
            .map(|m| link_token(&m))
            .find(|t| t != not)
    })
    .await
}

/// [`cityevents_common::testing::eventually`] with this test's 30 s.
async fn eventually_some<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    cityevents_common::testing::eventually(what, Duration::from_secs(30), f).await
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn scenario(platform: &Platform, mail: Mailbox) {
    let base = platform.base.as_str();
    let api = Api { http: client(), base: base.to_owned(), mail };

    // The public contract is documented where clients find it.
    let doc = api.get("/api/v1/openapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc.body["openapi"]);

    // --- auth: register; an unverified account may not create events; the mailed link verifies
    // it; login, me; refresh rotation and reuse detection
    let org = api.register_unverified("organizer").await;
    let now = time::OffsetDateTime::now_utc() + time::Duration::hours(24);
    let at = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
    let draft = json!({"title": "Too soon", "city": "Lyon", "category": "music", "starts_at": at(now),
                       "ends_at": at(now + time::Duration::hours(1)), "capacity": 5});
    let refused = api.post("/api/v1/events", Some(&org.access), draft).await;
    assert_eq!(refused.problem(403)["code"], "email_unverified");
    // Asking again mails a new link; the first stops working.
    let first = link_token(&api.mail.wait_for(&org.email, "Subject: Confirm your e-mail address").await);
    let again = api.post("/api/v1/auth/verify-email/request", Some(&org.access), json!({})).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    let fresh = eventually_token(&api, &org.email, &first).await;
    let stale = api.post("/api/v1/auth/verify-email", None, json!({"token": first})).await;
    assert_eq!(stale.problem(400)["code"], "invalid_token");
    let ok = api.post("/api/v1/auth/verify-email", None, json!({"token": fresh})).await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{}", ok.body);
    let t = api.login(&org.email, PASSWORD).await;
    let org = User {
        access: t.body["access_token"].as_str().unwrap().to_owned(),
        refresh: t.body["refresh_token"].as_str().unwrap().to_owned(),
        ..org
    };
    let me = api.get("/api/v1/me", Some(&org.access)).await;
    assert_eq!(me.body["email_verified"], true, "{}", me.body);
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!((me.body["id"].as_str(), me.body["email"].as_str()), (Some(org.id.as_str()), Some(org.email.as_str())));
    assert_eq!(api.get("/api/v1/me", None).await.problem(401)["status"], 401);

    let r1 = org.refresh.clone();
    let rotated = api.post("/api/v1/auth/refresh", None, json!({"refresh_token": r1})).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let r2 = rotated.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2, "rotated");
    // A second tab refreshing r1 right after gets the same successor …
    let tab = api.post("/api/v1/auth/refresh", None, json!({"refresh_token": r1})).await;
    assert_eq!((tab.status, tab.body["refresh_token"].as_str()), (StatusCode::OK, Some(r2.as_str())), "{}", tab.body);
    // … but once r2 is spent, r1 coming back is reuse: the whole family is revoked.
    let next = api.post("/api/v1/auth/refresh", None, json!({"refresh_token": r2})).await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.body);
    let reuse = api.post("/api/v1/auth/refresh", None, json!({"refresh_token": r1})).await;
    assert_eq!(reuse.problem(401)["code"], "refresh_reused");
    let after = api.post("/api/v1/auth/refresh", None, json!({"refresh_token": next.body["refresh_token"]})).await;
    after.problem(401);
    // The reuse ended every session of the organizer: within 5 s the gateway and each service
    // behind it (asked directly) refuse the access token it still holds.
    sessions_ended_everywhere(&api, &platform.upstreams, &org.access).await;
    forwarded_addresses_only_from_the_gateway(&api, &platform.upstreams).await;
    let t = api.login(&org.email, PASSWORD).await;
    let org = User {
        access: t.body["access_token"].as_str().unwrap().to_owned(),
        refresh: t.body["refresh_token"].as_str().unwrap().to_owned(),
        ..org
    };
    assert_eq!(api.get("/api/v1/me/events", Some(&org.access)).await.status, StatusCode::OK, "signed in again");

    // --- sign-in delayed after 5 failures from one client IP, the same answer whether or not the
    // account exists; the owner signing in from another IP is not locked out
    let victim = api.register("victim").await;
    let ghost = format!("{}@example.com", common::unique("ghost"));
    for email in [&victim.email, &ghost] {
        for _ in 0..5 {
            let r = api.login(email, "wrong password, wrong").await;
            assert_eq!(r.problem(401)["code"], "invalid_credentials");
        }
        let locked = api.login(email, PASSWORD).await;
        assert_eq!(locked.problem(429)["code"], "locked", "{email}");
        assert!(locked.headers.contains_key("retry-after"));
    }
    let owner = api.seen_from(2).login(&victim.email, PASSWORD).await;
    assert_eq!(owner.status, StatusCode::OK, "the owner from another IP: {}", owner.body);

    // --- a forgotten password: reset through the mailed link (every session ends), the
    // sessions list, a password change, sign out everywhere
    if !matches!(api.mail, Mailbox::Unread) {
        let rita = api.register("rita").await;
        for email in [rita.email.as_str(), "nobody-at-all@example.com"] {
            let r = api.post("/api/v1/auth/password-reset/request", None, json!({"email": email})).await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "the same answer for {email}: {}", r.body);
        }
        let token = link_token(&api.mail.wait_for(&rita.email, "Subject: Choose a new password").await);
        let fresh_password = "another correct horse battery";
        let reset =
            api.post("/api/v1/auth/password-reset", None, json!({"token": token, "password": fresh_password})).await;
        assert_eq!(reset.status, StatusCode::OK, "{}", reset.body);
        api.mail.wait_for(&rita.email, "Subject: Your password was changed").await;
        let old = api.post("/api/v1/auth/refresh", None, json!({"refresh_token": rita.refresh})).await;
        assert_eq!(old.problem(401)["code"], "invalid_refresh_token", "every session ended");
        assert_eq!(api.login(&rita.email, PASSWORD).await.problem(401)["code"], "invalid_credentials");
        let t = api.login(&rita.email, fresh_password).await;
        assert_eq!(t.status, StatusCode::OK, "{}", t.body);
        let access = t.body["access_token"].as_str().unwrap().to_owned();
        // A second sign-in is a second session; ending it from the first ends its refresh token
        // and every access token, and the first session refreshes into a new one.
        let other = api.login(&rita.email, fresh_password).await;
        let sessions = api.get("/api/v1/auth/sessions", Some(&access)).await;
        let items = sessions.body["items"].as_array().unwrap().clone();
        assert_eq!(items.len(), 2, "{}", sessions.body);
        let newest = items[0]["id"].as_str().unwrap();
        let ended =
            api.call(Method::DELETE, &format!("/api/v1/auth/sessions/{newest}"), Some(&access), None, &[]).await;
        assert_eq!(ended.status, StatusCode::NO_CONTENT, "{}", ended.body);
        let gone = api.post("/api/v1/auth/refresh", None, json!({"refresh_token": other.body["refresh_token"]})).await;
        assert_eq!(gone.problem(401)["code"], "invalid_refresh_token", "the ended session");
        sessions_ended_everywhere(&api, &platform.upstreams, &access).await;
        let t = api.post("/api/v1/auth/refresh", None, json!({"refresh_token": t.body["refresh_token"]})).await;
        assert_eq!(t.status, StatusCode::OK, "the first session lives: {}", t.body);
        let access = t.body["access_token"].as_str().unwrap().to_owned();
        let sessions = api.get("/api/v1/auth/sessions", Some(&access)).await;
        assert_eq!(sessions.body["items"].as_array().map(Vec::len), Some(1), "{}", sessions.body);
        let change = json!({"current_password": fresh_password, "new_password": PASSWORD});
        let changed = api.post("/api/v1/auth/password", Some(&access), change).await;
        assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
        let changed_refresh = changed.body["refresh_token"].as_str().unwrap().to_owned();
        // The change ended the other access tokens too; the caller goes on with the new pair.
        sessions_ended_everywhere(&api, &platform.upstreams, &access).await;
        let access = changed.body["access_token"].as_str().unwrap().to_owned();
        assert_eq!(api.post("/api/v1/auth/logout-all", Some(&access), json!({})).await.status, StatusCode::NO_CONTENT);
        let gone = api.post("/api/v1/auth/refresh", None, json!({"refresh_token": changed_refresh})).await;
        assert_eq!(gone.problem(401)["code"], "invalid_refresh_token", "signed out everywhere");
        sessions_ended_everywhere(&api, &platform.upstreams, &access).await;
    }

    // --- registering a taken address answers as for a new one; its owner is told by mail
    let body = json!({"email": org.email, "password": "somebody else's password", "name": "Mallory"});
    let taken = api.post("/api/v1/auth/register", None, body).await;
    assert_eq!((taken.status, &taken.body), (StatusCode::ACCEPTED, &json!({"email": org.email})));
    if !matches!(api.mail, Mailbox::Unread) {
        api.mail.wait_for(&org.email, "Subject: You already have an account").await;
    }

    // --- a look-alike address (a Cyrillic а among Latin letters) is refused at sign-up
    let body = json!({"email": "p\u{430}ypal@example.com", "password": PASSWORD, "name": "Mallory"});
    let look_alike = api.post("/api/v1/auth/register", None, body).await;
    assert_eq!(look_alike.problem(400)["errors"][0]["field"], "email");
    // … and one that looks like an account's as a whole (`rn` for `m`) answers as any sign-up
    // does, makes no account, and is told by mail that it cannot be used.
    let modern = api.register_unverified("modern").await;
    let rnodern = modern.email.replacen("modern", "rnodern", 1);
    let body = json!({"email": rnodern, "password": PASSWORD, "name": "Mallory"});
    let r = api.post("/api/v1/auth/register", None, body).await;
    assert_eq!((r.status, &r.body), (StatusCode::ACCEPTED, &json!({"email": rnodern})));
    if !matches!(api.mail, Mailbox::Unread) {
        api.mail.wait_for(&rnodern, "Subject: This address cannot be used").await;
    }
    assert_eq!(api.login(&rnodern, PASSWORD).await.problem(401)["code"], "invalid_credentials");

    // --- capacity 2: three joins → 2 confirmed, 1 waitlisted; idempotent retry
    let (u1, u2, u3) = (api.register("u1").await, api.register("u2").await, api.register("u3").await);
    let ev = api.published_event(&org, "Jazz night", "Lisbon", 48, 2).await;
    let first = api.join(&u1, &ev, "key-u1").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.body["status"], "confirmed");
    assert_eq!(api.join(&u2, &ev, "key-u2").await.body["status"], "confirmed");
    let third = api.join(&u3, &ev, "key-u3").await;
    assert_eq!(third.body["status"], "waitlisted", "{}", third.body);
    let again = api.join(&u1, &ev, "key-u1").await;
    assert_eq!((again.status, &again.body), (first.status, &first.body), "same key, same answer");
    assert_eq!(again.headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    api.join(&u1, &ev, "another-key").await.problem(409);
    api.call(Method::POST, &format!("/api/v1/events/{ev}/join"), Some(&u1.access), None, &[]).await.problem(400);
    // The organizer does not join their own event.
    assert_eq!(api.join(&org, &ev, "key-org").await.problem(403)["code"], "organizer_cannot_join");
    calendars(&api, &ev, &u1, &u3).await;
    organizers(&api, &org, &ev, &u2).await;
    live_seats(&api, &org, &u1).await;
    online_link(&api, &org, &u1, &u3).await;
    feeds(&api, &org, &u3).await;
    covers(&api, &org, &ev, &u3).await;

    // --- discovery through the gateway: full-text search with filters, city suggestions, and a
    // parameter no operation takes refused by name (never silently ignored)
    let found = api.get("/api/v1/events?q=JAZZ%20lisb&exclude_expired=true&city=lisbon&limit=100", None).await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.body);
    let listed = found.body["items"].as_array().unwrap().iter().find(|e| e["id"] == ev.as_str()).cloned();
    // Seats in every list item: 2 of 2 taken, one waiting.
    assert_eq!(
        listed.map(|e| e["seats"].clone()),
        Some(json!({"capacity": 2, "taken": 2, "free": 0, "waitlisted": 1})),
        "{}",
        found.body
    );
    let none = api.get("/api/v1/events?q=jazz&city=porto-nowhere", None).await;
    assert_eq!(none.body["items"], json!([]), "{}", none.body);
    let cities = api.get("/api/v1/meta/cities?q=lis", None).await;
    assert_eq!(cities.status, StatusCode::OK, "{}", cities.body);
    assert!(cities.body["items"].as_array().unwrap().iter().any(|c| c["city"] == "Lisbon"), "{}", cities.body);
    let unknown = api.get("/api/v1/events?search=jazz", None).await;
    assert_eq!(unknown.problem(400)["errors"][0]["field"], "search", "{}", unknown.body);

    // The aggregate view: event + my participation + counts.
    let view = api.get(&format!("/api/v1/events/{ev}/view"), Some(&u3.access)).await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.body);
    assert_eq!(view.body["event"]["id"], ev.as_str());
    assert_eq!(view.body["participation"]["status"], "waitlisted", "{}", view.body);
    assert_eq!(view.body["counts"]["confirmed"], 2, "{}", view.body);

    // Personal answers are never stored by a browser or a shared cache; public ones may be.
    let cache = |r: &Reply| r.headers.get("cache-control").and_then(|v| v.to_str().ok()).map(str::to_owned);
    for (path, who) in [
        ("/api/v1/me".to_owned(), &u3),
        ("/api/v1/me/joins".to_owned(), &u3),
        ("/api/v1/me/notifications".to_owned(), &u3),
        ("/api/v1/me/events".to_owned(), &org),
        (format!("/api/v1/events/{ev}/join"), &u3),
        (format!("/api/v1/events/{ev}/view"), &u3),
        (format!("/api/v1/events/{ev}/participants"), &org),
    ] {
        let r = api.get(&path, Some(&who.access)).await;
        assert_eq!((r.status, cache(&r).as_deref()), (StatusCode::OK, Some("no-store")), "{path}: {}", r.body);
    }
    let login = api.login(&u3.email, PASSWORD).await;
    assert_eq!(cache(&login).as_deref(), Some("no-store"));
    for path in [format!("/api/v1/events/{ev}/counts"), format!("/api/v1/events/{ev}/view"), "/api/v1/events".into()] {
        let r = api.get(&path, None).await;
        assert_eq!((r.status, cache(&r)), (StatusCode::OK, None), "{path}: public");
    }

    // --- one leaves → the waitlisted user is promoted and told
    let left = api.call(Method::DELETE, &format!("/api/v1/events/{ev}/join"), Some(&u1.access), None, &[]).await;
    assert_eq!(left.status, StatusCode::NO_CONTENT, "{}", left.body);
    let mine = format!("/api/v1/events/{ev}/join");
    let r = api.get(&mine, Some(&u3.access)).await;
    assert_eq!(r.body["status"], "confirmed", "promoted in the same transaction: {}", r.body);
    eventually("u3 is notified of the promotion", || async {
        api.notification_kinds(&u3).await.iter().any(|k| k == "join.promoted")
    })
    .await;

    // The organizer hears of joins and leaves in one digest (every second here); a new venue
    // reaches those still in.
    eventually("the organizer gets a digest of joins and leaves", || async {
        api.notification_kinds(&org).await.iter().any(|k| k == "event.activity")
    })
    .await;
    let moved = api
        .call(
            Method::PATCH,
            &format!("/api/v1/events/{ev}"),
            Some(&org.access),
            Some(json!({"venue": "Hot Clube"})),
            &[],
        )
        .await;
    assert_eq!((moved.status, moved.body["venue"].as_str()), (StatusCode::OK, Some("Hot Clube")), "{}", moved.body);
    for u in [&u2, &u3] {
        eventually("participants hear of the new venue", || async {
            api.notification_kinds(u).await.iter().any(|k| k == "event.changed")
        })
        .await;
    }

    // Organizer-only views.
    let stats = api.get(&format!("/api/v1/events/{ev}/stats"), Some(&org.access)).await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.body);
    assert_eq!((stats.body["confirmed"].as_u64(), stats.body["waitlisted"].as_u64()), (Some(2), Some(0)));
    api.get(&format!("/api/v1/events/{ev}/participants"), Some(&u2.access)).await.problem(403);
    let participants = api.get(&format!("/api/v1/events/{ev}/participants"), Some(&org.access)).await;
    assert_eq!(participants.body["items"].as_array().unwrap().len(), 2, "{}", participants.body);
    // With display names, from auth through the gateway.
    let mut names: Vec<&str> =
        participants.body["items"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["u2", "u3"], "{}", participants.body);

    // --- mail preferences through the gateway: u3 turns cancellation mail off
    let prefs = api.get("/api/v1/me/mail-preferences", Some(&u3.access)).await;
    let all_on = json!({"event_canceled": true, "waitlist_promoted": true, "removed": true, "followed_published": true,
            "joined": true, "event_changed": true, "reminders": true});
    assert_eq!(prefs.body, all_on);
    let off = api
        .call(Method::PUT, "/api/v1/me/mail-preferences", Some(&u3.access), Some(json!({"event_canceled": false})), &[])
        .await;
    assert_eq!((off.status, &off.body["event_canceled"]), (StatusCode::OK, &json!(false)), "{}", off.body);

    // --- the organizer cancels → every participant is notified, and mailed unless turned off
    let canceled =
        api.post(&format!("/api/v1/events/{ev}/cancel"), Some(&org.access), json!({"reason": "The band is ill"})).await;
    assert_eq!(canceled.status, StatusCode::OK, "{}", canceled.body);
    for u in [&u2, &u3] {
        eventually("participants are notified of the cancellation", || async {
            api.notification_kinds(u).await.iter().any(|k| k == "join.canceled")
        })
        .await;
    }
    // The joins service has closed it: a new join is refused (counted as refused, event_closed).
    let again = api.join(&u2, &ev, "again-after-cancel").await;
    assert_eq!(again.problem(409)["code"], "event_closed");
    let n = api.get("/api/v1/me/notifications", Some(&u2.access)).await;
    assert!(
        n.body["items"].as_array().unwrap().iter().any(|i| i["message"] == "Jazz night was canceled: The band is ill"),
        "the reason reaches the participant: {}",
        n.body
    );
    if !matches!(api.mail, Mailbox::Unread) {
        let m = api.mail.wait_for(&u2.email, "Subject: Called off: Jazz night").await;
        assert!(m.contains(&format!("/events/{ev}")), "the mail links the event: {m}");
        assert!(m.contains("The band is ill"), "the mail gives the reason: {m}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let header = format!("To: {}\r\n", u3.email);
        assert!(
            !api.mail.messages().iter().any(|m| m.contains(&header) && m.contains("Subject: Called off")),
            "u3 turned cancellation mail off"
        );
    }
    let n = api.get("/api/v1/me/notifications", Some(&u2.access)).await;
    let id = n.body["items"][0]["id"].as_str().unwrap().to_owned();
    let read = api.post(&format!("/api/v1/me/notifications/{id}/read"), Some(&u2.access), json!({})).await;
    assert_eq!(read.status, StatusCode::NO_CONTENT, "{}", read.body);
    api.post(&format!("/api/v1/me/notifications/{id}/read"), Some(&u3.access), json!({})).await.problem(404);

    // --- 50 concurrent joins on capacity 10 → exactly 10 confirmed
    // Set-up, not the subject: eight sign-ups at a time, so that 50 Argon2 hashes at production
    // cost on two shared cores do not outlast the gateway's 5 s write deadline.
    let crowd: Vec<User> = futures_util::StreamExt::collect(futures_util::StreamExt::buffered(
        futures_util::stream::iter((0..50).map(|i| {
            let api = &api;
            // Joining needs no verified address.
            async move { api.register_unverified(&format!("crowd{i}")).await }
        })),
        8,
    ))
    .await;
    let big = api.published_event(&org, "Rooftop", "Porto", 72, 10).await;
    let answers = futures_util::future::join_all(crowd.iter().enumerate().map(|(i, u)| {
        let (api, big) = (&api, &big);
        async move { api.join_retrying(u, big, &format!("crowd-{i}")).await }
    }))
    .await;
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for a in &answers {
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        *by_status.entry(a.body["status"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(by_status.get("confirmed"), Some(&10), "{by_status:?}");
    assert_eq!(by_status.get("waitlisted"), Some(&40), "{by_status:?}");
    let counts = api.get(&format!("/api/v1/events/{big}/counts"), None).await;
    assert_eq!((counts.body["confirmed"].as_u64(), counts.body["waitlisted"].as_u64()), (Some(10), Some(40)));

    // --- batch: known ids come back in a map, unknown ones are absent
    let unknown = uuid::Uuid::now_v7().to_string();
    let batch = api.post("/api/v1/events/batch", None, json!({"ids": [big, ev, unknown]})).await;
    assert_eq!(batch.status, StatusCode::OK, "{}", batch.body);
    let got: BTreeSet<&str> = batch.body["events"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(got, BTreeSet::from([big.as_str(), ev.as_str()]));
    let too_many: Vec<String> = (0..101).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    api.post("/api/v1/events/batch", None, json!({"ids": too_many})).await.problem(400);

    // --- keyset pagination is stable under inserts
    let city = common::unique("Town");
    let mut originals = Vec::new();
    for h in [100, 110, 120, 130, 140] {
        originals.push(api.published_event(&org, &format!("E{h}"), &city, h, 0).await);
    }
    let list = |cursor: Option<String>| {
        let (api, city) = (&api, &city);
        async move {
            let mut path = format!("/api/v1/events?city={city}&limit=2");
            if let Some(c) = cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let r = api.get(&path, None).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            let ids: Vec<String> =
                r.body["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
            (ids, r.body["next_cursor"].as_str().map(str::to_owned))
        }
    };
    let (mut seen, mut cursor) = list(None).await;
    assert_eq!(seen, originals[..2]);
    // Inserted before the cursor (earlier start) and after it (later start).
    api.published_event(&org, "early", &city, 90, 0).await;
    let late = api.published_event(&org, "late", &city, 150, 0).await;
    while let Some(c) = cursor {
        let (ids, next) = list(Some(c)).await;
        seen.extend(ids);
        cursor = next;
    }
    let mut expected = originals.clone();
    expected.push(late);
    assert_eq!(seen, expected, "no item skipped or repeated");

    // --- every input limit → a 4xx problem
    let long = |n: usize| "x".repeat(n);
    let now = time::OffsetDateTime::now_utc() + time::Duration::days(3);
    let t = |d: i64| (now + time::Duration::hours(d)).format(&time::format_description::well_known::Rfc3339).unwrap();
    let valid = json!({"title": "ok", "description": "", "city": "c", "category": "other", "starts_at": t(0), "ends_at": t(1), "capacity": 5});
    for (field, value) in [
        ("title", json!(long(121))),
        ("description", json!(long(4001))),
        ("city", json!(long(81))),
        ("category", json!(long(81))),
        ("ends_at", json!(t(-1))),
        ("starts_at", json!("tomorrow")),
        ("capacity", json!(-1)),
    ] {
        let mut body = valid.clone();
        body[field] = value;
        let r = api.post("/api/v1/events", Some(&org.access), body).await;
        assert!(r.status.is_client_error(), "{field}: {}", r.status);
        r.problem(r.status.as_u16());
    }
    for path in [
        "/api/v1/events?limit=101",
        "/api/v1/events?limit=0",
        "/api/v1/events?cursor=garbage",
        "/api/v1/events?sort=title",
    ] {
        api.get(path, None).await.problem(400);
    }
    for body in [
        json!({"email": "not-an-email", "password": PASSWORD, "name": "n"}),
        json!({"email": format!("{}@example.com", long(250)), "password": PASSWORD, "name": "n"}),
        json!({"email": "short@example.com", "password": "short", "name": "n"}),
        json!({"email": "name@example.com", "password": PASSWORD, "name": long(101)}),
        json!({"email": "extra@example.com", "password": PASSWORD, "name": "n", "role": "admin"}),
    ] {
        api.post("/api/v1/auth/register", None, body).await.problem(400);
    }
    // On its own client: the gateway answers 413 without reading the body and then closes the
    // connection, which must not be pooled for the next request.
    let huge = client()
        .post(format!("{base}/api/v1/events"))
        .bearer_auth(&org.access)
        .header("content-type", "application/json")
        // Over the gateway's 64 KiB limit, yet small enough to be written whole before the
        // gateway answers and closes (a multi-megabyte body can meet a closed socket first).
        .body(vec![b' '; 80 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let p: serde_json::Value = huge.json().await.unwrap();
    assert_eq!(p["code"], "body_too_large", "the gateway's 413 is the services' one: {p}");
    assert!(p["detail"].as_str().unwrap().contains("at most 64 KiB"), "{p}");
    api.join(&u2, &big, &long(200)).await.problem(400);
    api.get("/api/v1/events/not-a-uuid", None).await.problem(400);
    api.get("/api/v1/nothing-here", None).await.problem(404);

    // --- the gateway's rate limit → 429 with headers
    let hammer = api.register("hammer").await;
    let mut limited = None;
    for _ in 0..400 {
        let r = api.get("/api/v1/me", Some(&hammer.access)).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("the rate limit answers 429 within 400 requests");
    limited.problem(429);
    for h in ["retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        assert!(limited.headers.contains_key(h), "{h}: {:?}", limited.headers);
    }
    // Another user is not throttled by the hammer.
    assert_eq!(api.get("/api/v1/me", Some(&u2.access)).await.status, StatusCode::OK);
}

/// Waits at most 5 s for `access` to be refused as a token of an ended session by the gateway
/// and by every service behind it, each on a route of its own that needs a user.
/// Auth counts the gateway's `X-Forwarded-For` only with the proxy secret the gateway sends: a
/// caller on the same machine that talks to auth directly cannot pick the address that lockout
/// and the audit log key on (the finding: it could, from 127.0.0.1).
/// The event's iCalendar file for anyone; a personal feed read with nothing but its secret,
/// through the gateway (the secret never in a log line); a seat `CONFIRMED`, a wait `TENTATIVE`.
async fn calendars(api: &Api, ev: &str, seated: &User, waiting: &User) {
    let text = |r: reqwest::Response| async move {
        let status = r.status();
        let kind = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        (status, kind, r.text().await.unwrap())
    };
    let (status, kind, file) =
        text(api.http.get(format!("{}/api/v1/events/{ev}/calendar.ics", api.base)).send().await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (StatusCode::OK, "text/calendar; charset=utf-8"), "{file}");
    assert!(file.starts_with("BEGIN:VCALENDAR\r\n") && file.contains("METHOD:PUBLISH\r\n"), "{file}");
    assert!(file.contains(&format!("UID:{ev}@cityevents\r\n")), "{file}");
    // Created without a zone: UTC, written as UTC with no VTIMEZONE.
    assert!(file.contains("\r\nDTSTART:") && !file.contains("VTIMEZONE"), "{file}");
    let unknown = api.get(&format!("/api/v1/events/{}/calendar.ics", uuid::Uuid::now_v7()), None).await;
    unknown.problem(404);
    for (user, status) in [(seated, "STATUS:CONFIRMED"), (waiting, "STATUS:TENTATIVE")] {
        let made = api.post("/api/v1/me/calendar-feed", Some(&user.access), json!({})).await;
        assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
        let path = made.body["path"].as_str().unwrap().to_owned();
        let token = made.body["token"].as_str().unwrap().to_owned();
        let (s, kind, feed) = text(api.http.get(format!("{}{path}", api.base)).send().await.unwrap()).await;
        assert_eq!((s, kind.as_str()), (StatusCode::OK, "text/calendar; charset=utf-8"), "{feed}");
        assert!(!feed.contains("METHOD:"), "a feed has no method: {feed}");
        assert!(feed.contains(&format!("UID:{ev}@cityevents\r\n")) && feed.contains(status), "{status}: {feed}");
        // A token that is no secret of ours, and one revoked, find nothing.
        let forged = format!("{}/api/v1/calendars/{}/events.ics", api.base, "A".repeat(43));
        assert_eq!(api.http.get(forged).send().await.unwrap().status(), StatusCode::NOT_FOUND);
        let revoked = api.call(Method::DELETE, "/api/v1/me/calendar-feed", Some(&user.access), None, &[]).await;
        assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.body);
        let gone = api.http.get(format!("{}{path}", api.base)).send().await.unwrap();
        assert_eq!(gone.status(), StatusCode::NOT_FOUND, "{token} revoked");
    }
}

/// An open event page's stream (`GET /live?event=`, server-sent events, no session) tells the
/// seats as they are, then again when someone joins through the API.
async fn live_seats(api: &Api, org: &User, fan: &User) {
    let ev = api.published_event(org, "Live night", "Porto", 96, 5).await;
    let mut stream = api.http.get(format!("{}/live?event={ev}", api.base)).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    let mut read_until = async |needle: &str, seen: &mut String| {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while !seen.contains(needle) {
            let chunk = tokio::time::timeout_at(deadline, stream.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                other => panic!("no {needle:?} on the stream ({other:?}): {seen}"),
            }
        }
    };
    read_until("5 of 5 seats free", &mut seen).await;
    assert!(seen.contains("retry: 3000") && seen.contains("event: seats"), "{seen}");
    let joined = api.join(fan, &ev, "key-live").await;
    assert_eq!(joined.status, StatusCode::CREATED, "{}", joined.body);
    read_until("4 of 5 seats free", &mut seen).await;
}

/// An online event's join link through the gateway: the organizer sets it, the event says it
/// is online without it, a seat holder gets it (the events service asks joins), anyone else 403.
async fn online_link(api: &Api, org: &User, fan: &User, other: &User) {
    let ev = api.published_event(org, "Online jazz", "Lyon", 100, 3).await;
    let link = "https://meet.example.com/jazz-room";
    let path = format!("/api/v1/events/{ev}");
    let set = api.call(Method::PATCH, &path, Some(&org.access), Some(json!({"online_url": link})), &[]).await;
    assert_eq!((set.status, set.body["online_url"].as_str()), (StatusCode::OK, Some(link)), "{}", set.body);
    let public = api.get(&path, Some(&other.access)).await;
    assert_eq!((public.body["online"].as_bool(), public.body.get("online_url")), (Some(true), None), "{}", public.body);
    let link_path = format!("{path}/online-link");
    api.get(&link_path, Some(&fan.access)).await.problem(403);
    let joined = api.join(fan, &ev, "key-online").await;
    assert_eq!(joined.status, StatusCode::CREATED, "{}", joined.body);
    let got = api.get(&link_path, Some(&fan.access)).await;
    assert_eq!((got.status, got.body["url"].as_str()), (StatusCode::OK, Some(link)), "{}", got.body);
    api.get(&link_path, Some(&other.access)).await.problem(403);
    api.get(&link_path, None).await.problem(401);
}

/// A cover picture through the gateway: an upload past the gateway's general body limit (its
/// one route that takes more), stored by the events service, served for good, in lists.
async fn covers(api: &Api, org: &User, ev: &str, other: &User) {
    // Noise compresses badly: a picture of a few hundred kilobytes, past the 64 KiB limit.
    let mut seed = 0x2545_f491_u32;
    let img = image::RgbImage::from_fn(900, 600, |_, _| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let [a, b, c, _] = seed.to_le_bytes();
        image::Rgb([a, b, c])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95).encode_image(&img).unwrap();
    assert!(jpeg.len() > 64 * 1024, "{} bytes", jpeg.len());
    let put = |bytes: Vec<u8>, token: &str| {
        let boundary = "keel-e2e-cover";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n\
             Content-Type: image/jpeg\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        api.http
            .put(format!("{}/api/v1/events/{ev}/cover", api.base))
            .bearer_auth(token)
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(body)
            .send()
    };
    let resp = put(jpeg.clone(), &other.access).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "only the organizer");
    let resp = put(jpeg, &org.access).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let event: Value = resp.json().await.unwrap();
    let card = event["cover"]["card"].as_str().unwrap().to_owned();
    let got = api.http.get(format!("{}{card}", api.base)).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()["content-type"], "image/jpeg");
    assert_eq!(got.headers()["cache-control"], "public, max-age=31536000, immutable");
    let bytes = got.bytes().await.unwrap();
    let shown = image::load_from_memory(&bytes).unwrap();
    assert_eq!((shown.width(), shown.height()), (640, 360));
    let listed = api.get("/api/v1/events?limit=100", None).await;
    let item = listed.body["items"].as_array().unwrap().iter().find(|i| i["id"] == ev).cloned().unwrap();
    assert_eq!(item["cover"]["card"], card.as_str(), "lists carry it");
}

/// The trending feed counts a page viewed through the API (the gateway sends views every 5 s);
/// the for-you feed has a followed organizer's event; both carry seats.
async fn feeds(api: &Api, org: &User, fan: &User) {
    let ev = api.published_event(org, "Trend night", "Faro", 120, 7).await;
    // Signed in throughout: anonymous calls share one address's budget with the other runs.
    for _ in 0..3 {
        let viewed = api.get(&format!("/api/v1/events/{ev}/view"), Some(&fan.access)).await;
        assert_eq!(viewed.status, StatusCode::OK, "{}", viewed.body);
    }
    // Views are sent every 5 s: asked twice a second, not to spend the address's rate limit,
    // and with a new limit each time: the events service keeps an answer per city and limit
    // for 30 s (`app.trending_cache`).
    let asked = std::sync::atomic::AtomicU32::new(50);
    let trending = eventually_some("the viewed event trending", || async {
        let limit = asked.fetch_sub(1, std::sync::atomic::Ordering::SeqCst).max(1);
        let t = api.get(&format!("/api/v1/events/trending?city=faro&limit={limit}"), Some(&fan.access)).await;
        assert_eq!(t.status, StatusCode::OK, "{}", t.body);
        let items = t.body["items"].as_array().cloned().unwrap_or_default();
        let found = items.into_iter().find(|e| e["id"] == ev.as_str());
        if found.is_none() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        found
    })
    .await;
    assert_eq!(trending["seats"]["free"], 7, "{trending}");
    api.get("/api/v1/events/trending?limit=0", Some(&fan.access)).await.problem(400);
    api.get("/api/v1/me/feed", None).await.problem(401);
    let follow = format!("/api/v1/organizers/{}/follow", org.id);
    assert_eq!(api.call(Method::PUT, &follow, Some(&fan.access), None, &[]).await.status, StatusCode::OK);
    let mine = api.get("/api/v1/me/feed?limit=50", Some(&fan.access)).await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.body);
    assert_eq!(mine.headers["cache-control"], "private, no-store");
    let items = mine.body["items"].as_array().unwrap();
    let found =
        items.iter().find(|e| e["id"] == ev.as_str()).unwrap_or_else(|| panic!("not for the follower: {}", mine.body));
    assert_eq!(found["seats"]["capacity"], 7);
    assert_eq!(api.call(Method::DELETE, &follow, Some(&fan.access), None, &[]).await.status, StatusCode::NO_CONTENT);
}

/// An organizer's public profile and events, and a follower told of their next event.
async fn organizers(api: &Api, org: &User, ev: &str, fan: &User) {
    let saved = api
        .call(Method::PATCH, "/api/v1/me/profile", Some(&org.access), Some(json!({"bio": "Jazz on Fridays."})), &[])
        .await;
    assert_eq!(
        (saved.status, saved.body["bio"].as_str()),
        (StatusCode::OK, Some("Jazz on Fridays.")),
        "{}",
        saved.body
    );
    let long = api
        .call(Method::PATCH, "/api/v1/me/profile", Some(&org.access), Some(json!({"bio": "x".repeat(501)})), &[])
        .await;
    assert_eq!(long.problem(400)["errors"][0]["field"], "bio");
    let profile = api.get(&format!("/api/v1/profiles/{}", org.id), None).await;
    assert_eq!(
        (profile.status, profile.body["bio"].as_str()),
        (StatusCode::OK, Some("Jazz on Fridays.")),
        "{}",
        profile.body
    );
    let theirs = api.get(&format!("/api/v1/events?organizer={}", org.id), None).await;
    assert_eq!(theirs.status, StatusCode::OK, "{}", theirs.body);
    let items = theirs.body["items"].as_array().unwrap();
    assert!(items.iter().any(|i| i["id"] == ev), "{}", theirs.body);
    assert!(items.iter().all(|i| i["organizer_id"] == org.id.as_str()), "{}", theirs.body);
    let path = format!("/api/v1/organizers/{}/follow", org.id);
    let followed = api.call(Method::PUT, &path, Some(&fan.access), None, &[]).await;
    assert_eq!(followed.status, StatusCode::OK, "{}", followed.body);
    let count = api.get(&format!("/api/v1/organizers/{}/followers", org.id), None).await;
    assert_eq!(count.body["followers"], 1, "{}", count.body);
    api.published_event(org, "Late show", "Lisbon", 72, 10).await;
    eventually("the follower hears of the new event", || async {
        api.notification_kinds(fan).await.iter().any(|k| k == "event.followed")
    })
    .await;
    let unfollowed = api.call(Method::DELETE, &path, Some(&fan.access), None, &[]).await;
    assert_eq!(unfollowed.status, StatusCode::NO_CONTENT, "{}", unfollowed.body);
}

async fn forwarded_addresses_only_from_the_gateway(api: &Api, upstreams: &[(String, String)]) {
    let auth = &upstreams.iter().find(|(name, _)| name == "auth").expect("auth's address").1;
    let user = api.register_unverified("spoofed").await;
    let http = client();
    let login = |password: &'static str, from: String| {
        let body = json!({"email": user.email, "password": password});
        http.post(format!("{auth}/api/v1/auth/login")).header("x-forwarded-for", from).json(&body).send()
    };
    for i in 0..5 {
        let r = login("wrong password, wrong", format!("203.0.113.{i}")).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // Had auth believed the header, these were five addresses with one failure each.
    let r = login(PASSWORD, "203.0.113.99".into()).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "the five failures were all the caller's own address");
    // Through the gateway, from another address: auth sees that one, and lets it in.
    let other =
        reqwest::Client::builder().no_proxy().local_address(std::net::IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let body = json!({"email": user.email, "password": PASSWORD});
    let r = other.post(format!("{}/api/v1/auth/login", api.base)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the gateway's forwarded address: {}", r.text().await.unwrap());
}

async fn sessions_ended_everywhere(api: &Api, upstreams: &[(String, String)], access: &str) {
    let route = |svc: &str| match svc {
        "auth" => "/api/v1/me",
        "events" => "/api/v1/me/events",
        "joins" => "/api/v1/me/joins",
        _ => "/api/v1/me/notifications",
    };
    let mut targets = vec![("gateway".to_owned(), api.base.clone(), "/api/v1/me/joins")];
    targets.extend(upstreams.iter().map(|(svc, url)| (svc.clone(), url.clone(), route(svc))));
    assert_eq!(targets.len(), 5, "{targets:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for (svc, base, path) in targets {
        let direct = Api { http: api.http.clone(), base, mail: Mailbox::Unread };
        loop {
            let r = direct.get(path, Some(access)).await;
            let detail = r.body["detail"].as_str().unwrap_or_default();
            if r.status == StatusCode::UNAUTHORIZED && detail.contains("session was ended") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{svc} still accepts the ended session: {} {}",
                r.status,
                r.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// CORS at the gateway: a preflight from `allowed` (if any) is answered for exactly that origin
/// with the headers a browser client needs; any other origin gets no CORS grant, and a simple
/// cross-origin request from it carries no `Access-Control-Allow-Origin` either.
async fn cors(base: &str, allowed: Option<&str>) {
    let http = client();
    let preflight = |origin: &str| {
        http.request(Method::OPTIONS, format!("{base}/api/v1/events/00000000-0000-0000-0000-000000000000/join"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type, idempotency-key")
            .send()
    };
    let acao =
        |r: &reqwest::Response| r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned());
    if let Some(origin) = allowed {
        let r = preflight(origin).await.unwrap();
        assert!(r.status().is_success(), "preflight from {origin}: {}", r.status());
        assert_eq!(acao(&r).as_deref(), Some(origin));
        let headers = r.headers()["access-control-allow-headers"].to_str().unwrap().to_lowercase();
        for h in ["authorization", "content-type", "idempotency-key"] {
            assert!(headers.contains(h), "{h} allowed: {headers}");
        }
        let get = http.get(format!("{base}/api/v1/events")).header("origin", origin).send().await.unwrap();
        assert_eq!(acao(&get).as_deref(), Some(origin));
        let exposed = get.headers()["access-control-expose-headers"].to_str().unwrap().to_lowercase();
        assert!(exposed.contains("x-request-id") && exposed.contains("retry-after"), "{exposed}");
    }
    for origin in ["https://evil.example", "http://127.0.0.1:3000.evil.example", "null"] {
        if Some(origin) == allowed {
            continue;
        }
        let r = preflight(origin).await.unwrap();
        assert_eq!(acao(&r), None, "preflight from {origin} is not granted");
        let get = http.get(format!("{base}/api/v1/events")).header("origin", origin).send().await.unwrap();
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(acao(&get), None, "{origin} may not read the answer");
    }
}

/// Runs the admin command `cmd` with the password on stdin; it must succeed.
fn create_admin(mut cmd: std::process::Command) {
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The admin `email` changes a user's role through the gateway (a user cannot); a demoted
/// admin's token stops working everywhere within seconds, and a refresh gives a token with what
/// the member may do now.
async fn admins_change_roles(platform: &Platform, mail: Mailbox, email: &str) {
    let api = Api { http: client(), base: platform.base.clone(), mail };
    let login = api.login(email, PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let me = api.get("/api/v1/me", login.body["access_token"].as_str()).await;
    assert_eq!(me.body["role"], "admin", "{}", me.body);
    let admin_token = login.body["access_token"].as_str().unwrap().to_owned();
    let member = api.register("member").await;
    let path = format!("/api/v1/admin/users/{}/role", member.id);
    let denied = api.call(Method::PUT, &path, Some(&member.access), Some(json!({"role": "admin"})), &[]).await;
    assert_eq!(denied.problem(403)["status"], 403);
    let promoted = api.call(Method::PUT, &path, Some(&admin_token), Some(json!({"role": "admin"})), &[]).await;
    assert_eq!((promoted.status, promoted.body["role"].as_str()), (StatusCode::OK, Some("admin")), "{}", promoted.body);
    let bad = api.call(Method::PUT, &path, Some(&admin_token), Some(json!({"role": "root"})), &[]).await;
    assert_eq!(bad.problem(400)["status"], 400);
    let t = api.login(&member.email, PASSWORD).await;
    let member_admin = t.body["access_token"].as_str().unwrap().to_owned();
    let other = api.register("other").await;
    let other_path = format!("/api/v1/admin/users/{}/role", other.id);
    let as_admin = api.call(Method::PUT, &other_path, Some(&member_admin), Some(json!({"role": "user"})), &[]).await;
    assert_eq!(as_admin.status, StatusCode::OK, "{}", as_admin.body);
    let demoted = api.call(Method::PUT, &path, Some(&admin_token), Some(json!({"role": "user"})), &[]).await;
    assert_eq!(demoted.status, StatusCode::OK, "{}", demoted.body);
    sessions_ended_everywhere(&api, &platform.upstreams, &member_admin).await;
    let refreshed = api.post("/api/v1/auth/refresh", None, json!({"refresh_token": t.body["refresh_token"]})).await;
    let member_user = refreshed.body["access_token"].as_str().unwrap().to_owned();
    let refused = api.call(Method::PUT, &other_path, Some(&member_user), Some(json!({"role": "admin"})), &[]).await;
    assert_eq!(refused.problem(403)["status"], 403);
    web_session_outlives_a_role_change(platform, &api, &admin_token).await;
}

/// A browser on the web pages, as far as sessions go: keeps cookies, follows no redirect.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: std::collections::BTreeMap<String, String>,
}

impl Browser {
    fn new(base: &str) -> Self {
        // An address of its own: the distributed set-up's per-IP limits are tight, and the
        // scenario has spent 127.0.0.1's.
        let http = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 42]))
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self { http, base: base.to_owned(), cookies: Default::default() }
    }

    /// `(status, Location, body)` of one request, its cookies kept.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        form: Option<&[(&str, &str)]>,
    ) -> (StatusCode, String, String) {
        let cookie: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut req = self.http.request(method, format!("{}{path}", self.base)).header("cookie", cookie.join("; "));
        if let Some(fields) = form {
            let enc = |v: &str| -> String {
                v.bytes()
                    .map(|b| match b {
                        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
                        _ => format!("%{b:02X}"),
                    })
                    .collect()
            };
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
            req = req.header("content-type", "application/x-www-form-urlencoded").body(body.join("&"));
        }
        let resp = req.send().await.unwrap();
        for c in resp.headers().get_all("set-cookie") {
            let pair = c.to_str().unwrap().split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        let location = resp.headers().get("location").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        (resp.status(), location, resp.text().await.unwrap())
    }

    /// Signs in through the log-in page's form.
    async fn log_in(&mut self, email: &str) {
        let (status, _, html) = self.send(Method::GET, "/login", None).await;
        assert_eq!(status, StatusCode::OK);
        let csrf = html.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_owned();
        let form = [("email", email), ("password", PASSWORD), ("csrf", csrf.as_str())];
        let (status, location, _) = self.send(Method::POST, "/login", Some(&form)).await;
        assert!(status.is_redirection() && location == "/?notice=signed_in", "log in: {status} {location}");
        // `__Host-ce_session` where cookies are secure (every profile but development).
        assert!(self.cookies.keys().any(|k| k.ends_with("ce_session")), "{:?}", self.cookies);
    }

    /// `GET path`, following at most `hops` redirects: the final status and path.
    async fn visit(&mut self, path: &str, hops: usize) -> (StatusCode, String, String) {
        let mut at = path.to_owned();
        let mut trail = vec![at.clone()];
        for _ in 0..=hops {
            let (status, location, body) = self.send(Method::GET, &at, None).await;
            if !status.is_redirection() {
                return (status, at, body);
            }
            at = location;
            trail.push(at.clone());
        }
        panic!("more than {hops} redirects: {trail:?}");
    }
}

/// A member signed in on the web pages whose role an admin changes keeps browsing: the first
/// page a service refuses the old token on refreshes the session (one redirect), and the page
/// then shows the new role's powers; no redirect loop.
async fn web_session_outlives_a_role_change(platform: &Platform, api: &Api, admin_token: &str) {
    // Another address: the scenario has spent much of 127.0.0.1's per-IP budget.
    let api = &api.seen_from(43);
    let member = api.register("webber").await;
    let host = api.register("host").await;
    let event = api.published_event(&host, "Role change", "Lyon", 48, 10).await;
    let mut browser = Browser::new(&platform.base);
    browser.log_in(&member.email).await;
    let page = format!("/events/{event}");
    let (status, _, _) = browser.visit(&page, 0).await;
    assert_eq!(status, StatusCode::OK);
    let path = format!("/api/v1/admin/users/{}/role", member.id);
    let r = api.call(Method::PUT, &path, Some(admin_token), Some(json!({"role": "moderator"})), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The page's kept access token is refused once every service has heard of the change.
    sessions_ended_everywhere(api, &platform.upstreams, &member.access).await;
    let (status, at, html) = browser.visit(&page, 2).await;
    assert_eq!((status, at.as_str()), (StatusCode::OK, page.as_str()), "{html}");
    assert!(html.contains("Log out"), "still signed in: {html}");
    assert!(html.contains("You are a moderator."), "the new role applies: {html}");
}

/// Moderation through the gateway: the admin `email` makes a moderator, who unpublishes an
/// event people joined (an organizer may not), bans a user from an event and an account (whose
/// events hide and whose sign-in is refused), and lifts both; each action lands in auth's audit
/// log.
async fn moderation(platform: &mut Platform, mail: Mailbox, email: &str) {
    let api = Api { http: client(), base: platform.base.clone(), mail };
    let admin = api.login(email, PASSWORD).await;
    let admin = admin.body["access_token"].as_str().unwrap().to_owned();
    let (modr, org, fan, fan2) =
        (api.register("modr").await, api.register("orga").await, api.register("fan").await, api.register("fan2").await);
    let made = api
        .call(
            Method::PUT,
            &format!("/api/v1/admin/users/{}/role", modr.id),
            Some(&admin),
            Some(json!({"role": "moderator"})),
            &[],
        )
        .await;
    assert_eq!((made.status, made.body["role"].as_str()), (StatusCode::OK, Some("moderator")), "{}", made.body);
    let modr_access = api.login(&modr.email, PASSWORD).await.body["access_token"].as_str().unwrap().to_owned();

    // An event with a participant: its organizer cannot take it back to draft; a moderator can.
    let ev = api.published_event(&org, "Suspicious raffle", "Porto", 72, 5).await;
    assert_eq!(api.join(&fan, &ev, "mod-fan").await.status, StatusCode::CREATED);
    let unpublish = format!("/api/v1/events/{ev}/unpublish");
    assert_eq!(api.post(&unpublish, Some(&org.access), json!({})).await.problem(409)["code"], "event_has_participants");
    assert_eq!(api.post(&unpublish, Some(&modr_access), json!({})).await.problem(400)["errors"][0]["field"], "reason");
    let done = api.post(&unpublish, Some(&modr_access), json!({"reason": "Raffles are not allowed"})).await;
    assert_eq!((done.status, done.body["status"].as_str()), (StatusCode::OK, Some("draft")), "{}", done.body);
    eventually("the participant's join is canceled and they are told why", || async {
        let n = api.get("/api/v1/me/notifications?limit=100", Some(&fan.access)).await;
        n.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["message"] == "Suspicious raffle was unpublished: Raffles are not allowed")
    })
    .await;
    assert_eq!(api.get(&format!("/api/v1/events/{ev}/join"), Some(&fan.access)).await.body["status"], "canceled");

    // Published again: a ban from the event with a reason and an expiry, then lifted.
    assert_eq!(
        api.post(&format!("/api/v1/events/{ev}/publish"), Some(&org.access), json!({})).await.status,
        StatusCode::OK
    );
    eventually("joins reopens the event", || async {
        api.join(&fan2, &ev, "mod-fan2").await.status == StatusCode::CREATED
    })
    .await;
    let until = (time::OffsetDateTime::now_utc() + time::Duration::days(3))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let bans = format!("/api/v1/events/{ev}/bans");
    let banned = api
        .post(&bans, Some(&modr_access), json!({"user_id": fan2.id, "reason": "Ticket touting", "expires_at": until}))
        .await;
    assert_eq!(
        (banned.status, banned.body["reason"].as_str()),
        (StatusCode::CREATED, Some("Ticket touting")),
        "{}",
        banned.body
    );
    assert_eq!(api.join(&fan2, &ev, "mod-fan2-again").await.problem(403)["code"], "banned");
    let lifted = api.call(Method::DELETE, &format!("{bans}/{}", fan2.id), Some(&modr_access), None, &[]).await;
    assert_eq!(lifted.status, StatusCode::NO_CONTENT, "{}", lifted.body);

    // The organizer's account banned: signed out, refused at sign-in, events hidden but to moderators.
    let ban = format!("/api/v1/admin/users/{}/ban", org.id);
    let r = api.post(&ban, Some(&modr_access), json!({"reason": "Repeated scams"})).await;
    assert_eq!((r.status, r.body["ban"]["reason"].as_str()), (StatusCode::OK, Some("Repeated scams")), "{}", r.body);
    sessions_ended_everywhere(&api, &platform.upstreams, &org.access).await;
    let refused = api.login(&org.email, PASSWORD).await;
    assert_eq!(refused.problem(403)["code"], "account_banned");
    let event = format!("/api/v1/events/{ev}");
    // Polled signed in (a budget per user), not anonymously: every anonymous call of the run shares
    // 127.0.0.1's budget, and a slow bus would spend it here.
    eventually("the banned organizer's event is hidden", || async {
        api.get(&event, Some(&fan.access)).await.status == StatusCode::NOT_FOUND
    })
    .await;
    assert_eq!(api.get(&event, None).await.status, StatusCode::NOT_FOUND, "hidden from anonymous visitors too");
    assert_eq!(api.get(&event, Some(&modr_access)).await.status, StatusCode::OK, "moderators still see it");
    let listed = api.get("/api/v1/admin/users?banned=true", Some(&admin)).await;
    assert!(listed.body["items"].as_array().unwrap().iter().any(|u| u["id"] == org.id.as_str()), "{}", listed.body);
    let r = api.call(Method::DELETE, &ban, Some(&modr_access), None, &[]).await;
    assert_eq!((r.status, &r.body["ban"]), (StatusCode::OK, &Value::Null), "{}", r.body);
    eventually("the event shows again", || async { api.get(&event, Some(&fan.access)).await.status == StatusCode::OK })
        .await;
    assert_eq!(api.login(&org.email, PASSWORD).await.status, StatusCode::OK);

    // Reports through the site: a member reports an event and an account; the moderator
    // cancels the one and bans the other from the queue, each after a confirmation page; the
    // reporter is told each outcome.
    // A new organizer: the first one's sessions ended with its ban.
    let (host, spammer, poser) =
        (api.register("host").await, api.register("spammer").await, api.register("poser").await);
    let shady = api.published_event(&host, "Shady giveaway", "Porto", 96, 5).await;
    let mut reporter = Browser::new(&platform.base);
    reporter.log_in(&fan.email).await;
    for (kind, target) in [("event", shady.as_str()), ("user", spammer.id.as_str()), ("user", poser.id.as_str())] {
        let (status, _, html) = reporter.send(Method::GET, &format!("/report?kind={kind}&id={target}"), None).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        let csrf = html.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_owned();
        let form =
            [("kind", kind), ("id", target), ("reason", "scam"), ("details", "Asks for card details"), ("csrf", &csrf)];
        let (status, location, body) = reporter.send(Method::POST, "/report", Some(&form)).await;
        assert!(status.is_redirection() && location.ends_with("?notice=reported"), "report {kind}: {status} {body}");
        let (status, _, body) = reporter.send(Method::POST, "/report", Some(&form)).await;
        assert_eq!(status, StatusCode::CONFLICT, "a second report of the same: {body}");
    }
    let mut moderator = Browser::new(&platform.base);
    moderator.log_in(&modr.email).await;
    let (status, _, queue) = moderator.send(Method::GET, "/moderation/reports", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(queue.contains("Shady giveaway") && queue.contains("Asks for card details"), "{queue}");
    let csrf = queue.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_owned();
    // The form names no account: a ban bans the target the queue has, whatever a tampered form
    // adds (here the reporter's own account, which stays unbanned).
    for (kind, target, action) in [
        ("event", shady.as_str(), "cancel"),
        ("user", spammer.id.as_str(), "ban"),
        ("user", poser.id.as_str(), "remove_picture"),
    ] {
        let path = format!("/moderation/reports/{kind}/{target}");
        let mut form = vec![
            ("action", action),
            ("note", "Card phishing"),
            ("name", "it"),
            ("account", fan.id.as_str()),
            ("csrf", &csrf),
        ];
        if action != "remove_picture" {
            let (status, _, page) = moderator.send(Method::POST, &path, Some(&form)).await;
            assert_eq!(status, StatusCode::OK, "{action}: a confirmation first: {page}");
            assert!(page.contains("Are you sure?") && page.contains("name=\"confirmed\" value=\"yes\""), "{page}");
            form.push(("confirmed", "yes"));
        }
        let (status, location, body) = moderator.send(Method::POST, &path, Some(&form)).await;
        assert!(status.is_redirection() && location.ends_with("notice=report_resolved"), "{action}: {status} {body}");
    }
    let canceled = api.get(&format!("/api/v1/events/{shady}"), Some(&modr_access)).await;
    assert_eq!(canceled.body["status"], "canceled", "{}", canceled.body);
    assert_eq!(api.login(&spammer.email, PASSWORD).await.problem(403)["code"], "account_banned");
    assert_eq!(api.login(&fan.email, PASSWORD).await.status, StatusCode::OK, "the tampered `account` is not banned");
    eventually("the reporter hears every outcome", || async {
        let n = api.get("/api/v1/me/notifications?limit=100", Some(&fan.access)).await;
        let told = |text: &str| n.body["items"].as_array().unwrap().iter().any(|i| i["message"] == text);
        told("Your report about Shady giveaway was reviewed: the event is canceled. Thank you.")
            && told("Your report about an account was reviewed: the account is banned. Thank you.")
            && told("Your report about an account was reviewed: the picture is taken down. Thank you.")
    })
    .await;
    let (_, _, queue) = moderator.send(Method::GET, "/moderation/reports", None).await;
    assert!(!queue.contains("Shady giveaway"), "resolved reports leave the queue: {queue}");

    // Who did what, and why, in auth's audit log (its log lines), from every service.
    for action in [
        "moderation.event.unpublish",
        "moderation.event.ban",
        "moderation.event.unban",
        "moderation.account_ban",
        "moderation.account_unban",
        "moderation.report.resolve",
    ] {
        let line = platform.wait_for(
            action,
            |l| l.contains(&format!("action=\"{action}\"")) || l.contains(&format!("\"action\":\"{action}\"")),
            Duration::from_secs(20),
        );
        assert!(line.contains(&modr.id), "{action}: the moderator: {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn all_in_one_zero_setup() {
    let mut platform = Platform::all_in_one(&[]);
    let banner = platform.wait_for_line("First admin:", Duration::from_secs(5));
    assert!(banner.contains("admin create"), "{banner}");
    // A clean start is quiet: databases and the bus connecting are waited for at INFO.
    let warnings: Vec<&String> =
        platform.seen.iter().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(warnings.is_empty(), "a clean start logs no WARN or ERROR:\n{warnings:#?}");
    operator_page(&mut platform).await;
    // Zero setup: mail goes to files in data/mail, each link logged.
    scenario(&platform, Mailbox::Dir(platform.dir().join("data/mail"))).await;
    let logged = platform.wait_for(
        "the file transport's log line",
        |l| l.contains("mail written") && l.contains("verify-email?token="),
        Duration::from_secs(5),
    );
    // ...and prints it whole on the console, where the log masks its token.
    let plain = platform.wait_for(
        "a plain link",
        |l| l.starts_with("mail to ") && l.contains("open http") && l.contains("verify-email?token="),
        Duration::from_secs(5),
    );
    let token = plain.rsplit("token=").next().unwrap().trim();
    assert!(token.len() >= 32, "the whole token: {plain}");
    let tokens_logged = platform.seen.iter().filter(|l| l.contains("mail written") && l.contains(token)).count();
    assert_eq!(tokens_logged, 0, "the log line masks what the console shows: {logged}");
    // No browser origin is configured in the zero-setup default: no cross-origin reads.
    cors(&platform.base, None).await;

    // The first admin, as the banner says: the launcher's auth CLI on the same data, password on stdin.
    let email = format!("{}@example.com", common::unique("admin"));
    let mut admin = std::process::Command::new(env!("CARGO_BIN_EXE_cityevents"));
    admin
        .args(["auth", "admin", "create", "--email", &email])
        .current_dir(platform.dir())
        .env("KEEL_ENV", "development");
    create_admin(admin);
    admins_change_roles(&platform, Mailbox::Dir(platform.dir().join("data/mail")), &email).await;
    let mail = Mailbox::Dir(platform.dir().join("data/mail"));
    moderation(&mut platform, mail, &email).await;
    business_metrics(&platform).await;
    capabilities_flip_at_runtime(&platform).await;

    // The data directory and everything in it are the owner's only: accounts, tokens, secrets.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let data = platform.dir().join("data");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        let mut files = 0;
        for entry in std::fs::read_dir(&data).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                files += 1;
                assert_eq!(mode(&path), 0o600, "{}", path.display());
            }
        }
        assert!(files >= 6, "four databases (with their -wal files) and the dev secrets: {files}");
    }

    let status = platform.stop();
    assert!(status.success(), "clean shutdown: {status}\n{}", platform.seen.join("\n"));
}

/// The banner says where everything is; its one-time link signs a browser in to one operator
/// page that shows every service of the process; the API index answers at the address it gives.
async fn operator_page(platform: &mut Platform) {
    let start = platform.seen.iter().position(|l| l.contains("City Events is running")).unwrap();
    let banner = platform.seen[start..].join("\n");
    for needle in ["/api/v1/", "Operator page", "admin_token from data/dev-secrets.json", "Data ", "Mail "] {
        assert!(banner.contains(needle), "no `{needle}` in the banner:\n{banner}");
    }
    for (service, addr) in management_addrs(platform) {
        let short = service.trim_start_matches("cityevents-");
        let line = banner.lines().find(|l| l.trim_start().starts_with(short)).unwrap_or_else(|| panic!("{banner}"));
        assert!(line.contains(&format!("http://{addr}")), "{short}'s management address: {line}");
    }
    let index = client().get(platform.url("/api/v1/")).send().await.unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    let index: serde_json::Value = index.json().await.unwrap();
    assert_eq!(index["openapi"], "/api/v1/openapi.json", "{index}");
    let reference = banner
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("API reference"))
        .unwrap_or_else(|| panic!("no API reference:\n{banner}"))
        .trim();
    let page = client().get(reference).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK, "{reference}");
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"), "{reference}");

    let link = banner
        .split_whitespace()
        .find(|w| w.contains("/admin/login?code="))
        .unwrap_or_else(|| panic!("no sign-in link:\n{banner}"))
        .to_owned();
    if !keel::testing::require_program("Chromium", keel::testing::browser::CHROMIUM) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let page = tokio::task::spawn_blocking(move || keel::testing::browser::chromium(&path, &["--dump-dom"], &link));
    let keel::testing::browser::Page { dom, console } = page.await.unwrap().unwrap();
    assert!(console.is_empty(), "console messages: {console:#?}");
    for service in common::SERVICES {
        assert!(
            dom.contains(&format!("<h2 class=\"service-name\">cityevents-{service} ")),
            "the operator page shows {service}:\n{dom}"
        );
    }
    assert!(dom.contains("<h2>Overview</h2>"), "{dom}");
}

/// A capability behind a flag (the personal feed) turned off, then on for one user only, then
/// back to its default, through the gateway's management API: the site and the API follow at
/// once, without a restart, and the change is in the flag's history.
async fn capabilities_flip_at_runtime(platform: &Platform) {
    let secrets: Value =
        serde_json::from_str(&std::fs::read_to_string(platform.dir().join("data/dev-secrets.json")).unwrap()).unwrap();
    let token = secrets["admin_token"].as_str().unwrap().to_owned();
    let gateway = management_addrs(platform).into_iter().find(|(s, _)| s.ends_with("-gateway")).unwrap().1;
    let flag = format!("http://{gateway}/admin/flags/cityevents.feed.for_you");
    let api = Api { http: client(), base: platform.base.clone(), mail: Mailbox::Unread };
    let (fan, other) = (api.register_unverified("flagfan").await, api.register_unverified("flagother").await);
    let feed = |u: &User| {
        let (api, access) = (&api, u.access.clone());
        async move { api.get("/api/v1/me/feed", Some(&access)).await.status }
    };
    let page = || async {
        client().get(platform.url("/feed/for-you")).header("accept", "text/html").send().await.unwrap().status()
    };
    let shown: Value = client().get(&flag).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!((shown["source"].as_str(), shown["enabled"].as_bool()), (Some("default"), Some(true)), "{shown}");
    assert_eq!(feed(&fan).await, StatusCode::OK);
    assert_ne!(page().await, StatusCode::NOT_FOUND);

    let set = |def: Value, reason: &str| {
        let body = json!({"flag": def, "reason": reason});
        client().put(&flag).bearer_auth(&token).json(&body).send()
    };
    assert_eq!(set(json!({"enabled": false}), "e2e: off").await.unwrap().status(), StatusCode::OK);
    let off = api.get("/api/v1/me/feed", Some(&fan.access)).await;
    assert_eq!(off.problem(404)["code"], "capability_off");
    assert_eq!(page().await, StatusCode::NOT_FOUND, "the page follows the same flag");

    // On for one user: evaluated per caller, from the verified token.
    let only_fan = json!({"enabled": true, "strategy": "user", "rules": {"users": [fan.id]}});
    assert_eq!(set(only_fan, "e2e: one user").await.unwrap().status(), StatusCode::OK);
    assert_eq!(feed(&fan).await, StatusCode::OK);
    assert_eq!(feed(&other).await, StatusCode::NOT_FOUND);

    let back =
        client().delete(&flag).bearer_auth(&token).json(&json!({"reason": "e2e: default"})).send().await.unwrap();
    assert_eq!(back.status(), StatusCode::NO_CONTENT);
    assert_eq!(feed(&other).await, StatusCode::OK);
    let history: Value =
        client().get(format!("{flag}/history")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let reasons: Vec<&str> =
        history["changes"].as_array().unwrap().iter().map(|c| c["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["e2e: default", "e2e: one user", "e2e: off"]);
}

/// Each service's management address, from its `listening` line.
fn management_addrs(platform: &Platform) -> Vec<(String, String)> {
    platform
        .seen
        .iter()
        .filter(|l| l.contains("listening") && l.contains("management="))
        .filter_map(|l| {
            let service = l.split("service=").nth(1)?.split_whitespace().next()?.to_owned();
            let addr = l.split("management=").nth(1)?.split_whitespace().next()?.to_owned();
            Some((service, addr))
        })
        .collect()
}

/// The sum of the samples of `family` whose labels contain every one of `labels`.
fn sample_sum(text: &str, family: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, rest) = line.split_once(['{', ' ']).unwrap_or((line, ""));
        if name != family || !labels.iter().all(|l| rest.contains(l)) {
            continue;
        }
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        found = Some(found.unwrap_or(0.0) + value);
    }
    found
}

/// After the scenario and the moderation flow, each service's business metrics counted what
/// happened, and no service exports a placeholder series.
async fn business_metrics(platform: &Platform) {
    let addrs = management_addrs(platform);
    assert_eq!(addrs.len(), 5, "{addrs:?}");
    let mut text = std::collections::HashMap::new();
    for (service, addr) in &addrs {
        let body = client().get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(!body.contains(r#"flag="_unknown""#), "{service}: a placeholder flag series");
        text.insert(service.trim_start_matches("cityevents-").to_owned(), body);
    }
    let at_least_one = |service: &str, family: &str, labels: &[&str]| {
        let n = sample_sum(&text[service], family, labels);
        assert!(n.is_some_and(|n| n >= 1.0), "{service}: {family}{labels:?} = {n:?}");
    };
    for change in ["created", "published", "canceled"] {
        at_least_one("events", "events_changes_total", &[&format!(r#"change="{change}""#)]);
    }
    at_least_one("events", "events_changes_total", &[r#"change="unpublished""#, r#"by="moderator""#]);
    at_least_one("joins", "joins_attempts_total", &[r#"outcome="confirmed""#]);
    at_least_one("joins", "joins_attempts_total", &[r#"outcome="waitlisted""#]);
    at_least_one("joins", "joins_attempts_total", &[r#"outcome="refused""#, r#"reason="event_closed""#]);
    for change in ["promoted", "left", "canceled"] {
        at_least_one("joins", "joins_changes_total", &[&format!(r#"change="{change}""#)]);
    }
    at_least_one("joins", "joins_changes_total", &[r#"change="banned""#]);
    at_least_one("notifier", "notifier_notifications_total", &[r#"channel="in_app""#]);
    at_least_one("notifier", "notifier_notifications_total", &[r#"channel="email""#]);
    at_least_one("notifier", "notifier_notifications_total", &[r#"kind="join.confirmed""#, r#"channel="in_app""#]);
    at_least_one("auth", "auth_login_attempts_total", &[r#"outcome="success""#]);
    // Counted every 15 s: the scenario's users are signed in by the next count.
    let auth = addrs.iter().find(|(s, _)| s.ends_with("-auth")).map(|(_, a)| a.clone()).unwrap();
    eventually("auth_active_sessions counts the signed-in users", || {
        let auth = auth.clone();
        async move {
            let body = client().get(format!("http://{auth}/metrics")).send().await.unwrap().text().await.unwrap();
            sample_sum(&body, "auth_active_sessions", &[]).is_some_and(|n| n >= 1.0)
        }
    })
    .await;
}

/// The script's settings for the servers the tests use (`KEEL_TEST_*_URL`, else the local
/// defaults), so the distributed platform talks to the same servers the checks above reached.
fn server_env(postgres: &str, redis: &str) -> Vec<(String, String)> {
    let pg = reqwest::Url::parse(postgres).unwrap();
    vec![
        ("PGHOST".into(), pg.host_str().unwrap_or("127.0.0.1").into()),
        ("PGPORT".into(), pg.port().unwrap_or(5432).to_string()),
        ("PGUSER".into(), if pg.username().is_empty() { "postgres".into() } else { pg.username().into() }),
        ("CITYEVENTS_REDIS_URL".into(), redis.into()),
        ("CITYEVENTS_ORIGIN".into(), "http://127.0.0.1:3000".into()),
    ]
}

/// Whether every server and program the distributed script needs is here (else skipped, or a
/// failure under `CI=true`).
fn distributed_prerequisites(bus: (&str, String)) -> bool {
    let needs = [("PostgreSQL", keel::testing::postgres_url()), ("Redis", keel::testing::redis_url()), bus];
    for (name, url) in needs {
        if !keel::testing::require(name, &url) {
            return false;
        }
    }
    ["psql", "openssl"].iter().all(|program| keel::testing::require_program(program, &common::which(program)))
}

/// The distributed platform on the local servers with `bus` settings: the scenario, CORS, and
/// a clean shutdown.
async fn distributed(bus: &[(&str, &str)]) {
    let Some(smtp) = SmtpSink::start(&SmtpOptions::default()) else { return };
    let mut env = server_env(&keel::testing::postgres_url(), &keel::testing::redis_url());
    env.extend(bus.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    env.push(("CITYEVENTS_SMTP_PORT".into(), smtp.port().to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let site = common::Site { prefix: common::unique("ce_e2e_"), state: dir.path().join("state") };
    let databases = site.databases();
    let mut platform = Platform::distributed_at(&site, &env, dir, databases);
    let mail = Mailbox::Smtp(std::sync::Arc::new(smtp));
    scenario(&platform, mail.clone()).await;
    cors(&platform.base, Some("http://127.0.0.1:3000")).await;
    // The first admin, as the script says (`run-distributed.sh admin`), then roles through the gateway.
    let email = format!("{}@example.com", common::unique("admin"));
    let mut admin = site.command(&env);
    admin.args(["admin", "--email", &email]);
    create_admin(admin);
    admins_change_roles(&platform, mail.clone(), &email).await;
    moderation(&mut platform, mail, &email).await;
    let status = platform.stop();
    assert!(status.success(), "clean shutdown: {status}\n{}", platform.seen.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn distributed_on_postgres_redis_and_nats() {
    if !distributed_prerequisites(("NATS", keel::testing::nats_url())) {
        return;
    }
    distributed(&[("CITYEVENTS_BUS_URL", &keel::testing::nats_url())]).await;
}

/// A RabbitMQ user of its own for one test, removed on drop: production refuses the well-known
/// guest/guest, so the distributed platform needs real credentials.
struct RabbitUser {
    name: String,
    url: String,
}

impl RabbitUser {
    /// Created with `rabbitmqctl` (the local broker's admin tool); `None` (skipped, or a failure
    /// under `CI=true`) when it is missing or not allowed to manage the broker.
    fn create() -> Option<Self> {
        let ctl = common::which("rabbitmqctl");
        if !keel::testing::require_program("rabbitmqctl", &ctl) {
            return None;
        }
        let name = common::unique("ce-e2e-");
        let password = format!("{}{}", uuid::Uuid::now_v7().simple(), uuid::Uuid::now_v7().simple());
        let run = |args: &[&str]| std::process::Command::new(&ctl).args(args).output();
        let made = run(&["add_user", &name, &password])
            .and_then(|o| if o.status.success() { run(&["set_permissions", &name, ".*", ".*", ".*"]) } else { Ok(o) });
        match made {
            Ok(o) if o.status.success() => {}
            other => {
                let why = format!("rabbitmqctl could not create a user: {other:?}");
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("{why} (CI=true: tests may not skip)");
                }
                eprintln!("SKIPPED: {why}");
                return None;
            }
        }
        let amqp = reqwest::Url::parse(&keel::testing::rabbitmq_url()).unwrap();
        let host = amqp.host_str().unwrap_or("127.0.0.1").to_owned();
        let port = amqp.port().unwrap_or(5672);
        let url = format!("amqp://{name}:{password}@{host}:{port}/%2f");
        Some(Self { name, url })
    }
}

impl Drop for RabbitUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new(common::which("rabbitmqctl")).args(["delete_user", &self.name]).output();
    }
}

/// With two replicas of every service (`CITYEVENTS_REPLICAS=2`): the whole scenario goes through
/// instances that share databases, Redis and the broker, the kernel spreading connections.
#[tokio::test(flavor = "multi_thread")]
async fn distributed_on_postgres_redis_and_rabbitmq_two_replicas_each() {
    if !distributed_prerequisites(("RabbitMQ", keel::testing::rabbitmq_url())) {
        return;
    }
    let Some(user) = RabbitUser::create() else { return };
    distributed(&[
        ("CITYEVENTS_BUS_BACKEND", "rabbitmq"),
        ("CITYEVENTS_BUS_URL", &user.url),
        ("CITYEVENTS_REPLICAS", "2"),
    ])
    .await;
}

/// The same on Kafka (the test broker: tansu, `.ci/kafka.sh`), each topic with four partitions.
#[tokio::test(flavor = "multi_thread")]
async fn distributed_on_postgres_redis_and_kafka() {
    if !distributed_prerequisites(("Kafka", keel::testing::kafka_url())) {
        return;
    }
    distributed(&[("CITYEVENTS_BUS_BACKEND", "kafka"), ("CITYEVENTS_BUS_URL", &keel::testing::kafka_url())]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn all_in_one_each_service_keeps_its_own_log_level() {
    // JSON lines (the first member's format) to read who logged at which level.
    let mut p =
        Platform::all_in_one(&[("CITYEVENTS_AUTH__LOG__FORMAT", "json"), ("CITYEVENTS_JOINS__LOG__LEVEL", "debug")]);
    // A call that reaches joins: its queries log at debug.
    let resp = client().get(format!("{}/api/v1/events/{}/counts", p.base, uuid::Uuid::now_v7())).send().await.unwrap();
    assert!(resp.status().is_success() || resp.status() == 404, "{}", resp.status());
    p.wait_for_line(r#""level":"DEBUG""#, Duration::from_secs(30));
    p.stop();
    let debug: Vec<Value> =
        p.seen.iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|l| l["level"] == "DEBUG").collect();
    assert!(!debug.is_empty());
    let others: Vec<&Value> = debug.iter().filter(|l| l["service"] != "cityevents-joins").collect();
    assert!(others.is_empty(), "only joins logs at debug: {others:?}");
    assert!(
        debug.iter().any(|l| l["target"].as_str().is_some_and(|t| t.starts_with("sqlx"))),
        "joins's own queries are there: {debug:?}"
    );
}

#[test]
fn the_launcher_answers_version_and_exits_64_on_a_bad_command_line() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cityevents")).args(args).env_remove("KEEL_ENV").output().unwrap()
    };
    for flag in ["--version", "-V", "version"] {
        let out = run(&[flag]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        assert!(text.starts_with("name: cityevents\nversion: ") && text.contains("\ncommit: "), "{flag}: {text}");
    }
    for args in [&["serve"][..], &["no-such-service"][..], &["all", "--port", "1"][..]] {
        assert_eq!(run(args).status.code(), Some(64), "{args:?}");
    }
}

/// `psql -c SQL` on the test server's `postgres` database.
fn psql(sql: &str) {
    let out = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A backup script run with the site's prefix; (success, stderr).
fn backup_script(site: &common::Site, script: &str, args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = std::process::Command::new("bash")
        .arg(common::repo_root().join("deploy/backup").join(script))
        .args(args)
        .env("CITYEVENTS_DB_PREFIX", &site.prefix)
        .env("PGHOST", "127.0.0.1")
        .env("PGUSER", "postgres")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// What the platform holds for the test's users, as the API shows it.
async fn holdings(api: &Api, org: &User, fan: &User, event: &str) -> Value {
    let ev = api.get(&format!("/api/v1/events/{event}"), None).await;
    assert_eq!(ev.status, StatusCode::OK, "{}", ev.body);
    let joins = api.get("/api/v1/me/joins", Some(&fan.access)).await;
    assert_eq!(joins.status, StatusCode::OK, "{}", joins.body);
    let participants = api.get(&format!("/api/v1/events/{event}/participants"), Some(&org.access)).await;
    assert_eq!(participants.status, StatusCode::OK, "{}", participants.body);
    let me = api.get("/api/v1/me", Some(&fan.access)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    json!({
        "event": ev.body,
        "joins": joins.body["items"],
        "participants": participants.body["items"],
        "me": me.body,
        "notifications": api.notification_kinds(fan).await,
    })
}

/// deploy/backup: back up every service database of a running platform's site, wipe them,
/// restore, check the audit chain, start the platform again and read back what it held. The
/// restore refuses existing databases without --replace and a damaged archive.
#[tokio::test(flavor = "multi_thread")]
async fn backup_wipe_restore_and_the_platform_reads_back_what_it_held() {
    if !distributed_prerequisites(("NATS", keel::testing::nats_url()))
        || !["pg_dump", "pg_restore"].iter().all(|p| keel::testing::require_program(p, &common::which(p)))
    {
        return;
    }
    let mut env = server_env(&keel::testing::postgres_url(), &keel::testing::redis_url());
    env.push(("CITYEVENTS_BUS_URL".into(), keel::testing::nats_url()));
    // What is backed up is under test here, not the mail: organizers need no verified address.
    env.push(("CITYEVENTS_EVENTS__APP__REQUIRE_VERIFIED_EMAIL".into(), "false".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let keep = tempfile::tempdir().unwrap();
    let site = common::Site { prefix: common::unique("ce_bak_"), state: keep.path().join("state") };

    // --- a platform with users, an event, joins, a promotion and its notification
    let mut platform = Platform::distributed_at(&site, &env, tempfile::tempdir().unwrap(), Vec::new());
    let api = Api { http: client(), base: platform.base.clone(), mail: Mailbox::Unread };
    let org = api.register("organizer").await;
    let (first, fan) = (api.register("first").await, api.register("fan").await);
    let ev = api.published_event(&org, "Backup night", "Porto", 48, 1).await;
    assert_eq!(api.join(&first, &ev, "k1").await.body["status"], "confirmed");
    assert_eq!(api.join(&fan, &ev, "k2").await.body["status"], "waitlisted");
    let left = api.call(Method::DELETE, &format!("/api/v1/events/{ev}/join"), Some(&first.access), None, &[]).await;
    assert_eq!(left.status, StatusCode::NO_CONTENT, "{}", left.body);
    eventually("the promoted fan is notified", || async {
        api.notification_kinds(&fan).await.iter().any(|k| k == "join.promoted")
    })
    .await;
    let before = holdings(&api, &org, &fan, &ev).await;
    assert_eq!(before["joins"][0]["status"], "confirmed", "{before}");
    assert!(platform.stop().success());

    // --- back up, wipe
    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().join("b1");
    let (ok, err) = backup_script(&site, "backup.sh", &[dir.as_os_str()]);
    assert!(ok, "backup: {err}");
    let manifest = std::fs::read_to_string(dir.join("MANIFEST")).unwrap();
    for svc in ["auth", "events", "joins", "notifier"] {
        assert!(manifest.contains(&format!("  {svc}.dump")), "{manifest}");
    }
    let (ok, err) = backup_script(&site, "backup.sh", &[dir.as_os_str()]);
    assert!(!ok && err.contains("is not empty"), "a second backup into the same directory: {err}");
    // Restoring over live databases needs --replace.
    let (ok, err) = backup_script(&site, "restore.sh", &[dir.as_os_str()]);
    assert!(!ok && err.contains("exists"), "{err}");
    for db in site.databases() {
        psql(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"));
    }

    // A damaged archive is refused before anything is restored.
    let damaged = backups.path().join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, damaged.join(p.file_name().unwrap())).unwrap();
    }
    let mut bytes = std::fs::read(damaged.join("joins.dump")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(damaged.join("joins.dump"), bytes).unwrap();
    let (ok, err) = backup_script(&site, "restore.sh", &[damaged.as_os_str()]);
    assert!(!ok && err.contains("does not match its SHA-256"), "{err}");
    for db in site.databases() {
        let out = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-tAc"])
            .arg(format!("SELECT 1 FROM pg_database WHERE datname = '{db}'"))
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty(), "{db} was created by a refused restore");
    }

    // --- restore; the audit chain is whole
    let (ok, err) = backup_script(&site, "restore.sh", &[dir.as_os_str()]);
    assert!(ok, "restore: {err}");
    let verify = site.command(&env).args(["exec", "auth", "audit", "verify"]).output().unwrap();
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "audit verify: {said}{}", String::from_utf8_lossy(&verify.stderr));
    assert!(said.contains("audit log intact") && !said.contains("intact: 0 row"), "{said}");

    // --- the platform on the restored databases reads back what it held
    let mut platform = Platform::distributed_at(&site, &env, tempfile::tempdir().unwrap(), site.databases());
    let api = Api { http: client(), base: platform.base.clone(), mail: Mailbox::Unread };
    let again = api.login(&fan.email, PASSWORD).await;
    assert_eq!(again.status, StatusCode::OK, "the password hash and the encrypted e-mail survive: {}", again.body);
    let fan = User { access: again.body["access_token"].as_str().unwrap().to_owned(), ..fan };
    let relog = api.login(&org.email, PASSWORD).await;
    let org = User { access: relog.body["access_token"].as_str().unwrap().to_owned(), ..org };
    let after = holdings(&api, &org, &fan, &ev).await;
    assert_eq!(after, before);
    assert!(platform.stop().success());
}
