//! The money's pure rules: currencies, account kinds and their sides, amounts in minor units,
//! the recharge minimum and bonus, the debt-first split, the withdrawal minimum and fee. No SQL,
//! no floats: every figure is an integer number of minor units (centavos, cents).

use serde_json::Value;

/// A currency the ledger keeps; amounts are in its minor unit (1/100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Currency {
    Brl,
    Usd,
}

impl Currency {
    pub const ALL: [Currency; 2] = [Currency::Brl, Currency::Usd];

    pub fn as_str(self) -> &'static str {
        match self {
            Currency::Brl => "BRL",
            Currency::Usd => "USD",
        }
    }

    pub fn parse(text: &str) -> Option<Currency> {
        match text {
            "BRL" => Some(Currency::Brl),
            "USD" => Some(Currency::Usd),
            _ => None,
        }
    }
}

/// Which side of a transfer grows an account's stored balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normal {
    /// balance = credits - debits (money the user holds).
    Credit,
    /// balance = debits - credits (money the user owes: debt).
    Debit,
}

/// A transfer's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Debit,
    Credit,
}

/// An account's kind: four a user has per currency, six the platform has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Recharged money; withdrawable.
    Real,
    /// Coupons and bonuses; not withdrawable; expires 30 days after grant.
    AdminCredit,
    /// Affiliate earnings; withdrawable once available.
    Commission,
    /// What the user owes (commission their balance could not cover).
    Debt,
    Revenue,
    PaymentClearing,
    AffiliateExpense,
    Promotions,
    WithdrawalsInFlight,
    Fees,
}

impl Kind {
    /// The kinds every user has per currency, in the order balances list them.
    pub const USER: [Kind; 4] = [Kind::Real, Kind::AdminCredit, Kind::Commission, Kind::Debt];
    pub const SYSTEM: [Kind; 6] = [
        Kind::Revenue,
        Kind::PaymentClearing,
        Kind::AffiliateExpense,
        Kind::Promotions,
        Kind::WithdrawalsInFlight,
        Kind::Fees,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Real => "real",
            Kind::AdminCredit => "admin_credit",
            Kind::Commission => "commission",
            Kind::Debt => "debt",
            Kind::Revenue => "revenue",
            Kind::PaymentClearing => "payment_clearing",
            Kind::AffiliateExpense => "affiliate_expense",
            Kind::Promotions => "promotions",
            Kind::WithdrawalsInFlight => "withdrawals_in_flight",
            Kind::Fees => "fees",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::USER
            .into_iter()
            .chain(Kind::SYSTEM)
            .find(|kind| kind.as_str() == text)
    }

    /// A user's account (one row per user, kind and currency, with a stored balance), or the
    /// platform's (no stored balance: derived from the transfers).
    pub fn is_user(self) -> bool {
        Kind::USER.contains(&self)
    }

    pub fn normal(self) -> Normal {
        match self {
            Kind::Debt => Normal::Debit,
            _ => Normal::Credit,
        }
    }
}

/// What a posted transfer of `amount` on `side` does to an account's stored balance: `None` for
/// a system account (nothing stored).
pub fn balance_delta(kind: Kind, side: Side, amount: i64) -> Option<i64> {
    if !kind.is_user() {
        return None;
    }
    Some(match (kind.normal(), side) {
        (Normal::Credit, Side::Credit) | (Normal::Debit, Side::Debit) => amount,
        (Normal::Credit, Side::Debit) | (Normal::Debit, Side::Credit) => -amount,
    })
}

/// Why the rules refuse an amount or a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmountError {
    /// Not a whole positive number of minor units.
    NotPositiveInteger,
    /// Below the minimum (the minimum, in minor units).
    BelowMinimum(i64),
    /// Past the largest amount the ledger takes in one transfer.
    TooLarge,
}

/// The largest amount one request moves: 10^12 minor units (R$10 billion), far from `i64`'s
/// limit so that sums of many never overflow.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// Reads an amount in minor units from JSON: a whole number > 0 (`150.0`, `"150"`, `1e3` are
/// refused: amounts are integers, never floats or text).
pub fn parse_amount(value: &Value) -> Result<i64, AmountError> {
    let amount = value.as_i64().ok_or(AmountError::NotPositiveInteger)?;
    if amount <= 0 {
        return Err(AmountError::NotPositiveInteger);
    }
    if amount > MAX_AMOUNT {
        return Err(AmountError::TooLarge);
    }
    Ok(amount)
}

