-- Trading: subscribers' exchange accounts, their trading settings (bounds as constraints),
-- signals (one per alert), order intents (one per signal and subscriber: the outbox the
-- executors drain) and positions.

-- A user's key on an exchange. The secret is sealed (an AEAD under SECRETS_KEY of version
-- key_version, with its nonce and the row's api_key as associated data) and never returned.
CREATE TABLE exchange_accounts (
    id                bigserial   PRIMARY KEY,
    user_id           bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    exchange          text        NOT NULL DEFAULT 'binance' CHECK (exchange IN ('binance', 'bybit')),
    testnet           boolean     NOT NULL DEFAULT false,
    api_key           text        NOT NULL CHECK (api_key ~ '^[A-Za-z0-9_-]{1,128}$'),
    secret_ciphertext bytea       NOT NULL,
    secret_nonce      bytea       NOT NULL CHECK (length(secret_nonce) = 12),
    key_version       integer     NOT NULL CHECK (key_version >= 1),
    created_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz
);
-- One live account a user: the one their orders go to.
CREATE UNIQUE INDEX exchange_accounts_live ON exchange_accounts (user_id) WHERE deleted_at IS NULL;

-- A user's settings; no row: the defaults. Stop-loss and take-profit are multipliers of the
-- leverage, in percent of the margin (5x leverage, stop-loss 2x: the margin may lose 10 %).
CREATE TABLE trading_settings (
    user_id                bigint      PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    leverage               integer     NOT NULL DEFAULT 5 CHECK (leverage BETWEEN 1 AND 10),
    stop_loss_multiplier   integer     NOT NULL DEFAULT 2 CHECK (stop_loss_multiplier BETWEEN 2 AND 5),
    take_profit_multiplier integer     NOT NULL DEFAULT 3 CHECK (take_profit_multiplier BETWEEN 1 AND 6),
    size_percent           integer     NOT NULL DEFAULT 30 CHECK (size_percent BETWEEN 10 AND 50),
    enabled                boolean     NOT NULL DEFAULT true,
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- A signal: one per alert (its fingerprint), with how many intents it fanned out to.
CREATE TABLE trading_signals (
    id          bigserial   PRIMARY KEY,
    fingerprint bytea       NOT NULL UNIQUE CHECK (length(fingerprint) = 32),
    kind        text        NOT NULL CHECK (kind IN ('open_long', 'open_short', 'close_long', 'close_short')),
    symbol      text        NOT NULL CHECK (symbol ~ '^[A-Z0-9]{2,20}$'),
    -- The alert's price, cents of the quote asset.
    price       bigint      NOT NULL CHECK (price > 0),
    alert_at    timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    intents     integer     NOT NULL DEFAULT 0
);

-- What the platform means to do for one subscriber on one signal. Written with the signal,
-- in its transaction; executed (at most one exchange order under client_order_id) by the
-- shards' executors. maybe_sent: an attempt may have reached the exchange, so the next one
-- asks for client_order_id before placing anything.
CREATE TABLE order_intents (
    id                bigserial   PRIMARY KEY,
    signal_id         bigint      NOT NULL REFERENCES trading_signals (id),
    user_id           bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_order_id   text        NOT NULL UNIQUE,
    state             text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'placing', 'placed', 'closed', 'rejected', 'skipped', 'expired')),
    attempts          integer     NOT NULL DEFAULT 0,
    maybe_sent        boolean     NOT NULL DEFAULT false,
    detail            text,
    exchange_order_id bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    done_at           timestamptz,
    UNIQUE (signal_id, user_id)
);
CREATE INDEX order_intents_due ON order_intents (next_attempt_at)
    WHERE state IN ('pending', 'placing');

-- A position the platform opened. 'opening' holds its place (the per-user limits count it)
-- from before the order is sent until the exchange answers.
CREATE TABLE trading_positions (
    id           bigserial   PRIMARY KEY,
    user_id      bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    intent_id    bigint      NOT NULL UNIQUE REFERENCES order_intents (id),
    symbol       text        NOT NULL,
    side         text        NOT NULL CHECK (side IN ('long', 'short')),
    state        text        NOT NULL DEFAULT 'opening'
        CHECK (state IN ('opening', 'open', 'closed', 'failed')),
    -- Thousandths of the base asset; prices and profit in cents of the quote asset.
    -- NULL while opening: the size is set from the exchange balance just before the order.
    quantity     bigint      CHECK (quantity > 0),
    entry_price  bigint      CHECK (entry_price > 0),
    stop_loss    bigint      NOT NULL CHECK (stop_loss > 0),
    take_profit  bigint      NOT NULL CHECK (take_profit > 0),
    exit_price   bigint,
    profit       bigint,
    close_intent bigint      REFERENCES order_intents (id),
    opened_at    timestamptz NOT NULL DEFAULT now(),
    closed_at    timestamptz
);
CREATE UNIQUE INDEX trading_positions_one_per_symbol ON trading_positions (user_id, symbol)
    WHERE state IN ('opening', 'open');
CREATE INDEX trading_positions_user ON trading_positions (user_id, state, closed_at);
