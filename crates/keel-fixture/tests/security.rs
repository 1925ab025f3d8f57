//! Security end to end: JWT auth on real routes (401 problem for malformed claims, 403 for a
//! missing role), masking in the process's real log output, and `audit verify` on a chain the
//! running service wrote.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Fixture, Proc, client, run_cli};
use keel::config::Secret;
use keel::security::jwt::{Jwt, JwtKey};
use serde_json::{Value, json};

const SECRET: &str = "fixture-hs256-secret-for-tests-0123456789";

fn auth_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("FIXTURE__APP__AUTH", "true"),
        ("FIXTURE__SECURITY__JWT__ISSUER", "https://auth.fixture"),
        ("FIXTURE__SECURITY__JWT__KEYS__K1__ALGORITHM", "HS256"),
        ("FIXTURE__SECURITY__JWT__KEYS__K1__SECRET", SECRET),
    ]
}

fn signer() -> Jwt {
    Jwt::builder()
        .issuer("https://auth.fixture")
        .key(JwtKey::hs256("k1", &Secret::new(SECRET)).unwrap())
        .sign_with("k1")
        .build()
        .unwrap()
}

fn token(claims: Value) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 300;
    let mut c = json!({"sub": "u1", "exp": exp, "iss": "https://auth.fixture", "role": "reader", "email": "u1@x.io"});
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    signer().issue(&c).unwrap()
}

#[tokio::test]
async fn jwt_routes_answer_401_problems_for_bad_claims_and_403_for_missing_roles() {
    let f = Fixture::start(&auth_env()).await;
    let http = client();
    let get = |path: &str, t: Option<String>| {
        let mut r = http.get(f.url(path));
        if let Some(t) = t {
            r = r.bearer_auth(t);
        }
        r.send()
    };

    let ok = get("/auth/me", Some(token(json!({})))).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap()["sub"], "u1");

    for bad in [json!({"sub": 123}), json!({"role": ["admin"]}), json!({"email": null}), json!({"iss": "https://evil"})]
    {
        let resp = get("/auth/me", Some(token(bad.clone()))).await.unwrap();
        assert_eq!(resp.status(), 401, "{bad}");
        assert!(resp.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let p: Value = resp.json().await.unwrap();
        assert_eq!(p["status"], 401);
        assert!(p["request_id"].is_string(), "{p}");
    }
    assert_eq!(get("/auth/me", None).await.unwrap().status(), 401);

    let forbidden = get("/auth/admin", Some(token(json!({})))).await.unwrap();
    assert_eq!(forbidden.status(), 403);
    assert_eq!(forbidden.json::<Value>().await.unwrap()["type"], "urn:keel:problem:forbidden");
    let admin = get("/auth/admin", Some(token(json!({"role": "admin"})))).await.unwrap();
    assert_eq!(admin.text().await.unwrap(), "hello admin u1");
    // The service is still healthy: nothing panicked.
    assert_eq!(http.get(f.url("/health/live")).send().await.unwrap().status(), 200);
    f.stop().await;
}

