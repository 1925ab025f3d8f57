-- Keel events, step 2 (MySQL/MariaDB): the relay claims due rows in `seq` order through
-- (status, seq), so a claim stays cheap however long the backlog; rows are settled by `seq`, so
-- the claim token needs no index (and claiming can update rows in place).
CREATE INDEX keel_outbox_pending ON keel_outbox (status, seq);
DROP INDEX keel_outbox_due ON keel_outbox;
DROP INDEX keel_outbox_claim ON keel_outbox;
