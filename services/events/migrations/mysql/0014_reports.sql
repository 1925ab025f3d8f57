-- Reports to the moderators: a member reports an event or an account (`target_kind` `event` or
-- `user`) with a reason. Open while `resolved_at` is NULL; a moderator resolves a target's open
-- reports together (`outcome`: dismissed, unpublished, canceled, banned, picture_removed; `note`
-- for the record). `open_key` is `<kind>:<target>:<reporter>` while open and NULL once resolved:
-- its unique index is the rule "one open report per reporter and target" (NULLs never collide).
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
    note TEXT NULL,
    open_key VARCHAR(80) NULL
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4;
-- A target's open reports; a reporter's last hour; the queue.
CREATE INDEX reports_target ON reports (target_kind, target_id, resolved_at);
CREATE INDEX reports_reporter ON reports (reporter_id, created_at);
CREATE INDEX reports_open ON reports (resolved_at, created_at);
CREATE UNIQUE INDEX reports_open_key ON reports (open_key);
-- Row locks that serialize new reports' checks: a report locks the slot of its reporter and the
-- slot of its target (each a UUID's value modulo 64), in ascending order, before it counts the
-- reporter's last hour and the target's open reports, so two reports at once cannot both pass a
-- limit. Unrelated reports sharing a slot only wait for each other a moment.
CREATE TABLE report_locks (
    slot BIGINT PRIMARY KEY
) ENGINE=InnoDB;
INSERT INTO report_locks (slot) VALUES
    (0), (1), (2), (3), (4), (5), (6), (7), (8), (9), (10), (11), (12), (13), (14), (15), (16),
    (17), (18), (19), (20), (21), (22), (23), (24), (25), (26), (27), (28), (29), (30), (31), (32),
    (33), (34), (35), (36), (37), (38), (39), (40), (41), (42), (43), (44), (45), (46), (47), (48),
    (49), (50), (51), (52), (53), (54), (55), (56), (57), (58), (59), (60), (61), (62), (63);
