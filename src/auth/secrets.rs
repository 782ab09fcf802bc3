//! API secrets at rest. A signature can only be checked with the secret itself, so the secret
//! is kept, encrypted: ChaCha20-Poly1305 (an AEAD: a changed ciphertext is refused, not
//! decrypted to garbage) under the server's `SECRETS_KEY`, with a fresh random nonce per
//! secret, the key id as associated data (a ciphertext moved to another key's row does not
//! open), and the key's version stored beside it so that the key can be rotated.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use super::{hex, token::random_bytes};

/// The key that seals API secrets, and its version.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretsKey {
    pub version: u32,
    key: [u8; 32],
}

impl std::fmt::Debug for SecretsKey {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SecretsKey {{ version: {}, key: <redacted> }}",
            self.version
        )
    }
}

/// The form `SECRETS_KEY` takes.
pub const SECRETS_KEY_FORM: &str = "VERSION:KEY, a version from 1 and 64 hex digits (32 bytes)";

/// A sealed secret, as the `api_keys` row keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub nonce: [u8; 12],
    pub key_version: u32,
}

impl SecretsKey {
    /// Parses `VERSION:KEY` (`1:` and 64 hex digits). The error says what is wrong, never the key.
    pub fn parse(text: &str) -> Result<SecretsKey, String> {
        let (version, key) = text
            .split_once(':')
            .ok_or_else(|| format!("expected {SECRETS_KEY_FORM}"))?;
        let version = version
            .parse::<u32>()
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| {
                format!("the version must be a whole number from 1 ({SECRETS_KEY_FORM})")
            })?;
        let key = hex::decode_array::<32>(key.as_bytes())
            .ok_or_else(|| format!("the key must be 64 hex digits ({SECRETS_KEY_FORM})"))?;
        Ok(SecretsKey { version, key })
    }

    /// The development key, used only with `--debug-routes` when `SECRETS_KEY` is unset:
    /// public, so nothing sealed with it is secret.
    pub fn development() -> SecretsKey {
        SecretsKey {
            version: 1,
            key: *b"coinbit development secrets key!",
        }
    }

    /// Seals `secret` for the key `key_id`.
    pub fn seal(&self, key_id: &str, secret: &[u8]) -> Sealed {
        let nonce = random_bytes::<12>();
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: key_id.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 seals any message that fits in memory");
        Sealed {
            ciphertext,
            nonce,
            key_version: self.version,
        }
    }

    /// Opens a secret sealed for `key_id`; `None` when it was sealed under another key version,
    /// for another key id, or changed since.
    pub fn open(&self, key_id: &str, sealed: &Sealed) -> Option<Vec<u8>> {
        if sealed.key_version != self.version {
            return None;
        }
        self.cipher()
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: key_id.as_bytes(),
                },
            )
            .ok()
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "2:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn parse_refuses_every_malformed_key_without_echoing_it() {
        let key = SecretsKey::parse(KEY).unwrap();
        assert_eq!(key.version, 2);
        assert!(!format!("{key:?}").contains("0102"));
        for bad in [
            "",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            "0:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            "x:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            "1:0001",
            "1:zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        ] {
            let error = SecretsKey::parse(bad).unwrap_err();
            assert!(!error.contains("0a0b"), "{error}");
        }
    }

    #[test]
    fn sealed_secrets_open_only_unchanged_for_their_key() {
        let key = SecretsKey::parse(KEY).unwrap();
        let sealed = key.seal("key-a", b"the secret");
        assert_eq!(sealed.key_version, 2);
        assert_ne!(sealed.ciphertext[..10], b"the secret"[..]);
        assert_eq!(
            key.open("key-a", &sealed).as_deref(),
            Some(&b"the secret"[..])
        );
        assert_ne!(key.seal("key-a", b"the secret").nonce, sealed.nonce);
        assert_eq!(key.open("key-b", &sealed), None);
        let mut changed = sealed.clone();
        changed.ciphertext[0] ^= 1;
        assert_eq!(key.open("key-a", &changed), None);
        let other_version = Sealed {
            key_version: 1,
            ..sealed.clone()
        };
        assert_eq!(key.open("key-a", &other_version), None);
        assert_eq!(SecretsKey::development().open("key-a", &sealed), None);
    }
}
