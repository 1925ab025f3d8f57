#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::*;

const FLAGS: &str = r#"
simple_on:
  enabled: true
  description: on for everyone
  tags: [demo]
killed:
  enabled: false
  strategy: user
  rules: {users: [alice]}
rollout:
  enabled: true
  strategy: percentage
  rules: {percentage: 25}
beta:
  enabled: true
  strategy: user
  rules: {users: [alice, bob]}
prod_only:
  enabled: true
  strategy: environment
  rules: {environments: [production, staging]}
past:
  enabled: true
  strategy: time
  rules: {start: "2000-01-01T00:00:00Z", end: "2001-01-01T00:00:00+01:00"}
current:
  enabled: true
  strategy: time
  rules: {start: "2000-01-01T00:00:00Z"}
future:
  enabled: true
  strategy: time
  rules: {start: "2999-01-01T00:00:00-05:30"}
pro_only:
  enabled: true
  rules:
    attributes: {plan: [pro, enterprise]}
"#;

fn flags(env: &str) -> Flags {
    Flags::from_yaml(FLAGS, FlagsOptions::new(env)).unwrap()
}

fn ctx() -> EvalContext {
    EvalContext::new()
}

#[test]
fn strategies() {
    let f = flags("development");
    assert!(f.is_enabled("simple_on", &ctx()));
    assert!(!f.is_enabled("killed", &ctx().user("alice")), "enabled: false wins");
    assert!(f.is_enabled("beta", &ctx().user("bob")));
    assert!(!f.is_enabled("beta", &ctx().user("carol")));
    assert!(!f.is_enabled("beta", &ctx()));
    assert!(!f.is_enabled("prod_only", &ctx()), "default environment is the service's");
    assert!(f.is_enabled("prod_only", &ctx().environment("Staging")));
    assert!(flags("production").is_enabled("prod_only", &ctx()));
    assert!(!f.is_enabled("past", &ctx()));
    assert!(f.is_enabled("current", &ctx()));
    assert!(!f.is_enabled("future", &ctx()));
    assert!(f.is_enabled("pro_only", &ctx().attribute("plan", "pro")));
    assert!(!f.is_enabled("pro_only", &ctx().attribute("plan", "free")));
    assert!(!f.is_enabled("pro_only", &ctx()));
    assert!(!f.is_enabled("rollout", &ctx()), "a percentage needs a user to bucket");
    assert!(!f.is_enabled("nope", &ctx()));
}

#[test]
fn offsets_are_applied() {
    let utc = model::parse_time("2026-12-01T10:00:00Z").unwrap();
    assert_eq!(model::parse_time("2026-12-01T11:00:00+01:00").unwrap(), utc);
    assert_eq!(model::parse_time("2026-12-01T04:30:00-05:30").unwrap(), utc);
    assert!(model::parse_time("2026-12-01").is_err());
    assert!(model::parse_time("2026-12-01T10:00:00+25:00").is_err());
}

