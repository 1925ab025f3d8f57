-- Where and in which IANA time zone an event takes place (times stay UTC instants; the zone
-- gives them back as local times), why it was canceled, and the venue in full-text search.
ALTER TABLE events ADD COLUMN venue VARCHAR(200) NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN time_zone VARCHAR(64) NOT NULL DEFAULT 'UTC';
ALTER TABLE events ADD COLUMN status_reason TEXT NULL;
DROP INDEX events_search ON events;
CREATE FULLTEXT INDEX events_search ON events (title, city, venue, description);
