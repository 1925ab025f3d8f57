-- Keel events, step 3 (PostgreSQL): a row that waits (leased by a relay, or held back until its
-- next attempt) keeps `locked_until` in the future, so the keys a claim must skip are read from
-- this small partial index, whatever the backlog; the per-key index the old claim probed goes.
CREATE INDEX IF NOT EXISTS keel_outbox_held ON keel_outbox (locked_until) WHERE status = 0 AND locked_until > 0;
DROP INDEX IF EXISTS keel_outbox_key;
UPDATE keel_outbox SET locked_until = next_attempt_at
    WHERE status = 0 AND attempts > 0 AND next_attempt_at > locked_until;
