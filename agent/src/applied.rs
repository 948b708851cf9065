//! The configuration the agent enforces, built whole from a snapshot or from the one it holds
//! plus a delta, and swapped in atomically: readers never see half of an update and never take
//! a lock.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use proto::v1 as pb;
use warden_core::authorize::Authorizer;
use warden_core::bridge::Bridges;
use warden_core::resource::Spec;
use warden_core::revocation::{Changes, CutKey, Target};
use warden_core::token::{Revocations, Verifier};
use warden_core::{Admission, Config, ConfigError, Document, DocumentError, Kind, ResourceKey};

/// Where the enforced configuration came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Received from the control plane in this run.
    ControlPlane,
    /// Loaded from the last good snapshot on disk at start.
    Disk,
}

/// One applied configuration version.
pub struct Applied {
    /// Store the version belongs to.
    pub store_id: String,
    /// Configuration version.
    pub version: u64,
    /// The resources as received, kept to apply deltas and to persist.
    /// (Shared, like the rest of what compiles, with the previous version when only revocations
    /// changed.)
    pub resources: Arc<BTreeMap<ResourceKey, pb::Resource>>,
    /// The same, parsed; a delta parses only what it changes.
    documents: Arc<BTreeMap<ResourceKey, Arc<Document>>>,
    /// Fetched issuer keys as received, by issuer name.
    pub keys: Arc<BTreeMap<String, pb::IssuerKeys>>,
    /// The compiled configuration.
    pub config: Arc<Config>,
    /// Revoked tokens, checked per request (kept apart from the compiled configuration).
    pub revocations: Revocations,
    /// Whether this version changed revocations alone (its resources are the previous one's).
    pub revocations_only: bool,
    /// Its token rules, with the tokens verified under them (shared with the previous version
    /// when only revocations changed: revocations are checked per request, not compiled in).
    pub verifier: Arc<Verifier>,
    /// Its policies, per server (shared likewise).
    pub authorizer: Arc<Authorizer>,
    /// Its credential bridges, per server (shared likewise).
    pub bridges: Arc<Bridges>,
    /// Where it came from.
    pub source: Source,
}

impl Applied {
    /// The snapshot that reproduces this configuration (what is persisted).
    pub fn to_snapshot(&self) -> pb::Snapshot {
        pb::Snapshot {
            store_id: self.store_id.clone(),
            version: self.version,
            resources: self.resources.values().cloned().collect(),
            issuer_keys: self.keys.values().cloned().collect(),
            revocations: Some(pb::Revocations::from_parts(
                &self.revocations.tokens(),
                self.revocations.cuts().map(|(key, before)| (key.issuer, key.subject, before)),
            )),
        }
    }
}

/// Why a configuration the control plane sent (or the disk held) was refused whole: the text
/// is what the NACK carries to operators (`wardenctl get agents`).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A delta arrived before any configuration.
    #[error("received changes but holds no configuration to apply them to")]
    NoBase,
    /// A delta is based on another version than the one in force.
    #[error("changes are based on version {base} but version {held} is applied")]
    WrongBase {
        /// The delta's base version.
        base: u64,
        /// The version in force.
        held: u64,
    },
    /// A revocation list's token keys are not a whole number of keys.
    #[error("revoked token keys are not whole 16-byte keys")]
    TokenKeys,
    /// A resource of a kind this agent does not know.
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    /// One resource twice in a snapshot.
    #[error("{0} appears twice in the snapshot")]
    Duplicate(ResourceKey),
    /// A revocation among the resources of a delta.
    #[error("{0}: revocations travel apart from resources")]
    RevocationAsResource(ResourceKey),
    /// A document that does not parse or validate.
    #[error("{key}: {error}")]
    Document {
        /// The resource it was sent as.
        key: ResourceKey,
        /// What is wrong with it.
        error: DocumentError,
    },
    /// A document sent under another resource's name.
    #[error("{key}: the document inside is {found}")]
    Mismatch {
        /// The resource it was sent as.
        key: ResourceKey,
        /// The resource the document says it is.
        found: ResourceKey,
    },
    /// Fetched issuer keys that are not JSON.
    #[error("keys of issuer {issuer}: {error}")]
    Keys {
        /// The issuer's name.
        issuer: String,
        /// The parser's message.
        error: serde_json::Error,
    },
    /// The documents do not make a consistent configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The changes `revoked` and `unrevoked` make (as a delta carries them).
