//! The list endpoints' query strings: filters, the sort allowlist and keyset cursors.
//!
//! A cursor is [`cityevents_common::page::Cursor`] whose id is `<order>|<event id>`, so a cursor
//! from one order is refused (400 naming `cursor`) by another rather than silently skipping or
//! repeating rows.

use cityevents_common::page::{Cursor, PageQuery, PageRequest};
use cityevents_common::validate;
use keel::http::Problem;
use serde::Deserialize;
use uuid::Uuid;

use crate::model::{self, Errors, Event, MAX_CATEGORY, MAX_CITY};

/// An order of a list: a column and a direction, with the event id as tie-breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// `starts_at`: soonest first (the default).
    StartsAt,
    /// `-starts_at`: latest first.
    StartsAtDesc,
    /// `created_at`: oldest first.
    CreatedAt,
    /// `-created_at`: newest first.
    CreatedAtDesc,
}

impl Sort {
    /// The allowlisted values of `?sort=`.
    pub const ALLOWED: [&'static str; 4] = ["starts_at", "-starts_at", "created_at", "-created_at"];

    /// Parses `?sort=`; anything off the allowlist is a 400 naming `sort`.
    pub fn parse(value: Option<&str>) -> Result<Self, Problem> {
        match value.unwrap_or("starts_at") {
            "starts_at" | "" => Ok(Self::StartsAt),
            "-starts_at" => Ok(Self::StartsAtDesc),
            "created_at" => Ok(Self::CreatedAt),
            "-created_at" => Ok(Self::CreatedAtDesc),
            _ => Err(validate::invalid("sort", &format!("must be one of {}", Self::ALLOWED.join(", ")))),
        }
    }

    /// The wire name (also the cursor's tag).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StartsAt => "starts_at",
            Self::StartsAtDesc => "-starts_at",
            Self::CreatedAt => "created_at",
            Self::CreatedAtDesc => "-created_at",
        }
    }

    /// The column sorted on (a fixed identifier, never client text).
    pub fn column(self) -> &'static str {
        match self {
            Self::StartsAt | Self::StartsAtDesc => "starts_at",
            Self::CreatedAt | Self::CreatedAtDesc => "created_at",
        }
    }

    /// Whether the order is descending.
    pub fn descending(self) -> bool {
        matches!(self, Self::StartsAtDesc | Self::CreatedAtDesc)
    }

    /// The sort key of `event` in this order.
    pub fn key_of(self, event: &Event) -> i64 {
        match self {
            Self::StartsAt | Self::StartsAtDesc => event.starts_at,
            Self::CreatedAt | Self::CreatedAtDesc => event.created_at,
        }
    }
}

/// The tag of the organizer's own list (`GET /api/v1/me/events`, newest first).
pub const MINE: &str = "mine";

/// A decoded position in a list: after the event with this key and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After {
    /// The sort key.
    pub key: i64,
    /// The event id.
    pub id: Uuid,
}

/// Makes the cursor that resumes after `event` in the list tagged `tag` ordered by `key`.
pub fn cursor(tag: &str, key: i64, id: Uuid) -> Cursor {
    Cursor::new(key, format!("{tag}|{id}"))
}

/// Reads a decoded cursor back, checking it belongs to the list tagged `tag`.
pub fn after(tag: &str, cursor: Option<&Cursor>) -> Result<Option<After>, Problem> {
    let Some(c) = cursor else { return Ok(None) };
    let bad = || validate::invalid("cursor", "is not a cursor from this list and order (keep the same sort)");
    let (t, id) = c.id.split_once('|').ok_or_else(bad)?;
    if t != tag {
        return Err(bad());
    }
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(Some(After { key: c.key, id }))
}

