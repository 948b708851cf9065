//! Verifying a workload's bearer token for one MCP server: signature by `kid` against the
//! issuer's keys, algorithm pinned by key and allow-list, `iss`, `aud` (RFC 8707), `exp`/`nbf`/
//! `iat` with bounded skew, lifetime, required claims, revocation, and certificate binding
//! (RFC 8705). Every refusal has a stable [`Reason`] code; nothing here logs or keeps the token.
//!
//! A [`Verifier`] is compiled once per configuration version (JWKs parsed into keys up front),
//! so a request costs the signature check plus a few map lookups. Signatures are checked with
//! `ring` directly: the same algorithms through jsonwebtoken's pure-Rust backend cost about 5×
//! more for ES256 (see BENCHMARKS.md); the tests sign with jsonwebtoken, so every token is made
//! by one implementation and checked by another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::bounded::BoundedMap;
use crate::config::Config;
use crate::issuer::Algorithm;
use crate::server::Binding;
use crate::signature::{PublicKey, SignatureError};

/// Longest token accepted, before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Verified tokens remembered per configuration version: enough for ten thousand callers, each
/// with its token and, while it rotates, the next one, so that under real traffic a signature is
/// checked once per token rather than once per request. An entry is the token's claims and its
/// principal as Cedar sees it (about 6 KiB together, measured by the `caller_memory` example),
/// and only callers fill it.
pub const CACHE_CAPACITY: usize = 16_384;

/// Why a token was refused. The codes are stable: telemetry and operators rely on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not a compact JWS of three base64url parts with JSON header and claims, or too large; a
    /// member named twice in the header or the claims, at any depth; a header with `crit`
    /// (Warden implements no JWS extension) or `b64: false`.
    Malformed,
    /// `alg: none`: unsigned tokens are never accepted.
    AlgNone,
    /// The algorithm is not allowed for this issuer, or does not fit the key (HMAC included).
    AlgNotAllowed,
    /// No trusted issuer has this `iss`.
    UntrustedIssuer,
    /// The issuer is trusted, but not for this server.
    IssuerNotAllowed,
    /// No key of the issuer has this `kid` (the issuer may have rotated: refresh and retry).
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `aud` does not name this server's resource.
    WrongAudience,
    /// Past `exp` (plus skew).
    Expired,
    /// Before `nbf` (minus skew).
    NotYetValid,
    /// `iat` is in the future (beyond skew).
    IssuedInFuture,
    /// `exp - iat` exceeds the issuer's maximum lifetime.
    LifetimeTooLong,
    /// A required claim (including `exp`, `iat` and the subject claim) is missing or mistyped;
    /// a time claim that is not a number from 0 to [`MAX_NUMERIC_DATE`].
    MissingClaim,
    /// Revoked by `jti`, by subject or by issuer.
    Revoked,
    /// The server requires a certificate-bound token and this one is not bound.
    BindingRequired,
    /// The token is bound to another certificate than the one presented.
    BindingMismatch,
    /// A `CredentialBridge`'s key, presented after the bridge's expiry.
    BridgeExpired,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 17] = [
        Reason::Malformed,
        Reason::AlgNone,
        Reason::AlgNotAllowed,
        Reason::UntrustedIssuer,
        Reason::IssuerNotAllowed,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::WrongAudience,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::LifetimeTooLong,
        Reason::MissingClaim,
        Reason::Revoked,
        Reason::BindingRequired,
        Reason::BindingMismatch,
        Reason::BridgeExpired,
    ];

    /// The stable code, as it appears in telemetry and `WWW-Authenticate` descriptions.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::AlgNone => "alg_none",
            Reason::AlgNotAllowed => "alg_not_allowed",
            Reason::UntrustedIssuer => "untrusted_issuer",
            Reason::IssuerNotAllowed => "issuer_not_allowed",
            Reason::UnknownKey => "unknown_kid",
            Reason::BadSignature => "bad_signature",
            Reason::WrongAudience => "wrong_audience",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::LifetimeTooLong => "lifetime_too_long",
            Reason::MissingClaim => "missing_claim",
            Reason::Revoked => "revoked",
            Reason::BindingRequired => "binding_required",
            Reason::BindingMismatch => "binding_mismatch",
            Reason::BridgeExpired => "bridge_expired",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// What the token proved. Not to be changed once used: what was derived from it is kept beside
