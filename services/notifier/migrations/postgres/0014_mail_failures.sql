-- Mail requests the server refused for good (their messages are in cityevents.mail.dlq): the
-- operator page counts them per hour and day. Kept apart from mail_log, whose rows mean
-- "handled": a refused request replayed after a fix must still be sent.
CREATE TABLE mail_failures (
    message_id VARCHAR(64) NOT NULL PRIMARY KEY,
    template VARCHAR(32) NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX mail_failures_created ON mail_failures (created_at);
