//! Security: JWT (algorithms, pinning, rotation, claims, extractors), secrets in config, the
//! password hasher under load, and the audit log's hash chain on every SQL backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use keel::app::Loader;
use keel::config::{NoConfig, ProblemKind, Profile, Secret};
use keel::security::PasswordsConfig;
use keel::security::audit::{AuditFilter, AuditKeys, AuditLog, Checkpoint, Outcome};
use keel::security::jwt::{Auth, Claims, Jwt, JwtError, JwtKey, RequireRole, RequireRoleLayer, Role};
use keel::security::password::{PasswordError, PasswordHasher};
use keel::security::sessions::Revocations;
use keel::security::{AuditConfig, AuditKeyConfig};
use keel::testing::{TestDatabase, mysql_url, postgres_url, require};
use serde_json::{Value, json};
use tower::ServiceExt;

const HS_SECRET: &str = "an-hs256-test-secret-of-more-than-32-bytes";
const RSA_PRIVATE: &str = include_str!("keys/rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("keys/rsa-public.pem");
const ED_PRIVATE: &str = include_str!("keys/ed25519-private.pem");
const ED_PUBLIC: &str = include_str!("keys/ed25519-public.pem");

fn hs(kid: &str, secret: &str) -> JwtKey {
    JwtKey::hs256(kid, &Secret::new(secret)).unwrap()
}

fn verifier() -> Jwt {
    Jwt::builder()
        .issuer("https://auth.test")
        .audience(["api"])
        .leeway(Duration::from_secs(5))
        .key(hs("hs", HS_SECRET))
        .key(JwtKey::rs256("rsa", RSA_PUBLIC).unwrap())
        .key(JwtKey::eddsa("ed", ED_PUBLIC, Some(&Secret::new(ED_PRIVATE))).unwrap())
        .build()
        .unwrap()
}

/// The same keys, signing with `kid`.
fn signer(kid: &str) -> Jwt {
    Jwt::builder()
        .issuer("https://auth.test")
        .audience(["api"])
        .key(hs("hs", HS_SECRET))
        .key(JwtKey::rs256("rsa", RSA_PUBLIC).unwrap())
        .key(JwtKey::eddsa("ed", ED_PUBLIC, Some(&Secret::new(ED_PRIVATE))).unwrap())
        .sign_with(kid)
        .build()
        .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// An RS256 token signed the way an identity provider would: Keel verifies RS256 and never
/// signs with it.
fn rs256_token(claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa".into());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

#[test]
fn issues_and_verifies_with_each_algorithm() {
    let v = verifier();
    for kid in ["hs", "ed"] {
        let s = signer(kid);
        let token = s.issue(&s.claims("alice").role("admin").email("alice@example.com")).unwrap();
        let c: Claims = v.verify(&token).unwrap_or_else(|e| panic!("{kid}: {e}"));
        assert_eq!(c.sub, "alice");
        assert_eq!(c.role.as_deref(), Some("admin"));
        assert_eq!(c.iss.as_deref(), Some("https://auth.test"));
    }
    let claims = json!({"sub": "alice", "role": "admin", "exp": now() + 60, "iss": "https://auth.test", "aud": "api"});
    let c: Claims = v.verify(&rs256_token(&claims)).unwrap();
    assert_eq!(c.sub, "alice");
    assert_eq!(c.role.as_deref(), Some("admin"));
}

#[test]
fn rs256_keys_verify_only() {
    // RUSTSEC-2023-0071: the rsa crate's private-key operations are not constant-time.
    let e = Jwt::builder().key(JwtKey::rs256("rsa", RSA_PUBLIC).unwrap()).sign_with("rsa").build().unwrap_err();
    assert!(matches!(&e, JwtError::Key(m) if m.contains("verifies only")), "{e:?}");
    let mut cfg = keel::security::JwtConfig::default();
    let mut key = keel::security::JwtKeyConfig::default();
    key.algorithm = Some(keel::security::JwtAlgorithm::RS256);
    key.public_key = Some(RSA_PUBLIC.into());
    key.private_key = Some(Secret::new(RSA_PRIVATE));
    cfg.keys.insert("rsa".into(), key);
    let e = Jwt::from_config(&cfg).unwrap_err();
    assert!(matches!(&e, JwtError::Key(m) if m.contains("verify only")), "{e:?}");
}

#[test]
fn short_hs256_secrets_are_refused() {
    assert!(matches!(JwtKey::hs256("k", &Secret::new("too-short")), Err(JwtError::Key(_))));
}

#[test]
fn alg_none_and_algorithm_confusion_are_refused() {
    let v = verifier();
    let claims = json!({"sub": "mallory", "exp": now() + 60, "iss": "https://auth.test", "aud": "api"});
    for header in [json!({"alg": "none", "typ": "JWT"}), json!({"alg": "none", "kid": "hs"})] {
        let token = format!("{}.{}.", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
        assert_eq!(v.verify::<Claims>(&token).unwrap_err(), JwtError::Malformed);
    }
    // HS256 "signed" with the RSA public key as the HMAC secret, claiming the RSA key's kid.
    let forger = Jwt::builder().key(hs("rsa", RSA_PUBLIC)).sign_with("rsa").build().unwrap();
    let forged = forger.issue(&claims).unwrap();
    assert_eq!(v.verify::<Claims>(&forged).unwrap_err(), JwtError::WrongAlgorithm);
    // An EdDSA token presented under the HS256 key's kid.
    let ed =
        Jwt::builder().key(JwtKey::eddsa("hs", ED_PUBLIC, Some(&Secret::new(ED_PRIVATE))).unwrap()).sign_with("hs");
    let token = ed.build().unwrap().issue(&claims).unwrap();
    assert_eq!(v.verify::<Claims>(&token).unwrap_err(), JwtError::WrongAlgorithm);
}

#[test]
fn rotation_by_kid() {
    let old = Jwt::builder().key(hs("2024", HS_SECRET)).sign_with("2024").build().unwrap();
    let new_secret = "a-second-secret-for-rotation-0123456789";
    let new = Jwt::builder().key(hs("2025", new_secret)).sign_with("2025").build().unwrap();
    let both = Jwt::builder().key(hs("2024", HS_SECRET)).key(hs("2025", new_secret)).build().unwrap();
    let claims = json!({"sub": "a", "exp": now() + 60});
    assert!(both.verify::<Claims>(&old.issue(&claims).unwrap()).is_ok());
    assert!(both.verify::<Claims>(&new.issue(&claims).unwrap()).is_ok());
    // Old key retired: its tokens are an unknown kid.
    let only_new = Jwt::builder().key(hs("2025", new_secret)).key(hs("spare", HS_SECRET)).build().unwrap();
    assert_eq!(only_new.verify::<Claims>(&old.issue(&claims).unwrap()).unwrap_err(), JwtError::UnknownKey);
    // Same kid, different secret: bad signature.
    let impostor = Jwt::builder().key(hs("2025", "an-impostor-secret-0123456789abcdef")).sign_with("2025");
    let t = impostor.build().unwrap().issue(&claims).unwrap();
    assert_eq!(both.verify::<Claims>(&t).unwrap_err(), JwtError::BadSignature);
}

#[test]
fn registered_claims_are_enforced() {
    let v = verifier();
    let s = signer("hs");
    let iss = "https://auth.test";
    let cases = [
        (json!({"sub": "a", "iss": iss, "aud": "api"}), "exp"),
        (json!({"sub": "a", "exp": now() - 60, "iss": iss, "aud": "api"}), "expired"),
        (json!({"sub": "a", "exp": now() + 60, "iss": "https://evil", "aud": "api"}), "issuer"),
        (json!({"sub": "a", "exp": now() + 60, "aud": "api"}), "iss"),
        (json!({"sub": "a", "exp": now() + 60, "iss": iss, "aud": "other"}), "audience"),
        (json!({"sub": "a", "exp": now() + 60, "iss": iss, "aud": "api", "nbf": now() + 600}), "not yet"),
    ];
    for (claims, what) in cases {
        let e = v.verify::<Claims>(&s.issue(&claims).unwrap()).unwrap_err();
        assert!(e.to_string().contains(what), "{what}: {e}");
    }
    // Within the leeway: accepted.
    let fresh = json!({"sub": "a", "exp": now() - 2, "iss": iss, "aud": ["x", "api"]});
    assert!(v.verify::<Claims>(&s.issue(&fresh).unwrap()).is_ok());
}

struct Admin;
impl Role for Admin {
    const NAME: &'static str = "admin";
}

fn app(jwt: &Jwt) -> Router {
    Router::new()
        .route("/me", get(|Auth(c): Auth| async move { c.sub }))
        .route(
            "/maybe",
            get(|a: Option<Auth>| async move { a.map_or_else(|| "anonymous".to_owned(), |Auth(c)| c.sub) }),
        )
        .route("/admin", get(|r: RequireRole<Admin>| async move { r.into_inner().sub }))
        .nest(
            "/ops",
            Router::new()
                .route("/status", get(|axum::Extension(c): axum::Extension<Claims>| async move { c.sub }))
                .layer(RequireRoleLayer::<Claims>::new("admin")),
        )
        .layer(jwt.extension())
}

async fn call(app: &Router, path: &str, token: Option<&str>) -> (StatusCode, Option<String>, String) {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let challenge = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    if status.is_client_error() {
        assert_eq!(ct.as_deref(), Some("application/problem+json"), "{body}");
    }
    (status, challenge, body)
}

#[tokio::test]
async fn wrong_claim_types_are_a_401_problem_never_a_panic() {
    let v = verifier();
    let s = signer("hs");
    let app = app(&v);
    let base = json!({"sub": "a", "exp": now() + 60, "iss": "https://auth.test", "aud": "api"});
    let with = |k: &str, val: Value| {
        let mut c = base.clone();
        c[k] = val;
        s.issue(&c).unwrap()
    };
    for token in [
        with("sub", json!(123)),
        with("role", json!(["admin"])),
        with("email", Value::Null),
        with("exp", json!("soon")),
    ] {
        for path in ["/me", "/maybe", "/admin", "/ops/status"] {
            let (status, challenge, body) = call(&app, path, Some(&token)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
            assert!(challenge.unwrap().starts_with("Bearer error=\"invalid_token\""));
            let p: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(p["status"], 401);
            assert_eq!(p["type"], "urn:keel:problem:invalid-token");
        }
    }
    let ok = s.issue(&base).unwrap();
    assert_eq!(call(&app, "/me", Some(&ok)).await.2, "a");
    // The auth-scheme is case-insensitive (RFC 9110 §11.1); another scheme is refused.
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let req = Request::get("/me").header("authorization", format!("{scheme} {ok}"));
        let resp = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{scheme}");
    }
    let req = Request::get("/me").header("authorization", format!("Basic {ok}"));
    let resp = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer", "no token was sent, so none is called invalid");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
    let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(p["type"], "urn:keel:problem:unauthorized", "{p}");
    assert!(p["detail"].as_str().unwrap().starts_with("expected a Bearer token"), "{p}");
    // Garbage and non-bearer schemes.
    assert_eq!(call(&app, "/me", Some("not.a.jwt")).await.0, StatusCode::UNAUTHORIZED);
    let (status, challenge, _) = call(&app, "/me", None).await;
    assert_eq!((status, challenge.as_deref()), (StatusCode::UNAUTHORIZED, Some("Bearer")));
    // Optional auth: none → anonymous; a bad token is still refused.
    assert_eq!(call(&app, "/maybe", None).await.2, "anonymous");
    assert_eq!(call(&app, "/maybe", Some("x.y.z")).await.0, StatusCode::UNAUTHORIZED);
    // The role guard.
    let (status, challenge, _) = call(&app, "/admin", Some(&ok)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(challenge.unwrap().contains("insufficient_scope"));
    let mut admin = base.clone();
    admin["roles"] = json!(["reader", "admin"]);
    assert_eq!(call(&app, "/admin", Some(&s.issue(&admin).unwrap())).await.0, StatusCode::OK);
    // The same guard as a layer over a router.
    assert_eq!(call(&app, "/ops/status", None).await.0, StatusCode::UNAUTHORIZED);
    let (status, _, body) = call(&app, "/ops/status", Some(&ok)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("`admin`"), "{body}");
    assert_eq!(call(&app, "/ops/status", Some(&s.issue(&admin).unwrap())).await.2, "a");
}

#[tokio::test]
async fn ended_sessions_are_refused_by_every_extractor() {
    let revoked = Revocations::new(Duration::from_secs(600), 1_000);
    let v = verifier().with_revocations(revoked.clone());
    let app = app(&v);
    let s = signer("ed");
    let token = |sub: &str, sv: Option<u64>| {
        let mut c = s.claims(sub).role("admin");
        c.sv = sv;
        s.issue(&c).unwrap()
    };
    let (old, legacy, other) = (token("u1", Some(1)), token("u1", None), token("u2", Some(1)));
    for t in [&old, &legacy, &other] {
        assert_eq!(call(&app, "/me", Some(t)).await.0, StatusCode::OK);
    }
    assert!(revoked.revoke("u1", 2));
    let current = token("u1", Some(2));
    for path in ["/me", "/maybe", "/admin", "/ops/status"] {
        for t in [&old, &legacy] {
            let (status, challenge, body) = call(&app, path, Some(t)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
            assert!(challenge.unwrap().starts_with("Bearer error=\"invalid_token\""));
            assert!(body.contains("its session was ended"), "{body}");
        }
        assert_eq!(call(&app, path, Some(&current)).await.0, StatusCode::OK, "{path}");
        assert_eq!(call(&app, path, Some(&other)).await.0, StatusCode::OK, "another subject is untouched");
    }
    assert_eq!(v.verify::<Claims>(&old), Err(JwtError::Revoked));
    // The check reads `sub`/`sv` whatever the application's claims type is.
    #[derive(serde::Deserialize)]
    struct Mine {
        #[allow(dead_code)]
        sub: String,
    }
    assert!(matches!(v.verify::<Mine>(&old), Err(JwtError::Revoked)));
    assert!(v.verify::<Mine>(&current).is_ok());
    // A verifier without revocations is unchanged.
    assert!(verifier().verify::<Claims>(&old).is_ok());
}

fn cheap_passwords(cap: usize, queue: Duration) -> PasswordHasher {
    let mut cfg = PasswordsConfig::default();
    cfg.memory_kib = 8 * 1024;
    cfg.iterations = 2;
    cfg.max_concurrent_hashes = cap;
    cfg.queue_timeout = queue;
    PasswordHasher::from_config(&cfg).unwrap()
}

#[tokio::test]
async fn passwords_hash_verify_and_rehash() {
    let h = cheap_passwords(2, Duration::from_secs(10));
    let phc = h.hash("plum-harbor-velvet-42").await.unwrap();
    assert!(phc.starts_with("$argon2id$v=19$m=8192,t=2,p=1$"), "{phc}");
    assert!(h.verify("plum-harbor-velvet-42", &phc).await.unwrap());
    assert!(!h.verify("plum-harbor-velvet-43", &phc).await.unwrap());
    assert!(!h.verify_dummy("anything").await.unwrap());
    assert!(matches!(h.verify("x", "not-a-phc").await, Err(PasswordError::MalformedHash)));
    assert!(matches!(h.hash(&"x".repeat(200)).await, Err(PasswordError::TooLong(128))));
    assert!(!h.needs_rehash(&phc));
    assert!(cheap_passwords(1, Duration::from_secs(1)).needs_rehash(&phc.replace("t=2", "t=3")));
}

#[tokio::test(flavor = "current_thread")]
async fn a_login_storm_neither_starves_the_runtime_nor_queues_without_bound() {
    let h = cheap_passwords(1, Duration::from_millis(50));
    // Even on a single-threaded runtime, timers keep firing while hashes run.
    let ticker = tokio::spawn(async {
        let mut ticks = 0;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            ticks += 1;
        }
        ticks
    });
    let storm: Vec<_> = (0..16)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move { h.hash(&format!("storm-password-{i:04}")).await })
        })
        .collect();
    let mut ok = 0;
    let mut overloaded = 0;
    for t in storm {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(PasswordError::Overloaded) => overloaded += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(ok >= 1, "some hashes complete");
    assert!(overloaded >= 1, "callers past the queue timeout are told, not queued forever ({ok} ok)");
    assert_eq!(ticker.await.unwrap(), 10);
    assert_eq!(h.available_permits(), 1, "permits come back");
}

fn load(profile: Profile, env: &[(&str, &str)]) -> Result<keel::app::Loaded<NoConfig>, keel::config::ConfigError> {
    let mut vars = vec![("SVC__CORS__ALLOWED_ORIGINS", "https://app.example")];
    vars.extend_from_slice(env);
    Loader::new("svc", profile).env(vars).load::<NoConfig>()
}

#[test]
fn weak_and_default_secrets_are_refused_in_production() {
    for (var, value, path) in [
        ("SVC__MANAGEMENT__ADMIN_TOKEN", "changeme", "management.admin_token"),
        ("SVC__MANAGEMENT__ADMIN_TOKEN", "Password123", "management.admin_token"),
        ("SVC__DATABASE__URL", "postgres://app:postgres@db/app", "database.url"),
        ("SVC__REDIS__URL", "redis://:secret@cache:6379", "redis.url"),
    ] {
        let e = load(Profile::Production, &[(var, value)]).unwrap_err();
        let p = e.problems.iter().find(|p| p.path == path).unwrap_or_else(|| panic!("{path}: {e}"));
        assert_eq!(p.kind, ProblemKind::Production);
        assert!(!e.to_string().contains(value.rsplit(':').next().unwrap()), "the value is never echoed: {e}");
        assert!(load(Profile::Development, &[(var, value)]).is_ok(), "development allows it");
    }
    assert!(load(Profile::Production, &[("SVC__MANAGEMENT__ADMIN_TOKEN", "kV8r2xQ0pLm4Zt7Wb1YcT5")]).is_ok());
}

#[test]
fn no_secret_has_a_default() {
    let l = load(Profile::Development, &[]).unwrap();
    assert!(!l.to_yaml().contains(keel::config::MASK), "a default secret would show as ***:\n{}", l.to_yaml());
}

#[test]
fn jwt_keys_load_from_secret_files_and_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hs");
    std::fs::write(&secret, format!("{HS_SECRET}\n")).unwrap();
    let pem = dir.path().join("rsa.pem");
    std::fs::write(&pem, RSA_PUBLIC).unwrap();
    let secret_s = secret.display().to_string();
    let pem_s = pem.display().to_string();
    let l = load(
        Profile::Production,
        &[
            ("SVC__SECURITY__JWT__ISSUER", "https://auth.test"),
            ("SVC__SECURITY__JWT__KEYS__HS__ALGORITHM", "HS256"),
            ("SVC__SECURITY__JWT__KEYS__HS__SECRET_FILE", &secret_s),
            ("SVC__SECURITY__JWT__KEYS__RSA__ALGORITHM", "RS256"),
            ("SVC__SECURITY__JWT__KEYS__RSA__PUBLIC_KEY_FILE", &pem_s),
            ("SVC__SECURITY__JWT__SIGNING_KEY", "hs"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let yaml = l.to_yaml();
    assert!(!yaml.contains(HS_SECRET), "{yaml}");
    let jwt = Jwt::from_config(&l.config.keel.security.jwt).unwrap();
    let token = jwt.issue(&jwt.claims("a")).unwrap();
    assert_eq!(jwt.verify::<Claims>(&token).unwrap().sub, "a");

    let e = load(
        Profile::Development,
        &[
            ("SVC__SECURITY__JWT__KEYS__K__ALGORITHM", "HS256"),
            ("SVC__SECURITY__JWT__KEYS__K__SECRET", "short-secret"),
            ("SVC__SECURITY__JWT__SIGNING_KEY", "nope"),
            ("SVC__SECURITY__JWT__LEEWAY", "1h"),
        ],
    )
    .unwrap_err();
    let text = e.to_string();
    for needle in ["security.jwt.keys.k.secret", "security.jwt.signing_key", "security.jwt.leeway"] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    assert!(!text.contains("short-secret"), "{text}");

    // An RS256 key verifies only: a private key for it, or naming it the signing key, is refused.
    let e = load(
        Profile::Development,
        &[
            ("SVC__SECURITY__JWT__KEYS__RSA__ALGORITHM", "RS256"),
            ("SVC__SECURITY__JWT__KEYS__RSA__PUBLIC_KEY_FILE", &pem_s),
            ("SVC__SECURITY__JWT__KEYS__RSA__PRIVATE_KEY", RSA_PRIVATE),
            ("SVC__SECURITY__JWT__SIGNING_KEY", "rsa"),
        ],
    )
    .unwrap_err();
    let text = e.to_string();
    for needle in ["security.jwt.keys.rsa.private_key", "RS256 keys verify only", "security.jwt.signing_key"] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    assert!(!text.contains("PRIVATE KEY-----"), "{text}");
}

#[test]
fn data_keys_load_from_secret_files() {
    let master = keel::security::crypto::generate_key();
    let wrapped = keel::security::crypto::MasterKey::from_secret(&Secret::new(master.clone()))
        .unwrap()
        .new_data_key("k1")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (master_file, key_file) = (dir.path().join("master"), dir.path().join("k1"));
    std::fs::write(&master_file, format!("{master}\n")).unwrap();
    std::fs::write(&key_file, format!("{wrapped}\n")).unwrap();
    let (master_s, key_s) = (master_file.display().to_string(), key_file.display().to_string());
    let l = load(
        Profile::Development,
        &[
            ("SVC__SECURITY__ENCRYPTION__MASTER_KEY_FILE", &master_s),
            ("SVC__SECURITY__ENCRYPTION__DATA_KEYS__K1_FILE", &key_s),
            ("SVC__SECURITY__ENCRYPTION__ACTIVE_KEY", "k1"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let enc = &l.config.keel.security.encryption;
    assert_eq!(enc.data_keys.get("k1").map(String::as_str), Some(wrapped.as_str()));
    assert!(!enc.data_keys.contains_key("k1_file"), "{:?}", enc.data_keys);
    let ring = keel::security::crypto::Keyring::from_config(enc).unwrap();
    assert_eq!(ring.decrypt_str(&ring.encrypt_str("bob@example.com").unwrap()).unwrap(), "bob@example.com");

    // A file that is not there names the setting.
    let e = load(
        Profile::Development,
        &[
            ("SVC__SECURITY__ENCRYPTION__MASTER_KEY_FILE", &master_s),
            ("SVC__SECURITY__ENCRYPTION__DATA_KEYS__K1_FILE", "/nonexistent/k1"),
        ],
    )
    .unwrap_err();
    assert!(e.to_string().contains("data_keys.k1"), "{e}");
}

#[test]
fn tls_settings_are_validated_together() {
    let paths = |env: &[(&str, &str)]| {
        let e = load(Profile::Development, env).unwrap_err().to_string();
        ["cert_file", "key_file", "client_ca_file", "client_auth", "handshake_timeout"]
            .into_iter()
            .filter(|k| e.contains(&format!("http.tls.{k}")))
            .collect::<Vec<_>>()
    };
    assert_eq!(paths(&[("SVC__HTTP__TLS__CERT_FILE", "/tls.crt")]), ["key_file"]);
    assert_eq!(
        paths(&[
            ("SVC__HTTP__TLS__CERT_FILE", "/tls.crt"),
            ("SVC__HTTP__TLS__KEY_FILE", "/tls.key"),
            ("SVC__HTTP__TLS__CLIENT_AUTH", "required")
        ]),
        ["client_ca_file"]
    );
    assert_eq!(paths(&[("SVC__HTTP__TLS__CLIENT_CA_FILE", "/ca.crt")]), ["client_auth"]);
    assert_eq!(paths(&[("SVC__HTTP__TLS__HANDSHAKE_TIMEOUT", "0s")]), ["handshake_timeout"]);
    assert!(load(Profile::Development, &[("SVC__HTTP__TLS__CLIENT_AUTH", "sometimes")]).is_err());
    assert!(load(Profile::Development, &[]).is_ok());
}

async fn audit_chain(url: &str) {
    sqlx::any::install_default_drivers();
    let backend = keel::data::Backend::from_url(url).unwrap();
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(8).connect(url).await.unwrap();
    let log = AuditLog::new(pool.clone(), backend);
    assert_eq!(log.verify().await.unwrap().rows, 0);

    // Concurrent writers still build one chain.
    let writers: Vec<_> = (0..24)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move {
                log.record(
                    &format!("user:{i}"),
                    "password.change",
                    &format!("user:{i}"),
                    Outcome::Success,
                    json!({"ip": "10.0.0.1", "password": "hunter2-new", "note": "via Bearer abc.def.ghi"}),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut ids = Vec::new();
    for w in writers {
        ids.push(w.await.unwrap().id);
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=24).collect::<Vec<i64>>());
    let v = log.verify().await.unwrap();
    assert_eq!((v.rows, v.broken), (24, None));

    // Sensitive details never reach the table.
    let details: Vec<String> = sqlx::query_scalar("SELECT details FROM audit_log").fetch_all(&pool).await.unwrap();
    assert!(details.iter().all(|d| !d.contains("hunter2") && !d.contains("abc.def") && d.contains("***")));

    // Recorded once per key, however often and concurrently asked; another action or key is new.
    let once: Vec<_> = (0..6)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move {
                log.record_once(
                    "msg-0195f3a2-1",
                    "user:9",
                    "event.cancel",
                    "event:1",
                    Outcome::Success,
                    json!({"reason": "spam"}),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut once_ids = Vec::new();
    for w in once {
        once_ids.push(w.await.unwrap().id);
    }
    assert!(once_ids.iter().all(|id| *id == 25), "{once_ids:?}");
    let other = log.record_once("msg-0195f3a2-1", "user:9", "event.ban", "event:1", Outcome::Success, json!({})).await;
    assert_eq!(other.unwrap().id, 26, "another action with the same key");
    let next =
        log.record_once("msg-0195f3a2-2", "user:9", "event.cancel", "event:1", Outcome::Success, json!({})).await;
    assert_eq!(next.unwrap().id, 27);
    for bad in ["", "has space", "50%", "a_b", "MSG-1", &"k".repeat(129)] {
        assert!(log.record_once(bad, "a", "b", "c", Outcome::Success, json!({})).await.is_err(), "{bad:?}");
    }
    let kept: String =
        sqlx::query_scalar("SELECT details FROM audit_log WHERE id = 25").fetch_one(&pool).await.unwrap();
    assert!(kept.contains("\"once\":\"msg-0195f3a2-1\"") && kept.contains("spam"), "{kept}");
    let v = log.verify().await.unwrap();
    assert_eq!((v.rows, v.broken), (27, None));

    // Tampering with one row is reported at that row.
    let tamper = backend.sql("UPDATE audit_log SET details = $1 WHERE id = $2");
    sqlx::query(sqlx::AssertSqlSafe(tamper.into_owned()))
        .bind("{\"ip\":\"1.2.3.4\"}")
        .bind(7_i64)
        .execute(&pool)
        .await
        .unwrap();
    let v = log.verify().await.unwrap();
    let broken = v.broken.unwrap();
    assert_eq!((broken.id, v.rows), (7, 6), "{}", broken.reason);
    // Deleting a row is reported where the gap is.
    sqlx::query("DELETE FROM audit_log WHERE id = 3").execute(&pool).await.unwrap();
    assert_eq!(log.verify().await.unwrap().broken.unwrap().id, 4);
    pool.close().await;
}

/// Chain keys `(id, base64 secret)`, the first one active.
fn audit_keys(keys: &[(&str, &str)]) -> AuditKeys {
    let mut cfg = AuditConfig::default();
    cfg.active_key = keys.first().map(|(id, _)| (*id).to_owned());
    for (id, secret) in keys {
        let mut k = AuditKeyConfig::default();
        k.secret = Some(Secret::new(*secret));
        cfg.keys.insert((*id).to_owned(), k);
    }
    AuditKeys::from_config(&cfg).unwrap()
}

const AUDIT_K1: &str = "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE=";
const AUDIT_K2: &str = "MjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjI=";

async fn append(log: &AuditLog, n: usize) {
    for i in 0..n {
        log.record(&format!("user:{i}"), "login", "app", Outcome::Success, json!({"n": i})).await.unwrap();
    }
}

/// Keys: rows written before a key stay verifiable, keys rotate, a row recomputed without the
/// key is refused. Checkpoints: truncation and a consistent rewrite are reported.
async fn audit_keys_and_checkpoints(url: &str) {
    sqlx::any::install_default_drivers();
    let backend = keel::data::Backend::from_url(url).unwrap();
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(4).connect(url).await.unwrap();
    let exec = |sql: &str| sqlx::query(sqlx::AssertSqlSafe(backend.sql(sql).into_owned()));

    // A table from before keys existed (no key_id column) gains the column.
    sqlx::raw_sql(
        "CREATE TABLE audit_log (id BIGINT PRIMARY KEY, at VARCHAR(40) NOT NULL, actor TEXT NOT NULL, \
         action TEXT NOT NULL, target TEXT NOT NULL, outcome VARCHAR(16) NOT NULL, details TEXT NOT NULL, \
         prev_hash VARCHAR(64) NOT NULL, hash VARCHAR(64) NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let unkeyed = AuditLog::new(pool.clone(), backend);
    append(&unkeyed, 2).await;
    let k1 = AuditLog::new(pool.clone(), backend).with_keys(audit_keys(&[("k1", AUDIT_K1)]));
    append(&k1, 3).await;
    // Rotation: k2 signs new rows; verifying needs both keys listed.
    let rotated = AuditLog::new(pool.clone(), backend).with_keys(audit_keys(&[("k2", AUDIT_K2), ("k1", AUDIT_K1)]));
    append(&rotated, 2).await;
    let v = rotated.verify().await.unwrap();
    assert_eq!((v.rows, v.unkeyed, v.broken.clone()), (7, 2, None));
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT key_id FROM audit_log ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(ids, ["", "", "k1", "k1", "k1", "k2", "k2"]);
    let only_k2 = AuditLog::new(pool.clone(), backend).with_keys(audit_keys(&[("k2", AUDIT_K2)]));
    let broken = only_k2.verify().await.unwrap().broken.unwrap();
    assert_eq!(broken.id, 3, "{}", broken.reason);
    assert!(broken.reason.contains("key `k1`"), "{}", broken.reason);

    let head = v.head.clone();
    assert_eq!(head.rows, 7);
    assert_eq!(head.to_string().parse::<Checkpoint>().unwrap(), head);
    let v = rotated.verify_against(Some(&head)).await.unwrap();
    assert_eq!(v.broken, None);

    // Someone without the key alters row 6 and recomputes the rest of the chain as SHA-256
    // rows (the old, unkeyed format): refused at row 6.
    let snapshot: Vec<(i64, String, String, String)> =
        sqlx::query_as("SELECT id, details, prev_hash, hash FROM audit_log ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut prev = snapshot[4].3.clone();
    for id in 6..=7_i64 {
        let row: (String, String, String, String, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT at, actor, action, target, outcome FROM audit_log WHERE id = {id}"
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        let details = "{\"n\":99}";
        let canonical = json!([id, row.0, row.1, row.2, row.3, row.4, details, prev]).to_string();
        let hash: String = sha2_hex(canonical.as_bytes());
        exec("UPDATE audit_log SET details = $1, prev_hash = $2, hash = $3, key_id = '' WHERE id = $4")
            .bind(details)
            .bind(&prev)
            .bind(&hash)
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        prev = hash;
    }
    let broken = rotated.verify().await.unwrap().broken.unwrap();
    assert_eq!(broken.id, 6, "{}", broken.reason);
    assert!(broken.reason.contains("unkeyed row after keyed"), "{}", broken.reason);
    for (id, details, prev_hash, hash) in &snapshot[5..] {
        exec("UPDATE audit_log SET details = $1, prev_hash = $2, hash = $3, key_id = 'k2' WHERE id = $4")
            .bind(details)
            .bind(prev_hash)
            .bind(hash)
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    }
    assert_eq!(rotated.verify().await.unwrap().broken, None);

    // Deleting the newest rows leaves a chain that verifies on its own; the checkpoint does not.
    rotated.checkpoint().await.unwrap();
    exec("DELETE FROM audit_log WHERE id > $1").bind(5_i64).execute(&pool).await.unwrap();
    assert_eq!(rotated.verify().await.unwrap().broken, None);
    let broken = rotated.verify_against(Some(&head)).await.unwrap().broken.unwrap();
    assert_eq!(broken.id, 6, "{}", broken.reason);
    assert!(broken.reason.contains("truncated"), "{}", broken.reason);
    // The live checkpoint sees it too, and keeps reporting it.
    let metrics = keel::telemetry::Metrics::new();
    let watched = rotated.clone().with_metrics(&metrics).unwrap();
    // (`rotated` checkpointed 7 rows; its clones share what it saw.)
    assert_eq!(watched.checkpoint().await.unwrap().rows, 5);
    assert!(metrics.render().contains("audit_log_tamper_detected_total 1"), "{}", metrics.render());
    watched.checkpoint().await.unwrap();
    assert!(metrics.render().contains("audit_log_tamper_detected_total 2"));
    assert!(metrics.render().contains("audit_log_rows 5"), "{}", metrics.render());

    // Someone holding the key rewrites the chain from row 4 consistently: it verifies alone,
    // but row 5 no longer matches a checkpoint taken before.
    let at5 = Checkpoint {
        rows: 5,
        hash: sqlx::query_scalar("SELECT hash FROM audit_log WHERE id = 5").fetch_one(&pool).await.unwrap(),
    };
    exec("DELETE FROM audit_log WHERE id >= $1").bind(4_i64).execute(&pool).await.unwrap();
    let k1_again = AuditLog::new(pool.clone(), backend).with_keys(audit_keys(&[("k1", AUDIT_K1)]));
    k1_again.record("user:x", "forged", "app", Outcome::Success, json!({})).await.unwrap();
    append(&k1_again, 1).await;
    assert_eq!(k1_again.verify().await.unwrap().broken, None);
    let broken = k1_again.verify_against(Some(&at5)).await.unwrap().broken.unwrap();
    assert_eq!(broken.id, 5, "{}", broken.reason);
    assert!(broken.reason.contains("checkpoint"), "{}", broken.reason);
    pool.close().await;
}

fn sha2_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_keys_and_checkpoints_on_postgres() {
    if !require("PostgreSQL", &postgres_url()) {
        return;
    }
    let db = TestDatabase::postgres(&postgres_url()).await.unwrap();
    audit_keys_and_checkpoints(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_keys_and_checkpoints_on_mariadb() {
    if !require("MariaDB", &mysql_url()) {
        return;
    }
    let db = TestDatabase::mysql(&mysql_url()).await.unwrap();
    audit_keys_and_checkpoints(db.url()).await;
}

#[tokio::test]
async fn audit_keys_and_checkpoints_on_sqlite() {
    let db = TestDatabase::sqlite().unwrap();
    audit_keys_and_checkpoints(db.url()).await;
}

/// The log lists by actor, action (or a prefix), target and time, newest first, a page at a time.
async fn audit_listing(url: &str) {
    sqlx::any::install_default_drivers();
    let backend = keel::data::Backend::from_url(url).unwrap();
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(2).connect(url).await.unwrap();
    let log = AuditLog::new(pool.clone(), backend);
    let rows = [
        ("user:1", "auth.login", "user:1"),
        ("user:2", "moderation.account_ban", "user:3"),
        ("user:2", "moderation.report.resolve", "event:9"),
        ("user:1", "auth.password_change", "user:1"),
        ("system", "auth.lockout", "user:1"),
        ("user:2", "moderationx.other", "user:1"),
    ];
    let mut at = Vec::new();
    for (actor, action, target) in rows {
        at.push(log.record(actor, action, target, Outcome::Success, json!({"ip": "10.0.0.1"})).await.unwrap().at);
    }
    let ids = |f: AuditFilter| {
        let log = log.clone();
        async move { log.list(&f).await.unwrap().iter().map(|r| r.id).collect::<Vec<i64>>() }
    };
    assert_eq!(ids(AuditFilter::default()).await, vec![6, 5, 4, 3, 2, 1], "newest first");
    assert_eq!(ids(AuditFilter { actor: Some("user:1".into()), ..Default::default() }).await, vec![4, 1]);
    assert_eq!(ids(AuditFilter { target: Some("user:1".into()), ..Default::default() }).await, vec![6, 5, 4, 1]);
    assert_eq!(ids(AuditFilter { action: Some("auth.login".into()), ..Default::default() }).await, vec![1]);
    // A prefix: `moderation.` is not `moderationx.`.
    assert_eq!(ids(AuditFilter { action: Some("moderation.".into()), ..Default::default() }).await, vec![3, 2]);
    assert_eq!(ids(AuditFilter { action: Some("auth.*".into()), ..Default::default() }).await, vec![5, 4, 1]);
    let both = AuditFilter { actor: Some("user:2".into()), target: Some("user:1".into()), ..Default::default() };
    assert_eq!(ids(both).await, vec![6]);
    // Keyset pages: two at a time.
    let page = |before| AuditFilter { before, limit: 2, ..Default::default() };
    assert_eq!(ids(page(None)).await, vec![6, 5]);
    assert_eq!(ids(page(Some(5))).await, vec![4, 3]);
    assert_eq!(ids(page(Some(1))).await, Vec::<i64>::new());
    // Time: since is inclusive, until exclusive; a date is its midnight.
    let since = AuditFilter { since: Some(at[3].clone()), ..Default::default() };
    assert_eq!(ids(since).await, vec![6, 5, 4]);
    let until = AuditFilter { until: Some(at[1].clone()), ..Default::default() };
    assert_eq!(ids(until).await, vec![1]);
    assert_eq!(ids(AuditFilter { since: Some("2000-01-01".into()), ..Default::default() }).await.len(), 6);
    assert!(ids(AuditFilter { until: Some("2000-01-01".into()), ..Default::default() }).await.is_empty());
    let bad = log.list(&AuditFilter { since: Some("yesterday".into()), ..Default::default() }).await;
    assert!(matches!(bad, Err(keel::security::audit::AuditError::Filter(_))), "{bad:?}");
    // A row reads back whole.
    let row = &log.list(&AuditFilter { before: Some(2), ..Default::default() }).await.unwrap()[0];
    assert_eq!((row.actor.as_str(), row.action.as_str(), row.outcome.as_str()), ("user:1", "auth.login", "success"));
    assert_eq!(row.details, json!({"ip": "10.0.0.1"}));
    assert_eq!(row.hash.len(), 64);

    // Criteria compare bytes, whatever the columns' collation: case counts, and a prefix ending
    // in `z` (whose range ends at `{`, which linguistic collations sort before letters) works.
    log.record("USER:1", "auth.zap", "user:1", Outcome::Success, json!({})).await.unwrap();
    log.record("user:1", "Auth.zip", "user:1", Outcome::Success, json!({})).await.unwrap();
    assert_eq!(ids(AuditFilter { actor: Some("USER:1".into()), ..Default::default() }).await, vec![7]);
    assert_eq!(ids(AuditFilter { actor: Some("user:1".into()), ..Default::default() }).await, vec![8, 4, 1]);
    assert_eq!(ids(AuditFilter { action: Some("auth.z*".into()), ..Default::default() }).await, vec![7]);
    assert_eq!(ids(AuditFilter { action: Some("auth.zap".into()), ..Default::default() }).await, vec![7]);
    assert_eq!(ids(AuditFilter { action: Some("AUTH.ZAP".into()), ..Default::default() }).await, Vec::<i64>::new());
    pool.close().await;
}

#[tokio::test]
async fn audit_listing_on_sqlite() {
    let db = TestDatabase::sqlite().unwrap();
    audit_listing(db.url()).await;
}

#[tokio::test]
async fn audit_listing_on_postgres() {
    if !require("PostgreSQL", &postgres_url()) {
        return;
    }
    let db = TestDatabase::postgres(&postgres_url()).await.unwrap();
    audit_listing(db.url()).await;
}

#[tokio::test]
async fn audit_listing_on_mariadb() {
    if !require("MariaDB", &mysql_url()) {
        return;
    }
    let db = TestDatabase::mysql(&mysql_url()).await.unwrap();
    audit_listing(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_log_on_postgres() {
    if !require("PostgreSQL", &postgres_url()) {
        return;
    }
    let db = TestDatabase::postgres(&postgres_url()).await.unwrap();
    audit_chain(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_log_on_mariadb() {
    if !require("MariaDB", &mysql_url()) {
        return;
    }
    let db = TestDatabase::mysql(&mysql_url()).await.unwrap();
    audit_chain(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_log_on_sqlite() {
    let db = TestDatabase::sqlite().unwrap();
    audit_chain(db.url()).await;
}

/// The audit log's table comes from Keel's own migration set: a database it was created in on
/// first use keeps its rows, and once migrated a user without DDL rights can write the log.
async fn audit_table_from_migrations(url: &str) {
    sqlx::any::install_default_drivers();
    let backend = keel::data::Backend::from_url(url).unwrap();
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(2).connect(url).await.unwrap();
    let log = AuditLog::new(pool.clone(), backend);
    log.record("user:1", "password.change", "user:1", Outcome::Success, json!({})).await.unwrap();

    let m = keel::security::audit::migrations();
    assert_eq!(m.run(&pool, backend).await.unwrap(), 2, "creating the table is idempotent; then its indexes");
    assert!(m.pending(&pool, backend).await.unwrap().is_empty());
    let recorded: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, description FROM _keel_audit_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(recorded, [(1, "audit log".to_owned()), (2, "audit log filters".to_owned())]);
    let fresh = AuditLog::new(pool.clone(), backend);
    fresh.record("user:2", "password.change", "user:2", Outcome::Success, json!({})).await.unwrap();
    let v = fresh.verify().await.unwrap();
    assert_eq!((v.rows, v.broken), (2, None));
    pool.close().await;
}

#[tokio::test]
async fn audit_table_from_migrations_on_postgres() {
    if !require("PostgreSQL", &postgres_url()) {
        return;
    }
    let db = TestDatabase::postgres(&postgres_url()).await.unwrap();
    audit_table_from_migrations(db.url()).await;

    // A role that may only read and append the log (no CREATE on the schema) can write it.
    let admin = sqlx::AnyPool::connect(db.url()).await.unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let role = format!("keel_audit_{}_{nanos}", std::process::id());
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}"),
        format!("GRANT SELECT, INSERT ON audit_log TO {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await.unwrap();
    }
    let as_role = db.url().replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let pool = sqlx::AnyPool::connect(&as_role).await.unwrap();
    let log = AuditLog::new(pool.clone(), keel::data::Backend::Postgres);
    log.record("user:3", "password.change", "user:3", Outcome::Success, json!({})).await.unwrap();
    assert_eq!(log.verify().await.unwrap().rows, 3);
    pool.close().await;
    for sql in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await.unwrap();
    }
}

#[tokio::test]
async fn audit_table_from_migrations_on_mariadb() {
    if !require("MariaDB", &mysql_url()) {
        return;
    }
    let db = TestDatabase::mysql(&mysql_url()).await.unwrap();
    audit_table_from_migrations(db.url()).await;

    // A user that may only read and append the log can write it (`FOR UPDATE` included).
    let admin = sqlx::AnyPool::connect(db.url()).await.unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let user = format!("keel_audit_{}_{nanos}", std::process::id() % 1000);
    let name = db.url().rsplit('/').next().unwrap().split('?').next().unwrap().to_owned();
    for sql in
        [format!("CREATE USER '{user}'@'%'"), format!("GRANT SELECT, INSERT ON {name}.audit_log TO '{user}'@'%'")]
    {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await.unwrap();
    }
    let as_user = db.url().replacen("mysql://root@", &format!("mysql://{user}@"), 1);
    let pool = sqlx::AnyPool::connect(&as_user).await.unwrap();
    let log = AuditLog::new(pool.clone(), keel::data::Backend::MySql);
    log.record("user:3", "password.change", "user:3", Outcome::Success, json!({})).await.unwrap();
    assert_eq!(log.verify().await.unwrap().rows, 3);
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP USER '{user}'@'%'"))).execute(&admin).await.unwrap();
}

#[tokio::test]
async fn audit_table_from_migrations_on_sqlite() {
    let db = TestDatabase::sqlite().unwrap();
    audit_table_from_migrations(db.url()).await;
}

// ---- Data keys that rotate themselves ----

use keel::security::EncryptionConfig;
use keel::security::keys::{DataKeys, EncryptedColumn, KeyError, KeySource, KeyState, Policy};

fn encryption_config(refresh: Duration) -> EncryptionConfig {
    use keel::security::crypto::{MasterKey, generate_key};
    let master_key = generate_key();
    let master = MasterKey::from_secret(&Secret::new(master_key.clone())).unwrap();
    let mut cfg = EncryptionConfig::default();
    cfg.data_keys.insert("k1".into(), master.new_data_key("k1").unwrap());
    cfg.master_key = Some(Secret::new(master_key));
    cfg.active_key = Some("k1".into());
    cfg.refresh_interval = refresh;
    cfg
}

fn secret_of(id: &str) -> String {
    format!("secret of {id}")
}

/// The replicas' refresh interval: a new key is active three of them after it is made, which
/// must cover a refresh delayed by the load below on a busy two-core machine.
const REFRESH_MS: u64 = 200;

/// Replicas `a` and `b` rotate twice while writers insert and overwrite values and readers
/// decrypt them: no read fails, every value ends on the newest key with its own plaintext, and
/// the first rotated key is retired once nothing uses it; the configuration's key stays.
async fn data_keys_rotate_under_load(url: &str) {
    sqlx::any::install_default_drivers();
    let backend = keel::data::Backend::from_url(url).unwrap();
    // SQLite as Keel opens it: in its default rollback journal a reader waits for every writer,
    // and a replica whose refresh waits past the activation delay would miss a key.
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(10)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if backend == keel::data::Backend::Sqlite {
                    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .unwrap();
    keel::security::keys::migrations().run(&pool, backend).await.unwrap();
    sqlx::raw_sql("CREATE TABLE secrets (id VARCHAR(36) PRIMARY KEY, value TEXT NULL)").execute(&pool).await.unwrap();
    let cfg = encryption_config(Duration::from_millis(REFRESH_MS));
    let column = || [EncryptedColumn::new("secrets", "id", "value").unwrap()];
    let a = DataKeys::with_pool(pool.clone(), backend, &cfg, column()).unwrap();
    let b = DataKeys::with_pool(pool.clone(), backend, &cfg, column()).unwrap();
    a.refresh().await.unwrap();
    b.refresh().await.unwrap();
    assert_eq!(a.keyring().active(), "k1", "the configuration's key until the first rotation");

    let insert = backend.sql("INSERT INTO secrets (id, value) VALUES ($1, $2)").into_owned();
    for i in 0..400 {
        let id = format!("row-{i:05}");
        let value = a.keyring().encrypt_str(&secret_of(&id)).unwrap();
        sqlx::query(sqlx::AssertSqlSafe(insert.clone())).bind(&id).bind(value).execute(&pool).await.unwrap();
    }
    // A row without a value is not a value; a value that is no ciphertext is counted and left.
    sqlx::query(backend.statement("INSERT INTO secrets (id, value) VALUES ($1, NULL), ($2, $3)"))
        .bind("row-null")
        .bind("zz-plain")
        .bind("plain text")
        .execute(&pool)
        .await
        .unwrap();

    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = Vec::new();
    // Each replica rereads its keys every interval.
    for keys in [a.clone(), b.clone()] {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                // A failed read keeps the keys; the activation delay covers a missed one.
                let _ = keys.refresh().await;
                tokio::time::sleep(Duration::from_millis(REFRESH_MS)).await;
            }
            0u64
        }));
    }
    // Writers overwrite values and add rows through either replica.
    for (w, keys) in [a.clone(), b.clone()].into_iter().enumerate() {
        let (stop, pool, insert) = (stop.clone(), pool.clone(), insert.clone());
        load.push(tokio::spawn(async move {
            let update = backend.sql("UPDATE secrets SET value = $1 WHERE id = $2").into_owned();
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let id = format!("row-{:05}", (n * 7 + w as u64 * 13) % 400);
                let value = keys.keyring().encrypt_str(&secret_of(&id)).unwrap();
                sqlx::query(sqlx::AssertSqlSafe(update.clone())).bind(value).bind(&id).execute(&pool).await.unwrap();
                let id = format!("new-{w}-{n:05}");
                let value = keys.keyring().encrypt_str(&secret_of(&id)).unwrap();
                sqlx::query(sqlx::AssertSqlSafe(insert.clone())).bind(&id).bind(value).execute(&pool).await.unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        }));
    }
    // Readers decrypt what they find through either replica; every read must succeed.
    for keys in [a.clone(), b.clone()] {
        let (stop, pool) = (stop.clone(), pool.clone());
        load.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.is_cancelled() {
                let rows: Vec<(String, String)> =
                    sqlx::query_as("SELECT id, value FROM secrets WHERE value IS NOT NULL AND id <> 'zz-plain'")
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                for (id, value) in rows {
                    let plain = keys
                        .keyring()
                        .decrypt_str(&value)
                        .unwrap_or_else(|e| panic!("{id}: {e}; ring {:?}; {:?}", keys.keyring(), keys.status(None)));
                    assert_eq!(plain, secret_of(&id));
                    reads += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            reads
        }));
    }

    let policy = Policy { rotate_every: None, batch: 50, retire_after: Duration::from_millis(500) };
    let settle = |want: &'static str| {
        let (a, b, policy) = (a.clone(), b.clone(), policy.clone());
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                // Both replicas run the worker, as every instance does.
                let (x, y) = tokio::join!(a.maintain(&policy), b.maintain(&policy));
                x.unwrap();
                y.unwrap();
                let s = a.status(None);
                if s.active == want && s.pending_values == Some(0) && b.keyring().active() == want {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "not settled on {want}: {s:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // The first rotation: made by `a`, pending until every replica knows it.
    assert_eq!(a.rotate().await.unwrap(), "rot-1");
    assert_eq!(a.keyring().active(), "k1", "a new key is not active at once");
    assert!(a.keyring().key_ids().contains(&"rot-1".to_owned()), "but it decrypts already");
    settle("rot-1").await;
    // The second, made by `b`; `a` racing for the same generation loses cleanly.
    let (x, y) = tokio::join!(b.rotate(), a.rotate());
    let made: Vec<String> = [x, y]
        .into_iter()
        .filter_map(|r| match r {
            Ok(kid) => Some(kid),
            Err(KeyError::Concurrent) => None,
            Err(e) => panic!("{e}"),
        })
        .collect();
    assert!(!made.is_empty() && made.iter().all(|k| k.starts_with("rot-")), "{made:?}");
    let newest = made.iter().max_by_key(|k| k[4..].parse::<u32>().unwrap()).unwrap().clone();
    let newest: &'static str = Box::leak(newest.into_boxed_str());
    settle(newest).await;

    // rot-1 is retired once nothing used it for `retire_after`.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (x, y) = tokio::join!(a.maintain(&policy), b.maintain(&policy));
        x.unwrap();
        y.unwrap();
        let s = a.status(None);
        if s.keys.iter().any(|k| k.kid == "rot-1" && k.state == KeyState::Retired) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rot-1 not retired: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let mut totals = Vec::new();
    for task in load {
        totals.push(task.await.unwrap());
    }
    assert!(totals[2] > 10 && totals[3] > 10, "the writers wrote: {totals:?}");
    assert!(totals[4] > 1000 && totals[5] > 1000, "the readers read: {totals:?}");

    // A fresh instance reads every value, all on the newest key.
    let c = DataKeys::with_pool(pool.clone(), backend, &cfg, column()).unwrap();
    c.refresh().await.unwrap();
    assert_eq!(c.keyring().active(), newest);
    assert!(!c.keyring().key_ids().contains(&"rot-1".to_owned()), "a retired key is gone from the ring");
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, value FROM secrets WHERE value IS NOT NULL AND id <> 'zz-plain'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(rows.len() > 420, "{}", rows.len());
    let plain: String =
        sqlx::query_scalar("SELECT value FROM secrets WHERE id = 'zz-plain'").fetch_one(&pool).await.unwrap();
    assert_eq!(plain, "plain text", "what no key decrypts is left as it is");
    assert_eq!(a.status(None).unreadable_values, 1);
    for (id, value) in &rows {
        assert!(value.starts_with(&format!("v1:{newest}:")), "{id} is still on an old key");
        assert_eq!(c.keyring().decrypt_str(value).unwrap(), secret_of(id));
    }
    let counts = c.count().await.unwrap();
    assert_eq!(counts.get(newest).copied(), Some(rows.len() as u64));
    assert_eq!(counts.get("").copied(), Some(1), "{counts:?}");
    let s = c.status(Some(Duration::from_secs(86_400)));
    let k1 = s.keys.iter().find(|k| k.kid == "k1").unwrap();
    assert_eq!((k1.source, k1.state, k1.values), (KeySource::Configuration, KeyState::Superseded, Some(0)));
    assert!(s.next_rotation_at.is_some());
    // The retired key's material is deleted; its row stays as history.
    let (wrapped, retired): (Option<String>, Option<i64>) =
        sqlx::query_as("SELECT wrapped, retired_at FROM keel_data_keys WHERE kid = 'rot-1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(wrapped.is_none() && retired.is_some());
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_keys_rotate_under_load_on_sqlite() {
    let db = TestDatabase::sqlite().unwrap();
    data_keys_rotate_under_load(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_keys_rotate_under_load_on_postgres() {
    if !require("PostgreSQL", &postgres_url()) {
        return;
    }
    let db = TestDatabase::postgres(&postgres_url()).await.unwrap();
    data_keys_rotate_under_load(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_keys_rotate_under_load_on_mariadb() {
    if !require("MariaDB", &mysql_url()) {
        return;
    }
    let db = TestDatabase::mysql(&mysql_url()).await.unwrap();
    data_keys_rotate_under_load(db.url()).await;
}

/// Scheduled rotation makes the first database key at once and the next only when due; a value
/// no key decrypts is counted and left as it is; a bad column name is refused.
#[tokio::test]
async fn data_keys_schedule_and_unreadable_values() {
    sqlx::any::install_default_drivers();
    let db = TestDatabase::sqlite().unwrap();
    let backend = keel::data::Backend::Sqlite;
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(4).connect(db.url()).await.unwrap();
    keel::security::keys::migrations().run(&pool, backend).await.unwrap();
    sqlx::raw_sql("CREATE TABLE secrets (id VARCHAR(36) PRIMARY KEY, value TEXT NULL)").execute(&pool).await.unwrap();
    let cfg = encryption_config(Duration::from_millis(10));
    let keys =
        DataKeys::with_pool(pool.clone(), backend, &cfg, [EncryptedColumn::new("secrets", "id", "value").unwrap()])
            .unwrap();
    // A value of a key this ring never had.
    let stranger = encryption_config(Duration::from_millis(10));
    let foreign = keel::security::crypto::Keyring::from_config(&stranger).unwrap().encrypt_str("x").unwrap();
    let foreign = foreign.replacen("v1:k1:", "v1:gone:", 1);
    sqlx::query("INSERT INTO secrets (id, value) VALUES ('a', ?), ('b', ?)")
        .bind(keys.keyring().encrypt_str(&secret_of("a")).unwrap())
        .bind(&foreign)
        .execute(&pool)
        .await
        .unwrap();

    let policy =
        Policy { rotate_every: Some(Duration::from_secs(3600)), batch: 10, retire_after: Duration::from_secs(3600) };
    let first = keys.maintain(&policy).await.unwrap();
    assert_eq!(first.rotated.as_deref(), Some("rot-1"), "no database key yet: one is made at once");
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut moved = 0;
    for _ in 0..5 {
        let run = keys.maintain(&policy).await.unwrap();
        assert_eq!(run.rotated, None, "the next rotation is an hour away");
        moved += run.moved;
    }
    assert_eq!(moved, 1);
    let s = keys.status(policy.rotate_every);
    assert_eq!(s.active, "rot-1");
    assert_eq!(s.unreadable_values, 1);
    let left: String = sqlx::query_scalar("SELECT value FROM secrets WHERE id = 'b'").fetch_one(&pool).await.unwrap();
    assert_eq!(left, foreign, "an unreadable value is left as it is");
    assert!(keys.maintain(&policy).await.unwrap().idle, "a settled store is idle");

    for bad in ["secrets; DROP TABLE x", "1abc", "", "a-b"] {
        assert!(EncryptedColumn::new(bad, "id", "value").is_err(), "{bad}");
    }
    pool.close().await;
}

#[test]
fn data_key_rotation_settings_are_validated() {
    let master = keel::security::crypto::generate_key();
    let wrapped = keel::security::crypto::MasterKey::from_secret(&Secret::new(master.clone()))
        .unwrap()
        .new_data_key("k1")
        .unwrap();
    let base = [
        ("SVC__SECURITY__ENCRYPTION__MASTER_KEY", master.as_str()),
        ("SVC__SECURITY__ENCRYPTION__DATA_KEYS__K1", wrapped.as_str()),
        ("SVC__SECURITY__ENCRYPTION__ACTIVE_KEY", "k1"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let env: Vec<(&str, &str)> = base.iter().copied().chain(extra.iter().copied()).collect();
        load(Profile::Development, &env)
    };
    assert!(with(&[("SVC__SECURITY__ENCRYPTION__ROTATE_EVERY", "30d")]).is_ok());
    for (extra, field) in [
        (("SVC__SECURITY__ENCRYPTION__ROTATE_EVERY", "10m"), "rotate_every"),
        (("SVC__SECURITY__ENCRYPTION__RETIRE_AFTER", "1m"), "retire_after"),
        (("SVC__SECURITY__ENCRYPTION__REFRESH_INTERVAL", "10m"), "refresh_interval"),
        (("SVC__SECURITY__ENCRYPTION__REENCRYPT_BATCH", "0"), "reencrypt_batch"),
        (("SVC__SECURITY__ENCRYPTION__DATA_KEYS__ROT-9", "x"), "rot-9"),
    ] {
        let e = with(&[extra]).unwrap_err().to_string();
        assert!(e.contains(field), "{extra:?}: {e}");
    }
}
