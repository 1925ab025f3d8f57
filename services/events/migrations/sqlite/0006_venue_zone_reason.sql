-- Where and in which IANA time zone an event takes place (times stay UTC instants; the zone
-- gives them back as local times), why it was canceled, and the venue in full-text search: the
-- FTS5 table is rebuilt with a venue column (bm25 weights title 10, city 5, venue 5,
-- description 1). New events are indexed by the store, as in 0005; updates and deletes by the
-- triggers.
ALTER TABLE events ADD COLUMN venue TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN time_zone TEXT NOT NULL DEFAULT 'UTC';
ALTER TABLE events ADD COLUMN status_reason TEXT;
DROP TRIGGER events_fts_delete;
DROP TRIGGER events_fts_update;
DROP TABLE events_fts;
CREATE VIRTUAL TABLE events_fts USING fts5(id UNINDEXED, title, city, venue, description, tokenize = 'unicode61');
INSERT INTO events_fts (id, title, city, venue, description) SELECT id, title, city, venue, description FROM events;
CREATE TRIGGER events_fts_delete AFTER DELETE ON events BEGIN
    DELETE FROM events_fts WHERE id = old.id;
END;
CREATE TRIGGER events_fts_update AFTER UPDATE OF title, city, venue, description ON events BEGIN
    UPDATE events_fts SET title = new.title, city = new.city, venue = new.venue, description = new.description
    WHERE id = old.id;
END;
