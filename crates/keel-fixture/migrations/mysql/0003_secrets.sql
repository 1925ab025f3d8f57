-- Values sealed with the field keyring (`app.encrypted`): re-encrypted when the data key rotates.
CREATE TABLE secrets (
    id VARCHAR(64) PRIMARY KEY,
    value TEXT NULL
);
