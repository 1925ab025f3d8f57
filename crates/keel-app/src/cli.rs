//! The command line every Keel binary shares.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// `<service> [--config PATH] [serve | config check | healthcheck [--ready] | version]`, or
/// `<service> --version`
#[derive(Debug, Parser)]
#[command(disable_version_flag = true)]
pub(crate) struct Cli {
    /// Config file (YAML). Values in it may use ${VAR} and ${VAR:-default}.
    #[arg(long, short = 'c', env = "KEEL_CONFIG", global = true, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
    /// Print name, version, git commit and build profile (as the `version` command does).
    #[arg(long = "version", short = 'V')]
    pub(crate) print_version: bool,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the service (the default).
    Serve,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Probe the running service on 127.0.0.1 (for container HEALTHCHECKs); exit 0 when healthy.
    Healthcheck {
        /// Probe readiness instead of liveness.
        #[arg(long)]
        ready: bool,
        /// Give up after this long.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
        /// Ask grpc.health.v1 on the gRPC listener instead (`grpc.port`, else `http.port`):
        /// the whole server, or the service named (`--grpc symbols.v1.Symbols`).
        #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "SERVICE")]
        grpc: Option<String>,
    },
    /// Print name, version, git commit and build profile.
    Version,
    /// Service level objectives.
    Slo {
        #[command(subcommand)]
        command: SloCommand,
    },
    /// Inspect, replay or purge a topic's dead-letter queue on the configured bus.
    #[cfg(feature = "events")]
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Apply the service's pending database migrations (safe to run from several instances).
    /// Offered only by a service with a database (one that declares migrations).
    Migrate {
        #[command(subcommand)]
        command: Option<MigrateCommand>,
    },
    /// The tamper-evident audit log.
    #[cfg(all(feature = "sql", feature = "security"))]
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Field-encryption keys (security.encryption.*).
    #[cfg(feature = "security")]
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// JSON Web Tokens signed with security.jwt.signing_key.
    #[cfg(feature = "security")]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// `token` subcommands.
#[cfg(feature = "security")]
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Print a token for SUBJECT signed with security.jwt.signing_key, with the configured
    /// issuer and audience: for development and for operators' scripts (a service that takes
    /// its tokens from an identity provider has no signing key and refuses this).
    Issue {
        /// The token's subject (`sub`).
        subject: String,
        /// A role the token carries (`roles`); repeat for several.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Lifetime, at most 24h (a token cannot be taken back before it expires); default
        /// security.jwt.ttl.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
}

/// `slo` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum SloCommand {
    /// Print the Prometheus rule file for these SLO files: recording rules, burn-rate alerts and
    /// alerts on Keel's own metrics; exit 78 naming every problem of an invalid file.
    Rules {
        /// One SLO file per service (YAML).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Base URL of the runbooks; each alert links `<URL>/<AlertName>.md`.
        #[arg(long, value_name = "URL", default_value = keel_slo::DEFAULT_RUNBOOKS)]
        runbooks: String,
    },
}

/// `audit` subcommands.
#[cfg(all(feature = "sql", feature = "security"))]
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Walk the hash chain; exit 0 when intact, 1 naming the first broken row.
    Verify {
        /// Also check the chain against a checkpoint from the logs (`ROWS:HASH`, the
        /// `checkpoint` field of the latest `audit checkpoint` line): reports truncation and
        /// rewrites the chain alone cannot show.
        #[arg(long, value_name = "ROWS:HASH")]
        checkpoint: Option<keel_security::audit::Checkpoint>,
    },
}

/// `keys` subcommands.
#[cfg(feature = "security")]
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Print 32 random bytes in base64: a new master key or blind-index key.
    Generate,
    /// Print a new data key wrapped by the configured master key, as `<kid>: <wrapped>`.
    New {
        /// The new key's id (e.g. 2025-06).
        kid: String,
    },
    /// Make a new data key in the service's database now; print its id. It becomes active
    /// once every instance knows it (3 × refresh_interval), and values move to it in the
    /// background.
    Rotate,
    /// Print the data keys of the configuration and the database, their states and the values
    /// each encrypts (JSON).
    Status,
    /// Re-wrap every configured data key under a new master key and print the new `data_keys`;
    /// in a service that keeps data keys in its database, re-wrap those in place too.
    Rewrap {
        /// File holding the new master key (base64), e.g. a mounted secret.
        #[arg(long, value_name = "PATH")]
        new_master_key_file: PathBuf,
    },
}

/// `dlq` subcommands.
#[cfg(feature = "events")]
#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// Print the dead letters of TOPIC (JSON lines, oldest first) without removing them.
    List {
        /// The topic whose `<topic>.dlq` to read.
        topic: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send dead letters back to the consumer group that gave up on them, with a fresh attempt count.
    Replay {
        /// The topic.
        topic: String,
        /// Only the event with this id.
        #[arg(long)]
        id: Option<String>,
    },
    /// Delete the dead letter of TOPIC with event id ID, without replaying it.
    Discard {
        /// The topic.
        topic: String,
        /// The event's id.
        #[arg(long)]
        id: String,
    },
    /// Delete the dead letters of TOPIC.
    Purge {
        /// The topic.
        topic: String,
    },
}

