-- The money: a double-entry ledger (accounts and immutable transfers), the idempotency records
-- of money requests, recharges and the payment provider's events.
--
-- Balance convention. A transfer moves `amount` (minor units, > 0) from its debit account to its
-- credit account. Every account's signed position is credits - debits over its posted transfers.
-- A user account keeps that position in `balance` as a cache the ledger check recomputes:
--   real, admin_credit, commission (credit-normal): balance = credits - debits;
--   debt (debit-normal):                              balance = debits - credits = what the user
--                                                     owes (a transfer debt -> revenue makes it grow,
--                                                     a transfer real -> debt pays it).
-- `pending_out` is the sum of the account's pending (held) debits; available = balance - pending_out.
--
-- System accounts (revenue, payment_clearing, ...) keep no running balance: their balance is
-- derived from the transfers by the check and the reports. So a transfer locks only the user
-- rows it touches, and a hot system account (every commission credits revenue) serialises
-- nothing. Nor does a transfer's insert lock the system row: the currency and existence check
-- is a trigger that reads the accounts, not a foreign key (whose KEY SHARE lock on one hot row
-- turns every concurrent transfer into a multixact on it). Accounts are never deleted.
CREATE TABLE ledger_accounts (
    id          bigserial   PRIMARY KEY,
    user_id     bigint      REFERENCES users (id),
    kind        text        NOT NULL CHECK (kind IN (
        'real', 'admin_credit', 'commission', 'debt',
        'revenue', 'payment_clearing', 'affiliate_expense', 'promotions',
        'withdrawals_in_flight', 'fees')),
    currency    text        NOT NULL CHECK (currency IN ('BRL', 'USD')),
    balance     bigint      NOT NULL DEFAULT 0,
    pending_out bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, kind, currency),
    CONSTRAINT ledger_accounts_owner_check
        CHECK ((user_id IS NOT NULL) = (kind IN ('real', 'admin_credit', 'commission', 'debt'))),
    -- The database refuses a negative user account, under any concurrency.
    CONSTRAINT ledger_accounts_never_negative
        CHECK (user_id IS NULL OR (balance >= 0 AND pending_out >= 0 AND balance - pending_out >= 0)),
    CONSTRAINT ledger_accounts_system_unstored
        CHECK (user_id IS NOT NULL OR (balance = 0 AND pending_out = 0))
);
CREATE UNIQUE INDEX ledger_accounts_system ON ledger_accounts (kind, currency) WHERE user_id IS NULL;

INSERT INTO ledger_accounts (kind, currency)
SELECT kind, currency
FROM unnest(ARRAY['revenue', 'payment_clearing', 'affiliate_expense', 'promotions',
                  'withdrawals_in_flight', 'fees']) AS kind,
     unnest(ARRAY['BRL', 'USD']) AS currency;

CREATE OR REPLACE FUNCTION ledger_accounts_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger accounts are never deleted' USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.id, NEW.user_id, NEW.kind, NEW.currency) IS DISTINCT FROM
       (OLD.id, OLD.user_id, OLD.kind, OLD.currency) THEN
        RAISE EXCEPTION 'a ledger account''s owner, kind and currency never change'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_accounts_keep BEFORE UPDATE OR DELETE ON ledger_accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_accounts_keep();

-- Transfers are immutable, except a pending one that is posted or voided once: posted or
-- voided, never both (a trigger refuses anything else).
CREATE TABLE ledger_transfers (
    id             bigserial   PRIMARY KEY,
    debit_account  bigint      NOT NULL,
    credit_account bigint      NOT NULL,
    amount         bigint      NOT NULL CHECK (amount > 0),
    currency       text        NOT NULL CHECK (currency IN ('BRL', 'USD')),
    code           text        NOT NULL CHECK (code ~ '^[a-z][a-z0-9_]{0,47}$'),
    state          text        NOT NULL CHECK (state IN ('pending', 'posted', 'voided')),
    -- The transfers of one request share it: the first one's id.
    group_id       bigint      NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    settled_at     timestamptz,
    CHECK (debit_account <> credit_account),
    CHECK ((state = 'pending') = (settled_at IS NULL))
);
CREATE INDEX ledger_transfers_debit ON ledger_transfers (debit_account, id);
CREATE INDEX ledger_transfers_credit ON ledger_transfers (credit_account, id);
-- What is on its way into an account (a commission still held, say), for its balances.
CREATE INDEX ledger_transfers_pending_in ON ledger_transfers (credit_account) WHERE state = 'pending';

CREATE OR REPLACE FUNCTION ledger_transfers_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF (SELECT count(*) FROM ledger_accounts
            WHERE id IN (NEW.debit_account, NEW.credit_account) AND currency = NEW.currency) <> 2 THEN
            RAISE EXCEPTION 'a transfer''s accounts must exist and be in its currency %', NEW.currency
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger transfers are never deleted' USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.state <> 'pending' OR NEW.state NOT IN ('posted', 'voided')
       OR (NEW.id, NEW.debit_account, NEW.credit_account, NEW.amount, NEW.currency, NEW.code,
           NEW.group_id, NEW.metadata, NEW.created_at) IS DISTINCT FROM
          (OLD.id, OLD.debit_account, OLD.credit_account, OLD.amount, OLD.currency, OLD.code,
           OLD.group_id, OLD.metadata, OLD.created_at) THEN
        RAISE EXCEPTION 'a transfer is immutable; only a pending one is posted or voided, once'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_transfers_guard BEFORE INSERT OR UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_transfers_guard();
CREATE OR REPLACE FUNCTION ledger_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is never truncated' USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER ledger_transfers_no_truncate BEFORE TRUNCATE ON ledger_transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_no_truncate();

-- The first outcome of each money request, by (caller, Idempotency-Key): replayed byte for
-- byte for 24 h, then purged. `fingerprint` is the SHA-256 of method, path and body.
CREATE TABLE idempotency_keys (
    user_id     bigint      NOT NULL,
    key         text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint bytea       NOT NULL CHECK (length(fingerprint) = 32),
    status      integer     NOT NULL CHECK (status BETWEEN 200 AND 599),
    body        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- A recharge asked for, awaiting the payment provider; paid once by one provider event.
CREATE TABLE ledger_recharges (
    id            bigserial   PRIMARY KEY,
    user_id       bigint      NOT NULL REFERENCES users (id),
    currency      text        NOT NULL CHECK (currency IN ('BRL', 'USD')),
    amount        bigint      NOT NULL CHECK (amount > 0),
    state         text        NOT NULL DEFAULT 'awaiting_payment'
        CHECK (state IN ('awaiting_payment', 'paid')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    paid_at       timestamptz,
    payment_event text,
    CHECK ((state = 'paid') = (paid_at IS NOT NULL))
);
CREATE INDEX ledger_recharges_user ON ledger_recharges (user_id, id);

-- Every provider event taken in: an event id credits once, however often it is delivered.
CREATE TABLE payment_events (
    event_id    text        PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 255),
    type        text        NOT NULL,
    recharge_id bigint      REFERENCES ledger_recharges (id),
    received_at timestamptz NOT NULL DEFAULT now()
);
