//! `load-bench`: City Events' user mix through the gateway, as an open model (arrivals at a set
//! rate, whatever the answers' latency), with HDR histograms per operation and the generator's
//! own CPU.
//!
//! ```text
//! load-bench --base http://127.0.0.1:8080 --rate 100 --secs 30
//! load-bench --base … --step 50:50:20:2000      # from 50/s, +50/s every 20 s, up to 2000/s,
//!                                               # until a bound or an error is passed
//! load-bench --base … --burst 50:10              # 50 people join one event at once, then
//!                                               # leave at once; 10 rounds
//! ```
//!
//! Before it measures, it signs up `--organizers` organizers, who publish `--events` events over
//! five cities, and `--persons` people (sign-ups cost an Argon2 hash each, so they are made
//! first, a few at a time). Each arrival is then one operation, picked by weight:
//!
//! | operation | weight | request |
//! |---|---|---|
//! | `browse` | 40 | `GET /api/v1/events?city=…&limit=20` |
//! | `search` | 8 | `GET /api/v1/events?q=…&limit=20` (a word of the titles) |
//! | `view` | 24 | `GET /api/v1/events/{id}` |
//! | `notifications` | 12 | `GET /api/v1/me/notifications?limit=20`, signed in |
//! | `join` / `leave` | 8 | `POST /api/v1/events/{id}/join` with an `Idempotency-Key`, or `DELETE` of the one joined |
//! | `login` | 4 | `POST /api/v1/auth/login` (Argon2 verification) |
//! | `signup` | 2 | `POST /api/v1/auth/register` |
//! | `publish` | 2 | an organizer's `POST /api/v1/events` then `POST …/publish` |
//!
//! A latency runs from when the arrival was due, not from when it was sent, so a generator that
//! falls behind shows as latency, not as a lower rate (no coordinated omission). Arrivals past
//! `--max-in-flight` outstanding ones are counted as `generator_saturated` errors. Any answer
//! other than the operation's success (a 409 on a join that was already made, a 404 on a leave
//! already undone are successes) is an error; the exit status is 1 if any step saw an error.
//! A 503 with `Retry-After` (the platform refusing load it cannot take) is shown apart, with its
//! latency, and is an error too unless `--refusals-ok`. `--mix OP=WEIGHT,…` replaces the mix.
//! `--timeline` adds each step's table second by second (every operation together, by the second
//! an arrival was due): whether a p99 comes from a stall of a second or two or from the whole step.
//!
//! Every person comes from one address: run it against a gateway whose rate limits are raised
//! (bench/load/run.sh does).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const CITIES: [&str; 5] = ["Lisbon", "Porto", "Braga", "Coimbra", "Faro"];
/// Words in every seeded title, for `search`.
const WORDS: [&str; 4] = ["harbour", "jazz", "market", "river"];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Op {
    Browse,
    Search,
    View,
    Notifications,
    Join,
    Leave,
    Login,
    Signup,
    Publish,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Browse => "browse",
            Op::Search => "search",
            Op::View => "view",
            Op::Notifications => "notifications",
            Op::Join => "join",
            Op::Leave => "leave",
            Op::Login => "login",
            Op::Signup => "signup",
            Op::Publish => "publish",
        }
    }
}

/// The mix: (operation, weight); `Join` stands for join-or-leave.
const MIX: [(Op, u32); 8] = [
    (Op::Browse, 40),
    (Op::Search, 8),
    (Op::View, 24),
    (Op::Notifications, 12),
    (Op::Join, 8),
    (Op::Login, 4),
    (Op::Signup, 2),
    (Op::Publish, 2),
];

struct Args {
    base: String,
    rate: f64,
    secs: u64,
    /// From, by, seconds per step, up to.
    step: Option<(f64, f64, u64, f64)>,
    persons: usize,
    organizers: usize,
    events: usize,
    max_in_flight: usize,
    /// Per-operation p99 bounds in ms for step mode.
    bounds: Vec<(String, f64)>,
    mix: Vec<(Op, u32)>,
    refusals_ok: bool,
    /// Seconds to wait between seeding and the first step.
    start_after: u64,
    /// Burst mode: this many people join one event at once, then leave at once, for so many
    /// rounds.
    burst: Option<(usize, usize)>,
    /// Print each step's latencies second by second too (by the second an arrival was due).
    timeline: bool,
}

