-- Keel events, step 3 (MySQL/MariaDB): a row that waits (leased by a relay, or held back until
-- its next attempt) keeps `locked_until` in the future, so the keys a claim must skip are read
-- from the (status, locked_until) index, whatever the backlog; the per-key index the old claim
-- probed goes. Relays take turns to claim by locking the one row of keel_outbox_lock.
CREATE INDEX keel_outbox_held ON keel_outbox (status, locked_until);
DROP INDEX keel_outbox_key ON keel_outbox;
CREATE TABLE IF NOT EXISTS keel_outbox_lock (id INT NOT NULL PRIMARY KEY);
INSERT IGNORE INTO keel_outbox_lock (id) VALUES (1);
UPDATE keel_outbox SET locked_until = next_attempt_at
    WHERE status = 0 AND attempts > 0 AND next_attempt_at > locked_until;
