//! Serde helpers for human-readable durations: `250ms`, `5s`, `1m`, `1h 30m`.
//!
//! Use with `#[serde(with = "keel::config::duration")]` (`keel_config::duration` without the
//! `keel` facade). A bare number is rejected on purpose:
//! `timeout: 5` could mean seconds or milliseconds, and a wrong guess is a production incident.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de};

/// Writes a duration the way a person would (`5s`, `250ms`, `1m`).
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// Reads `250ms`, `5s`, `1m`, `2h`, `1h 30m`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(f64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(s) => parse(&s).map_err(de::Error::custom),
        Raw::Number(n) => {
            Err(de::Error::custom(format!("`{n}` has no unit: write a duration such as 250ms, 5s or 1m")))
        }
    }
}

/// Parses one duration string, with a message that says what is expected.
pub fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}): write a duration such as 250ms, 5s or 1m"))
}

/// The same for an optional duration: a duration (`5s`), or unset (`null` or absent with
/// `#[serde(default)]`). Use with `#[serde(with = "keel_config::duration::option")]`.
pub mod option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the duration, or `null`.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads a duration or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super")] Duration);
        Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(d)| d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert!(parse("5").is_err());
        assert!(parse("soon").is_err());
    }

    #[test]
    fn round_trips_through_yaml() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T {
            #[serde(with = "super")]
            d: Duration,
        }
        let y = serde_norway::to_string(&T { d: Duration::from_millis(1500) }).unwrap();
        assert_eq!(y.trim(), "d: 1s 500ms");
        assert_eq!(serde_norway::from_str::<T>(&y).unwrap().d, Duration::from_millis(1500));
        let err = serde_norway::from_str::<T>("d: 5").unwrap_err().to_string();
        assert!(err.contains("has no unit"), "{err}");
    }

    #[test]
    fn an_optional_duration_is_a_duration_or_null() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct T {
            #[serde(default, with = "super::option")]
            d: Option<Duration>,
        }
        assert_eq!(serde_norway::from_str::<T>("d: 250ms").unwrap().d, Some(Duration::from_millis(250)));
        assert_eq!(serde_norway::from_str::<T>("d: null").unwrap().d, None);
        assert_eq!(serde_norway::from_str::<T>("{}").unwrap().d, None);
        assert!(serde_norway::to_string(&T { d: None }).unwrap().contains("d: null"));
        let err = serde_norway::from_str::<T>("d: 5").unwrap_err().to_string();
        assert!(err.contains("has no unit"), "{err}");
    }

    proptest::proptest! {
        /// What `config show` writes reads back as the same duration, to the nanosecond.
        #[test]
        fn a_written_duration_reads_back(secs in 0u64..10_000_000_000, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            proptest::prop_assert_eq!(parse(&humantime::format_duration(d).to_string()), Ok(d));
        }

        /// Any text is a duration or an error that quotes it, never a panic.
        #[test]
        fn any_text_is_a_duration_or_an_error(s in "\\PC{0,40}") {
            if let Err(e) = parse(&s) {
                let quoted = format!("`{s}`");
                proptest::prop_assert!(e.contains(&quoted));
            }
        }
    }
}
