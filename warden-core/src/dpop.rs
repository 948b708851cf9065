//! DPoP proofs (RFC 9449): the caller proves, per request, possession of the key its token is
//! bound to (`cnf.jkt`). A proof is a JWS signed by that key, carrying the key (`jwk` header),
//! the request's method and URI, a fresh `iat`, a unique `jti` and the access token's hash.
//!
//! [`verify`] checks one proof; a [`ReplayCache`] held by the caller remembers the `jti`s seen.

use std::collections::{HashMap, HashSet, VecDeque};

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::issuer::Algorithm;
use crate::signature::PublicKey;
use crate::token::{decode_json, parse_alg};

/// Longest proof accepted, before parsing.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// Algorithms accepted for proofs (asymmetric only, as for tokens).
pub const ALGORITHMS: [Algorithm; 6] =
    [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA, Algorithm::RS256, Algorithm::PS256, Algorithm::PS384];

/// Why a proof was refused; each is answered `invalid_dpop_proof`, with this code as the
/// description.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Not a compact JWS with JSON header and claims, `typ` not `dpop+jwt`, or too large.
    #[error("malformed")]
    Malformed,
    /// `alg` is none, symmetric or not accepted.
    #[error("alg_not_allowed")]
    AlgNotAllowed,
    /// `jwk` missing, private, or not a supported public key.
    #[error("bad_key")]
    BadKey,
    /// The signature does not verify with the embedded key.
    #[error("bad_signature")]
    BadSignature,
    /// `htm` or `htu` do not name this request.
    #[error("wrong_request")]
    WrongRequest,
    /// `iat` too old or in the future.
    #[error("stale")]
    Stale,
    /// `ath` is not the hash of the access token presented with it.
    #[error("wrong_token_hash")]
    WrongTokenHash,
    /// A `jti` already seen ([`ReplayCache`]).
    #[error("replayed")]
    Replayed,
    /// More proofs within one freshness window than the [`ReplayCache`] can remember: refused
    /// rather than forgetting one that could then be replayed.
    #[error("replay_cache_full")]
    ReplayCacheFull,
    /// More proofs by one key within one freshness window than its share of the
    /// [`ReplayCache`]: one key (one token holder) cannot take the memory every other key needs.
    #[error("too_many_proofs")]
    TooManyProofs,
}

/// What a valid proof establishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proven {
    /// RFC 7638 thumbprint of the proof's key: compared with the token's `cnf.jkt`.
    pub jkt: String,
    /// The proof's `jti`, for replay detection.
    pub jti: String,
}

/// The request a proof must be for.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// The URIs the request may be named by (scheme, authority, path; no query): e.g. the
    /// server's resource URL and the URL the listener was reached at.
    pub uris: &'a [&'a str],
    /// The access token presented with the proof (its hash must be the proof's `ath`); `None`
    /// at a token endpoint, where no access token exists yet and the proof carries no `ath`.
    pub access_token: Option<&'a str>,
    /// Seconds since the epoch.
    pub now: i64,
    /// How old a proof may be, and how far in the future (clock skew), in seconds.
    pub max_age: i64,
    /// Clock skew tolerated for proofs from the future.
    pub skew: i64,
}

#[derive(Deserialize)]
struct Header {
    typ: Option<String>,
    alg: String,
    jwk: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Claims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<i64>,
    ath: Option<String>,
}

