//! `CredentialBridge`: a temporary way in for legacy clients that can only send a static key.
//!
//! A bridge lets one `McpServer` accept one long-lived key, presented in one header, for a
//! bounded time (at most [`MAX_LIFETIME_SECS`] from the write that sets its expiry). The key is
//! never stored: the document an operator applies may carry it (`spec.key`), and parsing
//! replaces it with its SHA-256 (`spec.keyDigest`) after checking it is strong enough to make a
//! plain hash safe to keep ([`MIN_KEY_BITS`]). A request presenting the key is then a workload
//! like any other: its principal is `Workload::"<bridge>/<principal>"` (in
//! `Issuer::"<bridge>"`), decided by the server's policies, recorded with `via=bridge`. After
//! its expiry the key is refused as `bridge_expired`; a key is revoked like a token (a
//! `Revocation` of issuer `<bridge>` and `keyDigest` its digest), for good: refused whichever
//! bridge presents it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::revocation::Revocations;
use crate::token::{Reason, Verified};
use crate::validation::{DocumentError, validate_name};

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

/// The key as written in a document: kept only until it is hashed, and never printed (not
/// even in the error for a key that is not a string, where serde would quote the value).
#[derive(Clone)]
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the key as a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Key, E> {
                Err(E::custom("must be a string (quote it)"))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Key, E> {
                Err(E::custom("must be a string (quote it)"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Key, E> {
                Err(E::custom("must be a string (quote it)"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Key, E> {
                Err(E::custom("must be a string (quote it)"))
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

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
    /// When the bridge closes (RFC 3339): at most 90 days after its key was first admitted.
    pub expires: String,
    /// When the control plane first admitted this key (RFC 3339): set by the control plane
    /// (whatever a document says), kept while the key stays the same. The 90 days count from
    /// here, so re-applying a bridge cannot keep one key open longer: a new key can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_since: Option<String>,
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
            && self.key_since == other.key_since
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
    /// Checks the document and turns a given key into its digest. (The bounds on its expiry,
    /// which count from when the key was first admitted, are the control plane's:
    /// [`CredentialBridgeSpec::admit`].)
    pub(crate) fn validate(&mut self) -> Result<(), DocumentError> {
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
        crate::validation::validate_scopes("spec.scopes", &self.scopes)?;
        if unix_time(&self.expires).is_none() {
            return Err(DocumentError::field(
                "spec.expires",
                format!("{:?} is not an RFC 3339 time like 2027-01-31T00:00:00Z", self.expires),
            ));
        }
        if self.key_since.as_deref().is_some_and(|t| unix_time(t).is_none()) {
            return Err(DocumentError::field("spec.keySince", "is not an RFC 3339 time"));
        }
        Ok(())
    }

    /// The control plane admitting this bridge at `now`, its key first admitted at
    /// `key_since` (now, for a new key): sets `keySince`, and the expiry must lie ahead and
    /// at most [`MAX_LIFETIME_SECS`] after it.
    pub fn admit(&mut self, key_since: i64, now: i64) -> Result<(), DocumentError> {
        self.key_since = Some(crate::revocation::format_time(key_since));
        let expires = self.expires_unix();
        if expires <= now {
            return Err(DocumentError::field("spec.expires", "is already past"));
        }
        if expires - key_since > MAX_LIFETIME_SECS {
            let latest = crate::revocation::format_time(key_since + MAX_LIFETIME_SECS);
            return Err(DocumentError::field(
                "spec.expires",
                format!(
                    "a key is bridged at most 90 days from when it was first admitted ({}): {} is later than {latest}; set a new key to go on",
                    crate::revocation::format_time(key_since),
                    self.expires
                ),
            ));
        }
        Ok(())
    }

    /// When the key was first admitted (unix seconds), if the control plane said so.
    pub fn key_since_unix(&self) -> Option<i64> {
        self.key_since.as_deref().and_then(unix_time)
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

/// The estimated entropy of `key` in bits, meant to refuse what a person chose and accept
/// what a generator made:
///
/// - a vendor prefix (`sk_live_`, `ghp_`: letters and `_`/`-`, before at least 16 more
///   characters) counts nothing, nor do the separators `-`, `_`, `.`, `=`;
/// - each other character counts the bits of the alphabet the key's characters span: digits
///   alone 10, hex digits of one case 16, otherwise 26 for each case of letters present
///   (capitals that only start words do not count), 10 for digits and one per distinct other
///   symbol;
/// - a character that continues a run of three (the fourth of `abcd`, `aaaa`, `4321`, or of a
///   keyboard walk like `qwer`) counts nothing;
/// - a key that reads like words (a quarter or more of its adjacent letter pairs among
///   English's commonest, a fifth without digits, where random letters have one in
///   fourteen) counts half;
/// - a UUID counts the 122 bits of a random (version 4) one: under the bound;
/// - a key whose characters repeat more than random ones would (Shannon entropy per character
///   under 70% of the most its length and alphabet allow, or fewer than 3 in 4 of its runs of
///   three characters distinct) counts that entropy, scaled by the share of distinct runs.
pub fn estimated_bits(key: &str) -> f64 {
    if is_uuid(key.as_bytes()) {
        return 122.0;
    }
    let body = without_prefix(key.as_bytes());
    let separator = |b: u8| matches!(b, b'-' | b'_' | b'.' | b'=');
    let chars: Vec<u8> = body.iter().copied().filter(|b| !separator(*b)).collect();
    if chars.is_empty() {
        return 0.0;
    }
    let digits_only = chars.iter().all(u8::is_ascii_digit);
    let hex = chars.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        || chars.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
    let alphabet: f64 = if digits_only {
        10.0
    } else if hex {
        16.0
    } else {
        let mut symbols: Vec<u8> = chars.iter().copied().filter(|b| !b.is_ascii_alphanumeric()).collect();
        symbols.sort_unstable();
        symbols.dedup();
        let has = |f: fn(&u8) -> bool| if chars.iter().any(f) { 1.0 } else { 0.0 };
        // Capitals that only start words (`MyCompanyKey`) say nothing a guesser must try.
        let upper = if title_case(&chars) { 0.0 } else { has(u8::is_ascii_uppercase) };
        26.0 * has(u8::is_ascii_lowercase) + 26.0 * upper + 10.0 * has(u8::is_ascii_digit) + symbols.len() as f64
    };
    // Runs of three happen by chance (one key in three of 32 random hex digits has one); the
    // fourth character of a run counts nothing, and each after it.
    let unpredictable = (0..chars.len()).filter(|&i| {
        i < 3
            || !(continues_run(chars[i - 3], chars[i - 2], chars[i - 1])
                && continues_run(chars[i - 2], chars[i - 1], chars[i]))
    });
    let mut bits = unpredictable.count() as f64 * alphabet.log2();
    if !hex && !digits_only && reads_like_words(body) {
        bits /= 2.0;
    }
    let n = chars.len() as f64;
    let mut counts = [0u32; 256];
    for b in &chars {
        counts[usize::from(*b)] += 1;
    }
    let shannon: f64 = counts.iter().filter(|c| **c > 0).map(|c| f64::from(*c) / n).map(|p| -p * p.log2()).sum();
    let most = n.min(alphabet).log2();
    // Repeated words: random keys of any length have nearly every run of three characters
    // once; `password` ten times has 8 distinct runs in 78.
    let runs: Vec<&[u8]> = chars.windows(3).collect();
    let distinct = runs.iter().collect::<std::collections::HashSet<_>>().len();
    let spread = if runs.is_empty() { 1.0 } else { distinct as f64 / runs.len() as f64 };
    if shannon < 0.7 * most || spread < 0.75 { bits.min(n * shannon * spread) } else { bits }
}

/// Whether every capital of `chars` (one at least) starts a word: after a small letter, a
/// digit, a symbol or nothing, and before a small letter (random capitals pass one time in
/// six each).
fn title_case(chars: &[u8]) -> bool {
    let mut capitals = chars.iter().enumerate().filter(|(_, b)| b.is_ascii_uppercase()).peekable();
    capitals.peek().is_some()
        && capitals.all(|(i, _)| {
            let before = i.checked_sub(1).map(|j| chars[j]);
            before.is_none_or(|b| !b.is_ascii_uppercase()) && chars.get(i + 1).is_some_and(u8::is_ascii_lowercase)
        })
}

/// Whether `key` is a UUID: 8-4-4-4-12 hex digits.
fn is_uuid(key: &[u8]) -> bool {
    key.len() == 36
        && key.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// `key` without a vendor prefix: letters in one or two parts, each ending in `_` or `-`,
/// followed by at least 16 characters.
fn without_prefix(key: &[u8]) -> &[u8] {
    let mut at = 0;
    for _ in 0..2 {
        let letters = key[at..].iter().take_while(|b| b.is_ascii_alphabetic()).count();
        match key.get(at + letters) {
            Some(b'_' | b'-') if (1..=10).contains(&letters) => at += letters + 1,
            _ => break,
        }
    }
    if key.len() - at >= 16 { &key[at..] } else { key }
}

/// Whether `c` continues the run `a`, `b`: the same step of at most one, in character codes
/// (`abc`, `aaa`, `cba`, any case) or along a keyboard row (`qwe`, `lkj`, `789`).
fn continues_run(a: u8, b: u8, c: u8) -> bool {
    let code = |x: u8| i16::from(x.to_ascii_lowercase());
    let (s1, s2) = (code(b) - code(a), code(c) - code(b));
    if s1 == s2 && s1.abs() <= 1 {
        return true;
    }
    const ROWS: [&[u8]; 4] = [b"1234567890", b"qwertyuiop", b"asdfghjkl", b"zxcvbnm"];
    let place = |x: u8| {
        let x = x.to_ascii_lowercase();
        ROWS.iter().enumerate().find_map(|(r, row)| row.iter().position(|k| *k == x).map(|c| (r, c as i16)))
    };
    match (place(a), place(b), place(c)) {
        (Some((ra, ca)), Some((rb, cb)), Some((rc, cc))) => {
            ra == rb && rb == rc && cb - ca == cc - cb && (cb - ca).abs() == 1
        }
        _ => false,
    }
}

/// The fifty commonest letter pairs of English text.
const COMMON_PAIRS: [&[u8; 2]; 50] = [
    b"th", b"he", b"in", b"er", b"an", b"re", b"on", b"at", b"en", b"nd", b"ti", b"es", b"or", b"te", b"of", b"ed",
    b"is", b"it", b"al", b"ar", b"st", b"to", b"nt", b"ng", b"se", b"ha", b"as", b"ou", b"io", b"le", b"ve", b"co",
    b"me", b"de", b"hi", b"ri", b"ro", b"ic", b"ne", b"ea", b"ra", b"ce", b"li", b"ch", b"ll", b"be", b"ma", b"si",
    b"om", b"ur",
];

/// Whether `key` reads like words: of its pairs of adjacent letters, six or more and a quarter
/// or more are among English's fifty commonest, a fifth for a key without digits (random
/// letters: one in fourteen; under one random key of letters and digits in 200 reads like
/// words).
fn reads_like_words(key: &[u8]) -> bool {
    let pairs: Vec<[u8; 2]> = key
        .windows(2)
        .filter(|w| w[0].is_ascii_alphabetic() && w[1].is_ascii_alphabetic())
        .map(|w| [w[0].to_ascii_lowercase(), w[1].to_ascii_lowercase()])
        .collect();
    let common = pairs.iter().filter(|p| COMMON_PAIRS.contains(p)).count();
    // Without digits a fifth is enough; generated keys nearly always have digits.
    let share = if key.iter().any(u8::is_ascii_digit) { 4 } else { 5 };
    common >= 6 && common * share >= pairs.len()
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

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 32 bytes of a `sha256:<hex>` digest.
pub(crate) fn parse_digest(text: &str) -> Option<[u8; 32]> {
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
        if revocations.token_revoked(crate::revocation::bridge_key(&self.digest)) {
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

/// The credential of `Bearer <credential>` (scheme case-insensitive, spaces after it skipped,
/// as the token path reads it).
fn bearer_credential(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    let credential = rest.trim_ascii_start();
    (scheme.eq_ignore_ascii_case(b"bearer") && credential.len() < rest.len()).then_some(credential)
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
        for strong in [
            STRONG,
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc9Xk2Lm8Q",
            "ghp_R8Tm2xQv9LkW4pZbN7cYd3FhJs6GaE1uKo5i",
            "2c4e7b0d1f4f9c2a7e1b8d3f60a5c9e2",
            "9f3b1c7e-4a2d-4e8b-b6f0-2d9c7a1e5b3f9d4c",
            "Xk9vQ2mZr7LpT4wYb8NcH3jFs6dGa1uE5oRi0tKz",
        ] {
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
            "MyCompany-Legacy-Key-2019!",
            "correct-horse-battery-staple",
            "thequickbrownfoxjumpsoverthelazydog",
            "qwertyuiopasdfghjklzxcvbnm1234567890",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            "0123456789abcdeffedcba9876543210",
            "sk_live_0123456789abcdef",
            "sk_live_4eC39HqLyjWDarjt",
            "12345678901234567890123456789012",
        ] {
            assert!(digest_of_key(weak).is_err(), "{weak}: {:.0} bits", estimated_bits(weak));
        }
        assert!(digest_of_key(&format!("{STRONG} x")).is_err(), "a space cannot travel in a header value");
    }

    #[test]
    fn keys_from_common_generators_are_accepted_nearly_always() {
        // A fixed-seed generator (xorshift), so the rates below are the same every run.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut draw = |alphabet: &[u8], len: usize| -> String {
            (0..len).map(|_| char::from(alphabet[next(alphabet.len())])).collect()
        };
        let hex = b"0123456789abcdef";
        let base62 = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let base64url = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";
        // (generator, most refused in 1,000)
        let formats = [
            ("openssl rand -hex 32", 0),
            ("openssl rand -hex 16", 20),
            ("uuid v4 (122 bits: refused)", 1000),
            ("sk_live_ + 24 base62", 10),
            ("43 base64url (32 bytes)", 20),
        ];
        for (name, most_refused) in formats {
            let refused = (0..1000)
                .filter(|_| {
                    let key = match name {
                        "openssl rand -hex 32" => draw(hex, 64),
                        "openssl rand -hex 16" => draw(hex, 32),
                        "uuid v4 (122 bits: refused)" => {
                            let h = draw(hex, 32);
                            format!("{}-{}-4{}-a{}-{}", &h[..8], &h[8..12], &h[13..16], &h[17..20], &h[20..])
                        }
                        "sk_live_ + 24 base62" => format!("sk_live_{}", draw(base62, 24)),
                        _ => draw(base64url, 43),
                    };
                    digest_of_key(&key).is_err()
                })
                .count();
            assert!(refused <= most_refused, "{name}: {refused} of 1000 refused");
            if name.starts_with("uuid") {
                assert_eq!(refused, 1000, "a UUID carries 122 random bits at most");
            }
        }
    }

    #[test]
    fn parsing_keeps_the_digest_and_never_the_key() {
        let mut s = spec(STRONG);
        s.validate().unwrap();
        assert!(s.key_checked());
        assert_eq!(s.key_digest, format!("sha256:{}", hex(&Sha256::digest(STRONG.as_bytes()))));
        let written = serde_json::to_string(&s).unwrap();
        assert!(!written.contains(STRONG) && !format!("{s:?}").contains(STRONG), "{written}");
        // Read back and applied again: the digest alone, not checked again.
        let mut back: CredentialBridgeSpec = serde_json::from_str(&written).unwrap();
        back.validate().unwrap();
        assert!(!back.key_checked());
        assert_eq!(back, s);
    }

    #[test]
    fn a_key_that_is_not_a_string_is_refused_without_quoting_it() {
        for key in [serde_json::json!(401_234_567_890_123_456_789_u128 as f64), serde_json::json!(4_012_345_678_u64)] {
            let error = serde_json::from_value::<CredentialBridgeSpec>(serde_json::json!({
                "server": "github", "key": key, "principal": "ci", "owner": "o", "exitPlan": "p",
                "expires": "2027-01-31T00:00:00Z",
            }))
            .unwrap_err()
            .to_string();
            assert!(
                error.contains("must be a string") && !error.contains("4012") && !error.contains("4.01"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_weak_key_is_refused_without_quoting_it() {
        let mut s = spec("hunter2hunter2");
        let error = s.validate().unwrap_err().to_string();
        assert!(error.contains("spec.key") && error.contains("too weak") && !error.contains("hunter2"), "{error}");
    }

    #[test]
    fn expiry_is_at_most_ninety_days_from_when_the_key_was_first_admitted() {
        let now = unix_time("2026-12-04T00:00:00Z").unwrap();
        let at = |expires: &str, key_since: i64| {
            let mut s = spec(STRONG);
            s.expires = expires.into();
            s.validate().map_err(|e| e.to_string())?;
            s.admit(key_since, now).map_err(|e| e.to_string()).map(|()| s)
        };
        let admitted = at("2027-03-04T00:00:00Z", now).expect("exactly 90 days");
        assert_eq!(admitted.key_since.as_deref(), Some("2026-12-04T00:00:00Z"));
        assert!(at("2027-03-04T00:00:01Z", now).unwrap_err().contains("at most 90 days"));
        assert!(at("2026-12-03T00:00:00Z", now).unwrap_err().contains("past"));
        // The same key, admitted 60 days ago: 30 days more at most, however often applied.
        let since = now - 60 * 86_400;
        assert!(at("2027-01-03T00:00:00Z", since).is_ok());
        assert!(at("2027-01-03T00:00:01Z", since).unwrap_err().contains("set a new key"));
        let mut s = spec(STRONG);
        s.expires = "next week".into();
        assert!(s.validate().unwrap_err().to_string().contains("RFC 3339"));
        // Agents re-read stored documents without a clock: no bound applies there.
        let mut s = spec(STRONG);
        s.expires = "2030-01-01T00:00:00Z".into();
        assert!(s.validate().is_ok());
    }

    #[test]
    fn headers_that_the_gateway_handles_cannot_carry_a_key() {
        for header in ["Host", "Cookie", "DPoP", "Mcp-Session-Id", "X-Warden-Subject", "Content-Type", "bad header"] {
            let mut s = spec(STRONG);
            s.header = header.into();
            assert!(s.validate().is_err(), "{header}");
        }
    }

    #[test]
    fn a_key_is_found_by_its_header_and_only_there() {
        let mut s = spec(STRONG);
        s.validate().unwrap();
        let mut bearer = spec(&STRONG.to_uppercase());
        bearer.header = "Authorization".into();
        bearer.validate().unwrap();
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
        assert_eq!(with(&[("authorization", &format!("Bearer   {upper}"))]).as_deref(), Some("bearer"));
        assert_eq!(with(&[("authorization", &format!("Bearer{upper}"))]), None);
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
        let revoked = Revocations::default().apply(&crate::revocation::Changes {
            revoked: vec![crate::revocation::bridge_key("sha256:00")],
            ..Default::default()
        });
        assert_eq!(bridge.admit(999, &revoked).unwrap_err(), Reason::Revoked);
        assert_eq!(State::at(1_000, 999), State::Expiring);
        assert_eq!(State::at(1_000 + WARN_BEFORE_SECS + 1, 0), State::Open);
        assert_eq!(State::at(1_000, 1_000), State::Expired);
    }
}
