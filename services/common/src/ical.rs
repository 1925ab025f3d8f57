//! iCalendar (RFC 5545) for events: one event to download (`METHOD:PUBLISH`, or `METHOD:CANCEL`
//! once it is canceled) and a feed of several to subscribe to (no `METHOD`, RFC 7986's `NAME`
//! and `REFRESH-INTERVAL`).
//!
//! Times are written in the event's own zone (`DTSTART;TZID=America/New_York:20300115T190000`)
//! with a `VTIMEZONE` built from the same tz database the services use ([`Zone`]), one observance
//! per offset change over the span the events cover, so a calendar shows the venue's wall-clock
//! time and converts it exactly, daylight saving included. Events in UTC are written as UTC.
//!
//! The writer is ours because the maintained builder (`icalendar` 0.17) writes `DTSTAMP` and
//! `UID` into every component, `VTIMEZONE` and its observances included, which RFC 5545 forbids;
//! its parser checks what this module writes (see the tests).

use std::collections::BTreeMap;

use jiff::tz::Offset;
use jiff::{SignedDuration, Timestamp};

use crate::zone::Zone;

/// Longest content line in octets, CRLF excluded (RFC 5545 §3.1).
const LINE: usize = 75;

/// What the calendar asks of the client (RFC 5546).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// No method: a feed to subscribe to.
    None,
    /// `METHOD:PUBLISH`: an event to add.
    Publish,
    /// `METHOD:CANCEL`: an event to remove (its entries are `STATUS:CANCELLED`).
    Cancel,
    /// `METHOD:REQUEST`: an invitation by mail, the recipient already going (with
    /// [`Calendar::between`]: RFC 5546 requires `ORGANIZER` and `ATTENDEE`).
    Request,
}

/// The `UID` of event `id`, the same in every file, feed and mail that carries it, so a calendar
/// keeps one entry per event.
pub fn uid(id: &impl std::fmt::Display) -> String {
    format!("{id}@cityevents")
}

/// Someone in a scheduling message sent by mail (iTIP, RFC 5546): a name and an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// Shown by calendars (`CN`).
    pub name: String,
    /// The address (`mailto:`).
    pub email: String,
}

/// `STATUS` of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Taking place.
    Confirmed,
    /// The user may go (waitlisted).
    Tentative,
    /// Canceled.
    Cancelled,
    /// No `STATUS` (a `CANCEL` that takes one attendee out rather than the event, RFC 5546
    /// §3.2.5).
    Unset,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "CONFIRMED",
            Self::Tentative => "TENTATIVE",
            Self::Cancelled => "CANCELLED",
            Self::Unset => "",
        }
    }
}

/// One `VEVENT`. Times are microseconds since the epoch.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Globally unique and stable across versions (`<event id>@<host>`).
    pub uid: String,
    /// Grows with every change, so a calendar replaces its copy (`SEQUENCE`).
    pub sequence: u64,
    /// Title.
    pub summary: String,
    /// Description (may be empty).
    pub description: String,
    /// Venue and city (may be empty).
    pub location: String,
    /// The event's page.
    pub url: Option<String>,
    /// Start.
    pub starts_at: i64,
    /// End.
    pub ends_at: i64,
    /// The venue's zone.
    pub zone: Zone,
    /// Status.
    pub status: Status,
    /// Creation.
    pub created_at: i64,
    /// Last change (also `DTSTAMP`, so the same version always renders the same bytes).
    pub updated_at: i64,
    /// `CATEGORIES`, when not empty.
    pub category: String,
}

/// A `VCALENDAR` being assembled.
#[derive(Debug, Clone)]
pub struct Calendar {
    method: Method,
    name: Option<String>,
    refresh: Option<u32>,
    entries: Vec<Entry>,
    parties: Option<(Party, Party)>,
}

impl Calendar {
    /// An empty calendar with `method`.
    pub fn new(method: Method) -> Self {
        Self { method, name: None, refresh: None, entries: Vec::new(), parties: None }
    }

    /// Makes it a scheduling message from `organizer` to `attendee`, who is going
    /// (`PARTSTAT=ACCEPTED`, no reply asked): each entry names both, as a `REQUEST` or a
    /// `CANCEL` sent by mail must.
    pub fn between(mut self, organizer: Party, attendee: Party) -> Self {
        self.parties = Some((organizer, attendee));
        self
    }

    /// Names it (`NAME` and `X-WR-CALNAME`, which clients show for a subscription).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Asks subscribers to fetch it again every `minutes` (`REFRESH-INTERVAL`, `X-PUBLISHED-TTL`).
    pub fn refresh_minutes(mut self, minutes: u32) -> Self {
        self.refresh = Some(minutes);
        self
    }

