-- The event's city, for mail that says where the event is (with its venue).
ALTER TABLE event_info ADD COLUMN city VARCHAR(200) NOT NULL DEFAULT '';
