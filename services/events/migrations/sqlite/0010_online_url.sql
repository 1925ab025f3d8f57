-- An online event's join link: given only to its organizer, moderators and confirmed participants.
ALTER TABLE events ADD COLUMN online_url TEXT NULL;
