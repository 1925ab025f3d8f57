-- Moderation. `moderator` marks an account with the moderator role: a flag beside `role`, which
-- stays `user` or `admin` (its CHECK constraint cannot be widened the same way on every backend;
-- the service reads the two as one role: admin, else moderator, else user). A banned account
-- has `banned_at`, who banned it and why; it cannot sign in and its sessions were ended.
-- `ban_version` grows with every ban and lift: `account.banned`/`account.unbanned` carry it, so a
-- consumer applies them in order whatever order they arrive in. `name_key` is the display name
-- lowercased (Unicode) for the admins' search; older rows fall back to LOWER(name).
ALTER TABLE users ADD COLUMN moderator SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN banned_at BIGINT NULL;
ALTER TABLE users ADD COLUMN banned_by VARCHAR(36) NULL;
ALTER TABLE users ADD COLUMN ban_reason TEXT NULL;
ALTER TABLE users ADD COLUMN ban_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN name_key TEXT NULL;
