-- The worker's projection of symbol.* events (symbols-worker), beside the service's tables so
-- both binaries share one migration history when they share a database.
-- symbol_projection: the last state the worker applied per symbol (its version orders changes).
CREATE TABLE symbol_projection (
    symbol_id TEXT NOT NULL PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX symbol_projection_project ON symbol_projection (project_id);
-- symbol_stats: per-project counters, changed only by an applied event.
CREATE TABLE symbol_stats (
    project_id TEXT NOT NULL PRIMARY KEY,
    live_symbols INTEGER NOT NULL,
    created_total INTEGER NOT NULL,
    updated_total INTEGER NOT NULL,
    deleted_total INTEGER NOT NULL,
    last_event_at INTEGER NOT NULL
);
-- symbol_activity: one row per handled event (its id is the primary key: a second application
-- of one event would fail here even without the inbox); outcome is applied or stale.
CREATE TABLE symbol_activity (
    event_id TEXT NOT NULL PRIMARY KEY,
    event_type TEXT NOT NULL,
    project_id TEXT NOT NULL,
    symbol_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    handled_at INTEGER NOT NULL
);
CREATE INDEX symbol_activity_symbol ON symbol_activity (symbol_id);
