-- Runtime overrides of feature flags (one row per overridden flag) and their history. A change
-- bumps the one row of keel_flag_version first, in its transaction: writers queue on that row, so
-- versions follow commit order, and every replica polls it to learn of a change. Keys are at
-- most 100 characters.
CREATE TABLE IF NOT EXISTS keel_flag_version (
    id INT NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT IGNORE INTO keel_flag_version (id, version) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS keel_flag_overrides (
    flag_key VARCHAR(100) NOT NULL PRIMARY KEY,
    definition MEDIUMTEXT NOT NULL,
    change_id BIGINT NOT NULL,
    updated_by VARCHAR(255) NOT NULL,
    updated_at BIGINT NOT NULL
) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE TABLE IF NOT EXISTS keel_flag_changes (
    id BIGINT NOT NULL PRIMARY KEY,
    flag_key VARCHAR(100) NOT NULL,
    before_definition MEDIUMTEXT NULL,
    after_definition MEDIUMTEXT NULL,
    actor VARCHAR(255) NOT NULL,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL,
    KEY keel_flag_changes_key (flag_key, id)
) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