/// it (a clone starts afresh, so change a clone).
#[derive(Clone, Debug)]
pub struct Verified {
    /// The TrustedIssuer's name.
    pub issuer: String,
    /// The subject claim's value.
    pub subject: String,
    /// `jti`, when present.
    pub jti: Option<String>,
    /// [`jti_hash`] of the issuer and `jti`, computed once per verified token (decision records
    /// carry it on every request).
    pub jti_hash: Option<String>,
    /// [`jti_key`] of the issuer and `jti`: how revocation lists name the token.
    pub jti_key: Option<u128>,
    /// `exp`, seconds since the epoch (a fraction rounded down: the token is refused from the
    /// first whole second past it).
    pub expires_at: i64,
    /// `iat`, seconds since the epoch (a fraction rounded up: a cut-off at a whole second
    /// revokes the token exactly when it was issued at or before it).
    pub issued_at: i64,
    /// `exp` plus the issuer's clock skew: refused after this.
    pub(crate) valid_until: i64,
    /// `cnf.x5t#S256`, when the token is certificate-bound.
    pub(crate) bound_certificate: Option<String>,
    /// `cnf.jkt`, when the token is DPoP-bound (RFC 9449).
    pub(crate) bound_dpop_key: Option<String>,
    /// Scopes (`scope` split on spaces, or `scp`).
    pub scopes: Vec<String>,
    /// Every claim, for policy context.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Set for a task token, minted by the control plane's token service.
    pub task: Option<Task>,
    /// Set for a legacy client admitted by a `CredentialBridge`'s static key (no token).
    pub bridge: Option<Arc<crate::bridge::Bridge>>,
    /// What is worked out from the token once, when first asked for, and kept as long as the
    /// verified token is remembered.
    pub(crate) derived: Derived,
}

/// What is derived from a [`Verified`] once and reused while the verified token is remembered:
/// a caller's token is verified once and used for many requests, so each of these is built
/// once per token rather than once per request, and needs no cache of its own. A clone starts
/// empty: a clone is made to be changed (e.g. scopes raised to find a step-up), and must not
/// carry what was derived from the original.
#[derive(Default)]
pub(crate) struct Derived {
    /// [`crate::caller::Caller::digest`].
    pub(crate) caller: std::sync::OnceLock<[u8; crate::caller::DIGEST_LEN]>,
    /// The workload as Cedar sees it ([`crate::authorize`]).
    pub(crate) principal: std::sync::OnceLock<Arc<crate::authorize::Principal>>,
}

impl Clone for Derived {
    fn clone(&self) -> Derived {
        Derived::default()
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived")
    }
}

/// What a task token (RFC 8693 token exchange at the control plane) adds: whose identity the
/// control plane vouched for, and the only tools the task may call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// The TrustedIssuer (name) of the subject token the task token was exchanged for.
    pub subject_issuer: String,
    /// The tools granted (the `tools` claim).
    pub tools: Vec<String>,
    /// [`jti_key`] of the subject token exchanged, when it had a `jti` (the `subject_jti`
    /// claim): revoking that token revokes the task tokens minted from it.
    pub subject_token: Option<u128>,
}

/// Claims the control plane puts in task tokens beyond the registered ones.
pub mod task_claims {
    /// The `iss` of the subject token exchanged: the workload's own identity provider.
    pub const SUBJECT_ISSUER: &str = "subject_iss";
    /// [`super::jti_hash`] of the subject token exchanged (32 hex digits), when it had a `jti`.
    pub const SUBJECT_JTI: &str = "subject_jti";
    /// The tools granted, an array of names.
    pub const TOOLS: &str = "tools";
}

