-- Sign-in with OpenID Connect providers. `oidc_identities`: which provider account (issuer and
-- subject, as its ID tokens name it) signs in to which account; one per provider and account.
-- `oidc_flows`: sign-ins started and not yet back, by the SHA-256 of their `state`, each with
-- its nonce and PKCE verifier (and, for a link, the account and its session version then: a
-- session ended since ends the link); spent (deleted) by their callback, pruned once expired.
-- (MySQL: issuer and subject compare byte for byte, as the providers mean them.)
-- `oidc_link_offers`: a provider's verified address matched an account; the owner confirms
-- with the account's password before the link is made (SHA-256 of the offer's token).
CREATE TABLE oidc_identities (
    issuer VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    subject VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    provider VARCHAR(32) NOT NULL,
    user_id VARCHAR(36) NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject),
    UNIQUE (user_id, provider),
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4;
CREATE TABLE oidc_flows (
    state_hash VARCHAR(64) PRIMARY KEY,
    provider VARCHAR(32) NOT NULL,
    nonce VARCHAR(128) NOT NULL,
    pkce_verifier VARCHAR(128) NOT NULL,
    link_user_id VARCHAR(36) NULL,
    link_session_version BIGINT NULL,
    next_path VARCHAR(512) NOT NULL,
    expires_at BIGINT NOT NULL,
    INDEX oidc_flows_expires (expires_at)
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4;
CREATE TABLE oidc_link_offers (
    offer_hash VARCHAR(64) PRIMARY KEY,
    user_id VARCHAR(36) NOT NULL,
    provider VARCHAR(32) NOT NULL,
    issuer VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    subject VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    next_path VARCHAR(512) NOT NULL,
    expires_at BIGINT NOT NULL,
    INDEX oidc_link_offers_expires (expires_at),
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4;
