-- Organizers whose account is banned (`account.banned` from auth), kept by each service that
-- owns their events (events hides them, joins takes no new joins for them) until
-- `account.unbanned`. One row per user, its latest state: `version` is the account's ban
-- version the message carried, so an older message arriving late changes nothing.
CREATE TABLE organizer_bans (
    user_id TEXT PRIMARY KEY,
    banned SMALLINT NOT NULL,
    version BIGINT NOT NULL
);
