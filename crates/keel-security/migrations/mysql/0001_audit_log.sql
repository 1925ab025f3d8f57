-- Keel's audit log (MySQL 8 / MariaDB 10.6+): a keyed hash chain, one row per audited action.
CREATE TABLE IF NOT EXISTS audit_log (
    id BIGINT PRIMARY KEY,
    at VARCHAR(40) NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome VARCHAR(16) NOT NULL,
    details TEXT NOT NULL,
    prev_hash CHAR(64) NOT NULL,
    hash CHAR(64) NOT NULL,
    key_id VARCHAR(64) NOT NULL DEFAULT ''
) ENGINE=InnoDB;
