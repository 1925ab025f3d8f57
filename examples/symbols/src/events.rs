//! The events the service publishes, through Keel's transactional outbox, on [`TOPIC`]:
//! `symbol.created`, `symbol.updated` and `symbol.deleted`, schema version 1, keyed by symbol
//! id (so a symbol's events reach the broker in the order they happened).
//!
//! Each carries the symbol's state after the change, without its `data` (consumers that need
//! the value read it from the service): events stay small and never copy user content around.

use keel::events::Event;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::Symbol;

/// The topic every `symbol.*` event is published on (`<bus.namespace>.symbols` on the broker).
pub const TOPIC: &str = "symbols";

/// A symbol's state after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymbolChange {
    /// The symbol.
    pub symbol_id: Uuid,
    /// Its project.
    pub project_id: String,
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Its version after the change: a consumer applies a symbol's changes in this order.
    pub version: i64,
    /// When the change happened (microseconds since the Unix epoch).
    pub occurred_at: i64,
}

impl SymbolChange {
    /// The change that left `symbol` as it is, at `at`.
    pub fn of(symbol: &Symbol, at: i64) -> Self {
        Self {
            symbol_id: symbol.id,
            project_id: symbol.project_id.clone(),
            name: symbol.name.clone(),
            kind: symbol.kind.clone(),
            version: symbol.version,
            occurred_at: at,
        }
    }
}

macro_rules! symbol_event {
    ($(#[$doc:meta])* $name:ident, $ty:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub SymbolChange);

        impl Event for $name {
            const TYPE: &'static str = $ty;
            const VERSION: u32 = 1;
            fn key(&self) -> Option<String> {
                Some(self.0.symbol_id.to_string())
            }
        }
    };
}

symbol_event!(
    /// A symbol was created (version 1).
    SymbolCreated,
    "symbol.created"
);
symbol_event!(
    /// A symbol's name, kind or data changed.
    SymbolUpdated,
    "symbol.updated"
);
symbol_event!(
    /// A symbol was (soft) deleted.
    SymbolDeleted,
    "symbol.deleted"
);
