-- Events: one row per event. Times are microseconds since the Unix epoch (UTC); ids are UUIDv7
-- text. city_key and category_key hold the lowercased city and category for case-insensitive
-- filters that behave the same on every backend. published_at is NULL until the event is
-- published: a draft canceled before that stays private.
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    organizer_id TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    city TEXT NOT NULL,
    city_key TEXT NOT NULL,
    category TEXT NOT NULL,
    category_key TEXT NOT NULL,
    starts_at INTEGER NOT NULL,
    ends_at INTEGER NOT NULL,
    capacity INTEGER NOT NULL,
    status TEXT NOT NULL,
    published_at INTEGER,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
-- The public list's keyset orders: status first (only published rows are listed), then the sort key and id; city and category filters have their own.
CREATE INDEX events_public_starts ON events (status, starts_at, id);
CREATE INDEX events_public_created ON events (status, created_at, id);
CREATE INDEX events_public_city_starts ON events (status, city_key, starts_at, id);
CREATE INDEX events_public_category_starts ON events (status, category_key, starts_at, id);
-- An organizer's own events, newest first.
CREATE INDEX events_organizer_created ON events (organizer_id, created_at, id);
