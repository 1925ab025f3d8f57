-- Keel events: the transactional outbox and the consumer inbox (SQLite).
CREATE TABLE IF NOT EXISTS keel_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_key TEXT,
    payload TEXT NOT NULL,
    status INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    locked_until INTEGER NOT NULL DEFAULT 0,
    claim TEXT,
    last_error TEXT,
    sent_at INTEGER
);
CREATE INDEX IF NOT EXISTS keel_outbox_due ON keel_outbox (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS keel_outbox_key ON keel_outbox (partition_key, status, seq);
CREATE INDEX IF NOT EXISTS keel_outbox_claim ON keel_outbox (claim);

CREATE TABLE IF NOT EXISTS keel_inbox (
    consumer_group TEXT NOT NULL,
    message_id TEXT NOT NULL,
    processed_at INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, message_id)
);
CREATE INDEX IF NOT EXISTS keel_inbox_processed ON keel_inbox (processed_at);
