-- Reminders before an event: who holds a seat (not only who is active: waiting counts there),
-- whether the event is still on, and each reminder sent, by event, user, lead and the start it
-- was for (a moved event is reminded of again; a reminder is never sent twice).
ALTER TABLE event_participants ADD COLUMN seated SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE event_info ADD COLUMN status VARCHAR(16) NOT NULL DEFAULT 'published';
CREATE INDEX event_info_starts ON event_info (starts_at);
CREATE TABLE reminders_sent (
    event_id VARCHAR(36) NOT NULL,
    user_id VARCHAR(36) NOT NULL,
    lead_seconds BIGINT NOT NULL,
    starts_at BIGINT NOT NULL,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (event_id, user_id, lead_seconds, starts_at)
);
CREATE INDEX reminders_sent_at ON reminders_sent (sent_at);
