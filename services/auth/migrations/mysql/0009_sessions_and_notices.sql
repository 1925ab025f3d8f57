-- Session versions. Access tokens carry the user's `session_version` as `sv`; ending every
-- session (sign-out everywhere, a password reset or change, a role change, a revoked refresh
-- family) raises it, and every service refuses tokens with a lower one. `session_changed_at`:
-- when it was last raised (microseconds since the Unix epoch), so auth can repeat the recent
-- raises to a service that (re)subscribes.
ALTER TABLE users ADD COLUMN session_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN session_changed_at BIGINT NULL;
CREATE INDEX users_session_changed ON users (session_changed_at);
-- When an address was last mailed about a sign-up that made no account (`already_registered`,
-- `address_unavailable`), by the address's blind index: at most one such mail an hour, so
-- sign-ups cannot flood an inbox. Rows older than a day are pruned.
CREATE TABLE registration_notices (
    email_bidx VARCHAR(64) PRIMARY KEY,
    sent_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4;
