//! Reports to the moderators: members report events and accounts (bounded per reporter and per
//! target, never their own, the bounds held by concurrent reports too), moderators see one queue
//! ordered by how reported and how long waiting, with the event's context but not who reported,
//! and resolve a target's reports at once (never about themselves, with an outcome that matches
//! the event): the audit log hears of it and every reporter is told, in the same transaction,
//! exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Svc, id};
use futures_util::future::join_all;
use keel::data::Backend;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

cityevents_common::on_every_backend!(
    reports_reach_the_queue_and_reporters_hear_the_outcome,
    concurrent_reports_keep_every_limit,
    one_open_report_per_reporter_and_target_is_a_unique_key,
    moderators_do_not_resolve_reports_about_themselves,
);

fn report(kind: &str, target: &str, reason: &str) -> Value {
    json!({ "kind": kind, "target_id": target, "reason": reason })
}

async fn reports_reach_the_queue_and_reporters_hear_the_outcome(backend: Backend) {
    let settings = [("APP__REPORTS__PER_REPORTER_PER_HOUR", "4"), ("APP__REPORTS__MAX_OPEN_PER_TARGET", "3")];
    let Some(s) = Svc::start_tapped(backend, &settings).await else { return };
    let organizer = Uuid::now_v7();
    let org = s.token(organizer, "user");
    let event = s.create_published(&org, json!({ "title": "Totally real concert" })).await;
    let event_id = id(&event);
    let other = id(&s.create_published(&org, json!({ "title": "Another one" })).await);
    let people: Vec<(Uuid, String)> = (0..5).map(|_| Uuid::now_v7()).map(|u| (u, s.token(u, "user"))).collect();
    let (ann, ann_token) = &people[0];

    // Bad input and the rules.
    let (st, _) = s.post("/api/v1/reports", None, report("event", &event_id, "scam")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, body) = s.post("/api/v1/reports", Some(ann_token), report("event", &event_id, "other")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "`other` needs details: {body}");
    let (st, _) = s.post("/api/v1/reports", Some(ann_token), report("event", &event_id, "boring")).await;
    assert!(st.is_client_error(), "an unknown reason");
    let mut long = report("event", &event_id, "scam");
    long["details"] = json!("x".repeat(1001));
    assert_eq!(s.post("/api/v1/reports", Some(ann_token), long).await.0, StatusCode::BAD_REQUEST);
    let (st, body) = s.post("/api/v1/reports", Some(&org), report("event", &event_id, "spam")).await;
    assert_eq!((st, body["code"].as_str()), (StatusCode::CONFLICT, Some("own_content")), "{body}");
    let (st, _) = s.post("/api/v1/reports", Some(ann_token), report("user", &ann.to_string(), "spam")).await;
    assert_eq!(st, StatusCode::CONFLICT, "nobody reports themselves");
    let (st, body) =
        s.post("/api/v1/reports", Some(ann_token), report("event", &Uuid::now_v7().to_string(), "spam")).await;
    assert_eq!((st, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("target_not_found")), "an unknown event");

    // Three people report the event; a fourth finds it has enough.
    let mut scam = report("event", &event_id, "scam");
    scam["details"] = json!("They ask for payment by bank transfer to a private account.");
    for (_, token) in &people[..3] {
        let (st, body) = s.post("/api/v1/reports", Some(token), scam.clone()).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
        assert_eq!(body["reason"], "scam");
    }
    let (st, body) = s.post("/api/v1/reports", Some(ann_token), scam.clone()).await;
    assert_eq!((st, body["code"].as_str()), (StatusCode::CONFLICT, Some("already_reported")), "{body}");
    let (st, body) = s.post("/api/v1/reports", Some(&people[3].1), scam.clone()).await;
    assert_eq!((st, body["code"].as_str()), (StatusCode::CONFLICT, Some("enough_reports")), "{body}");
    // One report of the other event, and of the organizer's account.
    let (st, _) = s.post("/api/v1/reports", Some(ann_token), report("event", &other, "misleading")).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = s.post("/api/v1/reports", Some(ann_token), report("user", &organizer.to_string(), "offensive")).await;
    assert_eq!(st, StatusCode::CREATED);
    // Ann has sent 3 in the hour (and was refused the rest): one more, then 429.
    let (st, _) = s.post("/api/v1/reports", Some(ann_token), report("user", &people[4].0.to_string(), "spam")).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, body, headers) = s
        .send(
            reqwest::Method::POST,
            "/api/v1/reports",
            Some(ann_token),
            Some(report("user", &people[3].0.to_string(), "spam")),
            &[],
        )
        .await;
    assert_eq!((st, body["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("too_many_reports")), "{body}");
    assert_eq!(headers.get("retry-after").unwrap(), "3600");

    // The queue: moderators only; the most reported first, with the event's context.
    assert_eq!(s.get("/api/v1/moderation/reports", Some(ann_token)).await.0, StatusCode::FORBIDDEN);
    let moderator = Uuid::now_v7();
    let m = s.token(moderator, "moderator");
    let (st, queue) = s.get("/api/v1/moderation/reports", Some(&m)).await;
    assert_eq!(st, StatusCode::OK, "{queue}");
    let items = queue["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{queue}");
    assert_eq!((items[0]["target_id"].as_str(), items[0]["open"].as_u64()), (Some(event_id.as_str()), Some(3)));
    assert_eq!(items[0]["event"]["title"], "Totally real concert");
    assert_eq!(items[0]["event"]["status"], "published");
    assert_eq!(items[0]["event"]["organizer_id"], organizer.to_string());
    assert_eq!(items[0]["reports"].as_array().unwrap().len(), 3);
    assert!(items[0]["reports"][0]["details"].as_str().unwrap().contains("bank transfer"));
    // What was reported, never who reported it.
    for report in items.iter().flat_map(|i| i["reports"].as_array().unwrap()) {
        assert_eq!(
            report.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["created_at", "details", "id", "reason"],
            "{report}"
        );
    }
    for (person, _) in &people[..3] {
        assert!(!queue.to_string().contains(&person.to_string()), "no reporter's id anywhere: {queue}");
    }
    // The rest, one report each, the longest waiting first.
    let rest: Vec<&str> = items[1..].iter().map(|i| i["target_id"].as_str().unwrap()).collect();
    assert_eq!(rest, [other.as_str(), &organizer.to_string(), &people[4].0.to_string()]);

    // Resolving: moderators only; the outcome must fit the target.
    let resolve = |outcome: &str, kind: &str, target: &str| json!({ "kind": kind, "target_id": target, "outcome": outcome, "note": "Payment outside the platform" });
    let path = "/api/v1/moderation/reports/resolve";
    assert_eq!(s.post(path, Some(ann_token), resolve("canceled", "event", &event_id)).await.0, StatusCode::FORBIDDEN);
    let (st, _) = s.post(path, Some(&m), resolve("canceled", "user", &organizer.to_string())).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "an account is not canceled");
    let (st, _) = s.post(path, Some(&m), resolve("picture_removed", "event", &event_id)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "an event has no picture to take down");
    // The outcome must be what happened to the event: it is still published.
    for outcome in ["canceled", "unpublished"] {
        let (st, body) = s.post(path, Some(&m), resolve(outcome, "event", &event_id)).await;
        assert_eq!((st, body["code"].as_str()), (StatusCode::CONFLICT, Some("outcome_mismatch")), "{outcome}: {body}");
    }
    let cancel = format!("/api/v1/events/{event_id}/cancel");
    let (st, body) = s.post(&cancel, Some(&m), json!({ "reason": "Payment outside the platform" })).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, body) = s.post(path, Some(&m), resolve("unpublished", "event", &event_id)).await;
    assert_eq!((st, body["code"].as_str()), (StatusCode::CONFLICT, Some("outcome_mismatch")), "canceled: {body}");
    let (st, body) = s.post(path, Some(&m), resolve("canceled", "event", &event_id)).await;
    assert_eq!((st, body["resolved"].as_u64()), (StatusCode::OK, Some(3)), "{body}");
    let (st, body) = s.post(path, Some(&m), resolve("canceled", "event", &event_id)).await;
    assert_eq!((st, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("no_open_reports")), "{body}");
    // The audit log hears it once (after the cancel); each reporter's outcome once.
    let record = s.moderation.wait_for(&format!("event:{event_id}"), 2).await;
    let record: Vec<_> = record.into_iter().filter(|r| r.data["action"] == "report.resolve").collect();
    assert_eq!(record.len(), 1);
    assert_eq!(record[0].ty, "moderation.recorded");
    assert_eq!(record[0].data["action"], "report.resolve");
    assert_eq!(record[0].data["details"]["outcome"], "canceled");
    assert_eq!(record[0].data["actor"], moderator.to_string());
    for (person, _) in &people[..3] {
        let told = s.moderation.wait_for(&person.to_string(), 1).await;
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(told[0].ty, "report.resolved");
        assert_eq!(told[0].data["outcome"], "canceled");
        assert_eq!(told[0].data["subject"], "Totally real concert");
        assert_eq!(told[0].data["event_id"], event_id);
    }
    // Closed reports leave the queue; the reporters may report it again.
    let (_, queue) = s.get("/api/v1/moderation/reports", Some(&m)).await;
    assert_eq!(queue["items"].as_array().unwrap().len(), 3);
    let (st, _) = s.post(path, Some(&m), resolve("dismissed", "user", &organizer.to_string())).await;
    assert_eq!(st, StatusCode::OK);
    let told = s.moderation.wait_for(&ann.to_string(), 2).await;
    assert_eq!(told[1].data["subject"], "an account");
    assert_eq!(told[1].data["outcome"], "dismissed");
    assert!(told[1].data.get("event_id").is_none());
    s.stop().await;
}