fn usage() -> String {
    "usage: load-bench --base URL [--rate PER_S --secs S | --step FROM:BY:SECS:UPTO] \
     [--persons N] [--organizers N] [--events N] [--max-in-flight N] [--bound OP=MS]… \
     [--mix OP=WEIGHT,…] [--refusals-ok] [--start-after S] [--burst PEOPLE:ROUNDS] [--timeline]"
        .into()
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        base: String::new(),
        rate: 50.0,
        secs: 30,
        step: None,
        persons: 50,
        organizers: 5,
        events: 100,
        max_in_flight: 2_000,
        bounds: Vec::new(),
        mix: MIX.to_vec(),
        refusals_ok: false,
        start_after: 0,
        burst: None,
        timeline: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--refusals-ok" {
            a.refusals_ok = true;
            continue;
        }
        if flag == "--timeline" {
            a.timeline = true;
            continue;
        }
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value; {}", usage()));
        let num = |v: String| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--base" => a.base = value()?.trim_end_matches('/').to_owned(),
            "--rate" => a.rate = num(value()?)?,
            "--secs" => a.secs = num(value()?)? as u64,
            "--persons" => a.persons = num(value()?)? as usize,
            "--organizers" => a.organizers = (num(value()?)? as usize).max(1),
            "--events" => a.events = (num(value()?)? as usize).max(1),
            "--start-after" => a.start_after = num(value()?)? as u64,
            "--max-in-flight" => a.max_in_flight = (num(value()?)? as usize).max(1),
            "--step" => {
                let v = value()?;
                let p: Vec<f64> =
                    v.split(':').map(str::parse).collect::<Result<_, _>>().map_err(|e| format!("--step: {e}"))?;
                let [from, by, secs, upto] = p[..] else { return Err(format!("--step is FROM:BY:SECS:UPTO, not {v}")) };
                a.step = Some((from, by, secs as u64, upto));
            }
            "--mix" => {
                // `browse=10,login=1`: only these, with these weights.
                let v = value()?;
                let mut mix = Vec::new();
                for part in v.split(',') {
                    let (name, w) = part.split_once('=').ok_or_else(|| format!("--mix is OP=WEIGHT,…, not {v}"))?;
                    let op = MIX
                        .iter()
                        .map(|(o, _)| *o)
                        .find(|o| o.name() == name.trim())
                        .ok_or_else(|| format!("--mix: no operation {name} (join stands for join-or-leave)"))?;
                    mix.push((op, w.trim().parse().map_err(|e| format!("--mix {part}: {e}"))?));
                }
                a.mix = mix;
            }
            "--burst" => {
                let v = value()?;
                let (people, rounds) = v
                    .split_once(':')
                    .and_then(|(p, r)| Some((p.parse::<usize>().ok()?, r.parse::<usize>().ok()?)))
                    .filter(|(p, r)| *p > 0 && *r > 0)
                    .ok_or_else(|| format!("--burst is PEOPLE:ROUNDS (both above 0), not {v}"))?;
                a.burst = Some((people, rounds));
            }
            "--bound" => {
                let v = value()?;
                let (op, ms) = v.split_once('=').ok_or_else(|| format!("--bound is OP=MS, not {v}"))?;
                a.bounds.push((op.to_owned(), ms.parse().map_err(|e| format!("--bound {v}: {e}"))?));
            }
            other => return Err(format!("unknown argument {other}; {}", usage())),
        }
    }
    if a.base.is_empty() {
        return Err(usage());
    }
    if a.rate.is_nan() || a.rate <= 0.0 {
        return Err("--rate must be above 0".into());
    }
    if let Some((people, _)) = a.burst {
        a.persons = a.persons.max(people);
    }
    if a.step.is_some() && a.bounds.is_empty() {
        a.bounds = vec![("browse".into(), 20.0), ("join".into(), 50.0)];
    }
    Ok(a)
}

