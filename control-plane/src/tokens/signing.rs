//! The token service's signing keys. Each control plane generates its own Ed25519 key pair in
//! memory at start and on every rotation; the private half is never written anywhere. Only the
//! public half is published — as the key set of the `TrustedIssuer` with `keys: {controlPlane:
//! true}`, committed like fetched keys, so it reaches every agent in a snapshot or delta — and a
//! new key signs nothing until the connected agents have applied the version carrying it.
//!
//! Each published key carries the time after which no token it signed can still be valid; it
//! is dropped from the key set then, by whichever replica writes next. So a restarted control
//! plane leaves the tokens its previous run issued valid until they expire, and a replica never
//! needs to know about another's keys.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use warden_tasks::Shutdown;

use crate::configuration::store::KeyRecord;
use crate::configuration::{Configuration, state};
use crate::fleet::Fleet;

/// When keys rotate and how they are published.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a key signs before the next one replaces it.
    pub rotation: Duration,
    /// A new key is published at least this long before it signs (agents that are
    /// reconnecting get it first).
    pub publish_delay: Duration,
    /// A new key signs after this even if some connected agent has not applied it yet.
    pub publish_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            rotation: Duration::from_secs(6 * 3600),
            publish_delay: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(30),
        }
    }
}

/// One signing key pair, held in memory only.
pub struct Signer {
    /// The key's id: its RFC 7638 thumbprint.
    pub kid: String,
    pair: Ed25519KeyPair,
    /// No token it signs may expire after this (seconds since the epoch): the key is published
    /// only until then (plus the issuer's clock skew).
    pub tokens_expire_by: i64,
    jwk: Value,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).field("tokens_expire_by", &self.tokens_expire_by).finish()
    }
}

impl Signer {
    fn generate(tokens_expire_by: i64) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system random source works");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a key ring just generated parses");
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let mut jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x});
        let kid = warden_core::dpop::thumbprint(&jwk).expect("an Ed25519 JWK has a thumbprint");
        jwk["kid"] = kid.clone().into();
        jwk["alg"] = "EdDSA".into();
        jwk["use"] = "sig".into();
        Signer { kid, pair, tokens_expire_by, jwk }
    }

    /// A compact JWS (RFC 9068 access token) of `claims`.
    pub fn sign(&self, claims: &Map<String, Value>) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": self.kid});
        let mut token = b64.encode(header.to_string());
        token.push('.');
        token.push_str(&b64.encode(Value::Object(claims.clone()).to_string()));
        let signature = self.pair.sign(token.as_bytes());
        token.push('.');
        token.push_str(&b64.encode(signature.as_ref()));
        token
    }
}

/// The key that signs now, if one is published.
#[derive(Default)]
pub struct SigningKeys {
    active: RwLock<Option<Arc<Signer>>>,
}

impl SigningKeys {
    /// The key to sign with; `None` until the first key is published (or while no
    /// `TrustedIssuer` has `controlPlane` keys).
    pub fn active(&self) -> Option<Arc<Signer>> {
        self.active.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, signer: Option<Arc<Signer>>) {
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = signer;
    }
}

/// The key set after adding `signer` and dropping keys expired at `now`.
fn next_record(current: Option<&KeyRecord>, signer: Option<&Signer>, skew: i64, now: i64) -> KeyRecord {
    let mut keys: Vec<Value> = Vec::new();
    let mut expires = std::collections::BTreeMap::new();
    if let Some(record) = current {
        for jwk in record.jwks.get("keys").and_then(Value::as_array).into_iter().flatten() {
            let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or_default();
            match record.expires_unix.get(kid) {
                Some(&until) if until > now && signer.is_none_or(|s| s.kid != kid) => {
                    keys.push(jwk.clone());
                    expires.insert(kid.to_string(), until);
                }
                _ => {}
            }
        }
    }
    if let Some(signer) = signer {
        keys.push(signer.jwk.clone());
        expires.insert(signer.kid.clone(), signer.tokens_expire_by + skew);
    }
    KeyRecord {
        version: 0,
        jwks: json!({ "keys": keys }),
        fetched_at_unix: now,
        source_uri: "control-plane".into(),
        expires_unix: expires,
    }
}

/// Commits the token service issuer's key set with `signer` added and expired keys dropped;
/// returns the version that carries it (the current one if nothing changed).
async fn publish(cp: &Configuration, signer: Option<&Signer>) -> Option<u64> {
    // Planned on the latest state at each attempt: another replica may have published its own
    // key meanwhile, and its keys must stay in the set.
    let written = cp
        .write("control-plane", "publish-signing-key", |current| {
            let Some((name, entry, spec)) = current.token_service_issuer() else {
                return Ok((state::Plan::empty(), false));
            };
            let now = crate::now_unix_ms() / 1000;
            let existing = current.keys.get(name).map(|r| &**r);
            let record = next_record(existing, signer, spec.clock_skew.0.as_secs() as i64, now);
            if existing.is_some_and(|r| r.jwks == record.jwks) {
                return Ok((state::Plan::empty(), true));
            }
            Ok((state::plan_keys(current, name, entry.resource_version, record), true))
        })
        .await;
    match written {
        Ok((version, true)) => Some(version),
        Ok((_, false)) => None,
        Err(e) => {
            tracing::error!("publishing the signing key set failed: {e}");
            None
        }
    }
}