/// `n` copies of `body` sent by `token` at once; the statuses and codes.
async fn at_once(s: &Svc, sends: Vec<(String, Value)>) -> Vec<(StatusCode, Option<String>)> {
    let answers =
        join_all(sends.iter().map(|(token, body)| s.post("/api/v1/reports", Some(token), body.clone()))).await;
    answers.into_iter().map(|(st, body)| (st, body["code"].as_str().map(str::to_owned))).collect()
}

/// How many answers are `status` with `code`.
fn tally(answers: &[(StatusCode, Option<String>)], status: StatusCode, code: Option<&str>) -> usize {
    answers.iter().filter(|(st, c)| *st == status && c.as_deref() == code).count()
}

async fn concurrent_reports_keep_every_limit(backend: Backend) {
    let settings = [("APP__REPORTS__PER_REPORTER_PER_HOUR", "4"), ("APP__REPORTS__MAX_OPEN_PER_TARGET", "3")];
    let Some(s) = Svc::start_tapped(backend, &settings).await else { return };
    let m = s.token(Uuid::now_v7(), "moderator");
    let open_on = |queue: &Value, target: &str| {
        queue["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["target_id"] == target)
            .map(|i| i["open"].as_u64().unwrap())
    };

    // One reporter, one target, twenty at once: one report, nineteen repeats.
    let ann = s.token(Uuid::now_v7(), "user");
    let target = Uuid::now_v7().to_string();
    let answers = at_once(&s, vec![(ann.clone(), report("user", &target, "spam")); 20]).await;
    assert_eq!(tally(&answers, StatusCode::CREATED, None), 1, "{answers:?}");
    assert_eq!(tally(&answers, StatusCode::CONFLICT, Some("already_reported")), 19, "{answers:?}");
    let (_, queue) = s.get("/api/v1/moderation/reports", Some(&m)).await;
    assert_eq!(open_on(&queue, &target), Some(1), "{queue}");

    // One reporter, twenty targets at once: the hour's four, then 429.
    let bob = s.token(Uuid::now_v7(), "user");
    let sends = (0..20).map(|_| (bob.clone(), report("user", &Uuid::now_v7().to_string(), "spam"))).collect();
    let answers = at_once(&s, sends).await;
    assert_eq!(tally(&answers, StatusCode::CREATED, None), 4, "{answers:?}");
    assert_eq!(tally(&answers, StatusCode::TOO_MANY_REQUESTS, Some("too_many_reports")), 16, "{answers:?}");

    // Twenty reporters, one target at once: the target's three, then enough.
    let crowded = Uuid::now_v7().to_string();
    let sends = (0..20).map(|_| (s.token(Uuid::now_v7(), "user"), report("user", &crowded, "offensive"))).collect();
    let answers = at_once(&s, sends).await;
    assert_eq!(tally(&answers, StatusCode::CREATED, None), 3, "{answers:?}");
    assert_eq!(tally(&answers, StatusCode::CONFLICT, Some("enough_reports")), 17, "{answers:?}");
    let (_, queue) = s.get("/api/v1/moderation/reports", Some(&m)).await;
    assert_eq!(open_on(&queue, &crowded), Some(3), "{queue}");

    // Resolved, the report is closed: its reporter may report the target again, once.
    let resolve = json!({ "kind": "user", "target_id": target, "outcome": "dismissed" });
    let (st, body) = s.post("/api/v1/moderation/reports/resolve", Some(&m), resolve).await;
    assert_eq!((st, body["resolved"].as_u64()), (StatusCode::OK, Some(1)), "{body}");
    let answers = at_once(&s, vec![(ann.clone(), report("user", &target, "spam")); 5]).await;
    assert_eq!(tally(&answers, StatusCode::CREATED, None), 1, "{answers:?}");
    assert_eq!(tally(&answers, StatusCode::CONFLICT, Some("already_reported")), 4, "{answers:?}");
    s.stop().await;
}

/// A report of `reporter` about account `target` with `open_key`, straight into the table.
async fn insert_report(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    (reporter, target): (Uuid, Uuid),
    open_key: Option<&str>,
) -> Result<sqlx::any::AnyQueryResult, sqlx::Error> {
    let insert = "INSERT INTO reports (id, reporter_id, target_kind, target_id, reason, created_at, open_key) \
                  VALUES ($1, $2, 'user', $3, 'spam', 1, $4)";
    sqlx::query(sqlx::AssertSqlSafe(backend.sql(insert).into_owned()))
        .bind(Uuid::now_v7().to_string())
        .bind(reporter.to_string())
        .bind(target.to_string())
        .bind(open_key.map(str::to_owned))
        .execute(conn)
        .await
}

async fn one_open_report_per_reporter_and_target_is_a_unique_key(backend: Backend) {
    let Some(s) = Svc::start_on(backend, &[]).await else { return };
    sqlx::any::install_default_drivers();
    let b = Backend::from_url(s.database_url()).unwrap();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(s.database_url()).await.unwrap();
    let (reporter, target) = (Uuid::now_v7(), Uuid::now_v7());
    let key = format!("user:{target}:{reporter}");
    insert_report(&mut conn, b, (reporter, target), Some(&key)).await.unwrap();
    match insert_report(&mut conn, b, (reporter, target), Some(&key)).await {
        Err(sqlx::Error::Database(e)) => assert!(e.is_unique_violation(), "{e}"),
        other => panic!("a second open report of the same reporter and target: {other:?}"),
    }
    // Closed reports (NULL) never collide, with each other or with the open one.
    insert_report(&mut conn, b, (reporter, target), None).await.unwrap();
    insert_report(&mut conn, b, (reporter, target), None).await.unwrap();
    s.stop().await;
}

async fn moderators_do_not_resolve_reports_about_themselves(backend: Backend) {
    let Some(s) = Svc::start_tapped(backend, &[]).await else { return };
    let (mod_a, mod_b) = (Uuid::now_v7(), Uuid::now_v7());
    let (a, b) = (s.token(mod_a, "moderator"), s.token(mod_b, "moderator"));
    let event = id(&s.create_published(&a, json!({ "title": "A moderator's own gig" })).await);
    let reporter = s.token(Uuid::now_v7(), "user");
    for (kind, target) in [("event", event.clone()), ("user", mod_a.to_string())] {
        let (st, body) = s.post("/api/v1/reports", Some(&reporter), report(kind, &target, "offensive")).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
    }
    let path = "/api/v1/moderation/reports/resolve";
    for (kind, target) in [("event", event.clone()), ("user", mod_a.to_string())] {
        for outcome in ["dismissed", "banned"] {
            let resolve = json!({ "kind": kind, "target_id": target, "outcome": outcome });
            let (st, body) = s.post(path, Some(&a), resolve).await;
            assert_eq!(
                (st, body["code"].as_str()),
                (StatusCode::FORBIDDEN, Some("own_report_target")),
                "{kind} {outcome}: {body}"
            );
        }
        // Another moderator does.
        let resolve = json!({ "kind": kind, "target_id": target, "outcome": "dismissed" });
        let (st, body) = s.post(path, Some(&b), resolve).await;
        assert_eq!((st, body["resolved"].as_u64()), (StatusCode::OK, Some(1)), "{kind}: {body}");
    }
    s.stop().await;
}