impl Verified {
    /// The workload a bridge admits: the bridge as its issuer, its principal as subject. It
    /// has no token, so no lifetime (`issued_at` is its expiry), `jti` or binding.
    pub(crate) fn bridged(bridge: Arc<crate::bridge::Bridge>) -> Verified {
        Verified {
            issuer: bridge.name.clone(),
            subject: bridge.principal.clone(),
            jti: None,
            jti_hash: None,
            jti_key: None,
            expires_at: bridge.expires_at,
            issued_at: bridge.expires_at,
            valid_until: bridge.expires_at,
            bound_certificate: None,
            bound_dpop_key: None,
            scopes: bridge.scopes.clone(),
            claims: serde_json::Map::new(),
            task: None,
            bridge: Some(bridge),
            derived: Default::default(),
        }
    }

    /// The TrustedIssuer that identifies the workload: the issuer of the token, or for a task
    /// token, the issuer of the subject token it was exchanged for.
    pub fn principal_issuer(&self) -> &str {
        self.task.as_ref().map_or(&self.issuer, |t| &t.subject_issuer)
    }
}

pub use crate::revocation::Revocations;

/// The presenter's proof, for bound tokens.
#[derive(Clone, Copy, Debug, Default)]
pub struct Presenter<'a> {
    /// The DER of the client certificate presented over mTLS, if any.
    pub client_certificate: Option<&'a [u8]>,
    /// The RFC 7638 thumbprint of the key of a DPoP proof that was verified for this request,
    /// if any. (The gateway does not verify DPoP proofs yet, so DPoP-bound tokens are refused.)
    pub dpop_key_thumbprint: Option<&'a str>,
}

struct IssuerRules {
    name: String,
    /// The control plane's token service: its tokens are task tokens.
    control_plane: bool,
    allowed: Vec<Algorithm>,
    audiences: Vec<String>,
    max_lifetime: i64,
    skew: i64,
    required: Vec<String>,
    subject_claim: String,
    /// Signature keys by `kid`: usually one; more only when the token's algorithm picks one of
    /// them (`select`), never a choice between two keys.
    keys: HashMap<String, Vec<PublicKey>>,
}

/// Whom a token must be for.
#[derive(Clone, Copy)]
enum Audience<'a> {
    /// An MCP server: its resource, issuers and binding.
    Server(&'a ServerRules),
    /// The control plane's token service, by its identifier.
    TokenService(&'a str),
}

struct ServerRules {
    resource: String,
    issuers: Vec<String>,
    binding: Binding,
}

/// Token rules of one configuration version, compiled for per-request use, with the tokens it
/// verified. A new configuration (rotated keys, new revocations, changed rules) gets a new
/// `Verifier` and so an empty cache.
pub struct Verifier {
    /// By exact `iss` value.
    issuers: HashMap<String, IssuerRules>,
    servers: HashMap<String, ServerRules>,
    cache: TokenCache,
}

/// Verified tokens by a hash of (server, token): the token itself is never kept. Bounded; the
/// oldest entry goes first. What can change between two uses of one token — the clock,
/// revocations, the presented certificate — is checked again on every hit.
struct TokenCache {
    entries: Mutex<BoundedMap<[u8; 32], Arc<Verified>>>,
}

impl TokenCache {
    fn key(server: &str, token: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(server.as_bytes());
        h.update([0]);
        h.update(token.as_bytes());
        h.finalize().into()
    }

    /// The key of a token verified for the audience `audience` at the control plane (token
    /// exchange, attested joins). A leading 1 keeps it apart from every server's key (a server
    /// name starts with a letter or digit), and the audience is part of it: a token verified
    /// for one audience must never pass for another on a cache hit.
    fn audience_key(audience: &str, token: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([1]);
        h.update(audience.as_bytes());
        h.update([0]);
        h.update(token.as_bytes());
        h.finalize().into()
    }

    fn get(&self, key: &[u8; 32], now: i64) -> Option<Arc<Verified>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let hit = entries.get(key)?.clone();
        if now > hit.valid_until {
            // Dropped at expiry (the caller refuses it).
            entries.remove(key);
        }
        Some(hit)
    }

    fn insert(&self, key: [u8; 32], verified: Arc<Verified>) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).insert(key, verified);
    }
}

/// Parses a JOSE `alg` value among those Warden can verify.
pub(crate) fn parse_alg(text: &str) -> Option<Algorithm> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
}

