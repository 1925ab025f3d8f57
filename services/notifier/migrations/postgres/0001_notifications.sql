-- Per-user notifications (PostgreSQL). Times are microseconds since the epoch.
CREATE TABLE notifications (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    user_id VARCHAR(36) NOT NULL,
    kind VARCHAR(32) NOT NULL,
    event_id VARCHAR(36) NOT NULL,
    message TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at BIGINT NULL
);
-- A user's list, newest first, keyset-paged on (created_at, id).
CREATE INDEX notifications_user_created ON notifications (user_id, created_at, id);
