//! cityevents-auth end to end, on SQLite, PostgreSQL and MariaDB: accounts, address
//! verification (what is mailed and enqueued for the notifier), input limits,
//! refresh rotation and reuse detection, sign-out, lockout, admins and roles, metrics, and what
//! the database and audit log hold. PostgreSQL and MariaDB tests skip when the server is not
//! running, except under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cityevents_common::testing::TestKey;
use common::{PASSWORD, Reply, Svc};
use keel::app::Loader;
use keel::config::Profile;
use serde_json::{Value, json};

on_every_backend!(
    register_login_and_me,
    registration_mails_a_single_use_verification_link,
    password_reset_change_sessions_and_sign_out_everywhere,
    reset_links_end_with_every_other_way_in_and_are_capped,
    every_input_limit_is_a_problem_naming_the_field,
    unicode_addresses_have_one_form_and_look_alikes_are_refused,
    addresses_that_look_like_an_account_are_taken,
    refresh_rotates_and_reuse_revokes_the_family,
    two_tabs_refreshing_at_once_get_the_same_pair,
    logout_revokes_the_family,
    lockout_after_repeated_failures,
    one_ip_spraying_many_accounts_is_delayed,
    an_account_attacked_from_many_ips_is_delayed_for_unknown_devices,
    fifty_addresses_cannot_lock_the_owner_out,
    concurrent_attempts_cannot_exceed_the_lockout_budget,
    refused_sign_ins_are_not_failures["SECURITY__PASSWORDS__MAX_CONCURRENT_HASHES" = "1", "SECURITY__PASSWORDS__MAX_QUEUED" = "1"],
    admins_come_from_create_admin_and_guard_roles,
    ended_sessions_stop_access_tokens_within_seconds,
    login_metrics_are_counted,
    moderators_ban_accounts_and_admins_list_them,
    public_profiles_show_a_name_and_bio_and_changes_are_announced,
    avatars_are_checked_served_and_swept["APP__PICTURES__SWEEP_EVERY" = "200ms", "APP__PICTURES__SWEEP_GRACE" = "1s"],
);

async fn register_login_and_me(s: &Svc) {
    let r = s
        .post(
            "/api/v1/auth/register",
            &json!({"email": "  Alice@Example.COM ", "password": PASSWORD, "name": " Alice "}),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body, json!({"email": "alice@example.com"}));
    let id = s.user_id("alice@example.com").await.unwrap();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);

    // The same address in another case is taken: the same answer, and a mail to its owner.
    let dup = s
        .post(
            "/api/v1/auth/register",
            &json!({"email": "ALICE@example.com", "password": "another long passphrase", "name": "A"}),
        )
        .await;
    assert_eq!((dup.status, &dup.body), (202, &r.body), "{dup:?}");
    let mails = s.mail_requests().await;
    let told = mails.iter().filter(|m| m["mail"]["template"] == "already_registered").collect::<Vec<_>>();
    assert_eq!(told.len(), 1, "{mails:#?}");
    assert_eq!((told[0]["to"].as_str(), told[0]["user_id"].as_str()), (Some("alice@example.com"), Some(id.as_str())));
    assert_eq!(s.login("alice@example.com", "another long passphrase").await.status, 401, "nothing changed");
    // Trying again within the hour answers the same, without another mail, and (like every
    // accepted registration) no sooner than `app.registration_floor` (150 ms).
    let started = std::time::Instant::now();
    let dup = s
        .post("/api/v1/auth/register", &json!({"email": "alice@example.com", "password": PASSWORD, "name": "A"}))
        .await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(150), "{:?}", started.elapsed());
    assert_eq!((dup.status, &dup.body), (202, &r.body), "{dup:?}");
    let mails = s.mail_requests().await;
    assert_eq!(
        mails.iter().filter(|m| m["mail"]["template"] == "already_registered").count(),
        1,
        "at most one an hour"
    );

    // Nobody registers as admin: the field does not exist.
    let admin = s
        .post(
            "/api/v1/auth/register",
            &json!({"email": "mallory@example.com", "password": PASSWORD, "name": "M", "role": "admin"}),
        )
        .await;
    assert_eq!((admin.status, admin.field()), (400, "role"), "{admin:?}");

    let login = s.login("ALICE@example.com ", PASSWORD).await;
    assert_eq!(login.status, 200, "{login:?}");
    assert_eq!(login.body["token_type"], "Bearer");
    assert_eq!(login.body["expires_in"], 300);
    assert_eq!(login.headers["cache-control"], "no-store");
    let access = login.body["access_token"].as_str().unwrap();
    let refresh = login.body["refresh_token"].as_str().unwrap();
    assert_eq!(refresh.len(), 43, "32 random bytes, base64url");
    let claims = s.claims(access);
    assert_eq!(claims.sub, id);
    assert_eq!(claims.role.as_deref(), Some("user"));
    assert_eq!(claims.iss.as_deref(), Some("cityevents"));
    assert_eq!(claims.aud, ["cityevents"]);
    assert!(claims.email.is_none(), "the token does not carry the address");
    assert_eq!(claims.email_verified, Some(false));

    let me = s.get("/api/v1/me", Some(access)).await;
    assert_eq!(me.status, 200, "{me:?}");
    let created = me.body["created_at"].as_str().unwrap().to_owned();
    assert!(created.ends_with('Z'), "{created}");
    assert_eq!(
        me.body,
        json!({"id": id, "email": "alice@example.com", "name": "Alice", "role": "user", "email_verified": false,
               "created_at": created})
    );
    assert_eq!(s.get("/api/v1/me", None).await.status, 401);
    assert_eq!(s.get("/api/v1/me", Some("not-a-jwt")).await.status, 401);

    // The database holds no address in clear, only a ciphertext and its blind index; the
    // refresh token only as its SHA-256.
    let (ct, bidx, hash): (String, String, String) =
        sqlx::query_as("SELECT email_ciphertext, email_bidx, password_hash FROM users")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert!(ct.starts_with("v1:k1:") && !ct.contains("alice"), "{ct}");
    assert!(bidx.len() == 64 && bidx.chars().all(|c| c.is_ascii_hexdigit()), "{bidx}");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let (token_hash,): (String,) =
        sqlx::query_as("SELECT token_hash FROM refresh_tokens").fetch_one(&s.pool).await.unwrap();
    assert_ne!(token_hash, refresh);
    assert_eq!(token_hash.len(), 64);

    // A token of an account that no longer exists: 404.
    sqlx::query("DELETE FROM refresh_tokens").execute(&s.pool).await.unwrap();
    sqlx::query("DELETE FROM users").execute(&s.pool).await.unwrap();
    let gone = s.get("/api/v1/me", Some(access)).await;
    assert_eq!(gone.status, 404, "{gone:?}");
    assert!(gone.is_problem());
}

async fn registration_mails_a_single_use_verification_link(s: &Svc) {
    let id = s.register("Vera@Example.com", "Vera").await;
    // One contact for the notifier (unverified) and one verification mail, enqueued with the account.
    let contacts = s.outbox("cityevents.accounts").await;
    // Versioned, so the notifier keeps the newest whatever order it applies them in.
    let first_version = contacts[0]["version"].as_i64().unwrap_or_default();
    assert!(first_version > 0, "{contacts:?}");
    assert_eq!(
        contacts,
        [
            json!({"user_id": id, "email": "vera@example.com", "name": "Vera", "verified": false, "version": first_version})
        ]
    );
    let first = s.verification_token("vera@example.com").await;
    assert_eq!(first.len(), 43, "256 random bits, base64url");
    let mails = s.mail_requests().await;
    assert_eq!(
        (mails.len(), mails[0]["user_id"].as_str(), mails[0]["name"].as_str()),
        (1, Some(id.as_str()), Some("Vera"))
    );
    // Stored only as its hash.
    let (stored,): (String,) =
        sqlx::query_as("SELECT token_hash FROM account_tokens").fetch_one(&s.pool).await.unwrap();
    assert!(stored.len() == 64 && stored != first, "{stored}");

    let (access, _) = s.tokens("vera@example.com").await;
    assert_eq!(s.claims(&access).email_verified, Some(false));
    // Asking again spends the first link: only the newest works.
    let again = s.post_bearer("/api/v1/auth/verify-email/request", &access, &json!({})).await;
    assert_eq!(again.status, 202, "{again:?}");
    let second = s.verification_token("vera@example.com").await;
    assert_ne!(first, second);
    let spent = s.post("/api/v1/auth/verify-email", &json!({"token": first})).await;
    assert_eq!(
        (spent.status, spent.body["code"].as_str(), spent.field()),
        (400, Some("invalid_token"), "token"),
        "{spent:?}"
    );
    for bad in [json!({"token": ""}), json!({"token": "x".repeat(300)}), json!({"token": "nope"}), json!({})] {
        assert_eq!(s.post("/api/v1/auth/verify-email", &bad).await.status, 400, "{bad}");
    }
    let ok = s.post("/api/v1/auth/verify-email", &json!({"token": second})).await;
    assert_eq!(ok.status, 204, "{ok:?}");
    // Single use.
    assert_eq!(s.post("/api/v1/auth/verify-email", &json!({"token": second})).await.status, 400);

    let (access, refresh) = s.tokens("vera@example.com").await;
    assert_eq!(s.claims(&access).email_verified, Some(true));
    assert_eq!(s.get("/api/v1/me", Some(&access)).await.body["email_verified"], true);
    let rotated = s.refresh(&refresh).await;
    assert_eq!(s.claims(rotated.body["access_token"].as_str().unwrap()).email_verified, Some(true));
    let done = s.post_bearer("/api/v1/auth/verify-email/request", &access, &json!({})).await;
    assert_eq!((done.status, done.body["code"].as_str()), (409, Some("already_verified")), "{done:?}");
    // The notifier hears that the address is now verified.
    let contacts = s.outbox("cityevents.accounts").await;
    assert_eq!(contacts.last().unwrap()["verified"], true, "{contacts:?}");
    let versions: Vec<i64> = contacts.iter().map(|c| c["version"].as_i64().unwrap_or_default()).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "each contact newer than the one before: {versions:?}");
    assert!(s.audit().await.iter().any(|l| l.contains("|auth.email_verified|")));

    // An expired link is refused like a used one.
    let r = s.post_bearer("/api/v1/auth/verify-email/request", &access, &json!({})).await;
    assert_eq!(r.status, 409);
    let other = s.register("late@example.com", "Late").await;
    let late = s.verification_token("late@example.com").await;
    sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE account_tokens SET expires_at = 0 WHERE user_id = '{other}'")))
        .execute(&s.pool)
        .await
        .unwrap();
    assert_eq!(s.post("/api/v1/auth/verify-email", &json!({"token": late})).await.status, 400);
    // Without a token, no request.
    let anon = s.post("/api/v1/auth/verify-email/request", &json!({})).await;
    assert_eq!(anon.status, 401);
}

/// The newest mail request with `template` for `email`, waited for (reset links are made after
/// the answer).
async fn mail_for(s: &Svc, email: &str, template: &str, after: usize) -> serde_json::Value {
    cityevents_common::testing::eventually(
        &format!("a {template} mail for {email}"),
        std::time::Duration::from_secs(10),
        || async move {
            let mails = s.mail_requests().await;
            mails.into_iter().skip(after).rev().find(|m| m["to"] == email && m["mail"]["template"] == template)
        },
    )
    .await
}