/// The query string of `GET /api/v1/events`. Every value is read as text and checked here, so
/// a bad one is a 400 naming it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PublicQuery {
    /// Exact city, case-insensitive.
    pub city: Option<String>,
    /// Exact category, case-insensitive.
    pub category: Option<String>,
    /// Only events starting at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Only events starting before this time (RFC 3339).
    pub to: Option<String>,
    /// One of [`Sort::ALLOWED`].
    pub sort: Option<String>,
    /// 1–100, default 20.
    pub limit: Option<String>,
    /// From the previous page.
    pub cursor: Option<String>,
}

/// The query string of `GET /api/v1/me/events`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MineQuery {
    /// 1–100, default 20.
    pub limit: Option<String>,
    /// From the previous page.
    pub cursor: Option<String>,
}

/// A checked public list request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicList {
    /// Lowercased city to match.
    pub city: Option<String>,
    /// Lowercased category to match.
    pub category: Option<String>,
    /// Lower bound of `starts_at` (micros, inclusive).
    pub from: Option<i64>,
    /// Upper bound of `starts_at` (micros, exclusive).
    pub to: Option<i64>,
    /// Order.
    pub sort: Sort,
    /// Rows per page.
    pub limit: u32,
    /// Resume after.
    pub after: Option<After>,
}

fn page(limit: Option<&str>, cursor: Option<String>) -> Result<PageRequest, Problem> {
    let limit = match limit {
        None | Some("") => None,
        Some(l) => Some(l.parse::<u32>().map_err(|_| validate::invalid("limit", "must be a number from 1 to 100"))?),
    };
    PageQuery { limit, cursor }.validate()
}

impl PublicQuery {
    /// Checks every parameter; the problem names every bad one.
    pub fn validate(self) -> Result<PublicList, Problem> {
        let mut e = Errors::default();
        let filter = |field: &str, v: Option<String>, max: usize| match v.filter(|v| !v.trim().is_empty()) {
            None => Ok(None),
            Some(v) => validate::text(field, &v, max).map(|v| Some(model::key(&v))),
        };
        let city = e.take(filter("city", self.city, MAX_CITY)).flatten();
        let category = e.take(filter("category", self.category, MAX_CATEGORY)).flatten();
        let time = |field: &str, v: Option<String>| match v.filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => model::parse_time(field, &v).map(Some),
        };
        let from = e.take(time("from", self.from)).flatten();
        let to = e.take(time("to", self.to)).flatten();
        if let (Some(f), Some(t)) = (from, to)
            && t <= f
        {
            e.push(validate::invalid("to", "must be after from"));
        }
        let sort = e.take(Sort::parse(self.sort.as_deref()));
        let page = e.take(page(self.limit.as_deref(), self.cursor));
        let after = match (sort, &page) {
            (Some(s), Some(p)) => e.take(after(s.as_str(), p.after.as_ref())).flatten(),
            _ => None,
        };
        e.finish()?;
        match (sort, page) {
            (Some(sort), Some(page)) => Ok(PublicList { city, category, from, to, sort, limit: page.limit, after }),
            _ => Err(Problem::bad_request("invalid query")),
        }
    }
}

impl MineQuery {
    /// Checks `limit` and `cursor`.
    pub fn validate(self) -> Result<(u32, Option<After>), Problem> {
        let page = page(self.limit.as_deref(), self.cursor)?;
        Ok((page.limit, after(MINE, page.after.as_ref())?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sort_is_allowlisted() {
        for s in Sort::ALLOWED {
            assert_eq!(Sort::parse(Some(s)).unwrap().as_str(), s);
        }
        for bad in ["title", "starts_at;drop", "-id", "STARTS_AT"] {
            assert_eq!(Sort::parse(Some(bad)).unwrap_err().field_errors()[0].field, "sort");
        }
    }

    #[test]
    fn a_cursor_only_works_with_its_own_order() {
        let id = Uuid::now_v7();
        let c = cursor("-starts_at", 42, id);
        assert_eq!(after("-starts_at", Some(&c)).unwrap(), Some(After { key: 42, id }));
        assert!(after("starts_at", Some(&c)).is_err());
        assert!(after(MINE, Some(&Cursor::new(1, "not-a-uuid"))).is_err());
    }
}
