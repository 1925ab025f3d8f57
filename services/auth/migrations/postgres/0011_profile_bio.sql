-- What a person shows on their public organizer page: a few words about themselves, and their
-- home city (also what "near me" lists events in).
ALTER TABLE users ADD COLUMN bio VARCHAR(2000) NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN city VARCHAR(320) NOT NULL DEFAULT '';
