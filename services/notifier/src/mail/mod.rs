//! The mail channel: renders each `mail.requested` from its templates (plain text and HTML) and
//! delivers it over SMTP, or into files in development.
//!
//! * [`Mailer`] is built from `app.mail` ([`MailConfig`]): lettre's pooled async SMTP transport
//!   (STARTTLS required or implicit TLS through rustls, an optional private CA, AUTH, a timeout on
//!   connecting and every command), or lettre's file transport writing `<dir>/<id>.eml` and
//!   logging the message's link, so every account flow works with no mail server.
//! * Delivery failures are sorted by what retrying can do ([`SendError`]): the server cannot be
//!   reached → the mail consumer pauses without spending an attempt ([`SmtpHealth`]); a 4xx
//!   answer → retried with backoff; a 5xx answer (a refused address) → dead-lettered.
//! * Metrics: `notifier_mail_total{template,outcome}` (`sent`, `skipped`, `failed`,
//!   `rejected`) and `notifier_mail_send_seconds{transport}`.

mod config;
pub(crate) mod handler;
mod render;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lettre::message::Mailbox;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

pub use config::{MailConfig, Security, SmtpConfig, Transport};
pub(crate) use render::render;

/// How long the mail consumer waits after the server could not be reached before trying again.
const SMTP_RETRY: Duration = Duration::from_secs(5);

/// Why the mailer could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailError {
    /// A setting cannot be used (the message names the key).
    #[error("{0}")]
    Config(String),
    /// A metric could not be registered.
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
}

/// Why a message was not delivered, by what retrying can do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The server could not be reached, or timed out: pause and try again.
    #[error("mail server unavailable: {0}")]
    Unavailable(String),
    /// The server said try later (4xx), or the file could not be written.
    #[error("mail not accepted yet: {0}")]
    Transient(String),
    /// The server refused the message for good (5xx: a bad address, a policy).
    #[error("mail refused: {0}")]
    Permanent(String),
}

/// Whether the SMTP server is believed reachable: down for [`SMTP_RETRY`] after a send could not
/// reach it. A [`Dependency`](keel::events::consumer::Dependency) of the mail consumer, which
/// pauses (spending no attempts) while it is down.
#[derive(Debug, Clone, Default)]
pub struct SmtpHealth {
    /// Unix milliseconds until which the server counts as down.
    down_until: Arc<AtomicU64>,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl SmtpHealth {
    fn down(&self) {
        let until = unix_ms().saturating_add(u64::try_from(SMTP_RETRY.as_millis()).unwrap_or(u64::MAX));
        self.down_until.store(until, Ordering::Relaxed);
    }
    fn up(&self) {
        self.down_until.store(0, Ordering::Relaxed);
    }
}

impl keel::events::consumer::Dependency for SmtpHealth {
    fn name(&self) -> &str {
        "smtp"
    }
    fn is_available(&self) -> bool {
        unix_ms() >= self.down_until.load(Ordering::Relaxed)
    }
}

enum Sender {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>, PathBuf),
}

/// The SMTP steps a send takes at most, each within `smtp.timeout` (see `Inner::send_bound`).
const SEND_STEPS: u32 = 8;

/// Renders and delivers mail. Cheap to clone.
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    sender: Sender,
    from: Mailbox,
    base_url: String,
    health: SmtpHealth,
    metrics: MailMetrics,
    /// [`Mailer::send_bound`]: the SMTP commands of one send (connect, greeting, TLS, AUTH,
    /// MAIL, RCPT, DATA and its end), each bounded by `smtp.timeout`.
    send_bound: Duration,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let transport = match &self.inner.sender {
            Sender::Smtp(_) => "smtp",
            Sender::File(..) => "file",
        };
        f.debug_struct("Mailer").field("transport", &transport).finish_non_exhaustive()
    }
}

impl Mailer {
    /// The mailer `cfg` describes, counting in `metrics`. With `make_dir`, the file transport's
    /// directory is created (mode 0700: mails carry account tokens); `config check` passes
    /// `false`.
    pub fn new(cfg: &MailConfig, metrics: &keel::telemetry::Metrics, make_dir: bool) -> Result<Self, MailError> {
        let invalid = |key: &str, e: &dyn std::fmt::Display| MailError::Config(format!("app.mail.{key}: {e}"));
        let from: Mailbox = cfg.from.parse().map_err(|e| invalid("from", &e))?;
        let sender = match cfg.transport {
            Transport::File => {
                if make_dir {
                    create_private_dir(&cfg.dir).map_err(|e| invalid("dir", &e))?;
                }
                Sender::File(AsyncFileTransport::new(&cfg.dir), cfg.dir.clone())
            }
            Transport::Smtp => Sender::Smtp(smtp_transport(&cfg.smtp)?),
        };
        let metrics = MailMetrics::register(metrics)?;
        Ok(Self {
            inner: Arc::new(Inner {
                sender,
                from,
                base_url: cfg.base_url.clone(),
                health: SmtpHealth::default(),
                metrics,
                send_bound: cfg.smtp.timeout.saturating_mul(SEND_STEPS),
            }),
        })
    }

    /// What the mail consumer waits for while the server cannot be reached.
    pub fn health(&self) -> SmtpHealth {
        self.inner.health.clone()
    }

