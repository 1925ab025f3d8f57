-- What the notifier knows of each event for the notifications it sends about it: organizer and
-- title, and the time and place its participants were last told (a change of those is announced
-- to them). `version` is the events service's: an older snapshot changes nothing.
CREATE TABLE event_info (
    event_id VARCHAR(36) NOT NULL PRIMARY KEY,
    organizer_id VARCHAR(36) NOT NULL,
    title TEXT NOT NULL,
    starts_at BIGINT NOT NULL,
    ends_at BIGINT NOT NULL,
    venue TEXT NOT NULL,
    time_zone VARCHAR(64) NOT NULL,
    version BIGINT NOT NULL
);
-- Who holds a seat or waits in each event, from join.*; `at` is the change's time, so a late
-- message changes nothing.
CREATE TABLE event_participants (
    event_id VARCHAR(36) NOT NULL,
    user_id VARCHAR(36) NOT NULL,
    active SMALLINT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (event_id, user_id)
);
-- Joins and leaves not yet told to the organizer: one digest per event, sent when `since` is
-- app.digest_interval old.
CREATE TABLE organizer_digests (
    event_id VARCHAR(36) NOT NULL PRIMARY KEY,
    joined BIGINT NOT NULL,
    left_count BIGINT NOT NULL,
    since BIGINT NOT NULL
);
CREATE INDEX organizer_digests_since ON organizer_digests (since);
