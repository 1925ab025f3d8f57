//! `app.mail.*`: how the notifier delivers mail.
//!
//! ```yaml
//! app:
//!   mail:
//!     transport: file            # file (development: data/mail/*.eml, each link printed) or smtp
//!     from: "City Events <no-reply@cityevents.invalid>"
//!     base_url: http://127.0.0.1:8080   # where the links in mails point (the public site)
//!     dir: data/mail             # the file transport's directory (created 0700)
//!     smtp:
//!       host: smtp.example.com
//!       port: 587                # default by security: 587 starttls, 465 tls, 25 none
//!       security: starttls       # starttls (required, never downgraded), tls (implicit) or none
//!       username: cityevents     # with password (or password_file): AUTH PLAIN/LOGIN over TLS only
//!       password_file: /run/secrets/smtp-password
//!       ca_file: /etc/ssl/private-ca.pem   # trust this CA instead of the public roots
//!       timeout: 10s             # per SMTP command and connect
//!       pool_size: 4             # connections kept open to the server
//! ```

use std::path::PathBuf;
use std::time::Duration;

use keel::config::{Secret, Validation};
use serde::{Deserialize, Serialize};

/// How mail leaves the notifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Each message is written to `dir` as an `.eml` file and its link logged (development:
    /// every flow works with no mail server). Refused in production.
    File,
    /// Sent to `smtp.host`.
    Smtp,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS, which the server must offer (no downgrade).
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No TLS: only for a relay on the same host or pod; credentials are refused with it.
    None,
}

/// `app.mail.smtp.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// The server's host name (also the name its certificate must carry).
    pub host: String,
    /// Its port; default by `security`: 587, 465 or 25.
    pub port: Option<u16>,
    /// Default `starttls`.
    pub security: Security,
    /// The account to authenticate as; none: no authentication.
    pub username: Option<String>,
    /// Its password (`password_file` for a secret file).
    pub password: Option<Secret>,
    /// A PEM file of CA certificates to trust instead of the public roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Limit on connecting and on each SMTP command. Default `10s`.
    #[serde(with = "keel::config::duration")]
    pub timeout: Duration,
    /// Connections kept open to the server. Default `4`.
    pub pool_size: u32,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: None,
            security: Security::Starttls,
            username: None,
            password: None,
            ca_file: None,
            timeout: Duration::from_secs(10),
            pool_size: 4,
        }
    }
}

impl SmtpConfig {
    /// The port: the configured one or the default for `security`.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.security {
            Security::Starttls => 587,
            Security::Tls => 465,
            Security::None => 25,
        })
    }
}

/// `app.mail.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailConfig {
    /// Default `file`.
    pub transport: Transport,
    /// The `From` mailbox. Default `City Events <no-reply@cityevents.invalid>`.
    pub from: String,
    /// The public site's address, which links in mails start with. Default
    /// `http://127.0.0.1:8080` (the all-in-one gateway).
    pub base_url: String,
    /// The file transport's directory. Default `data/mail`.
    pub dir: PathBuf,
    /// The SMTP transport.
    pub smtp: SmtpConfig,
}

impl Default for MailConfig {
    fn default() -> Self {
        Self {
            transport: Transport::File,
            from: "City Events <no-reply@cityevents.invalid>".into(),
            base_url: "http://127.0.0.1:8080".into(),
            dir: PathBuf::from("data/mail"),
            smtp: SmtpConfig::default(),
        }
    }
}

impl MailConfig {
    /// Where mail goes, for a person: `files in data/mail` or `SMTP mail.example.com:587`.
    pub fn destination(&self) -> String {
        match self.transport {
            Transport::File => format!(
                "files in {} (one .eml per message; each link logged, and printed whole on the console)",
                self.dir.display()
            ),
            Transport::Smtp => format!("SMTP {}:{}", self.smtp.host, self.smtp.port()),
        }
    }

    /// Checks every key; paths are relative to `app`.
    pub(crate) fn validate(&self, v: &mut Validation<'_>) {
        if self.from.parse::<lettre::message::Mailbox>().is_err() {
            v.invalid("mail.from", "must be a mailbox: `Name <address@domain>` or `address@domain`");
        }
        let base = self.base_url.as_str();
        let scheme_ok = base.starts_with("https://") || base.starts_with("http://");
        if !scheme_ok || base.len() > 200 || base.contains(['?', '#', ' ']) || base.ends_with('/') {
            v.invalid("mail.base_url", "must be an http(s) URL without query, fragment or trailing slash");
        }
        if self.transport == Transport::File && self.dir.as_os_str().is_empty() {
            v.invalid("mail.dir", "is required by the file transport");
        }
        let s = &self.smtp;
        if self.transport == Transport::Smtp {
            let host_ok = !s.host.is_empty()
                && s.host.len() <= 253
                && s.host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if !host_ok {
                v.invalid("mail.smtp.host", "is required by the smtp transport: a host name or IP address");
            }
        }
        if s.port == Some(0) {
            v.invalid("mail.smtp.port", "must be between 1 and 65535");
        }
        if s.username.is_some() != s.password.is_some() {
            v.invalid("mail.smtp.password", "username and password go together");
        }
        if s.security == Security::None && s.username.is_some() {
            v.invalid("mail.smtp.security", "none would send the password in clear: use starttls or tls");
        }
        if s.timeout < Duration::from_secs(1) || s.timeout > Duration::from_secs(300) {
            v.invalid("mail.smtp.timeout", "must be between 1s and 5m");
        }
        if !(1..=64).contains(&s.pool_size) {
            v.invalid("mail.smtp.pool_size", "must be between 1 and 64");
        }
    }
}