impl Verifier {
    /// Compiles the token rules of `config`. Keys that do not parse, and keys under a kid that
    /// would leave a token a choice between two of them (`jwks::check_public_jwks` refuses such
    /// sets; this holds for any `Config`), are skipped and counted: a token signed with one is
    /// refused as `unknown_kid`, never accepted. Keys not meant for signatures (`use: "enc"`,
    /// `key_ops` without `verify`) are left out without counting: they are not for tokens.
    pub fn new(config: &Config) -> (Verifier, usize) {
        Verifier::with_cache_capacity(config, CACHE_CAPACITY)
    }

    /// [`Verifier::new`], remembering at most `capacity` verified tokens.
    pub fn with_cache_capacity(config: &Config, capacity: usize) -> (Verifier, usize) {
        let mut skipped = 0;
        let mut issuers = HashMap::new();
        for (name, spec) in &config.issuers {
            let mut keys: HashMap<String, Vec<PublicKey>> = HashMap::new();
            let jwks = config.keys.get(name).and_then(|j| j.get("keys")).and_then(|k| k.as_array());
            for value in jwks.into_iter().flatten().filter(|jwk| crate::jwks::for_signatures(jwk)) {
                let kid = value.get("kid").and_then(|k| k.as_str());
                match (kid, PublicKey::from_jwk(value)) {
                    (Some(kid), Some(key)) => keys.entry(kid.to_string()).or_default().push(key),
                    _ => skipped += 1,
                }
            }
            keys.retain(|_, same_kid| {
                let ambiguous =
                    same_kid.iter().enumerate().any(|(i, a)| same_kid[i + 1..].iter().any(|b| a.confusable_with(b)));
                if ambiguous {
                    skipped += same_kid.len();
                }
                !ambiguous
            });
            issuers.insert(
                spec.issuer.clone(),
                IssuerRules {
                    name: name.clone(),
                    control_plane: spec.keys.control_plane,
                    allowed: spec.allowed_algorithms.clone(),
                    audiences: spec.audiences.clone(),
                    max_lifetime: spec.max_token_lifetime.0.as_secs() as i64,
                    skew: spec.clock_skew.0.as_secs() as i64,
                    required: spec.required_claims.clone(),
                    subject_claim: spec.subject_claim.clone(),
                    keys,
                },
            );
        }
        let servers = config
            .servers
            .iter()
            .map(|(name, s)| {
                let rules =
                    ServerRules { resource: s.resource.clone(), issuers: s.issuers.clone(), binding: s.binding };
                (name.clone(), rules)
            })
            .collect();
        let cache = TokenCache { entries: Mutex::new(BoundedMap::new(capacity)) };
        (Verifier { issuers, servers, cache }, skipped)
    }

