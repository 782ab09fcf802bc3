-- The balance read (`GET /api/enterprise/financial/balances`), made cheap for the accounts that
-- never receive a held credit. Balances show what is on its way into each account (a commission
-- share still held, say): a sum over the account's pending credits. Probing the pending credits
-- of every account cost the replica four index scans a read, where most accounts (every real,
-- admin credit and debt account today) can never have one.
--
-- `receives_pending` marks an account that has been the credit side of a pending transfer. It is
-- set by the trigger below in the transaction that inserts such a transfer, so a reader sees the
-- mark with the transfer, and it is never cleared. The balance read probes only marked accounts;
-- the ledger check lists a user account with a pending credit and no mark as drift.
--
-- Setting it updates the account row once, on its first pending credit, and holds that row's
-- lock until the transaction ends. Afterwards the UPDATE's WHERE finds the mark already set and
-- neither writes nor locks the row, so the affiliate shares into one commission account do not
-- queue on it. The system accounts are marked here, once: no balance read shows them, and a
-- first mark of a shared one (every withdrawal's hold credits `withdrawals_in_flight`) would
-- make the concurrent transfers into it wait on the transaction that marked it.
ALTER TABLE ledger_accounts ADD COLUMN receives_pending boolean NOT NULL DEFAULT false;

UPDATE ledger_accounts SET receives_pending = true
WHERE user_id IS NULL
   OR id IN (SELECT credit_account FROM ledger_transfers WHERE state = 'pending');

CREATE OR REPLACE FUNCTION ledger_transfers_mark_pending_in() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ledger_accounts SET receives_pending = true
    WHERE id = NEW.credit_account AND NOT receives_pending;
    RETURN NEW;
END $$;
-- After `ledger_transfers_guard` (BEFORE triggers fire in name order), which refuses a transfer
-- into an account that does not exist. A transfer is inserted pending or posted; a posted one
-- passes the WHEN without a call.
CREATE TRIGGER ledger_transfers_mark_pending_in BEFORE INSERT ON ledger_transfers
    FOR EACH ROW WHEN (NEW.state = 'pending')
    EXECUTE FUNCTION ledger_transfers_mark_pending_in();
