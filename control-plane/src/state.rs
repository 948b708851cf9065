//! The fleet's configuration in memory: an immutable [`FleetState`] per version, published to
//! every agent session, and the planning of writes against it.
//!
//! Planning is pure: it takes the current state and the operator's documents and returns what
//! would change, after checking optimistic-concurrency versions and that the resulting
//! configuration is consistent (`warden_core::Config::build`). Nothing is written unless the
//! plan is valid as a whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use proto::v1 as pb;
use warden_core::issuer::TrustedIssuerSpec;
use warden_core::resource::Spec;
use warden_core::{Config, ConfigError, Document, DocumentError, ResourceKey};

use crate::store::{KeyRecord, Loaded, StoreError};

/// One stored resource.
#[derive(Debug)]
pub struct Entry {
    /// Version of its last change.
    pub resource_version: u64,
    /// The document, validated.
    pub document: Document,
    /// Its canonical JSON, what agents receive.
    pub json: Vec<u8>,
}

impl Entry {
    fn to_proto(&self, key: &ResourceKey) -> pb::Resource {
        pb::Resource {
            kind: key.kind.as_str().to_string(),
            name: key.name.clone(),
            resource_version: self.resource_version,
            document_json: self.json.clone(),
        }
    }
}

/// The whole configuration at one version. Never mutated; a write publishes a new one.
#[derive(Debug)]
pub struct FleetState {
    /// Identity of the store the versions come from.
    pub store_id: String,
    /// The configuration version.
    pub version: u64,
    /// Every resource.
    pub resources: BTreeMap<ResourceKey, Arc<Entry>>,
    /// Fetched issuer keys, by issuer name.
    pub keys: BTreeMap<String, Arc<KeyRecord>>,
}

fn keys_to_proto(issuer: &str, record: &KeyRecord) -> pb::IssuerKeys {
    pb::IssuerKeys {
        issuer: issuer.to_string(),
        version: record.version,
        jwks_json: serde_json::to_vec(&record.jwks).expect("JSON values serialize"),
        fetched_at_unix: record.fetched_at_unix,
        source_uri: record.source_uri.clone(),
    }
}

impl FleetState {
    /// The state a store holds.
    pub fn from_loaded(loaded: Loaded) -> FleetState {
        let resources = loaded
            .resources
            .into_iter()
            .map(|(key, r)| {
                let json = r.document.to_canonical_json();
                (key, Arc::new(Entry { resource_version: r.resource_version, document: r.document, json }))
            })
            .collect();
        let keys = loaded.keys.into_iter().map(|(k, r)| (k, Arc::new(r))).collect();
        FleetState { store_id: loaded.store_id, version: loaded.version, resources, keys }
    }

    /// The token service's issuer (the `TrustedIssuer` with `controlPlane` keys): its name,
    /// entry and spec. `Config::build` admits at most one.
    pub fn token_service_issuer(&self) -> Option<(&str, &Arc<Entry>, &TrustedIssuerSpec)> {
        self.resources.iter().find_map(|(key, entry)| match &entry.document.spec {
            Spec::TrustedIssuer(spec) if spec.keys.control_plane => Some((key.name.as_str(), entry, spec)),
            _ => None,
        })
    }

    /// The full snapshot agents apply.
    pub fn snapshot(&self) -> pb::Snapshot {
        pb::Snapshot {
            store_id: self.store_id.clone(),
            version: self.version,
            resources: self.resources.iter().map(|(k, e)| e.to_proto(k)).collect(),
            issuer_keys: self.keys.iter().map(|(issuer, r)| keys_to_proto(issuer, r)).collect(),
        }
    }

    /// The changes that take an agent holding `base` to this state.
    pub fn delta_from(&self, base: &FleetState) -> pb::Delta {
        let upserts = self
            .resources
            .iter()
            .filter(|(k, e)| base.resources.get(*k).is_none_or(|b| b.resource_version != e.resource_version))
            .map(|(k, e)| e.to_proto(k))
            .collect();
        let removals = base
            .resources
            .keys()
            .filter(|k| !self.resources.contains_key(*k))
            .map(|k| pb::ResourceRef { kind: k.kind.as_str().to_string(), name: k.name.clone() })
            .collect();
        let upserted_keys = self
            .keys
            .iter()
            .filter(|(k, r)| base.keys.get(*k).is_none_or(|b| b.version != r.version))
            .map(|(issuer, r)| keys_to_proto(issuer, r))
            .collect();
        let removed_keys = base.keys.keys().filter(|k| !self.keys.contains_key(*k)).cloned().collect();
        pb::Delta {
            store_id: self.store_id.clone(),
            base_version: base.version,
            version: self.version,
            upserts,
            removals,
            upserted_keys,
            removed_keys,
        }
    }
}

