-- The worker's projection of symbol.* events (symbols-worker), beside the service's tables so
-- both binaries share one migration history when they share a database.
-- symbol_projection: the last state the worker applied per symbol (its version orders changes).
CREATE TABLE symbol_projection (
    symbol_id VARCHAR(36) NOT NULL PRIMARY KEY,
    project_id VARCHAR(64) NOT NULL,
    name VARCHAR(128) NOT NULL,
    kind VARCHAR(32) NOT NULL,
    version BIGINT NOT NULL,
    deleted SMALLINT NOT NULL,
    updated_at BIGINT NOT NULL,
    KEY symbol_projection_project (project_id)
) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
-- symbol_stats: per-project counters, changed only by an applied event.
CREATE TABLE symbol_stats (
    project_id VARCHAR(64) NOT NULL PRIMARY KEY,
    live_symbols BIGINT NOT NULL,
    created_total BIGINT NOT NULL,
    updated_total BIGINT NOT NULL,
    deleted_total BIGINT NOT NULL,
    last_event_at BIGINT NOT NULL
) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
-- symbol_activity: one row per handled event (its id is the primary key: a second application
-- of one event would fail here even without the inbox); outcome is applied or stale.
CREATE TABLE symbol_activity (
    event_id VARCHAR(64) NOT NULL PRIMARY KEY,
    event_type VARCHAR(32) NOT NULL,
    project_id VARCHAR(64) NOT NULL,
    symbol_id VARCHAR(36) NOT NULL,
    version BIGINT NOT NULL,
    outcome VARCHAR(16) NOT NULL,
    handled_at BIGINT NOT NULL,
    KEY symbol_activity_symbol (symbol_id)
) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
