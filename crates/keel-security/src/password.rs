//! Password hashing with Argon2id, off the async executor, with a policy.
//!
//! Argon2id is deliberately slow (tens of milliseconds and tens of MiB per hash). Run on the
//! async executor, a burst of logins would block every worker thread and starve all other
//! requests; so each hash runs on a hashing thread of the hasher's own (`max_concurrent_hashes`
//! of them, at the lowest priority with `low_priority`: see [`PasswordsConfig`]); at
//! most `max_queued` callers wait for a slot (one more is refused at once), each at most
//! `queue_timeout`, before getting [`PasswordError::Overloaded`] (a 503 with `Retry-After`) — a
//! login storm degrades logins, quickly, not the whole service.
//!
//! ```
//! # tokio_test_block_on(async {
//! use keel_security::password::{PasswordHasher, PasswordPolicy};
//!
//! let mut cfg = keel_security::PasswordsConfig::default();
//! cfg.memory_kib = 1024; // cheap for the example; keep the default (19 MiB) in production
//! let hasher = PasswordHasher::from_config(&cfg).unwrap();
//! let policy = PasswordPolicy::default();
//! assert!(policy.check("password1234", Some("a@b.co")).is_err());
//! let phc = hasher.hash("correct horse battery staple").await.unwrap();
//! assert!(hasher.verify("correct horse battery staple", &phc).await.unwrap());
//! assert!(!hasher.verify("wrong", &phc).await.unwrap());
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use http::StatusCode;
use tokio::sync::Semaphore;

use super::PasswordsConfig;
use keel_http::Problem;

/// Errors hashing or verifying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// Every hashing slot stayed busy for `queue_timeout`, or `max_queued` callers were
    /// already waiting.
    #[error("password hashing is overloaded; retry shortly")]
    Overloaded,
    /// The stored hash is not a valid PHC string.
    #[error("the stored password hash is malformed")]
    MalformedHash,
    /// The password is longer than the policy's maximum (refused before hashing, to bound cost).
    #[error("the password is longer than {0} bytes")]
    TooLong(usize),
    /// Invalid cost parameters.
    #[error("invalid Argon2 parameters: {0}")]
    Params(String),
    /// The hashing thread failed.
    #[error("password hashing failed: {0}")]
    Internal(String),
}

impl From<PasswordError> for Problem {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Overloaded => Problem::unavailable("too many sign-ins at once; retry shortly", 1),
            PasswordError::TooLong(n) => {
                Problem::bad_request(format!("passwords are at most {n} bytes")).code("password-too-long")
            }
            other => {
                tracing::error!(error = %other, "password hashing failed");
                Problem::internal()
            }
        }
    }
}

impl axum::response::IntoResponse for PasswordError {
    fn into_response(self) -> axum::response::Response {
        Problem::from(self).into_response()
    }
}

