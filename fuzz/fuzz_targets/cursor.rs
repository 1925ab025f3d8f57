//! Page cursors: opaque text a client sends back. Anything decodes to a bounded position or is
//! refused (a 400 naming `cursor`), never a panic; what decodes encodes to a cursor that decodes
//! to the same position.

#![no_main]

use keel::http::page::{Cursor, Page};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Cursor::decode(text) {
        Some(c) => {
            assert!(c.id.len() <= 64, "an id of {} bytes", c.id.len());
            assert_eq!(Cursor::decode(&c.encode()).as_ref(), Some(&c));
        }
        None => {
            assert!(
                text.is_empty() || Page::parse(None, Some(text)).is_err(),
                "refused by decode, accepted by the query"
            );
        }
    }
});
