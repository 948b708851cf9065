//! Public keys read from JWKs and the signature check, with `ring` directly (see `token` for
//! why): an algorithm is accepted only when it fits the key's type and the key's own `alg`, so
//! there is no algorithm confusion, and HMAC does not exist here at all.

use base64::Engine;
use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};

use serde::{Deserialize, Serialize};

/// Signature algorithms an issuer may use. Only asymmetric ones exist here: `none` and the
/// HMAC family are refused at parse time, so no configuration can enable them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl Algorithm {
    /// Every algorithm Warden verifies. A new variant belongs here too: whether two keys under
    /// one kid leave a token a choice is decided over this list.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
}

/// Why a signature was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SignatureError {
    /// The algorithm does not fit the key.
    AlgNotAllowed,
    /// The signature does not verify.
    Bad,
}

/// A public key from a JWK, ready for ring.
#[derive(PartialEq, Eq)]
enum Material {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

pub(crate) struct PublicKey {
    material: Material,
    /// The algorithm the JWK pins with its own `alg`, if it does.
    pinned: Option<Algorithm>,
}

impl PublicKey {
    /// Reads a public JWK; `None` for anything malformed or unsupported.
    pub(crate) fn from_jwk(jwk: &serde_json::Value) -> Option<PublicKey> {
        let field = |name: &str| -> Option<Vec<u8>> {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwk.get(name)?.as_str()?).ok()
        };
        let material = match (jwk.get("kty")?.as_str()?, jwk.get("crv").and_then(|c| c.as_str())) {
            ("RSA", _) => Material::Rsa { n: field("n")?, e: field("e")? },
            ("EC", Some(curve @ ("P-256" | "P-384"))) => {
                let (x, y) = (field("x")?, field("y")?);
                let size = if curve == "P-256" { 32 } else { 48 };
                if x.len() != size || y.len() != size {
                    return None;
                }
                // Uncompressed SEC1 point, what ring expects.
                let point = [&[4u8][..], &x, &y].concat();
                if size == 32 { Material::P256(point) } else { Material::P384(point) }
            }
            ("OKP", Some("Ed25519")) => Material::Ed25519(field("x")?),
            _ => return None,
        };
        let pinned = match jwk.get("alg") {
            None => None,
            Some(alg) => Some(serde_json::from_value::<Algorithm>(alg.clone()).ok()?),
        };
        Some(PublicKey { material, pinned })
    }

    /// Whether this key verifies `alg`: the algorithm fits the key's type and the key's own
    /// `alg`, when it pins one.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        let fits = match self.material {
            Material::Rsa { .. } => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            Material::P256(_) => alg == Algorithm::ES256,
            Material::P384(_) => alg == Algorithm::ES384,
            Material::Ed25519(_) => alg == Algorithm::EdDSA,
        };
        fits && self.pinned.is_none_or(|p| p == alg)
    }

    /// Whether a token naming both keys' kid could be checked with either: another key, for an
    /// algorithm both verify. One key listed twice is not a choice, nor are keys that the
    /// token's `alg` tells apart.
    pub(crate) fn confusable_with(&self, other: &PublicKey) -> bool {
        self.material != other.material && Algorithm::ALL.iter().any(|&alg| self.accepts(alg) && other.accepts(alg))
    }

    /// Whether both are the same key material (one key listed under two ids, or twice).
    pub(crate) fn same_key(&self, other: &PublicKey) -> bool {
        self.material == other.material
    }

    /// Checks `signature` over `message` with `alg`, which must fit this key's type: no
    /// algorithm confusion, and HMAC does not exist here at all.
    pub(crate) fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        if !self.accepts(alg) {
            return Err(SignatureError::AlgNotAllowed);
        }
        let checked = match (&self.material, alg) {
            (Material::Rsa { n, e }, _) => {
                let params = match alg {
                    Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
                    Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
                    Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
                    _ => return Err(SignatureError::AlgNotAllowed),
                };
                RsaPublicKeyComponents { n, e }.verify(params, message, signature)
            }
            (Material::P256(point), Algorithm::ES256) => {
                ring_verify(&sig::ECDSA_P256_SHA256_FIXED, point, message, signature)
            }
            (Material::P384(point), Algorithm::ES384) => {
                ring_verify(&sig::ECDSA_P384_SHA384_FIXED, point, message, signature)
            }
            (Material::Ed25519(x), Algorithm::EdDSA) => ring_verify(&sig::ED25519, x, message, signature),
            _ => return Err(SignatureError::AlgNotAllowed),
        };
        checked.map_err(|_| SignatureError::Bad)
    }
}

fn ring_verify(
    alg: &'static dyn VerificationAlgorithm,
    key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), ring::error::Unspecified> {
    UnparsedPublicKey::new(alg, key).verify(message, signature)
}
