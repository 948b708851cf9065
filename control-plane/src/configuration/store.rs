//! The durable configuration store: resources, the configuration version, fetched issuer keys,
//! join tokens, registered agents and the audit trail. Two backends behind one [`Store`]: the
//! embedded redb file (the default for one node) and etcd (for several replicas).
//!
//! Every method is synchronous; async callers run them on the blocking pool (where the etcd
//! backend waits for etcd).

pub mod embedded;
pub mod etcd;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use warden_core::{Document, ResourceKey};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database failed.
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    /// etcd failed or could not be reached.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A file etcd's client needs (its TLS CA, certificate or key) could not be read.
    #[error("etcd: reading {}: {source}", path.display())]
    EtcdFile {
        /// Which file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A record other writers keep changing, so a guarded update never lands.
    #[error("etcd: {0} keeps changing; retry")]
    Contended(String),
    /// A migration into etcd found the prefix in use.
    #[error(
        "etcd: {prefix}/ already holds {keys} keys: migrate only into an empty prefix (a replica started on it creates keys)"
    )]
    PrefixInUse {
        /// The key prefix.
        prefix: String,
        /// How many keys it holds.
        keys: usize,
    },
    /// A replica started on the prefix while a migration wrote to it.
    #[error("etcd: a replica started on {0}/ during the migration; start again on an empty prefix")]
    MigrationRaced(String),
    /// A write is larger than etcd accepts in one request.
    #[error("{0}")]
    TooLarge(EtcdLimit),
    /// A store call's task ended before answering (it panicked, or the runtime is shutting
    /// down).
    #[error("store call interrupted: {0}")]
    Interrupted(String),
    /// A stored record does not decode; the store was written by something else.
    #[error("store record {key}: {message}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Another writer moved the version on (another control-plane replica sharing the etcd
    /// store; never on one node).
    #[error("configuration version moved from {expected} to {found} during the write")]
    VersionMoved {
        /// The version the write was based on.
        expected: u64,
        /// The stored version.
        found: u64,
    },
}

/// Which of etcd's bounds on one request a write went past.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EtcdLimit {
    /// Operations in one transaction.
    #[error(
        "this write has more operations than etcd accepts in one transaction (its --max-txn-ops, 128 by default): apply fewer documents at once, or raise --max-txn-ops"
    )]
    Operations,
    /// Bytes in one request.
    #[error(
        "this write is larger than etcd accepts in one request (its --max-request-bytes, 1.5 MiB by default): apply fewer documents at once, or raise --max-request-bytes"
    )]
    Bytes,
}

/// Why a join token was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    /// Unknown id or wrong secret (not told apart, so ids cannot be probed).
    #[error("join token is not valid")]
    Invalid,
    /// The token was already used by an agent.
    #[error("join token was already used (by agent {0}); create a new one with `wardenctl join-token create`")]
    Used(String),
    /// The token is past its expiry.
    #[error("join token expired at {0} (unix seconds); create a new one with `wardenctl join-token create`")]
    Expired(i64),
    /// The token was created for another agent id (or, made by an earlier version, for none).
    #[error("this join token does not admit agent {0}: a join token admits only the agent named when it was created")]
    WrongAgent(String),
    /// An agent with this id is registered already.
    #[error(
        "agent {0} is registered already: `wardenctl delete agent {0}` first if its host was rebuilt (its certificates are then refused)"
    )]
    AgentExists(String),
    /// An attested join for an agent that joined with a join token, or under another rule:
    /// an attestation replaces only an agent its own rule admitted.
    #[error(
        "agent {0} is registered already, not by this attestation rule: `wardenctl delete agent {0}` first if it should join this way"
    )]
    NotAttested(String),
    /// An attested join with a token no newer than the one the agent last joined with (a
    /// replayed token, or one the platform has since replaced), or issued before an operator
    /// deleted the agent.
    #[error(
        "agent {0} joined with a newer token already, or was deleted after this token was issued (each platform token joins once; the platform rotates it)"
    )]
    Replayed(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stored resource, decoded.
pub struct LoadedResource {
    /// Version of its last change.
    pub resource_version: u64,
    /// The document.
    pub document: Document,
}

/// An issuer's fetched public keys, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    /// Configuration version of the last change (set by the store on commit).
    #[serde(default)]
    pub version: u64,
    /// The JWKS.
    pub jwks: serde_json::Value,
    /// When it was fetched, seconds since the epoch.
    pub fetched_at_unix: i64,
    /// Where from.
    pub source_uri: String,
    /// For the control plane's own keys: when each (by `kid`) stops being published, seconds
    /// since the epoch — after the last token it may sign has expired.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub expires_unix: std::collections::BTreeMap<String, i64>,
}

