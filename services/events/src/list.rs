//! The list endpoints' query strings: filters, the sort allowlist and keyset cursors.
//!
//! A cursor is [`keel::http::page::Cursor`] whose id is `<order>|<event id>`, so a cursor
//! from one order is refused (400 naming `cursor`) by another rather than silently skipping or
//! repeating rows.

use cityevents_common::validate;
use keel::http::Problem;
use keel::http::page::{Cursor, Page};
use uuid::Uuid;

use crate::model::{self, Errors, Event, MAX_CATEGORY, MAX_CITY, Status};

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
    /// `-published_at`: most recently published first (the latest feed).
    PublishedAtDesc,
    /// `relevance`: best match of `q` first (the default with `q`, refused without it).
    Relevance,
}

impl Sort {
    /// The allowlisted values of `?sort=`.
    pub const ALLOWED: [&'static str; 6] = cityevents_api::limits::SORTS;

    /// Parses `?sort=` (`searching`: a `q` was given, which makes `relevance` the default);
    /// anything off the allowlist, or `relevance` without `q`, is a 400 naming `sort`.
    pub fn parse(value: Option<&str>, searching: bool) -> Result<Self, Problem> {
        match value.unwrap_or_default() {
            "" if searching => Ok(Self::Relevance),
            "starts_at" | "" => Ok(Self::StartsAt),
            "-starts_at" => Ok(Self::StartsAtDesc),
            "created_at" => Ok(Self::CreatedAt),
            "-created_at" => Ok(Self::CreatedAtDesc),
            "-published_at" => Ok(Self::PublishedAtDesc),
            "relevance" if searching => Ok(Self::Relevance),
            "relevance" => Err(validate::invalid("sort", "relevance orders the matches of q: give q too")),
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
            Self::PublishedAtDesc => "-published_at",
            Self::Relevance => "relevance",
        }
    }

    /// The column sorted on (a fixed identifier, never client text): `rank_key` is the match's
    /// score the search query computes.
    pub fn column(self) -> &'static str {
        match self {
            Self::StartsAt | Self::StartsAtDesc => "starts_at",
            Self::CreatedAt | Self::CreatedAtDesc => "created_at",
            Self::PublishedAtDesc => "published_at",
            Self::Relevance => "rank_key",
        }
    }

    /// Whether the order is descending.
    pub fn descending(self) -> bool {
        matches!(self, Self::StartsAtDesc | Self::CreatedAtDesc | Self::PublishedAtDesc | Self::Relevance)
    }

    /// The sort key of `event` in this order; `None` for [`Sort::Relevance`], whose key is the
    /// score the database computed.
    pub fn key_of(self, event: &Event) -> Option<i64> {
        match self {
            Self::StartsAt | Self::StartsAtDesc => Some(event.starts_at),
            Self::CreatedAt | Self::CreatedAtDesc => Some(event.created_at),
            // A listed event is published: it has the time (the oldest sort first otherwise).
            Self::PublishedAtDesc => Some(event.published_at.unwrap_or(0)),
            Self::Relevance => None,
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

/// The cursor tag of a public list in `sort`: a relevance order is one search's, so its cursor
/// names the words (a cursor of `q=jazz` is refused by `q=rock`).
pub fn tag(sort: Sort, search: Option<&Search>) -> String {
    match (sort, search) {
        (Sort::Relevance, Some(s)) => format!("relevance:{}", s.terms.join("+")),
        _ => sort.as_str().to_owned(),
    }
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

pub use cityevents_api::params::{CitiesParams, EventsParams, MyEventsParams};

/// A query string read as text into its contract type ([`cityevents_api::params`]), checked:
/// every bad value is a 400 naming it.
pub trait Check {
    /// The checked request.
    type Checked;

    /// Checks every parameter.
    fn validate(self) -> Result<Self::Checked, Problem>;
}

pub use cityevents_api::limits::{MAX_Q, MAX_TERMS, MIN_TERM};

/// A checked `q`: its words, lowercased, each matched as a word prefix (`jazz` finds `jazzy`),
/// every one required. Only letters and digits reach a database's query syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// At least one; at most [`MAX_TERMS`].
    pub terms: Vec<String>,
}

impl Search {
    /// `q` as text (1 to [`MAX_Q`] characters) split into words of letters and digits; words
    /// shorter than [`MIN_TERM`] are left out; none left is a 400 naming `q`.
    pub fn parse(q: &str) -> Result<Self, Problem> {
        let q = validate::text("q", q, MAX_Q)?;
        let mut terms: Vec<String> = Vec::new();
        for word in q.split(|c: char| !c.is_alphanumeric()).filter(|w| w.chars().count() >= MIN_TERM) {
            let word = word.to_lowercase();
            if !terms.contains(&word) {
                terms.push(word);
            }
        }
        terms.truncate(MAX_TERMS);
        if terms.is_empty() {
            return Err(validate::invalid("q", &format!("needs a word of at least {MIN_TERM} letters or digits")));
        }
        Ok(Self { terms })
    }
}

/// A checked public list request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicList {
    /// The full-text search, if any.
    pub search: Option<Search>,
    /// Lowercased city to match.
    pub city: Option<String>,
    /// Lowercased category to match.
    pub category: Option<String>,
    /// Only this organizer's.
    pub organizer: Option<uuid::Uuid>,
    /// Lower bound of `starts_at` (micros, inclusive).
    pub from: Option<i64>,
    /// Upper bound of `starts_at` (micros, exclusive).
    pub to: Option<i64>,
    /// Lower bound of `ends_at` (micros, exclusive): `exclude_expired=true` at the time of asking.
    pub ends_after: Option<i64>,
    /// Order.
    pub sort: Sort,
    /// Rows per page.
    pub limit: u32,
    /// Resume after.
    pub after: Option<After>,
}

impl Check for EventsParams {
    type Checked = PublicList;

    /// Checks every parameter; the problem names every bad one.
    fn validate(self) -> Result<PublicList, Problem> {
        let mut e = Errors::default();
        let search = match self.q.filter(|q| !q.trim().is_empty()) {
            None => None,
            Some(q) => e.take(Search::parse(&q)),
        };
        let searching = search.is_some();
        let filter = |field: &str, v: Option<String>, max: usize| match v.filter(|v| !v.trim().is_empty()) {
            None => Ok(None),
            Some(v) => validate::text(field, &v, max).map(|v| Some(model::key(&v))),
        };
        let city = e.take(filter("city", self.city, MAX_CITY)).flatten();
        let category = e.take(filter("category", self.category, MAX_CATEGORY)).flatten();
        let organizer = match self.organizer.filter(|o| !o.is_empty()) {
            None => None,
            Some(o) => e.take(validate::uuid("organizer", &o)),
        };
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
        let ends_after = match e.take(flag("exclude_expired", self.exclude_expired.as_deref())) {
            Some(Some(true)) => Some(cityevents_common::time::to_micros(cityevents_common::time::now())),
            _ => None,
        };
        let sort = e.take(Sort::parse(self.sort.as_deref(), searching));
        let page = e.take(Page::parse(self.limit.as_deref(), self.cursor.as_deref()));
        let after = match (sort, &page) {
            (Some(s), Some(p)) => e.take(after(&tag(s, search.as_ref()), p.after.as_ref())).flatten(),
            _ => None,
        };
        e.finish()?;
        match (sort, page) {
            (Some(sort), Some(page)) => Ok(PublicList {
                search,
                city,
                category,
                organizer,
                from,
                to,
                ends_after,
                sort,
                limit: page.limit,
                after,
            }),
            _ => Err(Problem::bad_request("invalid query")),
        }
    }
}

/// A checked `GET /api/v1/me/events` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MineList {
    /// Only this status.
    pub status: Option<Status>,
    /// Rows per page.
    pub limit: u32,
    /// Resume after.
    pub after: Option<After>,
}

impl Check for MyEventsParams {
    type Checked = MineList;

