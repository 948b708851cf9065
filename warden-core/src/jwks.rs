//! Checks on JSON Web Key Sets an operator supplies or an issuer publishes: public asymmetric
//! keys only, each signature key selected by one `kid`.

use std::collections::HashMap;

use crate::signature::PublicKey;

/// Deepest nesting of arrays and objects accepted in a key set (a JWK's `x5c` is the third
/// level).
pub const MAX_DEPTH: usize = 16;

/// Why a published key set is refused; each names the key by its index in `keys`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Not an object with a `keys` array.
    #[error("must be a JWKS object with a \"keys\" array")]
    NotASet,
    /// `keys` is empty.
    #[error("\"keys\" is empty")]
    Empty,
    /// A key without `kty`.
    #[error("keys[{0}]: missing \"kty\"")]
    MissingType(usize),
    /// A symmetric key.
    #[error("keys[{0}]: symmetric (oct) keys are refused")]
    Symmetric(usize),
    /// A key type other than RSA, EC and OKP.
    #[error("keys[{0}]: unsupported key type {1:?}")]
    UnsupportedType(usize, String),
    /// A key with private material.
    #[error("keys[{0}]: holds private key material; publish public keys only")]
    Private(usize),
    /// A key without `kid`.
    #[error("keys[{0}]: missing \"kid\" (keys are selected by kid)")]
    MissingKid(usize),
    /// Two keys for one algorithm under one kid.
    #[error(
        "keys[{index}]: kid {kid:?} also names keys[{first}], another key for the same algorithm; a token's kid must select one key (RFC 7517 §4.5)"
    )]
    AmbiguousKid {
        /// The later key.
        index: usize,
        /// The shared kid.
        kid: String,
        /// The earlier key.
        first: usize,
    },
}

/// Refuses a JWKS that is malformed (or nested deeper than [`MAX_DEPTH`]), holds a symmetric
/// key, holds private key material, or gives one `kid` to two keys that could verify the same
/// algorithm.
///
/// Ambiguous kids are refused here, where keys come in (an inline `jwks` when its document is
/// admitted, a fetched set before it is stored, and again in `Config::with_fetched_keys`),
/// rather than token by token: the operator applying the document, or the log of the failed
/// refresh (which leaves the last good keys in force), names the keys at fault, instead of a
/// set that loads and then refuses some tokens. RFC 7517 §4.5 only says kids SHOULD differ and
/// names keys of different types as a fair reason to share one, and identity providers publish
/// one key under one kid for several algorithms, so only a real choice is refused: two
/// different keys that would both verify some algorithm. `Verifier::new` drops such kids too,
/// for configurations put together without this check.
pub fn check_public_jwks(jwks: &serde_json::Value) -> Result<(), JwksError> {
    // A fetched set is stored inside a record one level deeper: nested near serde_json's limit,
    // it would be stored and then never read back (the control plane could not load its store).
    if crate::validation::depth(jwks) > MAX_DEPTH {
        return Err(JwksError::TooDeep);
    }
    let keys = jwks.get("keys").and_then(|k| k.as_array()).ok_or(JwksError::NotASet)?;
    if keys.is_empty() {
        return Err(JwksError::Empty);
    }
    for (i, key) in keys.iter().enumerate() {
        let kty = key.get("kty").and_then(|v| v.as_str()).ok_or(JwksError::MissingType(i))?;
        match kty {
            "RSA" | "EC" | "OKP" => {}
            "oct" => return Err(JwksError::Symmetric(i)),
            other => return Err(JwksError::UnsupportedType(i, other.to_string())),
        }
        // "d" is the private exponent / scalar for every asymmetric key type.
        if key.get("d").is_some() {
            return Err(JwksError::Private(i));
        }
        if key.get("kid").and_then(|v| v.as_str()).is_none_or(str::is_empty) {
            return Err(JwksError::MissingKid(i));
        }
    }
    // Only keys that can verify a signature can be chosen by a token's kid.
    let mut by_kid: HashMap<&str, Vec<(usize, PublicKey)>> = HashMap::new();
    for (i, jwk) in keys.iter().enumerate() {
        let kid = jwk.get("kid").and_then(|v| v.as_str());
        let (Some(kid), true, Some(key)) = (kid, for_signatures(jwk), PublicKey::from_jwk(jwk)) else {
            continue;
        };
        let same_kid = by_kid.entry(kid).or_default();
        if let Some((first, _)) = same_kid.iter().find(|(_, other)| other.confusable_with(&key)) {
            return Err(JwksError::AmbiguousKid { index: i, kid: kid.to_string(), first: *first });
        }
        same_kid.push((i, key));
    }
    Ok(())
}

