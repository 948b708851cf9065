//! `Revocation`: tokens cut off before they expire — one token by its `jti`, every token of a
//! subject issued at or before a time, or every token of an issuer issued at or before a time.
//! Agents refuse them as `revoked` from the moment the configuration version carrying the
//! revocation reaches them. A revocation may say when every token it covers has expired
//! (`expires`); the control plane deletes it then, so the list stays small.
//!
//! Revocations are kept apart from the compiled configuration ([`crate::Config`]): there may be
//! a million of them, each written at any time, and none changes a key, server or policy. What
//! is checked per request is [`Revocations`]: 16-byte token keys ([`jti_key`]) in
//! a sorted array plus a small overlay of recent changes, and cut-offs per issuer and subject.
//! A change costs the size of the overlay, not of the list.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::validation::{DocumentError, validate_name};

/// `spec` of a `Revocation`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RevocationSpec {
    /// The `TrustedIssuer` whose tokens are revoked.
    pub issuer: String,
    /// One token, by its `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// A subject (the value of the issuer's subject claim): every token of it with `iat` at or
    /// before `issuedBefore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// A credential bridge's key, by its digest (`sha256:<hex>`): `issuer` is then the bridge.
    /// A key revoked this way is refused whichever bridge presents it, now or later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_digest: Option<String>,
    /// For a subject or whole-issuer revocation: RFC 3339 time, e.g. `2026-11-24T05:00:00Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<String>,
    /// RFC 3339 time after which every token this covers has expired: the control plane
    /// deletes the revocation then. Absent: kept until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// Longest `jti` or subject accepted.
const MAX_VALUE_LEN: usize = 1024;

impl RevocationSpec {
    pub(crate) fn validate(&self) -> Result<(), DocumentError> {
        validate_name(&self.issuer).map_err(|m| DocumentError::field("spec.issuer", m))?;
        for (path, value) in [("spec.jti", &self.jti), ("spec.subject", &self.subject)] {
            if value.as_ref().is_some_and(|v| v.is_empty() || v.len() > MAX_VALUE_LEN) {
                return Err(DocumentError::field(path, format!("must be 1 to {MAX_VALUE_LEN} characters")));
            }
        }
        if let Some(digest) = &self.key_digest {
            if self.jti.is_some() || self.subject.is_some() || self.issued_before.is_some() {
                return Err(DocumentError::field(
                    "spec.keyDigest",
                    "revokes a bridge's key alone: no jti, subject or issuedBefore",
                ));
            }
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(DocumentError::field(
                    "spec.keyDigest",
                    "must be sha256: and 64 lower-case hex digits, as the bridge shows it",
                ));
            }
            if let Some(t) = &self.expires {
                parse_time(t).map_err(|m| DocumentError::field("spec.expires", m))?;
            }
            return Ok(());
        }
        match (&self.jti, &self.subject, &self.issued_before) {
            (Some(_), None, None) => {}
            (None, _, Some(t)) => {
                parse_time(t).map_err(|m| DocumentError::field("spec.issuedBefore", m))?;
            }
            (None, Some(_), None) => {
                return Err(DocumentError::field(
                    "spec.issuedBefore",
                    "a subject revocation needs the time it reaches up to",
                ));
            }
            (Some(_), None, Some(_)) => {
                return Err(DocumentError::field(
                    "spec.issuedBefore",
                    "applies to subject and issuer revocations only",
                ));
            }
            _ => {
                return Err(DocumentError::field(
                    "spec",
                    "revoke one token (jti), a subject (subject + issuedBefore) or the whole issuer (issuedBefore)",
                ));
            }
        }
        if let Some(t) = &self.expires {
            parse_time(t).map_err(|m| DocumentError::field("spec.expires", m))?;
        }
        Ok(())
    }

    /// `expires` in seconds since the epoch (validated on admission).
    pub fn expires_unix(&self) -> Option<i64> {
        self.expires.as_deref().and_then(|t| parse_time(t).ok())
    }

    /// `issuedBefore` in seconds since the epoch (validated on admission).
    pub fn issued_before_unix(&self) -> Option<i64> {
        self.issued_before.as_deref().and_then(|t| parse_time(t).ok())
    }

    /// What this revocation adds to the list agents check.
    pub fn target(&self) -> Target {
        if let Some(digest) = &self.key_digest {
            return Target::Token(bridge_key(digest));
        }
        match (&self.jti, self.issued_before_unix()) {
            (Some(jti), _) => Target::Token(jti_key(&self.issuer, jti)),
            (None, before) => Target::Cut(
                CutKey { issuer: self.issuer.clone(), subject: self.subject.clone().unwrap_or_default() },
                // Validated on admission: a cut always has its time.
                before.unwrap_or(i64::MIN),
            ),
        }
    }
}

