//! [`Secret`]: a configuration value that never shows itself.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// What a secret looks like wherever it is printed: `Debug`, logs, errors and `config check`.
pub const MASK: &str = "***";

/// A secret configuration value (password, token, key).
///
/// It comes from the environment, from `${VAR}` interpolation or from a `<key>_file` (a Docker or
/// Kubernetes secret, a Vault agent file); in `production` a secret written inline in a YAML file
/// is refused. `Debug` and `Serialize` print `***`, so a secret cannot leak through logs or
/// `config check`; read it with [`Secret::expose`] only where it is used.
///
/// ```
/// let token = keel_config::Secret::new("s3cr3t");
/// assert_eq!(format!("{token:?}"), "Secret(***)");
/// assert_eq!(token.expose(), "s3cr3t");
/// ```
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The secret itself. Keep the result out of logs and error messages.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({MASK})")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Environment values arrive untyped: a numeric password is still a password.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(i64),
            Uint(u64),
            Float(f64),
            Bool(bool),
        }
        let s = match Raw::deserialize(d)? {
            Raw::Text(s) => s,
            Raw::Int(n) => n.to_string(),
            Raw::Uint(n) => n.to_string(),
            Raw::Float(n) => n.to_string(),
            Raw::Bool(b) => b.to_string(),
        };
        if s.is_empty() {
            return Err(de::Error::custom("a secret may not be empty"));
        }
        Ok(Secret::new(s))
    }
}

/// Values that ship as defaults in images, compose files and tutorials.
const DEFAULT_SECRETS: &[&str] = &[
    "secret",
    "password",
    "changeme",
    "change-me",
    "change_me",
    "changeit",
    "admin",
    "root",
    "postgres",
    "mysql",
    "mariadb",
    "redis",
    "guest",
    "test",
    "default",
    "example",
    "keel",
    "token",
    "apikey",
    "api-key",
    "api_key",
    "jwt-secret",
    "jwt_secret",
    "jwtsecret",
    "your-secret-key",
    "your_secret_key",
    "yoursecretkey",
    "mysecret",
    "supersecret",
    "super-secret",
    "s3cr3t",
    "sekret",
    "development",
    "dev",
    "local",
    "insecure",
    "notasecret",
];

/// Placeholders that mean "someone forgot to set this".
const PLACEHOLDERS: &[&str] = &["changeme", "change-me", "change_me", "replace-me", "replace_me", "your-"];

/// Why `value` is too weak to be a production secret, or `None`.
///
/// Weak means: a well-known default (`postgres`, `changeme`, `secret`, …), a placeholder, one of
/// the bundled common passwords (compared case-insensitively), one character repeated, or shorter
/// than 12 characters. For a URL only its password counts (a URL without one is not weak here).
///
/// ```
/// use keel_config::weak_secret;
/// assert!(weak_secret("changeme").is_some());
/// assert!(weak_secret("postgres://app:postgres@db/app").is_some());
/// assert!(weak_secret("postgres://app@db/app").is_none());
/// assert!(weak_secret("kV8r2xQ0pLm4Zt7Wb1Yc").is_none());
/// ```
pub fn weak_secret(value: &str) -> Option<&'static str> {
    let candidate = match url_password(value) {
        Some(p) => p,
        None if value.contains("://") => return None,
        None => value,
    };
    let lower = candidate.trim().to_ascii_lowercase();
    if DEFAULT_SECRETS.contains(&lower.as_str()) {
        return Some("a well-known default value");
    }
    if PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
        return Some("a placeholder value");
    }
    if is_common_password(&lower) {
        return Some("a common password");
    }
    let mut chars = lower.chars();
    if let Some(first) = chars.next()
        && chars.all(|c| c == first)
    {
        return Some("one character repeated");
    }
    if candidate.chars().count() < 12 {
        return Some("shorter than 12 characters");
    }
    None
}

/// The password of `scheme://user:password@host…`, if there is one.
fn url_password(value: &str) -> Option<&str> {
    let (_, rest) = value.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// The bundled list of common passwords (lowercase).
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

/// Whether `lowercase` is on the bundled common-password list (`keel::security`'s password
/// policy refuses these too).
#[doc(hidden)]
pub fn is_common_password(lowercase: &str) -> bool {
    static SET: std::sync::OnceLock<std::collections::HashSet<&'static str>> = std::sync::OnceLock::new();
    SET.get_or_init(|| COMMON_PASSWORDS.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect())
        .contains(lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_itself() {
        let s = Secret::new("hunter2hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(serde_norway::to_string(&s).unwrap().trim(), "'***'");
        let n: Secret = serde_norway::from_str("123456").unwrap();
        assert_eq!(n.expose(), "123456");
        assert!(serde_norway::from_str::<Secret>("''").is_err());
    }

    #[test]
    fn weak_values_are_named() {
        for weak in ["secret", "Password1", "hunter2", "aaaaaaaaaaaaaaaa", "short-1", "please-changeme-now"] {
            assert!(weak_secret(weak).is_some(), "{weak}");
        }
        assert!(weak_secret("mysql://root:root@db/app").is_some());
        assert!(weak_secret("redis://:Tr0ub4dor-and-3-more@cache:6379").is_none());
        assert!(weak_secret("Z2x4c2Rm-a9f3e1c7b5d2-q8").is_none());
    }
}
