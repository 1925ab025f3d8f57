//! Events through the fixture binary: a request's id and trace reach the consumer's log lines,
//! metrics count the outbox and the consumer, and `fixture dlq list | replay` work against NATS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Proc, client, run_cli};

fn event_env(dir: &std::path::Path, topic: &str) -> Vec<(String, String)> {
    vec![
        ("FIXTURE__APP__DATABASE".into(), "true".into()),
        ("FIXTURE__APP__EVENTS".into(), "true".into()),
        ("FIXTURE__APP__EVENTS_TOPIC".into(), topic.into()),
        ("FIXTURE__DATABASE__URL".into(), format!("sqlite://{}/events.db?mode=rwc", dir.display())),
        ("FIXTURE__OUTBOX__POLL_INTERVAL".into(), "50ms".into()),
    ]
}

fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// Waits until readiness is 200: the database, migrations, bus and consumer are all up.
async fn wait_ready(p: &Proc) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client().get(p.url("/health/ready")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the fixture never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_item(p: &Proc, name: &str, headers: &[(&str, &str)]) -> String {
    let mut req = client().post(p.url("/events")).json(&serde_json::json!({ "name": name }));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let body: serde_json::Value = resp.json().await.unwrap();
    body["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn request_id_and_trace_reach_the_consumer_and_metrics_count_them() {
    let dir = tempfile::tempdir().unwrap();
    let topic = keel::testing::unique_topic("items");
    let env = event_env(dir.path(), &topic);
    let mut p = Proc::spawn(&refs(&env));
    wait_ready(&p).await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let id = post_item(
        &p,
        "lamp",
        &[("x-request-id", "req-events-42"), ("traceparent", &format!("00-{trace_id}-b7ad6b7169203331-01"))],
    )
    .await;
    let line = p.wait_for("\"event-handled\"");
    let log: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(log["request_id"], "req-events-42", "{line}");
    assert_eq!(log["trace_id"], trace_id, "the consumer continues the producer's trace: {line}");
    assert_eq!(log["fields"]["event_id"], id, "{line}");
    assert_eq!(log["span"], "consume", "{line}");

    // The relay counts a publish when the broker confirms it, which may come after the
    // consumer has already handled the message; the pending gauge is refreshed on the
    // relay's next poll after that.
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics =
            client().get(format!("http://{}/metrics", p.mgmt.unwrap())).send().await.unwrap().text().await.unwrap();
        let has = |needle: &str| metrics.lines().any(|l| l.starts_with(needle));
        if has("outbox_published_total 1") && (has("outbox_pending 0") || !has("outbox_pending")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let has = |needle: &str| metrics.lines().any(|l| l.starts_with(needle));
    assert!(has("outbox_published_total 1"), "{metrics}");
    assert!(
        has(&format!("consumer_messages_total{{group=\"indexer\",outcome=\"ok\",topic=\"{topic}\"}} 1")),
        "{metrics}"
    );
    assert!(has("consumer_handle_duration_seconds_count"), "{metrics}");
    assert!(has("outbox_pending 0") || !has("outbox_pending"), "{metrics}");

    // Readiness names the bus and the consumer (refreshed when the subscription is made).
    let consumer_check = format!("consumer:{topic}:indexer");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready: serde_json::Value = client().get(p.url("/health/ready")).send().await.unwrap().json().await.unwrap();
        if ready["checks"]["bus"]["status"] == "up" && ready["checks"][&consumer_check]["status"] == "up" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn dlq_cli_lists_and_replays_a_poison_message_on_nats() {
    let url = keel::testing::nats_url();
    if !keel::testing::require("NATS", &url) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let topic = keel::testing::unique_topic("items");
    let mut env = event_env(dir.path(), &topic);
    env.push(("FIXTURE__BUS__BACKEND".into(), "nats".into()));
    env.push(("FIXTURE__BUS__URL".into(), url.clone()));
    let mut p = Proc::spawn(&refs(&env));
    wait_ready(&p).await;
    let id = post_item(&p, "poison-pill", &[]).await;
    // Dead too, and later discarded rather than replayed.
    let other = post_item(&p, "poison-dropped", &[]).await;
    post_item(&p, "fine", &[]).await;
    p.wait_for("\"item\":\"fine\"");

    let cli_env = [("KEEL_ENV", "test"), ("FIXTURE__BUS__BACKEND", "nats"), ("FIXTURE__BUS__URL", url.as_str())];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let (code, out, err) = run_cli(&["dlq", "list", &topic], &cli_env);
        assert_eq!(code, 0, "{out}{err}");
        if out.contains(&id) && out.contains(&other) {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "never dead-lettered: {out}{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let dead: serde_json::Value = serde_json::from_str(listed.lines().find(|l| l.contains(&id)).unwrap()).unwrap();
    assert_eq!(dead["group"], "indexer");
    assert_eq!(dead["attempts"], 3);
    assert!(dead["reason"].as_str().unwrap().contains("cannot index a poisoned item"), "{dead}");

    client().post(p.url("/events/heal")).send().await.unwrap();
    let (code, out, err) = run_cli(&["dlq", "replay", &topic, "--id", &id], &cli_env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replayed 1"), "{out}");
    p.wait_for("\"item\":\"poison-pill\"");
    let (code, out, _) = run_cli(&["dlq", "list", &topic], &cli_env);
    assert!(code == 0 && !out.contains(&id) && out.contains(&other), "only the other is left: {out}");

    // The other, discarded: gone without being handled.
    let (code, out, err) = run_cli(&["dlq", "discard", &topic, "--id", &other], &cli_env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("discarded 1"), "{out}");
    let (code, out, _) = run_cli(&["dlq", "list", &topic], &cli_env);
    assert_eq!((code, out.trim()), (0, ""));
    let (code, _, err) = run_cli(&["dlq", "discard", &topic, "--id", &other], &cli_env);
    assert_ne!(code, 0, "nothing to discard is an error");
    assert!(err.contains("no dead letter"), "{err}");

    // Bad input: an invalid topic name is a clear error, not a broker exception.
    let (code, _, err) = run_cli(&["dlq", "list", "no spaces"], &cli_env);
    assert_ne!(code, 0);
    assert!(err.contains("invalid name"), "{err}");
    // The in-process bus has no reachable DLQ: said plainly.
    let (code, _, err) = run_cli(&["dlq", "list", &topic], &[("KEEL_ENV", "test")]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("in_process"), "{err}");
}