#[tokio::test]
async fn logs_never_show_the_password_or_the_bearer_token() {
    let mut env = auth_env();
    env.push(("FIXTURE__LOG__MASK_FIELDS", "national_id"));
    let mut p = Proc::spawn(&env);
    let password = "Sup3r-Secret-Passw0rd!";
    let bearer = token(json!({}));
    let resp = client()
        .post(p.url("/auth/login"))
        .bearer_auth(&bearer)
        .json(&json!({"email": "alice@example.com", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let line = p.wait_for("fixture-login");
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(10));
    let all = p.seen.join("\n");
    let signature = bearer.rsplit('.').next().unwrap();
    for secret in [password, bearer.as_str(), signature, "alice@example.com"] {
        assert!(!all.contains(secret), "{secret} leaked into the logs:\n{all}");
    }
    let v: Value = serde_json::from_str(&line).unwrap();
    let fields = &v["fields"];
    assert_eq!(fields["password"], "***", "{line}");
    assert_eq!(fields["authorization"], "***");
    assert_eq!(fields["email"], "***");
    assert_eq!(fields["note"], "client sent Bearer *** with 22", "{line}");
}

const AUDIT_KEY: &str = "YXVkaXQta2V5LWZvci10aGUtZml4dHVyZS10ZXN0cy0xMjM=";

#[tokio::test]
async fn the_audit_log_is_listed_filtered_and_exported_on_the_management_listener() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
    let env = [
        ("FIXTURE__APP__DATABASE", "true"),
        ("FIXTURE__DATABASE__URL", url.as_str()),
        ("FIXTURE__MANAGEMENT__ADMIN_TOKEN", TOKEN),
    ];
    let mut p = Proc::spawn(&env);
    let http = client();
    for (i, action) in ["login", "logout", "login", "password.change", "login"].iter().enumerate() {
        let body =
            json!({"actor": format!("user:{}", i % 2), "action": action, "details": {"n": i, "note": "a,\"b\""}});
        for _ in 0..100 {
            if http.post(p.url("/audit")).json(&body).send().await.unwrap().status() == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let get = |path: &str| http.get(p.management_url(path)).bearer_auth(TOKEN);
    assert_eq!(http.get(p.management_url("/admin/audit")).send().await.unwrap().status(), 401, "the token is needed");

    // JSON, newest first; filters; keyset pages with a link to the next.
    let all: Value = get("/admin/audit").send().await.unwrap().json().await.unwrap();
    let ids: Vec<i64> = all["items"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![5, 4, 3, 2, 1], "{all}");
    assert_eq!(all["items"][0]["details"], json!({"n": 4, "note": "a,\"b\""}));
    assert_eq!(all["next"], Value::Null);
    let user0: Value = get("/admin/audit?actor=user:0&action=login").send().await.unwrap().json().await.unwrap();
    let ids: Vec<i64> = user0["items"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![5, 3, 1], "{user0}");
    let prefix: Value = get("/admin/audit?action=password.").send().await.unwrap().json().await.unwrap();
    assert_eq!(prefix["items"].as_array().unwrap().len(), 1, "{prefix}");
    let page: Value = get("/admin/audit?limit=2").send().await.unwrap().json().await.unwrap();
    let next = page["next"].as_str().unwrap().to_owned();
    assert_eq!(next, "/admin/audit?before=4&limit=2&format=json");
    let page2: Value = get(&next).send().await.unwrap().json().await.unwrap();
    assert_eq!(page2["items"][0]["id"], 3, "{page2}");
    let future: Value = get("/admin/audit?since=2999-01-01").send().await.unwrap().json().await.unwrap();
    assert!(future["items"].as_array().unwrap().is_empty());

    // Bad input is a 400 naming the field.
    for bad in [
        "since=yesterday",
        "limit=0",
        "limit=5000",
        "format=xml",
        "before=-1",
        "format=csv&since=yesterday",
        "format=jsonl&until=2026-13-45",
    ] {
        let r = get(&format!("/admin/audit?{bad}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}: an export refuses a bad filter before it starts");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{bad}");
        let problem: Value = r.json().await.unwrap();
        let field = bad.rsplit('&').next().unwrap().split('=').next().unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }

    // Exports: every matching row, as a download.
    let csv = get("/admin/audit?format=csv").send().await.unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(csv.headers()["content-disposition"], "attachment; filename=\"fixture-audit.csv\"");
    let text = csv.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert_eq!(lines[0], "id,at,actor,action,target,outcome,details,key_id,hash");
    assert!(lines[1].starts_with("5,") && lines[1].contains("\"{\"\"n\"\":4,"), "{text}");
    let jsonl = get("/admin/audit?format=jsonl&actor=user:1").send().await.unwrap().text().await.unwrap();
    let rows: Vec<Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>(), vec![4, 2], "{jsonl}");

    // The page: the filter form, the rows, the exports; linked from the status page.
    let html = get("/admin/audit?actor=user:1").header("accept", "text/html").send().await.unwrap();
    assert_eq!(html.headers()["content-type"], "text/html; charset=utf-8");
    let html = html.text().await.unwrap();
    assert!(html.contains("<h2>2 rows</h2>") && html.contains("value=\"user:1\""), "{html}");
    assert!(html.contains("format=csv") && html.contains("password.change"), "{html}");
    let status = get("/admin/status").header("accept", "text/html").send().await.unwrap().text().await.unwrap();
    assert!(status.contains("href=\"/admin/audit\""), "{status}");
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(10));

    // A service that keeps no audit log says so.
    let mut p = Proc::spawn(&[("FIXTURE__MANAGEMENT__ADMIN_TOKEN", TOKEN)]);
    let r = http.get(p.management_url("/admin/audit")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 404);
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(10));
}

#[tokio::test]
async fn audit_verify_walks_the_chain_the_service_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
    let unkeyed = [("FIXTURE__APP__DATABASE", "true"), ("FIXTURE__DATABASE__URL", url.as_str())];
    let env = [
        unkeyed[0],
        unkeyed[1],
        ("FIXTURE__SECURITY__AUDIT__ACTIVE_KEY", "a1"),
        ("FIXTURE__SECURITY__AUDIT__KEYS__A1__SECRET", AUDIT_KEY),
        ("FIXTURE__SECURITY__AUDIT__CHECKPOINT_INTERVAL", "200ms"),
    ];
    let mut p = Proc::spawn(&env);
    let http = client();
    let mut last = Value::Null;
    for i in 0..5 {
        let body =
            json!({"actor": format!("user:{i}"), "action": "login", "details": {"password": "pw-123456789", "n": i}});
        // The database connects in the background: retry until the first append lands.
        for _ in 0..100 {
            let r = http.post(p.url("/audit")).json(&body).send().await.unwrap();
            if r.status() == 200 {
                last = r.json().await.unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(last["id"], 5, "{last}");
    let line = p.wait_for("\"message\":\"audit\"");
    assert!(
        line.contains("\"hash\":") && line.contains("\"key_id\":\"a1\"") && !line.contains("pw-123456789"),
        "{line}"
    );
    // The head is checkpointed outside the table: in a log line and a metric.
    let line = p.wait_for("\"checkpoint\":\"5:");
    let checkpoint = format!("5:{}", last["hash"].as_str().unwrap());
    assert!(line.contains(&checkpoint) && line.contains("audit checkpoint"), "{line}");
    let metrics = http.get(p.management_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("audit_log_rows 5"), "{metrics}");

    // Deleting the newest row: the running service reports it at its next checkpoint.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM audit_log WHERE id = 5").execute(&pool).await.unwrap();
    let line = p.wait_for("audit log tampered with");
    assert!(line.contains("truncated"), "{line}");
    let metrics = http.get(p.management_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("audit_log_tamper_detected_total 0"), "{metrics}");
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(10));

    // The chain alone still verifies; against the checkpoint it is truncated.
    let (code, stdout, stderr) = run_cli(&["audit", "verify"], &env);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("intact: 4 row(s)"), "{stdout}");
    let (code, stdout, _) = run_cli(&["audit", "verify", "--checkpoint", &checkpoint], &env);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("BROKEN at row 5") && stdout.contains("truncated"), "{stdout}");
    // Without the key the rows cannot be verified at all.
    let (code, stdout, _) = run_cli(&["audit", "verify"], &unkeyed);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("BROKEN at row 1") && stdout.contains("key `a1`"), "{stdout}");
    // A malformed checkpoint is a usage error.
    let (code, _, stderr) = run_cli(&["audit", "verify", "--checkpoint", "five"], &env);
    assert_eq!(code, 64, "{stderr}");

    sqlx::query("UPDATE audit_log SET actor = 'user:mallory' WHERE id = 3").execute(&pool).await.unwrap();
    pool.close().await;
    let (code, stdout, _) = run_cli(&["audit", "verify"], &env);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("BROKEN at row 3"), "{stdout}");
}

