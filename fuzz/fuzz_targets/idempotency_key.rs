//! The `Idempotency-Key` header of a join: 1 to 128 characters of `A-Z a-z 0-9 _ -`, sent once.
//! Any header value is accepted exactly when it matches that, and a refusal is a 400 naming the
//! header, never a panic.

#![no_main]

use cityevents_common::idempotency;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else { return };
    let mut headers = http::HeaderMap::new();
    headers.insert(idempotency::HEADER, value.clone());
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-');
    let expected = !data.is_empty() && data.len() <= idempotency::MAX_LEN && data.iter().all(allowed);
    match idempotency::from_headers(&headers) {
        Ok(key) => {
            assert!(expected, "accepted {data:?}");
            assert_eq!(key.as_bytes(), data);
        }
        Err(problem) => {
            assert!(!expected, "refused {data:?}");
            assert_eq!(problem.status_code(), http::StatusCode::BAD_REQUEST);
        }
    }
    // Sent twice, even the same good key is refused.
    headers.append(idempotency::HEADER, value);
    assert!(idempotency::from_headers(&headers).is_err());
});
