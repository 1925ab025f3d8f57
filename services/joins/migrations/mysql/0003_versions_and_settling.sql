-- source_version: the events service's version of the last snapshot applied, so an older
-- event.updated arriving late is ignored. pending: 1 while a canceled event still has active
-- joins or a grown one still has free seats and a waitlist (the settle worker finishes it).
ALTER TABLE event_capacity ADD COLUMN source_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE event_capacity ADD COLUMN pending BIGINT NOT NULL DEFAULT 0;
CREATE INDEX event_capacity_pending ON event_capacity (pending);
