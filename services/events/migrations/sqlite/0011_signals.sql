-- What makes an event trend: one row per event, UTC day, kind (1 a view, 2 a join) and
-- pseudonymous actor (a salted hash of who it was, see signal_salts), so one viewer or joiner
-- counts once a day however often they come back. Rows older than the trending window are
-- deleted by the service's signals-prune worker.
CREATE TABLE event_signals (
    event_id VARCHAR(36) NOT NULL,
    day BIGINT NOT NULL,
    kind SMALLINT NOT NULL,
    actor VARCHAR(64) NOT NULL,
    PRIMARY KEY (event_id, day, kind, actor)
);
CREATE INDEX event_signals_day ON event_signals (day, event_id);
-- The salt of each UTC day's actor hashes: random, shared by every instance, deleted once its
-- day is over, after which that day's hashes cannot be linked to anyone.
CREATE TABLE signal_salts (
    day BIGINT PRIMARY KEY,
    salt VARCHAR(64) NOT NULL
);
