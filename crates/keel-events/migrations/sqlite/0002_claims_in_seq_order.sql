-- Keel events, step 2 (SQLite): the relay claims due rows in `seq` order through
-- (status, seq), so a claim stays cheap however long the backlog; rows are settled by `seq`, so
-- the claim token needs no index (and claiming can update rows in place).
CREATE INDEX IF NOT EXISTS keel_outbox_pending ON keel_outbox (status, seq);
DROP INDEX IF EXISTS keel_outbox_due;
DROP INDEX IF EXISTS keel_outbox_claim;
