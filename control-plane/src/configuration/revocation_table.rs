//! The `Revocation` resources a store holds, kept apart from the other resources: there may be a
//! million of them, so a write of one must cost what it changes, not what is stored. The table
//! is shared by every [`crate::configuration::state::FleetState`] of one store and moves only when a version
//! is published, in version order; what agents check (`token::Revocations`, immutable per
//! version and cheap to clone) is derived from it then.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use proto::v1 as pb;
use warden_core::revocation::{Changes, CutKey, Target};
use warden_core::{Document, Kind};

/// One stored revocation.
#[derive(Debug)]
pub struct Stored {
    /// Version of its last change.
    pub resource_version: u64,
    /// Its canonical JSON, what `wardenctl get` shows.
    pub json: Box<[u8]>,
    /// The TrustedIssuer whose tokens it revokes (one allocation shared by all of its).
    pub issuer: Arc<str>,
    /// What it revokes.
    pub target: Target,
    /// When every token it covers has expired (seconds since the epoch), if it says.
    pub expires: Option<i64>,
}

/// Every revocation of a store, by name, and what they revoke together. A million of them take
/// about 450 bytes each (BENCHMARKS.md): names are shared with the expiry index, issuers shared
/// by all of theirs, and entries boxed, as a hash table at a million rows is mostly empty slots.
#[derive(Debug, Default)]
pub struct RevocationTable {
    entries: HashMap<Arc<str>, Box<Stored>>,
    /// Token key → how many revocations name it (an operator's and a holder's may both).
    token_refs: HashMap<u128, u32>,
    /// Cut-off → the revocations setting it, by name, with their times (the latest wins).
    cuts: BTreeMap<CutKey, BTreeMap<String, i64>>,
    /// (expiry, name), soonest first.
    expiries: BTreeSet<(i64, Arc<str>)>,
    /// TrustedIssuer → how many revocations name it.
    issuer_refs: HashMap<Arc<str>, usize>,
}

impl RevocationTable {
    /// How many revocations are stored.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The revocation named `name`.
    pub fn get(&self, name: &str) -> Option<&Stored> {
        self.entries.get(name).map(|stored| &**stored)
    }

    /// Revocations as agents once received them, in name order, at most `limit` (`wardenctl
    /// get`).
    pub fn resources(&self, name: Option<&str>, limit: usize) -> Vec<pb::Resource> {
        let mut names: Vec<&Arc<str>> = match name {
            Some(n) => self.entries.get_key_value(n).map(|(k, _)| k).into_iter().collect(),
            None => self.entries.keys().collect(),
        };
        names.sort();
        names
            .into_iter()
            .take(limit)
            .map(|name| {
                let stored = &self.entries[name];
                pb::Resource {
                    kind: Kind::Revocation.as_str().to_string(),
                    name: name.to_string(),
                    resource_version: stored.resource_version,
                    document_json: stored.json.to_vec(),
                }
            })
            .collect()
    }

    /// A revocation other than `except` naming `issuer`, if any: the issuer cannot go.
    pub fn naming_issuer(&self, issuer: &str, except: &[&str]) -> Option<String> {
        self.issuer_refs.get(issuer)?;
        let mut naming = self.entries.iter().filter(|(name, s)| &*s.issuer == issuer && !except.contains(&&***name));
        naming.next().map(|(name, _)| name.to_string())
    }

    /// Revocations whose `expires` is at or before `now`, and the soonest expiry after it.
    pub fn expired(&self, now: i64, max: usize) -> (Vec<String>, Option<i64>) {
        let expired: Vec<String> =
            self.expiries.iter().take_while(|(at, _)| *at <= now).take(max).map(|(_, n)| n.to_string()).collect();
        let next = self.expiries.iter().find(|(at, _)| *at > now).map(|(at, _)| *at);
        (expired, next)
    }

    /// Stores `puts` (documents of kind Revocation, with their canonical JSON) and removes
    /// `deletes`, as of `version`; returns what changed in the list agents check.
    pub fn apply(&mut self, puts: &[(&Document, &[u8])], deletes: &[&str], version: u64) -> Changes {
        let mut changes = Changes::default();
        let mut touched_cuts = BTreeSet::new();
        for name in deletes {
            self.remove(name, &mut changes, &mut touched_cuts);
        }
        for (document, json) in puts {
            let warden_core::resource::Spec::Revocation(spec) = &document.spec else { continue };
            let name = &document.metadata.name;
            self.remove(name, &mut changes, &mut touched_cuts);
            let target = spec.target();
            match &target {
                Target::Token(key) => {
                    let refs = self.token_refs.entry(*key).or_insert(0);
                    *refs += 1;
                    if *refs == 1 {
                        changes.unrevoked.retain(|k| k != key);
                        changes.revoked.push(*key);
                    }
                }
                Target::Cut(key, before) => {
                    self.cuts.entry(key.clone()).or_default().insert(name.clone(), *before);
                    touched_cuts.insert(key.clone());
                }
            }
            let name: Arc<str> = Arc::from(name.as_str());
            let expires = spec.expires_unix();
            if let Some(at) = expires {
                self.expiries.insert((at, name.clone()));
            }
            let issuer = match self.issuer_refs.get_key_value(spec.issuer.as_str()) {
                Some((shared, _)) => shared.clone(),
                None => Arc::from(spec.issuer.as_str()),
            };
            *self.issuer_refs.entry(issuer.clone()).or_insert(0) += 1;
            let stored = Stored { resource_version: version, json: json.to_vec().into(), issuer, target, expires };
            self.entries.insert(name, Box::new(stored));
        }
        for key in touched_cuts {
            match self.cuts.get(&key).and_then(|by_name| by_name.values().max()) {
                Some(before) => changes.cuts.push((key, *before)),
                None => changes.uncut.push(key),
            }
        }
        changes
    }

