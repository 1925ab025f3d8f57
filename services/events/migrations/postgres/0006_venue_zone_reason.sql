-- Where and in which IANA time zone an event takes place (times stay UTC instants; the zone
-- gives them back as local times), why it was canceled, and the venue in full-text search
-- (weight B, like the city).
ALTER TABLE events ADD COLUMN venue TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN time_zone TEXT NOT NULL DEFAULT 'UTC';
ALTER TABLE events ADD COLUMN status_reason TEXT;
DROP INDEX events_search;
ALTER TABLE events DROP COLUMN search;
ALTER TABLE events ADD COLUMN search tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('simple', title), 'A')
    || setweight(to_tsvector('simple', city), 'B')
    || setweight(to_tsvector('simple', venue), 'B')
    || setweight(to_tsvector('simple', description), 'C')
) STORED;
CREATE INDEX events_search ON events USING GIN (search);