    /// Verifies `token` for server `server` at `now` (seconds since the epoch). A token verified
    /// before under this configuration skips the signature and the static claim checks.
    pub fn verify(
        &self,
        token: &str,
        server: &str,
        now: i64,
        revocations: &Revocations,
        presenter: Presenter<'_>,
    ) -> Result<Arc<Verified>, Reason> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Reason::Malformed);
        }
        let key = TokenCache::key(server, token);
        let verified = match self.cache.get(&key, now) {
            Some(hit) => hit,
            None => {
                let rules = self.servers.get(server).ok_or(Reason::IssuerNotAllowed)?;
                let fresh = Arc::new(self.verify_uncached(token, Audience::Server(rules), now)?);
                self.cache.insert(key, fresh.clone());
                fresh
            }
        };
        live_checks(&verified, now, revocations, presenter)?;
        Ok(verified)
    }

    /// Verifies a token presented to the control plane itself for `audience`: a subject or
    /// actor token at the token service (whose identifier it is), or a platform's token in an
    /// attested join (the join rule's audience). The same checks as at a server, with any
    /// trusted issuer but the token service itself (a task token is not exchanged again).
    pub fn verify_for_exchange(
        &self,
        token: &str,
        audience: &str,
        now: i64,
        revocations: &Revocations,
        presenter: Presenter<'_>,
    ) -> Result<Arc<Verified>, Reason> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Reason::Malformed);
        }
        let key = TokenCache::audience_key(audience, token);
        let verified = match self.cache.get(&key, now) {
            Some(hit) => hit,
            None => {
                let fresh = Arc::new(self.verify_uncached(token, Audience::TokenService(audience), now)?);
                self.cache.insert(key, fresh.clone());
                fresh
            }
        };
        live_checks(&verified, now, revocations, presenter)?;
        Ok(verified)
    }

    /// A token presented for revocation (RFC 7009): signed by a trusted issuer's key, not yet
    /// expired, with a `jti`. Its audience does not matter: the holder of a token for any server
    /// may revoke it. `None` for anything else, which the caller answers alike.
    pub fn revocable(&self, token: &str, now: i64) -> Option<Revocable> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let (issuer, claims) = self.signed(token).ok()?;
        let expires_at = time_claim(&claims, "exp").ok()??.floor();
        if now > expires_at.saturating_add(issuer.skew) {
            return None;
        }
        let jti = claims.get("jti")?.as_str()?.to_string();
        let subject = claims.get("sub").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        Some(Revocable { issuer: issuer.name.clone(), subject, jti, expires_at })
    }

    /// The issuer and claims of `token` once its signature verified with that issuer's key for
    /// its `kid`, under an algorithm the issuer allows: what every use of a token starts with.
    fn signed(&self, token: &str) -> Result<(&IssuerRules, Map<String, Value>), Reason> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reason::Malformed);
        };
        let header = Header::parse(header_b64)?;
        let alg = match header.alg.as_str() {
            "none" | "None" | "NONE" => return Err(Reason::AlgNone),
            // HS256 and anything else unknown: not an algorithm Warden verifies.
            other => parse_alg(other).ok_or(Reason::AlgNotAllowed)?,
        };
        let claims = decode_object(claims_b64)?;
        let iss = claims.get("iss").and_then(|v| v.as_str()).ok_or(Reason::MissingClaim)?;
        let issuer = self.issuers.get(iss).ok_or(Reason::UntrustedIssuer)?;
        // The algorithm must be allowed for the issuer, fit the key's type, and match the key's
        // own `alg` when it pins one (`PublicKey::verify`).
        if !issuer.allowed.contains(&alg) {
            return Err(Reason::AlgNotAllowed);
        }
        let kid = header.kid.as_deref().ok_or(Reason::UnknownKey)?;
        let key = select(issuer.keys.get(kid).ok_or(Reason::UnknownKey)?, alg)?;
        let signature =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).map_err(|_| Reason::BadSignature)?;
        let message_len = header_b64.len() + 1 + claims_b64.len();
        key.verify(alg, &token.as_bytes()[..message_len], &signature).map_err(|e| match e {
            SignatureError::AlgNotAllowed => Reason::AlgNotAllowed,
            SignatureError::Bad => Reason::BadSignature,
        })?;
        Ok((issuer, claims))
    }

    /// Everything that depends only on the token, the configuration and (for time claims) now.
    fn verify_uncached(&self, token: &str, audience: Audience<'_>, now: i64) -> Result<Verified, Reason> {
        let (issuer, claims) = self.signed(token)?;
        let (resource, binding) = match audience {
            Audience::Server(server) if server.issuers.contains(&issuer.name) => (&server.resource[..], server.binding),
            Audience::TokenService(resource) if !issuer.control_plane => (resource, Binding::None),
            _ => return Err(Reason::IssuerNotAllowed),
        };

        // Claims are trusted from here on.
        let audience_ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => a == resource,
            Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(resource)),
            _ => false,
        };
        if !audience_ok || !(issuer.audiences.is_empty() || issuer.audiences.iter().any(|a| a == resource)) {
            return Err(Reason::WrongAudience);
        }
        let exp = time_claim(&claims, "exp")?.ok_or(Reason::MissingClaim)?;
        let iat = time_claim(&claims, "iat")?.ok_or(Reason::MissingClaim)?;
        // `now` is whole seconds, so each comparison is exact through one rounding of the claim
        // (for a whole n and any x: n > x ⇔ n > ⌊x⌋, and n < x ⇔ n < ⌈x⌉): `exp` rounds down
        // (expired from the first whole second past it), `nbf` and `iat` round up (not valid,
        // or issued in the future, until the first whole second at or after them). Rounding
        // the other way would accept a token for up to a second it is not valid in.
        let (expires_at, issued_at) = (exp.floor(), iat.ceil());
        if now > expires_at.saturating_add(issuer.skew) {
            return Err(Reason::Expired);
        }
        if let Some(nbf) = time_claim(&claims, "nbf")?
            && now.saturating_add(issuer.skew) < nbf.ceil()
        {
            return Err(Reason::NotYetValid);
        }
        if issued_at > now.saturating_add(issuer.skew) {
            return Err(Reason::IssuedInFuture);
        }
        // The lifetime as given, not of rounded ends: rounding down would let a token live up
        // to two seconds longer than allowed, rounding up would refuse an issuer that mints
        // `exp = iat + maximum` with a fraction. Both are at most `MAX_NUMERIC_DATE`, far below
        // 2^53, so whole seconds are exact, and so is a fraction both share below year 2038.
        if exp.0 - iat.0 > issuer.max_lifetime as f64 {
            return Err(Reason::LifetimeTooLong);
        }
        if issuer.required.iter().any(|c| !claims.contains_key(c)) {
            return Err(Reason::MissingClaim);
        }
        let subject =
            claims.get(&issuer.subject_claim).and_then(|v| v.as_str()).ok_or(Reason::MissingClaim)?.to_string();
        let jti = claims.get("jti").and_then(|v| v.as_str()).map(str::to_string);

        let (bound_certificate, bound_dpop_key) = confirmation(&claims, binding)?;
        let scopes = scopes(&claims);
        let task = if issuer.control_plane { Some(self.task(&claims)?) } else { None };
        Ok(Verified {
            task,
            issuer: issuer.name.clone(),
            subject,
            jti_hash: jti.as_deref().map(|jti| jti_hash(&issuer.name, jti)),
            jti_key: jti.as_deref().map(|jti| jti_key(&issuer.name, jti)),
            jti,
            expires_at,
            issued_at,
            valid_until: expires_at.saturating_add(issuer.skew),
            bound_certificate,
            bound_dpop_key,
            scopes,
            claims,
            bridge: None,
            derived: Default::default(),
        })
    }

    /// What a task token (one the control plane's token service issued) grants, from its own
    /// claims; the workload's issuer must still be trusted: removing it cuts off its tasks.
    fn task(&self, claims: &Map<String, Value>) -> Result<Task, Reason> {
        let source = claims.get(task_claims::SUBJECT_ISSUER).and_then(|v| v.as_str()).ok_or(Reason::MissingClaim)?;
        let source = self.issuers.get(source).filter(|r| !r.control_plane).ok_or(Reason::UntrustedIssuer)?;
        let tools = claims.get(task_claims::TOOLS).and_then(|v| v.as_array()).ok_or(Reason::MissingClaim)?;
        let tools = tools.iter().map(|t| t.as_str().map(String::from)).collect::<Option<Vec<_>>>();
        let subject_token = match claims.get(task_claims::SUBJECT_JTI) {
            None => None,
            Some(hash) => Some(
                hash.as_str()
                    .filter(|h| h.len() == 32)
                    .and_then(|h| u128::from_str_radix(h, 16).ok())
                    .ok_or(Reason::Malformed)?,
            ),
        };
        Ok(Task { subject_issuer: source.name.clone(), tools: tools.ok_or(Reason::MissingClaim)?, subject_token })
    }
}