    /// Adds `entry`.
    pub fn push(&mut self, entry: Entry) {
        self.entries.push(entry);
    }

    /// The calendar's text: CRLF-terminated content lines folded at 75 octets.
    pub fn render(&self) -> String {
        let mut out = String::new();
        line(&mut out, "BEGIN:VCALENDAR");
        line(&mut out, "VERSION:2.0");
        line(&mut out, "PRODID:-//City Events//City Events//EN");
        line(&mut out, "CALSCALE:GREGORIAN");
        match self.method {
            Method::None => {}
            Method::Publish => line(&mut out, "METHOD:PUBLISH"),
            Method::Cancel => line(&mut out, "METHOD:CANCEL"),
            Method::Request => line(&mut out, "METHOD:REQUEST"),
        }
        if let Some(name) = &self.name {
            line(&mut out, &format!("NAME:{}", text(name)));
            line(&mut out, &format!("X-WR-CALNAME:{}", text(name)));
        }
        if let Some(minutes) = self.refresh {
            line(&mut out, &format!("REFRESH-INTERVAL;VALUE=DURATION:PT{minutes}M"));
            line(&mut out, &format!("X-PUBLISHED-TTL:PT{minutes}M"));
        }
        // Each zone once, covering every instant its events use.
        let mut spans: BTreeMap<&'static str, (Zone, i64, i64)> = BTreeMap::new();
        for e in self.entries.iter().filter(|e| !is_utc(&e.zone)) {
            let span = spans.entry(e.zone.name()).or_insert((e.zone.clone(), e.starts_at, e.ends_at));
            span.1 = span.1.min(e.starts_at);
            span.2 = span.2.max(e.ends_at);
        }
        for (zone, from, to) in spans.values() {
            timezone(&mut out, zone, *from, *to);
        }
        for e in &self.entries {
            event(&mut out, e, self.parties.as_ref());
        }
        line(&mut out, "END:VCALENDAR");
        out
    }
}

fn event(out: &mut String, e: &Entry, parties: Option<&(Party, Party)>) {
    line(out, "BEGIN:VEVENT");
    line(out, &format!("UID:{}", text(&e.uid)));
    if let Some((organizer, attendee)) = parties {
        line(out, &format!("ORGANIZER;CN={}:mailto:{}", param(&organizer.name), address(&organizer.email)));
        line(
            out,
            &format!(
                "ATTENDEE;CN={};ROLE=REQ-PARTICIPANT;PARTSTAT=ACCEPTED;RSVP=FALSE:mailto:{}",
                param(&attendee.name),
                address(&attendee.email)
            ),
        );
    }
    line(out, &format!("DTSTAMP:{}", utc(e.updated_at)));
    line(out, &format!("CREATED:{}", utc(e.created_at)));
    line(out, &format!("LAST-MODIFIED:{}", utc(e.updated_at)));
    line(out, &format!("SEQUENCE:{}", e.sequence));
    line(out, &format!("DTSTART{}", local(&e.zone, e.starts_at)));
    line(out, &format!("DTEND{}", local(&e.zone, e.ends_at)));
    line(out, &format!("SUMMARY:{}", text(&e.summary)));
    if !e.description.trim().is_empty() {
        line(out, &format!("DESCRIPTION:{}", text(&e.description)));
    }
    if !e.location.trim().is_empty() {
        line(out, &format!("LOCATION:{}", text(&e.location)));
    }
    if !e.category.trim().is_empty() {
        line(out, &format!("CATEGORIES:{}", text(&e.category)));
    }
    if let Some(url) = &e.url {
        // A URI value is not TEXT: written as it is, without escapes.
        line(out, &format!("URL:{}", strip_controls(url)));
    }
    if e.status != Status::Unset {
        line(out, &format!("STATUS:{}", e.status.as_str()));
    }
    line(out, "TRANSP:OPAQUE");
    line(out, "END:VEVENT");
}

/// A parameter value (RFC 5545 §3.2): quoted, without the `"` and control characters a
/// quoted value cannot hold.
fn param(value: &str) -> String {
    let clean: String = value.chars().filter(|c| !c.is_control() && *c != '"').collect();
    format!("\"{clean}\"")
}

/// An address as a `mailto:` URI's body: nothing that could end the property or the line.
fn address(email: &str) -> String {
    email.chars().filter(|c| !c.is_control() && !matches!(c, '"' | ';' | ',' | ' ')).collect()
}

/// Whether the zone never leaves UTC (written with `Z`, no `VTIMEZONE`).
fn is_utc(zone: &Zone) -> bool {
    zone.name() == "UTC" || zone.name() == "Etc/UTC"
}

