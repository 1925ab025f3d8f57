-- Full-text search over title, city and description: an FTS5 index whose content is the events
-- table itself (external content). Queries rank with bm25(events_fts, 10.0, 5.0, 1.0): a title
-- match counts most. An insert is indexed by the store in the same transaction, after the row:
-- a trigger on INSERT would make the FTS5 table read before the statement holds the write lock,
-- and a concurrent commit then fails it at once with SQLITE_BUSY (no busy wait). Updates and
-- deletes are kept by triggers: every change of an event takes its write lock first.
CREATE VIRTUAL TABLE events_fts USING fts5(
    title, city, description,
    content = 'events', content_rowid = 'rowid', tokenize = 'unicode61'
);
INSERT INTO events_fts (events_fts) VALUES ('rebuild');
CREATE TRIGGER events_fts_delete AFTER DELETE ON events BEGIN
    INSERT INTO events_fts (events_fts, rowid, title, city, description)
    VALUES ('delete', old.rowid, old.title, old.city, old.description);
END;
CREATE TRIGGER events_fts_update AFTER UPDATE OF title, city, description ON events BEGIN
    INSERT INTO events_fts (events_fts, rowid, title, city, description)
    VALUES ('delete', old.rowid, old.title, old.city, old.description);
    INSERT INTO events_fts (rowid, title, city, description) VALUES (new.rowid, new.title, new.city, new.description);
END;