/// Checks `proof` for `request`.
pub fn verify(proof: &str, request: &Request<'_>) -> Result<Proven, ProofError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError::Malformed);
    }
    let mut parts = proof.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed);
    };
    let header: Header = decode_json(header_b64).map_err(|_| ProofError::Malformed)?;
    if header.typ.as_deref() != Some("dpop+jwt") {
        return Err(ProofError::Malformed);
    }
    let alg = parse_alg(&header.alg).filter(|a| ALGORITHMS.contains(a)).ok_or(ProofError::AlgNotAllowed)?;
    let jwk = header.jwk.ok_or(ProofError::BadKey)?;
    // A private key in the header is a client bug that leaks its key; refuse it outright.
    if jwk.get("d").is_some() || jwk.get("p").is_some() {
        return Err(ProofError::BadKey);
    }
    let key = PublicKey::from_jwk(&jwk).ok_or(ProofError::BadKey)?;
    let signature =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| ProofError::BadSignature)?;
    let message = &proof.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
    key.verify(alg, message, &signature).map_err(|_| ProofError::BadSignature)?;

    let claims: Claims = decode_json(claims_b64).map_err(|_| ProofError::Malformed)?;
    let jti = claims.jti.filter(|j| !j.is_empty() && j.len() <= 256).ok_or(ProofError::Malformed)?;
    let htu = claims.htu.as_deref().map(without_query);
    if claims.htm.as_deref() != Some(request.method) || !htu.is_some_and(|u| request.uris.contains(&u)) {
        return Err(ProofError::WrongRequest);
    }
    let iat = claims.iat.ok_or(ProofError::Malformed)?;
    if iat < request.now - request.max_age || iat > request.now + request.skew {
        return Err(ProofError::Stale);
    }
    let ath = request
        .access_token
        .map(|token| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())));
    if claims.ath != ath {
        return Err(ProofError::WrongTokenHash);
    }
    Ok(Proven { jkt: thumbprint(&jwk).ok_or(ProofError::BadKey)?, jti })
}

/// RFC 9449 §4.3: `htu` is compared without query and fragment.
fn without_query(uri: &str) -> &str {
    uri.split(['?', '#']).next().unwrap_or(uri)
}

/// RFC 7638 JWK thumbprint: SHA-256 over the required members in lexicographic order, without
/// whitespace; base64url.
pub fn thumbprint(jwk: &serde_json::Value) -> Option<String> {
    let member = |name: &str| jwk.get(name).and_then(|v| v.as_str());
    let canonical = match member("kty")? {
        "EC" => serde_json::json!({"crv": member("crv")?, "kty": "EC", "x": member("x")?, "y": member("y")?}),
        "RSA" => serde_json::json!({"e": member("e")?, "kty": "RSA", "n": member("n")?}),
        "OKP" => serde_json::json!({"crv": member("crv")?, "kty": "OKP", "x": member("x")?}),
        _ => return None,
    };
    // serde_json's map is ordered by key, and `to_string` writes no whitespace.
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.to_string().as_bytes())))
}

/// The proofs seen, each remembered until it would be refused as stale anyway, so a replay is
/// caught however many proofs came in between. Bounded: when every slot holds a proof still
/// fresh, new proofs are refused ([`ProofError::ReplayCacheFull`]) — forgetting one early would
/// let it be replayed. Each key (JWK thumbprint) may hold at most its quota of the slots
/// ([`ProofError::TooManyProofs`]), so one token holder cannot fill them for everyone.
///
/// Record only proofs that proved something: proofs of a token bound to their key, after the
/// token was verified. Anyone can make a valid proof with a fresh key of their own.
pub struct ReplayCache {
    seen: HashSet<[u8; 16]>,
    /// Proofs with their key's digest and the time they may be forgotten, in insertion order,
    /// which is also the order of those times (they are `now` plus a constant).
    order: VecDeque<([u8; 16], [u8; 16], i64)>,
    /// Proofs remembered per key digest (keys with none are not kept).
    per_key: HashMap<[u8; 16], usize>,
    capacity: usize,
    key_quota: usize,
}

/// The first 128 bits of SHA-256 over `parts`, each followed by a zero byte: collisions out of
/// reach at half the memory per entry.
fn digest16(parts: &[&[u8]]) -> [u8; 16] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
        hasher.update([0]);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize()[..16]);
    out
}

