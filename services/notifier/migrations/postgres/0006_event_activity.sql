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
-- app.digest_interval old. The organizer and title come with the join messages (older messages
-- lack the organizer: then event_info's is used).
CREATE TABLE organizer_digests (
    event_id VARCHAR(36) NOT NULL PRIMARY KEY,
    organizer_id VARCHAR(36) NULL,
    title TEXT NOT NULL,
    joined BIGINT NOT NULL,
    left_count BIGINT NOT NULL,
    since BIGINT NOT NULL
);
CREATE INDEX organizer_digests_since ON organizer_digests (since);
-- Notices for every participant of an event (a change of time or place) not yet written: the
-- `event-notices` worker writes them a batch at a time, `after_user` the last user written.
CREATE TABLE pending_notices (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    event_id VARCHAR(36) NOT NULL,
    kind VARCHAR(32) NOT NULL,
    message TEXT NOT NULL,
    after_user VARCHAR(36) NOT NULL,
    created_at BIGINT NOT NULL
);
