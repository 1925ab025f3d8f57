//! The `X-Request-Id` a client sends: kept when it is 1 to 128 characters of `A-Z a-z 0-9 . _ :
//! -`, otherwise replaced. Whatever is kept is exactly what was sent and safe to log and to send
//! on as a header.

#![no_main]

use keel::http::RequestId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else { return };
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
    let expected = !data.is_empty() && data.len() <= 128 && data.iter().all(allowed);
    match RequestId::parse(&value) {
        Some(id) => {
            assert!(expected, "kept {data:?}");
            assert_eq!(id.as_str().as_bytes(), data);
            assert_eq!(id.header_value(), &value);
        }
        None => assert!(!expected, "replaced a good id {data:?}"),
    }
});
