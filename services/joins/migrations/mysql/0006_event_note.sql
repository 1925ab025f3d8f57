-- Why the event was canceled, in the words of who canceled it: copied into each participant's
-- join.canceled, also by the settle worker batches that finish a large event later.
ALTER TABLE event_capacity ADD COLUMN note TEXT;