/// Everything needed to serve the configuration after a start.
pub struct Loaded {
    /// This store's identity; versions of two stores are not comparable.
    pub store_id: String,
    /// The configuration version.
    pub version: u64,
    /// Every resource.
    pub resources: BTreeMap<ResourceKey, LoadedResource>,
    /// Fetched issuer keys, by issuer name.
    pub keys: BTreeMap<String, KeyRecord>,
    /// The etcd revision it was read at (0 for the embedded store): changes are followed from
    /// the next one.
    pub revision: i64,
}

/// One change in a write.
pub enum Change {
    /// Create or replace a resource.
    Put {
        /// Which.
        key: ResourceKey,
        /// Its canonical JSON.
        json: Vec<u8>,
    },
    /// Remove a resource.
    Delete(ResourceKey),
    /// Store an issuer's fetched keys.
    PutKeys {
        /// The issuer's name.
        issuer: String,
        /// The keys.
        record: KeyRecord,
    },
    /// Forget an issuer's fetched keys.
    DeleteKeys(String),
}

/// An admin change, as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Configuration version the change produced.
    pub version: u64,
    /// Milliseconds since the epoch.
    pub time_unix_ms: i64,
    /// Who: `uid:<n>` on the admin socket, `operator:<name>` with a certificate.
    pub actor: String,
    /// `apply` or `delete`.
    pub operation: String,
    /// Kind of the resource.
    pub kind: String,
    /// Name of the resource.
    pub name: String,
    /// Its version before the change (0 when it did not exist).
    pub previous_resource_version: u64,
    /// The resource as an apply left it (canonical JSON), so history can show what changed.
    /// Absent for deletions, for revocations (many, and their entry says all), for fetched
    /// issuer keys, and in entries written before documents were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
}

impl AuditEntry {
    /// The source of a revocation this entry records a write of: `session_end` (an agent's
    /// `end-task`), `rfc7009` (the token service's `revoke`), `operator` (`apply`); `None` for
    /// other entries (a revocation's deletion: its expiry, or an operator's).
    pub fn revocation_source(&self) -> Option<&'static str> {
        if self.kind != warden_core::Kind::Revocation.as_str() {
            return None;
        }
        match self.operation.as_str() {
            "end-task" => Some("session_end"),
            "revoke" if self.actor == "token-service" => Some("rfc7009"),
            "apply" => Some("operator"),
            _ => None,
        }
    }
}

/// A registered agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRecord {
    /// Agent id (its SPIFFE ID's last segment).
    pub id: String,
    /// Labels given at join.
    pub labels: BTreeMap<String, String>,
    /// When it joined, seconds since the epoch.
    pub joined_unix: i64,
    /// Expiry of its newest certificate, seconds since the epoch.
    pub certificate_not_after_unix: i64,
    /// Serial numbers (hex) of the certificates issued to it that have not expired yet: only
    /// these are accepted for it, so a certificate of an agent that was deleted and joined again
    /// stays refused. Empty in records written before serials were kept: any certificate for
    /// the id is accepted until the next renewal writes one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<IssuedSerial>,
    /// Set when it joined with an attestation rather than a join token: which rule admitted
    /// it, with the token it used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attested: Option<Attested>,
}

/// The attestation an agent last joined with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attested {
    /// The `--join-attestation` rule (cluster) that admitted it.
    pub rule: String,
    /// The token's `iat`: a join with a token issued no later than this one is a replay.
    pub issued_at: i64,
}

/// What a renewal records: the certificate issued and, for an agent that joined with an
/// attestation, the one its renewal presented (checked) with its rule's labels as they are now.
#[derive(Clone, Debug)]
pub struct Renewal {
    /// The new certificate.
    pub issued: IssuedSerial,
    /// The attestation presented, and the rule's labels.
    pub attested: Option<(Attested, BTreeMap<String, String>)>,
}

/// One certificate issued to an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedSerial {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Expiry, seconds since the epoch.
    pub not_after_unix: i64,
}

