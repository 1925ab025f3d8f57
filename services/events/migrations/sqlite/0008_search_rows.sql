-- Full-text search that costs one pass over the matches: each indexed event gets a stable
-- integer (events_fts_rows.rowid, also its rowid in events_fts), so a search joins its matches
-- to events through two primary keys and computes bm25 once per match, and an update or delete
-- finds its index row by key instead of scanning the index's id column. events.id is TEXT, so
-- events' own rowid may change on VACUUM and cannot be that integer.
DROP TRIGGER events_fts_delete;
DROP TRIGGER events_fts_update;
DROP TABLE events_fts;
CREATE TABLE events_fts_rows (rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
INSERT INTO events_fts_rows (id) SELECT id FROM events;
CREATE VIRTUAL TABLE events_fts USING fts5(title, city, venue, description, tokenize = 'unicode61');
INSERT INTO events_fts (rowid, title, city, venue, description)
    SELECT r.rowid, e.title, e.city, e.venue, e.description FROM events e JOIN events_fts_rows r ON r.id = e.id;
CREATE TRIGGER events_fts_delete AFTER DELETE ON events BEGIN
    DELETE FROM events_fts WHERE rowid = (SELECT rowid FROM events_fts_rows WHERE id = old.id);
    DELETE FROM events_fts_rows WHERE id = old.id;
END;
CREATE TRIGGER events_fts_update AFTER UPDATE OF title, city, venue, description ON events BEGIN
    UPDATE events_fts SET title = new.title, city = new.city, venue = new.venue, description = new.description
    WHERE rowid = (SELECT rowid FROM events_fts_rows WHERE id = old.id);
END;
