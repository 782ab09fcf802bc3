-- Affiliates: their codes and tiers, who they referred (once, within 48 h of the referred
-- user's sign-up, never themselves: the database refuses anything else), campaign links, and
-- one earnings row per commission event (the share's ledger transfer, pending until the hold
-- ends, then available; clawed back when the commission is reversed).

CREATE TABLE affiliates (
    user_id    bigint      PRIMARY KEY REFERENCES users (id),
    -- CBC and six characters from an alphabet without look-alikes (no 0/O, 1/I).
    code       text        NOT NULL UNIQUE CHECK (code ~ '^CBC[A-HJ-NP-Z2-9]{6}$'),
    tier       text        NOT NULL DEFAULT 'affiliate' CHECK (tier IN ('affiliate', 'affiliate_vip')),
    -- The share of each referred user's profit, in basis points; never above the commission.
    share_bp   integer     NOT NULL CHECK (share_bp BETWEEN 0 AND 10000),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Campaign links: /api/enterprise/affiliate/r/{slug} counts a click and redirects; an
-- attribution that names the campaign counts a sign-up.
CREATE TABLE affiliate_campaigns (
    slug              text        PRIMARY KEY CHECK (slug ~ '^[a-z0-9][a-z0-9-]{2,39}$'),
    affiliate_user_id bigint      NOT NULL REFERENCES affiliates (user_id),
    name              text        NOT NULL DEFAULT '' CHECK (length(name) <= 100),
    clicks            bigint      NOT NULL DEFAULT 0 CHECK (clicks >= 0),
    signups           bigint      NOT NULL DEFAULT 0 CHECK (signups >= 0),
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX affiliate_campaigns_owner ON affiliate_campaigns (affiliate_user_id, created_at DESC);

-- One attribution per referred user (the primary key), never to themselves.
CREATE TABLE affiliate_referrals (
    referred_user_id  bigint      PRIMARY KEY REFERENCES users (id),
    affiliate_user_id bigint      NOT NULL REFERENCES affiliates (user_id),
    campaign          text        REFERENCES affiliate_campaigns (slug),
    attributed_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT affiliate_referrals_not_oneself CHECK (referred_user_id <> affiliate_user_id)
);
CREATE INDEX affiliate_referrals_affiliate ON affiliate_referrals (affiliate_user_id, attributed_at DESC);

-- The 48 h window, enforced here too: an attribution is stamped now() (never a date the
-- client chose) and refused past 48 h of the referred user's sign-up.
CREATE OR REPLACE FUNCTION affiliate_referrals_window() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    signed_up timestamptz;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'an attribution never changes' USING ERRCODE = 'restrict_violation';
    END IF;
    NEW.attributed_at := now();
    SELECT created_at INTO signed_up FROM users WHERE id = NEW.referred_user_id;
    IF signed_up IS NULL OR NEW.attributed_at > signed_up + interval '48 hours' THEN
        RAISE EXCEPTION 'attribution window closed: more than 48 h since the user signed up'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'affiliate_referrals_window';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER affiliate_referrals_window BEFORE INSERT OR UPDATE ON affiliate_referrals
    FOR EACH ROW EXECUTE FUNCTION affiliate_referrals_window();

-- One share per commission event (the position): pending (its ledger transfer is a pending
-- credit to the affiliate's commission account) until the hold ends (the sweep knows when:
-- a setting), then available (posted by the sweep); clawed_back when the commission is reversed (voided while pending, or a
-- negative entry after, the part the balance cannot cover becoming debt).
CREATE TABLE affiliate_earnings (
    position_id       text        PRIMARY KEY CHECK (length(position_id) BETWEEN 1 AND 100),
    affiliate_user_id bigint      NOT NULL REFERENCES affiliates (user_id),
    referred_user_id  bigint      NOT NULL REFERENCES users (id),
    currency          text        NOT NULL CHECK (currency IN ('BRL', 'USD')),
    commission        bigint      NOT NULL CHECK (commission > 0),
    share_bp          integer     NOT NULL CHECK (share_bp BETWEEN 0 AND 10000),
    amount            bigint      NOT NULL CHECK (amount > 0),
    transfer_id       bigint      NOT NULL REFERENCES ledger_transfers (id),
    state             text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'available', 'clawed_back')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    released_at       timestamptz,
    clawed_back_at    timestamptz,
    clawback_debt     bigint      CHECK (clawback_debt >= 0),
    -- Carved out of the commission: never more than it.
    CHECK (amount <= commission),
    CHECK ((state = 'clawed_back') = (clawed_back_at IS NOT NULL))
);
CREATE INDEX affiliate_earnings_due ON affiliate_earnings (created_at) WHERE state = 'pending';
CREATE INDEX affiliate_earnings_affiliate ON affiliate_earnings (affiliate_user_id, created_at DESC);
