//! Subscribers' exchange accounts: one live key a user, its secret sealed with the server's
//! `SECRETS_KEY` (ChaCha20-Poly1305, the key's version beside it, the API key as associated
//! data), never returned.

use crate::auth::secrets::{Sealed, SecretsKey};
use crate::db::{DbConn, DbError};
use crate::exchange::Credentials;

/// Replaces the user's live account with this key; its id.
pub fn replace(
    conn: &mut DbConn,
    user_id: i64,
    exchange: &str,
    testnet: bool,
    api_key: &str,
    sealed: &Sealed,
) -> Result<i64, DbError> {
    conn.query(
        "UPDATE exchange_accounts SET deleted_at = now() WHERE user_id = $1 AND deleted_at IS NULL",
        &[&user_id],
    )?;
    let row = conn.query_one(
        "INSERT INTO exchange_accounts \
         (user_id, exchange, testnet, api_key, secret_ciphertext, secret_nonce, key_version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        &[
            &user_id,
            &exchange,
            &testnet,
            &api_key,
            &sealed.ciphertext,
            &sealed.nonce.as_slice(),
            &(sealed.key_version as i32),
        ],
    )?;
    Ok(row.get(0))
}

/// Removes the user's live account; whether there was one.
pub fn remove(conn: &mut DbConn, user_id: i64) -> Result<bool, DbError> {
    let rows = conn.query(
        "UPDATE exchange_accounts SET deleted_at = now() \
         WHERE user_id = $1 AND deleted_at IS NULL RETURNING id",
        &[&user_id],
    )?;
    Ok(!rows.is_empty())
}

/// A sealed key as its row keeps it.
#[derive(Debug, Clone)]
pub struct SealedKey {
    pub api_key: String,
    pub sealed: Sealed,
}

impl SealedKey {
    pub fn from_parts(api_key: String, ciphertext: Vec<u8>, nonce: Vec<u8>, version: i32) -> Self {
        let mut fixed = [0u8; 12];
        if nonce.len() == 12 {
            fixed.copy_from_slice(&nonce);
        }
        SealedKey {
            api_key,
            sealed: Sealed {
                ciphertext,
                nonce: fixed,
                key_version: version.max(0) as u32,
            },
        }
    }

    /// The credentials, opened with `key`; `None` when it does not open (another key's
    /// version, or tampered with).
    pub fn open(&self, key: &SecretsKey) -> Option<Credentials> {
        key.open(&self.api_key, &self.sealed)
            .map(|secret| Credentials {
                api_key: self.api_key.clone(),
                secret,
            })
    }
}
