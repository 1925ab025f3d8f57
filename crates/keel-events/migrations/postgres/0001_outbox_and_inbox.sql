-- Keel events: the transactional outbox and the consumer inbox (PostgreSQL).
CREATE TABLE IF NOT EXISTS keel_outbox (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id VARCHAR(64) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    partition_key VARCHAR(255),
    payload TEXT NOT NULL,
    status SMALLINT NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL DEFAULT 0,
    claim VARCHAR(64),
    last_error TEXT,
    sent_at BIGINT
);
CREATE INDEX IF NOT EXISTS keel_outbox_due ON keel_outbox (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS keel_outbox_key ON keel_outbox (partition_key, status, seq);
CREATE INDEX IF NOT EXISTS keel_outbox_claim ON keel_outbox (claim);

CREATE TABLE IF NOT EXISTS keel_inbox (
    consumer_group VARCHAR(200) NOT NULL,
    message_id VARCHAR(64) NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer_group, message_id)
);
CREATE INDEX IF NOT EXISTS keel_inbox_processed ON keel_inbox (processed_at);
