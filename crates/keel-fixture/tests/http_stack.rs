//! The HTTP stack, black-box, against a real server on an ephemeral port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Fixture, client};
use openmetrics_parser::PrometheusValue;
use serde_json::Value;

async fn json(resp: reqwest::Response) -> Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn assert_problem(resp: &reqwest::Response, status: u16) {
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn hello_and_security_headers() {
    let f = Fixture::start(&[]).await;
    let resp = client().get(f.url("/hello")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h.get("strict-transport-security").is_none(), "no HSTS without TLS");
    assert_eq!(json(resp).await, serde_json::json!({"message": "hello"}));
    f.stop().await;

    let f = Fixture::start(&[("FIXTURE__HTTP__HSTS__ENABLED", "true")]).await;
    let resp = client().get(f.url("/hello")).send().await.unwrap();
    assert_eq!(resp.headers()["strict-transport-security"], "max-age=31557600; includeSubDomains");
    f.stop().await;
}

#[tokio::test]
async fn responses_are_gzipped_only_when_the_client_accepts_it() {
    use std::io::Read as _;
    let body = serde_json::json!({ "name": "x".repeat(4000), "age": 7 });
    let f = Fixture::start(&[]).await;
    let c = client();
    // Offered: compressed, and caches are told the answer depends on Accept-Encoding.
    let resp = c.post(f.url("/echo")).header("accept-encoding", "gzip").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let vary: Vec<_> = resp.headers().get_all("vary").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert!(vary.iter().any(|v| v.contains("accept-encoding")), "{vary:?}");
    let zipped = resp.bytes().await.unwrap();
    assert!(zipped.len() < 1000, "4 kB of one letter compresses well: {} bytes", zipped.len());
    let mut text = String::new();
    flate2::read::GzDecoder::new(&zipped[..]).read_to_string(&mut text).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), body);
    // Not offered: the body as the handler made it.
    let resp = c.post(f.url("/echo")).json(&body).send().await.unwrap();
    assert!(resp.headers().get("content-encoding").is_none());
    assert_eq!(json(resp).await, body);
    // Small answers are not worth it.
    let resp = c.get(f.url("/hello")).header("accept-encoding", "gzip").send().await.unwrap();
    assert!(resp.headers().get("content-encoding").is_none());
    assert_eq!(json(resp).await, serde_json::json!({"message": "hello"}));
    f.stop().await;

    // Switched off: never compressed.
    let f = Fixture::start(&[("FIXTURE__HTTP__COMPRESSION", "false")]).await;
    let resp = c.post(f.url("/echo")).header("accept-encoding", "gzip").json(&body).send().await.unwrap();
    assert!(resp.headers().get("content-encoding").is_none());
    assert_eq!(json(resp).await, body);
    f.stop().await;
}

#[tokio::test]
async fn request_id_accept_reject_generate() {
    let f = Fixture::start(&[]).await;
    let c = client();
    // Accepted and echoed; the handler sees the same id.
    let resp = c.get(f.url("/log")).header("x-request-id", "abc-123_x.y:z").send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123_x.y:z");
    assert_eq!(resp.text().await.unwrap(), "abc-123_x.y:z");
    // Rejected (bad characters, too long) and replaced by a generated UUIDv7.
    for bad in ["has space", "semi;colon", &"a".repeat(129), "newline\\n"] {
        let resp = c.get(f.url("/log")).header("x-request-id", bad).send().await.unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, bad);
        assert_eq!(uuid_version(&id), Some(7), "{id}");
        assert_eq!(resp.text().await.unwrap(), id);
    }
    // Generated when absent.
    let resp = c.get(f.url("/hello")).send().await.unwrap();
    assert_eq!(uuid_version(resp.headers()["x-request-id"].to_str().unwrap()), Some(7));
    f.stop().await;
}

fn uuid_version(s: &str) -> Option<u32> {
    let parts: Vec<&str> = s.split('-').collect();
    (parts.len() == 5 && s.len() == 36).then(|| parts[2].chars().next().and_then(|c| c.to_digit(16))).flatten()
}