/// `;TZID=<zone>:<local>`, or `:<utc>Z` in UTC and for a local time that occurs twice (clocks
/// going back), which RFC 5545 reads as the first occurrence, whichever was meant.
fn local(zone: &Zone, micros: i64) -> String {
    if is_utc(zone) {
        return format!(":{}", utc(micros));
    }
    let ts = timestamp(micros);
    let wall = zone.tz().to_offset(ts).to_datetime(ts);
    if zone.tz().to_ambiguous_timestamp(wall).is_ambiguous() {
        return format!(":{}", utc(micros));
    }
    format!(";TZID={}:{}", zone.name(), civil(ts, zone.tz().to_offset(ts)))
}

fn timestamp(micros: i64) -> Timestamp {
    Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `YYYYMMDDTHHMMSSZ`.
fn utc(micros: i64) -> String {
    format!("{}Z", civil(timestamp(micros), Offset::UTC))
}

/// `YYYYMMDDTHHMMSS`: `ts` on the wall clock of `offset`.
fn civil(ts: Timestamp, offset: Offset) -> String {
    let dt = offset.to_datetime(ts);
    format!("{:04}{:02}{:02}T{:02}{:02}{:02}", dt.year(), dt.month(), dt.day(), dt.hour(), dt.minute(), dt.second())
}

/// `+HHMM` (or `+HHMMSS` for the old local mean times).
fn utc_offset(offset: Offset) -> String {
    let total = offset.seconds();
    let sign = if total < 0 { '-' } else { '+' };
    let total = total.unsigned_abs();
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if s == 0 { format!("{sign}{h:02}{m:02}") } else { format!("{sign}{h:02}{m:02}{s:02}") }
}

/// The `VTIMEZONE` of `zone` from the observance in force at `from` to the last change before
/// `to`.
fn timezone(out: &mut String, zone: &Zone, from: i64, to: i64) {
    let tz = zone.tz();
    let (from, to) = (timestamp(from), timestamp(to));
    line(out, "BEGIN:VTIMEZONE");
    line(out, &format!("TZID:{}", zone.name()));
    let nanosecond = SignedDuration::from_nanos(1);
    let in_force = tz.preceding(from.checked_add(nanosecond).unwrap_or(from)).next();
    let mut changes: Vec<(Timestamp, Offset, bool, String)> = Vec::new();
    if let Some(t) = &in_force {
        changes.push((t.timestamp(), t.offset(), t.dst().is_dst(), t.abbreviation().to_owned()));
    }
    let start = in_force.as_ref().map_or(from, |t| t.timestamp());
    for t in tz.following(start).take_while(|t| t.timestamp() <= to) {
        changes.push((t.timestamp(), t.offset(), t.dst().is_dst(), t.abbreviation().to_owned()));
    }
    if changes.is_empty() {
        // A zone that never changed: one observance from any date before the events.
        let info = tz.to_offset_info(from);
        let offset = info.offset();
        let kind = if info.dst().is_dst() { "DAYLIGHT" } else { "STANDARD" };
        line(out, &format!("BEGIN:{kind}"));
        line(out, "DTSTART:19700101T000000");
        line(out, &format!("TZOFFSETFROM:{}", utc_offset(offset)));
        line(out, &format!("TZOFFSETTO:{}", utc_offset(offset)));
        line(out, &format!("TZNAME:{}", text(info.abbreviation())));
        line(out, &format!("END:{kind}"));
    }
    for (at, offset, dst, name) in changes {
        // The onset is the local time just before the change, on the old offset's clock.
        let before = tz.to_offset(at.checked_sub(nanosecond).unwrap_or(at));
        let kind = if dst { "DAYLIGHT" } else { "STANDARD" };
        line(out, &format!("BEGIN:{kind}"));
        line(out, &format!("DTSTART:{}", civil(at, before)));
        line(out, &format!("TZOFFSETFROM:{}", utc_offset(before)));
        line(out, &format!("TZOFFSETTO:{}", utc_offset(offset)));
        line(out, &format!("TZNAME:{}", text(&name)));
        line(out, &format!("END:{kind}"));
    }
    line(out, "END:VTIMEZONE");
}

/// RFC 5545 TEXT: backslash, semicolon, comma and newline escaped; other controls dropped.
pub fn text(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => s.push_str("\\\\"),
            ';' => s.push_str("\\;"),
            ',' => s.push_str("\\,"),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => s.push_str("\\n"),
            '\t' => s.push(' '),
            c if c.is_control() => {}
            c => s.push(c),
        }
    }
    s
}

