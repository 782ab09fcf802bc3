//! Session tokens: 32 random bytes from the OS, given to the client as 64 hex digits; the
//! database keeps only their SHA-256, so a leaked table holds no usable token.

use sha2::{Digest, Sha256};

use super::hex;

/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;

/// A fresh token, as the client sees it (hex).
pub fn new_token() -> String {
    hex::encode(&random_bytes::<TOKEN_BYTES>())
}

/// The token's SHA-256: what is stored and looked up. `None` unless it is 64 hex digits.
pub fn token_digest(token: &[u8]) -> Option<[u8; 32]> {
    let raw: [u8; TOKEN_BYTES] = hex::decode_array(token)?;
    Some(sha256(&raw))
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// `N` bytes from the OS's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // Only fails where the OS has no random source at all, which nothing here can run without.
    getrandom::getrandom(&mut bytes).expect("the OS random source failed");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_hex_and_stored_as_their_digest() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        let digest = token_digest(a.as_bytes()).unwrap();
        assert_eq!(
            digest,
            sha256(&hex::decode_array::<32>(a.as_bytes()).unwrap())
        );
        assert_ne!(hex::encode(&digest), a);
        // SHA-256("abc"), FIPS 180-2's first example.
        assert_eq!(
            hex::encode(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for bad in [&b""[..], b"abc", &[b'z'; 64]] {
            assert_eq!(token_digest(bad), None);
        }
    }
}
