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
/// let token = keel::config::Secret::new("s3cr3t");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_itself() {
        let s = Secret::new("hunter2hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(serde_yaml::to_string(&s).unwrap().trim(), "'***'");
        let n: Secret = serde_yaml::from_str("123456").unwrap();
        assert_eq!(n.expose(), "123456");
        assert!(serde_yaml::from_str::<Secret>("''").is_err());
    }
}