/// A person signed in, and the event they joined (if any).
struct Person {
    email: String,
    token: String,
    /// Held while an arrival joins or leaves for this person (across the request, so a tokio
    /// mutex).
    joined: tokio::sync::Mutex<Option<String>>,
}

struct World {
    /// The operations' weights (`MIX`, or `--mix`).
    mix: Vec<(Op, u32)>,
    http: reqwest::Client,
    base: String,
    events: Mutex<Vec<String>>,
    persons: Vec<Person>,
    organizers: Vec<String>,
    seq: AtomicU64,
}

/// splitmix64: enough randomness to pick operations and targets, from one counter.
fn rand(seq: &AtomicU64) -> u64 {
    let mut z = seq.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pick<'a, T>(seq: &AtomicU64, items: &'a [T]) -> Option<&'a T> {
    if items.is_empty() { None } else { items.get((rand(seq) % items.len() as u64) as usize) }
}

/// What an operation came to.
enum Outcome {
    Ok,
    /// A 503 with `Retry-After`: the platform refusing load it cannot take, as it should.
    Refused,
    /// An answer or a failure that counts as an error, with what it was.
    Error(String),
}

/// How many errors are shown one by one on stderr.
const MAX_ERRORS_SHOWN: usize = 10;
static ERRORS_SHOWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn status_is(r: Result<reqwest::Response, reqwest::Error>, ok: &[u16]) -> Outcome {
    match r {
        Ok(r) if ok.contains(&r.status().as_u16()) => Outcome::Ok,
        Ok(r) if r.status().as_u16() == 503 && r.headers().contains_key("retry-after") => Outcome::Refused,
        Ok(r) => {
            // The problem's code (or type) with the status, so that errors of one kind add up
            // and say what they were.
            let status = r.status().as_u16();
            let url = r.url().path().to_owned();
            let request_id = r.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
            let text = r.text().await.unwrap_or_default();
            show_error(&format!("HTTP {status} on {url}, request id {request_id}: {text}"));
            let problem = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|p| p.get("code").or_else(|| p.get("type")).and_then(Value::as_str).map(str::to_owned));
            match problem {
                Some(kind) => Outcome::Error(format!("HTTP {status} {kind}")),
                None => Outcome::Error(format!("HTTP {status}")),
            }
        }
        Err(e) => {
            show_error(&format!("{e:?}"));
            if e.is_timeout() {
                Outcome::Error("timeout".into())
            } else if e.is_connect() {
                Outcome::Error("connect".into())
            } else {
                Outcome::Error("transport".into())
            }
        }
    }
}

/// Writes one of the first [`MAX_ERRORS_SHOWN`] errors to stderr, to find it in the services'
/// logs (by request id) or to tell a reset from a time-out.
fn show_error(what: &str) {
    if ERRORS_SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < MAX_ERRORS_SHOWN {
        eprintln!("error: {what}");
    }
}

