//! What a consumer waits for ([`Dependency`]) before it takes a message.

/// Something a handler needs, whose availability the consumer can read without I/O. While one
/// the consumer waits for is down, it takes no message (see the module docs).
///
/// Implemented for [`Db`](keel_data::Db) and `Redis` (their `is_available`); for anything
/// else use [`dependency_fn`].
pub trait Dependency: Send + Sync + 'static {
    /// A short name for logs and readiness (`database`, `smtp`).
    fn name(&self) -> &str;
    /// Whether it is believed available now. Called before taking each message and every
    /// `pause_poll` while paused: must be cheap and must not block.
    fn is_available(&self) -> bool;
}

#[cfg(feature = "sql")]
impl Dependency for keel_data::Db {
    fn name(&self) -> &str {
        "database"
    }
    fn is_available(&self) -> bool {
        keel_data::Db::is_available(self)
    }
}

#[cfg(feature = "redis")]
impl Dependency for keel_redis::Redis {
    fn name(&self) -> &str {
        "redis"
    }
    fn is_available(&self) -> bool {
        keel_redis::Redis::is_available(self)
    }
}

/// A [`Dependency`] named `name` that is available while `f` returns `true`.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
///
/// let smtp_up = Arc::new(AtomicBool::new(true));
/// let flag = smtp_up.clone();
/// let smtp = keel_events::consumer::dependency_fn("smtp", move || flag.load(Ordering::Relaxed));
/// # let _ = smtp;
/// ```
pub fn dependency_fn<F>(name: impl Into<String>, f: F) -> FnDependency<F>
where
    F: Fn() -> bool + Send + Sync + 'static,
{
    FnDependency { name: name.into(), f }
}

/// See [`dependency_fn`].
#[derive(Debug, Clone)]
pub struct FnDependency<F> {
    name: String,
    f: F,
}

impl<F: Fn() -> bool + Send + Sync + 'static> Dependency for FnDependency<F> {
    fn name(&self) -> &str {
        &self.name
    }
    fn is_available(&self) -> bool {
        (self.f)()
    }
}

/// A dependency under another name (the inbox database is reported as `inbox database`).
#[cfg(feature = "sql")]
pub(super) struct Named<D> {
    pub(super) name: &'static str,
    pub(super) dep: D,
}

#[cfg(feature = "sql")]
impl<D: Dependency> Dependency for Named<D> {
    fn name(&self) -> &str {
        self.name
    }
    fn is_available(&self) -> bool {
        self.dep.is_available()
    }
}