impl AgentRecord {
    /// Whether it joined with an attestation, its newest certificate expired before
    /// `expired_before`, and the token it joined with has expired for sure at `now_unix`
    /// ([`token_expired`]: once its record is gone, nothing else refuses that token again).
    pub fn departed(&self, expired_before: i64, now_unix: i64) -> bool {
        self.attested.as_ref().is_some_and(|a| token_expired(a.issued_at, now_unix))
            && self.certificate_not_after_unix < expired_before
    }

    /// Records `renewal`, if it fits how the agent joined: an attested agent's must carry an
    /// attestation of the same rule, no older than the one it joined with (whose time stays
    /// what joins and forgetting go by: a renewal does not make the token the agent would join
    /// again with a replay), and takes the rule's labels; another agent's carries none.
    /// Otherwise false, and nothing changed.
    pub fn renewed(&mut self, renewal: Renewal, now_unix: i64) -> bool {
        match (&self.attested, renewal.attested) {
            (None, None) => {}
            (Some(joined), Some((now, labels))) if joined.rule == now.rule && now.issued_at >= joined.issued_at => {
                self.labels = labels;
            }
            _ => return false,
        }
        self.issued(renewal.issued.serial, renewal.issued.not_after_unix, now_unix);
        true
    }

    /// Whether a certificate with `serial` (hex) is one this agent holds, unexpired at
    /// `now_unix` (a resumed TLS session does not check the dates again). A record from before
    /// serials were kept lists none: then the caller checks the certificate's own dates.
    pub fn accepts(&self, serial: &str, now_unix: i64) -> bool {
        self.certificates.is_empty()
            || self.certificates.iter().any(|c| c.serial == serial && c.not_after_unix > now_unix)
    }

    /// Records a newly issued certificate, forgetting those expired by `now_unix`.
    pub fn issued(&mut self, serial: String, not_after_unix: i64, now_unix: i64) {
        self.certificates.retain(|c| c.not_after_unix > now_unix);
        self.certificates.push(IssuedSerial { serial, not_after_unix });
        self.certificate_not_after_unix = not_after_unix;
    }
}

/// The operator certificates issued to one name and not yet expired: only these are accepted on
/// the admin API, so `wardenctl operator-cert revoke` cuts the name off at once, everywhere.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorRecord {
    /// The operator's name (`spiffe://<td>/operator/<name>`).
    pub name: String,
    /// Its certificates.
    pub certificates: Vec<IssuedSerial>,
}

impl OperatorRecord {
    /// Whether a certificate with `serial` (hex) was issued to it, not revoked, and not expired
    /// at `now_unix`: a TLS session resumed from a ticket does not check the certificate's
    /// dates again, so they are checked here, on every call.
    pub fn accepts(&self, serial: &str, now_unix: i64) -> bool {
        self.certificates.iter().any(|c| c.serial == serial && c.not_after_unix > now_unix)
    }
}

/// Agent ids no agent may take: names the control plane itself records under.
pub const RESERVED_AGENT_IDS: [&str; 1] = ["control-plane"];

/// A resource as stored.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResourceRecord {
    pub(crate) resource_version: u64,
    pub(crate) document: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JoinTokenRecord {
    pub(crate) secret_sha256: String,
    pub(crate) expires_unix: i64,
    pub(crate) used_by: Option<String>,
    /// The only agent id the token admits (absent in tokens from before tokens named one:
    /// those are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent: Option<String>,
}

/// An agent's stream to one control-plane replica, as that replica publishes it for the others
/// (etcd store): bound to the replica's lease, so it disappears with a replica that crashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceRecord {
    /// The agent's id.
    pub agent: String,
    /// The replica it is connected to.
    pub replica: String,
    /// Labels it announced.
    pub labels: BTreeMap<String, String>,
    /// The version it applied last.
    pub applied_version: u64,
    /// Its last NACK's reason (empty after an ACK).
    pub last_error: String,
}

/// The versions one replica's agents applied, kept apart from their shards of
/// [`PresenceRecord`]s: a configuration change moves every agent's version and nothing else, so
/// it rewrites this one small record per replica (the version most of them hold, and the few
/// that hold another) rather than every shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceVersions {
    /// The version most of the replica's agents applied.
    pub version: u64,
    /// The agents that applied another.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub others: BTreeMap<String, u64>,
}

