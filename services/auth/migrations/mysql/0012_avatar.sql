-- The avatar's content hash (its files are avatars/<id>/<hash>/<variant>.jpg in the object store);
-- NULL without one.
ALTER TABLE users ADD COLUMN avatar VARCHAR(16) NULL;
