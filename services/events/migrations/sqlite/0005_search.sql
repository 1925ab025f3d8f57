-- Full-text search over title, city and description: an FTS5 table holding its own copy of the
-- text and each event's id (events.id is TEXT, so its rowid may change on VACUUM: the index must
-- not refer to rows by rowid). Queries rank with bm25(events_fts, 0.0, 10.0, 5.0, 1.0): a title
-- match counts most. An insert is indexed by the store in the same transaction, after the row: a
-- trigger on INSERT makes the FTS5 table read before the statement holds the write lock, and a
-- concurrent commit then fails it at once with SQLITE_BUSY (no busy wait). Updates and deletes
-- are kept by triggers: every change of an event takes its write lock first.
CREATE VIRTUAL TABLE events_fts USING fts5(id UNINDEXED, title, city, description, tokenize = 'unicode61');
INSERT INTO events_fts (id, title, city, description) SELECT id, title, city, description FROM events;
CREATE TRIGGER events_fts_delete AFTER DELETE ON events BEGIN
    DELETE FROM events_fts WHERE id = old.id;
END;
CREATE TRIGGER events_fts_update AFTER UPDATE OF title, city, description ON events BEGIN
    UPDATE events_fts SET title = new.title, city = new.city, description = new.description WHERE id = old.id;
END;
