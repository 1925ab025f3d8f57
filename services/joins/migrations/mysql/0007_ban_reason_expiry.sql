-- Why a user was banned from an event, and until when (NULL: for good). An expired ban no
-- longer stops a join; banning again replaces it.
ALTER TABLE bans ADD COLUMN reason TEXT NULL;
ALTER TABLE bans ADD COLUMN expires_at BIGINT NULL;
