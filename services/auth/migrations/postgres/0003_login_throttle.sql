-- Sign-in throttling per account and client IP, per client IP and per account (blind indexes,
-- never a clear address or IP), replacing the per-address lock. `bucket`: `a:<email_bidx>`,
-- `p:<email_bidx>:<client>` or `i:<client>`; `email_bidx` lets a password reset clear an
-- account's counters. Times are microseconds since the Unix epoch.
DROP TABLE login_failures;
CREATE TABLE login_throttle (
    bucket VARCHAR(160) PRIMARY KEY,
    email_bidx VARCHAR(64) NULL,
    failures BIGINT NOT NULL,
    last_failure_at BIGINT NOT NULL
);
CREATE INDEX login_throttle_account ON login_throttle (email_bidx);
CREATE INDEX login_throttle_last ON login_throttle (last_failure_at);
