-- Per-user notifications (MySQL 8 / MariaDB 10.6+). Times are microseconds since the epoch.
CREATE TABLE notifications (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    user_id VARCHAR(36) NOT NULL,
    kind VARCHAR(32) NOT NULL,
    event_id VARCHAR(36) NOT NULL,
    message TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at BIGINT NULL
) DEFAULT CHARACTER SET utf8mb4;
-- A user's list, newest first, keyset-paged on (created_at, id).
CREATE INDEX notifications_user_created ON notifications (user_id, created_at, id);