fn changes(revoked: Option<pb::Revocations>, unrevoked: Option<pb::Revocations>) -> Result<Changes, ApplyError> {
    let keys = |r: &Option<pb::Revocations>| {
        r.as_ref().map_or(Some(Vec::new()), |r| proto::unpack_token_keys(&r.token_keys)).ok_or(ApplyError::TokenKeys)
    };
    let cut_keys = |r: Option<pb::Revocations>| {
        r.map(|r| r.cuts)
            .unwrap_or_default()
            .into_iter()
            .map(|c| (CutKey { issuer: c.issuer, subject: c.subject }, c.issued_before_unix))
    };
    let (revoked_tokens, unrevoked_tokens) = (keys(&revoked)?, keys(&unrevoked)?);
    Ok(Changes {
        revoked: revoked_tokens,
        unrevoked: unrevoked_tokens,
        cuts: cut_keys(revoked).collect(),
        uncut: cut_keys(unrevoked).map(|(key, _)| key).collect(),
    })
}

/// Builds a configuration from a full snapshot.
pub fn from_snapshot(snapshot: pb::Snapshot, source: Source) -> Result<Applied, ApplyError> {
    let mut resources = BTreeMap::new();
    let mut documents = BTreeMap::new();
    let mut revoked = changes(snapshot.revocations, None)?;
    for r in snapshot.resources {
        let key = resource_key(&r.kind, &r.name)?;
        let document = parse(&key, &r)?;
        // Snapshots persisted before revocations were kept apart carry them as resources.
        if let Spec::Revocation(spec) = &document.spec {
            match spec.target() {
                Target::Token(key) => revoked.revoked.push(key),
                Target::Cut(key, before) => revoked.cuts.push((key, before)),
            }
            continue;
        }
        documents.insert(key.clone(), document);
        if resources.insert(key.clone(), r).is_some() {
            return Err(ApplyError::Duplicate(key));
        }
    }
    let keys = snapshot.issuer_keys.into_iter().map(|k| (k.issuer.clone(), k)).collect();
    let revocations = Revocations::new(revoked.revoked, revoked.cuts);
    build(snapshot.store_id, snapshot.version, resources, documents, keys, revocations, source)
}

/// Builds the configuration that `delta` makes of `current`.
pub fn from_delta(current: Option<&Applied>, delta: pb::Delta) -> Result<Applied, ApplyError> {
    let current = current.ok_or(ApplyError::NoBase)?;
    if current.store_id != delta.store_id || current.version != delta.base_version {
        return Err(ApplyError::WrongBase { base: delta.base_version, held: current.version });
    }
    // Revocations are what must reach the fleet fastest, and they change no key, server or
    // policy: keep the compiled rest instead of compiling every policy again.
    let only_revocations = revocations_only(&delta);
    let revocations = current.revocations.apply(&changes(delta.revoked, delta.unrevoked)?);
    if only_revocations {
        return Ok(Applied {
            store_id: delta.store_id,
            version: delta.version,
            resources: current.resources.clone(),
            documents: current.documents.clone(),
            keys: current.keys.clone(),
            config: current.config.clone(),
            revocations,
            revocations_only: true,
            verifier: current.verifier.clone(),
            authorizer: current.authorizer.clone(),
            bridges: current.bridges.clone(),
            source: Source::ControlPlane,
        });
    }
    let mut resources = (*current.resources).clone();
    let mut documents = (*current.documents).clone();
    for r in delta.removals {
        let key = resource_key(&r.kind, &r.name)?;
        resources.remove(&key);
        documents.remove(&key);
    }
    for r in delta.upserts {
        let key = resource_key(&r.kind, &r.name)?;
        if key.kind == Kind::Revocation {
            return Err(ApplyError::RevocationAsResource(key));
        }
        documents.insert(key.clone(), parse(&key, &r)?);
        resources.insert(key.clone(), r);
    }
    let mut keys = (*current.keys).clone();
    for issuer in delta.removed_keys {
        keys.remove(&issuer);
    }
    for k in delta.upserted_keys {
        keys.insert(k.issuer.clone(), k);
    }
    build(delta.store_id, delta.version, resources, documents, keys, revocations, Source::ControlPlane)
}

