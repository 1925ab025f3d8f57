-- Symbols, scoped by project. Times are microseconds since the Unix epoch (UTC); ids are UUIDv7
-- text. A deleted symbol keeps its row (deleted_at set) and loses its live_key, so its name can be
-- used again: the unique index on (project_id, live_key) holds only live symbols (NULLs never
-- collide). live_key is the lowercased name.
CREATE TABLE symbols (
    id TEXT NOT NULL PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    live_key TEXT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER NULL
);
CREATE UNIQUE INDEX symbols_live_name ON symbols (project_id, live_key);
CREATE INDEX symbols_project_list ON symbols (project_id, deleted_at, created_at, id);