/// RFC 7800 confirmation: only the methods Warden can enforce (the certificate and DPoP key
/// thumbprints, in that order). A token bound some other way (`jwk`, `jku`, a non-string
/// thumbprint) must not pass as a bearer token, and a server's required binding must be there.
fn confirmation(claims: &Map<String, Value>, binding: Binding) -> Result<(Option<String>, Option<String>), Reason> {
    let (mut bound_certificate, mut bound_dpop_key) = (None, None);
    if let Some(cnf) = claims.get("cnf") {
        let members = cnf.as_object().ok_or(Reason::BindingMismatch)?;
        for (member, value) in members {
            let value = value.as_str().ok_or(Reason::BindingMismatch)?.to_string();
            match member.as_str() {
                "x5t#S256" => bound_certificate = Some(value),
                "jkt" => bound_dpop_key = Some(value),
                _ => return Err(Reason::BindingMismatch),
            }
        }
        if bound_certificate.is_none() && bound_dpop_key.is_none() {
            return Err(Reason::BindingMismatch);
        }
    }
    match binding {
        Binding::Mtls if bound_certificate.is_none() => Err(Reason::BindingRequired),
        Binding::Dpop if bound_dpop_key.is_none() => Err(Reason::BindingRequired),
        _ => Ok((bound_certificate, bound_dpop_key)),
    }
}

