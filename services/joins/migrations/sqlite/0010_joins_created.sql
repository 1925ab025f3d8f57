-- The operator page counts the joins of the last hour and day.
CREATE INDEX joins_created ON joins (created_at);