/// What one revocation contributes to the list agents check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One token, by [`jti_key`].
    Token(u128),
    /// Every token of an issuer (or of one subject of it) issued at or before a time.
    Cut(CutKey, i64),
}

/// Whose tokens a cut-off covers: an issuer's subject, or (empty subject) the whole issuer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CutKey {
    /// The TrustedIssuer's name.
    pub issuer: String,
    /// The subject; empty for every token of the issuer (a subject is never empty).
    pub subject: String,
}

/// Changes to a [`Revocations`] list: what travels to agents between two versions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Token keys revoked.
    pub revoked: Vec<u128>,
    /// Token keys no longer revoked (every token they name has expired).
    pub unrevoked: Vec<u128>,
    /// Cut-offs set, or moved.
    pub cuts: Vec<(CutKey, i64)>,
    /// Cut-offs lifted.
    pub uncut: Vec<CutKey>,
}

impl Changes {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty() && self.unrevoked.is_empty() && self.cuts.is_empty() && self.uncut.is_empty()
    }
}

/// Changes waiting in the overlay before they are merged into the sorted array: at least this
/// many, or a 256th of the array when that is more. Every change copies the overlay and every
/// merge the array, so both stay a few microseconds a change (a million keys: 3,906 in the
/// overlay, a merge of 16 MB every 3,906 changes).
const OVERLAY_MIN: usize = 1024;
const OVERLAY_SHARE: usize = 256;

/// Hashes a token key by its own bits: keys are SHA-256 output already, so SipHash would add
/// only cost. Mixed with a per-process secret, so that an issuer grinding `jti`s for digests
/// that share low bits cannot aim them at one bucket.
#[derive(Clone, Copy, Debug, Default)]
struct KeyHasher(u64);

