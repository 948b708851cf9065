//! The embedded durable store (redb): resources, the configuration version, join tokens,
//! registered agents and the audit trail, in one file in the data directory.
//!
//! Every method is synchronous and short; async callers run writes on the blocking pool.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use warden_core::{Admission, Document, ResourceKey};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
const JOIN_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("join_tokens");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const ISSUER_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("issuer_keys");

const META_STORE_ID: &str = "store_id";
const META_VERSION: &str = "version";
/// The last audit entry delivered to the OTLP receiver.
const META_AUDIT_EXPORTED: &str = "audit_exported";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database itself failed.
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    /// A stored record does not decode; the store was written by something else.
    #[error("store record {key}: {message}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Another writer moved the version on (never expected on one node; the etcd store will
    /// meet it).
    #[error("configuration version moved from {expected} to {found} during the write")]
    VersionMoved {
        /// The version the write was based on.
        expected: u64,
        /// The stored version.
        found: u64,
    },
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
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A resource as stored.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceRecord {
    resource_version: u64,
    document: serde_json::Value,
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
}

/// One change in a write.
pub enum Change<'a> {
    /// Create or replace a resource.
    Put {
        /// Which.
        key: &'a ResourceKey,
        /// Its canonical JSON.
        json: &'a [u8],
    },
    /// Remove a resource.
    Delete(&'a ResourceKey),
    /// Store an issuer's fetched keys.
    PutKeys {
        /// The issuer's name.
        issuer: &'a str,
        /// The keys.
        record: &'a KeyRecord,
    },
    /// Forget an issuer's fetched keys.
    DeleteKeys(&'a str),
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
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinTokenRecord {
    secret_sha256: String,
    expires_unix: i64,
    used_by: Option<String>,
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
}

/// The embedded store.
pub struct Store {
    db: Database,
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

fn corrupt(key: &str, message: impl ToString) -> StoreError {
    StoreError::Corrupt { key: key.to_string(), message: message.to_string() }
}

fn resource_key_text(key: &ResourceKey) -> String {
    format!("{}/{}", key.kind, key.name)
}

impl Store {
    /// Opens (creating on first start) `warden.redb` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let db = Database::create(data_dir.join("warden.redb")).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            if meta.get(META_STORE_ID).map_err(db_err)?.is_none() {
                let id = format!("{:032x}", rand::random::<u128>());
                meta.insert(META_STORE_ID, id.as_bytes()).map_err(db_err)?;
                meta.insert(META_VERSION, 0u64.to_be_bytes().as_slice()).map_err(db_err)?;
            }
            txn.open_table(RESOURCES).map_err(db_err)?;
            txn.open_table(JOIN_TOKENS).map_err(db_err)?;
            txn.open_table(AGENTS).map_err(db_err)?;
            txn.open_table(AUDIT).map_err(db_err)?;
            txn.open_table(ISSUER_KEYS).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Store { db })
    }

    /// Reads the whole configuration.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let store_id = meta
            .get(META_STORE_ID)
            .map_err(db_err)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned())
            .ok_or_else(|| corrupt(META_STORE_ID, "missing"))?;
        let version = read_version(&meta)?;
        let table = txn.open_table(RESOURCES).map_err(db_err)?;
        let mut resources = BTreeMap::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let key_text = k.value();
            let record: ResourceRecord = serde_json::from_slice(v.value()).map_err(|e| corrupt(key_text, e))?;
            // Stored documents were admitted when written; only their shape is checked again.
            let document = Document::from_json(record.document, &Admission::from_control_plane())
                .map_err(|e| corrupt(key_text, e))?;
            resources.insert(document.key(), LoadedResource { resource_version: record.resource_version, document });
        }
        let table = txn.open_table(ISSUER_KEYS).map_err(db_err)?;
        let mut keys = BTreeMap::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let record: KeyRecord = serde_json::from_slice(v.value()).map_err(|e| corrupt(k.value(), e))?;
            keys.insert(k.value().to_string(), record);
        }
        Ok(Loaded { store_id, version, resources, keys })
    }

    /// Writes `changes` as configuration version `base + 1`, with their audit entries, in one
    /// transaction. Refused if the stored version is not `base`.
    pub fn commit(&self, base: u64, changes: &[Change<'_>], audit: &[AuditEntry]) -> Result<u64, StoreError> {
        let next = base + 1;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let found = read_version(&meta)?;
            if found != base {
                return Err(StoreError::VersionMoved { expected: base, found });
            }
            meta.insert(META_VERSION, next.to_be_bytes().as_slice()).map_err(db_err)?;
            let mut table = txn.open_table(RESOURCES).map_err(db_err)?;
            let mut keys = txn.open_table(ISSUER_KEYS).map_err(db_err)?;
            for change in changes {
                match change {
                    Change::Put { key, json } => {
                        let document: serde_json::Value =
                            serde_json::from_slice(json).map_err(|e| corrupt(&key.to_string(), e))?;
                        let record = ResourceRecord { resource_version: next, document };
                        let bytes = serde_json::to_vec(&record).expect("records serialize");
                        table.insert(resource_key_text(key).as_str(), bytes.as_slice()).map_err(db_err)?;
                    }
                    Change::Delete(key) => {
                        table.remove(resource_key_text(key).as_str()).map_err(db_err)?;
                    }
                    Change::PutKeys { issuer, record } => {
                        let record = KeyRecord { version: next, ..(*record).clone() };
                        let bytes = serde_json::to_vec(&record).expect("records serialize");
                        keys.insert(*issuer, bytes.as_slice()).map_err(db_err)?;
                    }
                    Change::DeleteKeys(issuer) => {
                        keys.remove(*issuer).map_err(db_err)?;
                    }
                }
            }
            let mut log = txn.open_table(AUDIT).map_err(db_err)?;
            let first = log.last().map_err(db_err)?.map(|(k, _)| k.value() + 1).unwrap_or(1);
            for (seq, entry) in (first..).zip(audit) {
                let bytes = serde_json::to_vec(entry).expect("audit entries serialize");
                log.insert(seq, bytes.as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(next)
    }

    /// The newest `limit` audit entries, oldest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let log = txn.open_table(AUDIT).map_err(db_err)?;
        let mut out = Vec::new();
        for row in log.iter().map_err(db_err)?.rev().take(limit) {
            let (k, v) = row.map_err(db_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| corrupt(&k.value().to_string(), e))?);
        }
        out.reverse();
        Ok(out)
    }

    /// Audit entries after sequence `after`, oldest first, at most `max`, with their sequence.
    pub fn audit_after(&self, after: u64, max: usize) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let log = txn.open_table(AUDIT).map_err(db_err)?;
        let mut out = Vec::new();
        for row in log.range(after.saturating_add(1)..).map_err(db_err)?.take(max) {
            let (k, v) = row.map_err(db_err)?;
            let entry = serde_json::from_slice(v.value()).map_err(|e| corrupt(&k.value().to_string(), e))?;
            out.push((k.value(), entry));
        }
        Ok(out)
    }

    /// The sequence of the last audit entry exported over OTLP (0: none).
    pub fn audit_exported(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let value = meta.get(META_AUDIT_EXPORTED).map_err(db_err)?;
        Ok(value.and_then(|v| v.value().try_into().ok()).map_or(0, u64::from_be_bytes))
    }

    /// Records that audit entries up to `sequence` were exported.
    pub fn set_audit_exported(&self, sequence: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(META)
            .map_err(db_err)?
            .insert(META_AUDIT_EXPORTED, sequence.to_be_bytes().as_slice())
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Records a new join token (only the hash of its secret).
    pub fn create_join_token(&self, id: &str, secret_hash: &[u8; 32], expires_unix: i64) -> Result<(), StoreError> {
        let record = JoinTokenRecord { secret_sha256: hex(secret_hash), expires_unix, used_by: None };
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(JOIN_TOKENS).map_err(db_err)?;
            table.insert(id, serde_json::to_vec(&record).expect("serializes").as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Checks a join token and, in the same transaction, marks it used by `agent` and registers
    /// the agent, so a token can never admit two agents.
    pub fn consume_join_token(
        &self,
        id: &str,
        secret_hash: &[u8; 32],
        now_unix: i64,
        agent: &AgentRecord,
    ) -> Result<(), JoinTokenError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(JOIN_TOKENS).map_err(db_err)?;
            let mut record: JoinTokenRecord = match table.get(id).map_err(db_err)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(|e| corrupt(id, e))?,
                None => return Err(JoinTokenError::Invalid),
            };
            let stored = unhex(&record.secret_sha256).ok_or_else(|| corrupt(id, "bad hash"))?;
            if !warden_core::identity::digests_equal(&stored, secret_hash) {
                return Err(JoinTokenError::Invalid);
            }
            if let Some(by) = record.used_by {
                return Err(JoinTokenError::Used(by));
            }
            if now_unix >= record.expires_unix {
                return Err(JoinTokenError::Expired(record.expires_unix));
            }
            record.used_by = Some(agent.id.clone());
            table.insert(id, serde_json::to_vec(&record).expect("serializes").as_slice()).map_err(db_err)?;
            let mut agents = txn.open_table(AGENTS).map_err(db_err)?;
            agents
                .insert(agent.id.as_str(), serde_json::to_vec(agent).expect("serializes").as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(())
    }

    /// Updates a registered agent (e.g. after a certificate renewal).
    pub fn put_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut agents = txn.open_table(AGENTS).map_err(db_err)?;
            agents
                .insert(agent.id.as_str(), serde_json::to_vec(agent).expect("serializes").as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Every registered agent.
    pub fn agents(&self) -> Result<BTreeMap<String, AgentRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(AGENTS).map_err(db_err)?;
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let record: AgentRecord = serde_json::from_slice(v.value()).map_err(|e| corrupt(k.value(), e))?;
            out.insert(record.id.clone(), record);
        }
        Ok(out)
    }
}

fn read_version(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<u64, StoreError> {
    let v = meta.get(META_VERSION).map_err(db_err)?.ok_or_else(|| corrupt(META_VERSION, "missing"))?;
    let bytes: [u8; 8] = v.value().try_into().map_err(|_| corrupt(META_VERSION, "not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
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
