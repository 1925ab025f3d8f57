//! The invariants, read from the services' databases and compared with what the clients were
//! told. Each check adds a line to `failures` instead of stopping at the first, so one run shows
//! every broken invariant with its numbers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::load::{Api, Slot, Told, User};
use super::platform::Platform;
use super::servers::Postgres;

/// A `join.*` row of the joins outbox.
#[derive(Debug, Clone)]
pub struct Announced {
    pub ty: String,
    pub join_id: String,
    pub event_id: String,
    pub user_id: String,
    pub status: String,
}

pub fn announced(pg: &Postgres, p: &Platform) -> Vec<Announced> {
    pg.query(
        &p.database("joins"),
        "SELECT payload::json->>'type', payload::json->'data'->>'join_id', payload::json->'data'->>'event_id', \
         payload::json->'data'->>'user_id', payload::json->'data'->>'status' FROM keel_outbox \
         WHERE payload::json->>'type' LIKE 'join.%' ORDER BY seq",
    )
    .into_iter()
    .map(|r| Announced {
        ty: r[0].clone(),
        join_id: r[1].clone(),
        event_id: r[2].clone(),
        user_id: r[3].clone(),
        status: r[4].clone(),
    })
    .collect()
}

/// Notifications per (user, kind, event) in the notifier's database.
pub fn notified(pg: &Postgres, p: &Platform) -> BTreeMap<(String, String, String), i64> {
    pg.query(&p.database("notifier"), "SELECT user_id, kind, event_id, COUNT(*) FROM notifications GROUP BY 1, 2, 3")
        .into_iter()
        .map(|r| ((r[0].clone(), r[1].clone(), r[2].clone()), r[3].parse().unwrap()))
        .collect()
}

/// Where each missing notification stopped, for the report: per (user, kind, event) with
/// fewer notifications than announcements, its outbox rows' message id, status (0 waiting,
/// 1 sent, 2 dead) and attempts, and whether the notifier's inbox took the message.
pub fn trace_missing(
    pg: &Postgres,
    p: &Platform,
    expected: &BTreeMap<(String, String, String), i64>,
    got: &BTreeMap<(String, String, String), i64>,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (k, e) in expected {
        if got.get(k).copied().unwrap_or(0) >= *e {
            continue;
        }
        let (user, kind, event) = k;
        let rows = pg.query(
            &p.database("joins"),
            &format!(
                "SELECT event_id, status, attempts, seq FROM keel_outbox WHERE payload::json->>'type' = '{kind}' \
                 AND payload::json->'data'->>'user_id' = '{user}' AND payload::json->'data'->>'event_id' = '{event}' \
                 ORDER BY seq"
            ),
        );
        for r in rows.iter().take(4) {
            let inbox = pg.count(
                &p.database("notifier"),
                &format!(
                    "SELECT COUNT(*) FROM keel_inbox WHERE consumer_group = 'notifier' AND message_id = '{}'",
                    r[0]
                ),
            );
            lines.push(format!(
                "missing {kind} for user {user} event {event}: outbox message {} seq {} status {} attempts {}; \
                 notifier inbox has it: {}",
                r[0],
                r[3],
                r[1],
                r[2],
                inbox > 0
            ));
        }
        if lines.len() >= 10 {
            break;
        }
    }
    lines
}

/// Notifications each announcement should have produced, per (user, kind, event).
pub fn expected_notifications(announced: &[Announced]) -> BTreeMap<(String, String, String), i64> {
    let mut m = BTreeMap::new();
    for a in announced {
        *m.entry((a.user_id.clone(), a.ty.clone(), a.event_id.clone())).or_default() += 1;
    }
    m
}

/// One user's notifications about one event as the feed shows them (by `created_at`, then id)
/// against the order the joins service announced the changes in (`seq` of its outbox): returns
/// how many (user, event) pairs with more than one notification were compared and how many of
/// them the feed shows out of order, with an example.
pub fn feed_order(pg: &Postgres, p: &Platform, announced: &[Announced]) -> (usize, usize, Option<String>) {
    let mut want: HashMap<(String, String), Vec<String>> = HashMap::new();
    for a in announced {
        want.entry((a.user_id.clone(), a.event_id.clone())).or_default().push(a.ty.clone());
    }
    let mut shown: HashMap<(String, String), Vec<String>> = HashMap::new();
    for r in pg.query(
        &p.database("notifier"),
        "SELECT user_id, event_id, kind FROM notifications WHERE kind LIKE 'join.%' ORDER BY created_at, id",
    ) {
        shown.entry((r[0].clone(), r[1].clone())).or_default().push(r[2].clone());
    }
    let (mut compared, mut inverted, mut example) = (0, 0, None);
    for (k, kinds) in &want {
        // Missing or doubled notifications are the exactly-once check's finding.
        let Some(seen) = shown.get(k).filter(|s| s.len() == kinds.len() && kinds.len() > 1) else { continue };
        compared += 1;
        if seen != kinds {
            inverted += 1;
            example.get_or_insert_with(|| format!("user {} event {}: announced {kinds:?}, shown {seen:?}", k.0, k.1));
        }
    }
    (compared, inverted, example)
}

