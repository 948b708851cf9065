//! `CredentialBridge`: a temporary way in for legacy clients that can only send a static key.
//!
//! A bridge lets one `McpServer` accept one long-lived key, presented in one header, for a
//! bounded time (at most [`MAX_LIFETIME_SECS`] from the write that sets its expiry). The key is
//! never stored: the document an operator applies may carry it (`spec.key`), and parsing
//! replaces it with its SHA-256 (`spec.keyDigest`) after checking it is strong enough to make a
//! plain hash safe to keep ([`MIN_KEY_BITS`]). A request presenting the key is then a workload
//! like any other: its principal is `Workload::"<bridge>/<principal>"` (in
//! `Issuer::"<bridge>"`), decided by the server's policies, recorded with `via=bridge`. After
//! its expiry the key is refused as `bridge_expired`; a bridge is revoked like a token
//! (a `Revocation` of issuer `<bridge>` and `jti` its key digest).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::revocation::Revocations;
use crate::token::{Reason, Verified};
use crate::validation::{Admission, DocumentError, validate_name};

/// The longest a bridge may stay open, counted from the write that sets its expiry: 90 days.
pub const MAX_LIFETIME_SECS: i64 = 90 * 86_400;

/// From this long before its expiry a bridge is reported as expiring: 7 days.
pub const WARN_BEFORE_SECS: i64 = 7 * 86_400;

/// The least estimated entropy a bridged key must have: a SHA-256 of it can then be stored
/// and shipped to every agent without the key being recoverable from it.
pub const MIN_KEY_BITS: f64 = 128.0;

/// Longest key accepted (a header value).
const MAX_KEY_LEN: usize = 4096;
/// Longest principal, owner and exit plan.
const MAX_PRINCIPAL_LEN: usize = 256;
const MAX_OWNER_LEN: usize = 256;
const MAX_EXIT_PLAN_LEN: usize = 2048;
/// Most scopes a bridge grants.
const MAX_SCOPES: usize = 64;

/// The header a bridge reads by default: `Authorization: Bearer <key>`.
pub const DEFAULT_HEADER: &str = "Authorization";

/// The key as written in a document: kept only until it is hashed, and never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
struct Key(String);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<key withheld>")
    }
}

/// `spec` of a `CredentialBridge`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CredentialBridgeSpec {
    /// The `McpServer` the key opens.
    pub server: String,
    /// The header the key is presented in: `Authorization` (the default; as `Bearer <key>`) or
    /// another header, whose whole value is the key (e.g. `X-Api-Key`).
    #[serde(default = "default_header")]
    pub header: String,
    /// The key itself, on input only: replaced by [`CredentialBridgeSpec::key_digest`] when the
    /// document is parsed, never stored, never written out.
    #[serde(default, skip_serializing)]
    key: Option<Key>,
    /// `sha256:<64 hex digits>` of the key. Computed from `key`; given alone, accepted only when
    /// it is the digest already stored for this bridge (a document read back and applied again).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_digest: String,
    /// Who the key's holder is to policy: the principal is `Workload::"<bridge>/<principal>"`.
    pub principal: String,
    /// Scopes the principal holds (the server's required scopes included, or it is refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Who answers for the bridge (a team, a person).
    pub owner: String,
    /// How the legacy client moves to tokens before the bridge expires.
    pub exit_plan: String,
    /// When the bridge closes (RFC 3339): at most 90 days after the write that sets it.
    pub expires: String,
    /// Pass the key on to the upstream: only for an upstream that still checks it itself.
    /// Otherwise the key stops at the gateway like a token does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_key: bool,
    /// Whether `key_digest` was computed from a key given in this document (so its strength was
    /// checked), rather than given as it is.
    #[serde(skip)]
    key_checked: bool,
}

fn default_header() -> String {
    DEFAULT_HEADER.to_string()
}

impl PartialEq for CredentialBridgeSpec {
    /// Equal when they say the same once parsed: the key is gone by then.
    fn eq(&self, other: &CredentialBridgeSpec) -> bool {
        self.server == other.server
            && self.header.eq_ignore_ascii_case(&other.header)
            && self.key_digest == other.key_digest
            && self.principal == other.principal
            && self.scopes == other.scopes
            && self.owner == other.owner
            && self.exit_plan == other.exit_plan
            && self.expires == other.expires
            && self.forward_key == other.forward_key
    }
}