/// Whether `delta` changes revocations alone (no resource, no key): nothing is compiled again.
pub fn revocations_only(delta: &pb::Delta) -> bool {
    delta.upserts.is_empty()
        && delta.removals.is_empty()
        && delta.upserted_keys.is_empty()
        && delta.removed_keys.is_empty()
}

fn resource_key(kind: &str, name: &str) -> Result<ResourceKey, ApplyError> {
    let kind =
        Kind::ALL.into_iter().find(|k| k.as_str() == kind).ok_or_else(|| ApplyError::UnknownKind(kind.to_string()))?;
    Ok(ResourceKey { kind, name: name.to_string() })
}

/// Parses one received resource with the same parser the control plane admitted it with.
fn parse(key: &ResourceKey, r: &pb::Resource) -> Result<Arc<Document>, ApplyError> {
    let doc = Document::from_json_bytes(&r.document_json, &Admission::from_control_plane())
        .map_err(|error| ApplyError::Document { key: key.clone(), error })?;
    if doc.key() != *key {
        return Err(ApplyError::Mismatch { key: key.clone(), found: doc.key() });
    }
    Ok(Arc::new(doc))
}

fn build(
    store_id: String,
    version: u64,
    resources: BTreeMap<ResourceKey, pb::Resource>,
    documents: BTreeMap<ResourceKey, Arc<Document>>,
    keys: BTreeMap<String, pb::IssuerKeys>,
    revocations: Revocations,
    source: Source,
) -> Result<Applied, ApplyError> {
    let mut fetched = Vec::with_capacity(keys.len());
    for (issuer, k) in &keys {
        let jwks =
            serde_json::from_slice(&k.jwks_json).map_err(|error| ApplyError::Keys { issuer: issuer.clone(), error })?;
        fetched.push((issuer.clone(), jwks));
    }
    let config = Config::build(documents.values().map(|d| d.as_ref())).and_then(|c| c.with_fetched_keys(fetched))?;
    let (verifier, skipped) = Verifier::new(&config);
    if skipped > 0 {
        // Tokens signed with these keys are refused as unknown_kid, never accepted.
        tracing::warn!(version, skipped, "issuer keys that do not parse were left out");
    }
    let (verifier, authorizer) = (Arc::new(verifier), Arc::new(Authorizer::new(&config)));
    let bridges = Arc::new(Bridges::new(&config.bridges));
    Ok(Applied {
        store_id,
        version,
        resources: Arc::new(resources),
        documents: Arc::new(documents),
        keys: Arc::new(keys),
        config: Arc::new(config),
        revocations,
        revocations_only: false,
        verifier,
        authorizer,
        bridges,
        source,
    })
}

/// The configuration in force, shared by everything that enforces it.
#[derive(Clone)]
pub struct Current {
    applied: Arc<ArcSwapOption<Applied>>,
    /// The version in force, for those who wait for one rather than read it per request.
    version: tokio::sync::watch::Sender<u64>,
}

impl Default for Current {
    fn default() -> Current {
        Current { applied: Arc::default(), version: tokio::sync::watch::Sender::new(0) }
    }
}

impl Current {
    /// The configuration in force; `None` until one was ever applied (then everything is
    /// denied).
    pub fn get(&self) -> Option<Arc<Applied>> {
        self.applied.load_full()
    }

    /// Puts `applied` in force.
    pub fn set(&self, applied: Applied) {
        let version = applied.version;
        self.applied.store(Some(Arc::new(applied)));
        self.version.send_replace(version);
    }