/// The per-process secret of [`KeyHasher`].
fn key_seed() -> u64 {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0u64))
}

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `u128` keys; mixes anything else in.
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u128(&mut self, key: u128) {
        self.0 = ((key as u64) ^ ((key >> 64) as u64) ^ key_seed()).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A set of token keys hashed by [`KeyHasher`].
type KeySet = HashSet<u128, std::hash::BuildHasherDefault<KeyHasher>>;

/// Revoked tokens as checked per request: by token key, and by cut-off for every token of an
/// issuer's subject (or of the whole issuer) issued at or before a time. Cheap to clone and to
/// change: the sorted array is shared, only the overlay and, when one moves, the cut-offs are
/// copied.
#[derive(Clone, Debug, Default)]
pub struct Revocations {
    /// Revoked token keys as of the last merge, ascending.
    merged: Arc<Vec<u128>>,
    /// Revoked since, absent from `merged`.
    added: Arc<KeySet>,
    /// No longer revoked since, present in `merged`.
    removed: Arc<KeySet>,
    /// Issuer → subject (empty: every subject) → tokens with `iat` at or before this are revoked.
    cuts: Arc<BTreeMap<String, BTreeMap<String, i64>>>,
}

impl Revocations {
    /// A list of `tokens` (any order, duplicates allowed) and `cuts`.
    pub fn new(mut tokens: Vec<u128>, cuts: impl IntoIterator<Item = (CutKey, i64)>) -> Revocations {
        tokens.sort_unstable();
        tokens.dedup();
        let mut by_issuer: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for (key, before) in cuts {
            let cut = by_issuer.entry(key.issuer).or_default().entry(key.subject).or_insert(before);
            *cut = (*cut).max(before);
        }
        Revocations { merged: Arc::new(tokens), cuts: Arc::new(by_issuer), ..Revocations::default() }
    }

    /// These with `changes` applied.
    pub fn apply(&self, changes: &Changes) -> Revocations {
        let mut next = self.clone();
        if !changes.revoked.is_empty() || !changes.unrevoked.is_empty() {
            let (added, removed) = (Arc::make_mut(&mut next.added), Arc::make_mut(&mut next.removed));
            for key in &changes.unrevoked {
                if !added.remove(key) && next.merged.binary_search(key).is_ok() {
                    removed.insert(*key);
                }
            }
            for key in &changes.revoked {
                if !removed.remove(key) && next.merged.binary_search(key).is_err() {
                    added.insert(*key);
                }
            }
            if next.added.len() + next.removed.len() > OVERLAY_MIN.max(next.merged.len() / OVERLAY_SHARE) {
                next = Revocations { merged: Arc::new(next.tokens()), cuts: next.cuts, ..Revocations::default() };
            }
        }
        if !changes.cuts.is_empty() || !changes.uncut.is_empty() {
            let cuts = Arc::make_mut(&mut next.cuts);
            for key in &changes.uncut {
                if let Some(subjects) = cuts.get_mut(&key.issuer) {
                    subjects.remove(&key.subject);
                    if subjects.is_empty() {
                        cuts.remove(&key.issuer);
                    }
                }
            }
            for (key, before) in &changes.cuts {
                cuts.entry(key.issuer.clone()).or_default().insert(key.subject.clone(), *before);
            }
        }
        next
    }

    /// Revokes the token `jti` of `issuer`.
    pub fn revoke_jti(&mut self, issuer: &str, jti: &str) {
        *self = self.apply(&Changes { revoked: vec![jti_key(issuer, jti)], ..Changes::default() });
    }

    /// Revokes `subject`'s tokens from `issuer` issued at or before `before` (the latest cut
    /// given wins).
    pub fn revoke_subject_before(&mut self, issuer: &str, subject: &str, before: i64) {
        let key = CutKey { issuer: issuer.into(), subject: subject.into() };
        let before = self.cuts.get(issuer).and_then(|s| s.get(subject)).map_or(before, |b| before.max(*b));
        *self = self.apply(&Changes { cuts: vec![(key, before)], ..Changes::default() });
    }

    /// Revokes every token `issuer` issued at or before `before` (the latest cut given wins).
    pub fn revoke_issuer_before(&mut self, issuer: &str, before: i64) {
        self.revoke_subject_before(issuer, "", before);
    }

    /// Whether the token with this [`jti_key`] is revoked by name.
    pub fn token_revoked(&self, key: u128) -> bool {
        if self.added.contains(&key) {
            return true;
        }
        !self.removed.contains(&key) && self.merged.binary_search(&key).is_ok()
    }

    /// Whether the token `jti` of `issuer` is revoked by name.
    pub fn jti_revoked(&self, issuer: &str, jti: &str) -> bool {
        self.token_revoked(jti_key(issuer, jti))
    }

    /// Whether a token of `subject` from `issuer`, issued at `issued_at`, falls under a cut.
    pub fn cut(&self, issuer: &str, subject: &str, issued_at: i64) -> bool {
        let Some(subjects) = self.cuts.get(issuer) else { return false };
        [subject, ""].into_iter().filter_map(|s| subjects.get(s)).any(|before| issued_at <= *before)
    }

    /// Every revoked token key, ascending.
    pub fn tokens(&self) -> Vec<u128> {
        if self.added.is_empty() && self.removed.is_empty() {
            return self.merged.to_vec();
        }
        let mut added: Vec<u128> = self.added.iter().copied().collect();
        added.sort_unstable();
        let kept = self.merged.iter().copied().filter(|k| !self.removed.contains(k));
        let mut out = Vec::with_capacity(self.len());
        let mut added = added.into_iter().peekable();
        for key in kept {
            while let Some(a) = added.next_if(|a| *a < key) {
                out.push(a);
            }
            out.push(key);
        }
        out.extend(added);
        out
    }

    /// What takes a holder of `base` to these. Costs the size of the overlays while both share
    /// their sorted array (a clone changed since), the size of both lists otherwise.
    pub fn changes_from(&self, base: &Revocations) -> Changes {
        let mut changes = Changes::default();
        if Arc::ptr_eq(&self.merged, &base.merged) {
            // Revoked here but not there: added here and not there, or removed there and not here.
            changes.revoked.extend(self.added.iter().filter(|k| !base.added.contains(*k)));
            changes.revoked.extend(base.removed.iter().filter(|k| !self.removed.contains(*k)));
            changes.unrevoked.extend(base.added.iter().filter(|k| !self.added.contains(*k)));
            changes.unrevoked.extend(self.removed.iter().filter(|k| !base.removed.contains(*k)));
        } else {
            let (mine, theirs) = (self.tokens(), base.tokens());
            let (mut i, mut j) = (0, 0);
            loop {
                match (mine.get(i), theirs.get(j)) {
                    (Some(a), Some(b)) if a == b => {
                        i += 1;
                        j += 1;
                    }
                    (Some(a), Some(b)) if b < a => {
                        changes.unrevoked.push(*b);
                        j += 1;
                    }
                    (Some(a), _) => {
                        changes.revoked.push(*a);
                        i += 1;
                    }
                    (None, Some(b)) => {
                        changes.unrevoked.push(*b);
                        j += 1;
                    }
                    (None, None) => break,
                }
            }
        }
        if !Arc::ptr_eq(&self.cuts, &base.cuts) {
            let (mine, theirs): (BTreeMap<CutKey, i64>, BTreeMap<CutKey, i64>) =
                (self.cuts().collect(), base.cuts().collect());
            changes.cuts =
                mine.iter().filter(|(k, v)| theirs.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), *v)).collect();
            changes.uncut = theirs.keys().filter(|k| !mine.contains_key(*k)).cloned().collect();
        }
        changes
    }

    /// Every cut-off.
    pub fn cuts(&self) -> impl Iterator<Item = (CutKey, i64)> + '_ {
        self.cuts.iter().flat_map(|(issuer, subjects)| {
            subjects
                .iter()
                .map(|(subject, before)| (CutKey { issuer: issuer.clone(), subject: subject.clone() }, *before))
        })
    }

    /// How many tokens are revoked by name.
    pub fn len(&self) -> usize {
        self.merged.len() + self.added.len() - self.removed.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.cuts.is_empty()
    }
}

