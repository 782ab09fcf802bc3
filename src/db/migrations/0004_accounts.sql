-- Accounts and access: who a user is (role, country, currency, status, password), their
-- sessions, their API keys, and login attempts for lockout. Users made by POST /api/users
-- before this (no password) keep working: they get role 'user', status 'active', and can
-- never log in until a password is set.
ALTER TABLE users
    ADD COLUMN password_hash text,
    ADD COLUMN role     text NOT NULL DEFAULT 'user'
        CONSTRAINT users_role_check
        CHECK (role IN ('user', 'affiliate', 'affiliate_vip', 'operator', 'manager', 'admin')),
    ADD COLUMN country  text
        CONSTRAINT users_country_check CHECK (country ~ '^[A-Z]{2}$'),
    ADD COLUMN currency text NOT NULL DEFAULT 'USD',
    ADD COLUMN status   text NOT NULL DEFAULT 'active'
        CONSTRAINT users_status_check CHECK (status IN ('active', 'suspended', 'closed')),
    -- BRL for Brazil, USD everywhere else (and for users with no country yet).
    ADD CONSTRAINT users_currency_check
        CHECK (currency = CASE WHEN country = 'BR' THEN 'BRL' ELSE 'USD' END);

-- A login's session. The token itself is never stored: only its SHA-256.
CREATE TABLE sessions (
    id           bigserial   PRIMARY KEY,
    user_id      bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_sha256 bytea       NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    CHECK (expires_at > created_at)
);
CREATE INDEX sessions_user_id ON sessions (user_id);

-- A program's key. The secret is kept encrypted (an AEAD under the server's SECRETS_KEY of
-- version key_version, with its nonce), since verifying a signature needs the secret itself.
CREATE TABLE api_keys (
    id                bigserial   PRIMARY KEY,
    key_id            text        NOT NULL UNIQUE CHECK (key_id ~ '^[0-9a-f]{32}$'),
    user_id           bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    label             text        NOT NULL DEFAULT '' CHECK (length(label) <= 100),
    secret_ciphertext bytea       NOT NULL,
    secret_nonce      bytea       NOT NULL CHECK (length(secret_nonce) = 12),
    key_version       integer     NOT NULL CHECK (key_version >= 1),
    scopes            text[]      NOT NULL
        CHECK (cardinality(scopes) >= 1 AND scopes <@ ARRAY['read', 'trade', 'withdraw']),
    rate_per_second   integer     NOT NULL DEFAULT 10 CHECK (rate_per_second BETWEEN 1 AND 10000),
    -- NULL: any address may use the key.
    ip_allow_list     inet[],
    created_at        timestamptz NOT NULL DEFAULT now(),
    revoked_at        timestamptz
);
CREATE INDEX api_keys_user_id ON api_keys (user_id);

-- Every login attempt, kept for lockout: failures per email and per client in a recent window.
CREATE TABLE login_attempts (
    id           bigserial   PRIMARY KEY,
    email        text        NOT NULL,
    client       text        NOT NULL,
    succeeded    boolean     NOT NULL,
    attempted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_attempts_email ON login_attempts (email, attempted_at);
CREATE INDEX login_attempts_client ON login_attempts (client, attempted_at);