/// `percent` % of `amount`, rounded down to the minor unit.
pub fn percent_of(amount: i64, percent: i64) -> i64 {
    // i128: no overflow for any i64 amount.
    i64::try_from(i128::from(amount) * i128::from(percent) / 100).unwrap_or(i64::MAX)
}

/// The money figures, per currency (minor units). Defaults are the business's (DOMAIN.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    /// Smallest recharge: R$150 / US$30.
    pub recharge_minimum_brl: i64,
    pub recharge_minimum_usd: i64,
    /// A recharge of at least this gets the bonus: R$1,000 / US$300.
    pub bonus_threshold_brl: i64,
    pub bonus_threshold_usd: i64,
    /// The bonus, as admin credit: 10 % of the recharge.
    pub bonus_percent: i64,
    /// Smallest withdrawal: R$50 / US$10.
    pub withdrawal_minimum_brl: i64,
    pub withdrawal_minimum_usd: i64,
    /// A withdrawal's fee: R$10 / US$2.
    pub withdrawal_fee_brl: i64,
    pub withdrawal_fee_usd: i64,
}

impl Default for Figures {
    fn default() -> Self {
        Figures {
            recharge_minimum_brl: 15_000,
            recharge_minimum_usd: 3_000,
            bonus_threshold_brl: 100_000,
            bonus_threshold_usd: 30_000,
            bonus_percent: 10,
            withdrawal_minimum_brl: 5_000,
            withdrawal_minimum_usd: 1_000,
            withdrawal_fee_brl: 1_000,
            withdrawal_fee_usd: 200,
        }
    }
}

impl Figures {
    fn per(currency: Currency, brl: i64, usd: i64) -> i64 {
        match currency {
            Currency::Brl => brl,
            Currency::Usd => usd,
        }
    }

    pub fn recharge_minimum(&self, currency: Currency) -> i64 {
        Self::per(
            currency,
            self.recharge_minimum_brl,
            self.recharge_minimum_usd,
        )
    }

    pub fn bonus_threshold(&self, currency: Currency) -> i64 {
        Self::per(currency, self.bonus_threshold_brl, self.bonus_threshold_usd)
    }

    pub fn withdrawal_minimum(&self, currency: Currency) -> i64 {
        Self::per(
            currency,
            self.withdrawal_minimum_brl,
            self.withdrawal_minimum_usd,
        )
    }

    pub fn withdrawal_fee(&self, currency: Currency) -> i64 {
        Self::per(currency, self.withdrawal_fee_brl, self.withdrawal_fee_usd)
    }

    /// Checks a recharge's amount: at least the minimum, at most [`MAX_AMOUNT`].
    pub fn check_recharge(&self, currency: Currency, amount: i64) -> Result<(), AmountError> {
        if amount <= 0 {
            return Err(AmountError::NotPositiveInteger);
        }
        if amount > MAX_AMOUNT {
            return Err(AmountError::TooLarge);
        }
        let minimum = self.recharge_minimum(currency);
        if amount < minimum {
            return Err(AmountError::BelowMinimum(minimum));
        }
        Ok(())
    }

    /// The admin credit a recharge of `amount` earns: `bonus_percent` % from the threshold up,
    /// else nothing.
    pub fn recharge_bonus(&self, currency: Currency, amount: i64) -> i64 {
        if amount >= self.bonus_threshold(currency) {
            percent_of(amount, self.bonus_percent)
        } else {
            0
        }
    }
}

/// How a payment of `amount` is split when the user owes `debt`: (to the debt, left for the
/// balance). A recharge pays the debt first.
pub fn debt_first(amount: i64, debt: i64) -> (i64, i64) {
    let to_debt = amount.min(debt.max(0));
    (to_debt, amount - to_debt)
}

/// How a charge of `amount` (a commission) is covered by a balance of `available`:
/// (taken from the balance, becoming debt). What the balance cannot cover becomes debt.
pub fn charge_split(amount: i64, available: i64) -> (i64, i64) {
    let taken = amount.min(available.max(0));
    (taken, amount - taken)
}

