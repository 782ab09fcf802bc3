-- The financial rules on the ledger: withdrawals (a hold, admins' approvals, payout),
-- coupons and their redemptions, plans, and commission charges (once per position).

-- A withdrawal: its hold is two pending transfers (the amount, the fee); paying posts them,
-- rejecting voids them. Its state moves requested -> approved -> paid, or to rejected from
-- requested or approved, each by one guarded update.
CREATE TABLE withdrawals (
    id              text        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
    -- Paging order: a user's list is newest first by it.
    seq             bigserial   NOT NULL UNIQUE,
    user_id         bigint      NOT NULL REFERENCES users (id),
    currency        text        NOT NULL CHECK (currency IN ('BRL', 'USD')),
    amount          bigint      NOT NULL CHECK (amount > 0),
    fee             bigint      NOT NULL CHECK (fee >= 0),
    source          text        NOT NULL CHECK (source IN ('real', 'commission')),
    bank            jsonb       NOT NULL,
    state           text        NOT NULL DEFAULT 'requested'
        CHECK (state IN ('requested', 'approved', 'paid', 'rejected')),
    approvals_needed integer    NOT NULL CHECK (approvals_needed BETWEEN 0 AND 2),
    amount_transfer bigint      NOT NULL REFERENCES ledger_transfers (id),
    fee_transfer    bigint      NOT NULL REFERENCES ledger_transfers (id),
    payout_date     date,
    created_at      timestamptz NOT NULL DEFAULT now(),
    decided_at      timestamptz,
    decided_by      bigint      REFERENCES users (id),
    paid_at         timestamptz,
    CHECK ((state = 'paid') = (paid_at IS NOT NULL))
);
CREATE INDEX withdrawals_user ON withdrawals (user_id, seq DESC);
CREATE INDEX withdrawals_open ON withdrawals (state) WHERE state IN ('requested', 'approved');

-- One row per admin approval: the same admin cannot count twice (four-eyes).
CREATE TABLE withdrawal_approvals (
    withdrawal_id text        NOT NULL REFERENCES withdrawals (id),
    admin_id      bigint      NOT NULL REFERENCES users (id),
    approved_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (withdrawal_id, admin_id)
);

-- A coupon: a fixed credit per currency, or a percent off the next plan payment.
CREATE TABLE coupons (
    code        text        PRIMARY KEY CHECK (code ~ '^[A-Z0-9_-]{3,32}$'),
    kind        text        NOT NULL CHECK (kind IN ('fixed', 'percent')),
    amount_brl  bigint      CHECK (amount_brl > 0),
    amount_usd  bigint      CHECK (amount_usd > 0),
    percent     integer     CHECK (percent BETWEEN 1 AND 100),
    max_uses    integer     NOT NULL CHECK (max_uses >= 1),
    uses        integer     NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL,
    created_by  bigint      NOT NULL REFERENCES users (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Never used past its maximum, whatever the concurrency.
    CHECK (uses BETWEEN 0 AND max_uses),
    CHECK ((kind = 'fixed') = (amount_brl IS NOT NULL AND amount_usd IS NOT NULL AND percent IS NULL)),
    CHECK ((kind = 'percent') = (percent IS NOT NULL AND amount_brl IS NULL AND amount_usd IS NULL))
);

-- One redemption per (coupon, user). A fixed coupon's credit expires at credit_expires_at,
-- when the sweep moves what is left back (expired_transfer, or expired_at alone when nothing
-- was left). A percent coupon is spent by the plan payment it discounts (used_at).
CREATE TABLE coupon_redemptions (
    code              text        NOT NULL REFERENCES coupons (code),
    user_id           bigint      NOT NULL REFERENCES users (id),
    ip                text        NOT NULL,
    user_agent        text        NOT NULL,
    currency          text        NOT NULL CHECK (currency IN ('BRL', 'USD')),
    credit            bigint      CHECK (credit > 0),
    percent           integer     CHECK (percent BETWEEN 1 AND 100),
    credit_transfer   bigint,
    credit_expires_at timestamptz,
    expired_at        timestamptz,
    expired_amount    bigint      CHECK (expired_amount >= 0),
    used_at           timestamptz,
    redeemed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (code, user_id)
);
CREATE INDEX coupon_redemptions_user ON coupon_redemptions (user_id);
CREATE INDEX coupon_credit_due ON coupon_redemptions (credit_expires_at)
    WHERE credit IS NOT NULL AND expired_at IS NULL;

-- A user's plan. paid_until: the end of the trial or of the paid month (monthly only).
CREATE TABLE user_plans (
    user_id       bigint      PRIMARY KEY REFERENCES users (id),
    plan          text        NOT NULL CHECK (plan IN ('monthly', 'prepaid')),
    trial_used    boolean     NOT NULL DEFAULT false,
    paid_until    timestamptz,
    subscribed_at timestamptz NOT NULL DEFAULT now()
);

-- One commission charge per closed position, in the user's currency. fx_rate: user currency
-- per profit currency in millionths (NULL when they are the same currency).
CREATE TABLE commission_charges (
    position_id       text        PRIMARY KEY CHECK (length(position_id) BETWEEN 1 AND 100),
    user_id           bigint      NOT NULL REFERENCES users (id),
    profit            bigint      NOT NULL,
    profit_currency   text        NOT NULL CHECK (profit_currency IN ('BRL', 'USD')),
    fx_rate           bigint      CHECK (fx_rate > 0),
    rate_bp           integer     NOT NULL CHECK (rate_bp BETWEEN 0 AND 10000),
    currency          text        NOT NULL CHECK (currency IN ('BRL', 'USD')),
    commission        bigint      NOT NULL CHECK (commission >= 0),
    from_real         bigint      NOT NULL CHECK (from_real >= 0),
    from_admin_credit bigint      NOT NULL CHECK (from_admin_credit >= 0),
    to_debt           bigint      NOT NULL CHECK (to_debt >= 0),
    charged_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (from_real + from_admin_credit + to_debt = commission)
);
CREATE INDEX commission_charges_user ON commission_charges (user_id, charged_at DESC);
