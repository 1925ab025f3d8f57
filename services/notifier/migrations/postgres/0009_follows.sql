-- Who follows which organizer: followers hear (in the app, and by mail unless they turned it
-- off) when an organizer they follow publishes an event.
CREATE TABLE follows (
    organizer_id VARCHAR(36) NOT NULL,
    follower_id VARCHAR(36) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (organizer_id, follower_id)
);
CREATE INDEX follows_follower ON follows (follower_id, created_at, organizer_id);
-- Whether the event's organizer's followers were told it was published (once per event: a
-- republished event is not announced again).
ALTER TABLE event_info ADD COLUMN followers_told SMALLINT NOT NULL DEFAULT 0;
-- Events published before following existed are not announced if published again.
UPDATE event_info SET followers_told = 1;
-- A notice goes to the event's participants or, for a publication, its organizer's followers;
-- `mail` is the mail each recipient is also sent (JSON of the catalogue's Mail), or NULL.
ALTER TABLE pending_notices ADD COLUMN audience VARCHAR(16) NOT NULL DEFAULT 'participants';
ALTER TABLE pending_notices ADD COLUMN mail TEXT NULL;