#[test]
fn percentage_bucketing_is_deterministic_and_spread() {
    // Pinned: a change of hash would silently move users between variants.
    assert_eq!(bucket("rollout", "user-1"), bucket("rollout", "user-1"));
    let golden = bucket("rollout", "user-1");
    assert_eq!(golden, {
        let d = Sha256::digest(b"rollout:user-1");
        (u64::from_be_bytes(d[..8].try_into().unwrap()) % 10_000) as u32
    });
    let f = flags("test");
    let n = 20_000;
    let on = (0..n).filter(|i| f.is_enabled("rollout", &ctx().user(format!("user-{i}")))).count();
    let share = on as f64 / n as f64;
    assert!((0.23..0.27).contains(&share), "25% rollout gave {share}");
    // A second instance answers the same for every user.
    let g = flags("test");
    assert!((0..500).all(|i| {
        let c = ctx().user(format!("u{i}"));
        f.is_enabled("rollout", &c) == g.is_enabled("rollout", &c)
    }));
    // Different flags bucket independently: the 25% of one flag is not the 25% of another.
    let other = (0..n).filter(|i| bucket("other", &format!("user-{i}")) < 2500).count();
    let both = (0..n)
        .filter(|i| bucket("other", &format!("user-{i}")) < 2500 && bucket("rollout", &format!("user-{i}")) < 2500)
        .count();
    assert!((0.23..0.27).contains(&(other as f64 / n as f64)));
    assert!((0.05..0.075).contains(&(both as f64 / n as f64)), "flags are correlated: {both}");
    // Edges.
    let edges = Flags::from_yaml(
        "none: {enabled: true, strategy: percentage, rules: {percentage: 0}}\nall: {enabled: true, strategy: percentage, rules: {percentage: 100}}",
        FlagsOptions::default(),
    )
    .unwrap();
    assert!((0..1000).all(|i| !edges.is_enabled("none", &ctx().user(i.to_string()))));
    assert!((0..1000).all(|i| edges.is_enabled("all", &ctx().user(i.to_string()))));
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let bad = r#"
ok_flag: {enabled: true}
a: {enabled: true, strategy: sometimes}
b: {enabled: true, strategy: percentage, rules: {percentage: 150}}
c: {enabled: true, strategy: time, rules: {start: "2026-02-01T00:00:00Z", end: "2026-01-01T00:00:00Z"}}
d: {enabled: true, colour: blue}
e: {enabled: true, strategy: user}
f: {enabled: true, strategy: simple, rules: {users: [x]}}
g: {enabled: true, strategy: time, rules: {start: "tomorrow"}}
"bad key!": {enabled: true}
h: {enabled: true, strategy: percentage}
"#;
    let Err(FlagsError::Invalid { problems, .. }) = Flags::from_yaml(bad, FlagsOptions::default()) else {
        panic!("accepted");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "a.strategy",
        "b.rules.percentage",
        "c.rules.end",
        "d.colour",
        "e.rules.users",
        "f.rules.users",
        "g.rules.start",
        "bad key!",
        "h.rules.percentage",
    ] {
        assert!(paths.contains(&want), "no problem at {want}: {problems:?}");
    }
    assert!(!paths.iter().any(|p| p.starts_with("ok_flag")));
    let unknown = problems.iter().find(|p| p.path == "a.strategy").unwrap();
    assert!(unknown.message.contains("unknown variant"), "{unknown:?}");
    assert!(Flags::from_yaml("- a list", FlagsOptions::default()).is_err());
    assert!(Flags::from_yaml("", FlagsOptions::default()).unwrap().is_empty());
}

