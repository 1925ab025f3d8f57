//! The `Idempotency-Key` header a join carries, so a retried request is answered with the first
//! one's result instead of being applied twice. [`MAX_LEN`] and [`PATTERN`] are what the OpenAPI
//! document states (the gateway's tests hold it to them).

use keel::http::Problem;

use crate::validate;

/// The header's name.
pub const HEADER: &str = "idempotency-key";

/// The longest key, in characters.
pub const MAX_LEN: usize = cityevents_api::limits::MAX_IDEMPOTENCY_KEY;

/// The keys [`is_valid`] accepts, as a regular expression.
pub const PATTERN: &str = cityevents_api::limits::IDEMPOTENCY_KEY;

const FIELD: &str = "Idempotency-Key";
/// [`PATTERN`] in words, for the problems.
const RULE: &str = "1 to 128 characters of A-Z a-z 0-9 _ -";

/// Whether `key` is 1 to [`MAX_LEN`] characters of `A-Z a-z 0-9 _ -`.
pub fn is_valid(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_LEN && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The key `headers` carry: sent exactly once and valid, or a 400 problem naming the header.
pub fn from_headers(headers: &http::HeaderMap) -> Result<String, Problem> {
    let mut values = headers.get_all(HEADER).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(validate::invalid(FIELD, &format!("header is required once ({RULE})")));
    };
    match value.to_str() {
        Ok(key) if is_valid(key) => Ok(key.to_owned()),
        _ => Err(validate::invalid(FIELD, &format!("must be {RULE}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        let mut h = http::HeaderMap::new();
        assert!(from_headers(&h).is_err(), "missing");
        for bad in ["", "has space", "é", &"x".repeat(129), "a/b"] {
            h.insert(HEADER, http::HeaderValue::from_str(bad).unwrap_or(http::HeaderValue::from_static("!")));
            assert!(from_headers(&h).is_err(), "{bad:?}");
        }
        h.insert(HEADER, http::HeaderValue::from_bytes(b"caf\xe9").unwrap());
        assert!(from_headers(&h).is_err(), "not ASCII");
        for good in ["a", "A-b_9", &"x".repeat(128)] {
            h.insert(HEADER, http::HeaderValue::from_str(good).unwrap());
            assert_eq!(from_headers(&h).unwrap(), good);
        }
        h.append(HEADER, http::HeaderValue::from_static("second"));
        assert!(from_headers(&h).is_err(), "twice");
    }

    proptest::proptest! {
        /// [`is_valid`] accepts exactly what [`PATTERN`] matches: any string of the pattern's
        /// alphabet and lengths, and nothing with another character or a length out of range.
        #[test]
        fn is_valid_is_the_pattern(key in "[A-Za-z0-9_-]{1,128}", other in "\\PC*", extra in "[A-Za-z0-9_-]{129,200}") {
            proptest::prop_assert!(is_valid(&key));
            proptest::prop_assert!(!is_valid(&extra));
            let in_alphabet = !other.is_empty()
                && other.len() <= MAX_LEN
                && other.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            proptest::prop_assert_eq!(is_valid(&other), in_alphabet);
        }
    }
}
