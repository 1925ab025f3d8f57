//! cityevents-auth end to end, on SQLite, PostgreSQL and MariaDB: accounts, input limits,
//! refresh rotation and reuse detection, sign-out, lockout, admins and roles, metrics, and what
//! the database and audit log hold. PostgreSQL and MariaDB tests skip when the server is not
//! running, except under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cityevents_common::testing::TestKey;
use common::{PASSWORD, Svc};
use keel::app::Loader;
use keel::config::Profile;
use serde_json::json;

on_every_backend!(
    register_login_and_me,
    every_input_limit_is_a_problem_naming_the_field,
    refresh_rotates_and_reuse_revokes_the_family,
    logout_revokes_the_family,
    lockout_after_repeated_failures,
    concurrent_attempts_cannot_exceed_the_lockout_budget,
    admins_come_from_create_admin_and_guard_roles,
    login_metrics_are_counted,
);

async fn register_login_and_me(s: &Svc) {
    let r = s
        .post(
            "/api/v1/auth/register",
            &json!({"email": "  Alice@Example.COM ", "password": PASSWORD, "name": " Alice "}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    assert_eq!(r.body["email"], "alice@example.com");
    assert_eq!(r.body["name"], "Alice");
    assert_eq!(r.body["role"], "user");
    let created = r.body["created_at"].as_str().unwrap().to_owned();
    assert!(created.ends_with('Z'), "{created}");

    // The same address in another case is taken.
    let dup = s
        .post("/api/v1/auth/register", &json!({"email": "ALICE@example.com", "password": PASSWORD, "name": "A"}))
        .await;
    assert_eq!((dup.status, dup.code()), (409, "email_taken"), "{dup:?}");
    assert!(dup.is_problem());

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
    assert_eq!(login.body["expires_in"], 900);
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

    let me = s.get("/api/v1/me", Some(access)).await;
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(
        me.body,
        json!({"id": id, "email": "alice@example.com", "name": "Alice", "role": "user", "created_at": created})
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
    assert_eq!((r.status, r.field()), (413, "body"), "{r:?}");
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
    // … so the newest token of the family stops working too.
    let newest = s.refresh(&r3).await;
    assert_eq!((newest.status, newest.code()), (401, "invalid_refresh_token"), "{newest:?}");
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

async fn lockout_after_repeated_failures(s: &Svc) {
    s.register("lena@example.com", "Lena").await;
    let mut wrong_password = None;
    for i in 0..5 {
        let r = s.login("lena@example.com", "wrong-password-123").await;
        assert_eq!((r.status, r.code()), (401, "invalid_credentials"), "attempt {i}: {r:?}");
        wrong_password = Some(r);
    }
    let locked = s.login("lena@example.com", PASSWORD).await;
    assert_eq!((locked.status, locked.code()), (429, "locked"), "the right password is refused too: {locked:?}");
    let retry: u64 = locked.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry), "{retry}");

    // An address nobody has: the same answers.
    let mut unknown = None;
    for i in 0..5 {
        let r = s.login("nobody@example.com", "wrong-password-123").await;
        assert_eq!((r.status, r.code()), (401, "invalid_credentials"), "attempt {i}: {r:?}");
        unknown = Some(r);
    }
    assert_eq!(unknown.unwrap().shape(), wrong_password.unwrap().shape());
    let locked_unknown = s.login("nobody@example.com", PASSWORD).await;
    assert_eq!(locked_unknown.status, 429);
    assert_eq!(locked_unknown.shape(), locked.shape());
    assert!(locked_unknown.headers.contains_key("retry-after"));

    // When the lock ends, the right password works again.
    sqlx::query("UPDATE login_failures SET locked_until = 1").execute(&s.pool).await.unwrap();
    assert_eq!(s.login("lena@example.com", PASSWORD).await.status, 200);

    // Success resets the count: 4 + 4 failures around a success never lock.
    s.register("bo@example.com", "Bo").await;
    for _ in 0..2 {
        for _ in 0..4 {
            assert_eq!(s.login("bo@example.com", "wrong-password-123").await.status, 401);
        }
        assert_eq!(s.login("bo@example.com", PASSWORD).await.status, 200);
    }

    let audit = s.audit().await;
    assert_eq!(audit.iter().filter(|l| l.contains("|auth.lockout|")).count(), 2, "{audit:#?}");
    assert!(audit.iter().any(|l| l.contains("|auth.login|") && l.contains("|failure|")));
    assert!(audit.iter().any(|l| l.contains("|auth.login|") && l.contains("|denied|") && l.contains("locked")));
    for line in &audit {
        for secret in ["lena@", "nobody@", "bo@example", PASSWORD, "wrong-password-123"] {
            assert!(!line.contains(secret), "{secret} in the audit log: {line}");
        }
    }
}

/// Attempts are counted before their password is checked: 20 at once get at most 5 guesses.
async fn concurrent_attempts_cannot_exceed_the_lockout_budget(s: &Svc) {
    s.register("rush@example.com", "Rush").await;
    let answers =
        futures_util::future::join_all((0..20).map(|_| s.login("rush@example.com", "wrong-password-123"))).await;
    let guesses = answers.iter().filter(|r| r.status == 401).count();
    let locked = answers.iter().filter(|r| r.status == 429).count();
    assert_eq!(guesses + locked, 20, "{answers:?}");
    assert!(guesses <= 5, "{guesses} passwords were tried");
    assert_eq!(s.login("rush@example.com", PASSWORD).await.status, 429, "locked even for the right password");
}

async fn admins_come_from_create_admin_and_guard_roles(s: &Svc) {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users").fetch_one(&s.pool).await.unwrap();
    assert_eq!(n, 0, "no default users");
    let weak = cityevents_auth::run_admin_create(&s.loaded, "root@example.com", "Root", "short").await;
    assert!(matches!(&weak, Err(cityevents_auth::AdminError::Invalid(f)) if f.field == "password"), "{weak:?}");

    let root = cityevents_auth::run_admin_create(&s.loaded, " Root@Example.com", "Root", PASSWORD).await.unwrap();
    let again = cityevents_auth::run_admin_create(&s.loaded, "root@example.com", "Root", PASSWORD).await.unwrap();
    assert_eq!(again, root, "creating an existing admin changes nothing");
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

    let promoted = s.put(&path(&alice), Some(&root_access), &json!({"role": "admin"})).await;
    assert_eq!(promoted.status, 200, "{promoted:?}");
    assert_eq!(promoted.body["role"], "admin");
    assert_eq!(promoted.body["email"], "alice@example.com");
    // The next token (a refresh reads the role afresh) carries the new role.
    let refreshed = s.refresh(&alice_refresh).await;
    let new_access = refreshed.body["access_token"].as_str().unwrap();
    assert_eq!(s.claims(new_access).role.as_deref(), Some("admin"));

    // create_admin promotes an existing account, keeping its password.
    let carol = s.register("carol@example.com", "Carol").await;
    let promoted =
        cityevents_auth::run_admin_create(&s.loaded, "carol@example.com", "ignored", "ignored").await.unwrap();
    assert_eq!(promoted.to_string(), carol);
    let (carol_access, _) = s.tokens("carol@example.com").await;
    assert_eq!(s.claims(&carol_access).role.as_deref(), Some("admin"));

    let audit = s.audit().await;
    assert!(audit.iter().any(|l| l.starts_with("system:cli|auth.admin_create|")), "{audit:#?}");
    assert_eq!(audit.iter().filter(|l| l.contains("|auth.role_change|")).count(), 2, "{audit:#?}");
    assert!(audit.iter().any(|l| l.starts_with(&format!("user:{root}|auth.role_change|user:{alice}|success|"))));
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