/// Whether `jwk` is meant for verifying signatures. RFC 7517 §4.2 and §4.3: `use` and `key_ops`
/// say what a key is for; a key for encryption (`use: "enc"`, or any use but `sig`) or whose
/// operations do not include `verify` never checks a signature, whatever a token names.
pub(crate) fn for_signatures(jwk: &serde_json::Value) -> bool {
    let used_for_signatures = jwk.get("use").is_none_or(|u| u.as_str() == Some("sig"));
    let verifies = jwk
        .get("key_ops")
        .is_none_or(|ops| ops.as_array().is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify"))));
    used_for_signatures && verifies
}

/// The key ids in a JWKS, for status displays.
pub fn kids(jwks: &serde_json::Value) -> Vec<String> {
    jwks.get("keys")
        .and_then(|k| k.as_array())
        .map(|keys| keys.iter().filter_map(|k| k.get("kid")?.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// An RSA key with kid `k`, modulus `n` and `members` added.
    fn rsa(n: &str, members: Value) -> Value {
        let mut key = json!({"kty": "RSA", "kid": "k", "n": n, "e": "AQAB"});
        key.as_object_mut().unwrap().extend(members.as_object().unwrap().clone());
        key
    }

    fn set(keys: Vec<Value>) -> Result<(), String> {
        check_public_jwks(&json!({ "keys": keys })).map_err(|e| e.to_string())
    }

    #[test]
    fn a_kid_is_refused_where_a_token_could_select_two_keys_by_it() {
        let message = set(vec![rsa("AQAB", json!({})), rsa("AQAC", json!({}))]).unwrap_err();
        assert!(
            message.starts_with("keys[1]: ") && message.contains("\"k\"") && message.contains("keys[0]"),
            "{message}"
        );
        set(vec![rsa("AQAB", json!({"alg": "RS256"})), rsa("AQAC", json!({}))]).unwrap_err();
        set(vec![rsa("AQAB", json!({"use": "sig"})), rsa("AQAC", json!({"key_ops": ["verify"]}))]).unwrap_err();
        // Told apart by the algorithm each pins (one RSA key published for RS256 and PS256 is
        // common), or by type (RFC 7517 §4.5's own example of a shared kid).
        set(vec![rsa("AQAB", json!({"alg": "RS256"})), rsa("AQAC", json!({"alg": "PS256"}))]).unwrap();
        let ed = json!({"kty": "OKP", "kid": "k", "crv": "Ed25519", "x": "AQAB"});
        set(vec![rsa("AQAB", json!({})), ed]).unwrap();
        // Keys that never verify a signature select nothing: for encryption, without `verify`,
        // or of a curve Warden does not implement.
        set(vec![rsa("AQAB", json!({})), rsa("AQAC", json!({"use": "enc"}))]).unwrap();
        set(vec![rsa("AQAB", json!({})), rsa("AQAC", json!({"key_ops": ["encrypt"]}))]).unwrap();
        set(vec![rsa("AQAB", json!({})), json!({"kty": "EC", "kid": "k", "crv": "P-521", "x": "AA", "y": "AA"})])
            .unwrap();
        // One key listed twice (say, once with its certificate) is still one key.
        set(vec![rsa("AQAB", json!({})), rsa("AQAB", json!({"x5c": ["MIIB"]}))]).unwrap();
        set(vec![rsa("AQAB", json!({})), rsa("AQAC", json!({"kid": "other"}))]).unwrap();
    }

    #[test]
    fn a_set_nested_near_the_parsers_limit_is_refused_before_it_is_stored() {
        // Found by the property tests (props::resource): a key set is stored inside a record one
        // level deeper (`KeyRecord`), so one nested to serde_json's limit (127 levels, which an
        // identity provider can publish) was stored and then never read back.
        let nested = |levels: usize| -> Value {
            serde_json::from_str(&format!("{}{}", "[".repeat(levels), "]".repeat(levels))).unwrap()
        };
        let message = set(vec![rsa("AQAB", json!({"x-note": nested(124)}))]).unwrap_err();
        assert_eq!(message, format!("nests deeper than {MAX_DEPTH} levels"));
        set(vec![rsa("AQAB", json!({"x-note": nested(MAX_DEPTH - 3)}))]).unwrap();
        set(vec![rsa("AQAB", json!({"x-note": nested(MAX_DEPTH - 2)}))]).unwrap_err();
    }
}
