-- Keel events: the transactional outbox and the consumer inbox (MySQL 8 / MariaDB 10.6+).
CREATE TABLE IF NOT EXISTS keel_outbox (
    seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id VARCHAR(64) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    partition_key VARCHAR(255),
    payload MEDIUMTEXT NOT NULL,
    status SMALLINT NOT NULL DEFAULT 0,
    attempts INT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL DEFAULT 0,
    claim VARCHAR(64),
    last_error TEXT,
    sent_at BIGINT,
    INDEX keel_outbox_due (status, next_attempt_at),
    INDEX keel_outbox_key (partition_key, status, seq),
    INDEX keel_outbox_claim (claim)
);

CREATE TABLE IF NOT EXISTS keel_inbox (
    consumer_group VARCHAR(200) NOT NULL,
    message_id VARCHAR(64) NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer_group, message_id),
    INDEX keel_inbox_processed (processed_at)
);