impl World {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn register(&self, email: &str) -> Result<reqwest::Response, reqwest::Error> {
        self.http
            .post(self.url("/api/v1/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD, "name": "load"}))
            .send()
            .await
    }

    async fn login(&self, email: &str) -> Result<reqwest::Response, reqwest::Error> {
        self.http.post(self.url("/api/v1/auth/login")).json(&json!({"email": email, "password": PASSWORD})).send().await
    }

    /// Signs up and in: the access token.
    async fn sign_up(&self, kind: &str) -> Result<(String, String), String> {
        let email = format!("{kind}-{:016x}@load.example", rand(&self.seq));
        let r = self.register(&email).await.map_err(|e| format!("register: {e}"))?;
        if r.status().as_u16() != 202 {
            return Err(format!("register: HTTP {}", r.status()));
        }
        let r = self.login(&email).await.map_err(|e| format!("login: {e}"))?;
        if r.status().as_u16() != 200 {
            return Err(format!("login: HTTP {}", r.status()));
        }
        let body: Value = r.json().await.map_err(|e| format!("login: {e}"))?;
        let token = body["access_token"].as_str().ok_or("login: no access_token")?.to_owned();
        Ok((email, token))
    }

    /// An organizer's new event, published: its id.
    async fn publish(&self, token: &str, n: u64) -> Result<String, Outcome> {
        let starts = std::time::SystemTime::now() + Duration::from_secs(2 * 86_400 + (n % 500) * 3_600);
        let begin = humantime::format_rfc3339_seconds(starts).to_string();
        let end = humantime::format_rfc3339_seconds(starts + Duration::from_secs(7_200)).to_string();
        let word = WORDS[(n as usize) % WORDS.len()];
        let body = json!({
            "title": format!("Load {word} night {n}"),
            "description": format!("A {word} evening for the load test"),
            "city": CITIES[(n as usize) % CITIES.len()],
            "category": "music",
            "starts_at": begin,
            "ends_at": end,
            "capacity": 100_000,
        });
        let auth = format!("Bearer {token}");
        let r = self.http.post(self.url("/api/v1/events")).header("authorization", &auth).json(&body).send().await;
        let id = match r {
            Ok(r) if r.status().as_u16() == 201 => {
                let v: Value = r.json().await.map_err(|e| Outcome::Error(format!("create: {e}")))?;
                v["id"].as_str().map(str::to_owned).ok_or_else(|| Outcome::Error("create: no id".into()))?
            }
            other => return Err(status_is(other, &[201]).await),
        };
        let r = self
            .http
            .post(self.url(&format!("/api/v1/events/{id}/publish")))
            .header("authorization", &auth)
            .json(&json!({}))
            .send()
            .await;
        match status_is(r, &[200]).await {
            Outcome::Ok => Ok(id),
            e => Err(e),
        }
    }

    /// Runs one arrival's operation: which it was, and how it went.
    async fn run(&self, op: Op) -> (Op, Outcome) {
        let s = &self.seq;
        match op {
            Op::Browse => {
                let city = pick(s, &CITIES).copied().unwrap_or("Lisbon");
                let r = self.http.get(self.url(&format!("/api/v1/events?city={city}&limit=20"))).send().await;
                (op, status_is(r, &[200]).await)
            }
            Op::Search => {
                let word = pick(s, &WORDS).copied().unwrap_or("jazz");
                let r = self.http.get(self.url(&format!("/api/v1/events?q={word}&limit=20"))).send().await;
                (op, status_is(r, &[200]).await)
            }
            Op::View => {
                let id = self.random_event();
                let r = self.http.get(self.url(&format!("/api/v1/events/{id}"))).send().await;
                (op, status_is(r, &[200]).await)
            }
            Op::Notifications => {
                let Some(p) = pick(s, &self.persons) else { return (op, Outcome::Error("no persons".into())) };
                let r = self
                    .http
                    .get(self.url("/api/v1/me/notifications?limit=20"))
                    .header("authorization", format!("Bearer {}", p.token))
                    .send()
                    .await;
                (op, status_is(r, &[200]).await)
            }
            Op::Join | Op::Leave => self.join_or_leave().await,
            Op::Login => {
                let Some(p) = pick(s, &self.persons) else { return (op, Outcome::Error("no persons".into())) };
                (op, status_is(self.login(&p.email).await, &[200]).await)
            }
            Op::Signup => {
                let email = format!("signup-{:016x}@load.example", rand(s));
                (op, status_is(self.register(&email).await, &[202]).await)
            }
            Op::Publish => {
                let Some(t) = pick(s, &self.organizers) else { return (op, Outcome::Error("no organizers".into())) };
                match self.publish(t, rand(s) % 100_000).await {
                    Ok(id) => {
                        if let Ok(mut e) = self.events.lock() {
                            e.push(id);
                        }
                        (op, Outcome::Ok)
                    }
                    Err(e) => (op, e),
                }
            }
        }
    }

    fn random_event(&self) -> String {
        let events = self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pick(&self.seq, &events).cloned().unwrap_or_default()
    }

    /// A person joins an event, or leaves the one they joined. A person busy with another
    /// arrival's join is skipped for the next.
    async fn join_or_leave(&self) -> (Op, Outcome) {
        let n = self.persons.len();
        let start = (rand(&self.seq) % n.max(1) as u64) as usize;
        for i in 0..n {
            let p = &self.persons[(start + i) % n];
            let Ok(mut joined) = p.joined.try_lock() else { continue };
            let auth = format!("Bearer {}", p.token);
            return match joined.take() {
                Some(ev) => {
                    let r = self
                        .http
                        .delete(self.url(&format!("/api/v1/events/{ev}/join")))
                        .header("authorization", auth)
                        .send()
                        .await;
                    let o = status_is(r, &[204, 404]).await;
                    if matches!(o, Outcome::Error(_)) {
                        *joined = Some(ev);
                    }
                    (Op::Leave, o)
                }
                None => {
                    let ev = self.random_event();
                    let r = self
                        .http
                        .post(self.url(&format!("/api/v1/events/{ev}/join")))
                        .header("authorization", auth)
                        .header("idempotency-key", format!("{:016x}{:016x}", rand(&self.seq), rand(&self.seq)))
                        .send()
                        .await;
                    let o = status_is(r, &[200, 201, 409]).await;
                    if matches!(o, Outcome::Ok) {
                        *joined = Some(ev);
                    }
                    (Op::Join, o)
                }
            };
        }
        (Op::Join, Outcome::Error("every person busy".into()))
    }
}

/// Latencies and errors of one step, per operation.
struct Tally {
    latency: BTreeMap<Op, Histogram<u64>>,
    /// How long refusals (503 with `Retry-After`) took to come.
    refused: BTreeMap<Op, Histogram<u64>>,
    errors: BTreeMap<Op, BTreeMap<String, u64>>,
    saturated: u64,
    /// Arrivals that came to an end (answered, refused or failed).
    finished: u64,
    /// Whether a refusal is an error (the default) or an answer (`--refusals-ok`).
    refusals_ok: bool,
    /// Per second of the step (the second an arrival was due): every operation's answered
    /// latencies, and how many arrivals were refused or failed.
    timeline: Vec<(Histogram<u64>, u64)>,
}

const OPS: [Op; 9] =
    [Op::Browse, Op::Search, Op::View, Op::Notifications, Op::Join, Op::Leave, Op::Login, Op::Signup, Op::Publish];

/// A latency histogram: microseconds, 1 µs to 60 s, three significant digits.
fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

impl Tally {
    /// A tally for a step of `seconds` (0 in burst mode, which keeps no timeline).
    fn new(refusals_ok: bool, seconds: u64) -> Result<Self, String> {
        let (mut latency, mut refused) = (BTreeMap::new(), BTreeMap::new());
        for op in OPS {
            latency.insert(op, histogram()?);
            refused.insert(op, histogram()?);
        }
        let timeline = (0..seconds).map(|_| Ok((histogram()?, 0))).collect::<Result<_, String>>()?;
        Ok(Self { latency, refused, errors: BTreeMap::new(), saturated: 0, finished: 0, refusals_ok, timeline })
    }