/// The scopes a token carries: `scope` (space-separated, RFC 8693) or else `scp` (a list).
fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    // RFC 9068 `scope` is a string (Auth0, Keycloak); `scp` is an array at Okta, a
    // space-separated string at Entra ID.
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) | (_, Some(Value::String(s))) => {
            s.split(' ').filter(|s| !s.is_empty()).map(String::from).collect()
        }
        (_, Some(Value::Array(list))) => list.iter().filter_map(|s| s.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    }
}

/// What can change between two uses of the same verified token: the clock, revocations, and the
/// certificate it is presented with.
fn live_checks(v: &Verified, now: i64, revocations: &Revocations, presenter: Presenter<'_>) -> Result<(), Reason> {
    if now > v.valid_until {
        return Err(Reason::Expired);
    }
    // A task token falls with the subject token it was exchanged for, too.
    let subject_token = v.task.as_ref().and_then(|t| t.subject_token);
    if [v.jti_key, subject_token].into_iter().flatten().any(|key| revocations.token_revoked(key)) {
        return Err(Reason::Revoked);
    }
    // A task token falls with its workload: revoking the subject or the issuer of the token it
    // was exchanged for revokes it too.
    let issuers = [Some(v.issuer.as_str()), v.task.as_ref().map(|t| t.subject_issuer.as_str())];
    for issuer in issuers.into_iter().flatten() {
        if revocations.cut(issuer, &v.subject, v.issued_at) {
            return Err(Reason::Revoked);
        }
    }
    // A bound token is only ever usable with its key, whatever the server asks.
    if let Some(thumbprint) = &v.bound_certificate
        && presenter.client_certificate.map(certificate_thumbprint).as_ref() != Some(thumbprint)
    {
        return Err(Reason::BindingMismatch);
    }
    if let Some(thumbprint) = &v.bound_dpop_key
        && presenter.dpop_key_thumbprint != Some(thumbprint.as_str())
    {
        return Err(Reason::BindingMismatch);
    }
    Ok(())
}

/// A token its holder asked to revoke (RFC 7009), as far as it proved itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocable {
    /// The TrustedIssuer's name.
    pub issuer: String,
    /// `sub` (empty when absent): whose token, for limiting how often one holder revokes.
    pub subject: String,
    /// The token's `jti`.
    pub jti: String,
    /// `exp`: the revocation is needed until then.
    pub expires_at: i64,
}

pub use crate::revocation::{jti_hash, jti_key};