/// Capacity, FIFO, exactly-once and "clients' view = stored state".
pub async fn invariants(
    pg: &Postgres,
    p: &Platform,
    api: &Api,
    users: &[User],
    told: &[Told],
    failures: &mut Vec<String>,
) {
    let joins_db = p.database("joins");
    let announced = announced(pg, p);

    // --- capacity per event: the counters match the rows and never exceed the capacity
    let capacity: HashMap<String, (i64, i64, i64)> = pg
        .query(&joins_db, "SELECT event_id, capacity, confirmed, waitlisted FROM event_capacity")
        .into_iter()
        .map(|r| (r[0].clone(), (r[1].parse().unwrap(), r[2].parse().unwrap(), r[3].parse().unwrap())))
        .collect();
    let rows: Vec<(String, String, String, String)> = pg
        .query(&joins_db, "SELECT id, event_id, user_id, status FROM joins WHERE status IN ('confirmed', 'waitlisted')")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone(), r[3].clone()))
        .collect();
    for (event, (cap, confirmed, waitlisted)) in &capacity {
        let c = rows.iter().filter(|r| &r.1 == event && r.3 == "confirmed").count() as i64;
        let w = rows.iter().filter(|r| &r.1 == event && r.3 == "waitlisted").count() as i64;
        if (c, w) != (*confirmed, *waitlisted) {
            failures.push(format!("event {event}: counters {confirmed}/{waitlisted}, rows {c}/{w}"));
        }
        if *cap > 0 && c > *cap {
            failures.push(format!("event {event}: {c} confirmed over capacity {cap}"));
        }
        if *cap > 0 && w > 0 && c < *cap {
            failures.push(format!("event {event}: {w} waitlisted with a free seat ({c} of {cap})"));
        }
    }

    // --- replay of the announcements per event: capacity at every step, promotions FIFO
    let mut per_event: BTreeMap<&str, (BTreeSet<&str>, Vec<&str>)> = BTreeMap::new();
    for a in &announced {
        let cap = capacity.get(&a.event_id).map_or(0, |c| c.0);
        let (confirmed, waitlist) = per_event.entry(&a.event_id).or_default();
        match a.ty.as_str() {
            "join.confirmed" => {
                confirmed.insert(&a.join_id);
            }
            "join.waitlisted" => {
                if cap > 0 && (confirmed.len() as i64) < cap {
                    failures.push(format!("join {} waitlisted with a free seat", a.join_id));
                }
                waitlist.push(&a.join_id);
            }
            "join.promoted" => {
                if waitlist.first() != Some(&a.join_id.as_str()) {
                    failures.push(format!(
                        "event {}: promoted {} while {:?} waited longer (FIFO)",
                        a.event_id,
                        a.join_id,
                        waitlist.first()
                    ));
                }
                waitlist.retain(|j| *j != a.join_id);
                confirmed.insert(&a.join_id);
            }
            _ => {
                let was = confirmed.remove(a.join_id.as_str()) || {
                    let before = waitlist.len();
                    waitlist.retain(|j| *j != a.join_id);
                    before != waitlist.len()
                };
                if !was {
                    failures.push(format!("{} of join {} that was not active", a.ty, a.join_id));
                }
            }
        }
        if cap > 0 && confirmed.len() as i64 > cap {
            failures.push(format!(
                "event {}: {} confirmed over capacity {cap} after {}",
                a.event_id,
                confirmed.len(),
                a.join_id
            ));
        }
    }
    let replayed: BTreeSet<(String, String)> = per_event
        .values()
        .flat_map(|(c, w)| {
            c.iter()
                .map(|j| ((*j).to_owned(), "confirmed".to_owned()))
                .chain(w.iter().map(|j| ((*j).to_owned(), "waitlisted".to_owned())))
        })
        .collect();
    let stored: BTreeSet<(String, String)> = rows.iter().map(|r| (r.0.clone(), r.3.clone())).collect();
    if replayed != stored {
        failures.push(format!(
            "the announcements replayed ({} active) differ from the joins rows ({} active): {:?}",
            replayed.len(),
            stored.len(),
            replayed.symmetric_difference(&stored).take(5).collect::<Vec<_>>()
        ));
    }

    // --- every accepted join exactly once: each 201 the clients got is one announcement, and
    // every announced join was told to a client
    let mut accepted: HashMap<&str, (&str, usize)> = HashMap::new();
    for t in told {
        for (join_id, _, _, status) in &t.accepted {
            accepted.entry(join_id).or_insert((status, 0)).1 += 1;
        }
    }
    let mut starts: HashMap<&str, Vec<&str>> = HashMap::new();
    for a in announced.iter().filter(|a| a.ty == "join.confirmed" || a.ty == "join.waitlisted") {
        starts.entry(&a.join_id).or_default().push(&a.status);
    }
    for (join_id, (status, n)) in &accepted {
        if *n != 1 {
            failures.push(format!("join {join_id} accepted {n} times by the clients"));
        }
        match starts.get(join_id).map(Vec::as_slice) {
            Some([s]) if s == status => {}
            other => failures.push(format!("join {join_id} accepted as {status}, announced as {other:?}")),
        }
    }
    let phantom: Vec<&&str> = starts.keys().filter(|j| !accepted.contains_key(*j)).collect();
    if !phantom.is_empty() {
        failures.push(format!(
            "{} join(s) stored that no client was told of: {:?}",
            phantom.len(),
            &phantom[..phantom.len().min(5)]
        ));
    }

    // --- promotions the clients saw were announced
    let promoted: BTreeSet<&str> =
        announced.iter().filter(|a| a.ty == "join.promoted").map(|a| a.join_id.as_str()).collect();
    for t in told {
        for j in &t.promoted {
            if !promoted.contains(j.as_str()) {
                failures.push(format!("a client saw join {j} promoted; no join.promoted for it"));
            }
        }
    }

    // --- the clients' final view = the stored rows, and = what the API answers them
    let stored_by_pair: HashMap<(&str, &str), (&str, &str)> =
        rows.iter().map(|r| ((r.2.as_str(), r.1.as_str()), (r.0.as_str(), r.3.as_str()))).collect();
    for (t, u) in told.iter().zip(users) {
        for (event, slot) in &t.slots {
            let stored = stored_by_pair.get(&(u.id.as_str(), event.as_str()));
            let ok = match (slot, stored) {
                (Slot::Out, None) => true,
                (Slot::In { join_id, .. }, Some((id, _))) => join_id == id,
                _ => false,
            };
            if !ok {
                failures.push(format!("user {} event {event}: client believes {slot:?}, stored {stored:?}", u.id));
            }
            let a = api.get(&format!("/api/v1/events/{event}/join"), Some(&u.token)).await;
            let answered = match a.status {
                200 if a.body["status"] == "confirmed" || a.body["status"] == "waitlisted" => Some((
                    a.body["join_id"].as_str().unwrap_or_default().to_owned(),
                    a.body["status"].as_str().unwrap_or_default().to_owned(),
                )),
                200 | 404 => None,
                s => {
                    failures.push(format!("GET my join answered {s}: {}", a.body));
                    continue;
                }
            };
            let stored = stored.map(|(i, s)| ((*i).to_owned(), (*s).to_owned()));
            if answered != stored {
                failures.push(format!("user {} event {event}: the API answers {answered:?}, stored {stored:?}", u.id));
            }
        }
    }
}

/// The clients' notification lists against the notifier's database, per user.
pub async fn notifications_seen(pg: &Postgres, p: &Platform, api: &Api, users: &[User], failures: &mut Vec<String>) {
    let stored = notified(pg, p);
    for u in users {
        let mine: HashMap<(String, String), usize> = stored
            .iter()
            .filter(|((user, _, _), _)| *user == u.id)
            .map(|((_, kind, event), n)| ((kind.clone(), event.clone()), usize::try_from(*n).unwrap()))
            .collect();
        match super::load::notifications(api, u).await {
            Ok(seen) if seen == mine => {}
            Ok(seen) => failures.push(format!("user {}: the API lists {seen:?}, stored {mine:?}", u.id)),
            Err(e) => failures.push(format!("user {}: {e}", u.id)),
        }
    }
}
