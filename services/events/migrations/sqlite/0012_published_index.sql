-- The latest feed: published events, most recently published first.
CREATE INDEX events_public_published ON events (status, published_at, id);