impl ReplayCache {
    /// Remembers at most `capacity` proofs at a time, any number of them by one key.
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache::with_key_quota(capacity, capacity)
    }

    /// Remembers at most `capacity` proofs at a time, at most `key_quota` of them by one key.
    pub fn with_key_quota(capacity: usize, key_quota: usize) -> ReplayCache {
        ReplayCache {
            seen: HashSet::new(),
            order: VecDeque::new(),
            per_key: HashMap::new(),
            capacity: capacity.max(1),
            key_quota: key_quota.max(1),
        }
    }

    /// Records `proven`, accepted at `now` (seconds) by a check that refuses proofs more than
    /// `fresh_for` seconds away from their `iat` (`max_age + skew`); `Err` when it was seen
    /// before, its key has used its quota, or there is no room to remember it.
    pub fn record(&mut self, proven: &Proven, now: i64, fresh_for: i64) -> Result<(), ProofError> {
        while let Some(&(key, owner, forget_at)) = self.order.front() {
            if forget_at >= now {
                break;
            }
            self.seen.remove(&key);
            if let Some(count) = self.per_key.get_mut(&owner) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.per_key.remove(&owner);
                }
            }
            self.order.pop_front();
        }
        // The key's JWK thumbprint scopes the jti: two keys may pick the same one.
        let key = digest16(&[proven.jkt.as_bytes(), proven.jti.as_bytes()]);
        if self.seen.contains(&key) {
            return Err(ProofError::Replayed);
        }
        let owner = digest16(&[proven.jkt.as_bytes()]);
        if self.per_key.get(&owner).is_some_and(|n| *n >= self.key_quota) {
            return Err(ProofError::TooManyProofs);
        }
        if self.seen.len() >= self.capacity {
            return Err(ProofError::ReplayCacheFull);
        }
        self.seen.insert(key);
        *self.per_key.entry(owner).or_default() += 1;
        // Stale after `iat + max_age`, and `iat` is at most `now + skew`.
        self.order.push_back((key, owner, now + fresh_for));
        Ok(())
    }

    /// Proofs remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header as JwtHeader};
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;
    const URI: &str = "https://mcp.example.com/github";

    struct Client {
        key: EncodingKey,
        jwk: serde_json::Value,
    }

    fn client() -> Client {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw().to_vec();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
        Client { key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(), jwk }
    }

    fn proof(c: &Client, claims: serde_json::Value, typ: &str) -> String {
        let mut header = JwtHeader::new(jsonwebtoken::Algorithm::ES256);
        header.typ = Some(typ.into());
        header.jwk = Some(serde_json::from_value(c.jwk.clone()).unwrap());
        jsonwebtoken::encode(&header, &claims, &c.key).unwrap()
    }

    /// A proof whose header is exactly `header` (jsonwebtoken's typed JWK would drop members).
    fn raw_proof(c: &Client, header: serde_json::Value, claims: serde_json::Value) -> String {
        let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let message = format!("{}.{}", b64(&header), b64(&claims));
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &c.key, jsonwebtoken::Algorithm::ES256).unwrap();
        format!("{message}.{signature}")
    }

    fn claims(token: &str) -> serde_json::Value {
        let ath = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
        json!({"jti": "p-1", "htm": "POST", "htu": URI, "iat": NOW, "ath": ath})
    }

    fn request(token: &str) -> Request<'_> {
        Request { method: "POST", uris: &[URI], access_token: Some(token), now: NOW, max_age: 60, skew: 5 }
    }

    #[test]
    fn replays_are_caught_until_the_proof_is_stale_and_a_full_cache_refuses() {
        let proven = |jkt: &str, jti: &str| Proven { jkt: jkt.into(), jti: jti.into() };
        let mut cache = ReplayCache::new(2);
        assert_eq!(cache.record(&proven("k1", "a"), NOW, 65), Ok(()));
        assert_eq!(cache.record(&proven("k1", "a"), NOW + 30, 65), Err(ProofError::Replayed));
        // The same jti under another key is another proof.
        assert_eq!(cache.record(&proven("k2", "a"), NOW + 1, 65), Ok(()));
        // Full of fresh proofs: refused, and the remembered ones stay remembered.
        assert_eq!(cache.record(&proven("k1", "b"), NOW + 2, 65), Err(ProofError::ReplayCacheFull));
        assert_eq!(cache.record(&proven("k1", "a"), NOW + 64, 65), Err(ProofError::Replayed));
        // Once a proof would be refused as stale anyway, its slot is free again.
        assert_eq!(cache.record(&proven("k1", "b"), NOW + 66, 65), Ok(()));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.record(&proven("k1", "a"), NOW + 67, 65), Ok(()));
    }

    #[test]
    fn one_key_gets_its_quota_of_the_cache_and_no_more() {
        let proven = |jkt: &str, jti: &str| Proven { jkt: jkt.into(), jti: jti.into() };
        let mut cache = ReplayCache::with_key_quota(4, 2);
        assert_eq!(cache.record(&proven("k1", "a"), NOW, 65), Ok(()));
        assert_eq!(cache.record(&proven("k1", "b"), NOW, 65), Ok(()));
        assert_eq!(cache.record(&proven("k1", "c"), NOW, 65), Err(ProofError::TooManyProofs));
        // A replay is still a replay, whatever the quota says.
        assert_eq!(cache.record(&proven("k1", "a"), NOW, 65), Err(ProofError::Replayed));
        // Other keys keep their room.
        assert_eq!(cache.record(&proven("k2", "a"), NOW, 65), Ok(()));
        assert_eq!(cache.record(&proven("k3", "a"), NOW + 1, 65), Ok(()));
        assert_eq!(cache.record(&proven("k4", "a"), NOW + 1, 65), Err(ProofError::ReplayCacheFull));
        // Once k1's proofs are stale, k1 has its quota again.
        assert_eq!(cache.record(&proven("k1", "c"), NOW + 66, 65), Ok(()));
        assert_eq!(cache.record(&proven("k1", "d"), NOW + 66, 65), Ok(()));
        assert_eq!(cache.record(&proven("k1", "e"), NOW + 66, 65), Err(ProofError::TooManyProofs));
        // k1's two, and k3's (recorded a second later, so fresh a second longer).
        assert_eq!(cache.len(), 3);
        // Forgotten keys leave no count behind.
        assert_eq!(cache.record(&proven("k5", "a"), NOW + 200, 65), Ok(()));
        assert_eq!((cache.len(), cache.per_key.len()), (1, 1));
    }

    #[test]
    fn a_proof_binds_key_request_time_and_token() {
        let c = client();
        let ok = verify(&proof(&c, claims("tok"), "dpop+jwt"), &request("tok")).unwrap();
        assert_eq!((ok.jkt, ok.jti.as_str()), (thumbprint(&c.jwk).unwrap(), "p-1"));
        let with = |edit: serde_json::Value| {
            let mut cl = claims("tok");
            for (k, v) in edit.as_object().unwrap() {
                cl[k] = v.clone();
            }
            verify(&proof(&c, cl, "dpop+jwt"), &request("tok"))
        };
        assert_eq!(with(json!({"htm": "GET"})), Err(ProofError::WrongRequest));
        assert_eq!(with(json!({"htu": "https://mcp.example.com/other"})), Err(ProofError::WrongRequest));
        assert!(with(json!({"htu": format!("{URI}?x=1")})).is_ok(), "the query is not part of htu");
        assert_eq!(with(json!({"iat": NOW - 61})), Err(ProofError::Stale));
        assert_eq!(with(json!({"iat": NOW + 6})), Err(ProofError::Stale));
        assert_eq!(with(json!({"ath": "AAAA"})), Err(ProofError::WrongTokenHash));
        assert_eq!(with(json!({"jti": null})), Err(ProofError::Malformed));
        assert_eq!(verify(&proof(&c, claims("tok"), "JWT"), &request("tok")), Err(ProofError::Malformed));
        assert_eq!(verify(&proof(&c, claims("tok"), "dpop+jwt"), &request("other")), Err(ProofError::WrongTokenHash));
    }

    #[test]
    fn the_signature_must_come_from_the_embedded_public_key() {
        let (c, other) = (client(), client());
        // Signed by one key, claiming another: refused.
        let forged = Client { key: other.key, jwk: c.jwk.clone() };
        assert_eq!(verify(&proof(&forged, claims("t"), "dpop+jwt"), &request("t")), Err(ProofError::BadSignature));
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": c.jwk});
        assert!(verify(&raw_proof(&c, header.clone(), claims("t")), &request("t")).is_ok());
        let mut private = header.clone();
        private["jwk"]["d"] = json!("c2VjcmV0");
        assert_eq!(verify(&raw_proof(&c, private, claims("t")), &request("t")), Err(ProofError::BadKey));
        let mut hmac = header;
        hmac["alg"] = json!("HS256");
        assert_eq!(verify(&raw_proof(&c, hmac, claims("t")), &request("t")), Err(ProofError::AlgNotAllowed));
        for bad in ["", "a.b", "a.b.c.d", &"x".repeat(MAX_PROOF_BYTES + 1)] {
            assert_eq!(verify(bad, &request("t")), Err(ProofError::Malformed));
        }
    }

    #[test]
    fn thumbprints_follow_rfc_7638() {
        // RFC 7638 §3.1's example key and thumbprint.
        let jwk = json!({"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
        assert_eq!(thumbprint(&jwk).unwrap(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }
}
