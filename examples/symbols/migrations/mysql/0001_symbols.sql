-- Symbols, scoped by project. Times are microseconds since the Unix epoch (UTC); ids are UUIDv7
-- text. A deleted symbol keeps its row (deleted_at set) and loses its live_key, so its name can be
-- used again: the unique index on (project_id, live_key) holds only live symbols (NULLs never
-- collide). live_key is the lowercased name; binary collation makes uniqueness and comparisons
-- byte-exact, as on SQLite, instead of MariaDB's accent- and case-folding default.
CREATE TABLE symbols (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    project_id VARCHAR(64) NOT NULL,
    name VARCHAR(128) NOT NULL,
    live_key VARCHAR(128) NULL,
    kind VARCHAR(32) NOT NULL,
    data MEDIUMTEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT NULL,
    UNIQUE KEY symbols_live_name (project_id, live_key),
    KEY symbols_project_list (project_id, deleted_at, created_at, id)
) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
