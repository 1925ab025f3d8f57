-- Where each session (refresh-token family) was started from, as its owner's session list
-- shows it: the browser and system, and the city of the device's time zone with its network.
-- Worked out at sign-in; the address itself is not kept. Goes with the account.
CREATE TABLE session_whence (
    family_id VARCHAR(36) PRIMARY KEY,
    user_id VARCHAR(36) NOT NULL,
    device VARCHAR(100) NOT NULL,
    place VARCHAR(200) NOT NULL,
    created_at BIGINT NOT NULL,
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX session_whence_created ON session_whence (created_at);
