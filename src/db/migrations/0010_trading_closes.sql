-- Trading, continued: the recorded exchange rates a BRL user's commission is converted at,
-- where a signal came from, and the closed positions whose commission waits for a rate.

-- A day's rate of a user currency per USD (USDT profit is taken as USD), in millionths
-- (5.4321 is 5432100), recorded by an operator; recording a day again replaces it (charges
-- made keep the rate they were made at).
CREATE TABLE fx_rates (
    currency    text        NOT NULL CHECK (currency IN ('BRL')),
    day         date        NOT NULL,
    rate        bigint      NOT NULL CHECK (rate > 0),
    recorded_by bigint      REFERENCES users (id) ON DELETE SET NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (currency, day)
);

-- 'webhook': an alert; 'manual_close': a user closing one position (one signal a position:
-- its fingerprint is the position's); 'operator': a signal an operator sent for the platform.
ALTER TABLE trading_signals ADD COLUMN origin text NOT NULL DEFAULT 'webhook'
    CHECK (origin IN ('webhook', 'manual_close', 'operator'));

-- A profitable close whose commission could not be charged yet (a BRL user before any rate
-- was recorded): set in the transaction that closes it, cleared in the one that charges it.
ALTER TABLE trading_positions ADD COLUMN commission_due boolean NOT NULL DEFAULT false;
CREATE INDEX trading_positions_commission_due ON trading_positions (id) WHERE commission_due;

-- A close intent that comes to nothing frees its position (found by the intent).
CREATE INDEX trading_positions_close_intent ON trading_positions (close_intent)
    WHERE close_intent IS NOT NULL;
