//! `FingerprintKey`: the HMAC-SHA256 key that turns a secret into the only trace of it a finding
//! keeps. The same secret under the same key gives the same fingerprint on every host, so the
//! control plane can tell "this one token is on forty machines" without ever holding the token;
//! without the key, a fingerprint cannot be checked against guesses offline (which a bare hash of
//! a low-entropy password could be).

use ring::hmac;

/// HMAC-SHA256 key for fingerprints. `Debug` prints nothing of the key.
#[derive(Clone)]
pub struct FingerprintKey(hmac::Key);

/// Bytes of the HMAC kept in a fingerprint: 128 bits make a collision between two different
/// secrets on one fleet negligible, and the hex stays short enough for a table column.
const FINGERPRINT_BYTES: usize = 16;

impl FingerprintKey {
    /// A key from its 32 bytes (as distributed by the control plane, so fingerprints agree
    /// across hosts).
    pub fn new(bytes: [u8; 32]) -> Self {
        FingerprintKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
    }

    /// A fresh random key: fingerprints then only compare within this process's scans.
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            // getrandom(2) fails only on kernels older than any Warden supports.
            .expect("the operating system's random source is available");
        Self::new(bytes)
    }

    /// Hex of the first 16 bytes of HMAC-SHA256(key, secret).
    pub fn fingerprint(&self, secret: &[u8]) -> String {
        let tag = hmac::sign(&self.0, secret);
        let mut hex = String::with_capacity(FINGERPRINT_BYTES * 2);
        for byte in &tag.as_ref()[..FINGERPRINT_BYTES] {
            hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 0x0f)]));
        }
        hex
    }
}

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FingerprintKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc4231_case_2() {
        // RFC 4231 test case 2 uses a 4-byte key; ring pads keys with zeros as HMAC does, so a
        // 32-byte key of "Jefe" and zeros is the same key.
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(b"Jefe");
        let key = FingerprintKey::new(bytes);
        assert_eq!(key.fingerprint(b"what do ya want for nothing?"), "5bdcc146bf60754e6a042426089575c7");
    }

    #[test]
    fn same_key_same_fingerprint_other_key_other() {
        let a = FingerprintKey::new([7; 32]);
        let b = FingerprintKey::new([8; 32]);
        assert_eq!(a.fingerprint(b"s3cret"), FingerprintKey::new([7; 32]).fingerprint(b"s3cret"));
        assert_ne!(a.fingerprint(b"s3cret"), b.fingerprint(b"s3cret"));
        assert_eq!(a.fingerprint(b"x").len(), 32);
        assert_ne!(FingerprintKey::random().fingerprint(b"x"), FingerprintKey::random().fingerprint(b"x"));
    }

    #[test]
    fn debug_shows_nothing() {
        assert_eq!(format!("{:?}", FingerprintKey::new([0x41; 32])), "FingerprintKey(..)");
    }
}
