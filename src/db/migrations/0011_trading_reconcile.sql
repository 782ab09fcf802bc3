-- Trading, continued: positions the exchange closed by itself (a stop-loss or take-profit
-- that fired), found by a sweep that asks each open position's exchange account.

-- How a position closed: 'order' (the platform's close order: a close signal or a user's
-- close), 'stop_loss' / 'take_profit' (its protection fired on the exchange, closed at that
-- order's fill), 'exchange' (the exchange no longer holds it and neither protection filled:
-- closed there by other means, such as by hand or a liquidation; no exit is known, so no
-- profit and no commission). NULL while not closed, and for closes recorded before this.
ALTER TABLE trading_positions ADD COLUMN closed_by text
    CHECK (closed_by IN ('order', 'stop_loss', 'take_profit', 'exchange'));

-- When the sweep last asked the exchange about an open position; the sweep takes the least
-- recently asked first.
ALTER TABLE trading_positions ADD COLUMN checked_at timestamptz;
CREATE INDEX trading_positions_unchecked ON trading_positions (checked_at NULLS FIRST, id)
    WHERE state = 'open';
