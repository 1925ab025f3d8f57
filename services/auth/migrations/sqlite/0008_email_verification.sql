-- E-mail verification. `email_verified_at`: when the owner proved the address (NULL: not yet;
-- accounts made before verification existed start unverified). `contact_sent_at`: when the
-- address was last announced to the notifier (`account.contact`); NULL makes auth announce it.
-- `account_tokens`: single-use tokens mailed to the owner, stored only as their SHA-256.
-- Times are microseconds since the Unix epoch.
ALTER TABLE users ADD COLUMN email_verified_at BIGINT NULL;
ALTER TABLE users ADD COLUMN contact_sent_at BIGINT NULL;
CREATE INDEX users_contact_sent ON users (contact_sent_at);
CREATE TABLE account_tokens (
    token_hash VARCHAR(64) PRIMARY KEY,
    user_id VARCHAR(36) NOT NULL,
    purpose VARCHAR(16) NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT NULL,
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX account_tokens_user ON account_tokens (user_id, purpose);
CREATE INDEX account_tokens_expires ON account_tokens (expires_at);
