-- The keyed blind index of each address's UTS #39 skeleton (what it looks like: `аре` in
-- Cyrillic and `ape` in Latin share one), unique, so an address that looks like another
-- account's cannot be registered. NULL until auth fills it in for accounts made before it.
ALTER TABLE users ADD COLUMN email_skeleton_bidx VARCHAR(64) NULL;
CREATE UNIQUE INDEX users_email_skeleton ON users (email_skeleton_bidx);
