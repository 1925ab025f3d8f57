-- cityevents-auth: accounts, refresh-token families and login-failure counters (MySQL 8 /
-- MariaDB 10.6+). Times are microseconds since the Unix epoch. E-mail addresses are stored
-- encrypted (`v1:<kid>:…`) with a keyed blind index for lookups; never in clear.
CREATE TABLE users (
    id VARCHAR(36) PRIMARY KEY,
    email_ciphertext TEXT NOT NULL,
    email_bidx VARCHAR(64) NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    name VARCHAR(100) NOT NULL,
    role VARCHAR(16) NOT NULL CHECK (role IN ('user', 'admin')),
    created_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4;

-- Only the SHA-256 (hex) of a refresh token is stored. Rotation spends a token (`used_at`);
-- presenting a spent token again revokes its whole family. (InnoDB indexes `user_id` for the
-- foreign key.)
CREATE TABLE refresh_tokens (
    token_hash VARCHAR(64) PRIMARY KEY,
    family_id VARCHAR(36) NOT NULL,
    user_id VARCHAR(36) NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT NULL,
    revoked_at BIGINT NULL,
    created_at BIGINT NOT NULL,
    INDEX refresh_tokens_family (family_id),
    INDEX refresh_tokens_expires (expires_at),
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4;

-- Failed sign-ins per e-mail blind index, whether or not the account exists.
CREATE TABLE login_failures (
    email_bidx VARCHAR(64) PRIMARY KEY,
    failures BIGINT NOT NULL,
    window_started_at BIGINT NOT NULL,
    locked_until BIGINT NULL,
    INDEX login_failures_window (window_started_at)
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4;
