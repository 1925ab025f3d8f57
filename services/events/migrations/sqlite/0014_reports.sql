-- Reports to the moderators: a member reports an event or an account (`target_kind` `event` or
-- `user`) with a reason. Open while `resolved_at` is NULL; a moderator resolves a target's open
-- reports together (`outcome`: dismissed, unpublished, canceled, banned; `note` for the record).
CREATE TABLE reports (
    id VARCHAR(36) PRIMARY KEY,
    reporter_id VARCHAR(36) NOT NULL,
    target_kind VARCHAR(8) NOT NULL,
    target_id VARCHAR(36) NOT NULL,
    reason VARCHAR(16) NOT NULL,
    details TEXT NULL,
    created_at BIGINT NOT NULL,
    resolved_at BIGINT NULL,
    resolved_by VARCHAR(36) NULL,
    outcome VARCHAR(16) NULL,
    note TEXT NULL
);
-- A target's open reports; a reporter's last hour; the queue.
CREATE INDEX reports_target ON reports (target_kind, target_id, resolved_at);
CREATE INDEX reports_reporter ON reports (reporter_id, created_at);
CREATE INDEX reports_open ON reports (resolved_at, created_at);
