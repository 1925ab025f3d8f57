-- `version`: auth's version of the contact stored (strictly increasing per user; 0 for contacts
-- from messages that carried none), so an older `account.contact` applied after a newer one, as
-- several notifier instances can have it, changes nothing.
ALTER TABLE mail_contacts ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
