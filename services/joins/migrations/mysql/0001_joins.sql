-- The joins service: per-event capacity (a copy of what the events service publishes, plus the
-- live counters), one participation row per (event, user), bans and idempotency records.
-- Ids are UUID text; times are BIGINT microseconds since the epoch.
CREATE TABLE event_capacity (
    event_id VARCHAR(36) NOT NULL PRIMARY KEY,
    organizer_id VARCHAR(36) NOT NULL,
    title TEXT NOT NULL,
    starts_at BIGINT NOT NULL,
    ends_at BIGINT NOT NULL,
    capacity BIGINT NOT NULL,
    status VARCHAR(16) NOT NULL,
    confirmed BIGINT NOT NULL DEFAULT 0,
    waitlisted BIGINT NOT NULL DEFAULT 0,
    next_seq BIGINT NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) DEFAULT CHARACTER SET utf8mb4;

CREATE TABLE joins (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    event_id VARCHAR(36) NOT NULL,
    user_id VARCHAR(36) NOT NULL,
    status VARCHAR(16) NOT NULL,
    reason VARCHAR(32),
    queue_seq BIGINT NOT NULL,
    queued_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE KEY joins_event_user (event_id, user_id),
    INDEX joins_event_status_seq (event_id, status, queue_seq),
    INDEX joins_user_created (user_id, created_at, id)
) DEFAULT CHARACTER SET utf8mb4;

CREATE TABLE bans (
    event_id VARCHAR(36) NOT NULL,
    user_id VARCHAR(36) NOT NULL,
    banned_by VARCHAR(36) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (event_id, user_id)
) DEFAULT CHARACTER SET utf8mb4;

CREATE TABLE idempotency_keys (
    user_id VARCHAR(36) NOT NULL,
    idem_key VARCHAR(128) NOT NULL,
    fingerprint VARCHAR(255) NOT NULL,
    status_code BIGINT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, idem_key),
    INDEX idempotency_keys_created (created_at)
) DEFAULT CHARACTER SET utf8mb4;