async fn password_reset_change_sessions_and_sign_out_everywhere(s: &Svc) {
    let email = "rita@example.com";
    let id = s.register(email, "Rita").await;
    let (access, first) = s.tokens(email).await;
    let (_, second) = s.tokens(email).await;

    // Sessions: one per sign-in, revocable one by one, only the caller's.
    let list = s.get("/api/v1/auth/sessions", Some(&access)).await;
    assert_eq!(list.status, 200, "{list:?}");
    let items = list.body["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2, "{list:?}");
    let newest = items[0]["id"].as_str().unwrap().to_owned();
    assert!(items[0]["started_at"].is_string() && items[0]["last_used_at"].is_string());
    let revoke = s.delete(&format!("/api/v1/auth/sessions/{newest}"), Some(&access)).await;
    assert_eq!(revoke.status, 204, "{revoke:?}");
    assert_eq!(s.refresh(&second).await.status, 401, "the revoked session's token");
    // Access tokens of every session end with it; the other session refreshes into a new one.
    revoked_within_seconds(s, &access).await;
    let (access, first) = {
        let r = s.refresh(&first).await;
        assert_eq!(r.status, 200, "the other session lives: {r:?}");
        (r.body["access_token"].as_str().unwrap().to_owned(), r.body["refresh_token"].as_str().unwrap().to_owned())
    };
    assert_eq!(s.get("/api/v1/auth/sessions", Some(&access)).await.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(s.delete(&format!("/api/v1/auth/sessions/{newest}"), Some(&access)).await.status, 404);
    assert_eq!(s.delete("/api/v1/auth/sessions/not-a-uuid", Some(&access)).await.status, 400);
    s.register("other@example.com", "Other").await;
    let (other_access, _) = s.tokens("other@example.com").await;
    let mine = s.get("/api/v1/auth/sessions", Some(&access)).await.body["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(s.delete(&format!("/api/v1/auth/sessions/{mine}"), Some(&other_access)).await.status, 404);
    assert_eq!(s.get("/api/v1/auth/sessions", None).await.status, 401);

    // Each session says its device and roughly where it came from, and which is the caller's.
    let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    let signed = s.login_agent(email, PASSWORD, firefox, "Europe/Lisbon").await;
    assert_eq!(signed.status, 200, "{signed:?}");
    let here = signed.body["access_token"].as_str().unwrap().to_owned();
    assert!(s.claims(&here).sid.is_some(), "the access token names its session");
    let items = s.get("/api/v1/auth/sessions", Some(&here)).await.body["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2, "{items:?}");
    let current: Vec<&Value> = items.iter().filter(|i| i["current"] == true).collect();
    assert_eq!(current.len(), 1, "exactly one is the caller's: {items:?}");
    assert_eq!(current[0]["id"].as_str(), s.claims(&here).sid.as_deref());
    assert_eq!(current[0]["device"], "Firefox on Linux");
    assert_eq!(current[0]["place"], "Near Lisbon · this computer");
    let other = items.iter().find(|i| i["current"] == false).unwrap();
    assert_eq!((other["device"].as_str(), other["place"].as_str()), (Some("Unknown device"), Some("This computer")));
    // A refreshed token still names its session.
    let again = s.refresh(signed.body["refresh_token"].as_str().unwrap()).await;
    let refreshed = again.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(s.claims(&refreshed).sid, s.claims(&here).sid);

    // Sign-up that signs in: a new address gets 201 and its first session; one with an account
    // gets the usual 202 and none (its owner is mailed).
    let register = |email: &str, password: &str| {
        let body = json!({"email": email, "password": password, "name": "Newbie", "sign_in": true, "time_zone": "Europe/Lisbon"});
        async move { s.post("/api/v1/auth/register", &body).await }
    };
    let made = register("newbie@example.com", PASSWORD).await;
    assert_eq!(made.status, 201, "{made:?}");
    assert_eq!(made.headers["cache-control"], "no-store");
    let fresh = made.body["session"]["access_token"].as_str().unwrap().to_owned();
    let me = s.get("/api/v1/me", Some(&fresh)).await;
    assert_eq!(
        (me.body["email"].as_str(), me.body["email_verified"].as_bool()),
        (Some("newbie@example.com"), Some(false))
    );
    let listed = s.get("/api/v1/auth/sessions", Some(&fresh)).await.body["items"][0].clone();
    assert_eq!(
        (listed["current"].as_bool(), listed["place"].as_str()),
        (Some(true), Some("Near Lisbon · this computer"))
    );
    let long = json!({"email": "zone@example.com", "password": PASSWORD, "name": "Z", "time_zone": "x".repeat(65)});
    let refused = s.post("/api/v1/auth/register", &long).await;
    assert_eq!((refused.status, refused.field()), (400, "time_zone"), "{refused:?}");
    let taken = register("newbie@example.com", "another passphrase entirely").await;
    assert_eq!(taken.status, 202, "{taken:?}");
    assert!(taken.body.get("session").is_none(), "{taken:?}");

    // A reset request answers 202 whether or not the address has an account; only an account
    // gets a mail.
    let before = s.mail_requests().await.len();
    for addr in ["nobody@example.com", email] {
        let r = s.post("/api/v1/auth/password-reset/request", &json!({"email": addr})).await;
        assert_eq!(r.status, 202, "{addr}: {r:?}");
    }
    assert_eq!(s.post("/api/v1/auth/password-reset/request", &json!({"email": "nope"})).await.status, 400);
    let reset = mail_for(s, email, "reset_password", before).await;
    assert_eq!(reset["user_id"], id.as_str());
    let token = reset["mail"]["token"].as_str().unwrap().to_owned();
    assert!(!s.mail_requests().await.iter().any(|m| m["to"] == "nobody@example.com"));

    // Lock the account from one IP, then reset: the delays are lifted.
    for _ in 0..5 {
        assert_eq!(s.login_from(3, email, "wrong password, wrong").await.status, 401);
    }
    assert_eq!(s.login_from(3, email, PASSWORD).await.status, 429);
    // The link is checked before its form is shown, and checking spends nothing.
    let check = |t: &str| {
        let body = json!({ "token": t });
        async move { s.post("/api/v1/auth/password-reset/check", &body).await }
    };
    assert_eq!(check(&token).await.status, 204);
    assert_eq!(check(&token).await.status, 204, "checking again: still usable");
    let forged = check("not-a-token").await;
    assert_eq!((forged.status, forged.code()), (400, "invalid_token"), "{forged:?}");
    assert_eq!(check("").await.field(), "token");
    // A password the policy refuses leaves the token unspent.
    let weak = s.post("/api/v1/auth/password-reset", &json!({"token": token, "password": "short"})).await;
    assert_eq!((weak.status, weak.field()), (400, "password"), "{weak:?}");
    assert_eq!(check(&token).await.status, 204, "a refused password spends nothing");
    let new_password = "a brand new passphrase 42";
    let ok = s.post("/api/v1/auth/password-reset", &json!({"token": token, "password": new_password})).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.body["device_token"].as_str().is_some_and(|t| t.len() > 64), "the device's proof: {ok:?}");
    let again = s.post("/api/v1/auth/password-reset", &json!({"token": token, "password": new_password})).await;
    assert_eq!((again.status, again.code()), (400, "invalid_token"), "single use: {again:?}");
    let spent = check(&token).await;
    assert_eq!((spent.status, spent.code()), (400, "invalid_token"), "a spent link checks as spent: {spent:?}");
    assert_eq!(s.refresh(&first).await.status, 401, "every session ended");
    assert_eq!(s.login(email, PASSWORD).await.status, 401, "the old password is gone");
    assert_eq!(s.login_from(3, email, new_password).await.status, 200, "no longer delayed");
    let mails = s.mail_requests().await;
    assert!(mails.iter().any(|m| m["to"] == email && m["mail"]["template"] == "password_changed"), "{mails:?}");
    let r = s.login(email, new_password).await;
    let access = r.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(s.claims(&access).email_verified, Some(true), "the reset mail reached its owner");

    // Change: the current password is required; every session ends; the caller gets a new pair.
    let (_, other_session) = s.tokens_with(email, new_password).await;
    let wrong = s
        .post_bearer(
            "/api/v1/auth/password",
            &access,
            &json!({"current_password": "nope nope nope", "new_password": PASSWORD}),
        )
        .await;
    assert_eq!((wrong.status, wrong.field()), (400, "current_password"), "{wrong:?}");
    let weak = s
        .post_bearer(
            "/api/v1/auth/password",
            &access,
            &json!({"current_password": new_password, "new_password": "short"}),
        )
        .await;
    assert_eq!((weak.status, weak.field()), (400, "new_password"), "{weak:?}");
    let changed = s
        .post_bearer(
            "/api/v1/auth/password",
            &access,
            &json!({"current_password": new_password, "new_password": PASSWORD}),
        )
        .await;
    assert_eq!(changed.status, 200, "{changed:?}");
    assert_eq!(changed.headers["cache-control"], "no-store");
    assert_eq!(s.refresh(&other_session).await.status, 401, "other sessions ended");
    revoked_within_seconds(s, &access).await;
    let fresh_access = changed.body["access_token"].as_str().unwrap();
    assert_eq!(s.get("/api/v1/me", Some(fresh_access)).await.status, 200, "the caller's new pair works");
    let fresh = changed.body["refresh_token"].as_str().unwrap();
    assert_eq!(s.refresh(fresh).await.status, 200, "the caller's new session works");
    assert_eq!(s.login(email, new_password).await.status, 401);

    // Sign out everywhere.
    let (access, a) = s.tokens(email).await;
    let (_, b) = s.tokens(email).await;
    assert_eq!(s.post_bearer("/api/v1/auth/logout-all", &access, &json!({})).await.status, 204);
    for t in [a, b] {
        assert_eq!(s.refresh(&t).await.status, 401);
    }
    revoked_within_seconds(s, &access).await;
    let (access, _) = s.tokens(email).await;
    assert_eq!(s.get("/api/v1/auth/sessions", Some(&access)).await.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(s.post("/api/v1/auth/logout-all", &json!({})).await.status, 401);

    let audit = s.audit().await;
    for action in [
        "auth.session_revoked",
        "auth.password_reset_requested",
        "auth.password_reset",
        "auth.password_change",
        "auth.logout_all",
    ] {
        assert!(audit.iter().any(|l| l.contains(&format!("|{action}|"))), "{action}: {audit:?}");
    }
}

/// A reset link mailed earlier (by the owner, or requested by whoever knows the address) must
/// not outlive a password change, signing out everywhere or a ban; one address gets at most
/// `app.password_reset_mails_per_hour` (3) links an hour, whoever asks.
async fn reset_links_end_with_every_other_way_in_and_are_capped(s: &Svc) {
    let email = "lena@example.com";
    let id = s.register(email, "Lena").await;
    let link = |mail: serde_json::Value| mail["mail"]["token"].as_str().unwrap().to_owned();
    let request = |addr: &'static str| async move {
        let before = s.mail_requests().await.len();
        assert_eq!(s.post("/api/v1/auth/password-reset/request", &json!({"email": addr})).await.status, 202);
        before
    };
    let spend = |token: String| async move {
        s.post("/api/v1/auth/password-reset", &json!({"token": token, "password": "the attacker's choice 1"})).await
    };

    // The owner changes the password: an earlier link is dead.
    let before = request(email).await;
    let old_link = link(mail_for(s, email, "reset_password", before).await);
    let (access, _) = s.tokens(email).await;
    let new_password = "lena's own new passphrase 7";
    let body = json!({"current_password": PASSWORD, "new_password": new_password});
    assert_eq!(s.post_bearer("/api/v1/auth/password", &access, &body).await.status, 200);
    let r = spend(old_link).await;
    assert_eq!((r.status, r.code()), (400, "invalid_token"), "after a password change: {r:?}");
    assert_eq!(s.login(email, new_password).await.status, 200, "the owner's password stands");

    // Signing out everywhere ends it too.
    let before = request(email).await;
    let old_link = link(mail_for(s, email, "reset_password", before).await);
    let (access, _) = s.tokens_with(email, new_password).await;
    assert_eq!(s.post_bearer("/api/v1/auth/logout-all", &access, &json!({})).await.status, 204);
    let r = spend(old_link).await;
    assert_eq!((r.status, r.code()), (400, "invalid_token"), "after signing out everywhere: {r:?}");

    // Three links this hour: a fourth request (from anyone) mails nothing. Requests are handled
    // in order, so a mail for another address asked after them says they were all handled.
    let before = request(email).await;
    let last_link = link(mail_for(s, email, "reset_password", before).await);
    for _ in 0..3 {
        request(email).await;
    }
    s.register("marker@example.com", "Marker").await;
    mail_for(s, "marker@example.com", "reset_password", request("marker@example.com").await).await;
    let links = s
        .mail_requests()
        .await
        .into_iter()
        .filter(|m| m["to"] == email && m["mail"]["template"] == "reset_password")
        .count();
    assert_eq!(links, 3, "at most three reset mails an hour");
    let audit = s.audit().await;
    assert!(audit.iter().any(|l| l.contains("|auth.password_reset_requested|") && l.contains("too_many_reset_mails")));

    // A ban ends the outstanding link (the newest of the three).
    let root_admin = cityevents_auth::AdminAction::Create { name: "Root", password: PASSWORD };
    cityevents_auth::run_admin_create(&s.loaded, "root-lena@example.com", root_admin).await.unwrap();
    let (root, _) = s.tokens("root-lena@example.com").await;
    let ban = format!("/api/v1/admin/users/{id}/ban");
    assert_eq!(s.post_bearer(&ban, &root, &json!({"reason": "test"})).await.status, 200);
    let r = spend(last_link).await;
    assert_eq!((r.status, r.code()), (400, "invalid_token"), "after a ban: {r:?}");
    assert_ne!(s.login(email, "the attacker's choice 1").await.status, 200);
}

async fn unicode_addresses_have_one_form_and_look_alikes_are_refused(s: &Svc) {
    // Registered precomposed and upper-case, signed in decomposed: one account, one address.
    let id = s.register("ÁDMIN@EXÄMPLE.COM", "Admin look").await;
    let r = s.login("a\u{301}dmin@exa\u{308}mple.com", PASSWORD).await;
    assert_eq!(r.status, 200, "{r:?}");
    let me = s.get("/api/v1/me", r.body["access_token"].as_str()).await;
    assert_eq!((me.body["id"].as_str(), me.body["email"].as_str()), (Some(id.as_str()), Some("ádmin@exämple.com")));
    let again = s
        .post(
            "/api/v1/auth/register",
            &json!({"email": "ádmin@xn--exmple-cua.com", "password": PASSWORD, "name": "Twin"}),
        )
        .await;
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(s.user_id("ádmin@exämple.com").await.as_deref(), Some(id.as_str()));
    let told = s.mail_requests().await;
    assert!(
        told.iter().any(|m| m["mail"]["template"] == "already_registered" && m["user_id"] == id.as_str()),
        "the same address however it is written: {told:#?}"
    );
    for look_alike in ["p\u{430}ypal@example.com", "ad\u{200d}min@example.com", "admin@ex\u{430}mple.com"] {
        let r = s
            .post("/api/v1/auth/register", &json!({"email": look_alike, "password": PASSWORD, "name": "Mallory"}))
            .await;
        assert_eq!((r.status, r.field()), (400, "email"), "{look_alike:?}: {r:?}");
    }
}

/// Whole-script look-alikes pass the mixed-script rule, so the address's UTS #39 skeleton is
/// unique too: `аре` in Cyrillic, `paypa1` and `rnodern` are taken once their look-alike is.
async fn addresses_that_look_like_an_account_are_taken(s: &Svc) {
    let originals = ["ape@example.com", "paypal@example.com", "modern@example.com"];
    for email in originals {
        s.register(email, "Original").await;
    }
    for look_alike in ["\u{430}\u{440}\u{435}@example.com", "paypa1@example.com", "rnodern@example.com"] {
        look_alike_refused(s, look_alike).await;
    }
    // Trying again within the hour answers the same and mails nothing more.
    let again = s
        .post("/api/v1/auth/register", &json!({"email": "paypa1@example.com", "password": PASSWORD, "name": "M"}))
        .await;
    assert_eq!(again.status, 202, "{again:?}");
    let mails = s.mail_requests().await;
    let told = mails.iter().filter(|m| m["to"] == "paypa1@example.com").count();
    assert_eq!(told, 1, "at most one an hour: {mails:#?}");
    // Different enough is fine.
    s.register("apex@example.com", "Apex").await;

    // Accounts made before the index existed get theirs from the `email-skeletons` worker
    // (here called directly); of two older look-alikes, the later keeps none.
    sqlx::query("UPDATE users SET email_skeleton_bidx = NULL").execute(&s.pool).await.unwrap();
    let twin_id = uuid::Uuid::now_v7().to_string();
    let (cipher, bidx): (String, String) =
        sqlx::query_as("SELECT email_ciphertext, email_bidx FROM users ORDER BY id LIMIT 1")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    // A second row with the first one's address under another blind index: an older twin.
    let insert = format!(
        "INSERT INTO users (id, email_ciphertext, email_bidx, password_hash, name, role, created_at) \
         VALUES ('{twin_id}', '{cipher}', '{}', 'x', 'Twin', 'user', 0)",
        &bidx[..60]
    );
    sqlx::query(sqlx::AssertSqlSafe(insert)).execute(&s.pool).await.unwrap();
    let accounts = s.accounts().await;
    assert_eq!(accounts.backfill_skeletons().await.unwrap(), 4);
    let missing: Vec<String> =
        sqlx::query_scalar("SELECT id FROM users WHERE email_skeleton_bidx IS NULL").fetch_all(&s.pool).await.unwrap();
    assert_eq!(missing, [twin_id]);
    assert_eq!(accounts.backfill_skeletons().await.unwrap(), 0, "the twin stays without one");
    let r = s
        .post(
            "/api/v1/auth/register",
            &json!({"email": "p\u{430}\u{443}p\u{430}l@example.com", "password": PASSWORD, "name": "M"}),
        )
        .await;
    assert_eq!(r.status, 400, "mixed scripts are refused before any look-up: {r:?}");
    look_alike_refused(s, "rnodern@example.com").await;
}

/// Registering `look_alike` answers as any registration does, creates nothing, and mails the
/// address that it cannot be used.
async fn look_alike_refused(s: &Svc, look_alike: &str) {
    let r = s.post("/api/v1/auth/register", &json!({"email": look_alike, "password": PASSWORD, "name": "M"})).await;
    assert_eq!((r.status, r.body["email"].as_str()), (202, Some(look_alike)), "{look_alike:?}: {r:?}");
    assert_eq!(s.user_id(look_alike).await, None, "{look_alike:?}: no account");
    let mails = s.mail_requests().await;
    let told: Vec<_> =
        mails.iter().filter(|m| m["to"] == look_alike && m["mail"]["template"] == "address_unavailable").collect();
    assert_eq!(told.len(), 1, "{look_alike:?}: {mails:#?}");
    assert_eq!(told[0]["name"], "", "not greeted with the name the request gave");
}

async fn every_input_limit_is_a_problem_naming_the_field(s: &Svc) {
    let long_email = format!("{}@{}.com", "a".repeat(64), "b".repeat(186));
    let reg = |email: &str, password: &str, name: &str| json!({"email": email, "password": password, "name": name});
    let cases = [
        ("/api/v1/auth/register", reg(&long_email, PASSWORD, "A"), "email"),
        ("/api/v1/auth/register", reg("not-an-email", PASSWORD, "A"), "email"),
        ("/api/v1/auth/register", reg("a@b", PASSWORD, "A"), "email"),
        ("/api/v1/auth/register", reg("", PASSWORD, "A"), "email"),
        ("/api/v1/auth/register", reg("a@example.com", "short", "A"), "password"),
        ("/api/v1/auth/register", reg("a@example.com", "password1234", "A"), "password"),
        ("/api/v1/auth/register", reg("a@example.com", &"x".repeat(129), "A"), "password"),
        ("/api/v1/auth/register", reg("a@example.com", PASSWORD, &"n".repeat(101)), "name"),
        ("/api/v1/auth/register", reg("a@example.com", PASSWORD, "   "), "name"),
        ("/api/v1/auth/register", json!({"email": "a@example.com", "password": PASSWORD}), "name"),
        ("/api/v1/auth/register", json!({"email": 42, "password": PASSWORD, "name": "A"}), "email"),
        ("/api/v1/auth/register", json!(["a@example.com"]), "body"),
        ("/api/v1/auth/login", json!({"email": "nope", "password": PASSWORD}), "email"),
        ("/api/v1/auth/login", json!({"email": "a@example.com", "password": ""}), "password"),
        ("/api/v1/auth/login", json!({"email": "a@example.com", "password": PASSWORD, "otp": "1"}), "otp"),
        ("/api/v1/auth/refresh", json!({"refresh_token": ""}), "refresh_token"),
        ("/api/v1/auth/refresh", json!({"refresh_token": "x".repeat(257)}), "refresh_token"),
        ("/api/v1/auth/logout", json!({"refresh_token": "x", "all": true}), "all"),
    ];
    for (path, body, field) in cases {
        let r = s.post(path, &body).await;
        assert_eq!((r.status, r.code(), r.field()), (400, "invalid_input", field), "{path} {body}: {r:?}");
        assert!(r.is_problem(), "{r:?}");
    }
    // Malformed JSON.
    let r = s.post_raw("/api/v1/auth/register", Some("application/json"), r#"{"email": "a@example.com","#).await;
    assert_eq!((r.status, r.code(), r.field()), (400, "invalid_input", "body"), "{r:?}");
    assert!(r.is_problem());
    // Too large: refused before parsing.
    let big = json!({"email": "a@example.com", "password": PASSWORD, "name": "n".repeat(20_000)}).to_string();
    let r = s.post_raw("/api/v1/auth/register", Some("application/json"), big).await;
    assert_eq!((r.status, r.code(), r.field()), (413, "body_too_large", "body"), "{r:?}");
    assert!(r.body["detail"].as_str().unwrap().contains("at most 8 KiB"), "the limit is said: {r:?}");
    assert!(r.is_problem());
    // Not JSON.
    let r = s.post_raw("/api/v1/auth/login", None, r#"{"email":"a@example.com","password":"x"}"#).await;
    assert_eq!(r.status, 415, "{r:?}");
    assert!(r.is_problem());
    // Nothing was created by any of it.
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users").fetch_one(&s.pool).await.unwrap();
    assert_eq!(n, 0);
}

async fn refresh_rotates_and_reuse_revokes_the_family(s: &Svc) {
    s.register("rita@example.com", "Rita").await;
    let (_, r1) = s.tokens("rita@example.com").await;
    let (_, other_family) = s.tokens("rita@example.com").await;

    let p2 = s.refresh(&r1).await;
    assert_eq!(p2.status, 200, "{p2:?}");
    assert_eq!(p2.body["token_type"], "Bearer");
    let r2 = p2.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r2, r1);
    let me = s.get("/api/v1/me", p2.body["access_token"].as_str()).await;
    assert_eq!(me.body["email"], "rita@example.com");
    let p3 = s.refresh(&r2).await;
    assert_eq!(p3.status, 200, "{p3:?}");
    let r3 = p3.body["refresh_token"].as_str().unwrap().to_owned();

    // The spent r1 comes back (a thief replaying it): refused, and the family is revoked …
    let reused = s.refresh(&r1).await;
    assert_eq!((reused.status, reused.code()), (401, "refresh_reused"), "{reused:?}");
    assert!(reused.is_problem());
    // … so the newest token of the family stops working too, and so do the access tokens.
    let newest = s.refresh(&r3).await;
    assert_eq!((newest.status, newest.code()), (401, "invalid_refresh_token"), "{newest:?}");
    revoked_within_seconds(s, p3.body["access_token"].as_str().unwrap()).await;
    // Another sign-in's family is untouched.
    let other = s.refresh(&other_family).await;
    assert_eq!(other.status, 200, "{other:?}");
    let r_other = other.body["refresh_token"].as_str().unwrap().to_owned();

    let unknown = s.refresh("bm90LWEtcmVhbC10b2tlbg").await;
    assert_eq!((unknown.status, unknown.code()), (401, "invalid_refresh_token"), "{unknown:?}");

    // Expired: refused like an unknown one.
    sqlx::query("UPDATE refresh_tokens SET expires_at = 1").execute(&s.pool).await.unwrap();
    let expired = s.refresh(&r_other).await;
    assert_eq!((expired.status, expired.code()), (401, "invalid_refresh_token"), "{expired:?}");

    let audit = s.audit().await;
    assert!(audit.iter().any(|l| l.contains("|auth.refresh|") && l.contains("|denied|")), "{audit:#?}");
}

async fn two_tabs_refreshing_at_once_get_the_same_pair(s: &Svc) {
    s.register("tabitha@example.com", "Tabitha").await;
    let (_, r1) = s.tokens("tabitha@example.com").await;

    // Two tabs refresh the same token at once: both get the same successor.
    let (a, b) = tokio::join!(s.refresh(&r1), s.refresh(&r1));
    assert_eq!((a.status, b.status), (200, 200), "{a:?} {b:?}");
    let r2 = a.body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(b.body["refresh_token"], r2, "{a:?} {b:?}");
    assert_ne!(r2, r1);
    let sub = |r: &common::Reply| s.claims(r.body["access_token"].as_str().unwrap()).sub;
    assert_eq!(sub(&a), sub(&b), "both access tokens are the same user's");
    // A third, sequential use within the window: the same successor again.
    let c = s.refresh(&r1).await;
    assert_eq!((c.status, c.body["refresh_token"].as_str()), (200, Some(r2.as_str())), "{c:?}");
    // The successor is stored sealed, never in clear.
    let sealed: Vec<(Option<String>,)> =
        sqlx::query_as("SELECT successor_ciphertext FROM refresh_tokens").fetch_all(&s.pool).await.unwrap();
    assert!(sealed.iter().flat_map(|(c,)| c).all(|c| !c.contains(&r2)), "{sealed:?}");
    assert!(sealed.iter().any(|(c,)| c.is_some()), "{sealed:?}");

    // The shared successor works once; once it is spent, the old token is reuse again.
    let d = s.refresh(&r2).await;
    assert_eq!(d.status, 200, "{d:?}");
    let r3 = d.body["refresh_token"].as_str().unwrap().to_owned();
    let again = s.refresh(&r1).await;
    assert_eq!((again.status, again.code()), (401, "refresh_reused"), "{again:?}");
    assert_eq!(s.refresh(&r3).await.code(), "invalid_refresh_token", "the family is revoked");

    // After the grace window a second use is reuse and revokes the family.
    let (_, f1) = s.tokens("tabitha@example.com").await;
    let e = s.refresh(&f1).await;
    assert_eq!(e.status, 200, "{e:?}");
    let f2 = e.body["refresh_token"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE refresh_tokens SET used_at = used_at - 11000000 WHERE used_at IS NOT NULL")
        .execute(&s.pool)
        .await
        .unwrap();
    let late = s.refresh(&f1).await;
    assert_eq!((late.status, late.code()), (401, "refresh_reused"), "{late:?}");
    assert_eq!(s.refresh(&f2).await.code(), "invalid_refresh_token");

    let text = s.metrics().await;
    for line in [
        r#"auth_refresh_total{outcome="rotated"} 3"#,
        r#"auth_refresh_total{outcome="repeated"} 2"#,
        r#"auth_refresh_total{outcome="reused"} 2"#,
        r#"auth_refresh_total{outcome="invalid"} 2"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
    }
}

async fn logout_revokes_the_family(s: &Svc) {
    s.register("lou@example.com", "Lou").await;
    let (_, r1) = s.tokens("lou@example.com").await;
    let logout = |t: String| async move { s.post("/api/v1/auth/logout", &json!({"refresh_token": t})).await };
    let out = logout(r1.clone()).await;
    assert_eq!(out.status, 204, "{out:?}");
    let after = s.refresh(&r1).await;
    assert_eq!((after.status, after.code()), (401, "invalid_refresh_token"), "{after:?}");
    assert_eq!(logout(r1.clone()).await.status, 204, "idempotent");
    assert_eq!(logout("never-issued".into()).await.status, 204, "an unknown token still signs out");

    // Signing out with a spent token of the family ends the family's current token too.
    let (_, a) = s.tokens("lou@example.com").await;
    let b = s.refresh(&a).await.body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(logout(a).await.status, 204);
    assert_eq!(s.refresh(&b).await.code(), "invalid_refresh_token");

    let audit = s.audit().await;
    assert!(audit.iter().filter(|l| l.contains("|auth.logout|")).count() >= 2, "{audit:#?}");
}

/// The attacker's client IP and others (`127.0.0.<n>`); the owner signs in from 127.0.0.1.
const ATTACKER: u8 = 2;

async fn lockout_after_repeated_failures(s: &Svc) {
    s.register("lena@example.com", "Lena").await;
    let mut wrong_password = None;
    for i in 0..5 {
        let r = s.login_from(ATTACKER, "lena@example.com", "wrong-password-123").await;
        assert_eq!((r.status, r.code()), (401, "invalid_credentials"), "attempt {i}: {r:?}");
        wrong_password = Some(r);
    }
    let locked = s.login_from(ATTACKER, "lena@example.com", PASSWORD).await;
    assert_eq!((locked.status, locked.code()), (429, "locked"), "the right password is refused too: {locked:?}");
    let retry: u64 = locked.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "the first delay is base_delay (1m in tests): {retry}");

    // The finding: the attacker's failures do not lock the owner out from another address.
    let owner = s.login("lena@example.com", PASSWORD).await;
    assert_eq!(owner.status, 200, "the owner from another IP: {owner:?}");

    // An address nobody has (from another attacker IP, to stay clear of the per-IP counter):
    // the same answers.
    let mut unknown = None;
    for i in 0..5 {
        let r = s.login_from(ATTACKER + 1, "nobody@example.com", "wrong-password-123").await;
        assert_eq!((r.status, r.code()), (401, "invalid_credentials"), "attempt {i}: {r:?}");
        unknown = Some(r);
    }
    assert_eq!(unknown.unwrap().shape(), wrong_password.unwrap().shape());
    let locked_unknown = s.login_from(ATTACKER + 1, "nobody@example.com", PASSWORD).await;
    assert_eq!(locked_unknown.status, 429);
    assert_eq!(locked_unknown.shape(), locked.shape());
    assert!(locked_unknown.headers.contains_key("retry-after"));

    // Progressive: once the delay has passed, one more guess, then twice the delay.
    s.age_login_failures(61).await;
    assert_eq!(s.login_from(ATTACKER, "lena@example.com", "wrong-password-123").await.status, 401);
    let again = s.login_from(ATTACKER, "lena@example.com", PASSWORD).await;
    assert_eq!(again.status, 429, "{again:?}");
    let retry: u64 = again.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((61..=120).contains(&retry), "the second delay doubles: {retry}");
    // After it, the right password works again and clears the attacker's counter.
    s.age_login_failures(121).await;
    assert_eq!(s.login_from(ATTACKER, "lena@example.com", PASSWORD).await.status, 200);
    for _ in 0..4 {
        assert_eq!(s.login_from(ATTACKER, "lena@example.com", "wrong-password-123").await.status, 401);
    }

    // Success resets the count: 4 + 4 failures around a success never delay.
    s.register("bo@example.com", "Bo").await;
    for _ in 0..2 {
        for _ in 0..4 {
            assert_eq!(s.login("bo@example.com", "wrong-password-123").await.status, 401);
        }
        assert_eq!(s.login("bo@example.com", PASSWORD).await.status, 200);
    }

    let audit = s.audit().await;
    let lockouts: Vec<_> = audit.iter().filter(|l| l.contains("|auth.lockout|")).collect();
    assert_eq!(lockouts.len(), 2, "{audit:#?}");
    assert!(lockouts.iter().all(|l| l.contains(r#""scope":"account_ip""#)), "{lockouts:#?}");
    assert!(audit.iter().any(|l| l.contains("|auth.login|") && l.contains("|failure|")));
    assert!(audit.iter().any(|l| l.contains("|auth.login|") && l.contains("|denied|") && l.contains("locked")));
    for line in &audit {
        for secret in ["lena@", "nobody@", "bo@example", PASSWORD, "wrong-password-123"] {
            assert!(!line.contains(secret), "{secret} in the audit log: {line}");
        }
    }
    // The counters hold blind indexes, never a clear address or IP.
    let buckets: Vec<(String,)> = sqlx::query_as("SELECT bucket FROM login_throttle").fetch_all(&s.pool).await.unwrap();
    assert!(!buckets.is_empty());
    for (b,) in &buckets {
        assert!(!b.contains('@') && !b.contains("127.0.0"), "{b}");
    }
}

/// One client IP trying many accounts is delayed after `ip_free_failures` (12 in tests), for
/// every account; another IP is not.
async fn one_ip_spraying_many_accounts_is_delayed(s: &Svc) {
    // Many people signing in at once from one address (an office) are not failures.
    let people: Vec<String> = (0..15).map(|i| format!("colleague{i}@example.com")).collect();
    for email in &people {
        s.register(email, "Colleague").await;
    }
    let at_once = futures_util::future::join_all(people.iter().map(|e| s.login_from(ATTACKER, e, PASSWORD))).await;
    assert!(at_once.iter().all(|r| r.status == 200), "{at_once:?}");

    s.register("spray@example.com", "Spray").await;
    for i in 0..12 {
        let r = s.login_from(ATTACKER, &format!("target{i}@example.com"), "wrong-password-123").await;
        assert_eq!(r.status, 401, "attempt {i}: {r:?}");
    }
    let r = s.login_from(ATTACKER, "spray@example.com", PASSWORD).await;
    assert_eq!((r.status, r.code()), (429, "locked"), "{r:?}");
    assert_eq!(s.login("spray@example.com", PASSWORD).await.status, 200, "another IP is not delayed");
    assert!(s.metrics().await.contains(r#"auth_login_throttled_total{scope="ip"} 1"#));
}

/// An account attacked from many addresses at once: past `account_free_failures` (15 in tests)
/// even a fresh IP is delayed, when it brings no device token of the account.
async fn an_account_attacked_from_many_ips_is_delayed_for_unknown_devices(s: &Svc) {
    s.register("target@example.com", "Target").await;
    for host in 2..=4 {
        for i in 0..5 {
            let r = s.login_from(host, "target@example.com", "wrong-password-123").await;
            assert_eq!(r.status, 401, "127.0.0.{host}, attempt {i}: {r:?}");
        }
    }
    let r = s.login("target@example.com", PASSWORD).await;
    assert_eq!((r.status, r.code()), (429, "locked"), "15 failures from 3 IPs: {r:?}");
    let audit = s.audit().await;
    assert!(audit.iter().any(|l| l.contains("|auth.lockout|") && l.contains(r#""scope":"account""#)), "{audit:#?}");
    assert!(s.metrics().await.contains(r#"auth_login_throttled_total{scope="account"} 1"#));
}

/// The finding: 21 addresses × 6 wrong passwords locked any account, its owner included, and
/// did it again within seconds of a reset. Now 50 attacking addresses cannot keep the owner out:
/// a device that signed in before is counted on its own, a password reset (the mailbox proven)
/// gives the resetting device that standing, and the attackers stay delayed.
async fn fifty_addresses_cannot_lock_the_owner_out(s: &Svc) {
    const EMAIL: &str = "owner@example.com";
    s.register(EMAIL, "Owner").await;
    let signed = s.login(EMAIL, PASSWORD).await;
    assert_eq!(signed.status, 200, "{signed:?}");
    let device = signed.body["device_token"].as_str().unwrap().to_owned();
    assert!(!s.audit().await.iter().any(|l| l.contains(&device)), "device tokens stay out of the audit log");

    // 50 addresses (127.0.0.2 to .51) at once, six wrong passwords each.
    let attack = |hosts: std::ops::RangeInclusive<u8>| {
        futures_util::future::join_all(hosts.map(|host| async move {
            let mut answers = Vec::new();
            for _ in 0..6 {
                let r = s.login_from(host, EMAIL, "wrong-password-123").await;
                // 503 + Retry-After: SQLite's one writer busy past its timeout under the flood.
                let busy = r.status == 503 && r.headers.contains_key("retry-after");
                assert!([401, 429].contains(&r.status) || busy, "127.0.0.{host}: {r:?}");
                answers.push(r.status);
            }
            answers
        }))
    };
    let answers: Vec<u16> = attack(2..=51).await.into_iter().flatten().collect();
    let guesses = answers.iter().filter(|a| **a == 401).count();
    // The account's limit (15 in tests) stops them, give or take the 50 attempts in flight when
    // it was reached: nowhere near the 250 the pairs' budgets would allow.
    assert!(guesses <= 15 + 50, "{guesses} passwords tried");
    assert!(answers.iter().filter(|a| **a == 429).count() >= 50, "{answers:?}");

    // Attackers and unknown devices are delayed, even with the right password...
    for host in [2, 30, 51, 60] {
        let r = s.login_from(host, EMAIL, PASSWORD).await;
        assert_eq!((r.status, r.code()), (429, "locked"), "127.0.0.{host}: {r:?}");
    }
    // ... and so is a device token of another account, or a forged one.
    s.register("other@example.com", "Other").await;
    let other = s.login("other@example.com", PASSWORD).await.body["device_token"].as_str().unwrap().to_owned();
    let last = if device.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &device[..device.len() - 1]);
    for token in [other.as_str(), forged.as_str(), "garbage"] {
        let r = s.login_device(60, EMAIL, PASSWORD, token).await;
        assert_eq!(r.status, 429, "{token}: {r:?}");
    }
    // The owner's device gets in, from any address, first time, and gets a fresh token.
    for host in [1, 2, 61] {
        let r = s.login_device(host, EMAIL, PASSWORD, &device).await;
        assert_eq!(r.status, 200, "the owner's device from 127.0.0.{host}: {r:?}");
        assert!(r.body["device_token"].is_string());
    }

    // A stolen device token buys its own few guesses, then that device is delayed alone.
    for i in 0..5 {
        let r = s.login_device(62, EMAIL, "wrong-password-123", &device).await;
        assert_eq!(r.status, 401, "guess {i} with the device token: {r:?}");
    }
    let r = s.login_device(62, EMAIL, PASSWORD, &device).await;
    assert_eq!((r.status, r.code()), (429, "locked"), "{r:?}");
    let audit = s.audit().await;
    assert!(audit.iter().any(|l| l.contains("|auth.lockout|") && l.contains(r#""scope":"device""#)), "{audit:#?}");

    // An owner on a new device proves the mailbox: the reset hands that device a token that
    // gets in however soon the attackers come back.
    let before = s.mail_requests().await.len();
    assert_eq!(s.post("/api/v1/auth/password-reset/request", &json!({"email": EMAIL})).await.status, 202);
    let token = mail_for(s, EMAIL, "reset_password", before).await["mail"]["token"].as_str().unwrap().to_owned();
    let new_password = "the owner's fresh passphrase";
    let reset = s.post("/api/v1/auth/password-reset", &json!({"token": token, "password": new_password})).await;
    assert_eq!(reset.status, 200, "{reset:?}");
    let proven = reset.body["device_token"].as_str().unwrap().to_owned();
    let again: Vec<u16> = attack(2..=51).await.into_iter().flatten().collect();
    assert!(again.iter().filter(|a| **a == 429).count() >= 50, "the attackers are delayed again: {again:?}");
    assert_eq!(s.login_from(63, EMAIL, new_password).await.status, 429, "a device that proved nothing");
    let r = s.login_device(63, EMAIL, new_password, &proven).await;
    assert_eq!(r.status, 200, "the device that reset the password: {r:?}");
    assert!(s.metrics().await.contains(r#"auth_login_throttled_total{scope="device"} 1"#));
}

/// Attempts are counted before their password is checked: 20 at once get at most 5 guesses.
async fn concurrent_attempts_cannot_exceed_the_lockout_budget(s: &Svc) {
    s.register("rush@example.com", "Rush").await;
    let answers = futures_util::future::join_all(
        (0..20).map(|_| s.login_from(ATTACKER, "rush@example.com", "wrong-password-123")),
    )
    .await;
    let guesses = answers.iter().filter(|r| r.status == 401).count();
    let locked = answers.iter().filter(|r| r.status == 429).count();
    assert_eq!(guesses + locked, 20, "{answers:?}");
    assert!(guesses <= 5, "{guesses} passwords were tried");
    let r = s.login_from(ATTACKER, "rush@example.com", PASSWORD).await;
    assert_eq!(r.status, 429, "delayed even for the right password");
}

/// Sign-ins refused at capacity (503: every hashing slot busy, no queue) came to no verdict:
/// they must not count as failures, or a storm of other people's sign-ins would lock the owner
/// out without one wrong password. The service has one hashing slot and one place in its queue
/// (0 would mean the default): both are taken by two other accounts whose hashes are made slow,
/// while the owner is refused six times, one more than the free failures (5).
async fn refused_sign_ins_are_not_failures(s: &Svc) {
    use std::sync::atomic::{AtomicBool, Ordering};
    s.register("owner@example.com", "Owner").await;
    let mut cfg = s.loaded.config.keel.security.passwords.clone();
    cfg.iterations = 3_000;
    let slow = keel::security::password::PasswordHasher::from_config(&cfg).unwrap().hash(PASSWORD).await.unwrap();
    for other in ["one@example.com", "two@example.com"] {
        let id = s.register(other, "Other").await;
        s.set_password_hash(&id, &slow).await;
    }
    let done = AtomicBool::new(false);
    // The slot and the queue held until the owner has been refused six times: a new pair of
    // slow checks whenever the last one ends, since on a busy machine the owner's attempts may
    // take longer than one pair holds them. A holder may be refused too (the owner's check had
    // the slot), never locked out.
    let holders = async {
        let mut signed_in = 0;
        // Bounded in time, not in rounds: a round the owner's check refused ends at once, and
        // under a loaded machine twenty of those could pass before the owner's sixth refusal.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < give_up {
            if done.load(Ordering::Relaxed) {
                break;
            }
            let (one, two) = futures_util::future::join(
                s.login_from(8, "one@example.com", PASSWORD),
                s.login_from(9, "two@example.com", PASSWORD),
            )
            .await;
            for r in [&one, &two] {
                assert!(matches!(r.status, 200 | 503), "{r:?}");
                signed_in += usize::from(r.status == 200);
            }
        }
        signed_in
    };
    let owner = async {
        // Until the holders' checks have taken the slot and the queue (on a busy machine they
        // may come late: the owner's earlier attempts then just sign in), bounded in time.
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut refused = 0;
        while std::time::Instant::now() < give_up {
            let r = s.login_from(3, "owner@example.com", PASSWORD).await;
            assert_ne!(r.status, 429, "refusals were counted as failures: {r:?}");
            if r.status == 503 {
                refused += 1;
                assert!(r.headers.contains_key("retry-after"), "{r:?}");
            }
            if refused == 6 {
                break;
            }
        }
        done.store(true, Ordering::Relaxed);
        refused
    };
    let (signed_in, refused) = tokio::join!(holders, owner);
    assert!(signed_in > 0, "the holders' checks ran");
    assert_eq!(refused, 6, "the slot was held for six refusals");
    let r = s.login_from(3, "owner@example.com", PASSWORD).await;
    assert_eq!(r.status, 200, "the owner signs in once the slot is free: {r:?}");
}

async fn admins_come_from_create_admin_and_guard_roles(s: &Svc) {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users").fetch_one(&s.pool).await.unwrap();
    assert_eq!(n, 0, "no default users");
    let create = |name: &'static str, password: &'static str| cityevents_auth::AdminAction::Create { name, password };
    let weak = cityevents_auth::run_admin_create(&s.loaded, "root@example.com", create("Root", "short")).await;
    assert!(matches!(&weak, Err(cityevents_auth::AdminError::Invalid(f)) if f.field == "password"), "{weak:?}");

    let root =
        cityevents_auth::run_admin_create(&s.loaded, " Root@Example.com", create("Root", PASSWORD)).await.unwrap().id();
    let again =
        cityevents_auth::run_admin_create(&s.loaded, "root@example.com", create("Root", "Another-pass-123")).await;
    assert!(matches!(again, Err(cityevents_auth::AdminError::Exists(true))), "refused, not ignored: {again:?}");
    let promote = cityevents_auth::AdminAction::Promote;
    let again = cityevents_auth::run_admin_create(&s.loaded, "root@example.com", promote).await.unwrap();
    assert_eq!(again, cityevents_auth::AdminCreated::AlreadyAdmin(root), "promoting an admin changes nothing");
    let nobody = cityevents_auth::run_admin_create(&s.loaded, "nobody@example.com", promote).await;
    assert!(matches!(nobody, Err(cityevents_auth::AdminError::NoAccount)), "{nobody:?}");
    let (root_access, _) = s.tokens("root@example.com").await;
    assert_eq!(s.claims(&root_access).role.as_deref(), Some("admin"));
    assert_eq!(s.claims(&root_access).sub, root.to_string());

    let alice = s.register("alice@example.com", "Alice").await;
    let (alice_access, alice_refresh) = s.tokens("alice@example.com").await;
    let path = |id: &str| format!("/api/v1/admin/users/{id}/role");

    let denied = s.put(&path(&root.to_string()), Some(&alice_access), &json!({"role": "user"})).await;
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(s.put(&path(&alice), None, &json!({"role": "admin"})).await.status, 401);

    let bad = s.put(&path(&alice), Some(&root_access), &json!({"role": "superuser"})).await;
    assert_eq!((bad.status, bad.field()), (400, "role"), "{bad:?}");
    let bad_id = s.put(&path("not-a-uuid"), Some(&root_access), &json!({"role": "admin"})).await;
    assert_eq!((bad_id.status, bad_id.field()), (400, "id"), "{bad_id:?}");
    let missing = s.put(&path(&uuid::Uuid::now_v7().to_string()), Some(&root_access), &json!({"role": "admin"})).await;
    assert_eq!(missing.status, 404, "{missing:?}");
    // The only admin cannot step down: nobody could manage roles or lift bans any more.
    for role in ["user", "moderator"] {
        let alone = s.put(&path(&root.to_string()), Some(&root_access), &json!({ "role": role })).await;
        assert_eq!((alone.status, alone.code()), (409, "last_admin"), "{alone:?}");
    }

    let promoted = s.put(&path(&alice), Some(&root_access), &json!({"role": "admin"})).await;
    assert_eq!(promoted.status, 200, "{promoted:?}");
    assert_eq!(promoted.body["role"], "admin");
    assert_eq!(promoted.body["email"], "alice@example.com");
    // The next token (a refresh reads the role afresh) carries the new role.
    let refreshed = s.refresh(&alice_refresh).await;
    let new_access = refreshed.body["access_token"].as_str().unwrap();
    assert_eq!(s.claims(new_access).role.as_deref(), Some("admin"));

    // `admin create` refuses an existing account; `--promote` promotes it, keeping its password.
    let carol = s.register("carol@example.com", "Carol").await;
    let refused = cityevents_auth::run_admin_create(&s.loaded, "carol@example.com", create("C", PASSWORD)).await;
    assert!(matches!(refused, Err(cityevents_auth::AdminError::Exists(false))), "{refused:?}");
    let promoted = cityevents_auth::run_admin_create(&s.loaded, "carol@example.com", promote).await.unwrap();
    assert_eq!(promoted, cityevents_auth::AdminCreated::Promoted(carol.parse().unwrap()));
    let (carol_access, _) = s.tokens("carol@example.com").await;
    assert_eq!(s.claims(&carol_access).role.as_deref(), Some("admin"));

    let audit = s.audit().await;
    assert!(audit.iter().any(|l| l.starts_with("system:cli|auth.admin_create|")), "{audit:#?}");
    assert_eq!(audit.iter().filter(|l| l.contains("|auth.role_change|")).count(), 2, "{audit:#?}");
    assert!(audit.iter().any(|l| l.starts_with(&format!("user:{root}|auth.role_change|user:{alice}|success|"))));
    // Every row, the CLI's included, is chained under the audit key, and the chain verifies.
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT key_id FROM audit_log").fetch_all(&s.pool).await.unwrap();
    assert_eq!(keys, ["a1"]);
    let log = keel::security::audit::AuditLog::new(s.pool.clone(), keel::data::Backend::from_url(s.db.url()).unwrap())
        .with_keys(keel::security::audit::AuditKeys::from_config(&s.loaded.config.keel.security.audit).unwrap());
    let v = log.verify().await.unwrap();
    assert_eq!((v.broken, v.unkeyed, v.rows), (None, 0, audit.len() as u64));
}

/// Waits (at most 5 s) until `access` is refused as a token of an ended session.
async fn revoked_within_seconds(s: &Svc, access: &str) {
    cityevents_common::testing::eventually("the access token refused", std::time::Duration::from_secs(5), || async {
        let me = s.get("/api/v1/me", Some(access)).await;
        let ended = me.status == 401 && me.body["detail"].as_str().is_some_and(|d| d.contains("session was ended"));
        ended.then_some(())
    })
    .await;
}

async fn ended_sessions_stop_access_tokens_within_seconds(s: &Svc) {
    s.register("nora@example.com", "Nora").await;
    // Sign out everywhere ends the access token it was called with, and every other one.
    let (a1, _) = s.tokens("nora@example.com").await;
    let (a2, r2) = s.tokens("nora@example.com").await;
    assert_eq!(s.claims(&a1).sv, Some(0));
    assert_eq!(s.get("/api/v1/me", Some(&a1)).await.status, 200);
    assert_eq!(s.post_bearer("/api/v1/auth/logout-all", &a1, &json!({})).await.status, 204);
    revoked_within_seconds(s, &a1).await;
    revoked_within_seconds(s, &a2).await;
    assert_eq!(s.refresh(&r2).await.status, 401);
    // A new sign-in carries the new version and works.
    let (a3, r3) = s.tokens("nora@example.com").await;
    assert_eq!(s.claims(&a3).sv, Some(1));
    assert_eq!(s.get("/api/v1/me", Some(&a3)).await.status, 200);
    // Signing out of one session ends the access tokens too (a token does not say which session
    // it came with); the other session refreshes into a working token.
    let (_, r4) = s.tokens("nora@example.com").await;
    assert_eq!(s.post("/api/v1/auth/logout", &json!({ "refresh_token": r3 })).await.status, 204);
    revoked_within_seconds(s, &a3).await;
    let again = s.refresh(&r4).await;
    let a4 = again.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(s.claims(&a4).sv, Some(2));
    assert_eq!(s.get("/api/v1/me", Some(&a4)).await.status, 200);
    // Ending a session that is already over changes nothing.
    assert_eq!(s.post("/api/v1/auth/logout", &json!({ "refresh_token": r3 })).await.status, 204);
    let after = s.refresh(again.body["refresh_token"].as_str().unwrap()).await;
    assert_eq!(s.claims(after.body["access_token"].as_str().unwrap()).sv, Some(2));

    // A demoted admin loses the admin powers at once, not when the token expires.
    let boss = cityevents_auth::AdminAction::Create { name: "Boss", password: PASSWORD };
    cityevents_auth::run_admin_create(&s.loaded, "boss@example.com", boss).await.unwrap();
    let (boss, _) = s.tokens("boss@example.com").await;
    let dana = s.register("dana@example.com", "Dana").await;
    let erin = s.register("erin@example.com", "Erin").await;
    let path = |id: &str| format!("/api/v1/admin/users/{id}/role");
    assert_eq!(s.put(&path(&dana), Some(&boss), &json!({"role": "admin"})).await.status, 200);
    let (dana_admin, dana_refresh) = s.tokens("dana@example.com").await;
    assert_eq!(s.put(&path(&erin), Some(&dana_admin), &json!({"role": "user"})).await.status, 200);
    assert_eq!(s.put(&path(&dana), Some(&boss), &json!({"role": "user"})).await.status, 200);
    revoked_within_seconds(s, &dana_admin).await;
    let refused = s.put(&path(&erin), Some(&dana_admin), &json!({"role": "admin"})).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    // Her session goes on, with what she may do now.
    let refreshed = s.refresh(&dana_refresh).await;
    let dana_user = refreshed.body["access_token"].as_str().unwrap();
    assert_eq!(s.claims(dana_user).role.as_deref(), Some("user"));
    assert_eq!(s.put(&path(&erin), Some(dana_user), &json!({"role": "admin"})).await.status, 403);
    assert_eq!(s.get("/api/v1/me", Some(&boss)).await.status, 200, "nobody else's tokens end");

    // Each raise went out on the sessions topic, for every service.
    let raised = s.outbox("cityevents.sessions").await;
    assert!(raised.iter().any(|d| d["user_id"] == dana && d["version"] == 1), "{raised:#?}");
}

async fn login_metrics_are_counted(s: &Svc) {
    s.register("mia@example.com", "Mia").await;
    assert_eq!(s.login("mia@example.com", PASSWORD).await.status, 200);
    assert_eq!(s.login("mia@example.com", "wrong-password-123").await.status, 401);
    assert_eq!(s.login("not-an-email", PASSWORD).await.status, 400);
    assert_eq!(s.post_raw("/api/v1/auth/login", Some("application/json"), "{").await.status, 400);
    for _ in 0..5 {
        s.login("max@example.com", "wrong-password-123").await;
    }
    assert_eq!(s.login("max@example.com", "wrong-password-123").await.status, 429);
    let text = s.metrics().await;
    for line in [
        r#"auth_login_attempts_total{outcome="success"} 1"#,
        r#"auth_login_attempts_total{outcome="invalid_credentials"} 6"#,
        r#"auth_login_attempts_total{outcome="invalid_input"} 2"#,
        r#"auth_login_attempts_total{outcome="locked"} 1"#,
        r#"auth_login_throttled_total{scope="account_ip"} 1"#,
        r#"auth_login_throttled_total{scope="ip"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
    }
}

#[tokio::test]
async fn refuses_to_start_without_a_signing_key() {
    let db = keel::testing::TestDatabase::sqlite().unwrap();
    let env: Vec<_> = common::env(db.url(), &TestKey::random("k1"))
        .into_vars()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("JWT__SIGNING_KEY"))
        .collect();
    let loaded = Loader::new(common::NAME, Profile::Test).env(env).load::<cityevents_auth::AuthConfig>().unwrap();
    let Err(err) = keel::app::start(cityevents_auth::service(), loaded).await else {
        panic!("start-up must be refused")
    };
    assert!(err.to_string().contains("signing_key"), "{err}");
}

#[test]
fn the_binary_answers_version_and_exits_78_on_a_bad_config() {
    cityevents_common::testing::check_binary_cli(env!("CARGO_BIN_EXE_cityevents-auth"), "cityevents-auth");
}

async fn moderators_ban_accounts_and_admins_list_them(s: &Svc) {
    let root_admin = cityevents_auth::AdminAction::Create { name: "Root", password: PASSWORD };
    let root = cityevents_auth::run_admin_create(&s.loaded, "root@example.com", root_admin).await.unwrap().id();
    let (root_access, _) = s.tokens("root@example.com").await;
    let role = |id: &str| format!("/api/v1/admin/users/{id}/role");
    let ban = |id: &str| format!("/api/v1/admin/users/{id}/ban");

    // An admin makes a moderator; the next token says so.
    let moe = s.register("moe@example.com", "Moe Moderator").await;
    let made = s.put(&role(&moe), Some(&root_access), &json!({"role": "moderator"})).await;
    assert_eq!((made.status, made.body["role"].as_str()), (200, Some("moderator")), "{made:?}");
    let (moe_access, _) = s.tokens("moe@example.com").await;
    assert_eq!(s.claims(&moe_access).role.as_deref(), Some("moderator"));
    assert_eq!(s.get("/api/v1/me", Some(&moe_access)).await.body["role"], "moderator");
    let mia = s.register("mia@example.com", "Mia Moderator").await;
    s.put(&role(&mia), Some(&root_access), &json!({"role": "moderator"})).await;
    let alice = s.register("alice@example.com", "Alice Liddell").await;
    let (alice_access, alice_refresh) = s.tokens("alice@example.com").await;

    // An admin ends every session of an account without banning it; nobody else may.
    let end = |id: &str| format!("/api/v1/admin/users/{id}/logout-all");
    let r = s.post_bearer(&end(&alice), &moe_access, &json!({})).await;
    assert_eq!(r.status, 403, "a moderator ends nobody's sessions: {r:?}");
    assert_eq!(s.post_bearer(&end(&alice), &alice_access, &json!({})).await.status, 403);
    let r = s.post_bearer(&end(&uuid::Uuid::now_v7().to_string()), &root_access, &json!({})).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(s.post_bearer(&end(&alice), &root_access, &json!({})).await.status, 204);
    assert_eq!(s.refresh(&alice_refresh).await.status, 401, "her sessions ended");
    revoked_within_seconds(s, &alice_access).await;
    let (alice_access, alice_refresh) = s.tokens("alice@example.com").await;
    assert!(s.audit().await.iter().any(|l| l.contains("|auth.sessions_ended|")), "audited");

    // Who may ban whom.
    let r = s.post_bearer(&ban(&alice), &alice_access, &json!({"reason": "x"})).await;
    assert_eq!(r.status, 403, "a user bans no one: {r:?}");
    assert_eq!(s.post(&ban(&alice), &json!({"reason": "x"})).await.status, 401);
    let r = s.post_bearer(&ban(&moe), &moe_access, &json!({"reason": "x"})).await;
    assert_eq!((r.status, r.code()), (409, "cannot_ban_self"), "{r:?}");
    let r = s.post_bearer(&ban(&root.to_string()), &moe_access, &json!({"reason": "x"})).await;
    assert_eq!((r.status, r.code()), (409, "cannot_ban_admin"), "{r:?}");
    let r = s.post_bearer(&ban(&mia), &moe_access, &json!({"reason": "x"})).await;
    assert_eq!(r.status, 403, "only an admin bans a moderator: {r:?}");
    for (body, field) in [
        (json!({}), "reason"),
        (json!({"reason": " "}), "reason"),
        (json!({"reason": "r".repeat(501)}), "reason"),
        (json!({"reason": "x", "until": 1}), "until"),
    ] {
        let r = s.post_bearer(&ban(&alice), &moe_access, &body).await;
        assert_eq!((r.status, r.field()), (400, field), "{body}: {r:?}");
    }
    let r = s.post_bearer(&ban(&uuid::Uuid::now_v7().to_string()), &moe_access, &json!({"reason": "x"})).await;
    assert_eq!(r.status, 404, "{r:?}");

    // A moderator bans Alice: her sessions end at once and she cannot sign in again.
    let banned = s.post_bearer(&ban(&alice), &moe_access, &json!({"reason": "Spam in event descriptions"})).await;
    assert_eq!(banned.status, 200, "{banned:?}");
    assert_eq!(banned.body["ban"]["reason"], "Spam in event descriptions");
    assert_eq!(banned.body["ban"]["banned_by"], moe.as_str());
    assert_eq!(banned.body["email"], "alice@example.com");
    // An access token from before the ban, even while it is still accepted, buys no new one.
    let body = json!({"current_password": PASSWORD, "new_password": "another-plum-harbor-43"});
    let r = s.post_bearer("/api/v1/auth/password", &alice_access, &body).await;
    assert!(r.status == 401 || (r.status, r.code()) == (403, "account_banned"), "{r:?}");
    revoked_within_seconds(s, &alice_access).await;
    assert_eq!(s.refresh(&alice_refresh).await.status, 401);
    let refused = s.login("alice@example.com", PASSWORD).await;
    assert_eq!((refused.status, refused.code()), (403, "account_banned"), "{refused:?}");
    assert!(refused.body["detail"].as_str().unwrap().contains("Spam in event descriptions"), "{refused:?}");
    assert_eq!(s.login("alice@example.com", "wrong-password-123").await.status, 401, "a wrong password says nothing");
    let again = s.post_bearer(&ban(&alice), &moe_access, &json!({"reason": "again"})).await;
    assert_eq!((again.status, again.body["ban"]["reason"].as_str()), (200, Some("Spam in event descriptions")));
    let announced = s.outbox("cityevents.accounts").await;
    let bans: Vec<&Value> = announced.iter().filter(|d| d["user_id"] == alice && d.get("reason").is_some()).collect();
    assert_eq!(bans.len(), 1, "announced once: {announced:#?}");
    assert_eq!((bans[0]["by"].as_str(), bans[0]["version"].as_u64()), (Some(moe.as_str()), Some(1)));

    // The admin's list: newest first, filtered, searched, paged.
    let list = |q: &str| {
        let q = q.to_owned();
        let root_access = root_access.clone();
        async move { s.get(&format!("/api/v1/admin/users{q}"), Some(&root_access)).await }
    };
    let ids = |r: &Reply| -> Vec<String> {
        r.body["items"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap().to_owned()).collect()
    };
    let all = list("").await;
    assert_eq!(all.status, 200, "{all:?}");
    assert_eq!(ids(&all), [alice.clone(), mia.clone(), moe.clone(), root.to_string()]);
    let elodie = s.register("elodie@example.com", "Élodie Ünal").await;
    assert_eq!(ids(&list("?q=%C3%A9LODIE").await), vec![elodie.clone()], "case-insensitive beyond ASCII");
    assert_eq!(ids(&list("?q=%C3%BCnal").await), vec![elodie.clone()]);
    assert_eq!(ids(&list("?banned=true").await), vec![alice.clone()]);
    assert_eq!(ids(&list("?banned=false&role=moderator").await), [mia.clone(), moe.clone()]);
    assert_eq!(ids(&list("?q=ALICE@example.com").await), vec![alice.clone()], "an address, exactly");
    assert_eq!(ids(&list("?q=moderator").await), [mia.clone(), moe.clone()], "part of a name");
    assert!(ids(&list("?q=nobody@example.com").await).is_empty());
    assert!(ids(&list("?q=50%25_off").await).is_empty(), "wildcards are text");
    let first = list("?limit=4").await;
    assert_eq!(ids(&first).len(), 4);
    let next = list(&format!("?limit=4&cursor={}", first.body["next_cursor"].as_str().unwrap())).await;
    assert_eq!(ids(&next), [root.to_string()]);
    assert_eq!(next.body["next_cursor"], Value::Null);
    for (q, field) in [
        ("?role=owner", "role"),
        ("?banned=maybe", "banned"),
        ("?limit=0", "limit"),
        ("?cursor=garbage", "cursor"),
        ("?sort=name", "sort"),
    ] {
        let r = list(q).await;
        assert_eq!((r.status, r.field()), (400, field), "{q}: {r:?}");
    }
    assert_eq!(s.get("/api/v1/admin/users", Some(&moe_access)).await.status, 403, "admins only");

    // Lifted: Alice signs in again.
    let lifted = s.delete(&ban(&alice), Some(&moe_access)).await;
    assert_eq!((lifted.status, &lifted.body["ban"]), (200, &Value::Null), "{lifted:?}");
    assert_eq!(s.login("alice@example.com", PASSWORD).await.status, 200);
    let r = s.delete(&ban(&alice), Some(&moe_access)).await;
    assert_eq!((r.status, r.code()), (404, "ban_not_found"), "{r:?}");
    assert!(
        s.outbox("cityevents.accounts").await.iter().any(|d| d["user_id"] == alice
            && d.get("reason").is_none()
            && d["by"] == moe.as_str()
            && d["version"] == 2),
        "the lift comes after the ban in version"
    );

    // A ban an admin placed is an admin's to lift.
    let bob = s.register("bob@example.com", "Bob").await;
    assert_eq!(s.post_bearer(&ban(&bob), &root_access, &json!({"reason": "Fraud"})).await.status, 200);
    let r = s.delete(&ban(&bob), Some(&moe_access)).await;
    assert_eq!(r.status, 403, "a moderator lifts no admin's ban: {r:?}");
    assert_eq!(s.login("bob@example.com", PASSWORD).await.status, 403, "still banned");
    assert_eq!(s.delete(&ban(&bob), Some(&root_access)).await.status, 200);
    assert_eq!(s.login("bob@example.com", PASSWORD).await.status, 200);

    // Every moderation action is in the audit log: who, what, on whom, why.
    let audit = s.audit().await;
    let ban_row = audit.iter().find(|l| l.contains("|moderation.account_ban|")).unwrap();
    assert!(ban_row.starts_with(&format!("user:{moe}|moderation.account_ban|user:{alice}|success|")), "{ban_row}");
    assert!(ban_row.contains("Spam in event descriptions"), "{ban_row}");
    assert!(audit.iter().any(|l| l.starts_with(&format!("user:{moe}|moderation.account_unban|user:{alice}|"))));
    assert!(audit.iter().any(|l| l.contains("|auth.login|") && l.contains("account_banned")), "{audit:#?}");

    // Moderation done in other services reaches this audit log once per message.
    let bus = keel::events::Bus::new(&{
        let mut cfg = keel::events::BusConfig::default();
        cfg.url = Some(keel::config::Secret::new(s.bus_url.clone()));
        cfg
    })
    .unwrap();
    bus.connect().await.unwrap();
    let recorded = cityevents_common::catalogue::ModerationRecorded {
        actor: uuid::Uuid::parse_str(&moe).unwrap(),
        action: "event.cancel".into(),
        target: "event:0195f3a2-0000-7000-8000-000000000001".into(),
        reason: Some("Fraudulent listing".into()),
        details: json!({"organizer_id": alice}),
        at: time::OffsetDateTime::now_utc(),
    };
    let env = keel::events::Envelope::new("cityevents-events", &recorded).unwrap();
    bus.publish(cityevents_common::catalogue::MODERATION_TOPIC, &env).await.unwrap();
    bus.publish(cityevents_common::catalogue::MODERATION_TOPIC, &env).await.unwrap();
    cityevents_common::testing::eventually(
        "the moderation reaches the audit log",
        std::time::Duration::from_secs(10),
        || async { s.audit().await.iter().any(|l| l.contains("|moderation.event.cancel|")).then_some(()) },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let rows: Vec<String> = s.audit().await.into_iter().filter(|l| l.contains("|moderation.event.cancel|")).collect();
    assert_eq!(rows.len(), 1, "a redelivery adds nothing: {rows:#?}");
    assert!(
        rows[0].starts_with(&format!(
            "user:{moe}|moderation.event.cancel|event:0195f3a2-0000-7000-8000-000000000001|success|"
        )),
        "{rows:?}"
    );
    assert!(rows[0].contains("Fraudulent listing") && rows[0].contains("cityevents-events"), "{rows:?}");

    // Display names for the gateway's lists: signed in, up to 100 ids, unknown ones left out.
    let unknown = uuid::Uuid::now_v7();
    let r = s.get(&format!("/api/v1/users/names?ids={alice},{moe},{unknown},{alice}"), Some(&moe_access)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut got: Vec<(String, String)> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_str().unwrap().to_owned(), i["name"].as_str().unwrap().to_owned()))
        .collect();
    got.sort();
    let mut want = vec![(alice.clone(), "Alice Liddell".to_owned()), (moe.clone(), "Moe Moderator".to_owned())];
    want.sort();
    assert_eq!(got, want);
    assert!(r.body["items"][0].get("email").is_none(), "nothing but the name");
    assert_eq!(s.get(&format!("/api/v1/users/names?ids={alice}"), None).await.status, 401);
    let many: Vec<String> = (0..101).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    for q in ["", "?ids=", "?ids=nope", &format!("?ids={}", many.join(",")), "?id=x"] {
        let r = s.get(&format!("/api/v1/users/names{q}"), Some(&moe_access)).await;
        assert_eq!(r.status, 400, "{q}: {r:?}");
    }
}

async fn public_profiles_show_a_name_and_bio_and_changes_are_announced(s: &Svc) {
    let id = s.register("olive@example.com", "Olive").await;
    let (access, _) = s.tokens("olive@example.com").await;
    let shown = s.get(&format!("/api/v1/profiles/{id}"), None).await;
    assert_eq!(shown.status, 200, "{shown:?}");
    assert_eq!((shown.body["name"].as_str(), shown.body["bio"].as_str()), (Some("Olive"), Some("")));
    assert!(shown.body.get("email").is_none(), "nothing but the public profile: {shown:?}");
    let saved = s.patch("/api/v1/me/profile", Some(&access), &json!({"bio": "  Rooftop jazz.\r\nFridays. "})).await;
    assert_eq!((saved.status, saved.body["bio"].as_str()), (200, Some("Rooftop jazz.\nFridays.")), "{saved:?}");
    assert_eq!(saved.body["name"], "Olive", "a field left out stays");
    let contacts_before = s.outbox("cityevents.accounts").await.len();
    let renamed = s.patch("/api/v1/me/profile", Some(&access), &json!({"name": " Olive Oyl "})).await;
    assert_eq!((renamed.status, renamed.body["name"].as_str()), (200, Some("Olive Oyl")), "{renamed:?}");
    assert_eq!(renamed.body["bio"], "Rooftop jazz.\nFridays.");
    let moved = s.patch("/api/v1/me/profile", Some(&access), &json!({"city": "  Lisbon "})).await;
    assert_eq!((moved.status, moved.body["city"].as_str()), (200, Some("Lisbon")), "{moved:?}");
    assert_eq!(s.get(&format!("/api/v1/profiles/{id}"), None).await.body["city"], "Lisbon");
    let far = s.patch("/api/v1/me/profile", Some(&access), &json!({"city": "x".repeat(81)})).await;
    assert_eq!((far.status, far.body["errors"][0]["field"].as_str()), (400, Some("city")), "{far:?}");
    let contacts = s.outbox("cityevents.accounts").await;
    assert_eq!(contacts.len(), contacts_before + 1, "the new name is announced");
    assert_eq!(contacts.last().unwrap()["name"], "Olive Oyl");
    // Bad fields, all at once; unknown fields refused; only the owner.
    let bad = s.patch("/api/v1/me/profile", Some(&access), &json!({"name": "", "bio": "x".repeat(501)})).await;
    assert_eq!(bad.status, 400, "{bad:?}");
    let fields: Vec<&str> = bad.body["errors"].as_array().unwrap().iter().filter_map(|e| e["field"].as_str()).collect();
    assert_eq!(fields, ["name", "bio"], "{bad:?}");
    assert_eq!(s.patch("/api/v1/me/profile", Some(&access), &json!({"role": "admin"})).await.status, 400);
    assert_eq!(s.patch("/api/v1/me/profile", None, &json!({"bio": "x"})).await.status, 401);
    assert_eq!(s.get(&format!("/api/v1/profiles/{}", uuid::Uuid::now_v7()), None).await.status, 404);
    assert_eq!(s.get("/api/v1/profiles/not-a-uuid", None).await.status, 400);
}

/// A multipart upload of `bytes` as the `file` field to `PUT /api/v1/me/avatar`.
async fn put_avatar(s: &Svc, access: Option<&str>, bytes: &[u8]) -> Reply {
    let boundary = "keel-avatar-test";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"me.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    s.put_raw("/api/v1/me/avatar", access, &format!("multipart/form-data; boundary={boundary}"), body).await
}

/// A JPEG of `w`×`h` with a comment segment holding `marker`.
fn jpeg(w: u32, h: u32, marker: &str) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 40]));
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90).encode_image(&img).unwrap();
    let mut com = vec![0xFF, 0xFE];
    com.extend_from_slice(&((marker.len() + 2) as u16).to_be_bytes());
    com.extend_from_slice(marker.as_bytes());
    buf.splice(2..2, com);
    buf
}

async fn avatars_are_checked_served_and_swept(s: &Svc) {
    let id = s.register("ava@example.com", "Ava").await;
    let (access, _) = s.tokens("ava@example.com").await;
    let path = format!("/api/v1/profiles/{id}");
    assert!(s.get(&path, None).await.body.get("avatar").is_none(), "no picture yet");
    // Signed in only; pictures only; bounded.
    assert_eq!(put_avatar(s, None, &jpeg(300, 300, "")).await.status, 401);
    let bad = put_avatar(s, Some(&access), b"GIF89a? no: text").await;
    assert_eq!((bad.status, bad.body["code"].as_str()), (400, Some("INVALID_IMAGE")), "{bad:?}");
    let huge = put_avatar(s, Some(&access), &vec![0u8; cityevents_api::limits::MAX_PICTURE + 1]).await;
    assert_eq!(huge.status, 413, "{huge:?}");
    // A picture: square sizes, clean, cached for good, on the profile.
    let saved = put_avatar(s, Some(&access), &jpeg(900, 600, "SECRET-EXIF")).await;
    assert_eq!(saved.status, 200, "{saved:?}");
    let small = saved.body["avatar"]["small"].as_str().unwrap().to_owned();
    let large = saved.body["avatar"]["large"].as_str().unwrap().to_owned();
    assert!(small.starts_with(&format!("/api/v1/profiles/{id}/avatar/")) && small.ends_with("/small.jpg"), "{small}");
    assert_eq!(s.get(&path, None).await.body["avatar"]["large"], large.as_str());
    for (url, side) in [(&small, 96), (&large, 400)] {
        let (status, headers, bytes) = s.get_bytes(url).await;
        assert_eq!(status, 200, "{url}");
        assert_eq!(headers["cache-control"], "public, max-age=31536000, immutable");
        assert_eq!(headers["content-type"], "image/jpeg");
        assert!(!bytes.windows(6).any(|w| w == b"SECRET"), "the original's metadata is gone");
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!((img.width(), img.height()), (side, side), "{url}");
    }
    assert_eq!(s.get(&small.replace("small.jpg", "huge.jpg"), None).await.status, 404);
    // Replaced: the old files go after the grace period; removed: gone too.
    let again = put_avatar(s, Some(&access), &jpeg(500, 500, "")).await;
    let new_small = again.body["avatar"]["small"].as_str().unwrap().to_owned();
    assert_ne!(new_small, small);
    cityevents_common::testing::eventually("the old avatar swept", std::time::Duration::from_secs(20), || async {
        (s.get(&small, None).await.status == 404).then_some(())
    })
    .await;
    assert_eq!(s.get(&new_small, None).await.status, 200);
    assert_eq!(s.delete("/api/v1/me/avatar", Some(&access)).await.status, 204);
    assert!(s.get(&path, None).await.body.get("avatar").is_none());
    assert_eq!(s.get(&new_small, None).await.status, 404, "a removed picture's files go at once");
    assert_eq!(s.delete("/api/v1/me/avatar", None).await.status, 401);

    // A moderator takes a picture down, with a reason; a member may not.
    let shown = put_avatar(s, Some(&access), &jpeg(400, 400, "")).await;
    assert_eq!(shown.status, 200);
    let shown = shown.body["avatar"]["large"].as_str().unwrap().to_owned();
    let root_admin = cityevents_auth::AdminAction::Create { name: "Root", password: PASSWORD };
    cityevents_auth::run_admin_create(&s.loaded, "root-ava@example.com", root_admin).await.unwrap();
    let (root, _) = s.tokens("root-ava@example.com").await;
    let take_down = format!("/api/v1/admin/users/{id}/avatar/remove");
    assert_eq!(s.post_bearer(&take_down, &access, &json!({"reason": "Offensive"})).await.status, 403);
    assert_eq!(s.post_bearer(&take_down, &root, &json!({"reason": " "})).await.status, 400, "a reason is required");
    assert!(s.get(&path, None).await.body.get("avatar").is_some(), "still there");
    assert_eq!(s.post_bearer(&take_down, &root, &json!({"reason": "Offensive picture"})).await.status, 204);
    assert!(s.get(&path, None).await.body.get("avatar").is_none(), "taken down");
    assert_eq!(s.get(&shown, None).await.status, 404, "its files go at once");
    let unknown = format!("/api/v1/admin/users/{}/avatar/remove", uuid::Uuid::now_v7());
    assert_eq!(s.post_bearer(&unknown, &root, &json!({"reason": "Offensive picture"})).await.status, 404);

    // A moderator's picture is an admin's to take down, not another moderator's.
    let mods = ["mod-a-ava@example.com", "mod-b-ava@example.com"];
    let mut ids = Vec::new();
    for email in mods {
        let mid = s.register(email, "Mod").await;
        let role = format!("/api/v1/admin/users/{mid}/role");
        assert_eq!(s.put(&role, Some(&root), &json!({"role": "moderator"})).await.status, 200);
        ids.push(mid);
    }
    let (mod_a, _) = s.tokens(mods[0]).await;
    let (mod_b, _) = s.tokens(mods[1]).await;
    let pictured = put_avatar(s, Some(&mod_b), &jpeg(400, 400, "")).await;
    assert_eq!(pictured.status, 200, "{pictured:?}");
    let of_b = format!("/api/v1/admin/users/{}/avatar/remove", ids[1]);
    let refused = s.post_bearer(&of_b, &mod_a, &json!({"reason": "Offensive picture"})).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(s.get(&format!("/api/v1/profiles/{}", ids[1]), None).await.body.get("avatar").is_some(), "kept");
    assert_eq!(s.post_bearer(&of_b, &root, &json!({"reason": "Offensive picture"})).await.status, 204);
    assert!(s.get(&format!("/api/v1/profiles/{}", ids[1]), None).await.body.get("avatar").is_none());
}