impl PresenceVersions {
    /// The versions of `records` (one replica's agents).
    pub fn of<'a>(records: impl IntoIterator<Item = &'a PresenceRecord>) -> PresenceVersions {
        let records: Vec<&PresenceRecord> = records.into_iter().collect();
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for r in &records {
            *counts.entry(r.applied_version).or_default() += 1;
        }
        // The most held; of two held as often, the newer.
        let version = counts.iter().max_by_key(|(v, n)| (**n, **v)).map_or(0, |(v, _)| *v);
        let others = records
            .iter()
            .filter(|r| r.applied_version != version)
            .map(|r| (r.agent.clone(), r.applied_version))
            .collect();
        PresenceVersions { version, others }
    }

    /// The version `agent` applied.
    pub fn of_agent(&self, agent: &str) -> u64 {
        self.others.get(agent).copied().unwrap_or(self.version)
    }
}

/// Everything a store holds, as stored, for moving a fleet to another backend
/// (`warden-cp migrate`).
pub struct Dump {
    /// The store's identity: kept, so agents resume from the version they hold.
    pub store_id: String,
    /// The configuration version.
    pub version: u64,
    /// Resource records by `Kind/name`.
    pub resources: Vec<(String, Vec<u8>)>,
    /// Fetched key records by issuer name.
    pub keys: Vec<(String, Vec<u8>)>,
    /// The audit trail, oldest first.
    pub audit: Vec<AuditEntry>,
    /// How many of the oldest audit entries were exported over OTLP already.
    pub audit_exported: usize,
    /// Up to when (Unix seconds) findings events were exported over OTLP already.
    pub findings_exported: u64,
    /// Join token records by id.
    pub join_tokens: Vec<(String, Vec<u8>)>,
    /// Registered agents by id.
    pub agents: Vec<(String, Vec<u8>)>,
    /// Hosts' findings by agent id.
    pub findings: Vec<(String, Vec<u8>)>,
    /// Definitions servers listed, by `server/kind/name`.
    pub definitions: Vec<(String, Vec<u8>)>,
    /// Operators' issued certificates by name: without them every operator certificate would be
    /// refused after the move.
    pub operators: Vec<(String, Vec<u8>)>,
    /// When each deleted agent was deleted (Unix seconds), by id: without them a deleted
    /// attested agent could join again, after the move, with a token issued before its deletion.
    pub attestation_floors: Vec<(String, i64)>,
}

/// Every definition seen for one server's tool, prompt or resource template (tool pinning),
/// the one listed last first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefinitionsRecord {
    /// The McpServer.
    pub server: String,
    /// `tool`, `prompt` or `resourceTemplate`.
    pub kind: String,
    /// The name it is listed by.
    pub name: String,
    /// The definitions seen, the one listed last first.
    pub seen: Vec<SeenDefinition>,
}

impl DefinitionsRecord {
    /// Its key in the store: `server/kind/name` (server names and kinds have no `/`).
    pub fn key(&self) -> String {
        definitions_key(&self.server, &self.kind, &self.name)
    }
}

/// The store key of one name's definitions.
pub fn definitions_key(server: &str, kind: &str, name: &str) -> String {
    format!("{server}/{kind}/{name}")
}

/// One definition seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeenDefinition {
    /// `sha256:<hex>` of the definition.
    pub digest: String,
    /// Its canonical JSON (empty when over the size kept).
    pub definition: String,
    /// First reported.
    pub first_seen_unix: i64,
    /// Last reported as the one listed.
    pub last_seen_unix: i64,
    /// The agent that reported it first.
    pub first_agent: String,
    /// Its signs of poisoning.
    pub flags: Vec<warden_core::pinning::Flag>,
}

/// What the scans of one agent's host found, as stored: every finding still open, and those
/// gone within the retention (for "resolved over the window"). Never a secret's value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FindingsRecord {
    /// The agent.
    pub agent: String,
    /// When its last scan ran (the agent's clock).
    pub scanned_unix: i64,
    /// How many files it read.
    pub files_scanned: u32,
    /// Whether a limit cut it short.
    pub truncated: bool,
    /// Files it could not read, with why.
    pub unreadable: Vec<(String, String)>,
    /// Findings beyond what is kept per host (their count only).
    pub dropped: u32,
    /// The findings.
    pub findings: Vec<StoredFinding>,
}