/// Why a write was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A document is invalid on its own.
    #[error("document {index}: {error}")]
    Document {
        /// 1-based position in the request.
        index: usize,
        /// What is wrong.
        error: DocumentError,
    },
    /// The same resource appears twice in one request.
    #[error("{0} appears more than once in the request")]
    Duplicate(ResourceKey),
    /// The document carried a resourceVersion that is not the stored one.
    #[error(
        "{key}: conflict: the request is based on resourceVersion {expected} but the stored one is {stored}; get it again and reapply"
    )]
    Conflict {
        /// Which resource.
        key: ResourceKey,
        /// The version the request was based on.
        expected: u64,
        /// The stored version (0: it does not exist).
        stored: u64,
    },
    /// The resource to delete does not exist.
    #[error("{0} not found")]
    NotFound(ResourceKey),
    /// The result would not be a consistent configuration.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The configuration would be larger than agents accept in one message.
    #[error(
        "the configuration would be {size} bytes, over the {limit}-byte limit of one configuration message (--max-config-bytes; agents accept at most {}): nothing was changed",
        proto::MAX_CONFIG_MESSAGE_BYTES
    )]
    TooLarge {
        /// The encoded snapshot's size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<WriteError> for tonic::Status {
    fn from(e: WriteError) -> tonic::Status {
        match &e {
            WriteError::Document { .. }
            | WriteError::Duplicate(_)
            | WriteError::Config(_)
            | WriteError::TooLarge { .. } => tonic::Status::invalid_argument(e.to_string()),
            WriteError::Conflict { .. } => tonic::Status::aborted(e.to_string()),
            WriteError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            WriteError::Store(crate::store::StoreError::TooLarge(_)) => tonic::Status::invalid_argument(e.to_string()),
            WriteError::Store(crate::store::StoreError::VersionMoved { .. }) => {
                tonic::Status::aborted(format!("{e}: other replicas keep writing; retry"))
            }
            WriteError::Store(crate::store::StoreError::Etcd(_)) => tonic::Status::unavailable(e.to_string()),
            WriteError::Store(_) => tonic::Status::internal(e.to_string()),
        }
    }
}

/// What applying a document does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// It did not exist.
    Created,
    /// It existed and changes.
    Configured,
    /// It exists exactly so.
    Unchanged,
}

impl Action {
    /// As printed by wardenctl.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
        }
    }
}

/// A validated write, ready to commit.
pub struct Plan {
    /// Per document: its key, what happens, and its stored version before the write (0: none).
    pub results: Vec<(ResourceKey, Action, u64)>,
    /// Resources created or replaced.
    pub puts: Vec<(ResourceKey, Document, Vec<u8>)>,
    /// Resources removed.
    pub deletes: Vec<(ResourceKey, u64)>,
    /// Fetched key sets stored.
    pub key_puts: Vec<(String, KeyRecord)>,
    /// Fetched key sets dropped (their issuer is gone or now takes keys from elsewhere).
    pub key_deletes: Vec<String>,
}

impl Plan {
    pub(crate) fn empty() -> Plan {
        Plan {
            results: Vec::new(),
            puts: Vec::new(),
            deletes: Vec::new(),
            key_puts: Vec::new(),
            key_deletes: Vec::new(),
        }
    }

    /// Whether committing would change nothing.
    pub fn is_noop(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty() && self.key_puts.is_empty() && self.key_deletes.is_empty()
    }
}

/// Where an issuer's keys come from: fetched keys stay valid only while this is unchanged.
fn key_origin(doc: &Document) -> Option<(&str, &warden_core::issuer::KeySource)> {
    match &doc.spec {
        warden_core::resource::Spec::TrustedIssuer(s) => Some((s.issuer.as_str(), &s.keys)),
        _ => None,
    }
}