#[test]
fn keys_cli_generates_wraps_and_rewraps_data_keys() {
    let (code, master, _) = run_cli(&["keys", "generate"], &[]);
    assert_eq!(code, 0);
    let master = master.trim().to_owned();
    assert_eq!(master.len(), 44, "{master}");
    // No master key configured, or one that is not a key: the configuration's fault.
    for env in [&[][..], &[("FIXTURE__SECURITY__ENCRYPTION__MASTER_KEY", "not-base64!")][..]] {
        let (code, _, stderr) = run_cli(&["keys", "new", "k1"], env);
        assert_eq!(code, 78, "{env:?}: {stderr}");
        assert!(stderr.contains("security.encryption.master_key"), "{stderr}");
    }
    let (code, line, stderr) =
        run_cli(&["keys", "new", "k1"], &[("FIXTURE__SECURITY__ENCRYPTION__MASTER_KEY", &master)]);
    assert_eq!(code, 0, "{stderr}");
    let wrapped = line.trim().strip_prefix("k1: ").unwrap().to_owned();
    // The fixture keeps data keys in its database too: `rewrap` re-wraps those in place.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/keys.db?mode=rwc", dir.path().display());
    let env = [
        ("FIXTURE__SECURITY__ENCRYPTION__MASTER_KEY", master.as_str()),
        ("FIXTURE__SECURITY__ENCRYPTION__DATA_KEYS__K1", wrapped.as_str()),
        ("FIXTURE__SECURITY__ENCRYPTION__ACTIVE_KEY", "k1"),
        ("FIXTURE__DATABASE__URL", url.as_str()),
    ];
    assert_eq!(run_cli(&["migrate"], &env).0, 0);
    let old = keel::security::crypto::Keyring::new(
        &keel::security::crypto::MasterKey::from_secret(&Secret::new(master.clone())).unwrap(),
        [("k1", wrapped.as_str())],
        "k1",
    )
    .unwrap();
    let ct = old.encrypt_str("alice@example.com").unwrap();

    let new_master = keel::security::crypto::generate_key();
    let file = dir.path().join("new-master");
    std::fs::write(&file, format!("{new_master}\n")).unwrap();
    let (code, out, stderr) = run_cli(&["keys", "rewrap", "--new-master-key-file", file.to_str().unwrap()], &env);
    assert_eq!(code, 0, "{stderr}");
    let rewrapped = out.lines().find_map(|l| l.trim().strip_prefix("k1: ")).unwrap();
    let new = keel::security::crypto::Keyring::new(
        &keel::security::crypto::MasterKey::from_secret(&Secret::new(new_master)).unwrap(),
        [("k1", rewrapped)],
        "k1",
    )
    .unwrap();
    assert_eq!(new.decrypt_str(&ct).unwrap(), "alice@example.com", "same data key, new wrapping");
    // `config check` never shows the master key.
    let (code, yaml, _) = run_cli(&["config", "check"], &env);
    assert_eq!(code, 0);
    assert!(!yaml.contains(&master) && yaml.contains("master_key: '***'"), "{yaml}");
}

