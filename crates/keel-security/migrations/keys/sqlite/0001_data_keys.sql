-- Keel's data keys (SQLite): field-encryption keys made by rotation, each wrapped by the
-- master key (never stored here). Times are microseconds since the Unix epoch; a retired key
-- keeps its row without its wrapped key.
CREATE TABLE IF NOT EXISTS keel_data_keys (
    generation BIGINT PRIMARY KEY,
    kid VARCHAR(64) NOT NULL UNIQUE,
    wrapped TEXT NULL,
    created_at BIGINT NOT NULL,
    active_from BIGINT NOT NULL,
    retired_at BIGINT NULL
);