    /// Records an arrival that came to an end; `second` is the second of the step it was due
    /// in (none in burst mode).
    fn record(&mut self, op: Op, took: Duration, outcome: Outcome, second: Option<usize>) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).clamp(1, 60_000_000);
        self.finished += 1;
        if let Some((h, failed)) = second.and_then(|s| self.timeline.get_mut(s)) {
            match outcome {
                Outcome::Ok => h.saturating_record(micros),
                _ => *failed += 1,
            }
        }
        match outcome {
            Outcome::Ok => {
                if let Some(h) = self.latency.get_mut(&op) {
                    h.saturating_record(micros);
                }
            }
            Outcome::Refused => {
                if let Some(h) = self.refused.get_mut(&op) {
                    h.saturating_record(micros);
                }
                if !self.refusals_ok {
                    *self.errors.entry(op).or_default().entry("HTTP 503 (Retry-After)".into()).or_default() += 1;
                }
            }
            Outcome::Error(what) => *self.errors.entry(op).or_default().entry(what).or_default() += 1,
        }
    }

    fn errors(&self) -> u64 {
        self.saturated + self.errors.values().flat_map(BTreeMap::values).sum::<u64>()
    }

    fn p99_ms(&self, op: &str) -> Option<f64> {
        self.latency
            .iter()
            .find(|(o, h)| o.name() == op && !h.is_empty())
            .map(|(_, h)| h.value_at_quantile(0.99) as f64 / 1000.0)
    }
}