/// `keys status`, `keys rotate` and `keys rewrap` on the database's data keys: a rotated key is
/// listed as pending, and after a master-key change the database's keys unwrap only with the
/// new master key.
#[test]
fn keys_cli_rotates_lists_and_rewraps_database_keys() {
    use keel::security::crypto::{MasterKey, generate_key};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/keys.db?mode=rwc", dir.path().display());
    let master = generate_key();
    let wrapped = MasterKey::from_secret(&Secret::new(master.clone())).unwrap().new_data_key("k1").unwrap();
    let env = |master: &str, k1: &str| {
        [
            ("FIXTURE__DATABASE__URL", url.clone()),
            ("FIXTURE__SECURITY__ENCRYPTION__MASTER_KEY", master.to_owned()),
            ("FIXTURE__SECURITY__ENCRYPTION__DATA_KEYS__K1", k1.to_owned()),
            ("FIXTURE__SECURITY__ENCRYPTION__ACTIVE_KEY", "k1".to_owned()),
        ]
    };
    let old_env = env(&master, &wrapped);
    let old: Vec<(&str, &str)> = old_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, _, stderr) = run_cli(&["migrate"], &old);
    assert_eq!(code, 0, "{stderr}");

    let status = |env: &[(&str, &str)]| {
        let (code, out, stderr) = run_cli(&["keys", "status"], env);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let s = status(&old);
    assert_eq!(s["active"], "k1");
    assert_eq!(s["keys"][0]["source"], "configuration");
    assert_eq!((s["keys"][0]["values"].as_u64(), s["columns"][0].as_str()), (Some(0), Some("secrets.value")), "{s}");

    let (code, out, stderr) = run_cli(&["keys", "rotate"], &old);
    assert_eq!((code, out.trim()), (0, "rot-1"), "{stderr}");
    let s = status(&old);
    let rot = s["keys"].as_array().unwrap().iter().find(|k| k["kid"] == "rot-1").unwrap().clone();
    assert_eq!((rot["source"].as_str(), rot["state"].as_str()), (Some("database"), Some("pending")), "{s}");

    // A new master key: the configuration's keys are printed, the database's re-wrapped in place.
    let new_master = generate_key();
    let file = dir.path().join("new-master");
    std::fs::write(&file, format!("{new_master}\n")).unwrap();
    let (code, out, stderr) = run_cli(&["keys", "rewrap", "--new-master-key-file", file.to_str().unwrap()], &old);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains("1 data key(s) of the database re-wrapped in place"), "{out}");
    let k1 = out.lines().find_map(|l| l.trim().strip_prefix("k1: ")).unwrap().to_owned();
    let new_env = env(&new_master, &k1);
    let new: Vec<(&str, &str)> = new_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert!(status(&new)["keys"].as_array().unwrap().iter().any(|k| k["kid"] == "rot-1"));
    let wrapped_now = tokio::runtime::Runtime::new().unwrap().block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let w: String = sqlx::query_scalar("SELECT wrapped FROM keel_data_keys WHERE kid = 'rot-1'")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        w
    });
    let ring = |m: &str| {
        keel::security::crypto::Keyring::new(
            &MasterKey::from_secret(&Secret::new(m.to_owned())).unwrap(),
            [("rot-1", wrapped_now.as_str())],
            "rot-1",
        )
    };
    assert!(ring(&new_master).is_ok() && ring(&master).is_err(), "rot-1 is re-wrapped in place");
    // A second run finishes what a first began: nothing left to re-wrap in the database.
    let (code, out, stderr) = run_cli(&["keys", "rewrap", "--new-master-key-file", file.to_str().unwrap()], &old);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains("0 data key(s) of the database re-wrapped in place"), "{out}");
    // An instance still on the old master key leaves the key it cannot unwrap out.
    assert_eq!(status(&old)["active"], "k1");
}