/// One finding with its history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredFinding {
    /// The file, as the agent names it.
    pub file: String,
    /// Where in the file.
    pub location: String,
    /// The MCP server entry it belongs to (empty: none).
    pub server: String,
    /// Whose configuration the file is.
    pub client: String,
    /// The credential's kind.
    pub kind: String,
    /// The keyed fingerprint of its value.
    pub fingerprint: String,
    /// First reported.
    pub first_seen_unix: i64,
    /// Last reported.
    pub last_seen_unix: i64,
    /// When a scan first no longer found it; 0 while open.
    pub gone_unix: i64,
    /// When it was last found after not being there (first seen, or reopened); 0 in records
    /// from before it was kept (then `first_seen_unix`).
    #[serde(default)]
    pub opened_unix: i64,
}

/// The configuration store a control plane runs on. Its API is async whatever the backend:
/// etcd's client is async, and the embedded store runs each redb transaction (which blocks on
/// the disk) on the blocking pool, so no caller blocks a runtime thread or manages threads.
pub enum Store {
    /// One redb file in the data directory (one control plane).
    Embedded(Arc<embedded::Embedded>),
    /// An etcd cluster shared by several control-plane replicas.
    Etcd(Box<etcd::Etcd>),
}

/// Runs `call` on the embedded store on the blocking pool.
async fn blocking<T: Send + 'static, E: From<StoreError> + Send + 'static>(
    store: &Arc<embedded::Embedded>,
    call: impl FnOnce(&embedded::Embedded) -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || call(&store)).await {
        Ok(result) => result,
        Err(e) => Err(StoreError::Interrupted(e.to_string()).into()),
    }
}

