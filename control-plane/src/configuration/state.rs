//! The fleet's configuration in memory: an immutable [`FleetState`] per version, published to
//! every agent session, and the planning of writes against it.
//!
//! Planning is pure: it takes the current state and the operator's documents and returns what
//! would change, after checking optimistic-concurrency versions and that the resulting
//! configuration is consistent (`warden_core::Config::build`). Nothing is written unless the
//! plan is valid as a whole.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proto::v1 as pb;
use warden_core::issuer::TrustedIssuerSpec;
use warden_core::resource::Spec;
use warden_core::{Config, ConfigError, Document, DocumentError, Kind, ResourceKey};

use crate::configuration::revocation_table::{self, RevocationTable};
use crate::configuration::store::{KeyRecord, Loaded, StoreError};

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
    /// Every resource but revocations.
    pub resources: BTreeMap<ResourceKey, Arc<Entry>>,
    /// Fetched issuer keys, by issuer name.
    pub keys: BTreeMap<String, Arc<KeyRecord>>,
    /// The version of the last change to `resources` or `keys` (what compiles).
    pub resources_version: u64,
    /// The encoded size of a snapshot of `resources` and `keys`.
    pub resources_bytes: usize,
    /// Revoked tokens at this version: set when the version is published.
    pub revoked: warden_core::token::Revocations,
    /// Every revocation, shared by the states of one store and moved at publication (see
    /// [`RevocationTable`]): may be ahead of this version, never behind it.
    pub revocation_table: Arc<Mutex<RevocationTable>>,
    /// The revocations this version writes and removes, applied to the table at publication.
    pub revocation_write: RevocationWrite,
    /// Deltas to this version computed so far, by base version (of this store).
    deltas: Mutex<Vec<(u64, pb::Delta)>>,
    /// The snapshot of this version, once built (after publication: `revoked` is final then).
    snapshot: std::sync::OnceLock<pb::Snapshot>,
}

/// Revocations one `get` lists at most: a million would not fit one answer.
pub const LISTED_REVOCATIONS: usize = 10_000;

/// Deltas kept per state (by base version).
const DELTAS_CACHED: usize = 4;

