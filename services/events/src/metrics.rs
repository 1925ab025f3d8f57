//! The service's business metrics: `events_changes_total{change, by}`, and
//! `events_searches_total{outcome}` for full-text searches.

use prometheus::{IntCounterVec, Opts};

/// What happened to an event: the `change` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A draft was created.
    Created,
    /// A draft was published.
    Published,
    /// A published event's details changed (announced to participants).
    Updated,
    /// The event was canceled.
    Canceled,
    /// A published event went back to draft.
    Unpublished,
}

impl Change {
    const ALL: [Self; 5] = [Self::Created, Self::Published, Self::Updated, Self::Canceled, Self::Unpublished];

    fn label(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Published => "published",
            Self::Updated => "updated",
            Self::Canceled => "canceled",
            Self::Unpublished => "unpublished",
        }
    }
}

/// Who made a change: the `by` label (a moderator acting on someone else's event, or the
/// organizer).
const BY: [&str; 2] = ["organizer", "moderator"];

/// How a full-text search ended: the `outcome` label of `events_searches_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOutcome {
    /// Answered.
    Ok,
    /// Refused by the search concurrency limit (`app.search.max_concurrent`, its queue).
    Busy,
    /// Cut off by the statement time limit (`app.search.timeout`).
    Timeout,
    /// Failed otherwise (the database).
    Error,
}

impl SearchOutcome {
    const ALL: [Self; 4] = [Self::Ok, Self::Busy, Self::Timeout, Self::Error];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Busy => "busy",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// `events_changes_total{change, by}`, `events_searches_total{outcome}` and
/// `events_covers_total{change}`; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventMetrics {
    changes: IntCounterVec,
    searches: IntCounterVec,
    covers: IntCounterVec,
}

impl EventMetrics {
    /// Registers the counter in `metrics` with every label pair at 0, so rates work from the
    /// first scrape.
    pub fn register(metrics: &keel::telemetry::Metrics) -> Result<Self, prometheus::Error> {
        let changes = IntCounterVec::new(
            Opts::new(
                "events_changes_total",
                "Events created, published, updated (published details changed), canceled and unpublished, by who (organizer, moderator).",
            ),
            &["change", "by"],
        )?;
        for c in Change::ALL {
            for by in BY {
                changes.with_label_values(&[c.label(), by]);
            }
        }
        metrics.register(changes.clone())?;
        let searches = IntCounterVec::new(
            Opts::new("events_searches_total", "Full-text searches (q), by outcome (ok, busy, timeout, error)."),
            &["outcome"],
        )?;
        for o in SearchOutcome::ALL {
            searches.with_label_values(&[o.label()]);
        }
        metrics.register(searches.clone())?;
        let covers = IntCounterVec::new(
            Opts::new("events_covers_total", "Cover pictures uploaded and removed, by change (uploaded, removed)."),
            &["change"],
        )?;
        for c in ["uploaded", "removed"] {
            covers.with_label_values(&[c]);
        }
        metrics.register(covers.clone())?;
        Ok(Self { changes, searches, covers })
    }

    /// Counts a search that ended with `outcome`.
    pub fn search(&self, outcome: SearchOutcome) {
        self.searches.with_label_values(&[outcome.label()]).inc();
    }

    /// Counts a cover `change` (`uploaded`, `removed`).
    pub fn picture(&self, change: &'static str) {
        self.covers.with_label_values(&[change]).inc();
    }

    /// Counts `change`, made by a moderator when `moderated`.
    pub fn count(&self, change: Change, moderated: bool) {
        self.changes.with_label_values(&[change.label(), BY[usize::from(moderated)]]).inc();
    }
}
