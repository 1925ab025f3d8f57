//! Fault injection: City Events distributed (`deploy/local/run-distributed.sh`: five processes in
//! production profile) under a steady mixed load, with one dependency taken away at a time, then
//! the invariants checked in the databases. Every experiment starts its own PostgreSQL, Redis and
//! broker (NATS JetStream, RabbitMQ or Kafka) on free ports, so stopping one never touches the shared
//! servers; the experiments run one at a time, each bounded in time. See docs/operations.md
//! ("Fault-injection suite").
//!
//! Run one: `cargo test -p cityevents --test faults redis_down -- --nocapture` (the report of each
//! experiment is printed; a failed invariant fails the test with every finding listed).
#![allow(missing_docs, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "faults/checks.rs"]
mod checks;
#[path = "faults/load.rs"]
mod load;
#[path = "faults/platform.rs"]
mod platform;
#[path = "faults/servers.rs"]
mod servers;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cityevents_common::testing::{SmtpOptions, SmtpSink, decode_quoted_printable};
use load::{Api, Class, Load};
use platform::{Bus, Platform};
use servers::{Kafka, Nats, Postgres, Rabbit, Redis};

/// Users of the mixed load (plus the organizer and the probe).
const USERS: usize = 24;
/// Capacities of the load's events: small, so waitlists and promotions are frequent.
const CAPACITIES: [u32; 4] = [2, 3, 4, 5];
/// Load before the fault.
const WARM: Duration = Duration::from_secs(5);
/// Load after the dependency is back.
const AFTER: Duration = Duration::from_secs(10);
/// How long the load goes on after the dependency is back while the probe has not succeeded.
const RECOVERY_WAIT: Duration = Duration::from_secs(30);
/// How long the clients retry requests whose outcome they do not know, after the load.
const SETTLE_BOUND: Duration = Duration::from_secs(60);
/// Once the load has stopped, the outboxes must be empty within this (the backlog is a few
/// hundred rows; a relay that drains thousands a second needs well under a second).
const DRAIN_BOUND: Duration = Duration::from_secs(10);
/// The same after a service was killed: the rows its relay had claimed wait for their lease
/// (`outbox.lease`, 2 s) to end, and the service to be back.
const DRAIN_BOUND_AFTER_KILL: Duration = Duration::from_secs(15);
/// Once the outboxes are empty, every announcement must have become a notification within this.
const NOTIFY_BOUND: Duration = Duration::from_secs(30);
/// The target is a first success within 1 s of Redis, PostgreSQL or NATS answering
/// again; asserted with room for a loaded CI machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(3);
/// Join-to-notification p99 of the changes made after a replica was killed (the issue's
/// target: a dead relay's leases end within `outbox.lease`, 2 s).
const REPLICA_P99_BOUND: Duration = Duration::from_secs(3);
/// A whole experiment, set-up to clean-up.
const EXPERIMENT_BOUND: Duration = Duration::from_secs(300);

/// One experiment at a time: each runs five services, its own servers and a load on a 2-core CI
/// machine, and a fault in one must not be measured by another.
/// (An async mutex: it is held across the experiment's awaits; a panic does not poison it.)
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// --- small shared helpers --------------------------------------------------------------------

pub fn unique(base: &str) -> String {
    format!("{base}{}", uuid::Uuid::now_v7().simple().to_string().get(20..).unwrap())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The program's path on `PATH` (or its bare name, which then fails the existence check).
pub fn which(program: &str) -> String {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file()))
        .map_or_else(|| program.to_owned(), |p| p.display().to_string())
}

/// A free port on 127.0.0.1, never the same twice in this process.
pub fn free_port() -> u16 {
    keel::testing::unused_port()
}

pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Runs `cmd`; panics with its output when it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Anonymous `GET /api/v1/events` every 100 ms for up to 30 s while a killed service comes back:
/// until `back` says it runs again and, given `answering`, that path of it answers 404 (or the
/// script ends). The answers by status, and when it was back.
async fn reads_until_back(
    platform: &mut Platform,
    back: impl Fn(&Platform) -> bool,
    answering: Option<&str>,
) -> (BTreeMap<u16, usize>, Option<Instant>) {
    let api = Api::new(&platform.base);
    let until = Instant::now() + Duration::from_secs(30);
    let mut reads: BTreeMap<u16, usize> = BTreeMap::new();
    while Instant::now() < until {
        let a = api.get("/api/v1/events?city=Faultville&limit=5", None).await;
        *reads.entry(a.status).or_default() += 1;
        if back(platform) {
            let answers = match answering {
                Some(path) => api.get(path, None).await.status == 404,
                None => true,
            };
            if answers {
                return (reads, Some(Instant::now()));
            }
        }
        if !platform.script_alive() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (reads, None)
}

/// Confirms `email`'s address with the link mailed to it at sign-up.
async fn verify(api: &Api, smtp: &SmtpSink, email: &str) {
    let header = format!("X-Sink-Rcpt-To: {email}\r\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        let mail = smtp
            .messages()
            .into_iter()
            .map(|m| decode_quoted_printable(&m))
            .find(|m| m.contains(&header) && m.contains("Subject: Confirm your e-mail address"));
        if let Some(at) = mail.as_deref().and_then(|m| m.find("?token=").map(|i| (m, i + "?token=".len()))) {
            let (m, i) = at;
            break m[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect::<String>();
        }
        assert!(Instant::now() < deadline, "no confirmation mail to {email}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let r = api.post("/api/v1/auth/verify-email", None, serde_json::json!({ "token": token })).await;
    assert!((200..300).contains(&r.status), "verify {email}: {} {}", r.status, r.body);
}

fn unix_ms(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

// --- the experiments -------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Broker {
    Nats,
    Rabbit,
    Kafka,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `pg_ctl stop -m fast`, 20 s, start again.
    PostgresStopped,
    /// The notifier's database refuses connections for 30 s (`ALLOW_CONNECTIONS false` and its
    /// sessions terminated), then allows them again.
    NotifierDatabaseRefusing,
    /// The broker stopped for 30 s (Kafka: unreachable, see `servers::Kafka`).
    BrokerDown,
    /// Redis stopped for 20 s.
    RedisDown,
    /// `kill -<signal>` of the joins service under load.
    Signal(&'static str),
    /// The joins service replaced under load by run-distributed.sh (SIGHUP to its supervisor:
    /// the new instance shares the ports, http.reuse_port): nothing may fail.
    Replace,
    /// Two replicas of every service; `kill -9` of one joins replica (its relay holding leases
    /// under load) and one notifier replica (messages in flight). The other replicas carry on:
    /// join-to-notification p99 stays within [`REPLICA_P99_BOUND`] after the kill.
    ReplicasKilled,
}

impl Fault {
    /// Instances of every service the experiment runs.
    fn replicas(self) -> u32 {
        if matches!(self, Self::ReplicasKilled) { 2 } else { 1 }
    }

    /// Whether it kills a service's process (whose relay's leases must end before its rows go).
    fn kills(self) -> bool {
        matches!(self, Self::Signal(_) | Self::ReplicasKilled)
    }
}

/// Everything an experiment started; dropped (stopped, removed) whatever happens.
struct World {
    pg: Postgres,
    redis: Redis,
    nats: Option<Nats>,
    rabbit: Option<Rabbit>,
    kafka: Option<Kafka>,
    platform: Option<Platform>,
}

impl Drop for World {
    fn drop(&mut self) {
        // The platform goes before the servers it uses.
        drop(self.platform.take());
    }
}

/// What the fault step measured.
#[derive(Default)]
struct FaultTimes {
    /// When the fault began.
    down: Option<Instant>,
    /// When the dependency answered again (`Instant`, and wall-clock ms for database times).
    back: Option<(Instant, i64)>,
    /// NATS: the Unix ms at which the first joins event reached the restarted server.
    first_message: Option<std::sync::mpsc::Receiver<i64>>,
    /// A killed service did not come back: what depends on it cannot be checked.
    service_lost: bool,
    /// When replicas were killed (Unix ms).
    killed_ms: Option<i64>,
}

fn prerequisites(broker: Broker) -> bool {
    Postgres::available()
        && Redis::available()
        && match broker {
            Broker::Nats => Nats::available(),
            Broker::Rabbit => Rabbit::available(),
            Broker::Kafka => Kafka::available(),
        }
        && servers::tool("openssl", &which("openssl")).is_some()
}

async fn experiment(name: &str, broker: Broker, fault: Fault) {
    let _one = ONE_AT_A_TIME.lock().await;
    if !prerequisites(broker) {
        return;
    }
    match tokio::time::timeout(EXPERIMENT_BOUND, body(name, broker, fault)).await {
        Ok(()) => {}
        Err(_) => panic!("{name}: not finished within {EXPERIMENT_BOUND:?}"),
    }
}

async fn body(name: &str, broker: Broker, fault: Fault) {
    let started = Instant::now();
    let mut world = blocking(|| {
        let pg = Postgres::start();
        let redis = Redis::start();
        let (nats, rabbit, kafka) = match broker {
            Broker::Nats => (Some(Nats::start()), None, None),
            Broker::Rabbit => (None, Some(Rabbit::start()), None),
            Broker::Kafka => (None, None, Some(Kafka::start())),
        };
        World { pg, redis, nats, rabbit, kafka, platform: None }
    });
    let bus = match (&world.nats, &world.rabbit, &world.kafka) {
        (Some(n), _, _) => Bus { backend: "nats", url: n.url() },
        (_, Some(r), _) => Bus { backend: "rabbitmq", url: r.url.clone() },
        (_, _, Some(k)) => Bus { backend: "kafka", url: k.url() },
        _ => unreachable!(),
    };
    let redis_url = world.redis.url();
    // With replicas, the users' mail is read (and counted: none may arrive twice).
    let smtp = if fault.replicas() > 1 {
        match SmtpSink::start(&SmtpOptions::default()) {
            Some(s) => Some(s),
            None => return,
        }
    } else {
        None
    };
    let smtp_port = smtp.as_ref().map(SmtpSink::port);
    world.platform = Some(blocking(|| Platform::start(&world.pg, &redis_url, &bus, fault.replicas(), smtp_port)));
    let base = world.platform.as_ref().unwrap().base.clone();
    let api = Api::new(&base);

    // --- set-up: an organizer, the users, the events, the probe's user and event
    let org = api.user("organizer").await;
    let mut users = Vec::new();
    for chunk in (0..USERS).collect::<Vec<_>>().chunks(6) {
        let api = &api;
        let made =
            futures_util::future::join_all(chunk.iter().map(|i| async move { api.user(&format!("u{i}")).await })).await;
        users.extend(made);
    }
    let mut events = Vec::new();
    for (i, cap) in CAPACITIES.iter().enumerate() {
        events.push(api.event(&org, &format!("Fault {i}"), *cap).await);
    }
    let probe_user = api.user("probe").await;
    if let Some(smtp) = &smtp {
        // Verified, so promotions and removals are mailed to them during the load.
        for u in &users {
            verify(&api, smtp, &u.email).await;
        }
    }
    let probe_event = api.event(&org, "Probe", 0).await;
    let setup = started.elapsed();

    // --- load, fault, load
    let load = Load::start(&api, &users, &events, &probe_user, &probe_event);
    tokio::time::sleep(WARM).await;
    let mut findings: Vec<String> = Vec::new();
    let mut report = String::new();
    let times = inject(&mut world, fault, &mut findings, &mut report).await;
    // At least AFTER more load, and on until the probe succeeds (at most RECOVERY_WAIT), so a
    // slow recovery is measured rather than cut off.
    let after_from = times.back.map_or_else(Instant::now, |b| b.0);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let recovered = load::first_success(&load.records.lock().unwrap(), &[Class::Probe], after_from).is_some();
        if after_from.elapsed() >= RECOVERY_WAIT || (recovered && after_from.elapsed() >= AFTER) {
            break;
        }
        if times.service_lost || !world.platform.as_mut().unwrap().script_alive() {
            break;
        }
    }
    // Unknown outcomes are settled by retrying, unless there is no platform left to ask.
    let up = !times.service_lost && world.platform.as_mut().unwrap().script_alive();
    let settle = if up { SETTLE_BOUND } else { Duration::ZERO };
    let (told, records) = load.finish(settle).await;
    let mut all_users = users.clone();
    all_users.push(probe_user.clone());

    let platform = world.platform.as_mut().unwrap();
    let alive = platform.script_alive();
    let pg = &world.pg;
    let p = world.platform.as_ref().unwrap();

    // --- answers
    let tally = load::tally(&records);
    let count = |pred: &dyn Fn(Class, u16) -> bool| {
        tally.iter().filter(|((c, s), _)| pred(*c, *s)).map(|(_, n)| n).sum::<usize>()
    };
    let total = count(&|_, _| true);
    let five_hundreds = count(&|_, s| s == 500);
    let _ = writeln!(
        report,
        "set-up {:.1} s; {} requests; answers by class and status: {:?}",
        setup.as_secs_f64(),
        total,
        tally
    );
    let _ = writeln!(
        report,
        "5xx: {} (500: {five_hundreds}, 502: {}, 503: {}, 504: {}); no answer: {}",
        count(&|_, s| s >= 500),
        count(&|_, s| s == 502),
        count(&|_, s| s == 503),
        count(&|_, s| s == 504),
        count(&|_, s| s == 0)
    );
    if five_hundreds > 0 {
        findings.push(format!("{five_hundreds} answer(s) were 500 (a dependency fault must be a 503)"));
    }
    let unanswered = count(&|_, s| s >= 500 || s == 0);
    if matches!(fault, Fault::Replace) && unanswered > 0 {
        findings.push(format!("{unanswered} request(s) got a 5xx or no answer while joins was replaced"));
    }

    // --- recovery: the first success after the dependency answered again
    if let Some((back, back_ms)) = times.back {
        let write = load::first_success(&records, &[Class::Probe], back);
        let any = load::first_success(&records, &[Class::Probe, Class::Join, Class::Leave, Class::List], back);
        let _ = writeln!(report, "first probe write after recovery: {write:?}; first success of any kind: {any:?}");
        let bounded = matches!(fault, Fault::PostgresStopped | Fault::RedisDown);
        match write {
            Some(d) if bounded && d > RECOVERY_BOUND => {
                findings.push(format!(
                    "first success {:.2} s after the dependency was back (bound {RECOVERY_BOUND:?})",
                    d.as_secs_f64()
                ));
            }
            None if bounded => {
                findings.push(format!("no success within {RECOVERY_WAIT:?} of the dependency being back"))
            }
            _ => {}
        }
        if matches!(fault, Fault::BrokerDown) && alive {
            // The outbox records a batch once all of it is confirmed, so its `sent_at` trails
            // the first publish by a batch's publishing time: reported, not bounded.
            let first_sent = pg.query(
                &p.database("joins"),
                &format!("SELECT MIN(sent_at) FROM keel_outbox WHERE status = 1 AND sent_at >= {back_ms}"),
            );
            let first = first_sent.first().and_then(|r| r.first()).and_then(|v| v.parse::<i64>().ok());
            let _ = writeln!(
                report,
                "first outbox row recorded as sent after the broker was back: {:?} ms",
                first.map(|f| f - back_ms)
            );
            if first.is_none() {
                findings.push("nothing published after the broker was back".into());
            }
            // The relay's first publish, as the restarted server saw it.
            if let Some(rx) = times.first_message.as_ref() {
                let arrived = rx.recv_timeout(Duration::from_secs(1)).ok();
                let after = arrived.map(|a| Duration::from_millis(u64::try_from(a - back_ms).unwrap_or(0)));
                let _ = writeln!(report, "first joins event on the restarted NATS after: {after:?}");
                match after {
                    Some(d) if d > RECOVERY_BOUND => findings.push(format!(
                        "the relay's first publish reached NATS {:.2} s after it was back (bound {RECOVERY_BOUND:?})",
                        d.as_secs_f64()
                    )),
                    None => findings.push("no joins event reached the restarted NATS".into()),
                    _ => {}
                }
            }
        }
        if matches!(fault, Fault::NotifierDatabaseRefusing) {
            let first = pg.query(
                &p.database("notifier"),
                // When it was written: the time in its id (UUIDv7, milliseconds); `created_at` is
                // when the change it tells of happened.
                &format!(
                    "SELECT MIN(w) FROM (SELECT ('x' || substr(replace(id, '-', ''), 1, 12))::bit(48)::bigint AS w \
                     FROM notifications) n WHERE w >= {back_ms}"
                ),
            );
            let first = first.first().and_then(|r| r.first()).and_then(|v| v.parse::<i64>().ok());
            let _ = writeln!(
                report,
                "first notification written after the database was back: {:?} ms",
                first.map(|f| f - back_ms)
            );
        }
    }
    if let (Some(down), Some((back, _))) = (times.down, times.back) {
        let _ = writeln!(report, "dependency away for {:.1} s", (back - down).as_secs_f64());
    }

    if !alive {
        findings.push("run-distributed.sh exited: the platform stopped".into());
    } else if times.service_lost {
        // Its outbox, its consumers and its answers are gone: the checks below would only
        // repeat that.
    } else {
        // --- the outboxes drain
        let drain_bound = if fault.kills() { DRAIN_BOUND_AFTER_KILL } else { DRAIN_BOUND };
        let drain_start = Instant::now();
        let mut drained = None;
        let mut backlog = 0;
        while drain_start.elapsed() < drain_bound {
            let pending: i64 = ["events", "joins"]
                .iter()
                .map(|s| pg.count(&p.database(s), "SELECT COUNT(*) FROM keel_outbox WHERE status = 0"))
                .sum();
            backlog = backlog.max(pending);
            if pending == 0 {
                drained = Some(drain_start.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = writeln!(report, "outbox pending at the load's end: {backlog}; empty after {drained:?}");
        if drained.is_none() {
            let left: i64 = ["events", "joins"]
                .iter()
                .map(|s| pg.count(&p.database(s), "SELECT COUNT(*) FROM keel_outbox WHERE status = 0"))
                .sum();
            findings
                .push(format!("outbox not empty {drain_bound:?} after the load ended: {left} pending (was {backlog})"));
        }
        let dead_rows: i64 = ["events", "joins"]
            .iter()
            .map(|s| pg.count(&p.database(s), "SELECT COUNT(*) FROM keel_outbox WHERE status = 2"))
            .sum();
        if dead_rows > 0 {
            findings.push(format!("{dead_rows} outbox row(s) dead"));
        }

        // --- every announcement becomes exactly one notification
        let notify_start = Instant::now();
        let (mut announced, mut expected, mut got);
        loop {
            announced = checks::announced(pg, p);
            expected = checks::expected_notifications(&announced);
            got = checks::notified(pg, p);
            if expected == got || notify_start.elapsed() > NOTIFY_BOUND {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let want: i64 = expected.values().sum();
        let have: i64 = got.values().sum();
        let _ = writeln!(report, "notifications: {have} of {want} after {:.1} s", notify_start.elapsed().as_secs_f64());
        if expected != got {
            let mut missing = 0;
            let mut doubled = 0;
            for k in expected.keys().chain(got.keys()).collect::<BTreeSet<_>>() {
                let (e, g) = (expected.get(k).copied().unwrap_or(0), got.get(k).copied().unwrap_or(0));
                missing += (e - g).max(0);
                doubled += (g - e).max(0);
            }
            let promotions = |m: &BTreeMap<(String, String, String), i64>| {
                m.iter().filter(|((_, k, _), _)| k == "join.promoted").map(|(_, n)| n).sum::<i64>()
            };
            for line in checks::trace_missing(pg, p, &expected, &got) {
                let _ = writeln!(report, "{line}");
            }
            findings.push(format!(
                "notifications differ from the announcements after {NOTIFY_BOUND:?}: {missing} missing, {doubled} extra \
                 (promotions announced {}, notified {})",
                promotions(&expected),
                promotions(&got)
            ));
        }

        // --- one participation's notifications appear in the order of its changes
        let (compared, inverted, example) = checks::feed_order(pg, p, &announced);
        let _ =
            writeln!(report, "feed order: {inverted} of {compared} participations with several notifications inverted");
        if inverted > 0 {
            findings.push(format!(
                "the feed shows {inverted} of {compared} participations' notifications out of order, e.g. {}",
                example.unwrap_or_default()
            ));
        }

        // --- after a replica died, changes still reach their users promptly
        if let (Fault::ReplicasKilled, Some(killed_ms)) = (fault, times.killed_ms) {
            let mut lags: Vec<i64> = pg
                .query(
                    &p.database("notifier"),
                    // Written (the time in its UUIDv7 id) less changed (`created_at`, the change's
                    // time), in ms, for the changes made after the kill.
                    &format!(
                        "SELECT ('x' || substr(replace(id, '-', ''), 1, 12))::bit(48)::bigint - created_at / 1000 \
                         FROM notifications WHERE kind LIKE 'join.%' AND created_at >= {}",
                        killed_ms * 1000
                    ),
                )
                .iter()
                .filter_map(|r| r.first()?.parse().ok())
                .collect();
            lags.sort_unstable();
            let at = |q: f64| lags.get(((lags.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied();
            let (p50, p99, max) = (at(0.5), at(0.99), lags.last().copied());
            let _ = writeln!(
                report,
                "join to notification after the kill: {} notifications, p50 {p50:?} ms, p99 {p99:?} ms, max {max:?} ms",
                lags.len()
            );
            match p99 {
                None => findings.push("no notification of a change made after the kill".into()),
                Some(p) if u128::try_from(p).unwrap_or(0) > REPLICA_P99_BOUND.as_millis() => findings.push(format!(
                    "join-to-notification p99 after a replica was killed: {p} ms (bound {REPLICA_P99_BOUND:?})"
                )),
                Some(_) => {}
            }
        }

        // --- no mail twice (each carries its request's Message-ID)
        if let Some(smtp) = &smtp {
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for m in smtp.messages() {
                let id = m.lines().find_map(|l| l.strip_prefix("Message-ID: ")).unwrap_or("").trim().to_owned();
                *seen.entry(id).or_default() += 1;
            }
            let twice: Vec<&String> = seen.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
            let _ = writeln!(report, "mail: {} sent, {} twice", seen.values().sum::<usize>(), twice.len());
            if !twice.is_empty() {
                findings.push(format!("{} mail(s) sent twice: {twice:?}", twice.len()));
            }
        }

        // --- nothing dead-lettered
        let dlq: Vec<(&str, usize)> =
            ["cityevents.joins", "cityevents.events"].iter().map(|t| (*t, p.dead_letters(t))).collect();
        let dead_logged = p.count_lines("dead-lettering");
        let _ = writeln!(report, "dead letters: {dlq:?}; `dead-lettering` log lines: {dead_logged}");
        let dead: usize = dlq.iter().map(|(_, n)| n).sum();
        if dead > 0 || dead_logged > 0 {
            findings.push(format!("dead-lettered: {dead} on the broker {dlq:?}, {dead_logged} logged"));
        }

        // --- capacity, FIFO, exactly once, the clients' view
        for t in &told {
            for u in &t.unexpected {
                findings.push(format!("client: {u}"));
            }
        }
        checks::invariants(pg, p, &api, &all_users, &told, &mut findings).await;
        checks::notifications_seen(pg, p, &api, &all_users, &mut findings).await;
    }

    let _ = writeln!(report, "took {:.1} s", started.elapsed().as_secs_f64());
    eprintln!("=== {name}\n{report}=== {name}: {} finding(s)\n{}", findings.len(), findings.join("\n"));
    assert!(
        findings.is_empty(),
        "{name}: {} finding(s):\n{}\n--- report\n{report}",
        findings.len(),
        findings.join("\n")
    );
}

/// Applies `fault`; returns when the dependency is back (or the service restarted).
/// For `lasting`, samples every service's `/health/ready` every 250 ms, running `also` between
/// samples; what each answered, by status.
async fn readiness_while<F: Future<Output = ()>>(
    platform: &Platform,
    lasting: Duration,
    also: impl Fn() -> F,
) -> BTreeMap<&'static str, BTreeMap<u16, usize>> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let until = Instant::now() + lasting;
    let mut seen: BTreeMap<&'static str, BTreeMap<u16, usize>> = BTreeMap::new();
    while Instant::now() < until {
        for (svc, port) in &platform.ports {
            let status = match http.get(format!("http://127.0.0.1:{port}/health/ready")).send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            *seen.entry(svc).or_default().entry(status).or_default() += 1;
        }
        also().await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    seen
}

/// A finding for each service that answered its readiness probe with anything but 200 while
/// `dependency`, which every service serves around, was down.
fn readiness_findings(
    dependency: &str,
    seen: &BTreeMap<&'static str, BTreeMap<u16, usize>>,
    findings: &mut Vec<String>,
    report: &mut String,
) {
    let _ = writeln!(report, "/health/ready while {dependency} was down: {seen:?}");
    for (svc, statuses) in seen {
        let unready: usize = statuses.iter().filter(|(s, _)| **s != 200).map(|(_, n)| n).sum();
        if unready > 0 {
            findings.push(format!(
                "{svc}: /health/ready not 200 {unready} times while {dependency} was down ({statuses:?}), \
                 though it serves around it"
            ));
        }
    }
}

async fn inject(world: &mut World, fault: Fault, findings: &mut Vec<String>, report: &mut String) -> FaultTimes {
    let mut t = FaultTimes::default();
    let now_back = || Some((Instant::now(), unix_ms(SystemTime::now())));
    match fault {
        Fault::PostgresStopped => {
            t.down = Some(Instant::now());
            blocking(|| world.pg.stop());
            tokio::time::sleep(Duration::from_secs(20)).await;
            blocking(|| world.pg.up());
            t.back = now_back();
        }
        Fault::NotifierDatabaseRefusing => {
            let db = world.platform.as_ref().unwrap().database("notifier");
            t.down = Some(Instant::now());
            world.pg.query("postgres", &format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"));
            world.pg.query(
                "postgres",
                &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"),
            );
            tokio::time::sleep(Duration::from_secs(30)).await;
            world.pg.query("postgres", &format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"));
            t.back = now_back();
        }
        Fault::BrokerDown => {
            t.down = Some(Instant::now());
            if let Some(n) = world.nats.as_mut() {
                blocking(|| n.stop());
            }
            if let Some(r) = world.rabbit.as_mut() {
                blocking(|| r.stop());
            }
            if let Some(k) = world.kafka.as_mut() {
                k.stop();
            }
            // Every route goes on without the broker (the outboxes hold what goes out): no
            // service may turn unready, or Kubernetes would empty its Service.
            let ready = readiness_while(world.platform.as_ref().unwrap(), Duration::from_secs(30), || async {}).await;
            readiness_findings("the broker", &ready, findings, report);
            if let Some(n) = world.nats.as_mut() {
                blocking(|| n.up());
                t.back = now_back();
                let subject = format!("{}.cityevents.joins", world.platform.as_ref().unwrap().prefix);
                t.first_message = Some(blocking(|| n.first_message(&subject)));
            }
            if let Some(r) = world.rabbit.as_mut() {
                blocking(|| r.up());
                t.back = now_back();
            }
            if let Some(k) = world.kafka.as_mut() {
                k.up();
                t.back = now_back();
            }
        }
        Fault::RedisDown => {
            // Anonymous reads while Redis is down, apart from the load's.
            let api = Api::new(&world.platform.as_ref().unwrap().base);
            t.down = Some(Instant::now());
            blocking(|| world.redis.stop());
            let reads = std::sync::Mutex::new(BTreeMap::<u16, usize>::new());
            let pages = std::sync::Mutex::new(BTreeMap::<u16, usize>::new());
            // The gateway serves reads, pages as API, under its local limiter: it stays ready.
            let ready = readiness_while(world.platform.as_ref().unwrap(), Duration::from_secs(20), || async {
                let a = api.get("/api/v1/events?city=Faultville&limit=5", None).await;
                *reads.lock().unwrap().entry(a.status).or_default() += 1;
                let page = api.get("/", None).await;
                *pages.lock().unwrap().entry(page.status).or_default() += 1;
            })
            .await;
            blocking(|| world.redis.up());
            let (reads, pages) = (reads.into_inner().unwrap(), pages.into_inner().unwrap());
            readiness_findings("Redis", &ready, findings, report);
            let _ = writeln!(report, "anonymous GET / while Redis was down: {pages:?}");
            let failed_pages: usize = pages.iter().filter(|(s, _)| **s != 200).map(|(_, n)| n).sum();
            if failed_pages > 0 {
                findings.push(format!(
                    "GET / (the site) while Redis was down: {failed_pages} not answered 200 ({pages:?})"
                ));
            }
            t.back = now_back();
            let failed: usize = reads.iter().filter(|(s, _)| **s != 200).map(|(_, n)| n).sum();
            let _ = writeln!(report, "anonymous GET /api/v1/events while Redis was down: {reads:?}");
            if failed > 0 {
                findings.push(format!(
                    "anonymous GET /api/v1/events while Redis was down: {failed} of {} not answered 200 ({reads:?})",
                    reads.values().sum::<usize>()
                ));
            }
        }
        Fault::Replace => {
            let platform = world.platform.as_mut().unwrap();
            t.down = Some(Instant::now());
            let old = platform.replace("joins");
            platform.wait_for_line("joins (replaced) stopped", Duration::from_secs(90));
            let replaced = Instant::now();
            let new = platform.service_pid("joins");
            let _ = writeln!(
                report,
                "joins {old} replaced by {new:?}; the old one stopped {:.1} s after SIGHUP",
                (replaced - t.down.unwrap()).as_secs_f64()
            );
            if new.is_none() || new == Some(old) {
                findings.push(format!("joins was not replaced (old {old}, now {new:?})"));
            }
            t.back = Some((replaced, unix_ms(SystemTime::now())));
        }
        Fault::ReplicasKilled => {
            let platform = world.platform.as_mut().unwrap();
            let leased = |pg: &Postgres| {
                pg.count(
                    &platform.database("joins"),
                    "SELECT COUNT(*) FROM keel_outbox WHERE status = 0 AND claim IS NOT NULL",
                )
            };
            let before: Vec<(&str, Vec<u32>)> =
                ["joins", "notifier"].iter().map(|s| (*s, platform.service_pids(s))).collect();
            for (svc, pids) in &before {
                assert_eq!(pids.len(), 2, "two {svc} replicas: {pids:?}");
            }
            t.down = Some(Instant::now());
            t.killed_ms = Some(unix_ms(SystemTime::now()));
            let leased_at_kill = leased(&world.pg);
            let victims: Vec<(&str, u32)> = before.iter().map(|(svc, pids)| (*svc, pids[0])).collect();
            for (svc, pid) in &victims {
                let ok = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status().unwrap();
                assert!(ok.success(), "kill -KILL {svc} {pid}");
            }
            // The other replicas answer throughout; the supervisors restart the killed ones.
            let back = |p: &Platform| {
                victims.iter().all(|(svc, old)| {
                    let now = p.service_pids(svc);
                    now.len() == 2 && !now.contains(old)
                })
            };
            let (reads, restarted) = reads_until_back(platform, back, None).await;
            let _ = writeln!(
                report,
                "kill -9 of {victims:?} ({leased_at_kill} joins outbox rows leased at the kill): anonymous GET \
                 /api/v1/events meanwhile {reads:?}; both replaced after {:?}",
                restarted.map(|r| r - t.down.unwrap())
            );
            let failed: usize = reads.iter().filter(|(s, _)| **s != 200).map(|(_, n)| n).sum();
            if failed > 0 {
                findings.push(format!("after the replicas were killed, GET /api/v1/events failed {failed} time(s)"));
            }
            match restarted {
                Some(r) => t.back = Some((r, unix_ms(SystemTime::now()))),
                None => findings.push("the killed replicas were not running again within 30 s".into()),
            }
        }
        Fault::Signal(signal) => {
            let platform = world.platform.as_mut().unwrap();
            t.down = Some(Instant::now());
            let old = platform.signal("joins", signal);
            // The platform keeps answering what does not need joins, and joins comes back.
            let back = |p: &Platform| p.service_pid("joins").is_some_and(|p| p != old);
            let answering = "/api/v1/events/00000000-0000-7000-8000-000000000000/counts";
            let (reads, restarted) = reads_until_back(platform, back, Some(answering)).await;
            let _ = writeln!(
                report,
                "kill -{signal} joins: anonymous GET /api/v1/events meanwhile {reads:?}; joins answering again after {:?}",
                restarted.map(|r| r - t.down.unwrap())
            );
            let failed: usize = reads.iter().filter(|(s, _)| **s != 200).map(|(_, n)| n).sum();
            if failed > 0 {
                findings.push(format!(
                    "after kill -{signal} of joins, GET /api/v1/events failed {failed} time(s): {reads:?}"
                ));
            }
            match restarted {
                Some(r) => t.back = Some((r, unix_ms(SystemTime::now()))),
                None => {
                    t.service_lost = true;
                    findings.push(format!("joins not running and answering again within 30 s of kill -{signal}"));
                }
            }
        }
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_20s() {
    experiment("postgres_stopped_20s", Broker::Nats, Fault::PostgresStopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notifier_database_refusing_30s() {
    experiment("notifier_database_refusing_30s", Broker::Nats, Fault::NotifierDatabaseRefusing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_down_30s() {
    experiment("nats_down_30s", Broker::Nats, Fault::BrokerDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_down_30s() {
    experiment("rabbitmq_down_30s", Broker::Rabbit, Fault::BrokerDown).await;
}

/// The broker unreachable for 30 s (see [`Kafka`]: tansu keeps its log in memory, so the
/// outage is the network's, as a stopped broker's host would look to its clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_down_30s() {
    experiment("kafka_down_30s", Broker::Kafka, Fault::BrokerDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_20s() {
    experiment("redis_down_20s", Broker::Nats, Fault::RedisDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_sigterm_under_load() {
    experiment("joins_sigterm_under_load", Broker::Nats, Fault::Signal("TERM")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_replaced_under_load() {
    experiment("joins_replaced_under_load", Broker::Nats, Fault::Replace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_kill9_under_load() {
    experiment("joins_kill9_under_load", Broker::Nats, Fault::Signal("KILL")).await;
}

/// Two replicas of every service (RabbitMQ: its consumers share each queue, so one
/// participation's messages reach both notifier replicas); one joins and one notifier replica
/// killed under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_one_of_each_killed_under_load() {
    experiment("two_replicas_one_of_each_killed_under_load", Broker::Rabbit, Fault::ReplicasKilled).await;
}
