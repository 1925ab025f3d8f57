//! A bounded, steady mixed load through the gateway, from clients that remember what they were
//! told: every join accepted (its id and whether confirmed or waitlisted), every leave, every
//! promotion they saw. A request whose outcome is unknown (5xx, timeout) is retried later with the
//! same `Idempotency-Key` (a leave: again), so at the end every client knows its state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery staple";

/// What a request was, for the counts and the recovery times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Anonymous `GET /api/v1/events`.
    List,
    /// `GET /api/v1/events/{id}/join` with a token.
    MyJoin,
    Login,
    Join,
    Leave,
    /// The probe's join or leave (its own user and event, every 100 ms, 2 s timeout).
    Probe,
}

#[derive(Debug, Clone, Copy)]
pub struct Rec {
    pub class: Class,
    /// 0: no answer (connection error or timeout).
    pub status: u16,
    pub end: Instant,
}

#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Api {
    pub fn new(base: &str) -> Self {
        keel::http::client::install_tls_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(4))
            .build()
            .unwrap();
        Self { http, base: base.to_owned() }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        key: Option<&str>,
        timeout: Duration,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).timeout(timeout);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let Ok(resp) = req.send().await else { return Answer { status: 0, body: Value::Null } };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, body }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.call(Method::GET, path, token, None, None, Duration::from_secs(10)).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.call(Method::POST, path, token, Some(body), None, Duration::from_secs(10)).await
    }

    /// A new account, logged in.
    pub async fn user(&self, name: &str) -> User {
        let email = format!("{}@example.com", super::unique(name));
        let r =
            self.post("/api/v1/auth/register", None, json!({"email": email, "password": PASSWORD, "name": name})).await;
        assert_eq!(r.status, 202, "register: {}", r.body);
        let t = self.post("/api/v1/auth/login", None, json!({"email": email, "password": PASSWORD})).await;
        assert_eq!(t.status, 200, "login: {}", t.body);
        let token = t.body["access_token"].as_str().unwrap().to_owned();
        let me = self.call(Method::GET, "/api/v1/me", Some(&token), None, None, Duration::from_secs(10)).await;
        assert_eq!(me.status, 200, "me: {}", me.body);
        User { id: me.body["id"].as_str().unwrap().to_owned(), email, token }
    }

    /// A published event of `capacity`, once joins knows it (its counts answer).
    pub async fn event(&self, org: &User, title: &str, capacity: u32) -> String {
        let fmt = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
        let starts = time::OffsetDateTime::now_utc() + time::Duration::days(7);
        let body = json!({
            "title": title, "description": "fault injection", "city": "Faultville", "category": "other",
            "starts_at": fmt(starts), "ends_at": fmt(starts + time::Duration::hours(2)), "capacity": capacity,
        });
        let r = self.post("/api/v1/events", Some(&org.token), body).await;
        assert_eq!(r.status, 201, "create event: {}", r.body);
        let id = r.body["id"].as_str().unwrap().to_owned();
        let r = self.post(&format!("/api/v1/events/{id}/publish"), Some(&org.token), json!({})).await;
        assert_eq!(r.status, 200, "publish: {}", r.body);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.get(&format!("/api/v1/events/{id}/counts"), None).await.status != 200 {
            assert!(Instant::now() < deadline, "joins never learned about event {id}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        id
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub token: String,
}

/// A client's belief about one (user, event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    Out,
    In {
        join_id: String,
        waitlisted: bool,
    },
    /// A join whose answer was lost: retried with the same key.
    Joining {
        key: String,
    },
    /// A leave whose answer was lost: retried.
    Leaving {
        join_id: String,
    },
}

/// What one client was told.
#[derive(Debug, Default)]
pub struct Told {
    /// Every join accepted: (join id, event id, user id, "confirmed" | "waitlisted").
    pub accepted: Vec<(String, String, String, String)>,
    /// Join ids the client saw go from waitlisted to confirmed.
    pub promoted: BTreeSet<String>,
    /// Answers no state of the client explains (a 4xx it did not expect…).
    pub unexpected: Vec<String>,
    /// Its final belief per event id.
    pub slots: BTreeMap<String, Slot>,
}

/// A small deterministic generator (no dependency for this).
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Self(uuid::Uuid::now_v7().as_u128() as u64 | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    settle: Arc<Mutex<Duration>>,
    pub records: Arc<Mutex<Vec<Rec>>>,
    tasks: Vec<tokio::task::JoinHandle<Told>>,
}

/// One client: `user` on `events`; `probe`: toggles join/leave only, every 100 ms with a 2 s
/// timeout (for recovery times), instead of the mixed load.
struct Client {
    api: Api,
    user: User,
    events: Vec<String>,
    probe: bool,
    told: Told,
    records: Arc<Mutex<Vec<Rec>>>,
    rng: Rng,
}

impl Client {
    fn timeout(&self) -> Duration {
        if self.probe { Duration::from_secs(2) } else { Duration::from_secs(10) }
    }

    async fn request(
        &mut self,
        class: Class,
        method: Method,
        path: &str,
        token: bool,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Answer {
        let class = if self.probe { Class::Probe } else { class };
        let token = token.then(|| self.user.token.clone());
        let a = self.api.call(method, path, token.as_deref(), body, key, self.timeout()).await;
        self.records.lock().unwrap().push(Rec { class, status: a.status, end: Instant::now() });
        a
    }

    /// One join or leave step on `event` from its current slot; whether the outcome is known.
    async fn toggle(&mut self, event: &str) -> bool {
        let slot = self.told.slots.get(event).cloned().unwrap_or(Slot::Out);
        let path = format!("/api/v1/events/{event}/join");
        match slot {
            Slot::Out | Slot::Joining { .. } => {
                let key = match slot {
                    Slot::Joining { key } => key,
                    _ => super::unique("k"),
                };
                let a = self.request(Class::Join, Method::POST, &path, true, None, Some(&key)).await;
                match a.status {
                    201 | 200 => {
                        let join_id = a.body["join_id"].as_str().unwrap_or_default().to_owned();
                        let status = a.body["status"].as_str().unwrap_or_default().to_owned();
                        if join_id.is_empty() || !(status == "confirmed" || status == "waitlisted") {
                            self.told.unexpected.push(format!("join answered {}: {}", a.status, a.body));
                        }
                        self.told.accepted.push((
                            join_id.clone(),
                            event.to_owned(),
                            self.user.id.clone(),
                            status.clone(),
                        ));
                        self.told
                            .slots
                            .insert(event.to_owned(), Slot::In { join_id, waitlisted: status == "waitlisted" });
                        true
                    }
                    0 | 429 | 500..=599 => {
                        self.told.slots.insert(event.to_owned(), Slot::Joining { key });
                        false
                    }
                    s => {
                        self.told.unexpected.push(format!("join {event} (key {key}) answered {s}: {}", a.body));
                        self.told.slots.insert(event.to_owned(), Slot::Out);
                        true
                    }
                }
            }
            Slot::In { join_id, .. } | Slot::Leaving { join_id } => {
                let a = self.request(Class::Leave, Method::DELETE, &path, true, None, None).await;
                match a.status {
                    204 => {
                        self.told.slots.insert(event.to_owned(), Slot::Out);
                        true
                    }
                    // Not joined: an earlier leave whose answer was lost did happen, or the
                    // gateway retried this one after it had happened. Had the join itself been
                    // lost, the announcements and the rows say so (checks.rs).
                    404 => {
                        self.told.slots.insert(event.to_owned(), Slot::Out);
                        true
                    }
                    0 | 429 | 500..=599 => {
                        self.told.slots.insert(event.to_owned(), Slot::Leaving { join_id });
                        false
                    }
                    s => {
                        self.told.unexpected.push(format!("leave {event} ({join_id}) answered {s}: {}", a.body));
                        self.told.slots.insert(event.to_owned(), Slot::Out);
                        true
                    }
                }
            }
        }
    }

    async fn my_join(&mut self, event: &str) {
        let a =
            self.request(Class::MyJoin, Method::GET, &format!("/api/v1/events/{event}/join"), true, None, None).await;
        if a.status == 200
            && let Some(Slot::In { join_id, waitlisted: true }) = self.told.slots.get(event).cloned()
            && a.body["join_id"].as_str() == Some(join_id.as_str())
            && a.body["status"] == "confirmed"
        {
            self.told.promoted.insert(join_id.clone());
            self.told.slots.insert(event.to_owned(), Slot::In { join_id, waitlisted: false });
        }
    }

    async fn run(mut self, stop: Arc<AtomicBool>, settle: Arc<Mutex<Duration>>) -> Told {
        while !stop.load(Ordering::Relaxed) {
            let pause = if self.probe { 100 } else { 60 + self.rng.below(140) };
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let event = self.events[usize::try_from(self.rng.below(self.events.len() as u64)).unwrap()].clone();
            if self.probe {
                self.toggle(&event).await;
                continue;
            }
            match self.rng.below(100) {
                0..40 => {
                    self.request(
                        Class::List,
                        Method::GET,
                        "/api/v1/events?city=Faultville&limit=20",
                        false,
                        None,
                        None,
                    )
                    .await;
                }
                40..50 => self.my_join(&event).await,
                50..53 => {
                    let body = json!({"email": self.user.email, "password": PASSWORD});
                    self.request(Class::Login, Method::POST, "/api/v1/auth/login", false, Some(body), None).await;
                }
                _ => {
                    self.toggle(&event).await;
                }
            }
        }
        // Settle what is unknown: retry until every slot is known (bounded).
        let bound = *settle.lock().unwrap();
        let deadline = Instant::now() + bound;
        loop {
            let open: Vec<String> = self
                .told
                .slots
                .iter()
                .filter(|(_, s)| matches!(s, Slot::Joining { .. } | Slot::Leaving { .. }))
                .map(|(e, _)| e.clone())
                .collect();
            if open.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                self.told.unexpected.push(format!("outcome still unknown after {bound:?} of retries: {open:?}"));
                break;
            }
            for e in open {
                if !self.toggle(&e).await {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        self.told
    }
}

impl Load {
    /// Starts one client per user of `users` on `events`, and a probe (`probe_user` on
    /// `probe_event`).
    pub fn start(api: &Api, users: &[User], events: &[String], probe_user: &User, probe_event: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let settle = Arc::new(Mutex::new(Duration::ZERO));
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut clients: Vec<Client> = users
            .iter()
            .map(|u| Client {
                api: api.clone(),
                user: u.clone(),
                events: events.to_vec(),
                probe: false,
                told: Told::default(),
                records: Arc::clone(&records),
                rng: Rng::new(),
            })
            .collect();
        clients.push(Client {
            api: api.clone(),
            user: probe_user.clone(),
            events: vec![probe_event.to_owned()],
            probe: true,
            told: Told::default(),
            records: Arc::clone(&records),
            rng: Rng::new(),
        });
        let tasks = clients.into_iter().map(|c| tokio::spawn(c.run(Arc::clone(&stop), Arc::clone(&settle)))).collect();
        Self { stop, settle, records, tasks }
    }

    /// Stops the clients, lets each settle what it does not know (retrying for up to
    /// `settle`), and returns what they were told.
    pub async fn finish(self, settle: Duration) -> (Vec<Told>, Vec<Rec>) {
        *self.settle.lock().unwrap() = settle;
        self.stop.store(true, Ordering::Relaxed);
        let mut told = Vec::new();
        for t in self.tasks {
            told.push(t.await.unwrap());
        }
        let records = self.records.lock().unwrap().clone();
        (told, records)
    }
}

/// Answers by class and status.
pub fn tally(records: &[Rec]) -> BTreeMap<(Class, u16), usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry((r.class, r.status)).or_default() += 1;
    }
    m
}

/// The first success (2xx) of `classes` that ended after `after`: how long after it.
pub fn first_success(records: &[Rec], classes: &[Class], after: Instant) -> Option<Duration> {
    records
        .iter()
        .filter(|r| classes.contains(&r.class) && (200..300).contains(&r.status) && r.end >= after)
        .map(|r| r.end - after)
        .min()
}

/// Per user, the notifications the API lists (kind, event id), every page.
pub async fn notifications(api: &Api, user: &User) -> Result<HashMap<(String, String), usize>, String> {
    let mut out = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/v1/me/notifications?limit=100".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = api.get(&path, Some(&user.token)).await;
        if r.status != 200 {
            return Err(format!("GET {path}: {} {}", r.status, r.body));
        }
        for n in r.body["items"].as_array().into_iter().flatten() {
            let key = (
                n["kind"].as_str().unwrap_or_default().to_owned(),
                n["event_id"].as_str().unwrap_or_default().to_owned(),
            );
            *out.entry(key).or_default() += 1;
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(out),
        }
    }
}
