-- Per-user notifications (SQLite). Times are microseconds since the epoch.
CREATE TABLE notifications (
    id TEXT NOT NULL PRIMARY KEY,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    event_id TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    read_at INTEGER NULL
);
-- A user's list, newest first, keyset-paged on (created_at, id).
CREATE INDEX notifications_user_created ON notifications (user_id, created_at, id);