/// `migrate` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum MigrateCommand {
    /// List every migration as applied or pending; exit 0.
    Status,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate the configuration; print it (secrets as "***") or every problem.
    Check,
}

impl Command {
    /// The subcommand's name as typed.
    pub(crate) fn name(&self) -> Option<&'static str> {
        match self {
            Self::Migrate { .. } => Some("migrate"),
            #[cfg(all(feature = "sql", feature = "security"))]
            Self::Audit { .. } => Some("audit"),
            _ => None,
        }
    }
}

/// Keel's commands that depend on what the service declares, and whether `service` can use
/// them: `migrate` needs a database ([`crate::Service::migrations`]), `audit` an audit log
/// ([`crate::Service::keeps_audit_log`]).
pub(crate) fn offered<C>(service: &crate::Service<C>) -> Vec<(&'static str, bool)> {
    let mut out = vec![("migrate", service.has_database())];
    if cfg!(all(feature = "sql", feature = "security")) {
        out.push(("audit", service.has_database() && service.audit_log));
    }
    out
}

/// The end of `--help`: where configuration comes from, profiles, ports and the admin token.
pub(crate) fn footer(name: &str) -> String {
    let p = keel_config::env_prefix(name);
    format!(
        "Configuration, lowest precedence first: built-in defaults, the config file (--config PATH or
KEEL_CONFIG; YAML, ${{VAR}} and ${{VAR:-default}} expanded), the environment:
  {p}__<SECTION>__<KEY>=<value>
      any setting, `__` between levels: {p}__HTTP__PORT=8080,
      {p}__LOG__LEVEL=debug
  KEEL_ENV=development|test|production
      the profile (default development); production requires real secrets and never migrates
      on start-up
  RUST_LOG=<filter>
      replaces log.level

Ports: the API on http.port; /metrics and /admin/* on management.addr (127.0.0.1, port
http.port + 1000, unless set). The operator page is /admin/status there; it needs
management.admin_token
({p}__MANAGEMENT__ADMIN_TOKEN or management.admin_token_file).

`{name} config check` prints every setting with its value (secrets as \"***\").
Exit codes: 0 ok, 1 failure, 64 usage, 69 cannot start, 70 forced shutdown, 78 configuration."
    )
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    keel_config::duration::parse(s)
}

/// Exit codes, from BSD's `sysexits.h` where one fits.
///
/// | code | constant | meaning |
/// |---|---|---|
/// | 0 | | success |
/// | 1 | [`FAILURE`](exit::FAILURE) | a healthcheck failed, or a command failed at run time |
/// | 64 | [`USAGE`](exit::USAGE) | the command line is wrong (`EX_USAGE`) |
/// | 69 | [`START`](exit::START) | the service could not start: a port in use, the runtime, telemetry (`EX_UNAVAILABLE`) |
/// | 70 | [`FORCED_SHUTDOWN`](exit::FORCED_SHUTDOWN) | shutdown was forced (`EX_SOFTWARE`) |
/// | 78 | [`CONFIG`](exit::CONFIG) | the configuration is invalid (`EX_CONFIG`) |
pub mod exit {
    /// Healthcheck failed, or another runtime failure.
    pub const FAILURE: u8 = 1;
    /// The command line is wrong: an unknown command or option, a missing argument (`EX_USAGE`).
    pub const USAGE: u8 = 64;
    /// The configuration is invalid: the file does not parse, a value fails validation, a
    /// required setting or secret is missing, or a set-up step refuses what the configuration
    /// gives it (`EX_CONFIG`). `config check` exits with it too.
    pub const CONFIG: u8 = 78;
    /// The service could not start for a reason outside its configuration: a port in use, an
    /// unreachable dependency a command needs, a set-up step failing (`EX_UNAVAILABLE`).
    pub const START: u8 = 69;
    /// Shutdown was forced by a second signal or the shutdown timeout (`EX_SOFTWARE`).
    pub const FORCED_SHUTDOWN: u8 = 70;
}

/// GETs `http://127.0.0.1:<port><path>` (over TLS with `tls`) with a deadline; returns the
/// status code and body.
pub(crate) async fn probe(
    port: u16,
    path: &str,
    timeout: Duration,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<(u16, String), String> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
        match tls {
            None => get(stream, port, path).await,
            Some(config) => {
                let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS with 127.0.0.1:{port}: {e}"))?;
                get(stream, port, path).await
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
}

/// `GET path` over `io` with HTTP/1.1.
async fn get<I>(io: I, port: u16, path: &str) -> Result<(u16, String), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, format!("127.0.0.1:{port}"))
            .header(http::header::USER_AGENT, "keel-healthcheck")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The TLS a probe of the listener configured by `tls` (at `section`) speaks, offering `alpn`:
/// none for a plaintext listener; the listener's own certificate pinned otherwise. A listener
/// that requires client certificates cannot be probed.
pub(crate) fn probe_tls(
    tls: &keel_tls::ServerTlsConfig,
    section: &str,
    alpn: &[&[u8]],
) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
    if !tls.enabled() {
        return Ok(None);
    }
    if tls.client_auth == keel_tls::ClientAuth::Required {
        return Err(format!(
            "{section}.client_auth is required: a probe has no client certificate (probe the management listener's metrics or use optional)"
        ));
    }
    keel_tls::probe_config(tls, section, alpn).map(Some).map_err(|e| e.to_string())
}
