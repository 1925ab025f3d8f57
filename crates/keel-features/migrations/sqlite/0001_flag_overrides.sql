-- Runtime overrides of feature flags (one row per overridden flag) and their history. A change
-- bumps the one row of keel_flag_version first, in its transaction: writers queue on that row, so
-- versions follow commit order, and every replica polls it to learn of a change.
CREATE TABLE IF NOT EXISTS keel_flag_version (
    id INTEGER PRIMARY KEY,
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO keel_flag_version (id, version) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS keel_flag_overrides (
    flag_key TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    change_id INTEGER NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keel_flag_changes (
    id INTEGER PRIMARY KEY,
    flag_key TEXT NOT NULL,
    before_definition TEXT,
    after_definition TEXT,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS keel_flag_changes_key ON keel_flag_changes (flag_key, id);
