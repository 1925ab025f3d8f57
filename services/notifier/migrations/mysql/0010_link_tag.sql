-- The fingerprint of an online event's join link participants were last told of (empty: not online).
ALTER TABLE event_info ADD COLUMN link_tag VARCHAR(32) NOT NULL DEFAULT '';
