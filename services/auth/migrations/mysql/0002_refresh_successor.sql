-- A spent refresh token keeps its successor, encrypted with the field keyring, so that a second
-- use within `app.refresh_reuse_grace` (two tabs refreshing at once) is answered with the same
-- successor instead of being taken for a stolen token's reuse.
ALTER TABLE refresh_tokens ADD COLUMN successor_ciphertext TEXT NULL;
