-- One personal calendar feed address per user: only the SHA-256 (hex) of its secret is kept,
-- so the database cannot give the address back; a new one replaces it, deleting the row revokes it.
CREATE TABLE calendar_feeds (
    user_id VARCHAR(36) PRIMARY KEY,
    token_hash VARCHAR(64) NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX calendar_feeds_token ON calendar_feeds (token_hash);
