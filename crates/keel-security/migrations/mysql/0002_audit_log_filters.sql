-- Indexes for listing the audit log by actor, action, target and time (newest first); TEXT
-- columns are indexed by their first 191 characters.
CREATE INDEX audit_log_actor ON audit_log (actor(191), id);
CREATE INDEX audit_log_action ON audit_log (action(191), id);
CREATE INDEX audit_log_target ON audit_log (target(191), id);
CREATE INDEX audit_log_at ON audit_log (at);
