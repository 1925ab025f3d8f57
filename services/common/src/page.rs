//! Keyset pagination: `?limit=&cursor=` in, `{"items": […], "next_cursor": …}` out.
//!
//! A cursor is the sort key of the last item served plus its id, base64url-encoded JSON, opaque
//! to clients. Keyset pages stay stable while rows are inserted (no skipped or repeated items),
//! unlike `OFFSET`. A query fetches `limit + 1` rows to know whether there is a next page.
//!
//! ```
//! use cityevents_common::page::{Cursor, Page, PageQuery};
//!
//! let q = PageQuery { limit: Some(2), cursor: None }.validate().unwrap();
//! assert_eq!(q.limit, 2);
//! let rows = vec![(10_i64, "a"), (20, "b"), (30, "c")]; // fetched with LIMIT limit + 1
//! let page = Page::from_rows(rows, q.limit, |(k, id)| Cursor::new(*k, *id));
//! assert_eq!(page.items.len(), 2);
//! let next = Cursor::decode(page.next_cursor.as_deref().unwrap()).unwrap();
//! assert_eq!((next.key, next.id.as_str()), (20, "b"));
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel::http::Problem;
use serde::{Deserialize, Serialize};

/// Items per page when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = cityevents_api::limits::DEFAULT_LIMIT;
/// Largest `limit` accepted.
pub const MAX_LIMIT: u32 = cityevents_api::limits::MAX_LIMIT;
/// Longest cursor accepted, in bytes.
const MAX_CURSOR_LEN: usize = cityevents_api::limits::MAX_CURSOR;

/// The query string of a list endpoint (use with `keel::http::extract::Query`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PageQuery {
    /// 1 to 100; default 20.
    pub limit: Option<u32>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A validated page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Rows to serve (fetch one more).
    pub limit: u32,
    /// Serve rows after this one.
    pub after: Option<Cursor>,
}

impl PageQuery {
    /// Checks `limit` and `cursor` as a query string sends them (text; an empty value is the
    /// parameter left out): a `limit` that is not a number is the same 400 as one out of range.
    pub fn parse(limit: Option<&str>, cursor: Option<String>) -> Result<PageRequest, Problem> {
        let out_of_range = || crate::validate::invalid("limit", &format!("must be between 1 and {MAX_LIMIT}"));
        let limit = match limit {
            None | Some("") => None,
            Some(l) => Some(l.parse::<u32>().map_err(|_| out_of_range())?),
        };
        Self { limit, cursor }.validate()
    }

    /// Checks `limit` and decodes `cursor`; a 400 problem naming the field otherwise.
    pub fn validate(&self) -> Result<PageRequest, Problem> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(crate::validate::invalid("limit", &format!("must be between 1 and {MAX_LIMIT}")));
        }
        let after = match self.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(
                Cursor::decode(c)
                    .ok_or_else(|| crate::validate::invalid("cursor", "is not a cursor from this endpoint"))?,
            ),
        };
        Ok(PageRequest { limit, after })
    }
}

/// A position in a keyset order: the sort key of an item and its id (the tie-breaker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The sort key (e.g. microseconds since the epoch).
    #[serde(rename = "k")]
    pub key: i64,
    /// The item's id.
    #[serde(rename = "i")]
    pub id: String,
}

impl Cursor {
    /// A cursor after the item with this key and id.
    pub fn new(key: i64, id: impl Into<String>) -> Self {
        Self { key, id: id.into() }
    }

    /// The opaque form.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Parses the opaque form; `None` when it is not one.
    pub fn decode(text: &str) -> Option<Self> {
        if text.len() > MAX_CURSOR_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let c: Cursor = serde_json::from_slice(&bytes).ok()?;
        (c.id.len() <= 64).then_some(c)
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, in order.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page from up to `limit + 1` fetched rows: keeps `limit` and makes the cursor from the
    /// last kept row when there was one more.
    pub fn from_rows(mut rows: Vec<T>, limit: u32, cursor: impl Fn(&T) -> Cursor) -> Self {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if more { rows.last().map(|r| cursor(r).encode()) } else { None };
        Self { items: rows, next_cursor }
    }

    /// Maps the items, keeping the cursor.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(f).collect(), next_cursor: self.next_cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        for bad in [0, 101, 10_000] {
            assert!(PageQuery { limit: Some(bad), cursor: None }.validate().is_err(), "{bad}");
        }
        assert_eq!(PageQuery::default().validate().unwrap().limit, DEFAULT_LIMIT);
    }

    #[test]
    fn limits_sent_as_text_are_checked() {
        let raw = |l: &str| PageQuery::parse(Some(l), None);
        assert!(raw("abc").is_err());
        assert!(raw("0").is_err());
        assert!(raw("101").is_err());
        assert_eq!(raw("5").unwrap().limit, 5);
        assert_eq!(raw("").unwrap().limit, DEFAULT_LIMIT);
    }

    #[test]
    fn garbage_cursors_are_refused() {
        for bad in ["%%%", "aGVsbG8", &"A".repeat(1000)] {
            let q = PageQuery { limit: None, cursor: Some(bad.to_owned()) };
            assert!(q.validate().is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// A cursor the server issues reads back as the same position.
        #[test]
        fn an_issued_cursor_reads_back(key in proptest::prelude::any::<i64>(), id in "[A-Za-z0-9_-]{0,64}") {
            let c = Cursor::new(key, id);
            proptest::prop_assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }

        /// Any text is a cursor or refused, never a panic; what decodes has an id of at most
        /// 64 bytes.
        #[test]
        fn any_text_is_a_cursor_or_refused(text in "[A-Za-z0-9_=+/-]{0,300}") {
            if let Some(c) = Cursor::decode(&text) {
                proptest::prop_assert!(c.id.len() <= 64);
            }
        }
    }

    #[test]
    fn last_page_has_no_cursor() {
        let page = Page::from_rows(vec![1, 2], 2, |n| Cursor::new(*n, "x"));
        assert_eq!(page.next_cursor, None);
    }
}