/// This process's CPU time (user + system).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // utime and stime are the 14th and 15th fields, the 12th and 13th after the command name;
    // clock ticks, 100 a second on Linux.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// One step at `rate` arrivals/s for `secs`: its tally, how many arrivals it made, its
/// generator CPU.
async fn step(
    world: &Arc<World>,
    rate: f64,
    secs: u64,
    max_in_flight: usize,
    refusals_ok: bool,
) -> Result<(Tally, u64, Duration, Duration), String> {
    let tally = Arc::new(Mutex::new(Tally::new(refusals_ok, secs)?));
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let mix = &world.mix;
    let total: u32 = mix.iter().map(|(_, w)| w).sum::<u32>().max(1);
    let cpu0 = cpu_time();
    let started = tokio::time::Instant::now();
    let end = started + Duration::from_secs(secs);
    let mut issued: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        // Asleep until the next arrival is due (the timer wheel's millisecond at most late), then
        // every arrival due by then.
        let next = started + Duration::from_secs_f64(issued as f64 / rate);
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next).await;
        let now = tokio::time::Instant::now().min(end);
        // Arrival i is due at i / rate: those due so far are 0 ..= elapsed × rate.
        let due = ((now - started).as_secs_f64() * rate) as u64 + 1;
        while issued < due {
            let at = started + Duration::from_secs_f64(issued as f64 / rate);
            let second = usize::try_from((at - started).as_secs()).unwrap_or(usize::MAX);
            issued += 1;
            let mut w = (rand(&world.seq) % u64::from(total)) as u32;
            let op = mix
                .iter()
                .find(|(_, weight)| {
                    if w < *weight {
                        true
                    } else {
                        w -= weight;
                        false
                    }
                })
                .map_or(Op::Browse, |(o, _)| *o);
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                if let Ok(mut t) = tally.lock() {
                    t.saturated += 1;
                }
                continue;
            };
            let (world, tally) = (world.clone(), tally.clone());
            tasks.spawn(async move {
                let (op, outcome) = world.run(op).await;
                let took = at.elapsed();
                drop(permit);
                if let Ok(mut t) = tally.lock() {
                    t.record(op, took, outcome, Some(second));
                }
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let wall = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    let tally = Arc::try_unwrap(tally)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .ok_or("a step's tally is still shared after its arrivals ended")?;
    Ok((tally, issued, cpu, wall))
}

/// Burst mode: in each round the first `people` persons join one event at once (each with an
/// idempotency key), then leave it at once; a latency runs from the round's start. One event
/// per round, in turn.
async fn burst(
    world: &Arc<World>,
    people: usize,
    rounds: usize,
    refusals_ok: bool,
) -> Result<(Tally, u64, Duration, Duration), String> {
    let mut tally = Tally::new(refusals_ok, 0)?;
    let events = world.events.lock().map_err(|e| e.to_string())?.clone();
    let cpu0 = cpu_time();
    let started = Instant::now();
    let mut issued = 0;
    for round in 0..rounds {
        let ev = events.get(round % events.len().max(1)).ok_or("burst mode needs an event")?;
        for op in [Op::Join, Op::Leave] {
            let t0 = Instant::now();
            let calls = world.persons[..people].iter().map(|p| async move {
                let req = match op {
                    Op::Join => world
                        .http
                        .post(world.url(&format!("/api/v1/events/{ev}/join")))
                        .header("idempotency-key", format!("{:016x}{:016x}", rand(&world.seq), rand(&world.seq))),
                    _ => world.http.delete(world.url(&format!("/api/v1/events/{ev}/join"))),
                };
                let r = req.header("authorization", format!("Bearer {}", p.token)).send().await;
                (status_is(r, if op == Op::Join { &[200, 201] } else { &[204] }).await, t0.elapsed())
            });
            for (outcome, took) in futures_util::future::join_all(calls).await {
                tally.record(op, took, outcome, None);
                issued += 1;
            }
        }
        // Let the joins' messages (seats, notifications) settle between rounds.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok((tally, issued, cpu_time().saturating_sub(cpu0), started.elapsed()))
}

fn report(rate: f64, tally: &Tally, issued: u64, cpu: Duration, wall: Duration) {
    let done = tally.finished;
    // Burst mode offers no rate (0).
    let offered = if rate > 0.0 { format!("{rate:.0} arrivals/s offered") } else { format!("{done} requests") };
    println!(
        "\n### {offered}: {:.1}/s answered, {} errors; generator CPU {:.1} % of a core, {:.0} µs per request",
        done as f64 / wall.as_secs_f64(),
        tally.errors(),
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        if issued > 0 { cpu.as_secs_f64() * 1e6 / issued as f64 } else { 0.0 },
    );
    println!(
        "\n| operation | answered | refused (503) | errors | p50 ms | p90 ms | p99 ms | max ms | refusal p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    for op in OPS {
        let errs: u64 = tally.errors.get(&op).map_or(0, |e| e.values().sum());
        let refused = tally.refused.get(&op).filter(|h| !h.is_empty());
        let (n_refused, refusal_p99) =
            refused.map_or((0, "–".to_owned()), |h| (h.len(), format!("{:.1}", ms(h, 0.99))));
        match tally.latency.get(&op).filter(|h| !h.is_empty()) {
            Some(h) => println!(
                "| {} | {} | {n_refused} | {errs} | {:.1} | {:.1} | {:.1} | {:.1} | {refusal_p99} |",
                op.name(),
                h.len(),
                ms(h, 0.5),
                ms(h, 0.9),
                ms(h, 0.99),
                h.max() as f64 / 1000.0
            ),
            None if errs > 0 || n_refused > 0 => {
                println!("| {} | 0 | {n_refused} | {errs} | – | – | – | – | {refusal_p99} |", op.name())
            }
            None => {}
        }
    }
    for (op, kinds) in &tally.errors {
        for (what, n) in kinds {
            println!("error: {} {what} ×{n}", op.name());
        }
    }
    if tally.saturated > 0 {
        println!("error: generator_saturated ×{} (more than --max-in-flight outstanding)", tally.saturated);
    }
}

/// The step second by second (`--timeline`): a stall that holds up every operation at once
/// shows as one or two seconds whose p99 jumps, a saturated platform as a p50 that climbs.
fn report_timeline(tally: &Tally) {
    println!("\n| second | answered | refused or failed | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    for (second, (h, failed)) in tally.timeline.iter().enumerate() {
        if h.is_empty() {
            println!("| {second} | 0 | {failed} | – | – | – |");
        } else {
            println!(
                "| {second} | {} | {failed} | {:.1} | {:.1} | {:.1} |",
                h.len(),
                ms(h, 0.5),
                ms(h, 0.99),
                h.max() as f64 / 1000.0
            );
        }
    }
}

async fn seed(args: &Args) -> Result<Arc<World>, String> {
    // reqwest is built without a default provider in this workspace: an https `--base` needs one.
    keel::http::client::install_tls_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.max_in_flight)
        .build()
        .map_err(|e| e.to_string())?;
    let mut world = World {
        mix: args.mix.clone(),
        http,
        base: args.base.clone(),
        events: Mutex::new(Vec::new()),
        persons: Vec::new(),
        organizers: Vec::new(),
        // From the clock: a second run against the same platform must not sign up the first
        // run's people again, and reuse their idempotency keys for other joins (409).
        seq: AtomicU64::new(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0x5EED, |d| d.as_nanos() as u64),
        ),
    };
    for _ in 0..args.organizers {
        world.organizers.push(world.sign_up("organizer").await?.1);
    }
    let mut made = Vec::new();
    let per = args.events.div_ceil(args.organizers);
    for (o, token) in world.organizers.iter().enumerate() {
        for i in 0..per {
            if made.len() >= args.events {
                break;
            }
            let n = (o * per + i) as u64;
            made.push(world.publish(token, n).await.map_err(|e| match e {
                Outcome::Error(e) => format!("seeding events: {e}"),
                Outcome::Refused => "seeding events: HTTP 503 (Retry-After)".into(),
                Outcome::Ok => "seeding events".into(),
            })?);
        }
    }
    world.events = Mutex::new(made);
    // A few sign-ups at a time: each is an Argon2 hash on the auth service.
    let mut persons = Vec::new();
    while persons.len() < args.persons {
        let n = (args.persons - persons.len()).min(4);
        for s in futures_util::future::join_all((0..n).map(|_| world.sign_up("person"))).await {
            let (email, token) = s?;
            persons.push(Person { email, token, joined: tokio::sync::Mutex::new(None) });
        }
    }
    world.persons = persons;
    Ok(Arc::new(world))
}