    pub(crate) fn from(&self) -> &Mailbox {
        &self.inner.from
    }

    /// The longest a send can take: a mail being sent is left to its sender this long.
    pub(crate) fn send_bound(&self) -> Duration {
        self.inner.send_bound
    }

    pub(crate) fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    pub(crate) fn count(&self, template: &str, outcome: &str) {
        self.inner.metrics.total.with_label_values(&[template, outcome]).inc();
    }

    /// Delivers `message`; `link` is logged by the file transport (development).
    pub(crate) async fn send(&self, message: &Message, link: &str) -> Result<(), SendError> {
        let started = Instant::now();
        let (transport, result) = match &self.inner.sender {
            Sender::Smtp(smtp) => {
                let r = smtp.send(message.clone()).await.map(|_| ()).map_err(|e| classify(&e));
                match &r {
                    Err(SendError::Unavailable(_)) => self.inner.health.down(),
                    _ => self.inner.health.up(),
                }
                ("smtp", r)
            }
            Sender::File(file, dir) => {
                let r = file.send(message.clone()).await.map_err(|e| SendError::Transient(e.to_string()));
                if let Ok(id) = &r {
                    let path = dir.join(format!("{id}.eml"));
                    tracing::info!(path = %path.display(), link, "mail written (file transport): open the link to go on");
                    // The log masks the link's token, and the .eml's quoted-printable body breaks
                    // it across lines: the console gets it whole. Development only: production
                    // refuses the file transport.
                    if !link.is_empty() {
                        #[allow(clippy::print_stderr)]
                        {
                            eprintln!("mail to {}: open {link}", mask_recipient(message));
                        }
                    }
                }
                ("file", r.map(|_| ()))
            }
        };
        self.inner.metrics.seconds.with_label_values(&[transport]).observe(started.elapsed().as_secs_f64());
        result
    }
}

/// The first recipient as the log shows addresses (`j***@example.com`).
fn mask_recipient(message: &Message) -> String {
    let to = message.envelope().to().first().map(ToString::to_string).unwrap_or_default();
    keel::telemetry::mask::email(&to)
}

/// Sorts an SMTP failure by what retrying can do.
fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    // The server's own words can name the recipient: keep the status code and the kind only.
    let what = e.status().map_or_else(|| e.to_string(), |code| format!("SMTP {code}"));
    if e.is_permanent() {
        SendError::Permanent(what)
    } else if e.is_transient() {
        SendError::Transient(what)
    } else {
        // Connecting, TLS, a timeout, a dropped connection: the server, not the message.
        SendError::Unavailable(what)
    }
}

fn smtp_transport(s: &SmtpConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
    let invalid = |key: &str, e: &dyn std::fmt::Display| MailError::Config(format!("app.mail.smtp.{key}: {e}"));
    let tls = || -> Result<TlsParameters, MailError> {
        let mut b = TlsParameters::builder(s.host.clone());
        if let Some(path) = &s.ca_file {
            let pem =
                std::fs::read(path).map_err(|e| invalid("ca_file", &format!("cannot read {}: {e}", path.display())))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| invalid("ca_file", &e))?;
            b = b.certificate_store(lettre::transport::smtp::client::CertificateStore::None).add_root_certificate(cert);
        }
        b.build_rustls().map_err(|e| invalid("host", &e))
    };
    let tls = match s.security {
        Security::Starttls => Tls::Required(tls()?),
        Security::Tls => Tls::Wrapper(tls()?),
        Security::None => Tls::None,
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.clone())
        .port(s.port())
        .tls(tls)
        .timeout(Some(s.timeout))
        .pool_config(PoolConfig::new().max_size(s.pool_size));
    if let (Some(user), Some(password)) = (&s.username, &s.password) {
        b = b.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    Ok(b.build())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    // An existing directory keeps its mode on create: tighten it.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// `notifier_mail_total{template,outcome}` and `notifier_mail_send_seconds{transport}`.
#[derive(Debug, Clone)]
struct MailMetrics {
    total: IntCounterVec,
    seconds: HistogramVec,
}

impl MailMetrics {
    fn register(metrics: &keel::telemetry::Metrics) -> Result<Self, prometheus::Error> {
        let total = IntCounterVec::new(
            Opts::new(
                "notifier_mail_total",
                "Mail requests by template and outcome (sent, skipped: no verified address or turned off, \
                 failed: to be retried, rejected: refused for good).",
            ),
            &["template", "outcome"],
        )?;
        for t in TEMPLATES {
            for o in ["sent", "skipped", "failed", "rejected"] {
                total.with_label_values(&[t, o]);
            }
        }
        metrics.register(total.clone())?;
        let seconds = HistogramVec::new(
            HistogramOpts::new("notifier_mail_send_seconds", "Time to hand one message to the transport.")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["transport"],
        )?;
        metrics.register(seconds.clone())?;
        Ok(Self { total, seconds })
    }
}

/// Every template (the `template` label).
pub(crate) const TEMPLATES: [&str; 13] = [
    "verify_email",
    "reset_password",
    "password_changed",
    "sign_in_added",
    "already_registered",
    "address_unavailable",
    "event_canceled",
    "waitlist_promoted",
    "removed",
    "followed_published",
    "joined",
    "event_changed",
    "reminder",
];
