-- A mail request being sent is recorded before the SMTP transaction (`outcome` 'sending', held
-- until `lease_until`, microseconds), so another instance sends it only after that lease ends:
-- a mail goes out twice only when its sender dies between the server accepting it and the record.
ALTER TABLE mail_log ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
