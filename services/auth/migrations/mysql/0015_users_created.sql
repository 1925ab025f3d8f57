-- The operator page counts the sign-ups of the last hour and day.
CREATE INDEX users_created ON users (created_at);
