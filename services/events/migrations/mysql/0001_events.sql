-- Events: one row per event. Times are microseconds since the Unix epoch (UTC); ids are UUIDv7
-- text. city_key and category_key hold the lowercased city and category for case-insensitive
-- filters that behave the same on every backend. published_at is NULL until the event is
-- published: a draft canceled before that stays private.
CREATE TABLE events (
    id VARCHAR(36) PRIMARY KEY,
    organizer_id VARCHAR(36) NOT NULL,
    title VARCHAR(120) NOT NULL,
    description TEXT NOT NULL,
    city VARCHAR(80) NOT NULL,
    city_key VARCHAR(255) NOT NULL,
    category VARCHAR(80) NOT NULL,
    category_key VARCHAR(255) NOT NULL,
    starts_at BIGINT NOT NULL,
    ends_at BIGINT NOT NULL,
    capacity BIGINT NOT NULL,
    status VARCHAR(16) NOT NULL,
    published_at BIGINT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) DEFAULT CHARACTER SET utf8mb4;
-- The public list's keyset orders: status first (only published rows are listed), then the sort key and id; city and category filters have their own.
CREATE INDEX events_public_starts ON events (status, starts_at, id);
CREATE INDEX events_public_created ON events (status, created_at, id);
CREATE INDEX events_public_city_starts ON events (status, city_key, starts_at, id);
CREATE INDEX events_public_category_starts ON events (status, category_key, starts_at, id);
-- An organizer's own events, newest first.
CREATE INDEX events_organizer_created ON events (organizer_id, created_at, id);
