//! Keyset pagination: `?limit=&cursor=` in ([`Page`]), `{"items": […], "next_cursor": …}` out
//! ([`Paginated`]).
//!
//! A cursor is the sort key of the last item served plus its id, base64url-encoded JSON, opaque
//! to clients. Keyset pages stay stable while rows are inserted (no skipped or repeated items),
//! unlike `OFFSET`. A query fetches [`Page::fetch`] (`limit + 1`) rows, so that
//! [`Paginated::from_rows`] knows whether there is a next page.
//!
//! | input | refused with |
//! |---|---|
//! | `limit` not a number, below 1 or above [`MAX_LIMIT`] | 400 `invalid_input` naming `limit` |
//! | `cursor` not one this server issued (or over [`MAX_CURSOR_LEN`] bytes) | 400 `invalid_input` naming `cursor` |
//!
//! [`Page`] is also an extractor, for a list whose only query parameters are `limit` and
//! `cursor` (any other is refused as [`Query`](crate::extract::Query) refuses it); a list with
//! filters reads them with its own `Query<T>` and calls [`Page::parse`] with its `limit` and
//! `cursor` fields.
//!
//! ```
//! use keel_http::page::{Cursor, Page, Paginated};
//!
//! let page = Page::parse(Some("2"), None).unwrap();
//! assert_eq!(page.fetch(), 3);
//! let rows = vec![(10_i64, "a"), (20, "b"), (30, "c")]; // fetched with LIMIT page.fetch()
//! let out = Paginated::from_rows(rows, page.limit, |(k, id)| Cursor::new(*k, *id));
//! assert_eq!(out.items.len(), 2);
//! let next = Page::parse(None, out.next_cursor.as_deref()).unwrap().after.unwrap();
//! assert_eq!((next.key, next.id.as_str()), (20, "b"));
//! ```

use axum::extract::FromRequestParts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::request::Parts;
use serde::{Deserialize, Serialize};

use crate::Problem;
use crate::extract::Query;

/// Items per page when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 20;
/// Largest `limit` accepted.
pub const MAX_LIMIT: u32 = 100;
/// Longest cursor accepted, in bytes.
pub const MAX_CURSOR_LEN: usize = 256;
/// Longest id a cursor carries, in bytes.
const MAX_ID_LEN: usize = 64;

/// A checked page request: how many items, after which one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Items to serve, 1 to [`MAX_LIMIT`].
    pub limit: u32,
    /// Serve the items after this one; `None` for the first page.
    pub after: Option<Cursor>,
}

impl Page {
    /// Checks `limit` and `cursor` as a query string sends them (text; an empty value is the
    /// parameter left out). A `limit` that is not a number is the same 400 as one out of range.
    pub fn parse(limit: Option<&str>, cursor: Option<&str>) -> Result<Self, Problem> {
        let out_of_range = || Problem::invalid("limit", &format!("must be between 1 and {MAX_LIMIT}"));
        let limit = match limit {
            None | Some("") => DEFAULT_LIMIT,
            Some(l) => l.parse::<u32>().map_err(|_| out_of_range())?,
        };
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(out_of_range());
        }
        let after = match cursor.filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(
                Cursor::decode(c).ok_or_else(|| Problem::invalid("cursor", "is not a cursor from this endpoint"))?,
            ),
        };
        Ok(Self { limit, after })
    }

    /// Rows to fetch: one more than [`Page::limit`], which tells whether a next page exists.
    pub fn fetch(&self) -> u32 {
        self.limit + 1
    }
}

/// The query string of a list that takes nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageParams {
    limit: Option<String>,
    cursor: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Page {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Query(q) = Query::<PageParams>::from_request_parts(parts, state).await?;
        Page::parse(q.limit.as_deref(), q.cursor.as_deref())
    }
}

/// A position in a keyset order: the sort key of an item and its id (the tie-breaker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The sort key (e.g. microseconds since the epoch, or a sequence number).
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
        (c.id.len() <= MAX_ID_LEN).then_some(c)
    }
}

/// One page of a list, as it is answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paginated<T> {
    /// The items, in order.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Paginated<T> {
    /// A page from up to `limit + 1` fetched rows ([`Page::fetch`]): keeps `limit` of them, and
    /// makes the next cursor from the last one kept when there was one more.
    pub fn from_rows(mut rows: Vec<T>, limit: u32, cursor: impl Fn(&T) -> Cursor) -> Self {
        let limit = limit as usize;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if more { rows.last().map(|r| cursor(r).encode()) } else { None };
        Self { items: rows, next_cursor }
    }

    /// Maps the items, keeping the cursor.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Paginated<U> {
        Paginated { items: self.items.into_iter().map(f).collect(), next_cursor: self.next_cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_sent_as_text_are_checked() {
        for bad in ["abc", "0", "101", "10000", "-1"] {
            let p = Page::parse(Some(bad), None).unwrap_err();
            assert_eq!(p.field_errors()[0].field, "limit", "{bad}");
        }
        assert_eq!(Page::parse(Some("5"), None).unwrap().limit, 5);
        assert_eq!(Page::parse(Some(""), None).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(Page::parse(None, None).unwrap().limit, DEFAULT_LIMIT);
    }

    #[test]
    fn garbage_cursors_are_refused() {
        for bad in ["%%%", "aGVsbG8", &"A".repeat(1000)] {
            let p = Page::parse(None, Some(bad)).unwrap_err();
            assert_eq!(p.field_errors()[0].field, "cursor", "{bad}");
        }
        assert_eq!(Page::parse(None, Some("")).unwrap().after, None);
    }

    #[test]
    fn last_page_has_no_cursor() {
        let page = Page::parse(Some("2"), None).unwrap();
        let out = Paginated::from_rows(vec![1, 2], page.limit, |n| Cursor::new(*n, "x"));
        assert_eq!(out.next_cursor, None);
        assert_eq!(out.map(|n| n * 10).items, [10, 20]);
    }

    #[tokio::test]
    async fn the_extractor_reads_limit_and_cursor_and_refuses_anything_else() {
        async fn extract(uri: &str) -> Result<Page, Problem> {
            let (mut parts, ()) = http::Request::get(uri).body(()).unwrap().into_parts();
            Page::from_request_parts(&mut parts, &()).await
        }
        let next = Cursor::new(7, "id").encode();
        let page = extract(&format!("/x?limit=3&cursor={next}")).await.unwrap();
        assert_eq!((page.limit, page.after), (3, Some(Cursor::new(7, "id"))));
        assert_eq!(extract("/x").await.unwrap().limit, DEFAULT_LIMIT);
        let p = extract("/x?sort=name").await.unwrap_err();
        assert_eq!(p.status_code(), 400, "{p:?}");
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
                proptest::prop_assert!(c.id.len() <= MAX_ID_LEN);
            }
        }
    }
}
