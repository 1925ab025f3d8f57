-- Keel's audit log (PostgreSQL): a keyed hash chain, one row per audited action.
CREATE TABLE IF NOT EXISTS audit_log (
    id BIGINT PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    key_id VARCHAR(64) NOT NULL DEFAULT ''
);