    /// Follows the version in force.
    pub fn watch_version(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(name: &str, version: u64) -> pb::Resource {
        let doc = serde_json::json!({
            "apiVersion": "warden.dev/v1", "kind": "TrustedIssuer", "metadata": {"name": name},
            "spec": {"issuer": "https://idp.example.com", "keys": {"jwksUri": "https://idp.example.com/jwks"}, "allowedAlgorithms": ["ES256"]}
        });
        pb::Resource {
            kind: "TrustedIssuer".into(),
            name: name.into(),
            resource_version: version,
            document_json: serde_json::to_vec(&doc).unwrap(),
        }
    }

    fn snapshot(version: u64, resources: Vec<pb::Resource>) -> pb::Snapshot {
        let revocations = Some(pb::Revocations::default());
        pb::Snapshot { store_id: "s".into(), version, resources, issuer_keys: vec![], revocations }
    }

    fn keys(issuer: &str, kid: &str) -> pb::IssuerKeys {
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "kid": kid, "crv": "P-256", "x": "x", "y": "y"}]});
        pb::IssuerKeys {
            issuer: issuer.into(),
            version: 1,
            jwks_json: serde_json::to_vec(&jwks).unwrap(),
            fetched_at_unix: 1,
            source_uri: String::new(),
        }
    }

    #[test]
    fn fetched_keys_travel_with_snapshots_and_deltas() {
        let mut s = snapshot(3, vec![issuer("a", 3)]);
        s.issuer_keys.push(keys("a", "k1"));
        let base = from_snapshot(s.clone(), Source::ControlPlane).unwrap();
        assert_eq!(warden_core::jwks::kids(&base.config.keys["a"]), ["k1"]);
        assert_eq!(base.to_snapshot(), s, "what is persisted reproduces the snapshot");
        let rotate = pb::Delta {
            store_id: "s".into(),
            base_version: 3,
            version: 4,
            upserted_keys: vec![keys("a", "k2")],
            ..Default::default()
        };
        let next = from_delta(Some(&base), rotate).unwrap();
        assert_eq!(warden_core::jwks::kids(&next.config.keys["a"]), ["k2"]);
        let drop = pb::Delta {
            store_id: "s".into(),
            base_version: 4,
            version: 5,
            removed_keys: vec!["a".into()],
            ..Default::default()
        };
        assert!(from_delta(Some(&next), drop).unwrap().config.keys.is_empty());
        // Keys for an issuer the configuration does not have are refused whole.
        let stray = pb::Delta {
            store_id: "s".into(),
            base_version: 3,
            version: 4,
            upserted_keys: vec![keys("zzz", "k1")],
            ..Default::default()
        };
        assert!(from_delta(Some(&base), stray).is_err());
    }

    fn revocation(name: &str, issuer: &str, jti: &str) -> pb::Resource {
        let doc = serde_json::json!({
            "apiVersion": "warden.dev/v1", "kind": "Revocation", "metadata": {"name": name},
            "spec": {"issuer": issuer, "jti": jti}
        });
        pb::Resource {
            kind: "Revocation".into(),
            name: name.into(),
            resource_version: 1,
            document_json: serde_json::to_vec(&doc).unwrap(),
        }
    }

    fn tokens(issuer: &str, jtis: &[&str]) -> Option<pb::Revocations> {
        let mut keys: Vec<u128> = jtis.iter().map(|jti| warden_core::token::jti_key(issuer, jti)).collect();
        keys.sort();
        Some(pb::Revocations::from_parts(&keys, []))
    }

    #[test]
    fn a_revocation_alone_keeps_the_compiled_rules_and_is_in_force() {
        let base = from_snapshot(snapshot(3, vec![issuer("a", 3)]), Source::ControlPlane).unwrap();
        let revoke = pb::Delta {
            store_id: "s".into(),
            base_version: 3,
            version: 4,
            revoked: tokens("a", &["t-1"]),
            ..Default::default()
        };
        let next = from_delta(Some(&base), revoke).unwrap();
        assert!(next.revocations_only);
        assert!(Arc::ptr_eq(&next.verifier, &base.verifier) && Arc::ptr_eq(&next.authorizer, &base.authorizer));
        assert!(next.revocations.jti_revoked("a", "t-1") && !next.revocations.jti_revoked("a", "t-2"));
        let persisted = next.to_snapshot();
        assert_eq!(persisted.revocations, tokens("a", &["t-1"]), "persisted with the revocation");
        assert!(from_snapshot(persisted, Source::Disk).unwrap().revocations.jti_revoked("a", "t-1"));
        // Lifting it: the same shortcut, and the token is good again.
        let lift = pb::Delta {
            store_id: "s".into(),
            base_version: 4,
            version: 5,
            unrevoked: tokens("a", &["t-1"]),
            ..Default::default()
        };
        assert!(from_delta(Some(&next), lift).unwrap().revocations.is_empty());
        // Anything else in the delta: compiled again.
        let mixed = pb::Delta {
            store_id: "s".into(),
            base_version: 3,
            version: 4,
            upserts: vec![issuer("b", 4)],
            revoked: tokens("a", &["t-1"]),
            ..Default::default()
        };
        let rebuilt = from_delta(Some(&base), mixed).unwrap();
        assert!(!rebuilt.revocations_only && !Arc::ptr_eq(&rebuilt.verifier, &base.verifier));
        assert!(rebuilt.revocations.jti_revoked("a", "t-1"));
    }

    #[test]
    fn malformed_revocations_are_refused_whole() {
        let base = from_snapshot(snapshot(3, vec![issuer("a", 3)]), Source::ControlPlane).unwrap();
        let partial_key = pb::Revocations { token_keys: vec![0; 15].into(), cuts: vec![] };
        let delta = pb::Delta {
            store_id: "s".into(),
            base_version: 3,
            version: 4,
            revoked: Some(partial_key.clone()),
            ..Default::default()
        };
        assert!(matches!(from_delta(Some(&base), delta), Err(ApplyError::TokenKeys)));
        let snapshot = pb::Snapshot { revocations: Some(partial_key), ..snapshot(3, vec![issuer("a", 3)]) };
        assert!(from_snapshot(snapshot, Source::ControlPlane).is_err());
        // Revocations never travel as resources in a delta.
        let as_resource = pb::Delta {
            store_id: "s".into(),
            base_version: 3,
            version: 4,
            upserts: vec![revocation("r1", "a", "t-1")],
            ..Default::default()
        };
        let refused = from_delta(Some(&base), as_resource).err().unwrap();
        assert!(matches!(refused, ApplyError::RevocationAsResource(_)), "{refused}");
        assert!(refused.to_string().contains("apart"), "{refused}");
    }

    #[test]
    fn a_snapshot_persisted_with_revocations_as_resources_loads_them_into_the_list() {
        let old = snapshot(3, vec![issuer("a", 3), revocation("r1", "a", "t-1")]);
        let loaded = from_snapshot(old, Source::Disk).unwrap();
        assert!(loaded.revocations.jti_revoked("a", "t-1"));
        assert_eq!(loaded.resources.len(), 1);
    }

    #[test]
    fn a_delta_applies_only_on_the_version_it_is_based_on() {
        let base = from_snapshot(snapshot(3, vec![issuer("a", 3)]), Source::ControlPlane).unwrap();
        let delta = pb::Delta {
            store_id: "s".into(),
            base_version: 3,
            version: 4,
            upserts: vec![issuer("b", 4)],
            removals: vec![pb::ResourceRef { kind: "TrustedIssuer".into(), name: "a".into() }],
            ..Default::default()
        };
        let next = from_delta(Some(&base), delta.clone()).unwrap();
        assert_eq!(next.version, 4);
        assert_eq!(next.config.issuers.keys().collect::<Vec<_>>(), ["b"]);
        let stale = pb::Delta { base_version: 2, ..delta.clone() };
        let stale = from_delta(Some(&base), stale).err().unwrap();
        assert!(matches!(stale, ApplyError::WrongBase { base: 2, held: 3 }), "{stale}");
        assert_eq!(stale.to_string(), "changes are based on version 2 but version 3 is applied");
        assert!(matches!(from_delta(None, delta), Err(ApplyError::NoBase)));
    }

    #[test]
    fn a_snapshot_with_one_bad_resource_is_refused_whole() {
        let mut bad = issuer("b", 5);
        bad.document_json =
            br#"{"apiVersion":"warden.dev/v1","kind":"TrustedIssuer","metadata":{"name":"b"},"spec":{}}"#.to_vec();
        let err = from_snapshot(snapshot(5, vec![issuer("a", 5), bad]), Source::ControlPlane).err().unwrap();
        assert!(matches!(&err, ApplyError::Document { key, .. } if key.name == "b"), "{err}");
        assert!(err.to_string().starts_with("TrustedIssuer/b: spec"), "{err}");
        let mut mislabelled = issuer("c", 5);
        mislabelled.name = "d".into();
        let err = from_snapshot(snapshot(5, vec![mislabelled]), Source::ControlPlane).err().unwrap();
        assert!(matches!(&err, ApplyError::Mismatch { key, found } if key.name == "d" && found.name == "c"), "{err}");
    }

    #[test]
    fn nothing_is_in_force_until_something_is_applied() {
        let current = Current::default();
        assert!(current.get().is_none());
        current.set(from_snapshot(snapshot(1, vec![issuer("a", 1)]), Source::Disk).unwrap());
        assert_eq!(current.get().unwrap().version, 1);
    }
}