/// Runs until shutdown: keeps a published key active, rotates it, and drops expired keys.
pub async fn run(
    configuration: Arc<Configuration>,
    keys: Arc<SigningKeys>,
    fleet: Arc<Fleet>,
    timing: Timing,
    mut shutdown: Shutdown,
) {
    let mut state_rx = configuration.subscribe();
    // The issuer (name, resource version) the active key was published for, and when it rotates.
    let mut published_for: Option<(String, u64)> = None;
    let mut rotate_at = Instant::now();
    loop {
        let current = state_rx.borrow_and_update().clone();
        // The issuer's name and version, and how long a token it issues may be accepted.
        let issuer = current.token_service_issuer().map(|(name, entry, spec)| {
            let lifetime = spec.max_token_lifetime.0.as_secs() as i64 + spec.clock_skew.0.as_secs() as i64;
            (name.to_string(), entry.resource_version, lifetime)
        });
        let now = crate::now_unix_ms() / 1000;
        let mut wake = Instant::now() + Duration::from_secs(60);
        match issuer {
            None => {
                keys.set(None);
                published_for = None;
            }
            Some((name, resource_version, lifetime)) => {
                let active = keys.active();
                let held = active.as_ref().is_some_and(|s| {
                    current.keys.get(&name).and_then(|r| r.expires_unix.get(&s.kid)).is_some()
                        && published_for.as_ref() == Some(&(name.clone(), resource_version))
                });
                if !held || Instant::now() >= rotate_at {
                    // The old key (if any) keeps signing while the new one propagates; its
                    // published lifetime allows for that.
                    let signing_for = timing.rotation + timing.publish_timeout;
                    let signer = Signer::generate(now + signing_for.as_secs() as i64 + lifetime);
                    if let Some(version) = publish(&configuration, Some(&signer)).await {
                        let published = Instant::now();
                        while published.elapsed() < timing.publish_timeout
                            && (published.elapsed() < timing.publish_delay || fleet.presence().behind(version) > 0)
                        {
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                                _ = shutdown.requested() => return,
                            }
                        }
                        tracing::info!(kid = %signer.kid, issuer = %name, version, "signing key active");
                        keys.set(Some(Arc::new(signer)));
                        published_for = Some((name, resource_version));
                        rotate_at = Instant::now() + timing.rotation;
                    } else {
                        wake = Instant::now() + Duration::from_secs(1);
                    }
                    continue;
                }
                // Drop keys whose tokens have all expired.
                if let Some(record) = current.keys.get(&name) {
                    if record.expires_unix.values().any(|&until| until <= now) {
                        publish(&configuration, None).await;
                        continue;
                    }
                    if let Some(next) = record.expires_unix.values().min() {
                        let after = Duration::from_secs((next - now).max(1) as u64);
                        wake = wake.min(Instant::now() + after);
                    }
                }
                wake = wake.min(rotate_at);
            }
        }
        tokio::select! {
            changed = state_rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.requested() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_set_keeps_unexpired_keys_adds_the_new_one_and_drops_the_rest() {
        let old = Signer::generate(1_000);
        let older = Signer::generate(500);
        let first = next_record(None, Some(&older), 60, 100);
        let second = next_record(Some(&first), Some(&old), 60, 200);
        let kids = |r: &KeyRecord| -> Vec<String> {
            r.jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
        };
        assert_eq!(kids(&second), [older.kid.clone(), old.kid.clone()]);
        assert_eq!(second.expires_unix[&old.kid], 1_060);
        // Past the older key's tokens' expiry (plus skew) it is no longer published.
        let third = next_record(Some(&second), None, 60, 560);
        assert_eq!(kids(&third), std::slice::from_ref(&old.kid));
        // Only public halves are ever published.
        for jwk in third.jwks["keys"].as_array().unwrap() {
            assert!(jwk.get("d").is_none());
        }
        warden_core::jwks::check_public_jwks(&third.jwks).unwrap();
    }

    #[test]
    fn tokens_verify_with_the_published_half() {
        let signer = Signer::generate(2_000_000_000);
        let mut claims = Map::new();
        claims.insert("sub".into(), "alice".into());
        let token = signer.sign(&claims);
        let mut parts = token.rsplitn(2, '.');
        let (signature, message) = (parts.next().unwrap(), parts.next().unwrap());
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signer.jwk["x"].as_str().unwrap()).unwrap();
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).unwrap();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x)
            .verify(message.as_bytes(), &signature)
            .unwrap();
    }
}