/// The name of the revocation of one token: from the hash of (issuer, jti), so whoever revokes
/// it — its holder at the token service, an operator with `wardenctl revoke` — writes the same
/// resource, and revoking twice changes nothing.
pub fn token_revocation_name(issuer: &str, jti: &str) -> String {
    format!("jti-{}", &jti_hash(issuer, jti)[..16])
}

/// Seconds since the epoch as an RFC 3339 time (UTC).
pub fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "9999-12-31T23:59:59Z".to_string())
}

/// An RFC 3339 date-time in seconds since the epoch.
fn parse_time(text: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("{text:?} is not an RFC 3339 time like 2026-11-24T05:00:00Z: {e}"))
}

/// The hash that names a token in records and logs instead of its `jti`: 128 bits of SHA-256
/// over (issuer name, jti), hex. The agent's decision records and the token service's exchange
/// records use the same, so a decision links to the exchange that issued its token.
pub fn jti_hash(issuer: &str, jti: &str) -> String {
    format!("{:032x}", jti_key(issuer, jti))
}

/// How revocation lists hold a credential bridge's key: by its digest alone, whichever bridge
/// names it (no issuer has the empty name, so no token's key can be the same).
pub fn bridge_key(digest: &str) -> u128 {
    jti_key("", digest)
}