/// The revocations one version writes and removes.
#[derive(Debug, Default)]
pub struct RevocationWrite {
    /// Documents of kind Revocation with their canonical JSON.
    pub puts: Vec<(Document, Vec<u8>)>,
    /// Names removed.
    pub deletes: Vec<String>,
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
        let mut resources = BTreeMap::new();
        let mut table = RevocationTable::default();
        let mut resources_version = 0;
        for (key, r) in loaded.resources {
            let json = r.document.to_canonical_json();
            if key.kind == warden_core::Kind::Revocation {
                table.apply(&[(&r.document, &json)], &[], r.resource_version);
                continue;
            }
            resources_version = resources_version.max(r.resource_version);
            resources.insert(key, Arc::new(Entry { resource_version: r.resource_version, document: r.document, json }));
        }
        let keys: BTreeMap<String, Arc<KeyRecord>> = loaded.keys.into_iter().map(|(k, r)| (k, Arc::new(r))).collect();
        resources_version = keys.values().map(|k| k.version).fold(resources_version, u64::max);
        let mut state = FleetState {
            store_id: loaded.store_id,
            version: loaded.version,
            resources,
            keys,
            resources_version,
            resources_bytes: 0,
            revoked: table.revocations(),
            revocation_table: Arc::new(Mutex::new(table)),
            revocation_write: RevocationWrite::default(),
            deltas: Mutex::default(),
            snapshot: std::sync::OnceLock::new(),
        };
        state.resources_bytes = prost::Message::encoded_len(&state.resources_snapshot());
        state
    }

    /// The revocation table (a poisoned lock still holds a consistent table: it is only
    /// changed whole, under it).
    pub fn revocation_table(&self) -> std::sync::MutexGuard<'_, RevocationTable> {
        self.revocation_table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The resources of `kind` (every kind: `None`) named `name` (any: `None`), revocations
    /// included (at most [`LISTED_REVOCATIONS`] of them), as agents once received them.
    pub fn documents(&self, kind: Option<Kind>, name: Option<&str>) -> Vec<pb::Resource> {
        let mut out: Vec<pb::Resource> = self
            .resources
            .iter()
            .filter(|(k, _)| kind.is_none_or(|kind| k.kind == kind) && name.is_none_or(|n| k.name == n))
            .map(|(k, e)| e.to_proto(k))
            .collect();
        if kind.is_none_or(|k| k == Kind::Revocation) {
            out.extend(self.revocation_table().resources(name, LISTED_REVOCATIONS));
        }
        out
    }

    /// The snapshot without its revocations.
    fn resources_snapshot(&self) -> pb::Snapshot {
        pb::Snapshot {
            store_id: self.store_id.clone(),
            version: self.version,
            resources: self.resources.iter().map(|(k, e)| e.to_proto(k)).collect(),
            issuer_keys: self.keys.iter().map(|(issuer, r)| keys_to_proto(issuer, r)).collect(),
            revocations: None,
        }
    }

    /// Encoded bytes of a snapshot holding `tokens` revoked tokens and these cut-offs, at most.
    fn config_bytes(&self, tokens: usize) -> usize {
        let cuts: usize = self.revoked.cuts().map(|(k, _)| k.issuer.len() + k.subject.len() + 24).sum();
        self.resources_bytes + tokens * proto::TOKEN_KEY_BYTES + cuts + 16
    }

    /// Every credential bridge at unix time `now` with its state: `revoked` when its key is in
    /// the revocation list agents check, else `open`, `expiring` (within 7 days) or `expired`.
    pub fn bridges(&self, now: i64) -> Vec<pb::BridgeStatus> {
        let bridges = self.resources.iter().filter_map(|(key, entry)| match &entry.document.spec {
            Spec::CredentialBridge(b) => Some((key, b)),
            _ => None,
        });
        bridges
            .map(|(key, b)| {
                let revoked = self.revoked.token_revoked(warden_core::revocation::bridge_key(&b.key_digest));
                let state =
                    if revoked { "revoked" } else { warden_core::bridge::State::at(b.expires_unix(), now).as_str() };
                pb::BridgeStatus {
                    name: key.name.clone(),
                    server: b.server.clone(),
                    principal: b.principal.clone(),
                    owner: b.owner.clone(),
                    expires_unix: b.expires_unix(),
                    state: state.into(),
                    forwards_key: b.forward_key,
                    requests: 0,
                }
            })
            .collect()
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
        // Built once per version: after a control-plane restart every agent asks for one, and
        // the revocation list alone may be 16 MB (shared, not copied, by each clone).
        self.snapshot
            .get_or_init(|| pb::Snapshot {
                revocations: Some(revocation_table::to_proto(&self.revoked)),
                ..self.resources_snapshot()
            })
            .clone()
    }

    /// The changes that take an agent holding `base` to this state: computed once per base
    /// (the agents of a fleet mostly hold the same one), as the revocation lists may be long.
    pub fn delta_from(&self, base: &FleetState) -> pb::Delta {
        let mut cache = self.deltas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, delta)) = cache.iter().find(|(from, _)| *from == base.version) {
            return delta.clone();
        }
        let delta = self.compute_delta_from(base);
        if cache.len() == DELTAS_CACHED {
            cache.remove(0);
        }
        cache.push((base.version, delta.clone()));
        delta
    }

    /// The delta from `base_version` if one was computed already (for another agent that held
    /// it), and smaller than a snapshot. An agent reconnecting after it missed a change mostly
    /// holds what its connected peers held, so it resumes from its version with no base state
    /// kept for it.
    pub fn cached_delta_from(&self, base_version: u64) -> Option<pb::Delta> {
        let cache = self.deltas.lock().unwrap_or_else(|e| e.into_inner());
        let (_, delta) = cache.iter().find(|(from, _)| *from == base_version)?;
        (prost::Message::encoded_len(delta) < self.snapshot_bytes()).then(|| delta.clone())
    }

    fn compute_delta_from(&self, base: &FleetState) -> pb::Delta {
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
        let (revoked, unrevoked) = revocation_table::changes_to_proto(self.revoked.changes_from(&base.revoked));
        pb::Delta {
            revoked,
            unrevoked,
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
            WriteError::Store(crate::configuration::store::StoreError::TooLarge(_)) => {
                tonic::Status::invalid_argument(e.to_string())
            }
            WriteError::Store(crate::configuration::store::StoreError::VersionMoved { .. }) => {
                tonic::Status::aborted(format!("{e}: other replicas keep writing; retry"))
            }
            WriteError::Store(
                crate::configuration::store::StoreError::Etcd(_)
                | crate::configuration::store::StoreError::Contended(_),
            ) => tonic::Status::unavailable(e.to_string()),
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
    /// Per document, when writes of several callers are committed together: who asked, and
    /// for what (the audit trail's actor and operation). Empty: the write's own.
    pub actors: Vec<(String, String)>,
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
            actors: Vec::new(),
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
    let table = current.revocation_table();
    for doc in documents {
        let key = doc.key();
        if plan.results.iter().any(|(k, _, _)| *k == key) {
            return Err(WriteError::Duplicate(key));
        }
        let existing = current.resources.get(&key);
        let revocation = (key.kind == Kind::Revocation).then(|| table.get(&key.name)).flatten();
        let stored = existing.map(|e| e.resource_version).or(revocation.map(|r| r.resource_version)).unwrap_or(0);
        if let Some(expected) = doc.metadata.resource_version
            && expected != stored
        {
            return Err(WriteError::Conflict { key, expected, stored });
        }
        let json = doc.to_canonical_json();
        let stored_json = existing.map(|e| &e.json[..]).or(revocation.map(|r| &r.json[..]));
        let action = match stored_json {
            None => Action::Created,
            Some(stored) if stored == json => Action::Unchanged,
            Some(_) => Action::Configured,
        };
        plan.results.push((key.clone(), action, stored));
        if let Some(e) = existing
            && current.keys.contains_key(&key.name)
            && key_origin(&e.document) != key_origin(&doc)
        {
            plan.key_deletes.push(key.name.clone());
        }
        if let Spec::CredentialBridge(bridge) = &doc.spec
            && !bridge.key_checked()
            && existing.is_none_or(
                |e| !matches!(&e.document.spec, Spec::CredentialBridge(b) if b.key_digest == bridge.key_digest),
            )
        {
            // A digest's key was never seen, so its strength was never checked.
            return Err(ConfigError::Bridge {
                from: key,
                message: "spec.keyDigest: give the key itself (spec.key, or keyFile with wardenctl) so its strength can be checked; a digest alone is accepted only as it is stored".into(),
            }
            .into());
        }
        if action != Action::Unchanged {
            plan.puts.push((key, doc, json));
        }
    }
    check(current, &table, &plan)?;
    Ok(plan)
}

/// Plans an operator's apply at unix time `now`: as [`plan_apply`], after admitting its
/// credential bridges. A bridge's `keySince` is the control plane's: kept while its key stays
/// the same, `now` for a new key; a changed bridge must close in the future and at most 90
/// days after `keySince` (re-applying cannot keep one key open longer); a revoked key is
/// refused whichever bridge presents it.
pub fn plan_operator_apply(current: &FleetState, mut documents: Vec<Document>, now: i64) -> Result<Plan, WriteError> {
    for (index, doc) in documents.iter_mut().enumerate() {
        let key = doc.key();
        let Spec::CredentialBridge(bridge) = &mut doc.spec else { continue };
        if current.revoked.token_revoked(warden_core::revocation::bridge_key(&bridge.key_digest)) {
            return Err(ConfigError::Bridge {
                from: key,
                message: "its key was revoked (wardenctl revoke --bridge): set a new key".into(),
            }
            .into());
        }
        let stored = current.resources.get(&key);
        let key_since = stored
            .and_then(|e| match &e.document.spec {
                Spec::CredentialBridge(b) if b.key_digest == bridge.key_digest => b.key_since_unix(),
                _ => None,
            })
            .unwrap_or(now);
        bridge.key_since = Some(warden_core::revocation::format_time(key_since));
        let unchanged = stored.is_some_and(|e| e.json[..] == doc.to_canonical_json()[..]);
        if let Spec::CredentialBridge(bridge) = &mut doc.spec
            && !unchanged
        {
            bridge.admit(key_since, now).map_err(|error| WriteError::Document { index: index + 1, error })?;
        }
    }
    plan_apply(current, documents)
}

/// Plans the removal of `key`, refused if `expected` (non-zero) is not its stored version.
pub fn plan_delete(current: &FleetState, key: ResourceKey, expected: u64) -> Result<Plan, WriteError> {
    let table = current.revocation_table();
    let stored = match key.kind {
        Kind::Revocation => table.get(&key.name).map(|r| r.resource_version),
        _ => current.resources.get(&key).map(|e| e.resource_version),
    }
    .ok_or_else(|| WriteError::NotFound(key.clone()))?;
    if expected != 0 && expected != stored {
        return Err(WriteError::Conflict { key, expected, stored });
    }
    let mut plan = Plan::empty();
    if key.kind == Kind::TrustedIssuer && current.keys.contains_key(&key.name) {
        plan.key_deletes.push(key.name.clone());
    }
    // A server's ToolApprovals (most written by the control plane itself) go with it.
    if key.kind == Kind::McpServer {
        for (approval, entry) in &current.resources {
            if let Spec::ToolApproval(a) = &entry.document.spec
                && a.server == key.name
            {
                plan.deletes.push((approval.clone(), entry.resource_version));
            }
        }
    }
    plan.deletes.push((key, stored));
    check(current, &table, &plan)?;
    Ok(plan)
}

/// Plans storing freshly fetched keys of `issuer`; a no-op when they are what agents already
/// have. The issuer must still exist with the key origin the keys were fetched for.
pub fn plan_keys(current: &FleetState, issuer: &str, origin_version: u64, record: KeyRecord) -> Plan {
    let mut plan = Plan::empty();
    let key = ResourceKey { kind: Kind::TrustedIssuer, name: issuer.to_string() };
    let still_current = current.resources.get(&key).is_some_and(|e| e.resource_version == origin_version);
    let unchanged = current.keys.get(issuer).is_some_and(|r| r.jwks == record.jwks);
    if still_current && !unchanged {
        plan.key_puts.push((issuer.to_string(), record));
    }
    plan
}

/// The configuration after `plan` must compile, or the write is refused: a bad configuration
/// never reaches an agent. Revocations are checked on their own (each names an existing
/// issuer; an issuer stays while revocations name it): a write of revocations alone compiles
/// nothing, whatever else is stored.
fn check(current: &FleetState, table: &RevocationTable, plan: &Plan) -> Result<(), WriteError> {
    let revocation = |key: &ResourceKey| key.kind == Kind::Revocation;
    // Whose credentials a revocation names: an issuer's tokens, or a bridge's key.
    let exists = |kind: Kind, issuer: &str| {
        let key = ResourceKey { kind, name: issuer.to_string() };
        let deleted = plan.deletes.iter().any(|(k, _)| *k == key);
        let put = plan.puts.iter().any(|(k, _, _)| *k == key);
        put || (!deleted && current.resources.contains_key(&key))
    };
    for (key, doc, _) in plan.puts.iter().filter(|(k, _, _)| revocation(k)) {
        let Spec::Revocation(spec) = &doc.spec else { continue };
        if exists(Kind::CredentialBridge, &spec.issuer) != spec.key_digest.is_some() {
            return Err(ConfigError::Bridge {
                from: ResourceKey { kind: Kind::CredentialBridge, name: spec.issuer.clone() },
                message: format!(
                    "{key}: a bridge's key is revoked by its digest (issuer: the bridge, keyDigest: its digest; wardenctl revoke --bridge), and only a bridge's"
                ),
            }
            .into());
        }
        if spec.key_digest.is_none() && !exists(Kind::TrustedIssuer, &spec.issuer) {
            return Err(ConfigError::DanglingReference {
                from: key.clone(),
                field: "spec.issuer",
                missing: ResourceKey { kind: Kind::TrustedIssuer, name: spec.issuer.clone() },
            }
            .into());
        }
    }
    let removed_revocations: Vec<&str> =
        plan.deletes.iter().filter(|(k, _)| revocation(k)).map(|(k, _)| k.name.as_str()).collect();
    // (A bridge may go while its key's revocation stays: the key stays dead if the bridge is
    // made again.)
    for (key, _) in plan.deletes.iter().filter(|(k, _)| k.kind == Kind::TrustedIssuer) {
        if let Some(name) = table.naming_issuer(&key.name, &removed_revocations) {
            return Err(ConfigError::DanglingReference {
                from: ResourceKey { kind: Kind::Revocation, name },
                field: "spec.issuer",
                missing: key.clone(),
            }
            .into());
        }
    }
    if plan.puts.iter().all(|(k, _, _)| revocation(k)) && plan.deletes.iter().all(|(k, _)| revocation(k)) {
        return Ok(());
    }
    proposed(current, plan)?;
    Ok(())
}

/// The configuration `current` would compile to once `plan` is committed (revocations aside).
pub fn proposed(current: &FleetState, plan: &Plan) -> Result<Config, ConfigError> {
    let revocation = |key: &ResourceKey| key.kind == Kind::Revocation;
    let mut docs: BTreeMap<&ResourceKey, &Document> = current.resources.iter().map(|(k, e)| (k, &e.document)).collect();
    for (key, doc, _) in plan.puts.iter().filter(|(k, _, _)| !revocation(k)) {
        docs.insert(key, doc);
    }
    for (key, _) in &plan.deletes {
        docs.remove(key);
    }
    Config::build(docs.into_values())
}

/// The write another replica committed, as a plan to apply onto the state it was based on.
pub fn plan_committed(committed: crate::configuration::store::etcd::Committed) -> Plan {
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

/// The state after committing `plan` as `version` (its revocations move the table when it is
/// published: see [`FleetState::published`]).
pub fn next_state(current: &FleetState, plan: Plan, version: u64) -> FleetState {
    let mut resources = current.resources.clone();
    let mut revocation_write = RevocationWrite::default();
    let mut resources_changed = !plan.key_deletes.is_empty() || !plan.key_puts.is_empty();
    for (key, document, json) in plan.puts {
        if key.kind == Kind::Revocation {
            revocation_write.puts.push((document, json));
        } else {
            resources_changed = true;
            resources.insert(key, Arc::new(Entry { resource_version: version, document, json }));
        }
    }
    for (key, _) in plan.deletes {
        if key.kind == Kind::Revocation {
            revocation_write.deletes.push(key.name);
        } else {
            resources_changed = true;
            resources.remove(&key);
        }
    }
    let mut keys = current.keys.clone();
    for issuer in plan.key_deletes {
        keys.remove(&issuer);
    }
    for (issuer, record) in plan.key_puts {
        keys.insert(issuer, Arc::new(KeyRecord { version, ..record }));
    }
    let mut next = FleetState {
        store_id: current.store_id.clone(),
        version,
        resources,
        keys,
        resources_version: if resources_changed { version } else { current.resources_version },
        resources_bytes: current.resources_bytes,
        revoked: current.revoked.clone(),
        revocation_table: current.revocation_table.clone(),
        revocation_write,
        deltas: Mutex::default(),
        snapshot: std::sync::OnceLock::new(),
    };
    if resources_changed {
        next.resources_bytes = prost::Message::encoded_len(&next.resources_snapshot());
    }
    next
}

impl FleetState {
    /// The encoded size of this state's snapshot, at most (its revocations are counted before
    /// they are applied, each as one more token).
    pub fn snapshot_bytes(&self) -> usize {
        self.config_bytes(self.revoked.len() + self.revocation_write.puts.len())
    }

    /// Called as this state replaces `held` as the published one: moves the revocation table
    /// by this version's write (when both are of one table, this version following `held`'s)
    /// and takes the revoked tokens from it.
    pub fn published(&mut self, held: &FleetState) {
        if !Arc::ptr_eq(&self.revocation_table, &held.revocation_table) {
            return;
        }
        if self.version != held.version + 1 {
            // Not reached: states are built from the published one. Read the table whole.
            tracing::error!(held = held.version, next = self.version, "a configuration version was skipped");
            let revoked = self.revocation_table().revocations();
            self.revoked = revoked;
            return;
        }
        let write = &self.revocation_write;
        let puts: Vec<(&Document, &[u8])> = write.puts.iter().map(|(d, j)| (d, &j[..])).collect();
        let deletes: Vec<&str> = write.deletes.iter().map(String::as_str).collect();
        let changes = self.revocation_table().apply(&puts, &deletes, self.version);
        self.revoked = held.revoked.apply(&changes);
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