/// Headers a bridge may not read: they frame or route the request, carry another credential
/// or say who is calling, and the gateway handles each itself.
fn reserved_header(lower: &str) -> bool {
    matches!(
        lower,
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "content-type"
            | "content-encoding"
            | "accept"
            | "accept-encoding"
            | "origin"
            | "cookie"
            | "dpop"
            | "traceparent"
            | "tracestate"
            | "forwarded"
            | "x-real-ip"
    ) || lower.starts_with("mcp-")
        || lower.starts_with("x-warden-")
        || lower.starts_with("x-forwarded-")
}

/// The unix time of an RFC 3339 text.
fn unix_time(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok().map(|t| t.unix_timestamp())
}

impl CredentialBridgeSpec {
    /// Checks the document and turns a given key into its digest. With `admission.now` (the
    /// control plane admitting an operator's write) the expiry must also lie ahead, within
    /// [`MAX_LIFETIME_SECS`].
    pub(crate) fn validate(&mut self, admission: &Admission) -> Result<(), DocumentError> {
        validate_name(&self.server).map_err(|m| DocumentError::field("spec.server", m))?;
        let header = self.header.to_ascii_lowercase();
        if header.is_empty() || !header.bytes().all(is_tchar) {
            return Err(DocumentError::field("spec.header", format!("{:?} is not a header name", self.header)));
        }
        if reserved_header(&header) {
            return Err(DocumentError::field(
                "spec.header",
                format!("{} is handled by the gateway itself; use Authorization or a header of your own", self.header),
            ));
        }
        if let Some(Key(key)) = self.key.take() {
            let digest = digest_of_key(&key).map_err(|m| DocumentError::field("spec.key", m))?;
            if !self.key_digest.is_empty() && self.key_digest != digest {
                return Err(DocumentError::field(
                    "spec.keyDigest",
                    "is not the digest of spec.key; give one or the other",
                ));
            }
            self.key_digest = digest;
            self.key_checked = true;
        } else if self.key_digest.is_empty() {
            return Err(DocumentError::field("spec.key", "is required: the static key the legacy client presents"));
        } else if parse_digest(&self.key_digest).is_none() {
            return Err(DocumentError::field("spec.keyDigest", "must be sha256: and 64 lower-case hex digits"));
        }
        if self.principal.is_empty()
            || self.principal.len() > MAX_PRINCIPAL_LEN
            || self.principal.chars().any(char::is_control)
        {
            return Err(DocumentError::field(
                "spec.principal",
                format!("must be 1 to {MAX_PRINCIPAL_LEN} characters, none a control character"),
            ));
        }
        for (path, text, max) in
            [("spec.owner", &self.owner, MAX_OWNER_LEN), ("spec.exitPlan", &self.exit_plan, MAX_EXIT_PLAN_LEN)]
        {
            if text.trim().is_empty() || text.len() > max {
                return Err(DocumentError::field(path, format!("is required (at most {max} characters)")));
            }
        }
        if self.scopes.len() > MAX_SCOPES {
            return Err(DocumentError::field("spec.scopes", format!("at most {MAX_SCOPES} scopes")));
        }
        for (i, scope) in self.scopes.iter().enumerate() {
            // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
            if scope.is_empty()
                || !scope.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
            {
                return Err(DocumentError::field(
                    format!("spec.scopes[{i}]"),
                    format!("{scope:?} is not a scope token"),
                ));
            }
        }
        let Some(expires) = unix_time(&self.expires) else {
            return Err(DocumentError::field(
                "spec.expires",
                format!("{:?} is not an RFC 3339 time like 2027-01-31T00:00:00Z", self.expires),
            ));
        };
        if let Some(now) = admission.now {
            if expires <= now {
                return Err(DocumentError::field("spec.expires", "is already past"));
            }
            if expires - now > MAX_LIFETIME_SECS {
                let latest = crate::revocation::format_time(now + MAX_LIFETIME_SECS);
                return Err(DocumentError::field(
                    "spec.expires",
                    format!("a bridge stays open at most 90 days: {} is later than {latest}", self.expires),
                ));
            }
        }
        Ok(())
    }

    /// `expires` in seconds since the epoch (validated on admission).
    pub fn expires_unix(&self) -> i64 {
        unix_time(&self.expires).unwrap_or(i64::MIN)
    }

