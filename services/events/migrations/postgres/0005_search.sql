-- Full-text search over title (weight A), city (B) and description (C): a generated tsvector
-- with the 'simple' configuration (no stemming, no stop words: the same words match in every
-- language) and its GIN index. Queries use to_tsquery('simple', 'word:* & …').
ALTER TABLE events ADD COLUMN search tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('simple', title), 'A')
    || setweight(to_tsvector('simple', city), 'B')
    || setweight(to_tsvector('simple', description), 'C')
) STORED;
CREATE INDEX events_search ON events USING GIN (search);