async fn run(args: Args) -> Result<bool, String> {
    let seeded = Instant::now();
    let world = seed(&args).await?;
    eprintln!(
        "seeded {} organizers, {} events, {} persons in {:.1} s",
        args.organizers,
        args.events,
        world.persons.len(),
        seeded.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(args.start_after)).await;
    let mut clean = true;
    if let Some((people, rounds)) = args.burst {
        let (tally, issued, cpu, wall) = burst(&world, people, rounds, args.refusals_ok).await?;
        println!("\n## {people} people joining one event at once, then leaving at once, {rounds} rounds");
        report(0.0, &tally, issued, cpu, wall);
        return Ok(tally.errors() == 0);
    }
    match args.step {
        None => {
            let (tally, issued, cpu, wall) =
                step(&world, args.rate, args.secs, args.max_in_flight, args.refusals_ok).await?;
            report(args.rate, &tally, issued, cpu, wall);
            if args.timeline {
                report_timeline(&tally);
            }
            clean = tally.errors() == 0;
        }
        Some((from, by, secs, upto)) => {
            let mut rate = from;
            let mut best = None;
            while rate <= upto {
                let (tally, issued, cpu, wall) = step(&world, rate, secs, args.max_in_flight, args.refusals_ok).await?;
                report(rate, &tally, issued, cpu, wall);
                if args.timeline {
                    report_timeline(&tally);
                }
                let over: Vec<String> = args
                    .bounds
                    .iter()
                    .filter_map(|(op, bound)| {
                        tally.p99_ms(op).filter(|p| p > bound).map(|p| format!("{op} p99 {p:.1} ms > {bound} ms"))
                    })
                    .collect();
                if tally.errors() > 0 || !over.is_empty() {
                    println!("\nstopped at {rate:.0}/s: {} errors; {}", tally.errors(), over.join(", "));
                    clean = tally.errors() == 0;
                    break;
                }
                best = Some(rate);
                rate += by;
            }
            let bounds: Vec<String> = args.bounds.iter().map(|(o, b)| format!("{o} p99 ≤ {b} ms")).collect();
            match best {
                Some(r) => println!("\nceiling: {r:.0} arrivals/s with {} and no errors", bounds.join(", ")),
                None => println!("\nno step met {} with no errors", bounds.join(", ")),
            }
        }
    }
    Ok(clean)
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("load-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("load-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
