//! Every limit and pattern of the public API, in one place: the services' checks read them and
//! the document's schemas are built from them, so the two cannot disagree.

/// An event's title, in characters.
pub const MAX_TITLE: usize = 120;
/// An event's description.
pub const MAX_DESCRIPTION: usize = 4000;
/// An event's city.
pub const MAX_CITY: usize = 80;
/// An event's category.
pub const MAX_CATEGORY: usize = 80;
/// An event's venue.
pub const MAX_VENUE: usize = 200;
/// An online event's join link (an `https://` address), in characters.
pub const MAX_ONLINE_URL: usize = 500;
/// A reason given for canceling or unpublishing an event, or for a ban.
pub const MAX_REASON: usize = 500;
/// An event's seats (`0` = unlimited).
pub const MAX_CAPACITY: i64 = 100_000;
/// The earliest year an event may start or end in.
pub const MIN_YEAR: i32 = 2000;
/// The latest year an event may start or end in.
pub const MAX_YEAR: i32 = 2200;
/// An event time as sent (RFC 3339 or a local time).
pub const MAX_TIME: usize = 64;
/// An IANA time zone name.
pub const MAX_ZONE: usize = 64;
/// An uploaded picture (a cover or an avatar), in bytes: 5 MiB.
pub const MAX_PICTURE: usize = 5 * 1024 * 1024;
/// The request carrying one (multipart framing and the form's other fields on top): 5 MiB + 64 KiB.
pub const MAX_PICTURE_REQUEST: usize = MAX_PICTURE + 64 * 1024;

/// The longest `q` of the event search.
pub const MAX_Q: usize = 100;
/// Words of `q` searched for; the rest are ignored.
pub const MAX_TERMS: usize = 8;
/// Shortest word of `q` searched for (MySQL/MariaDB's InnoDB does not index shorter ones; every
/// backend ignores them alike).
pub const MIN_TERM: usize = 3;
/// The orders of `GET /api/v1/events` (`?sort=`): `relevance` needs `q` and is its default;
/// otherwise the default is `starts_at`; `-` is latest first.
pub const SORTS: [&str; 6] = ["starts_at", "-starts_at", "created_at", "-created_at", "-published_at", "relevance"];
/// Cities a suggestion answers when `limit` is absent.
pub const DEFAULT_CITIES: u32 = 10;
/// The most cities a suggestion answers.
pub const MAX_CITIES: u32 = 20;
/// Views one `POST /api/v1/events/views` carries (the gateway's batches).
pub const MAX_VIEW_BATCH: usize = 500;
/// The most events a feed (trending, for you) answers.
pub const MAX_FEED: u32 = 50;
/// Events asked for in one `POST /api/v1/events/batch`.
pub const MAX_BATCH: usize = 100;

/// An e-mail address, in characters (RFC 5321's path limit less the brackets).
pub const MAX_EMAIL: usize = 254;
/// A display name, in characters.
pub const MAX_NAME: usize = 100;
/// The shortest password Keel's default password policy (`security.password.min_length`)
/// accepts; a deployment may raise it.
pub const MIN_PASSWORD: usize = 12;
/// The longest password Keel's default password policy (`security.password.max_length`)
/// accepts.
pub const MAX_PASSWORD: usize = 128;
/// A token sent by mail or a refresh token, in characters.
pub const MAX_TOKEN: usize = 256;

/// Items per page when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 20;
/// The largest `limit` of a list.
pub const MAX_LIMIT: u32 = 100;
/// The longest `cursor`.
pub const MAX_CURSOR: usize = 256;

/// The longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// The `Idempotency-Key`s a join accepts.
pub const IDEMPOTENCY_KEY: &str = "^[A-Za-z0-9_-]{1,128}$";

/// Text with no control characters but tab and newline (may be empty or blank).
pub const TEXT: &str = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$";
/// [`TEXT`] that is not blank: at least one character that is neither white space nor a
/// control character.
pub const REQUIRED_TEXT: &str = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$";
/// One line: [`REQUIRED_TEXT`] without tabs or newlines either.
pub const LINE: &str = r"^[^\u0000-\u001F\u007F-\u009F]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u001F\u007F-\u009F]*$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_pattern_states_the_longest_key() {
        assert!(IDEMPOTENCY_KEY.ends_with(&format!("{{1,{MAX_IDEMPOTENCY_KEY}}}$")));
    }
}