    fn remove(&mut self, name: &str, changes: &mut Changes, touched_cuts: &mut BTreeSet<CutKey>) {
        let Some((name, stored)) = self.entries.remove_entry(name) else { return };
        if let Some(at) = stored.expires {
            self.expiries.remove(&(at, name.clone()));
        }
        if let Some(refs) = self.issuer_refs.get_mut(&*stored.issuer) {
            *refs -= 1;
            if *refs == 0 {
                self.issuer_refs.remove(&*stored.issuer);
            }
        }
        match stored.target {
            Target::Token(key) => {
                if let Some(refs) = self.token_refs.get_mut(&key) {
                    *refs -= 1;
                    if *refs == 0 {
                        self.token_refs.remove(&key);
                        changes.revoked.retain(|k| *k != key);
                        changes.unrevoked.push(key);
                    }
                }
            }
            Target::Cut(key, _) => {
                if let Some(by_name) = self.cuts.get_mut(&key) {
                    by_name.remove(&*name);
                    if by_name.is_empty() {
                        self.cuts.remove(&key);
                    }
                }
                touched_cuts.insert(key);
            }
        }
    }

    /// The list agents check.
    pub fn revocations(&self) -> warden_core::token::Revocations {
        let cuts = self.cuts.iter().filter_map(|(key, by_name)| Some((key.clone(), *by_name.values().max()?)));
        warden_core::token::Revocations::new(self.token_refs.keys().copied().collect(), cuts)
    }
}

/// `revocations` as agents receive them.
pub fn to_proto(revocations: &warden_core::token::Revocations) -> pb::Revocations {
    let cuts = revocations.cuts().map(|(key, before)| (key.issuer, key.subject, before));
    pb::Revocations::from_parts(&revocations.tokens(), cuts)
}

/// What agents receive of `changes`: (revoked, unrevoked).
pub fn changes_to_proto(mut changes: Changes) -> (Option<pb::Revocations>, Option<pb::Revocations>) {
    changes.revoked.sort_unstable();
    changes.unrevoked.sort_unstable();
    let revoked = (!changes.revoked.is_empty() || !changes.cuts.is_empty()).then(|| {
        pb::Revocations::from_parts(&changes.revoked, changes.cuts.into_iter().map(|(k, b)| (k.issuer, k.subject, b)))
    });
    let unrevoked = (!changes.unrevoked.is_empty() || !changes.uncut.is_empty()).then(|| {
        pb::Revocations::from_parts(&changes.unrevoked, changes.uncut.into_iter().map(|k| (k.issuer, k.subject, 0)))
    });
    (revoked, unrevoked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revocation(name: &str, spec: serde_json::Value) -> (Document, Vec<u8>) {
        let doc = Document::from_json(
            serde_json::json!({"apiVersion": "warden.dev/v1", "kind": "Revocation", "metadata": {"name": name}, "spec": spec}),
            &warden_core::Admission::default(),
        )
        .unwrap();
        let json = doc.to_canonical_json();
        (doc, json)
    }

    #[test]
    fn a_token_stays_revoked_while_any_revocation_names_it_and_cut_offs_take_the_latest() {
        let mut table = RevocationTable::default();
        let (op, op_json) = revocation("by-operator", serde_json::json!({"issuer": "idp", "jti": "t-1"}));
        let (holder, holder_json) = revocation(
            "jti-holder",
            serde_json::json!({"issuer": "idp", "jti": "t-1", "expires": "2026-01-01T00:00:00Z"}),
        );
        let changes = table.apply(&[(&op, &op_json), (&holder, &holder_json)], &[], 1);
        // Listed in name order, cut at the limit; one by name whatever the limit.
        let listed: Vec<String> = table.resources(None, 1).into_iter().map(|r| r.name).collect();
        assert_eq!(listed, ["by-operator"]);
        assert_eq!(table.resources(Some("jti-holder"), 1)[0].document_json, holder_json);
        let key = warden_core::token::jti_key("idp", "t-1");
        assert_eq!(changes.revoked, [key], "named twice, revoked once");
        assert!(table.apply(&[], &["by-operator"], 2).is_empty(), "the holder's revocation still names it");
        assert_eq!(table.expired(1_767_225_600, 10), (vec!["jti-holder".to_string()], None));
        assert_eq!(table.apply(&[], &["jti-holder"], 3).unrevoked, [key]);

        let (early, early_json) = revocation(
            "alice-early",
            serde_json::json!({"issuer": "idp", "subject": "alice", "issuedBefore": "2026-01-01T00:00:00Z"}),
        );
        let (late, late_json) = revocation(
            "alice-late",
            serde_json::json!({"issuer": "idp", "subject": "alice", "issuedBefore": "2026-02-01T00:00:00Z"}),
        );
        let changes = table.apply(&[(&early, &early_json), (&late, &late_json)], &[], 4);
        let alice = CutKey { issuer: "idp".into(), subject: "alice".into() };
        assert_eq!(changes.cuts, [(alice.clone(), 1_769_904_000)]);
        assert_eq!(table.apply(&[], &["alice-late"], 5).cuts, [(alice.clone(), 1_767_225_600)], "back to the other");
        assert_eq!(table.apply(&[], &["alice-early"], 6).uncut, [alice]);
        assert!(table.revocations().is_empty() && table.is_empty());
    }
}