impl Store {
    /// Opens (creating on first start) the embedded store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        embedded::Embedded::open(data_dir).map(|e| Store::Embedded(Arc::new(e)))
    }

    /// Reads the whole configuration.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        match self {
            Store::Embedded(s) => blocking(s, |s| s.load()).await,
            Store::Etcd(s) => s.load().await,
        }
    }

    /// Writes `changes` as configuration version `base + 1`, with their audit entries, in one
    /// transaction. Refused with [`StoreError::VersionMoved`] if the stored version is not
    /// `base`.
    pub async fn commit(&self, base: u64, changes: Vec<Change>, audit: Vec<AuditEntry>) -> Result<u64, StoreError> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.commit(base, &changes, &audit)).await,
            Store::Etcd(s) => s.commit(base, &changes, &audit).await,
        }
    }

    /// The newest `limit` audit entries, oldest first.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.audit(limit)).await,
            Store::Etcd(s) => s.audit(limit).await,
        }
    }

    /// Audit entries after sequence `after`, oldest first, at most `max`, with their sequence.
    pub async fn audit_after(&self, after: u64, max: usize) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.audit_after(after, max)).await,
            Store::Etcd(s) => s.audit_after(after, max).await,
        }
    }

    /// How far the findings' events were exported over OTLP (0: none).
    pub async fn findings_exported(&self) -> Result<u64, StoreError> {
        match self {
            Store::Embedded(s) => blocking(s, |s| s.findings_exported()).await,
            Store::Etcd(s) => s.findings_exported().await,
        }
    }

    /// Records that the findings' events up to `cursor` were exported.
    pub async fn set_findings_exported(&self, cursor: u64) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.set_findings_exported(cursor)).await,
            Store::Etcd(s) => s.set_findings_exported(cursor).await,
        }
    }

    /// The sequence of the last audit entry exported over OTLP (0: none).
    pub async fn audit_exported(&self) -> Result<u64, StoreError> {
        match self {
            Store::Embedded(s) => blocking(s, |s| s.audit_exported()).await,
            Store::Etcd(s) => s.audit_exported().await,
        }
    }

    /// Records that audit entries up to `sequence` were exported.
    pub async fn set_audit_exported(&self, sequence: u64) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.set_audit_exported(sequence)).await,
            Store::Etcd(s) => s.set_audit_exported(sequence).await,
        }
    }

    /// Records a new join token for `agent` (only the hash of its secret).
    pub async fn create_join_token(
        &self,
        id: &str,
        secret_hash: &[u8; 32],
        expires_unix: i64,
        agent: &str,
    ) -> Result<(), StoreError> {
        let record = JoinTokenRecord {
            secret_sha256: hex(secret_hash),
            expires_unix,
            used_by: None,
            agent: Some(agent.to_string()),
        };
        match self {
            Store::Embedded(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.create_join_token(&id, &record)).await
            }
            Store::Etcd(s) => s.create_join_token(id, &record).await,
        }
    }

    /// Checks a join token and, atomically, marks it used by `agent` and registers the agent, so
    /// a token can never admit two agents (not even through two replicas), an agent only with
    /// the token made for it, and never one whose id is registered already.
    /// Whether join token `id` would admit agent `agent` now, read only: checked before a CSR
    /// is signed, so a caller with a made-up token has nothing signed. Consuming it checks again
    /// in its transaction.
    pub async fn check_join_token(
        &self,
        id: &str,
        secret_hash: &[u8; 32],
        now_unix: i64,
        agent: &str,
    ) -> Result<(), JoinTokenError> {
        match self {
            Store::Embedded(s) => {
                let (id, hash, agent) = (id.to_string(), *secret_hash, agent.to_string());
                blocking(s, move |s| s.check_join_token(&id, &hash, now_unix, &agent)).await
            }
            Store::Etcd(s) => s.check_join_token(id, secret_hash, now_unix, agent).await,
        }
    }

    pub async fn consume_join_token(
        &self,
        id: &str,
        secret_hash: &[u8; 32],
        now_unix: i64,
        agent: &AgentRecord,
    ) -> Result<(), JoinTokenError> {
        match self {
            Store::Embedded(s) => {
                let (id, hash, agent) = (id.to_string(), *secret_hash, agent.clone());
                blocking(s, move |s| s.consume_join_token(&id, &hash, now_unix, &agent)).await
            }
            Store::Etcd(s) => s.consume_join_token(id, secret_hash, now_unix, agent).await,
        }
    }

    /// Registers an agent an attestation admitted (`agent.attested` is set), in one
    /// transaction: a new id, or one the same rule admitted with an older token, whose record
    /// (and so whose certificates) this one replaces ([`attested_may_replace`]). Whether it
    /// replaced one.
    ///
    /// `skew` is the issuer's clock skew, in seconds: a token must be issued more than that
    /// after a deletion, as its issuer's clock may run ahead of ours.
    pub async fn register_attested_agent(&self, agent: &AgentRecord, skew: i64) -> Result<bool, JoinTokenError> {
        // Only a record an attestation admitted takes an id this way.
        let Some(attested) = agent.attested.clone() else { return Err(JoinTokenError::NotAttested(agent.id.clone())) };
        match self {
            Store::Embedded(s) => {
                let agent = agent.clone();
                blocking(s, move |s| s.register_attested_agent(&agent, &attested, skew)).await
            }
            Store::Etcd(s) => s.register_attested_agent(agent, &attested, skew).await,
        }
    }

    /// Removes agent `id` if it is [`AgentRecord::departed`] (`expired_before`, `now_unix`: unix
    /// seconds), in one transaction (a join or renewal since keeps it); whether it did. Such an
    /// agent is gone with its pod or node, or joins again by itself with a newer token.
    pub async fn forget_expired_agent(&self, id: &str, expired_before: i64, now_unix: i64) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.forget_expired_agent(&id, expired_before, now_unix)).await
            }
            Store::Etcd(s) => s.forget_expired_agent(id, expired_before, now_unix).await,
        }
    }

    /// Records the certificate a renewal issued to agent `id`, if it still holds the one it
    /// renewed with (`presented`, hex serial), in one transaction; whether it did (a deleted or
    /// replaced agent is not written back).
    pub async fn renew_agent(
        &self,
        id: &str,
        presented: &str,
        renewal: Renewal,
        now_unix: i64,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(s) => {
                let (id, presented) = (id.to_string(), presented.to_string());
                blocking(s, move |s| s.renew_agent(&id, &presented, renewal, now_unix)).await
            }
            Store::Etcd(s) => s.renew_agent(id, presented, renewal, now_unix).await,
        }
    }

    /// Every registered agent.
    pub async fn agents(&self) -> Result<BTreeMap<String, AgentRecord>, StoreError> {
        match self {
            Store::Embedded(s) => blocking(s, |s| s.agents()).await,
            Store::Etcd(s) => s.agents().await,
        }
    }

    /// One registered agent.
    pub async fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        match self {
            Store::Embedded(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.agent(&id)).await
            }
            Store::Etcd(s) => s.agent(id).await,
        }
    }

    /// Removes an agent from the registry: its certificates are refused from then on. An agent
    /// that joined with an attestation comes back only with a token issued after `now_unix`.
    /// Whether it was registered.
    pub async fn delete_agent(&self, id: &str, now_unix: i64) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.delete_agent(&id, now_unix)).await
            }
            Store::Etcd(s) => s.delete_agent(id, now_unix).await,
        }
    }

    /// The certificates issued to operator `name`.
    pub async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        match self {
            Store::Embedded(s) => {
                let name = name.to_string();
                blocking(s, move |s| s.operator(&name)).await
            }
            Store::Etcd(s) => s.operator(name).await,
        }
    }

    /// Records a certificate issued to operator `name` (forgetting its expired ones).
    pub async fn operator_issued(
        &self,
        name: &str,
        serial: &str,
        not_after_unix: i64,
        now_unix: i64,
    ) -> Result<(), StoreError> {
        let mut record =
            self.operator(name).await?.unwrap_or_else(|| OperatorRecord { name: name.into(), ..Default::default() });
        record.certificates.retain(|c| c.not_after_unix > now_unix);
        record.certificates.push(IssuedSerial { serial: serial.into(), not_after_unix });
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.put_operator(&record)).await,
            Store::Etcd(s) => s.put_operator(&record).await,
        }
    }

    /// Revokes every certificate of operator `name`; whether it had any.
    pub async fn delete_operator(&self, name: &str) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(s) => {
                let name = name.to_string();
                blocking(s, move |s| s.delete_operator(&name)).await
            }
            Store::Etcd(s) => s.delete_operator(name).await,
        }
    }

    /// What the last scan of `agent`'s host found.
    pub async fn findings_of(&self, agent: &str) -> Result<Option<FindingsRecord>, StoreError> {
        match self {
            Store::Embedded(s) => {
                let agent = agent.to_string();
                blocking(s, move |s| s.findings_of(&agent)).await
            }
            Store::Etcd(s) => s.findings_of(agent).await,
        }
    }

    /// Every host's findings.
    pub async fn findings(&self) -> Result<Vec<FindingsRecord>, StoreError> {
        match self {
            Store::Embedded(s) => blocking(s, |s| s.findings()).await,
            Store::Etcd(s) => s.findings().await,
        }
    }

    /// Stores a host's findings, replacing what was stored for it.
    pub async fn put_findings(&self, record: FindingsRecord) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.put_findings(&record)).await,
            Store::Etcd(s) => s.put_findings(&record).await,
        }
    }

    /// The definitions seen for one server's `kind` `name`.
    pub async fn definitions_of(&self, key: &str) -> Result<Option<DefinitionsRecord>, StoreError> {
        match self {
            Store::Embedded(s) => {
                let key = key.to_string();
                blocking(s, move |s| s.definitions_of(&key)).await
            }
            Store::Etcd(s) => s.definitions_of(key).await,
        }
    }

    /// Every definition seen, of one server or (empty) all.
    pub async fn definitions(&self, server: &str) -> Result<Vec<DefinitionsRecord>, StoreError> {
        let prefix = if server.is_empty() { String::new() } else { format!("{server}/") };
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.definitions(&prefix)).await,
            Store::Etcd(s) => s.definitions(&prefix).await,
        }
    }

    /// How many names have definitions stored for `server` (their keys counted, not read).
    pub async fn definitions_count(&self, server: &str) -> Result<usize, StoreError> {
        let prefix = format!("{server}/");
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.definitions_count(&prefix)).await,
            Store::Etcd(s) => s.definitions_count(&prefix).await,
        }
    }

    /// Forgets every definition seen of `server` (it was deleted); how many names there were.
    pub async fn delete_definitions(&self, server: &str) -> Result<usize, StoreError> {
        let prefix = format!("{server}/");
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.delete_definitions(&prefix)).await,
            Store::Etcd(s) => s.delete_definitions(&prefix).await,
        }
    }

    /// Stores one name's definitions, replacing what was stored for it.
    pub async fn put_definitions(&self, record: DefinitionsRecord) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.put_definitions(&record)).await,
            Store::Etcd(s) => s.put_definitions(&record).await,
        }
    }

    /// Agent streams published by every replica (none on the embedded store: there is one).
    pub async fn presence(&self) -> Result<Vec<PresenceRecord>, StoreError> {
        match self {
            Store::Embedded(_) => Ok(Vec::new()),
            Store::Etcd(etcd) => etcd.presence().await,
        }
    }
}