/// One hash or verification, run on a hashing thread.
type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads: as many as hashes may run at once, each taking the next job from one
/// queue. They end when the last clone of the hasher is dropped (the queue closes).
struct Threads {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Threads {
    fn start(count: usize, low_priority: bool) -> Result<Self, PasswordError> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..count {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("keel-hash-{i}"))
                .spawn(move || {
                    if low_priority {
                        lower_priority();
                    }
                    loop {
                        // The lock is held only while taking a job, never while running one.
                        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(job) = next else { break };
                        // A job that panics answers its caller with an error (its result
                        // channel drops); the thread goes on with the next.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .map_err(|e| PasswordError::Internal(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self { jobs })
    }

    fn run(&self, job: Job) -> Result<(), PasswordError> {
        self.jobs.send(job).map_err(|_| PasswordError::Internal("the hashing threads have ended".into()))
    }
}

/// Puts the calling thread at the lowest priority of the normal scheduling policies: Linux's
/// `SCHED_BATCH` (a CPU-bound thread: no wake-up preemption) at nice 19. A thread may always
/// lower its own priority; if the OS refuses anyway, hashes run at normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
        };
        let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
        if let Err(e) = set_thread_priority_and_policy(thread_native_id(), thread_priority::ThreadPriority::Min, batch)
        {
            tracing::warn!(error = ?e, "cannot lower the hashing thread's priority; it hashes at normal priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    if let Err(e) = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min) {
        tracing::warn!(error = ?e, "cannot lower the hashing thread's priority; it hashes at normal priority");
    }
}

/// Hashes and verifies passwords with Argon2id. Cheap to clone; share one per service.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    threads: Arc<Threads>,
    permits: Arc<Semaphore>,
    /// Hashing slots plus places to wait for one: a caller without one is refused at once.
    admission: Arc<Semaphore>,
    queue_timeout: Duration,
    max_length: usize,
    /// A hash of a random password, verified against when the user does not exist, so that
    /// "no such user" takes as long as "wrong password".
    dummy: Arc<str>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("m_cost", &self.params.m_cost())
            .field("t_cost", &self.params.t_cost())
            .field("p_cost", &self.params.p_cost())
            .field("available_permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

/// Hashes at once by default on `cpus` CPUs: half of them, at least one. A storm of sign-ins
/// then leaves the other half to every other request; with one hash per CPU, measured on two
/// cores with the whole platform on them, 150 sign-ins/s raised browsing's p99 6.7×, against
/// 2.1× with one hash at a time (docs/benchmarks.md).
fn default_concurrent_hashes(cpus: usize) -> usize {
    (cpus / 2).max(1)
}

impl PasswordHasher {
    /// A hasher from `security.passwords.*`.
    pub fn from_config(cfg: &PasswordsConfig) -> Result<Self, PasswordError> {
        let params = Params::new(cfg.memory_kib, cfg.iterations, cfg.parallelism, None)
            .map_err(|e| PasswordError::Params(e.to_string()))?;
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let cap = match cfg.max_concurrent_hashes {
            0 => default_concurrent_hashes(cpus),
            n => n,
        };
        // Four per CPU, not per slot: halving the slots does not shrink the queue a burst of
        // sign-ups may wait in.
        let queued = match cfg.max_queued {
            0 => cpus.saturating_mul(4),
            n => n,
        };
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let random = format!("{:032x}", rand::random::<u128>());
        let dummy = argon.hash_password(random.as_bytes()).map_err(|e| PasswordError::Params(e.to_string()))?;
        Ok(Self {
            params,
            threads: Arc::new(Threads::start(cap, cfg.low_priority)?),
            permits: Arc::new(Semaphore::new(cap)),
            admission: Arc::new(Semaphore::new(cap.saturating_add(queued).min(Semaphore::MAX_PERMITS))),
            queue_timeout: cfg.queue_timeout,
            max_length: cfg.max_length,
            dummy: dummy.to_string().into(),
        })
    }

    /// Hashes `password` into a PHC string (`$argon2id$v=19$m=…`) with a random salt.
    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        self.check_length(password)?;
        let (params, password) = (self.params.clone(), zeroizing(password));
        self.blocking(move || {
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| PasswordError::Internal(e.to_string()))
        })
        .await
    }

    /// Whether `password` matches the PHC string `phc`. The comparison is constant-time, and
    /// the hash's own parameters are used (so old hashes verify after a cost change).
    pub async fn verify(&self, password: &str, phc: &str) -> Result<bool, PasswordError> {
        if password.len() > self.max_length {
            return Ok(false);
        }
        let parsed = PasswordHash::new(phc).map_err(|_| PasswordError::MalformedHash)?;
        let password = zeroizing(password);
        self.blocking(move || match Argon2::default().verify_password(password.as_bytes(), &parsed) {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
            Err(_) => Err(PasswordError::MalformedHash),
        })
        .await
    }

    /// Spends the time of one verification and returns `false`: call it when the user does not
    /// exist, so response times do not reveal which accounts exist.
    pub async fn verify_dummy(&self, password: &str) -> Result<bool, PasswordError> {
        let dummy = self.dummy.clone();
        self.verify(password, &dummy).await.map(|_| false)
    }

    /// Whether the PHC string was made with other parameters than the current ones (rehash it
    /// after the next successful login).
    pub fn needs_rehash(&self, phc: &str) -> bool {
        match PasswordHash::new(phc) {
            Ok(h) => Params::try_from(&h).map_or(true, |p| {
                p.m_cost() != self.params.m_cost()
                    || p.t_cost() != self.params.t_cost()
                    || p.p_cost() != self.params.p_cost()
            }),
            Err(_) => true,
        }
    }