fn strip_controls(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).collect()
}

/// Appends `content` as a content line, folded so no line exceeds 75 octets (a fold is CRLF and
/// one space; a character is never split).
fn line(out: &mut String, content: &str) {
    let mut width = 0;
    for c in content.chars() {
        let len = c.len_utf8();
        if width + len > LINE {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += len;
    }
    out.push_str("\r\n");
}

/// `YYYYMMDDTHHMMSSZ` for links that take UTC times (Google Calendar's `dates`).
pub fn utc_basic(micros: i64) -> String {
    utc(micros)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use icalendar::parser::{read_calendar, unfold};

    use super::*;

    fn micros(rfc3339: &str) -> i64 {
        let ts: Timestamp = rfc3339.parse().unwrap();
        ts.as_microsecond()
    }

    fn entry(zone: &str, start: &str, end: &str) -> Entry {
        Entry {
            uid: "0190a5b2-0000-7000-8000-000000000001@events.example".into(),
            sequence: 3,
            summary: "Jazz; late, \"loud\" \\ night".into(),
            description: "Line one\nLine two with a long tail that goes on and on well past the seventy-five \
                          octet limit of a content line: ééééééééééééééééé"
                .into(),
            location: "Blue Note, New York".into(),
            url: Some("https://events.example/events/0190a5b2".into()),
            starts_at: micros(start),
            ends_at: micros(end),
            zone: Zone::named(zone).unwrap(),
            status: Status::Confirmed,
            created_at: micros("2029-12-01T10:00:00Z"),
            updated_at: micros("2029-12-02T10:00:00Z"),
            category: "Music".into(),
        }
    }

    #[test]
    fn lines_are_folded_at_75_octets_without_splitting_a_character() {
        let mut cal = Calendar::new(Method::Publish);
        cal.push(entry("America/New_York", "2030-01-15T00:00:00Z", "2030-01-15T03:00:00Z"));
        let text = cal.render();
        assert!(text.ends_with("END:VCALENDAR\r\n"));
        for l in text.split("\r\n") {
            assert!(l.len() <= 75, "{l:?} is {} octets", l.len());
        }
        assert!(!text.replace("\r\n", "").contains('\n'), "a bare LF");
        let unfolded = unfold(&text);
        assert!(unfolded.contains("ééééééééééééééééé"), "{unfolded}");
    }

    #[test]
    fn an_event_is_in_its_venues_zone_with_a_timezone_that_covers_it() {
        let mut cal = Calendar::new(Method::Publish);
        // 19:00–22:00 in New York on 14 January (EST, -05:00).
        cal.push(entry("America/New_York", "2030-01-15T00:00:00Z", "2030-01-15T03:00:00Z"));
        let text = unfold(&cal.render());
        assert!(text.contains("DTSTART;TZID=America/New_York:20300114T190000\r\n"), "{text}");
        assert!(text.contains("DTEND;TZID=America/New_York:20300114T220000\r\n"), "{text}");
        assert!(text.contains("METHOD:PUBLISH\r\n"));
        assert!(text.contains("SEQUENCE:3\r\n"));
        assert!(text.contains("SUMMARY:Jazz\\; late\\, \"loud\" \\\\ night\r\n"), "{text}");
        assert!(text.contains("DESCRIPTION:Line one\\nLine two"), "{text}");
        // The observance in force: EST since the first Sunday of November 2029, from EDT.
        assert!(
            text.contains(
                "BEGIN:STANDARD\r\nDTSTART:20291104T020000\r\nTZOFFSETFROM:-0400\r\nTZOFFSETTO:-0500\r\nTZNAME:EST\r\n"
            ),
            "{text}"
        );
        let parsed = read_calendar(&text).unwrap();
        let kinds: Vec<&str> = parsed.components.iter().map(|c| c.name.as_ref()).collect();
        assert_eq!(kinds, ["VTIMEZONE", "VEVENT"]);
        let tz = &parsed.components[0];
        assert!(tz.properties.iter().all(|p| p.name != "DTSTAMP" && p.name != "UID"));
        let event = &parsed.components[1];
        let prop = |name: &str| event.properties.iter().find(|p| p.name == name).map(|p| p.val.to_string());
        assert_eq!(prop("UID").as_deref(), Some("0190a5b2-0000-7000-8000-000000000001@events.example"));
        assert_eq!(prop("STATUS").as_deref(), Some("CONFIRMED"));
    }

    #[test]
    fn an_event_across_a_change_of_offset_gets_both_observances() {
        let mut cal = Calendar::new(Method::None).name("My City Events").refresh_minutes(60);
        // Berlin, 29 March 2030 to 1 April: summer time starts on the 31st.
        cal.push(entry("Europe/Berlin", "2030-03-29T17:00:00Z", "2030-04-01T17:00:00Z"));
        let text = unfold(&cal.render());
        assert!(!text.contains("METHOD:"));
        assert!(text.contains("NAME:My City Events\r\n"));
        assert!(text.contains("REFRESH-INTERVAL;VALUE=DURATION:PT60M\r\n"));
        assert!(text.contains("DTSTART;TZID=Europe/Berlin:20300329T180000\r\n"), "{text}");
        assert!(text.contains("DTEND;TZID=Europe/Berlin:20300401T190000\r\n"), "{text}");
        assert!(
            text.contains(
                "BEGIN:DAYLIGHT\r\nDTSTART:20300331T020000\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nTZNAME:CEST\r\n"
            ),
            "{text}"
        );
        assert!(text.contains("BEGIN:STANDARD\r\nDTSTART:20291028T030000\r\nTZOFFSETFROM:+0200\r\n"), "{text}");
        read_calendar(&text).unwrap();
    }

    #[test]
    fn each_zone_is_written_once_and_utc_needs_none() {
        let mut cal = Calendar::new(Method::None);
        cal.push(entry("Asia/Tokyo", "2030-05-01T10:00:00Z", "2030-05-01T12:00:00Z"));
        cal.push(entry("Asia/Tokyo", "2031-05-01T10:00:00Z", "2031-05-01T12:00:00Z"));
        let mut utc = entry("UTC", "2030-05-01T10:00:00Z", "2030-05-01T12:00:00Z");
        utc.status = Status::Cancelled;
        cal.push(utc);
        let text = unfold(&cal.render());
        assert_eq!(text.matches("BEGIN:VTIMEZONE").count(), 1, "{text}");
        // Tokyo has not changed its offset since 1951: one observance in force.
        assert!(text.contains("TZOFFSETFROM:+1000\r\nTZOFFSETTO:+0900\r\nTZNAME:JST\r\n"), "{text}");
        assert!(text.contains("DTSTART;TZID=Asia/Tokyo:20300501T190000\r\n"));
        assert!(text.contains("DTSTART:20300501T100000Z\r\n"));
        assert!(text.contains("STATUS:CANCELLED\r\n"));
        assert_eq!(read_calendar(&text).unwrap().components.len(), 4);
    }

    #[test]
    fn a_local_time_that_occurs_twice_is_written_in_utc() {
        let mut cal = Calendar::new(Method::Publish);
        // 01:30 on 3 November 2030 happens twice in New York; this is the second (EST).
        cal.push(entry("America/New_York", "2030-11-03T06:30:00Z", "2030-11-03T08:00:00Z"));
        let text = unfold(&cal.render());
        assert!(text.contains("DTSTART:20301103T063000Z\r\n"), "{text}");
        assert!(text.contains("DTEND;TZID=America/New_York:20301103T030000\r\n"), "{text}");
    }

    #[test]
    fn an_invitation_names_its_organizer_and_attendee() {
        let organizer = Party { name: "City Events \"bot\"".into(), email: "events@city.example".into() };
        let attendee = Party { name: "Ada; Lovelace".into(), email: "ada@example.com\r\nX-EVIL:1".into() };
        let mut cal = Calendar::new(Method::Request).between(organizer, attendee);
        cal.push(entry("Europe/Lisbon", "2030-06-01T18:00:00Z", "2030-06-01T20:00:00Z"));
        let text = unfold(&cal.render());
        assert!(text.contains("METHOD:REQUEST\r\n"), "{text}");
        assert!(text.contains("ORGANIZER;CN=\"City Events bot\":mailto:events@city.example\r\n"), "{text}");
        assert!(
            text.contains("ATTENDEE;CN=\"Ada; Lovelace\";ROLE=REQ-PARTICIPANT;PARTSTAT=ACCEPTED;RSVP=FALSE:mailto:ada@example.comX-EVIL:1\r\n"),
            "{text}"
        );
        assert!(!text.contains("\r\nX-EVIL"), "no injected line: {text}");
        let parsed = read_calendar(&text).unwrap();
        let event = parsed.components.iter().find(|c| c.name == "VEVENT").unwrap();
        assert!(event.properties.iter().any(|p| p.name == "ORGANIZER"));
        assert!(event.properties.iter().any(|p| p.name == "ATTENDEE"));
    }

    #[test]
    fn text_escapes_what_rfc_5545_reserves() {
        assert_eq!(text("a,b;c\\d\r\ne\nf\u{7}g\th"), "a\\,b\\;c\\\\d\\ne\\nfg h");
    }
}