    /// Checks `status`, `limit` and `cursor`. A cursor works whatever the status filter (the
    /// order is the same); changing the filter between pages only changes what follows.
    fn validate(self) -> Result<MineList, Problem> {
        let status = match self.status.as_deref() {
            None | Some("") => None,
            Some(s) => Some(
                Status::parse(s)
                    .ok_or_else(|| validate::invalid("status", "must be one of draft, published, canceled"))?,
            ),
        };
        let page = Page::parse(self.limit.as_deref(), self.cursor.as_deref())?;
        Ok(MineList { status, limit: page.limit, after: after(MINE, page.after.as_ref())? })
    }
}

/// `true` or `false` (absent or empty: `None`), else a 400 naming `field`.
fn flag(field: &str, value: Option<&str>) -> Result<Option<bool>, Problem> {
    match value {
        None | Some("") => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(validate::invalid(field, "must be true or false")),
    }
}

/// A checked city suggestion request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CitiesAsk {
    /// Lowercased prefix; `None` for every city.
    pub prefix: Option<String>,
    /// Cities to answer.
    pub limit: u32,
}

pub use cityevents_api::limits::{DEFAULT_CITIES, MAX_CITIES};

impl Check for CitiesParams {
    type Checked = CitiesAsk;

    /// Checks `q` and `limit`.
    fn validate(self) -> Result<CitiesAsk, Problem> {
        let prefix = match self.q.filter(|q| !q.trim().is_empty()) {
            None => None,
            Some(q) => Some(model::key(&validate::text("q", &q, MAX_CITY)?)),
        };
        let limit = match self.limit.as_deref() {
            None | Some("") => DEFAULT_CITIES,
            Some(l) => l
                .parse::<u32>()
                .ok()
                .filter(|l| (1..=MAX_CITIES).contains(l))
                .ok_or_else(|| validate::invalid("limit", &format!("must be a number from 1 to {MAX_CITIES}")))?,
        };
        Ok(CitiesAsk { prefix, limit })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sort_is_allowlisted() {
        for s in Sort::ALLOWED {
            assert_eq!(Sort::parse(Some(s), true).unwrap().as_str(), s);
        }
        for bad in ["title", "starts_at;drop", "-id", "STARTS_AT", "-relevance"] {
            assert_eq!(Sort::parse(Some(bad), true).unwrap_err().field_errors()[0].field, "sort");
        }
        assert_eq!(Sort::parse(None, false).unwrap(), Sort::StartsAt);
        assert_eq!(Sort::parse(None, true).unwrap(), Sort::Relevance);
        assert_eq!(Sort::parse(Some("relevance"), false).unwrap_err().field_errors()[0].field, "sort");
    }

    #[test]
    fn a_search_is_its_words_of_three_characters_or_more() {
        let s = Search::parse("  Jazz & blues in LYON; jazz!  ").unwrap();
        assert_eq!(s.terms, ["jazz", "blues", "lyon"]);
        assert_eq!(Search::parse("Café Évry").unwrap().terms, ["café", "évry"]);
        assert_eq!(Search::parse("a b c d e f g h i j k l mmm").unwrap().terms, ["mmm"]);
        let many = (0..12).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ");
        assert_eq!(Search::parse(&many).unwrap().terms.len(), MAX_TERMS);
        for bad in ["a b", "!!", &"x".repeat(MAX_Q + 1)] {
            assert_eq!(Search::parse(bad).unwrap_err().field_errors()[0].field, "q", "{bad}");
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
