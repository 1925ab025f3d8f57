-- Session versions. Access tokens carry the user's `session_version` as `sv`; ending every
-- session (sign-out everywhere, a password reset or change, a role change, a revoked refresh
-- family) raises it, and every service refuses tokens with a lower one. `session_changed_at`:
-- when it was last raised (microseconds since the Unix epoch), so auth can repeat the recent
-- raises to a service that (re)subscribes.
ALTER TABLE users ADD COLUMN session_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN session_changed_at BIGINT NULL;
CREATE INDEX users_session_changed ON users (session_changed_at);
-- When the owner was last told that someone tried to register the address again (at most one
-- such mail an hour, so sign-ups cannot flood an inbox).
ALTER TABLE users ADD COLUMN registration_notice_at BIGINT NULL;
