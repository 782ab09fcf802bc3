//! The bootstrap operator credential: `OPERATOR_TOKEN`, sent as `Authorization: Bearer <token>`.
//!
//! It lets an operator reach the operator routes (jobs, dead letters, debug routes, and the
//! reports when `METRICS_ACCESS=operator`) with or without a database: a server that runs its
//! jobs in memory has no users to log in. The caller counts as [`super::role::Role::Operator`]
//! and as no user: it reaches no route that needs a session or an API key. Only the token's
//! SHA-256 is kept, and a presented token is hashed and compared with it in constant time.

use subtle::ConstantTimeEq;

use super::token::sha256;

/// Fewest characters an operator token may have (32 random hex digits are 128 bits).
pub const MIN_TOKEN_CHARS: usize = 32;
/// Most characters an operator token may have.
pub const MAX_TOKEN_CHARS: usize = 512;

/// The operator token, as its SHA-256.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OperatorToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorToken(<redacted>)")
    }
}

impl OperatorToken {
    /// Checks a token's shape: 32 to 512 visible ASCII characters, no spaces (it travels in a
    /// header). The error never repeats the token.
    pub fn parse(text: &str) -> Result<OperatorToken, String> {
        let visible = text.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if !(MIN_TOKEN_CHARS..=MAX_TOKEN_CHARS).contains(&text.len()) || !visible {
            return Err(format!(
                "must be {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} visible ASCII characters without spaces (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(OperatorToken {
            digest: sha256(text.as_bytes()),
        })
    }

    /// Whether `authorization` (the header's value) is `Bearer ` and this token.
    pub fn matches(&self, authorization: &[u8]) -> bool {
        match authorization.strip_prefix(b"Bearer ") {
            Some(token) if token.len() <= MAX_TOKEN_CHARS => {
                bool::from(sha256(token).ct_eq(&self.digest))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_tokens_are_checked_and_matched_by_digest() {
        let text = "0123456789abcdef0123456789abcdef";
        let token = OperatorToken::parse(text).unwrap();
        assert!(token.matches(format!("Bearer {text}").as_bytes()));
        assert!(!token.matches(text.as_bytes()));
        assert!(!token.matches(format!("Bearer {text}0").as_bytes()));
        assert!(!token.matches(format!("bearer {text}").as_bytes()));
        assert!(!token.matches(b"Bearer "));
        for bad in [
            &text[1..],
            "0123456789abcdef 0123456789abcdef",
            &"x".repeat(513),
        ] {
            let error = OperatorToken::parse(bad).unwrap_err();
            assert!(!error.contains(bad), "{error}");
        }
        assert!(!format!("{token:?}").contains("0123"));
    }
}
