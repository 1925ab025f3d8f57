//! Time on the wire is RFC 3339 UTC; in the databases it is `BIGINT` microseconds since the
//! Unix epoch, which sorts, compares and pages the same on PostgreSQL, MySQL and SQLite.

use time::OffsetDateTime;

/// Now, UTC.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Microseconds since the epoch (what the databases store).
pub fn to_micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// The instant `micros` microseconds after the epoch, UTC (clamped to the representable range).
pub fn from_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip() {
        let t = from_micros(to_micros(now()));
        assert_eq!(from_micros(to_micros(t)), t);
    }
}
