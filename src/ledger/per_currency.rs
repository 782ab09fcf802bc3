//! An amount per currency (minor units): the figures of a rule that differ between BRL and
//! USD, and the settings that carry them (`BRL:5000,USD:1000`).

pub use super::rules::Currency;

/// One amount in minor units per currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerCurrency {
    pub brl: i64,
    pub usd: i64,
}

impl PerCurrency {
    pub const fn get(self, currency: Currency) -> i64 {
        match currency {
            Currency::Brl => self.brl,
            Currency::Usd => self.usd,
        }
    }

    /// `BRL:5000,USD:1000` (both, minor units, in any order).
    pub fn parse(text: &str) -> Result<PerCurrency, String> {
        let (mut brl, mut usd) = (None, None);
        for part in text.split(',') {
            let (code, amount) = part.trim().split_once(':').ok_or_else(|| {
                format!("expected BRL:<minor units>,USD:<minor units>, got {part:?}")
            })?;
            let amount: i64 = amount
                .trim()
                .parse()
                .ok()
                .filter(|a| *a >= 0)
                .ok_or_else(|| format!("{amount:?} is not an amount in minor units"))?;
            let slot = match Currency::parse(code.trim()) {
                Some(Currency::Brl) => &mut brl,
                Some(Currency::Usd) => &mut usd,
                None => return Err(format!("unknown currency {code:?}")),
            };
            if slot.replace(amount).is_some() {
                return Err(format!("{code} is given twice"));
            }
        }
        match (brl, usd) {
            (Some(brl), Some(usd)) => Ok(PerCurrency { brl, usd }),
            _ => Err("give both BRL and USD".into()),
        }
    }
}

impl std::fmt::Display for PerCurrency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BRL:{},USD:{}", self.brl, self.usd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_settings() {
        let ok = PerCurrency {
            brl: 5_000,
            usd: 1_000,
        };
        assert_eq!(PerCurrency::parse("BRL:5000,USD:1000"), Ok(ok));
        assert_eq!(PerCurrency::parse(" USD:1000 , BRL:5000 "), Ok(ok));
        assert_eq!(PerCurrency::parse(&ok.to_string()), Ok(ok));
        for bad in [
            "BRL:5000",
            "BRL:5000,USD:-1",
            "BRL:5000,USD:1.5",
            "BRL:1,BRL:2,USD:3",
            "EUR:1,BRL:1,USD:1",
            "5000",
            "",
        ] {
            assert!(PerCurrency::parse(bad).is_err(), "{bad}");
        }
    }
}
