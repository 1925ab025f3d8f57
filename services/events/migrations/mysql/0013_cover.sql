-- The cover picture's content hash (its files are covers/<id>/<hash>/<variant>.jpg in the object
-- store); NULL without one.
ALTER TABLE events ADD COLUMN cover VARCHAR(16) NULL;
