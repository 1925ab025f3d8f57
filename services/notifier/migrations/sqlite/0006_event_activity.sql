-- What the notifier knows of each event for the notifications it sends about it: organizer and
-- title, and the time and place its participants were last told (a change of those is announced
-- to them). `version` is the events service's: an older snapshot changes nothing.
CREATE TABLE event_info (
    event_id TEXT NOT NULL PRIMARY KEY,
    organizer_id TEXT NOT NULL,
    title TEXT NOT NULL,
    starts_at INTEGER NOT NULL,
    ends_at INTEGER NOT NULL,
    venue TEXT NOT NULL,
    time_zone VARCHAR(64) NOT NULL,
    version INTEGER NOT NULL
);
-- Who holds a seat or waits in each event, from join.*; `at` is the change's time, so a late
-- message changes nothing.
CREATE TABLE event_participants (
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    active INTEGER NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (event_id, user_id)
);
-- Joins and leaves not yet told to the organizer: one digest per event, sent when `since` is
-- app.digest_interval old. The organizer and title come with the join messages (older messages
-- lack the organizer: then event_info's is used).
CREATE TABLE organizer_digests (
    event_id TEXT NOT NULL PRIMARY KEY,
    organizer_id TEXT NULL,
    title TEXT NOT NULL,
    joined INTEGER NOT NULL,
    left_count INTEGER NOT NULL,
    since INTEGER NOT NULL
);
CREATE INDEX organizer_digests_since ON organizer_digests (since);
-- Notices for every participant of an event (a change of time or place) not yet written: the
-- `event-notices` worker writes them a batch at a time, `after_user` the last user written.
CREATE TABLE pending_notices (
    id TEXT NOT NULL PRIMARY KEY,
    event_id TEXT NOT NULL,
    kind VARCHAR(32) NOT NULL,
    message TEXT NOT NULL,
    after_user TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