/// Checks a join token record against a presented secret.
pub(crate) fn check_join_token(
    id: &str,
    record: &JoinTokenRecord,
    secret_hash: &[u8; 32],
    now_unix: i64,
    agent: &str,
) -> Result<(), JoinTokenError> {
    let stored = unhex(&record.secret_sha256).ok_or_else(|| corrupt(id, "bad hash"))?;
    if !warden_core::identity::digests_equal(&stored, secret_hash) {
        return Err(JoinTokenError::Invalid);
    }
    if let Some(by) = &record.used_by {
        return Err(JoinTokenError::Used(by.clone()));
    }
    if now_unix >= record.expires_unix {
        return Err(JoinTokenError::Expired(record.expires_unix));
    }
    if record.agent.as_deref() != Some(agent) {
        return Err(JoinTokenError::WrongAgent(agent.to_string()));
    }
    Ok(())
}

/// Whether an attested join of agent `id` with `attested` may take the id from `existing`:
/// when no agent has it, if no operator deleted it after the token was issued (`floor`, with
/// the issuer's clock `skew`); when
/// one has, only if the same rule admitted it with a token issued earlier. A token joins once,
/// a deleted agent needs a token issued after the deletion, and a pod's token cannot take over
/// an agent that joined with a join token.
pub(crate) fn attested_may_replace(
    existing: Option<&AgentRecord>,
    floor: Option<i64>,
    skew: i64,
    id: &str,
    attested: &Attested,
) -> Result<(), JoinTokenError> {
    if floor.is_some_and(|deleted| attested.issued_at <= deleted.saturating_add(skew)) {
        return Err(JoinTokenError::Replayed(id.to_string()));
    }
    let Some(existing) = existing else { return Ok(()) };
    match &existing.attested {
        Some(before) if before.rule == attested.rule && before.issued_at < attested.issued_at => Ok(()),
        Some(before) if before.rule == attested.rule => Err(JoinTokenError::Replayed(id.to_string())),
        _ => Err(JoinTokenError::NotAttested(id.to_string())),
    }
}