    /// Hashing slots free right now.
    pub fn available_permits(&self) -> usize {
        self.permits.available_permits()
    }

    fn check_length(&self, password: &str) -> Result<(), PasswordError> {
        if password.len() > self.max_length { Err(PasswordError::TooLong(self.max_length)) } else { Ok(()) }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        // Running or waiting: past `max_queued` waiting, refused now rather than after the wait.
        let admitted = self.admission.clone().try_acquire_owned().map_err(|_| PasswordError::Overloaded)?;
        let permit = tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| PasswordError::Overloaded)?
            .map_err(|_| PasswordError::Overloaded)?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.threads.run(Box::new(move || {
            let result = f();
            // The slot is free by the time the caller has its answer.
            drop((permit, admitted));
            let _ = answer.send(result);
        }))?;
        answered.await.map_err(|_| PasswordError::Internal("the hashing thread failed".into()))?
    }
}

/// A copy of the password that is wiped when dropped (the hashing thread owns it).
fn zeroizing(password: &str) -> secrecy::SecretString {
    secrecy::SecretString::from(password.to_owned())
}

trait AsBytes {
    fn as_bytes(&self) -> &[u8];
}

impl AsBytes for secrecy::SecretString {
    fn as_bytes(&self) -> &[u8] {
        secrecy::ExposeSecret::expose_secret(self).as_bytes()
    }
}

/// What a new password must satisfy.
#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    /// Fewest characters. Default 12.
    pub min_length: usize,
    /// Most bytes (bounds hashing cost). Default 128.
    pub max_length: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self { min_length: 12, max_length: 128 }
    }
}

/// Why a password was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyViolation {
    /// Shorter than the minimum.
    #[error("use at least {0} characters")]
    TooShort(usize),
    /// Longer than the maximum.
    #[error("use at most {0} bytes")]
    TooLong(usize),
    /// The same as the account's e-mail address (or its local part).
    #[error("do not use your e-mail address")]
    SameAsEmail,
    /// On the list of common passwords.
    #[error("this password is too common")]
    Common,
}

impl From<PolicyViolation> for Problem {
    fn from(v: PolicyViolation) -> Self {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "weak-password", "Password refused")
            .field("password", v.to_string())
    }
}

impl PasswordPolicy {
    /// The policy `security.passwords.*` describes.
    pub fn from_config(cfg: &PasswordsConfig) -> Self {
        Self { min_length: cfg.min_length, max_length: cfg.max_length }
    }