#[test]
fn an_invalid_reload_is_rejected_whole_and_the_last_good_set_stays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.yaml");
    std::fs::write(&path, "a: {enabled: true}\nb: {enabled: false}\n").unwrap();
    let metrics = Metrics::new();
    let log = ReloadLog::default();
    let f = Flags::open(&path, FlagsOptions::new("test").metrics(&metrics).reloads(log.clone())).unwrap();
    assert!(f.is_enabled("a", &ctx()));
    // `a` turns off, but `b` is broken: nothing of the new version may apply.
    std::fs::write(&path, "a: {enabled: false}\nb: {enabled: true, strategy: percentage}\n").unwrap();
    let e = f.reload().unwrap_err();
    assert!(e.to_string().contains("b.rules.percentage"), "{e}");
    assert!(f.is_enabled("a", &ctx()));
    assert!(!f.is_enabled("b", &ctx()));
    std::fs::write(&path, "a: {enabled: false}\nc: {enabled: true}\n").unwrap();
    assert_eq!(f.reload().unwrap(), 2);
    assert!(!f.is_enabled("a", &ctx()) && f.is_enabled("c", &ctx()) && !f.is_enabled("b", &ctx()));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(f.reload(), Err(FlagsError::Read { .. })));
    assert!(f.is_enabled("c", &ctx()), "a vanished file keeps the flags");
    let text = metrics.render();
    assert!(text.contains(r#"feature_flags_reloads_total{outcome="ok"} 1"#), "{text}");
    assert!(text.contains(r#"feature_flags_reloads_total{outcome="error"} 2"#), "{text}");
    assert!(text.contains(r#"feature_flag_evaluations_total{flag="a",result="on"} 2"#), "{text}");
    assert!(text.contains(r#"feature_flag_evaluations_total{flag="c",result="on"} 2"#), "{text}");
    let events = log.recent();
    assert_eq!(events.iter().map(|e| e.ok).collect::<Vec<_>>(), vec![false, true, false]);
    assert!(events[2].detail.contains("b.rules.percentage"));
    assert!(matches!(Flags::from_yaml("", FlagsOptions::default()).unwrap().reload(), Err(FlagsError::NoFile)));
}

#[tokio::test]
async fn the_watcher_applies_changes_and_rejects_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.yaml");
    std::fs::write(&path, "launch: {enabled: false}\n").unwrap();
    let metrics = Metrics::new();
    let f = Flags::open(&path, FlagsOptions::new("test").metrics(&metrics)).unwrap();
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(f.clone().watch(Duration::from_millis(20), stop.clone()));

    std::fs::write(&path, "launch: {enabled: true}\n").unwrap();
    eventually("the change applies", || f.is_enabled("launch", &ctx())).await;

    std::fs::write(&path, "launch: {enabled: false, strategy: nonsense}\n").unwrap();
    eventually("the bad version is rejected", || metrics.render().contains(r#"outcome="error"} 1"#)).await;
    assert!(f.is_enabled("launch", &ctx()), "the last good set stays");
    // Seen once, rejected once: the watcher does not count the same bad file on every poll.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(metrics.render().contains(r#"feature_flags_reloads_total{outcome="error"} 1"#));

    std::fs::write(&path, "launch: {enabled: false}\n").unwrap();
    eventually("the fixed version applies", || !f.is_enabled("launch", &ctx())).await;
    stop.cancel();
    watcher.await.unwrap();
}

#[test]
fn readers_never_see_half_a_reload() {
    // Every version has x == y; a reader pinned to one version must always see them agree.
    let on = "x: {enabled: true}\ny: {enabled: true}\n";
    let off = "x: {enabled: false}\ny: {enabled: false}\n";
    let f = Flags::from_yaml(on, FlagsOptions::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (f, stop) = (f.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = [0u64; 2];
                while !stop.load(Ordering::Relaxed) {
                    let v = f.view();
                    let (x, y) = (v.is_enabled("x", &EvalContext::new()), v.is_enabled("y", &EvalContext::new()));
                    assert_eq!(x, y, "a view mixed two versions");
                    seen[usize::from(x)] += 1;
                }
                seen
            })
        })
        .collect();
    for i in 0..2_000 {
        f.replace_yaml(if i % 2 == 0 { off } else { on }).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
}

async fn eventually<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[test]
fn no_placeholder_series_until_an_unknown_flag_is_asked_for() {
    let metrics = Metrics::new();
    let f = Flags::from_yaml("a: {enabled: true}\n", FlagsOptions::default().metrics(&metrics)).unwrap();
    assert!(f.is_enabled("a", &ctx()));
    let text = metrics.render();
    assert!(!text.lines().any(|l| l.starts_with(r#"feature_flag_evaluations_total{flag="_unknown""#)), "{text}");
    assert!(!f.is_enabled("typo", &ctx()));
    assert!(metrics.render().contains(r#"feature_flag_evaluations_total{flag="_unknown",result="off"} 1"#));
}

const GATED: &str = r#"
denied:
  enabled: true
  rules: {deny_users: [mallory]}
new_app:
  enabled: true
  rules: {versions: ">=2.3, <3"}
composite:
  enabled: true
  rules:
    all:
      - attributes: {plan: [pro]}
    any:
      - users: [alice]
      - {environments: [staging], percentage: 100}
always_open:
  enabled: true
  rules:
    windows: [{from: "00:00", to: "24:00", time_zone: Europe/Berlin}]
"#;

#[test]
fn gates_apply_to_any_strategy() {
    let f = Flags::from_yaml(GATED, FlagsOptions::new("production")).unwrap();
    assert!(f.is_enabled("denied", &ctx().user("alice")));
    assert!(!f.is_enabled("denied", &ctx().user("mallory")), "the deny list wins");
    assert!(f.is_enabled("new_app", &ctx().version("2.4.1")));
    assert!(f.is_enabled("new_app", &ctx().version("v2.3.0")), "a leading v is allowed");
    assert!(!f.is_enabled("new_app", &ctx().version("3.0.0")));
    assert!(!f.is_enabled("new_app", &ctx().version("2.2.9")));
    assert!(!f.is_enabled("new_app", &ctx().version("not-a-version")));
    assert!(!f.is_enabled("new_app", &ctx()), "no version: outside every range");
    let pro = || ctx().attribute("plan", "pro");
    assert!(f.is_enabled("composite", &pro().user("alice")), "all + first of any");
    assert!(!f.is_enabled("composite", &ctx().user("alice")), "all fails without the plan");
    assert!(!f.is_enabled("composite", &pro().user("bob")), "bob in production: no `any` holds");
    assert!(f.is_enabled("composite", &pro().user("bob").environment("staging")), "second of any");
    assert!(!f.is_enabled("composite", &pro().environment("staging")), "a percentage needs a user");
    assert!(f.is_enabled("always_open", &ctx()));
}

#[test]
fn bad_gates_are_reported_with_their_paths() {
    let text = r#"
f:
  enabled: true
  rules:
    deny_users: [""]
    versions: "not a range"
    windows: [{days: [funday], from: "9", time_zone: Nowhere/City}]
    any:
      - {}
      - percentage: 101
      - any: [{any: [{any: [{any: [{users: [x]}]}]}]}]
"#;
    let FlagsError::Invalid { problems, .. } = Flags::from_yaml(text, FlagsOptions::default()).unwrap_err() else {
        panic!("expected Invalid")
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "f.rules.deny_users",
        "f.rules.versions",
        "f.rules.windows[0]",
        "f.rules.any[0]",
        "f.rules.any[1].percentage",
        "f.rules.any[2].any[0].any[0].any[0].any",
    ] {
        assert!(paths.contains(&expected), "{expected} missing from {paths:?}");
    }
}

#[test]
fn keys_are_dotted_segments() {
    let on = FlagDef { enabled: true, ..Default::default() };
    assert!(check_flag("feed.live.reactions", &on).is_ok());
    for bad in ["", ".feed", "feed.", "feed..live", "feed live", &"x".repeat(101)] {
        assert!(check_flag(bad, &on).is_err(), "{bad:?}");
    }
}

fn on() -> FlagDef {
    FlagDef { enabled: true, ..Default::default() }
}

#[tokio::test]
async fn overrides_layer_over_the_file_and_keep_a_history() {
    let f =
        Flags::from_yaml("feed.live: {enabled: false}\nfeed.ranking: {enabled: true}\nother: {}", Default::default())
            .unwrap();
    assert_eq!(f.store_kind(), "memory");
    let mut events = f.subscribe();
    assert!(!f.is_enabled("feed.live", &ctx()));
    let change = f.set_override("feed.live", on(), "ops", "launch").await.unwrap().unwrap();
    assert_eq!((change.id, change.before.clone(), change.actor.as_str()), (1, None, "ops"));
    assert!(f.is_enabled("feed.live", &ctx()), "applied at once");
    let event = events.recv().await.unwrap();
    assert_eq!((event.key.as_str(), event.source), ("feed.live", Some(Source::Override)));
    assert_eq!(event.before.map(|d| d.enabled), Some(false));

    // A flag the file lacks can be added at runtime.
    f.set_override("brand.new", on(), "ops", "try").await.unwrap();
    let report = f.report_under("feed");
    let keys: Vec<&str> = report.flags.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["feed.live", "feed.ranking"], "a prefix lists its subtree only");
    let live = &report.flags[0];
    assert_eq!(live.source, Source::Override);
    assert_eq!(live.file_default.as_ref().map(|d| d.enabled), Some(false));
    assert_eq!(live.overridden_by.as_deref(), Some("ops"));
    assert_eq!(live.evaluations.on, 1, "one evaluation since the override: {:?}", live.evaluations);
    assert_eq!(live.evaluations.off, 1);
    assert_eq!(f.report_under("brand").flags[0].source, Source::Runtime);
    assert!(f.report_under("fee").flags.is_empty(), "`fee` is not a prefix of the segment `feed`");

    // A reload of the file keeps the overrides on top.
    f.replace_yaml("feed.live: {enabled: false, description: edited}\nfeed.ranking: {enabled: false}").unwrap();
    assert!(f.is_enabled("feed.live", &ctx()));
    assert!(!f.is_enabled("feed.ranking", &ctx()));

    // Removing returns the file's definition; removing again is a no-op.
    let removed = f.remove_override("feed.live", "ops", "rollback").await.unwrap().unwrap();
    assert!(removed.after.is_none());
    assert!(!f.is_enabled("feed.live", &ctx()));
    assert!(f.remove_override("feed.live", "ops", "again").await.unwrap().is_none());
    f.remove_override("brand.new", "ops", "done").await.unwrap();
    assert!(!f.is_enabled("brand.new", &ctx()), "a runtime-only flag is gone with its override");

    let history = f.history(Some("feed.live"), 10).await.unwrap();
    let reasons: Vec<&str> = history.iter().map(|c| c.reason.as_str()).collect();
    assert_eq!(reasons, ["rollback", "launch"], "newest first, this flag only");
    assert_eq!(f.history(None, 1).await.unwrap()[0].reason, "done");
}

#[tokio::test]
async fn an_invalid_override_changes_nothing() {
    let f = Flags::from_yaml("a: {enabled: false}", Default::default()).unwrap();
    let bad = FlagDef { enabled: true, strategy: Strategy::Percentage, ..Default::default() };
    let OverrideError::Invalid(problems) = f.set_override("a", bad, "ops", "x").await.unwrap_err() else {
        panic!("expected Invalid")
    };
    assert_eq!(problems[0].path, "a.rules.percentage");
    assert!(f.set_override("not a key", on(), "ops", "x").await.is_err());
    assert!(f.history(None, 10).await.unwrap().is_empty());
    assert!(!f.is_enabled("a", &ctx()));
}

/// A shared store that fails while `down` is set, and can be replaced wholesale, as a Redis that
/// lost its data.
#[derive(Default)]
struct TestStore {
    inner: Mutex<Arc<MemoryStore>>,
    down: AtomicBool,
}

impl TestStore {
    /// The store to call, or the outage.
    fn current(&self) -> Result<Arc<MemoryStore>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        Ok(self.inner.lock().unwrap().clone())
    }
}

impl FlagStore for TestStore {
    fn kind(&self) -> &'static str {
        "database"
    }
    fn version(&self) -> store::StoreFuture<'_, i64> {
        let s = self.current();
        Box::pin(async move { s?.version().await })
    }
    fn load(&self) -> store::StoreFuture<'_, store::Overrides> {
        let s = self.current();
        Box::pin(async move { s?.load().await })
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        def: Option<&'a FlagDef>,
        actor: &'a str,
        reason: &'a str,
    ) -> store::StoreFuture<'a, Option<FlagChange>> {
        let s = self.current();
        Box::pin(async move { s?.set(key, def, actor, reason).await })
    }
    fn history<'a>(&'a self, key: Option<&'a str>, limit: u32) -> store::StoreFuture<'a, Vec<FlagChange>> {
        let s = self.current();
        Box::pin(async move { s?.history(key, limit).await })
    }
}

#[tokio::test]
async fn a_store_outage_keeps_the_last_overrides_and_is_reported() {
    let store = Arc::new(TestStore::default());
    let a = Flags::from_yaml("x: {enabled: false}", Default::default()).unwrap();
    let b = Flags::from_yaml("x: {enabled: false}", Default::default()).unwrap();
    a.attach(store.clone());
    b.attach(store.clone());
    a.set_override("x", on(), "ops", "on").await.unwrap();
    b.refresh().await.unwrap();
    assert!(b.is_enabled("x", &ctx()), "the other replica follows the shared store");
    store.down.store(true, Ordering::SeqCst);
    assert!(matches!(a.set_override("x", FlagDef::default(), "ops", "off").await, Err(OverrideError::Store(_))));
    assert!(b.refresh().await.is_err());
    assert!(b.is_enabled("x", &ctx()), "the last overrides read stay in effect");
    assert_eq!(b.report().store.error.as_deref(), Some("the flag store is unavailable: connection refused"));
    store.down.store(false, Ordering::SeqCst);
    b.refresh().await.unwrap();
    assert!(b.report().store.error.is_none());
    assert!(b.is_enabled("x", &ctx()), "nothing changed during the outage");
}

#[tokio::test]
async fn sync_follows_another_replica() {
    let store = Arc::new(MemoryStore::default());
    let (a, b) = (flags("production"), flags("production"));
    a.attach(store.clone());
    b.attach(store.clone());
    let stop = CancellationToken::new();
    tokio::spawn(b.clone().sync(Duration::from_millis(20), stop.clone()));
    a.set_override("killed", on(), "ops", "revive").await.unwrap();
    eventually("b applies a's override", || b.is_enabled("killed", &ctx())).await;
    stop.cancel();
}

#[tokio::test]
async fn a_store_whose_version_went_back_is_followed() {
    let store = Arc::new(TestStore::default());
    let (a, b) = (flags("production"), flags("production"));
    a.attach(store.clone());
    b.attach(store.clone());
    for reason in ["one", "two", "three"] {
        a.set_override("killed", on(), "ops", reason).await.unwrap();
    }
    b.refresh().await.unwrap();
    assert!(b.is_enabled("killed", &ctx()));
    // The store loses everything; its version restarts below what the replicas know.
    *store.inner.lock().unwrap() = Arc::new(MemoryStore::default());
    a.set_override("simple_on", FlagDef::default(), "ops", "after the loss").await.unwrap();
    b.refresh().await.unwrap();
    assert!(!b.is_enabled("simple_on", &ctx()), "the new change applies on the other replica");
    assert!(!b.is_enabled("killed", &ctx()), "the lost override is gone: the file's definition is back");
    assert!(!a.is_enabled("simple_on", &ctx()), "and on the replica that made it");
}