/// RFC 8705 §3.1: base64url (no padding) SHA-256 of the certificate's DER.
pub fn certificate_thumbprint(der: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

/// The one key among those of a token's kid that verifies its `alg`. Keys that share a kid
/// are told apart by the algorithm (`Verifier::new` drops kids where they are not), so more
/// than one different key here is a configuration that bypassed those checks: refused as
/// unknown rather than tried in turn.
fn select(same_kid: &[PublicKey], alg: Algorithm) -> Result<&PublicKey, Reason> {
    let mut fitting = same_kid.iter().filter(|key| key.accepts(alg));
    match fitting.next() {
        // A key of another type, or pinned to another algorithm.
        None => Err(Reason::AlgNotAllowed),
        Some(key) if fitting.all(|other| other.same_key(key)) => Ok(key),
        Some(_) => Err(Reason::UnknownKey),
    }
}

/// The JOSE header members Warden reads.
struct Header {
    alg: String,
    kid: Option<String>,
}

impl Header {
    fn parse(part: &str) -> Result<Header, Reason> {
        let mut members = decode_object(part)?;
        // RFC 7515 §4.1.11: a JWS whose `crit` names an extension the recipient does not
        // implement is invalid. Warden implements none, so any `crit` is refused (an empty or
        // non-array one is malformed anyway).
        if members.contains_key("crit") {
            return Err(Reason::Malformed);
        }
        // RFC 7797: `b64: false` signs the payload unencoded, so the signed bytes are not the
        // ones read here; it must also be critical, but is refused even when a signer left
        // `crit` out. `true` is the ordinary encoding.
        if members.get("b64").is_some_and(|b64| b64 != &Value::Bool(true)) {
            return Err(Reason::Malformed);
        }
        let Some(Value::String(alg)) = members.remove("alg") else {
            return Err(Reason::Malformed);
        };
        let kid = match members.remove("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid),
            Some(_) => return Err(Reason::Malformed),
        };
        Ok(Header { alg, kid })
    }
}

pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, Reason> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).map_err(|_| Reason::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Reason::Malformed)
}

/// A token's header or claims: a JSON object in which no object names a member twice, at any
/// depth. RFC 7519 §4 and RFC 7515 §4 let a recipient take the last of two members or refuse;
/// parsers disagree on which one counts, so policy could see one `sub` and another system the
/// other: refused. Checked while the object is built, in the one parse it needs anyway.
fn decode_object(part: &str) -> Result<Map<String, Value>, Reason> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).map_err(|_| Reason::Malformed)?;
    let mut json = serde_json::Deserializer::from_slice(&bytes);
    let value = UniqueNames.deserialize(&mut json).map_err(|_| Reason::Malformed)?;
    json.end().map_err(|_| Reason::Malformed)?;
    match value {
        Value::Object(members) => Ok(members),
        _ => Err(Reason::Malformed),
    }
}

/// Builds a `serde_json::Value` as serde_json would, refusing an object that names a member
/// twice instead of keeping the last. (`arguments` walks argument JSON for the same reason but
/// writes canonical text, not a value; claims must stay a map for policy.)
struct UniqueNames;

impl<'de> DeserializeSeed<'de> for UniqueNames {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueNames {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity; serde_json refuses numbers out of range before this.
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(UniqueNames)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        // Names compare unescaped: `"sub"` and `"\u0073ub"` are one name.
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value_seed(UniqueNames)?;
            if members.insert(name, value).is_some() {
                return Err(A::Error::custom("a member name repeats"));
            }
        }
        Ok(Value::Object(members))
    }
}

/// The latest NumericDate accepted: 9999-12-31T23:59:59Z, the last second an RFC 3339 date
/// names. Anything later is no time a real token carries (and far below 2^53, so every whole
/// second up to it is exact as an `f64`).
pub const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

/// A time claim (RFC 7519 §2 NumericDate): seconds since the epoch, a fraction allowed.
#[derive(Clone, Copy, Debug)]
struct NumericDate(f64);

impl NumericDate {
    fn floor(self) -> i64 {
        // Within 0..=MAX_NUMERIC_DATE (`time_claim`): the conversion is exact.
        self.0.floor() as i64
    }

    fn ceil(self) -> i64 {
        self.0.ceil() as i64
    }
}

/// A NumericDate claim: absent is `None`; present, it must be a finite number from 0 to
/// [`MAX_NUMERIC_DATE`], integral or not. A string, boolean, null, negative or absurdly large
/// value is refused, never clamped or truncated into a time.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<NumericDate>, Reason> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    // Integers up to the maximum convert exactly; anything beyond is refused by the range.
    let seconds = value.as_f64().filter(|s| s.is_finite() && (0.0..=MAX_NUMERIC_DATE as f64).contains(s));
    seconds.map(|s| Some(NumericDate(s))).ok_or(Reason::MissingClaim)
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