/// Plans an apply of `documents` onto `current`.
pub fn plan_apply(current: &FleetState, documents: Vec<Document>) -> Result<Plan, WriteError> {
    let mut plan = Plan::empty();
    for doc in documents {
        let key = doc.key();
        if plan.results.iter().any(|(k, _, _)| *k == key) {
            return Err(WriteError::Duplicate(key));
        }
        let existing = current.resources.get(&key);
        let stored = existing.map_or(0, |e| e.resource_version);
        if let Some(expected) = doc.metadata.resource_version
            && expected != stored
        {
            return Err(WriteError::Conflict { key, expected, stored });
        }
        let json = doc.to_canonical_json();
        let action = match existing {
            None => Action::Created,
            Some(e) if e.json == json => Action::Unchanged,
            Some(_) => Action::Configured,
        };
        plan.results.push((key.clone(), action, stored));
        if let Some(e) = existing
            && current.keys.contains_key(&key.name)
            && key_origin(&e.document) != key_origin(&doc)
        {
            plan.key_deletes.push(key.name.clone());
        }
        if action != Action::Unchanged {
            plan.puts.push((key, doc, json));
        }
    }
    check(current, &plan)?;
    Ok(plan)
}

/// Plans the removal of `key`, refused if `expected` (non-zero) is not its stored version.
pub fn plan_delete(current: &FleetState, key: ResourceKey, expected: u64) -> Result<Plan, WriteError> {
    let stored =
        current.resources.get(&key).map(|e| e.resource_version).ok_or_else(|| WriteError::NotFound(key.clone()))?;
    if expected != 0 && expected != stored {
        return Err(WriteError::Conflict { key, expected, stored });
    }
    let mut plan = Plan::empty();
    if key.kind == warden_core::Kind::TrustedIssuer && current.keys.contains_key(&key.name) {
        plan.key_deletes.push(key.name.clone());
    }
    plan.deletes.push((key, stored));
    check(current, &plan)?;
    Ok(plan)
}

/// Plans storing freshly fetched keys of `issuer`; a no-op when they are what agents already
/// have. The issuer must still exist with the key origin the keys were fetched for.
pub fn plan_keys(current: &FleetState, issuer: &str, origin_version: u64, record: KeyRecord) -> Plan {
    let mut plan = Plan::empty();
    let key = ResourceKey { kind: warden_core::Kind::TrustedIssuer, name: issuer.to_string() };
    let still_current = current.resources.get(&key).is_some_and(|e| e.resource_version == origin_version);
    let unchanged = current.keys.get(issuer).is_some_and(|r| r.jwks == record.jwks);
    if still_current && !unchanged {
        plan.key_puts.push((issuer.to_string(), record));
    }
    plan
}

/// The configuration after `plan` must compile, or the write is refused: a bad configuration
/// never reaches an agent.
fn check(current: &FleetState, plan: &Plan) -> Result<(), WriteError> {
    let mut docs: BTreeMap<&ResourceKey, &Document> = current.resources.iter().map(|(k, e)| (k, &e.document)).collect();
    for (key, doc, _) in &plan.puts {
        docs.insert(key, doc);
    }
    for (key, _) in &plan.deletes {
        docs.remove(key);
    }
    Config::build(docs.into_values())?;
    Ok(())
}

/// The write another replica committed, as a plan to apply onto the state it was based on.
pub fn plan_committed(committed: crate::store::etcd::Committed) -> Plan {
    let mut plan = Plan::empty();
    for (key, resource) in committed.puts {
        let json = resource.document.to_canonical_json();
        plan.puts.push((key, resource.document, json));
    }
    plan.deletes = committed.deletes.into_iter().map(|key| (key, 0)).collect();
    plan.key_puts = committed.key_puts;
    plan.key_deletes = committed.key_deletes;
    plan
}

/// The state after committing `plan` as `version`.
pub fn next_state(current: &FleetState, plan: Plan, version: u64) -> FleetState {
    let mut resources = current.resources.clone();
    for (key, document, json) in plan.puts {
        resources.insert(key, Arc::new(Entry { resource_version: version, document, json }));
    }
    for (key, _) in plan.deletes {
        resources.remove(&key);
    }
    let mut keys = current.keys.clone();
    for issuer in plan.key_deletes {
        keys.remove(&issuer);
    }
    for (issuer, record) in plan.key_puts {
        keys.insert(issuer, Arc::new(KeyRecord { version, ..record }));
    }
    FleetState { store_id: current.store_id.clone(), version, resources, keys }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