/// The same 128 bits as a number: how revocation lists hold a token (16 bytes, whatever the
/// length of its `jti`).
pub fn jti_key(issuer: &str, jti: &str) -> u128 {
    let digest =
        Sha256::new().chain_update(issuer.as_bytes()).chain_update([0]).chain_update(jti.as_bytes()).finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_changed_many_times_holds_what_a_list_built_at_once_holds() {
        // More changes than the overlay holds, so merges happen along the way.
        let mut list = Revocations::default();
        let mut expected = std::collections::BTreeSet::new();
        for round in 0..5u128 {
            let revoked: Vec<u128> = (0..3000).map(|i| i * 7 + round * 1000).collect();
            let unrevoked: Vec<u128> = (0..1000).map(|i| i * 7 + round * 900).collect();
            list = list.apply(&Changes { revoked: revoked.clone(), ..Changes::default() });
            list = list.apply(&Changes { unrevoked: unrevoked.clone(), ..Changes::default() });
            expected.extend(revoked);
            for k in &unrevoked {
                expected.remove(k);
            }
        }
        assert_eq!(list.tokens(), expected.iter().copied().collect::<Vec<_>>());
        assert_eq!(list.len(), expected.len());
        for key in 0..40_000u128 {
            assert_eq!(list.token_revoked(key), expected.contains(&key), "{key}");
        }
        // A clone taken before a change does not see it.
        let before = list.clone();
        let after = list.apply(&Changes { revoked: vec![u128::MAX], ..Changes::default() });
        assert!(after.token_revoked(u128::MAX) && !before.token_revoked(u128::MAX));
    }

    #[test]
    fn cut_offs_cover_a_subject_or_the_whole_issuer_up_to_their_time() {
        let key = |subject: &str| CutKey { issuer: "corp".into(), subject: subject.into() };
        let list = Revocations::new(vec![], [(key("alice"), 100), (key("alice"), 50)]);
        assert!(list.cut("corp", "alice", 100), "the latest cut given wins");
        assert!(!list.cut("corp", "alice", 101) && !list.cut("corp", "bob", 0) && !list.cut("other", "alice", 0));
        let whole = list.apply(&Changes { cuts: vec![(key(""), 10)], ..Changes::default() });
        assert!(whole.cut("corp", "bob", 10) && !whole.cut("corp", "bob", 11));
        let lifted = whole.apply(&Changes { uncut: vec![key("alice"), key("")], ..Changes::default() });
        assert!(lifted.is_empty());
    }

    #[test]
    fn the_changes_between_two_lists_take_one_to_the_other() {
        let key = |subject: &str| CutKey { issuer: "corp".into(), subject: subject.into() };
        let base = Revocations::new((0..100).collect(), [(key("a"), 5), (key("b"), 5)]);
        // Sharing the sorted array (an overlay apart), and after a merge (more than the overlay).
        let near = base.apply(&Changes {
            revoked: vec![500, 501],
            unrevoked: vec![3],
            cuts: vec![(key("a"), 6)],
            uncut: vec![key("b")],
        });
        let far =
            near.apply(&Changes { revoked: (1000..10_000).collect(), unrevoked: vec![4, 500], ..Changes::default() });
        for (from, to) in [(&base, &near), (&near, &base), (&base, &far), (&far, &near), (&near, &far)] {
            let reached = from.apply(&to.changes_from(from));
            assert_eq!(reached.tokens(), to.tokens());
            assert_eq!(reached.cuts().collect::<Vec<_>>(), to.cuts().collect::<Vec<_>>());
        }
        assert!(near.changes_from(&near).is_empty());
    }

    fn spec(jti: Option<&str>, subject: Option<&str>, before: Option<&str>) -> RevocationSpec {
        RevocationSpec {
            issuer: "corp".into(),
            jti: jti.map(Into::into),
            subject: subject.map(Into::into),
            issued_before: before.map(Into::into),
            key_digest: None,
            expires: None,
        }
    }

    #[test]
    fn a_bridge_s_key_is_revoked_by_its_digest_alone() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let key = RevocationSpec { key_digest: Some(digest.clone()), ..spec(None, None, None) };
        assert!(key.validate().is_ok());
        assert_eq!(key.target(), Target::Token(bridge_key(&digest)));
        assert_ne!(bridge_key(&digest), jti_key("corp", &digest), "not any issuer's token");
        for bad in [
            RevocationSpec { key_digest: Some("the-key-itself-1234".into()), ..spec(None, None, None) },
            RevocationSpec { key_digest: Some(digest.clone()), ..spec(Some("t1"), None, None) },
        ] {
            assert!(bad.validate().unwrap_err().to_string().contains("spec.keyDigest"), "{bad:?}");
        }
    }

    #[test]
    fn a_revocation_names_one_token_or_one_subject_up_to_a_time() {
        assert!(spec(Some("t1"), None, None).validate().is_ok());
        let by_subject = spec(None, Some("alice"), Some("2026-11-24T05:00:00+01:00"));
        assert!(by_subject.validate().is_ok());
        // 05:00 at +01:00 is 04:00 UTC.
        assert_eq!(by_subject.issued_before_unix(), Some(1_795_492_800));
        let whole_issuer = spec(None, None, Some("2026-11-24T05:00:00Z"));
        assert!(whole_issuer.validate().is_ok());
        let expiring = RevocationSpec { expires: Some("2026-11-24T06:00:00Z".into()), ..spec(Some("t1"), None, None) };
        assert_eq!(expiring.expires_unix(), Some(1_795_500_000));
        let bad_expiry = RevocationSpec { expires: Some("soon".into()), ..spec(Some("t1"), None, None) };
        assert!(matches!(bad_expiry.validate(), Err(DocumentError::Field { path, .. }) if path == "spec.expires"));
        for (bad, path) in [
            (spec(None, None, None), "spec"),
            (spec(Some("t1"), Some("alice"), None), "spec"),
            (spec(None, Some("alice"), None), "spec.issuedBefore"),
            (spec(Some("t1"), None, Some("2026-11-24T05:00:00Z")), "spec.issuedBefore"),
            (spec(None, Some("alice"), Some("yesterday")), "spec.issuedBefore"),
            (spec(Some(""), None, None), "spec.jti"),
        ] {
            match bad.validate() {
                Err(DocumentError::Field { path: p, .. }) => assert_eq!(p, path, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