    /// Checks a new password for the account with `email`.
    pub fn check(&self, password: &str, email: Option<&str>) -> Result<(), PolicyViolation> {
        if password.len() > self.max_length {
            return Err(PolicyViolation::TooLong(self.max_length));
        }
        if password.chars().count() < self.min_length {
            return Err(PolicyViolation::TooShort(self.min_length));
        }
        let lower = password.trim().to_lowercase();
        if let Some(email) = email {
            let email = email.trim().to_lowercase();
            let local = email.split('@').next().unwrap_or_default();
            if lower == email || (!local.is_empty() && lower == local) {
                return Err(PolicyViolation::SameAsEmail);
            }
        }
        if keel_config::is_common_password(&lower) {
            return Err(PolicyViolation::Common);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_half_the_cpus_hash_and_never_none() {
        assert_eq!([1, 2, 3, 4, 16].map(default_concurrent_hashes), [1, 1, 1, 2, 8]);
        let cfg = PasswordsConfig { memory_kib: 64, iterations: 1, ..PasswordsConfig::default() };
        let hasher = PasswordHasher::from_config(&cfg).unwrap();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(hasher.permits.available_permits(), default_concurrent_hashes(cpus));
        assert_eq!(hasher.admission.available_permits(), default_concurrent_hashes(cpus) + cpus * 4);
    }

    /// With every slot taken, `max_queued` callers wait (and are served once a slot frees);
    /// the ones after them are refused at once, long before `queue_timeout`.
    #[tokio::test]
    async fn callers_past_the_queue_are_refused_at_once() {
        let cfg = PasswordsConfig {
            memory_kib: 64,
            iterations: 1,
            max_concurrent_hashes: 1,
            max_queued: 2,
            queue_timeout: Duration::from_secs(30),
            ..PasswordsConfig::default()
        };
        let hasher = PasswordHasher::from_config(&cfg).unwrap();
        // The one slot, held as a running hash holds it.
        let slot = hasher.permits.clone().acquire_owned().await.unwrap();
        let running = hasher.admission.clone().try_acquire_owned().unwrap();
        let waiting: Vec<_> = (0..2)
            .map(|i| {
                let h = hasher.clone();
                tokio::spawn(async move { h.hash(&format!("waiting-password-{i}")).await })
            })
            .collect();
        // Let both take their places in the queue.
        while hasher.admission.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        for i in 0..5 {
            let refused = hasher.hash(&format!("refused-password-{i}")).await;
            assert!(matches!(refused, Err(PasswordError::Overloaded)), "{refused:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not after the wait");
        drop((slot, running));
        for w in waiting {
            let phc = w.await.unwrap().unwrap();
            assert!(phc.starts_with("$argon2id$"), "{phc}");
        }
        // Room again.
        assert!(hasher.hash("after-the-storm-1").await.is_ok());
    }

    /// The nice value and scheduling policy (Linux's numbers: 0 normal, 3 batch) of the hashing
    /// thread that runs the next job of `hasher`.
    #[cfg(target_os = "linux")]
    fn hashing_thread_priority(hasher: &PasswordHasher) -> (i64, i64) {
        let (tx, rx) = std::sync::mpsc::channel();
        hasher
            .threads
            .run(Box::new(move || {
                let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send((stat, name));
            }))
            .unwrap();
        let (stat, name) = rx.recv().unwrap();
        assert!(name.is_some_and(|n| n.starts_with("keel-hash-")), "on a hashing thread");
        // Past the command name, which may hold spaces: field 3 onwards.
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        (fields[16].parse().unwrap(), fields[38].parse().unwrap())
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn hashes_run_at_the_lowest_priority_when_told() {
        let cfg = PasswordsConfig { memory_kib: 64, iterations: 1, ..PasswordsConfig::default() };
        let normal = PasswordHasher::from_config(&cfg).unwrap();
        assert_eq!(hashing_thread_priority(&normal).1, 0, "SCHED_OTHER by default");
        let low = PasswordHasher::from_config(&PasswordsConfig { low_priority: true, ..cfg }).unwrap();
        assert_eq!(hashing_thread_priority(&low), (19, 3), "nice 19, SCHED_BATCH");
    }

    #[tokio::test]
    async fn a_failing_job_leaves_its_hashing_thread_serving() {
        let cfg =
            PasswordsConfig { memory_kib: 64, iterations: 1, max_concurrent_hashes: 1, ..PasswordsConfig::default() };
        let hasher = PasswordHasher::from_config(&cfg).unwrap();
        let failed = hasher.blocking(|| -> Result<(), PasswordError> { panic!("a bug in a job") }).await;
        assert!(matches!(failed, Err(PasswordError::Internal(_))), "{failed:?}");
        assert_eq!(hasher.available_permits(), 1, "its slot freed");
        let phc = hasher.hash("still-serving-password").await.unwrap();
        assert!(hasher.verify("still-serving-password", &phc).await.unwrap());
    }

    #[test]
    fn policy() {
        let p = PasswordPolicy::default();
        assert_eq!(p.check("short", None), Err(PolicyViolation::TooShort(12)));
        assert_eq!(p.check(&"x".repeat(129), None), Err(PolicyViolation::TooLong(128)));
        assert_eq!(p.check("Password1234", None), Err(PolicyViolation::Common));
        assert_eq!(p.check("QWERTYUIOP12", None), Err(PolicyViolation::Common), "case-insensitive");
        assert_eq!(
            p.check("alice.smith@example.com", Some("Alice.Smith@example.com")),
            Err(PolicyViolation::SameAsEmail)
        );
        assert_eq!(p.check("alice.smith1", Some("alice.smith1@example.com")), Err(PolicyViolation::SameAsEmail));
        assert!(p.check("plum-harbor-velvet-42", Some("alice@example.com")).is_ok());
    }
}