/// Formats minor units as a decimal text (`15000` -> `"150.00"`), for messages only.
pub fn display(amount: i64, currency: Currency) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    let units = amount.unsigned_abs();
    format!(
        "{} {sign}{}.{:02}",
        currency.as_str(),
        units / 100,
        units % 100
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_round_trip_and_sides() {
        for kind in Kind::USER.into_iter().chain(Kind::SYSTEM) {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("savings"), None);
        let cases = [
            (Kind::Real, Side::Credit, Some(5)),
            (Kind::Real, Side::Debit, Some(-5)),
            (Kind::AdminCredit, Side::Debit, Some(-5)),
            (Kind::Commission, Side::Credit, Some(5)),
            (Kind::Debt, Side::Debit, Some(5)),
            (Kind::Debt, Side::Credit, Some(-5)),
            (Kind::Revenue, Side::Credit, None),
            (Kind::PaymentClearing, Side::Debit, None),
        ];
        for (kind, side, delta) in cases {
            assert_eq!(balance_delta(kind, side, 5), delta, "{kind:?} {side:?}");
        }
    }

    #[test]
    fn amounts_are_whole_minor_units() {
        let cases = [
            (json!(15000), Ok(15000)),
            (json!(1), Ok(1)),
            (json!(0), Err(AmountError::NotPositiveInteger)),
            (json!(-5), Err(AmountError::NotPositiveInteger)),
            (json!(150.5), Err(AmountError::NotPositiveInteger)),
            (json!(150.0), Err(AmountError::NotPositiveInteger)),
            (json!("15000"), Err(AmountError::NotPositiveInteger)),
            (json!(null), Err(AmountError::NotPositiveInteger)),
            (json!(MAX_AMOUNT), Ok(MAX_AMOUNT)),
            (json!(MAX_AMOUNT + 1), Err(AmountError::TooLarge)),
            (json!(u64::MAX), Err(AmountError::NotPositiveInteger)),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_amount(&value), expected, "{value}");
        }
    }

    #[test]
    fn recharge_minimum_and_bonus() {
        let f = Figures::default();
        let cases = [
            (
                Currency::Brl,
                14_999,
                Err(AmountError::BelowMinimum(15_000)),
                0,
            ),
            (Currency::Brl, 15_000, Ok(()), 0),
            (Currency::Brl, 99_999, Ok(()), 0),
            (Currency::Brl, 100_000, Ok(()), 10_000),
            (Currency::Brl, 123_457, Ok(()), 12_345),
            (
                Currency::Usd,
                2_999,
                Err(AmountError::BelowMinimum(3_000)),
                0,
            ),
            (Currency::Usd, 3_000, Ok(()), 0),
            (Currency::Usd, 29_999, Ok(()), 0),
            (Currency::Usd, 30_000, Ok(()), 3_000),
        ];
        for (currency, amount, check, bonus) in cases {
            assert_eq!(f.check_recharge(currency, amount), check, "{amount}");
            assert_eq!(f.recharge_bonus(currency, amount), bonus, "{amount}");
        }
        assert_eq!(f.withdrawal_minimum(Currency::Brl), 5_000);
        assert_eq!(f.withdrawal_fee(Currency::Usd), 200);
    }

    #[test]
    fn debt_is_paid_first_and_charges_become_debt() {
        for (amount, debt, split) in [
            (15_000, 0, (0, 15_000)),
            (15_000, 4_000, (4_000, 11_000)),
            (15_000, 15_000, (15_000, 0)),
            (15_000, 20_000, (15_000, 0)),
            (15_000, -1, (0, 15_000)),
        ] {
            assert_eq!(debt_first(amount, debt), split, "{amount} {debt}");
        }
        for (amount, available, split) in [
            (500, 1_000, (500, 0)),
            (500, 300, (300, 200)),
            (500, 0, (0, 500)),
        ] {
            assert_eq!(charge_split(amount, available), split);
        }
    }

    #[test]
    fn percent_rounds_down_and_display() {
        assert_eq!(percent_of(999, 10), 99);
        assert_eq!(percent_of(i64::MAX, 10), i64::MAX / 10);
        assert_eq!(display(15_000, Currency::Brl), "BRL 150.00");
        assert_eq!(display(5, Currency::Usd), "USD 0.05");
        assert_eq!(display(-105, Currency::Usd), "USD -1.05");
    }
}
