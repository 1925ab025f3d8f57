-- An organizer's public page lists their published events by start.
CREATE INDEX events_public_organizer_starts ON events (status, organizer_id, starts_at, id);