    /// Whether the digest was computed from a key given in this document.
    pub fn key_checked(&self) -> bool {
        self.key_checked
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The estimated entropy of `key` in bits: its length times the bits per character of the
/// alphabet its characters span (hex digits of one case 4; otherwise lower case, upper case,
/// digits and other visible characters each widen it). A key whose characters repeat more
/// than random ones would (Shannon entropy per character under 70% of the most its length and
/// alphabet allow, or fewer than 3 in 4 of its three-character runs distinct) is estimated at
/// that entropy, scaled by the share of distinct runs, instead: `aaaa…` or `password` repeated
/// are not strong whatever their length.
pub fn estimated_bits(key: &str) -> f64 {
    let bytes = key.as_bytes();
    if bytes.is_empty() {
        return 0.0;
    }
    let hex_lower = bytes.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let hex_upper = bytes.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
    let alphabet: f64 = if hex_lower || hex_upper {
        16.0
    } else {
        let mut size = 0.0;
        if bytes.iter().any(u8::is_ascii_lowercase) {
            size += 26.0;
        }
        if bytes.iter().any(u8::is_ascii_uppercase) {
            size += 26.0;
        }
        if bytes.iter().any(u8::is_ascii_digit) {
            size += 10.0;
        }
        if bytes.iter().any(|b| !b.is_ascii_alphanumeric()) {
            size += 33.0;
        }
        size
    };
    let n = bytes.len() as f64;
    let mut counts = [0u32; 256];
    for b in bytes {
        counts[usize::from(*b)] += 1;
    }
    let shannon: f64 = counts.iter().filter(|c| **c > 0).map(|c| f64::from(*c) / n).map(|p| -p * p.log2()).sum();
    let most = n.min(alphabet).log2();
    // Repeated words: random keys of any length have nearly every run of three characters
    // once; `password` ten times has 8 distinct runs in 78.
    let runs: Vec<&[u8]> = bytes.windows(3).collect();
    let distinct = runs.iter().collect::<std::collections::HashSet<_>>().len();
    let spread = if runs.is_empty() { 1.0 } else { distinct as f64 / runs.len() as f64 };
    if shannon < 0.7 * most || spread < 0.75 { n * shannon * spread } else { n * alphabet.log2() }
}

/// `sha256:<hex>` of a key strong enough to be bridged, or why it is not.
pub fn digest_of_key(key: &str) -> Result<String, String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!("must be 1 to {MAX_KEY_LEN} characters"));
    }
    if !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err("must be visible ASCII without spaces (it travels in a header)".into());
    }
    let bits = estimated_bits(key);
    if bits < MIN_KEY_BITS {
        return Err(format!(
            "is too weak to be stored as a hash: about {bits:.0} bits of entropy, at least {MIN_KEY_BITS:.0} needed (e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(format!("sha256:{}", hex(&Sha256::digest(key.as_bytes()))))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 32 bytes of a `sha256:<hex>` digest.
fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// One bridge as the gateway uses it.
#[derive(Debug)]
pub struct Bridge {
    /// The CredentialBridge's name: the principal's issuer.
    pub name: String,
    /// The header, lower case.
    pub header: String,
    /// The key's digest as written (`sha256:<hex>`): the `jti` a revocation of the bridge names.
    pub digest: String,
    /// The principal's subject.
    pub principal: String,
    /// Scopes the principal holds.
    pub scopes: Vec<String>,
    /// When it closes (unix seconds).
    pub expires_at: i64,
    /// Whether the key goes on to the upstream.
    pub forward_key: bool,
}

impl Bridge {
    /// The bridged workload at `now`, or why the key is refused: past the bridge's expiry
    /// (`bridge_expired`), or revoked.
    pub fn admit(self: &Arc<Bridge>, now: i64, revocations: &Revocations) -> Result<Arc<Verified>, Reason> {
        if now >= self.expires_at {
            return Err(Reason::BridgeExpired);
        }
        if revocations.jti_revoked(&self.name, &self.digest) {
            return Err(Reason::Revoked);
        }
        Ok(Arc::new(self.workload()))
    }

    /// The workload the key stands for, to policy and in records: issuer the bridge, subject
    /// its principal.
    pub fn workload(self: &Arc<Bridge>) -> Verified {
        Verified::bridged(self.clone())
    }
}

/// The bridges of every server, compiled once per configuration.
#[derive(Debug, Default)]
pub struct Bridges {
    by_server: HashMap<String, ServerBridges>,
}

#[derive(Debug, Default)]
struct ServerBridges {
    /// Each header some bridge of the server reads, lower case, once.
    headers: Vec<String>,
    /// Bridges by the SHA-256 of their key.
    by_digest: HashMap<[u8; 32], Arc<Bridge>>,
}

impl Bridges {
    /// Compiles `bridges` (validated, and cross-checked by `Config::build`).
    pub fn new(bridges: &BTreeMap<String, CredentialBridgeSpec>) -> Bridges {
        let mut by_server: HashMap<String, ServerBridges> = HashMap::new();
        for (name, spec) in bridges {
            let Some(digest) = parse_digest(&spec.key_digest) else { continue };
            let entry = by_server.entry(spec.server.clone()).or_default();
            let header = spec.header.to_ascii_lowercase();
            if !entry.headers.contains(&header) {
                entry.headers.push(header.clone());
            }
            let bridge = Bridge {
                name: name.clone(),
                header,
                digest: spec.key_digest.clone(),
                principal: spec.principal.clone(),
                scopes: spec.scopes.clone(),
                expires_at: spec.expires_unix(),
                forward_key: spec.forward_key,
            };
            entry.by_digest.insert(digest, Arc::new(bridge));
        }
        Bridges { by_server }
    }

    /// The headers bridges of `server` read (lower case): never passed upstream unless the
    /// bridge that admitted the request forwards its key.
    pub fn headers(&self, server: &str) -> &[String] {
        self.by_server.get(server).map_or(&[], |s| &s.headers[..])
    }

    /// The bridge whose key the request presents to `server`, if any. `header` gives the
    /// values of a header (lower-case name); a header sent more than once is not read.
    pub fn find<'h>(&self, server: &str, header: impl Fn(&str) -> Vec<&'h [u8]>) -> Option<Arc<Bridge>> {
        let bridges = self.by_server.get(server)?;
        for name in &bridges.headers {
            let values = header(name);
            let [value] = values[..] else { continue };
            let key = if name == "authorization" { bearer_credential(value) } else { Some(value) };
            let Some(key) = key else { continue };
            let digest: [u8; 32] = Sha256::digest(key).into();
            if let Some(bridge) = bridges.by_digest.get(&digest).filter(|b| b.header == *name) {
                return Some(bridge.clone());
            }
        }
        None
    }

    /// Whether no server has a bridge.
    pub fn is_empty(&self) -> bool {
        self.by_server.is_empty()
    }
}

/// The credential of `Bearer <credential>` (scheme case-insensitive, one space).
fn bearer_credential(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
}

/// A bridge's state for operators, at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Open, more than [`WARN_BEFORE_SECS`] from its expiry.
    Open,
    /// Open, expiring within [`WARN_BEFORE_SECS`].
    Expiring,
    /// Past its expiry: its key is refused as `bridge_expired`.
    Expired,
}

impl State {
    /// The state of a bridge expiring at `expires_at`.
    pub fn at(expires_at: i64, now: i64) -> State {
        if now >= expires_at {
            State::Expired
        } else if expires_at - now <= WARN_BEFORE_SECS {
            State::Expiring
        } else {
            State::Open
        }
    }

    /// As `wardenctl get bridges` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Expiring => "expiring",
            State::Expired => "expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRONG: &str = "4f9c2a7e1b8d3f60a5c9e2b71d4f8a3c6e0b9d2f7a1c5e8b3d6f9a2c4e7b0d1f";

    fn spec(key: &str) -> CredentialBridgeSpec {
        serde_json::from_value(serde_json::json!({
            "server": "github", "header": "X-Api-Key", "key": key, "principal": "ci-runner",
            "owner": "team-ci", "exitPlan": "move to token exchange", "expires": "2027-01-31T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn strong_keys_pass_and_weak_ones_are_refused_whatever_their_length() {
        for strong in [STRONG, "sk_live_4eC39HqLyjWDarjtT1zdp7dc9Xk2Lm8Q", "2c4e7b0d1f4f9c2a7e1b8d3f60a5c9e2"] {
            assert!(digest_of_key(strong).is_ok(), "{strong}: {:.0} bits", estimated_bits(strong));
        }
        for weak in [
            "changeme",
            "0123456789abcdef",
            &"a".repeat(200),
            &"password".repeat(10),
            &"abc".repeat(40),
            "Summer2026!",
            "2c4e7b0d1f4f9c2a7e1b8d3f60a5c9e",
        ] {
            assert!(digest_of_key(weak).is_err(), "{weak}: {:.0} bits", estimated_bits(weak));
        }
        assert!(digest_of_key(&format!("{STRONG} x")).is_err(), "a space cannot travel in a header value");
    }

    #[test]
    fn parsing_keeps_the_digest_and_never_the_key() {
        let mut s = spec(STRONG);
        s.validate(&Admission::default()).unwrap();
        assert!(s.key_checked());
        assert_eq!(s.key_digest, format!("sha256:{}", hex(&Sha256::digest(STRONG.as_bytes()))));
        let written = serde_json::to_string(&s).unwrap();
        assert!(!written.contains(STRONG) && !format!("{s:?}").contains(STRONG), "{written}");
        // Read back and applied again: the digest alone, not checked again.
        let mut back: CredentialBridgeSpec = serde_json::from_str(&written).unwrap();
        back.validate(&Admission::default()).unwrap();
        assert!(!back.key_checked());
        assert_eq!(back, s);
    }

    #[test]
    fn a_weak_key_is_refused_without_quoting_it() {
        let mut s = spec("hunter2hunter2");
        let error = s.validate(&Admission::default()).unwrap_err().to_string();
        assert!(error.contains("spec.key") && error.contains("too weak") && !error.contains("hunter2"), "{error}");
    }

    #[test]
    fn expiry_is_at_most_ninety_days_from_the_write() {
        let now = unix_time("2026-12-04T00:00:00Z").unwrap();
        let admission = Admission { now: Some(now), ..Admission::default() };
        let at = |expires: &str| {
            let mut s = spec(STRONG);
            s.expires = expires.into();
            s.validate(&admission).map_err(|e| e.to_string())
        };
        assert!(at("2027-03-04T00:00:00Z").is_ok(), "exactly 90 days");
        assert!(at("2027-03-04T00:00:01Z").unwrap_err().contains("at most 90 days"));
        assert!(at("2026-12-03T00:00:00Z").unwrap_err().contains("past"));
        assert!(at("next week").unwrap_err().contains("RFC 3339"));
        // Agents re-read stored documents without a clock: no bound applies there.
        let mut s = spec(STRONG);
        s.expires = "2030-01-01T00:00:00Z".into();
        assert!(s.validate(&Admission::default()).is_ok());
    }

    #[test]
    fn headers_that_the_gateway_handles_cannot_carry_a_key() {
        for header in ["Host", "Cookie", "DPoP", "Mcp-Session-Id", "X-Warden-Subject", "Content-Type", "bad header"] {
            let mut s = spec(STRONG);
            s.header = header.into();
            assert!(s.validate(&Admission::default()).is_err(), "{header}");
        }
    }

    #[test]
    fn a_key_is_found_by_its_header_and_only_there() {
        let mut s = spec(STRONG);
        s.validate(&Admission::default()).unwrap();
        let mut bearer = spec(&STRONG.to_uppercase());
        bearer.header = "Authorization".into();
        bearer.validate(&Admission::default()).unwrap();
        let bridges = Bridges::new(&BTreeMap::from([("legacy".to_string(), s), ("bearer".to_string(), bearer)]));
        let upper = STRONG.to_uppercase();
        let with = |headers: &[(&str, &str)]| {
            let headers: Vec<(String, Vec<u8>)> =
                headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
            bridges
                .find("github", |name| {
                    headers.iter().filter(|(n, _)| n == name).map(|(_, v)| &v[..]).collect::<Vec<_>>()
                })
                .map(|b| b.name.clone())
        };
        // `find` borrows header values for as long as it runs only.
        assert_eq!(with(&[("x-api-key", STRONG)]).as_deref(), Some("legacy"));
        assert_eq!(with(&[("authorization", &format!("bearer {upper}"))]).as_deref(), Some("bearer"));
        assert_eq!(with(&[("authorization", &format!("Bearer {STRONG}"))]), None, "another bridge's header");
        assert_eq!(with(&[("x-api-key", &upper)]), None);
        assert_eq!(with(&[("x-api-key", STRONG), ("x-api-key", STRONG)]), None, "sent twice: not read");
        assert_eq!(with(&[("x-api-key", "nope")]), None);
        assert!(bridges.headers("github").contains(&"x-api-key".to_string()));
        assert!(bridges.headers("other").is_empty());
    }

    #[test]
    fn an_expired_or_revoked_bridge_admits_no_one() {
        let bridge = Arc::new(Bridge {
            name: "legacy".into(),
            header: "x-api-key".into(),
            digest: "sha256:00".into(),
            principal: "ci".into(),
            scopes: vec!["mcp".into()],
            expires_at: 1_000,
            forward_key: false,
        });
        let none = Revocations::default();
        let workload = bridge.admit(999, &none).unwrap();
        assert_eq!((workload.issuer.as_str(), workload.subject.as_str()), ("legacy", "ci"));
        assert_eq!(workload.scopes, ["mcp"]);
        assert_eq!(bridge.admit(1_000, &none).unwrap_err(), Reason::BridgeExpired);
        let mut revoked = Revocations::default();
        revoked.revoke_jti("legacy", "sha256:00");
        assert_eq!(bridge.admit(999, &revoked).unwrap_err(), Reason::Revoked);
        assert_eq!(State::at(1_000, 999), State::Expiring);
        assert_eq!(State::at(1_000 + WARN_BEFORE_SECS + 1, 0), State::Open);
        assert_eq!(State::at(1_000, 1_000), State::Expired);
    }
}