/// Whether a token the issuer says it issued at `issued_at` has expired for sure at `now_unix`:
/// no issuer's tokens live longer than the lifetime ceiling, and none is accepted more than the
/// largest clock skew past its expiry.
pub(crate) fn token_expired(issued_at: i64, now_unix: i64) -> bool {
    let life = warden_core::issuer::MAX_TOKEN_LIFETIME_CEILING.0 + warden_core::issuer::CLOCK_SKEW_CEILING.0;
    now_unix > issued_at.saturating_add(life.as_secs() as i64)
}

/// Whether the deletion floor set at `floor` can be forgotten at `now_unix`: every token it
/// refuses has expired. The floor refuses tokens issued up to a clock skew after it
/// ([`attested_may_replace`]), and those live a lifetime and a skew more.
pub(crate) fn floor_expired(floor: i64, now_unix: i64) -> bool {
    now_unix > floor.saturating_add(floor_life())
}

/// Seconds a deletion floor is kept: see [`floor_expired`].
pub(crate) fn floor_life() -> i64 {
    let skew = warden_core::issuer::CLOCK_SKEW_CEILING.0;
    (warden_core::issuer::MAX_TOKEN_LIFETIME_CEILING.0 + skew + skew).as_secs() as i64
}

/// A stored resource record, decoded. Stored documents were admitted when written; only their
/// shape is checked again.
pub(crate) fn decode_resource(key: &str, bytes: &[u8]) -> Result<LoadedResource, StoreError> {
    let record: ResourceRecord = serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))?;
    let document = Document::from_json(record.document, &warden_core::Admission::from_control_plane())
        .map_err(|e| corrupt(key, e))?;
    Ok(LoadedResource { resource_version: record.resource_version, document })
}

/// The record stored for a resource's canonical JSON at `version`.
pub(crate) fn encode_resource(key: &ResourceKey, json: &[u8], version: u64) -> Result<Vec<u8>, StoreError> {
    let document: serde_json::Value = serde_json::from_slice(json).map_err(|e| corrupt(&key.to_string(), e))?;
    Ok(serde_json::to_vec(&ResourceRecord { resource_version: version, document }).expect("records serialize"))
}

pub(crate) fn corrupt(key: &str, message: impl ToString) -> StoreError {
    StoreError::Corrupt { key: key.to_string(), message: message.to_string() }
}

pub(crate) fn resource_key_text(key: &ResourceKey) -> String {
    format!("{}/{}", key.kind, key.name)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