#[tokio::test]
async fn body_limit_413_with_route_override_semantics() {
    let f = Fixture::start(&[("FIXTURE__HTTP__BODY_LIMIT", "1KiB")]).await;
    let c = client();
    let big = format!(r#"{{"name":"{}","age":1}}"#, "x".repeat(2000));
    let resp = c.post(f.url("/echo")).header("content-type", "application/json").body(big).send().await.unwrap();
    assert_problem(&resp, 413);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = json(resp).await;
    assert_eq!(body["status"], 413);
    assert_eq!(body["request_id"], id.as_str());
    let small = r#"{"name":"a","age":1}"#;
    let resp = c.post(f.url("/echo")).header("content-type", "application/json").body(small).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // A route with its own, larger limit accepts what the global limit refuses…
    let resp = c.post(f.url("/upload")).body(vec![b'x'; 4096]).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "4096");
    // …and still has a limit.
    let resp = c.post(f.url("/upload")).body(vec![b'x'; 100 * 1024]).send().await.unwrap();
    assert_problem(&resp, 413);
    f.stop().await;
}

#[tokio::test]
async fn timeout_gives_504_problem() {
    let f = Fixture::start(&[
        ("FIXTURE__HTTP__REQUEST_TIMEOUT", "200ms"),
        ("FIXTURE__CORS__ALLOWED_ORIGINS", "https://app.example.com"),
    ])
    .await;
    let started = Instant::now();
    let resp = client().get(f.url("/slow?ms=5000")).header("origin", "https://app.example.com").send().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(4), "the deadline cut the request short");
    assert_problem(&resp, 504);
    // The stack's own answers carry CORS and security headers, so a browser can read them.
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let body = json(resp).await;
    assert_eq!(body["type"], "urn:keel:problem:timeout");
    assert!(body["request_id"].is_string());
    f.stop().await;
}

