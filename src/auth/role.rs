//! Roles (who a user is) and scopes (what an API key may do).

use serde::Serialize;

/// A user's role, as the `users.role` column spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Affiliate,
    AffiliateVip,
    Operator,
    Manager,
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "user" => Role::User,
            "affiliate" => Role::Affiliate,
            "affiliate_vip" => Role::AffiliateVip,
            "operator" => Role::Operator,
            "manager" => Role::Manager,
            "admin" => Role::Admin,
            _ => return None,
        })
    }

    /// Whether the role runs the platform (operator, manager, admin).
    pub fn is_staff(self) -> bool {
        self >= Role::Operator
    }
}

/// What an API key may do. A session (a person logged in) may do all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Trade,
    Withdraw,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Trade, Scope::Withdraw];

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Trade => "trade",
            Scope::Withdraw => "withdraw",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of scopes, as a key holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub const ALL: Scopes = Scopes(0b111);

    pub fn with(self, scope: Scope) -> Scopes {
        Scopes(self.0 | scope.bit())
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL
            .into_iter()
            .filter(|scope| self.contains(*scope))
            .map(Scope::as_str)
            .collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(scopes: I) -> Scopes {
        scopes.into_iter().fold(Scopes::default(), Scopes::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_scopes_parse_as_the_schema_spells_them() {
        for (text, role, staff) in [
            ("user", Role::User, false),
            ("affiliate", Role::Affiliate, false),
            ("affiliate_vip", Role::AffiliateVip, false),
            ("operator", Role::Operator, true),
            ("manager", Role::Manager, true),
            ("admin", Role::Admin, true),
        ] {
            assert_eq!(Role::parse(text), Some(role));
            assert_eq!(role.is_staff(), staff, "{text}");
            assert_eq!(serde_json::to_value(role).unwrap(), text);
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::parse("Admin"), None);
        let scopes: Scopes = [Scope::Read, Scope::Withdraw].into_iter().collect();
        assert!(scopes.contains(Scope::Read) && !scopes.contains(Scope::Trade));
        assert_eq!(scopes.names(), ["read", "withdraw"]);
        assert_eq!(Scope::parse("trade"), Some(Scope::Trade));
        assert_eq!(Scope::parse("admin"), None);
        assert_eq!(Scopes::ALL.names(), ["read", "trade", "withdraw"]);
    }
}
