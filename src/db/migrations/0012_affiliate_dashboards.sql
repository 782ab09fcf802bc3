-- Affiliates, continued: the dashboard, stored. Its figures sum the affiliate's whole history
-- (earnings, ledger transfers, referrals, campaigns), too much to add up on every read; the
-- dashboard is read as one stored row instead, rebuilt by a sweep shortly after a change.
--
-- What changes a dashboard leaves a mark: the triggers below, one row per changed affiliate,
-- in the changing transaction (so a mark commits with its change or not at all). The marks
-- table has no key, so concurrent marks of one affiliate never wait on each other. The sweep
-- deletes the marks it takes and rebuilds those affiliates' rows in the same transaction.

CREATE TABLE affiliate_dashboards (
    user_id  bigint      PRIMARY KEY REFERENCES affiliates (user_id),
    -- The dashboard's JSON, as `GET /api/enterprise/affiliate/dashboard` answers it.
    body     text        NOT NULL,
    built_at timestamptz NOT NULL
);
-- The sweep also rebuilds the oldest rows (the figures of the last 30 days move with time).
CREATE INDEX affiliate_dashboards_age ON affiliate_dashboards (built_at);

CREATE TABLE affiliate_dashboard_marks (
    affiliate_user_id bigint NOT NULL
);

-- Two functions, one per name of the affiliate's column (a trigger function cannot name a
-- column by an argument without decoding the whole row).
CREATE OR REPLACE FUNCTION affiliate_dashboard_mark_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO affiliate_dashboard_marks (affiliate_user_id) VALUES (NEW.user_id);
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION affiliate_dashboard_mark_affiliate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO affiliate_dashboard_marks (affiliate_user_id) VALUES (NEW.affiliate_user_id);
    RETURN NULL;
END $$;

CREATE TRIGGER affiliates_dashboard AFTER INSERT OR UPDATE ON affiliates
    FOR EACH ROW EXECUTE FUNCTION affiliate_dashboard_mark_user();
CREATE TRIGGER affiliate_referrals_dashboard AFTER INSERT ON affiliate_referrals
    FOR EACH ROW EXECUTE FUNCTION affiliate_dashboard_mark_affiliate();
CREATE TRIGGER affiliate_campaigns_dashboard AFTER INSERT OR UPDATE ON affiliate_campaigns
    FOR EACH ROW EXECUTE FUNCTION affiliate_dashboard_mark_affiliate();
CREATE TRIGGER affiliate_earnings_dashboard AFTER INSERT OR UPDATE ON affiliate_earnings
    FOR EACH ROW EXECUTE FUNCTION affiliate_dashboard_mark_affiliate();
-- Conversions and withdrawals move an affiliate's commission account without an earnings
-- row: its balance or its held amount changes. Every other account kind is passed over by
-- the WHEN, which PostgreSQL checks without calling the function.
CREATE TRIGGER ledger_accounts_affiliate_dashboard
    AFTER INSERT OR UPDATE OF balance, pending_out ON ledger_accounts
    FOR EACH ROW WHEN (NEW.kind = 'commission')
    EXECUTE FUNCTION affiliate_dashboard_mark_user();

-- The affiliates there already: built by the sweep's first run.
INSERT INTO affiliate_dashboard_marks (affiliate_user_id) SELECT user_id FROM affiliates;