#[tokio::test]
async fn panic_becomes_500_without_leaking() {
    let f = Fixture::start(&[]).await;
    let resp = client().get(f.url("/panic")).header("x-request-id", "panic-req-1").send().await.unwrap();
    assert_problem(&resp, 500);
    assert_eq!(resp.headers()["x-request-id"], "panic-req-1");
    let text = resp.text().await.unwrap();
    assert!(!text.contains("vault") && !text.contains("10.0.0.7") && !text.contains("panicked"), "{text}");
    assert!(!text.contains(".rs"), "no source locations: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["request_id"], "panic-req-1");
    // Caught inside the metrics (and the request span): counted as the 500 it became.
    let text = f.running().metrics().render();
    assert!(
        text.lines().any(|l| l.starts_with("http_server_requests_total")
            && l.contains(r#"route="/panic""#)
            && l.contains(r#"status="500""#)),
        "{text}"
    );
    // The server survives.
    assert_eq!(client().get(f.url("/hello")).send().await.unwrap().status(), 200);
    // A bare text 500 from a handler: the text stays in the log, not in the body.
    let resp = client().get(f.url("/bare-error")).send().await.unwrap();
    assert_problem(&resp, 500);
    assert!(!resp.text().await.unwrap().contains("hunter2"));
    f.stop().await;
}

#[tokio::test]
async fn extractor_rejections_are_problems_naming_the_field() {
    let f = Fixture::start(&[]).await;
    let c = client();
    let post = |body: &'static str, ct: Option<&'static str>| {
        let mut r = c.post(f.url("/echo")).body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r.send()
    };
    // Malformed JSON → 400.
    let resp = post("{not json", Some("application/json")).await.unwrap();
    assert_problem(&resp, 400);
    // Wrong content type → 415.
    let resp = post(r#"{"name":"a","age":1}"#, Some("text/plain")).await.unwrap();
    assert_problem(&resp, 415);
    let resp = post(r#"{"name":"a","age":1}"#, None).await.unwrap();
    assert_problem(&resp, 415);
    // Wrong type → 422 naming the field.
    let resp = post(r#"{"name":"a","age":"old"}"#, Some("application/json")).await.unwrap();
    assert_problem(&resp, 422);
    let body = json(resp).await;
    assert_eq!(body["errors"][0]["field"], "age", "{body}");
    // Missing field → 422 naming it.
    let resp = post(r#"{"age":3}"#, Some("application/json")).await.unwrap();
    assert_problem(&resp, 422);
    assert_eq!(json(resp).await["errors"][0]["field"], "name");
    // Bad path parameter → 400.
    let resp = c.get(f.url("/items/not-a-number")).send().await.unwrap();
    assert_problem(&resp, 400);
    let body = json(resp).await;
    assert!(body["detail"].as_str().unwrap().contains("not-a-number"));
    assert_eq!(body["errors"][0]["field"], "id", "named from the route template: {body}");
    // Bad query → 400 naming the parameter.
    let resp = c.get(f.url("/slow?ms=soon")).send().await.unwrap();
    assert_problem(&resp, 400);
    assert_eq!(json(resp).await["errors"][0]["field"], "ms");
    // Unknown route → 404, wrong method → 405, both problems with request ids.
    let resp = c.get(f.url("/no/such/route")).send().await.unwrap();
    assert_problem(&resp, 404);
    assert!(json(resp).await["request_id"].is_string());
    let resp = c.delete(f.url("/hello")).send().await.unwrap();
    assert_problem(&resp, 405);
    // A handler's own Problem gets the request id.
    let resp = c.get(f.url("/problem")).header("x-request-id", "p-1").send().await.unwrap();
    assert_problem(&resp, 409);
    let body = json(resp).await;
    assert_eq!(body["request_id"], "p-1");
    assert_eq!(body["detail"], "already there");
    f.stop().await;
}

#[tokio::test]
async fn overload_is_shed_with_retry_after() {
    let f = Fixture::start(&[("FIXTURE__HTTP__MAX_IN_FLIGHT", "2")]).await;
    let c = client();
    let slow: Vec<_> = (0..2).map(|_| tokio::spawn(c.get(f.url("/slow?ms=1500")).send())).collect();
    let url = f.url("/hello");
    common::eventually("two requests in flight", || async {
        f.running().metrics().render().contains("http_server_requests_in_flight 2")
    })
    .await;
    let resp = c.get(&url).send().await.unwrap();
    assert_problem(&resp, 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(json(resp).await["code"], "OVERLOADED");
    // Probes are never shed.
    assert_eq!(c.get(f.url("/health/live")).send().await.unwrap().status(), 200);
    for h in slow {
        assert_eq!(h.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    assert!(f.running().metrics().render().contains("http_server_requests_shed_total 1"));
    f.stop().await;
}

#[tokio::test]
async fn cors_allow_deny_preflight_and_suffix_attack() {
    let f = Fixture::start(&[
        ("FIXTURE__CORS__ALLOWED_ORIGINS", "https://example.com,http://localhost:5173"),
        ("FIXTURE__CORS__ALLOW_CREDENTIALS", "true"),
    ])
    .await;
    let c = client();
    let origin_of = |resp: &reqwest::Response| {
        resp.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned())
    };
    // Allowed origin.
    let resp = c.get(f.url("/hello")).header("origin", "https://example.com").send().await.unwrap();
    assert_eq!(origin_of(&resp).as_deref(), Some("https://example.com"));
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    let resp = c.get(f.url("/hello")).header("origin", "http://localhost:5173").send().await.unwrap();
    assert_eq!(origin_of(&resp).as_deref(), Some("http://localhost:5173"));
    // Denied: other origins, the suffix attack, other scheme or port, a longer host.
    for bad in [
        "https://evil.com",
        "https://evil-example.com",
        "https://notexample.com",
        "https://example.com.evil.io",
        "http://example.com",
        "https://example.com:8443",
        "http://localhost:5174",
        "null",
    ] {
        let resp = c.get(f.url("/hello")).header("origin", bad).send().await.unwrap();
        assert_eq!(origin_of(&resp), None, "{bad} must not be allowed");
    }
    // No Origin (server to server): no CORS grant, but caches are told answers vary by origin.
    let resp = c.get(f.url("/hello")).send().await.unwrap();
    assert_eq!(origin_of(&resp), None);
    assert!(resp.headers()["vary"].to_str().unwrap().contains("origin"));
    // Preflight: answered, with methods, headers and a cache lifetime.
    let resp = c
        .request(reqwest::Method::OPTIONS, f.url("/echo"))
        .header("origin", "https://example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,authorization")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(origin_of(&resp).as_deref(), Some("https://example.com"));
    assert!(resp.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert!(resp.headers()["access-control-allow-headers"].to_str().unwrap().contains("content-type"));
    assert_eq!(resp.headers()["access-control-max-age"], "600");
    // Preflight from a denied origin gets no grant.
    let resp = c
        .request(reqwest::Method::OPTIONS, f.url("/echo"))
        .header("origin", "https://evil-example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(origin_of(&resp), None);
    f.stop().await;
}

#[tokio::test]
async fn metrics_parse_and_use_route_templates() {
    let f = Fixture::start(&[]).await;
    let c = client();
    for id in [1, 2, 3] {
        assert_eq!(c.get(f.url(&format!("/items/{id}"))).send().await.unwrap().status(), 200);
    }
    for junk in ["/a", "/b/c", "/d?e=f"] {
        assert_eq!(c.get(f.url(junk)).send().await.unwrap().status(), 404);
    }
    let resp = c.get(format!("{}/metrics", f.mgmt)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = resp.text().await.unwrap();
    // A full grammar parser of the Prometheus text format (label values with braces included).
    let scrape = openmetrics_parser::prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("invalid exposition: {e}\n{text}"));
    let find = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        let family = scrape.families.get(name)?;
        family.iter_samples().find_map(|s| {
            let set = s.get_labelset().ok()?;
            labels.iter().all(|(k, v)| set.get_label_value(k) == Some(*v)).then(|| match &s.value {
                PrometheusValue::Counter(c) => c.value.as_f64(),
                PrometheusValue::Gauge(v) | PrometheusValue::Unknown(v) => v.as_f64(),
                PrometheusValue::Histogram(h) => h.count.map_or(f64::NAN, |c| c as f64),
                PrometheusValue::Summary(_) => f64::NAN,
            })
        })
    };
    let requests = "http_server_requests_total";
    assert_eq!(find(requests, &[("route", "/items/{id}"), ("method", "GET"), ("status", "200")]), Some(3.0));
    assert_eq!(find(requests, &[("route", "unmatched"), ("status", "404")]), Some(3.0), "{text}");
    // No label value holds a concrete id or junk path.
    let routes: Vec<String> = scrape.families[requests]
        .iter_samples()
        .filter_map(|s| s.get_labelset().ok()?.get_label_value("route").map(str::to_owned))
        .collect();
    assert!(
        routes.iter().all(|r| !r.contains("/items/1") && !r.starts_with("/a") && !r.starts_with("/b")),
        "{routes:?}"
    );
    assert_eq!(find("http_server_request_duration_seconds", &[("route", "/items/{id}")]), Some(3.0));
    assert_eq!(find("http_server_requests_in_flight", &[]), Some(0.0));
    assert_eq!(find("build_info", &[("service", "fixture")]), Some(1.0));
    for name in
        ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds"]
    {
        assert!(find(name, &[]).is_some_and(|v| v > 0.0 || name == "process_cpu_seconds_total"), "{name} missing");
    }
    assert_eq!(find("health_check_up", &[("check", "self")]), Some(1.0));
    // Families: each declared once with HELP and TYPE.
    let types: HashMap<&str, usize> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).fold(HashMap::new(), |mut m, l| {
            *m.entry(l.split(' ').next().unwrap()).or_default() += 1;
            m
        });
    assert!(types.values().all(|n| *n == 1), "{types:?}");
    f.stop().await;
}

#[tokio::test]
async fn admin_log_level_needs_the_token() {
    let f = Fixture::start(&[("FIXTURE__MANAGEMENT__ADMIN_TOKEN", "0123456789abcdef0123456789abcdef")]).await;
    let c = client();
    let url = format!("{}/admin/log-level", f.mgmt);
    let resp = c.get(&url).send().await.unwrap();
    assert_problem(&resp, 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let resp = c.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    // Logging is not initialised in this test process, so a change is refused with a problem.
    let resp = c.put(&url).bearer_auth("0123456789abcdef0123456789abcdef").body("loud").send().await.unwrap();
    assert_problem(&resp, 400);
    assert_eq!(json(resp).await["errors"][0]["field"], "level");
    f.stop().await;

    // No token configured: admin is closed to everyone.
    let f = Fixture::start(&[]).await;
    let resp = c.get(format!("{}/admin/log-level", f.mgmt)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    f.stop().await;
}

#[tokio::test]
async fn management_can_share_the_public_listener() {
    // (below) unknown paths on the shared listener still get the API's full stack
    // Pick a free port, then configure both listeners on it.
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let f = Fixture::start(&[("FIXTURE__HTTP__PORT", &port.to_string()), ("FIXTURE__MANAGEMENT__ADDR", &addr)]).await;
    assert_eq!(f.running().http_addr(), f.running().management_addr());
    let resp = client().get(f.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("build_info"));
    let resp = client().get(f.url("/nowhere")).send().await.unwrap();
    assert_problem(&resp, 404);
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    f.stop().await;
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Fixture::start(&[("FIXTURE__HTTP__HEADER_READ_TIMEOUT", "300ms")]).await;
    let mut s = tokio::net::TcpStream::connect(f.running().http_addr()).await.unwrap();
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server closed the connection");
    assert!(started.elapsed() < Duration::from_secs(3), "within the header deadline: {:?}", started.elapsed());
    f.stop().await;
}

#[tokio::test]
async fn slow_headers_after_a_keep_alive_request_are_cut_off_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Idle again after the first answer: the deadline holds for the second head too.
    let f = Fixture::start(&[("FIXTURE__HTTP__HEADER_READ_TIMEOUT", "300ms")]).await;
    let mut s = tokio::net::TcpStream::connect(f.running().http_addr()).await.unwrap();
    exchange_ok(&mut s, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the server closed the connection");
    assert!(!rest.starts_with(b"HTTP/1.1 200"), "the stalled request was not answered");
    assert!(started.elapsed() < Duration::from_secs(3), "within the header deadline: {:?}", started.elapsed());
    f.stop().await;
}

#[tokio::test]
async fn headers_trickled_in_are_cut_off_at_the_deadline_all_the_same() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A byte every 50 ms: the connection is never silent for long, but its head is never done.
    let f = Fixture::start(&[("FIXTURE__HTTP__HEADER_READ_TIMEOUT", "300ms")]).await;
    let mut s = tokio::net::TcpStream::connect(f.running().http_addr()).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for b in
        b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter()
    {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => panic!("answered a head that never ended: {}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
    assert!(closed, "the connection stayed open for {:?}", started.elapsed());
    assert_closed_at_deadline(started, 300);
    f.stop().await;
}

#[tokio::test]
async fn a_request_slower_than_the_header_deadline_is_answered() {
    // The deadline is for heads; a request being handled keeps its connection however long it
    // takes (the request timeout bounds that).
    let f = Fixture::start(&[("FIXTURE__HTTP__HEADER_READ_TIMEOUT", "200ms")]).await;
    let mut s = tokio::net::TcpStream::connect(f.running().http_addr()).await.unwrap();
    exchange_ok(&mut s, b"GET /slow?ms=900 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // Then the same connection serves another request sent at once.
    let started = Instant::now();
    exchange_ok(&mut s, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // And, idle past the deadline, it is closed. (Timed from before the last request, so the
    // time measured here is never shorter than the server's idle time.)
    assert!(read_until_closed(&mut s).await.is_empty(), "closed, not answered");
    assert_closed_at_deadline(started, 200);
    f.stop().await;
}

/// The connection was closed at least `deadline_ms` after `started`, and well within 2 s.
fn assert_closed_at_deadline(started: Instant, deadline_ms: u64) {
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(deadline_ms) && took < Duration::from_secs(2), "closed after {took:?}");
}

/// Sends `req` and reads the start of the answer, which must be a 200; the answer's text.
async fn exchange_ok(s: &mut tokio::net::TcpStream, req: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(req).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

/// Reads until the server closes the connection (or 5 s pass); what it sent.
async fn read_until_closed(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    all
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_deadline() {
    let f = Fixture::start(&[("FIXTURE__HTTP__HEADER_READ_TIMEOUT", "300ms")]).await;
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(f.running().http_addr()).await.unwrap();
    assert!(read_until_closed(&mut s).await.is_empty());
    assert_closed_at_deadline(started, 300);
    f.stop().await;
}

#[tokio::test]
async fn a_refused_connect_keeps_the_connection_under_the_deadline() {
    use tokio::io::AsyncWriteExt;
    // hyper makes a tunnel only of a 2xx answer to CONNECT; after a refusal the connection
    // reads heads again, and a stalled one is cut off like any other.
    let f = Fixture::start(&[("FIXTURE__HTTP__HEADER_READ_TIMEOUT", "300ms")]).await;
    let mut s = tokio::net::TcpStream::connect(f.running().http_addr()).await.unwrap();
    s.write_all(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let all = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&all);
    assert!(!text.starts_with("HTTP/1.1 2"), "refused: {text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "the stalled request was not answered: {text}");
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    f.stop().await;
}

#[tokio::test]
async fn answers_and_uploads_slower_than_the_header_deadline_are_not_cut_off() {
    use tokio::io::AsyncWriteExt;
    let f = Fixture::start(&[("FIXTURE__HTTP__HEADER_READ_TIMEOUT", "200ms")]).await;
    // An answer whose second chunk comes 700 ms after its first.
    let resp = client().get(f.url("/stream?ms=700")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "first second");
    // A body sent a byte every 100 ms, for a second: the head was in time.
    let mut s = tokio::net::TcpStream::connect(f.running().http_addr()).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n").await.unwrap();
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"x").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = exchange_ok(&mut s, b"x").await;
    assert!(text.ends_with("10"), "the whole body: {text}");
    f.stop().await;
}

#[tokio::test]
async fn http2_connections_outlive_the_header_deadline_http1_ones_do_not() {
    // The same client twice, a pause longer than the deadline in between: the port it is seen
    // from tells whether the connection was kept.
    let f = Fixture::start(&[("FIXTURE__HTTP__HEADER_READ_TIMEOUT", "200ms")]).await;
    keel::http::client::install_tls_provider();
    let peer = |c: reqwest::Client| {
        let url = f.url("/peer");
        async move {
            let first = c.get(&url).send().await.unwrap().text().await.unwrap();
            tokio::time::sleep(Duration::from_millis(700)).await;
            let second = c.get(&url).send().await.unwrap().text().await.unwrap();
            (first, second)
        }
    };
    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    let (a, b) = peer(h2).await;
    assert_eq!(a, b, "HTTP/2: the same connection");
    let h1 = reqwest::Client::builder().no_proxy().http1_only().build().unwrap();
    let (a, b) = peer(h1).await;
    assert_ne!(a, b, "HTTP/1.1: the idle connection was closed, a new one made");
    f.stop().await;
}

#[tokio::test]
async fn a_stalled_head_does_not_hold_up_the_drain() {
    use tokio::io::AsyncWriteExt;
    let f =
        Fixture::start(&[("FIXTURE__HTTP__HEADER_READ_TIMEOUT", "300ms"), ("FIXTURE__SHUTDOWN__TIMEOUT", "20s")]).await;
    let mut s = tokio::net::TcpStream::connect(f.running().http_addr()).await.unwrap();
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    f.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "drained in {:?}", started.elapsed());
}

#[tokio::test]
async fn the_drain_finishes_http2_and_keep_alive_connections_and_their_requests() {
    // Idle connections of both protocols, kept open by their clients' pools, and a request in
    // progress on an HTTP/2 one: the drain answers the request, then closes them all.
    let f =
        Fixture::start(&[("FIXTURE__HTTP__HEADER_READ_TIMEOUT", "30s"), ("FIXTURE__SHUTDOWN__TIMEOUT", "20s")]).await;
    keel::http::client::install_tls_provider();
    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    let h1 = reqwest::Client::builder().no_proxy().http1_only().build().unwrap();
    for c in [&h2, &h1] {
        assert_eq!(c.get(f.url("/hello")).send().await.unwrap().status(), 200);
    }
    let slow = tokio::spawn(h2.get(f.url("/slow?ms=500")).send());
    common::eventually("the slow request in flight", || async {
        f.running().metrics().render().contains("http_server_requests_in_flight 1")
    })
    .await;
    let started = Instant::now();
    f.stop().await;
    let drained = started.elapsed();
    assert!(drained < Duration::from_secs(5), "drained in {drained:?}");
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200, "the request in progress was answered");
    assert_eq!(resp.text().await.unwrap(), "done", "in full");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    use tokio::io::AsyncWriteExt;
    let f = Fixture::start(&[("FIXTURE__HTTP__MAX_CONNECTIONS", "2")]).await;
    let addr = f.running().http_addr();
    // Two connections hold both slots (a request in progress on each).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow?ms=800 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let resp = client().get(f.url("/hello")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(5), "waited for a slot: {waited:?}");
    drop(held);
    f.stop().await;
}

/// An HTTP/2 (prior knowledge) connection to `addr` made with hyper's client; the connection
/// task ends when the server closes the connection.
async fn h2_connect(
    addr: std::net::SocketAddr,
) -> (hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>, tokio::task::JoinHandle<()>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (send, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .handshake(io)
        .await
        .unwrap();
    (send, tokio::spawn(async move { drop(conn.await) }))
}

/// One GET on `send`; its status and body.
async fn h2_get(
    send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    addr: std::net::SocketAddr,
    path: &str,
) -> (u16, String) {
    use http_body_util::BodyExt;
    let req = http::Request::get(format!("http://{addr}{path}")).body(http_body_util::Empty::new()).unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_within_its_idle_timeout() {
    let f = Fixture::start(&[("FIXTURE__HTTP__HTTP2__IDLE_TIMEOUT", "300ms")]).await;
    let addr = f.running().http_addr();
    let (mut send, conn) = h2_connect(addr).await;
    // Timed from before the request, so never shorter than the server's idle time.
    let idle_from = Instant::now();
    assert_eq!(h2_get(&mut send, addr, "/hello").await.0, 200);
    tokio::time::timeout(Duration::from_secs(5), conn).await.expect("the idle connection was closed").unwrap();
    assert_closed_at_deadline(idle_from, 300);
    f.stop().await;
}

#[tokio::test]
async fn an_http2_connection_with_a_request_in_progress_outlives_the_idle_timeout() {
    let f = Fixture::start(&[("FIXTURE__HTTP__HTTP2__IDLE_TIMEOUT", "200ms")]).await;
    let addr = f.running().http_addr();
    let (mut send, mut conn) = h2_connect(addr).await;
    // A handler four idle timeouts long, then an answer with a pause three and a half long in
    // it; after each, the same connection serves another request (a `GOAWAY` would refuse it).
    assert_eq!(h2_get(&mut send, addr, "/slow?ms=800").await, (200, "done".to_owned()));
    assert_eq!(h2_get(&mut send, addr, "/hello").await.0, 200);
    assert_eq!(h2_get(&mut send, addr, "/stream?ms=700").await, (200, "first second".to_owned()));
    let idle_from = Instant::now();
    assert_eq!(h2_get(&mut send, addr, "/hello").await.0, 200);
    assert!(!conn.is_finished(), "still open");
    tokio::time::timeout(Duration::from_secs(5), &mut conn).await.expect("closed once idle").unwrap();
    assert_closed_at_deadline(idle_from, 200);
    f.stop().await;
}

#[tokio::test]
async fn an_http2_connection_that_never_sends_a_request_is_closed_at_the_header_deadline() {
    let f = Fixture::start(&[("FIXTURE__HTTP__HEADER_READ_TIMEOUT", "300ms")]).await;
    let addr = f.running().http_addr();
    // The preface and settings, then nothing.
    let started = Instant::now();
    let (_send, conn) = h2_connect(addr).await;
    tokio::time::timeout(Duration::from_secs(5), conn).await.expect("closed").unwrap();
    assert_closed_at_deadline(started, 300);
    // Half a preface, then nothing.
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(read_until_closed(&mut s).await.is_empty());
    assert_closed_at_deadline(started, 300);
    f.stop().await;
}

#[tokio::test]
async fn http2_header_lists_over_the_limit_are_refused() {
    let f = Fixture::start(&[("FIXTURE__HTTP__HTTP2__MAX_HEADER_LIST_SIZE", "2KiB")]).await;
    let addr = f.running().http_addr();
    let (mut send, _conn) = h2_connect(addr).await;
    assert_eq!(h2_get(&mut send, addr, "/hello").await.0, 200);
    let req = http::Request::get(format!("http://{addr}/hello"))
        .header("x-big", "a".repeat(4096))
        .body(http_body_util::Empty::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 431);
    // The connection goes on.
    assert_eq!(h2_get(&mut send, addr, "/hello").await.0, 200);
    f.stop().await;
}

#[tokio::test]
async fn a_client_over_its_per_ip_cap_cannot_stop_another_from_being_served() {
    // One client (127.0.0.1) opens three times its cap of idle HTTP/2 connections, one
    // request on each, and keeps them; another client (127.0.0.2) is still served at once.
    let f = Fixture::start(&[
        ("FIXTURE__HTTP__MAX_CONNECTIONS", "16"),
        ("FIXTURE__HTTP__MAX_CONNECTIONS_PER_IP", "8"),
        ("FIXTURE__HTTP__HTTP2__IDLE_TIMEOUT", "60s"),
    ])
    .await;
    keel::http::client::install_tls_provider();
    let mut held = Vec::new();
    let mut served = 0;
    for _ in 0..24 {
        let c = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        if c.get(f.url("/hello")).send().await.is_ok_and(|r| r.status() == 200) {
            served += 1;
        }
        held.push(c);
    }
    assert_eq!(served, 8, "the first client got its cap");
    let other = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let started = Instant::now();
    let resp = other.get(f.url("/peer")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().starts_with("127.0.0.2:"), "from the other address");
    assert!(started.elapsed() < Duration::from_secs(2), "served promptly: {:?}", started.elapsed());
    // The first client's connections are all still open (kept alive by its clients).
    for c in &held[..8] {
        assert_eq!(c.get(f.url("/hello")).send().await.unwrap().status(), 200);
    }
    let text = client().get(format!("{}/metrics", f.mgmt)).send().await.unwrap().text().await.unwrap();
    let refused: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("http_server_connections_refused_total "))
        .and_then(|v| v.parse().ok())
        .expect("the refusals are counted");
    assert!(refused >= 16.0, "{refused} refused");
    drop(held);
    f.stop().await;
}

#[tokio::test]
async fn made_up_methods_share_one_metric_label() {
    let f = Fixture::start(&[]).await;
    for m in ["FOO", "BAR", "BAZ"] {
        let _ =
            client().request(reqwest::Method::from_bytes(m.as_bytes()).unwrap(), f.url("/hello")).send().await.unwrap();
    }
    let text = f.running().metrics().render();
    assert!(!text.contains("FOO") && !text.contains("BAZ"), "{text}");
    assert!(text.contains("method=\"_OTHER\""));
    f.stop().await;
}

#[tokio::test]
async fn admin_refuses_trace_in_production() {
    let token = "0123456789abcdef0123456789abcdef";
    let f = Fixture::start_profile(
        keel::config::Profile::Production,
        &[
            ("FIXTURE__CORS__ALLOWED_ORIGINS", "https://app.example.com"),
            ("FIXTURE__MANAGEMENT__ADMIN_TOKEN", token),
            ("FIXTURE__SHUTDOWN__DRAIN_DELAY", "0s"),
        ],
    )
    .await;
    let resp =
        client().put(format!("{}/admin/log-level", f.mgmt)).bearer_auth(token).body("trace").send().await.unwrap();
    assert_problem(&resp, 400);
    assert!(json(resp).await["detail"].as_str().unwrap().contains("production"));
    f.stop().await;
}

#[tokio::test]
async fn routes_that_collide_with_reserved_ones_fail_start_up_cleanly() {
    let svc = keel::Service::new(keel::build_info!())
        .router(axum::Router::new().route("/healthz", axum::routing::get(|| async { "mine" })));
    let loaded = keel::app::Loader::new("clash", keel::config::Profile::Test)
        .env([("CLASH__HTTP__PORT", "0"), ("CLASH__HTTP__ADDR", "127.0.0.1")])
        .load()
        .unwrap();
    let err = keel::app::start(svc, loaded).await.unwrap_err();
    assert!(err.to_string().contains("reserves"), "{err}");
}
