-- Where to write to each user (from auth's `account.contact`; the address encrypted with the
-- notifier's keyring, never in clear) and which kinds of mail each user turned off.
-- Times are microseconds since the epoch.
CREATE TABLE mail_contacts (
    user_id VARCHAR(36) NOT NULL PRIMARY KEY,
    email_ciphertext TEXT NOT NULL,
    name TEXT NOT NULL,
    verified BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) DEFAULT CHARACTER SET utf8mb4;
CREATE TABLE mail_preferences (
    user_id VARCHAR(36) NOT NULL,
    kind VARCHAR(32) NOT NULL,
    enabled BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, kind)
) DEFAULT CHARACTER SET utf8mb4;
-- Mail requests already handled (sent or skipped), by message id: a redelivered request is not
-- mailed twice. Pruned after 30 days.
CREATE TABLE mail_log (
    message_id VARCHAR(64) NOT NULL PRIMARY KEY,
    template VARCHAR(32) NOT NULL,
    outcome VARCHAR(16) NOT NULL,
    created_at BIGINT NOT NULL
) DEFAULT CHARACTER SET utf8mb4;
CREATE INDEX mail_log_created ON mail_log (created_at);
