//! Cover pictures: only the organizer uploads, only pictures are taken (judged by content,
//! bounded in bytes and pixels), what is stored is a clean JPEG per size served for good, and
//! what no event shows any more is swept from the store: in memory on every backend, in a
//! directory, and in an S3 bucket (a real S3-protocol server, `.ci/setup.sh` starts one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use cityevents_common::testing::eventually;
use common::{Svc, assert_conflict, id};
use keel::data::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

cityevents_common::on_every_backend!(covers_are_checked_stored_served_and_swept);

/// A JPEG of `w`×`h` with a gradient, and `marker` in a comment segment (COM), which a
/// re-encoded picture must not carry.
fn jpeg(w: u32, h: u32, marker: &str) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 120]));
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90).encode_image(&img).unwrap();
    let mut com = vec![0xFF, 0xFE];
    com.extend_from_slice(&((marker.len() + 2) as u16).to_be_bytes());
    com.extend_from_slice(marker.as_bytes());
    buf.splice(2..2, com);
    buf
}

/// A multipart form with one file field `name`.
fn form(name: &str, filename: &str, content_type: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = format!("keel{}", Uuid::now_v7().simple());
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
         Content-Type: {content_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn upload(s: &Svc, event: &str, token: Option<&str>, bytes: &[u8]) -> (StatusCode, Value) {
    let (ct, body) = form("file", "cover.jpg", "image/jpeg", bytes);
    send_form(s, event, token, &ct, body).await
}

async fn send_form(s: &Svc, event: &str, token: Option<&str>, ct: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let mut r = s.http.put(s.url(&format!("/api/v1/events/{event}/cover"))).header("content-type", ct).body(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Status, headers and bytes of a GET.
async fn fetch(s: &Svc, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = s.http.get(s.url(path)).send().await.unwrap();
    (resp.status(), resp.headers().clone(), resp.bytes().await.unwrap().to_vec())
}

fn size(jpeg: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg).unwrap();
    (img.width(), img.height())
}

/// Waits (20 s at most) until `path` answers `want`.
async fn until_status(s: &Svc, path: &str, want: StatusCode) {
    cityevents_common::testing::eventually(&format!("{path} answers {want}"), Duration::from_secs(20), || async {
        (fetch(s, path).await.0 == want).then_some(())
    })
    .await;
}

/// The settings that make the sweep quick: every 200 ms, files older than 1 s.
const QUICK_SWEEP: [(&str, &str); 2] = [("APP__PICTURES__SWEEP_EVERY", "200ms"), ("APP__PICTURES__SWEEP_GRACE", "1s")];

async fn covers_are_checked_stored_served_and_swept(backend: Backend) {
    let Some(s) = Svc::start_on(backend, &QUICK_SWEEP).await else { return };
    let card = exercise(&s).await;
    // An event gone from the database (the platform deletes none; an operator's erasure would)
    // takes its files with it at the next sweep.
    assert_eq!(fetch(&s, &card).await.0, StatusCode::OK);
    let event = card.split('/').nth(4).unwrap().to_owned();
    sqlx::any::install_default_drivers();
    let backend = Backend::from_url(s.database_url()).unwrap();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(s.database_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(backend.sql("DELETE FROM events WHERE id = $1").into_owned()))
        .bind(event)
        .execute(&mut conn)
        .await
        .unwrap();
    until_status(&s, &card, StatusCode::NOT_FOUND).await;
    s.stop().await;
}

/// Everything a cover goes through, against whichever store `s` was started with; returns the
/// last cover's `card` URL.
async fn exercise(s: &Svc) -> String {
    let (org, other, moderator) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (to, tx, tm) = (s.token(org, "user"), s.token(other, "user"), s.token(moderator, "moderator"));
    let event = s.create_published(&to, json!({})).await;
    let e = id(&event);
    assert!(event.get("cover").is_none(), "no cover yet: {event}");
    let picture = jpeg(1600, 1000, "SECRET-COMMENT");

    // Only the organizer: a stranger 403, a moderator 403, nobody 401; a draft of someone
    // else's 404.
    assert_eq!(upload(s, &e, Some(&tx), &picture).await.0, StatusCode::FORBIDDEN);
    assert_eq!(upload(s, &e, Some(&tm), &picture).await.0, StatusCode::FORBIDDEN);
    assert_eq!(upload(s, &e, None, &picture).await.0, StatusCode::UNAUTHORIZED);
    let draft = s.create(&to, json!({})).await;
    assert_eq!(upload(s, &id(&draft), Some(&tx), &picture).await.0, StatusCode::NOT_FOUND);
    assert_eq!(upload(s, &Uuid::now_v7().to_string(), Some(&to), &picture).await.0, StatusCode::NOT_FOUND);

    // Only pictures, whatever the name and type say; bounded in bytes and pixels.
    let (status, p) = upload(s, &e, Some(&to), b"<svg onload=alert(1)></svg>").await;
    assert_eq!((status, p["code"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_IMAGE")), "{p}");
    let (status, p) = upload(s, &e, Some(&to), b"").await;
    assert_eq!((status, p["code"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_IMAGE")), "{p}");
    let (ct, body) = form("picture", "cover.jpg", "image/jpeg", &picture);
    let (status, p) = send_form(s, &e, Some(&to), &ct, body).await;
    assert_eq!((status, p["code"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_UPLOAD")), "{p}");
    let (status, p) = send_form(s, &e, Some(&to), "application/json", b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    let huge = vec![0xFFu8; cityevents_api::limits::MAX_PICTURE + 1];
    let (status, p) = upload(s, &e, Some(&to), &huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{p}");
    let mut bomb = jpeg(64, 64, "");
    // The frame header (SOF0) declares 30000×30000.
    let sof = bomb.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    bomb[sof + 5..sof + 7].copy_from_slice(&30_000u16.to_be_bytes());
    bomb[sof + 7..sof + 9].copy_from_slice(&30_000u16.to_be_bytes());
    let (status, p) = upload(s, &e, Some(&to), &bomb).await;
    assert_eq!((status, p["code"].as_str()), (StatusCode::BAD_REQUEST, Some("IMAGE_DIMENSIONS")), "{p}");
    assert!(s.get(&format!("/api/v1/events/{e}"), None).await.1.get("cover").is_none(), "nothing stored");

    // A picture: the event names a card and a wide JPEG by content, served for good.
    let (status, with) = upload(s, &e, Some(&to), &picture).await;
    assert_eq!(status, StatusCode::OK, "{with}");
    let (card, wide) = (with["cover"]["card"].as_str().unwrap().to_owned(), with["cover"]["wide"].as_str().unwrap());
    assert!(card.starts_with(&format!("/api/v1/events/{e}/cover/")) && card.ends_with("/card.jpg"), "{card}");
    for (url, want) in [(card.as_str(), (640, 360)), (wide, (1280, 720))] {
        let (status, headers, bytes) = fetch(s, url).await;
        assert_eq!(status, StatusCode::OK, "{url}");
        assert_eq!(headers["content-type"], "image/jpeg");
        assert_eq!(headers["cache-control"], "public, max-age=31536000, immutable");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(size(&bytes), want, "{url}");
        assert!(!bytes.windows(6).any(|w| w == b"SECRET"), "the original's metadata is gone");
    }
    let (_, public) = s.get(&format!("/api/v1/events/{e}"), None).await;
    assert_eq!(public["cover"]["card"], card.as_str(), "everyone sees it");
    let (_, listed) = s.get("/api/v1/events?limit=100", None).await;
    let item = listed["items"].as_array().unwrap().iter().find(|i| i["id"] == e.as_str()).unwrap().clone();
    assert_eq!(item["cover"]["card"], card.as_str(), "and in lists");
    // Only what was stored: another hash, another size, another name: 404.
    for bad in [card.replace("/card.jpg", "/huge.jpg"), card.replace("/card.jpg", "/card.png")] {
        assert_eq!(fetch(s, &bad).await.0, StatusCode::NOT_FOUND, "{bad}");
    }
    let hash = card.split('/').nth(6).unwrap().to_owned();
    let other_hash = format!("/api/v1/events/{e}/cover/{}/card.jpg", "0".repeat(16));
    assert_eq!(fetch(s, &other_hash).await.0, StatusCode::NOT_FOUND);
    assert_eq!(fetch(s, &format!("/api/v1/events/{e}/cover/..%2F..%2Fx/card.jpg")).await.0, StatusCode::NOT_FOUND);
    // The same picture again: the same name.
    assert_eq!(upload(s, &e, Some(&to), &picture).await.1["cover"]["card"], card.as_str());

    // Replaced: the new one shows at once, the old files go once the sweep's grace is over.
    let (status, replaced) = upload(s, &e, Some(&to), &jpeg(800, 800, "")).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    let new_card = replaced["cover"]["card"].as_str().unwrap().to_owned();
    assert_ne!(new_card, card);
    assert!(!new_card.contains(&hash));
    until_status(s, &card, StatusCode::NOT_FOUND).await;
    assert_eq!(fetch(s, &new_card).await.0, StatusCode::OK, "the shown cover stays");

    // Removed: 204, no cover, its files swept.
    let (status, _, _) = s.send(Method::DELETE, &format!("/api/v1/events/{e}/cover"), Some(&tx), None, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = s.send(Method::DELETE, &format!("/api/v1/events/{e}/cover"), Some(&to), None, &[]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(s.get(&format!("/api/v1/events/{e}"), None).await.1.get("cover").is_none());
    until_status(s, &new_card, StatusCode::NOT_FOUND).await;

    // A canceled event's look is settled: 409 to its organizer; a moderator still takes a
    // picture down.
    let (status, last) = upload(s, &e, Some(&to), &picture).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.post_empty(&format!("/api/v1/events/{e}/cancel"), Some(&to)).await.0, StatusCode::OK);
    let (status, p) = upload(s, &e, Some(&to), &picture).await;
    assert_conflict(status, &p, "event_canceled");
    let (status, p, _) = s.send(Method::DELETE, &format!("/api/v1/events/{e}/cover"), Some(&to), None, &[]).await;
    assert_conflict(status, &p, "event_canceled");
    let other_event = s.create_published(&to, json!({})).await;
    let (status, kept) = upload(s, &id(&other_event), Some(&to), &picture).await;
    assert_eq!(status, StatusCode::OK, "{kept}");
    let (status, _, _) =
        s.send(Method::DELETE, &format!("/api/v1/events/{}/cover", id(&other_event)), Some(&tm), None, &[]).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "a moderator takes a cover down");
    assert!(s.get(&format!("/api/v1/events/{}", id(&other_event)), None).await.1.get("cover").is_none());
    last["cover"]["card"].as_str().unwrap().to_owned()
}

/// In a directory: the files are where the configuration says, and the sweep deletes them there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn covers_in_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file:{}", dir.path().display());
    let mut settings = QUICK_SWEEP.to_vec();
    settings.push(("STORAGE__URL", url.as_str()));
    let Some(s) = Svc::start_on(Backend::Sqlite, &settings).await else { return };
    let card = exercise(&s).await;
    // covers/<event>/<hash>/card.jpg, as the URL names it.
    let parts: Vec<&str> = card.split('/').collect();
    let file = dir.path().join("covers").join(parts[4]).join(parts[6]).join("card.jpg");
    assert!(file.is_file(), "{} is on disk", file.display());
    let on_disk = std::fs::read(&file).unwrap();
    assert_eq!(fetch(&s, &card).await.2, on_disk);
    s.stop().await;
}

/// In an S3 bucket of a real S3-protocol server (`CITYEVENTS_TEST_S3`, default
/// `http://127.0.0.1:9000`, bucket `cityevents-test`, any keys): skipped when none answers,
/// except under `CI=true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn covers_in_an_s3_bucket() {
    keel::http::client::install_tls_provider();
    let endpoint = std::env::var("CITYEVENTS_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:9000".into());
    let reachable = reqwest::Client::new().get(&endpoint).timeout(Duration::from_secs(2)).send().await.is_ok();
    if !reachable {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "no S3-protocol server at {endpoint} (CI=true)");
        eprintln!("SKIPPED: no S3-protocol server at {endpoint} (start one: .ci/setup.sh)");
        return;
    }
    // A bucket of its own per run, made over the S3 API (path style, unsigned requests are
    // refused by a real S3; the test server takes any signature).
    let bucket = format!("cityevents-test-{}", &Uuid::now_v7().simple().to_string()[20..]);
    let made = reqwest::Client::new().put(format!("{endpoint}/{bucket}")).send().await.unwrap();
    assert!(made.status().is_success(), "bucket {bucket}: {}", made.status());
    let url = format!("s3://{bucket}/media");
    let mut settings = QUICK_SWEEP.to_vec();
    settings.extend([
        ("STORAGE__URL", url.as_str()),
        ("STORAGE__S3__ENDPOINT", endpoint.as_str()),
        ("STORAGE__S3__ALLOW_HTTP", "true"),
        ("STORAGE__S3__ACCESS_KEY_ID", "test"),
        ("STORAGE__S3__SECRET_ACCESS_KEY", "test"),
    ]);
    let s = Svc::start_on(Backend::Sqlite, &settings).await.expect("SQLite is always there");
    let card = exercise(&s).await;
    // The object is in the bucket under the prefix, as S3 lists it.
    let listing = reqwest::Client::new()
        .get(format!("{endpoint}/{bucket}?list-type=2&prefix=media/covers/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let key = format!("media/covers{}", card.trim_start_matches("/api/v1/events").replacen("/cover/", "/", 1));
    assert!(listing.contains(&key), "{key} in {listing}");
    s.stop().await;

    // A bucket that goes away is not an empty store: readiness says so (degraded: the pages
    // that need no pictures keep serving), and is well again once it is back.
    let gone = format!("cityevents-gone-{}", &Uuid::now_v7().simple().to_string()[20..]);
    let http = reqwest::Client::new();
    assert!(http.put(format!("{endpoint}/{gone}")).send().await.unwrap().status().is_success());
    let url = format!("s3://{gone}/media");
    let mut settings: Vec<(&str, &str)> = settings.into_iter().filter(|(k, _)| *k != "STORAGE__URL").collect();
    settings.push(("STORAGE__URL", url.as_str()));
    let s = Svc::start_on(Backend::Sqlite, &settings).await.expect("SQLite is always there");
    let storage = |s: &Svc| {
        let req = s.http.get(s.url("/health/ready"));
        async move {
            let body: Value = req.send().await.unwrap().json().await.unwrap();
            body["checks"]["storage"]["status"].as_str().unwrap_or_default().to_owned()
        }
    };
    assert_eq!(storage(&s).await, "up", "an empty bucket is well");
    assert!(http.delete(format!("{endpoint}/{gone}")).send().await.unwrap().status().is_success());
    eventually("readiness to see the bucket gone", Duration::from_secs(20), || async {
        (storage(&s).await == "down").then_some(())
    })
    .await;
    assert!(http.put(format!("{endpoint}/{gone}")).send().await.unwrap().status().is_success());
    eventually("readiness to see the bucket back", Duration::from_secs(20), || async {
        (storage(&s).await == "up").then_some(())
    })
    .await;
    s.stop().await;
}
