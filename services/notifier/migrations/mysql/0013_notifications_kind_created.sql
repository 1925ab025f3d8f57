-- The operator page counts the promotions of the last hour and day.
CREATE INDEX notifications_kind_created ON notifications (kind, created_at);
