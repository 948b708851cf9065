//! The embedded store (redb): resources, the configuration version, join tokens, registered
//! agents and the audit trail, in one file in the data directory. The default for one node.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    AgentRecord, Attested, AuditEntry, Change, DefinitionsRecord, FindingsRecord, JoinTokenError, JoinTokenRecord,
    KeyRecord, Loaded, OperatorRecord, StoreError, corrupt, resource_key_text,
};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
const JOIN_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("join_tokens");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const OPERATORS: TableDefinition<&str, &[u8]> = TableDefinition::new("operators");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const ISSUER_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("issuer_keys");
const FINDINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("findings");
const DEFINITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("definitions");
/// Attested agents deleted by an operator, with the time of the deletion: tokens issued before
/// it do not bring them back ([`super::attested_may_replace`]).
const ATTESTATION_FLOORS: TableDefinition<&str, i64> = TableDefinition::new("attestation_floors");

const META_STORE_ID: &str = "store_id";
const META_VERSION: &str = "version";
/// The last audit entry delivered to the OTLP receiver.
const META_AUDIT_EXPORTED: &str = "audit_exported";
const META_FINDINGS_EXPORTED: &str = "findings_exported";

/// The embedded store: one redb file in the data directory.
pub struct Embedded {
    db: Database,
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

impl Embedded {
    /// Opens (creating on first start) `warden.redb` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Embedded, StoreError> {
        // The configuration is read whole at start and held in memory: a small page cache is
        // enough (redb's default reaches 1 GiB).
        let db = Database::builder()
            .set_cache_size(16 * 1024 * 1024)
            .create(data_dir.join("warden.redb"))
            .map_err(db_err)?;
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
            txn.open_table(OPERATORS).map_err(db_err)?;
            txn.open_table(AUDIT).map_err(db_err)?;
            txn.open_table(ISSUER_KEYS).map_err(db_err)?;
            txn.open_table(FINDINGS).map_err(db_err)?;
            txn.open_table(DEFINITIONS).map_err(db_err)?;
            txn.open_table(ATTESTATION_FLOORS).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Embedded { db })
    }

    /// Reads the whole configuration.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let store_id = read_store_id(&meta)?;
        let version = read_version(&meta)?;
        let table = txn.open_table(RESOURCES).map_err(db_err)?;
        let mut resources = BTreeMap::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let resource = super::decode_resource(k.value(), v.value())?;
            resources.insert(resource.document.key(), resource);
        }
        let table = txn.open_table(ISSUER_KEYS).map_err(db_err)?;
        let mut keys = BTreeMap::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let record: KeyRecord = serde_json::from_slice(v.value()).map_err(|e| corrupt(k.value(), e))?;
            keys.insert(k.value().to_string(), record);
        }
        Ok(Loaded { store_id, version, resources, keys, revision: 0 })
    }

    /// Writes `changes` as configuration version `base + 1`, with their audit entries, in one
    /// transaction. Refused if the stored version is not `base`.
    pub fn commit(&self, base: u64, changes: &[Change], audit: &[AuditEntry]) -> Result<u64, StoreError> {
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
                        let bytes = super::encode_resource(key, json, next)?;
                        table.insert(resource_key_text(key).as_str(), bytes.as_slice()).map_err(db_err)?;
                    }
                    Change::Delete(key) => {
                        table.remove(resource_key_text(key).as_str()).map_err(db_err)?;
                    }
                    Change::PutKeys { issuer, record } => {
                        let record = KeyRecord { version: next, ..(*record).clone() };
                        let bytes = serde_json::to_vec(&record).expect("records serialize");
                        keys.insert(issuer.as_str(), bytes.as_slice()).map_err(db_err)?;
                    }
                    Change::DeleteKeys(issuer) => {
                        keys.remove(issuer.as_str()).map_err(db_err)?;
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
        self.cursor(META_AUDIT_EXPORTED)
    }

    /// Records that audit entries up to `sequence` were exported.
    pub fn set_audit_exported(&self, sequence: u64) -> Result<(), StoreError> {
        self.set_cursor(META_AUDIT_EXPORTED, sequence)
    }

    /// How far the findings' events were exported over OTLP (0: none).
    pub fn findings_exported(&self) -> Result<u64, StoreError> {
        self.cursor(META_FINDINGS_EXPORTED)
    }

    /// Records that the findings' events up to `cursor` were exported.
    pub fn set_findings_exported(&self, cursor: u64) -> Result<(), StoreError> {
        self.set_cursor(META_FINDINGS_EXPORTED, cursor)
    }

    fn cursor(&self, name: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let value = meta.get(name).map_err(db_err)?;
        Ok(value.and_then(|v| v.value().try_into().ok()).map_or(0, u64::from_be_bytes))
    }

    fn set_cursor(&self, name: &str, value: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?.insert(name, value.to_be_bytes().as_slice()).map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Everything, in one read transaction.
    pub fn dump(&self) -> Result<super::Dump, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let rows = |table: TableDefinition<&str, &[u8]>| -> Result<Vec<(String, Vec<u8>)>, StoreError> {
            let table = txn.open_table(table).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                out.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(out)
        };
        let (resources, keys, join_tokens, agents, findings, definitions, operators) = (
            rows(RESOURCES)?,
            rows(ISSUER_KEYS)?,
            rows(JOIN_TOKENS)?,
            rows(AGENTS)?,
            rows(FINDINGS)?,
            rows(DEFINITIONS)?,
            rows(OPERATORS)?,
        );
        let mut attestation_floors = Vec::new();
        for row in txn.open_table(ATTESTATION_FLOORS).map_err(db_err)?.iter().map_err(db_err)? {
            let (id, deleted_at) = row.map_err(db_err)?;
            attestation_floors.push((id.value().to_string(), deleted_at.value()));
        }
        let meta = txn.open_table(META).map_err(db_err)?;
        let store_id = read_store_id(&meta)?;
        let version = read_version(&meta)?;
        let exported = meta
            .get(META_AUDIT_EXPORTED)
            .map_err(db_err)?
            .and_then(|v| v.value().try_into().ok())
            .map_or(0, u64::from_be_bytes);
        let log = txn.open_table(AUDIT).map_err(db_err)?;
        let (mut audit, mut audit_exported) = (Vec::new(), 0);
        for row in log.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            audit.push(serde_json::from_slice(v.value()).map_err(|e| corrupt(&k.value().to_string(), e))?);
            if k.value() <= exported {
                audit_exported = audit.len();
            }
        }
        let findings_exported = meta
            .get(META_FINDINGS_EXPORTED)
            .map_err(db_err)?
            .and_then(|v| v.value().try_into().ok())
            .map_or(0, u64::from_be_bytes);
        Ok(super::Dump {
            findings_exported,
            store_id,
            version,
            resources,
            keys,
            audit,
            audit_exported,
            join_tokens,
            agents,
            findings,
            definitions,
            operators,
            attestation_floors,
        })
    }

    /// Records a new join token (only the hash of its secret).
    pub(crate) fn create_join_token(&self, id: &str, record: &JoinTokenRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(JOIN_TOKENS).map_err(db_err)?;
            table.insert(id, serde_json::to_vec(&record).expect("serializes").as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Checks a join token and, in the same transaction, marks it used by `agent` and registers
    /// the agent, so a token can never admit two agents.
    /// Whether join token `id` would admit agent `agent` now (read only; consuming it checks
    /// again in its transaction).
    pub fn check_join_token(
        &self,
        id: &str,
        secret_hash: &[u8; 32],
        now_unix: i64,
        agent: &str,
    ) -> Result<(), JoinTokenError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(JOIN_TOKENS).map_err(db_err)?;
        let record: JoinTokenRecord = match table.get(id).map_err(db_err)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| corrupt(id, e))?,
            None => return Err(JoinTokenError::Invalid),
        };
        super::check_join_token(id, &record, secret_hash, now_unix, agent)
    }

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
            super::check_join_token(id, &record, secret_hash, now_unix, &agent.id)?;
            let mut agents = txn.open_table(AGENTS).map_err(db_err)?;
            if agents.get(agent.id.as_str()).map_err(db_err)?.is_some() {
                return Err(JoinTokenError::AgentExists(agent.id.clone()));
            }
            record.used_by = Some(agent.id.clone());
            table.insert(id, serde_json::to_vec(&record).expect("serializes").as_slice()).map_err(db_err)?;
            agents
                .insert(agent.id.as_str(), serde_json::to_vec(agent).expect("serializes").as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(())
    }

    /// Registers an attested agent, replacing the record of one its rule admitted before.
    pub fn register_attested_agent(
        &self,
        agent: &AgentRecord,
        attested: &Attested,
        skew: i64,
    ) -> Result<bool, JoinTokenError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let replaced = {
            let mut agents = txn.open_table(AGENTS).map_err(db_err)?;
            let existing: Option<AgentRecord> = match agents.get(agent.id.as_str()).map_err(db_err)? {
                Some(v) => Some(serde_json::from_slice(v.value()).map_err(|e| corrupt(&agent.id, e))?),
                None => None,
            };
            let floors = txn.open_table(ATTESTATION_FLOORS).map_err(db_err)?;
            let floor = floors.get(agent.id.as_str()).map_err(db_err)?.map(|v| v.value());
            super::attested_may_replace(existing.as_ref(), floor, skew, &agent.id, attested)?;
            agents
                .insert(agent.id.as_str(), serde_json::to_vec(agent).expect("serializes").as_slice())
                .map_err(db_err)?;
            existing.is_some()
        };
        txn.commit().map_err(db_err)?;
        Ok(replaced)
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

    /// One registered agent.
    pub fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(AGENTS).map_err(db_err)?;
        let Some(v) = table.get(id).map_err(db_err)? else { return Ok(None) };
        Ok(Some(serde_json::from_slice(v.value()).map_err(|e| corrupt(id, e))?))
    }

    /// The certificates issued to operator `name`.
    pub fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(OPERATORS).map_err(db_err)?;
        let Some(v) = table.get(name).map_err(db_err)? else { return Ok(None) };
        Ok(Some(serde_json::from_slice(v.value()).map_err(|e| corrupt(name, e))?))
    }

    /// Stores an operator's certificates.
    pub fn put_operator(&self, record: &OperatorRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(OPERATORS).map_err(db_err)?;
            let bytes = serde_json::to_vec(record).expect("serializes");
            table.insert(record.name.as_str(), bytes.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Forgets an operator's certificates; whether it had any.
    pub fn delete_operator(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let removed = txn.open_table(OPERATORS).map_err(db_err)?.remove(name).map_err(db_err)?.is_some();
        txn.commit().map_err(db_err)?;
        Ok(removed)
    }

    /// What the last scan of `agent`'s host found.
    pub fn findings_of(&self, agent: &str) -> Result<Option<FindingsRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(FINDINGS).map_err(db_err)?;
        let Some(v) = table.get(agent).map_err(db_err)? else { return Ok(None) };
        Ok(Some(serde_json::from_slice(v.value()).map_err(|e| corrupt(agent, e))?))
    }

    /// Every host's findings.
    pub fn findings(&self) -> Result<Vec<FindingsRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(FINDINGS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| corrupt(k.value(), e))?);
        }
        Ok(out)
    }

    /// Stores a host's findings, replacing what was stored for it.
    pub fn put_findings(&self, record: &FindingsRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(FINDINGS).map_err(db_err)?;
            let bytes = serde_json::to_vec(record).expect("serializes");
            table.insert(record.agent.as_str(), bytes.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// The definitions seen for one `server/kind/name`.
    pub fn definitions_of(&self, key: &str) -> Result<Option<DefinitionsRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(DEFINITIONS).map_err(db_err)?;
        let Some(v) = table.get(key).map_err(db_err)? else { return Ok(None) };
        Ok(Some(serde_json::from_slice(v.value()).map_err(|e| corrupt(key, e))?))
    }

    /// The definitions seen under keys starting with `prefix`.
    pub fn definitions(&self, prefix: &str) -> Result<Vec<DefinitionsRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(DEFINITIONS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.range(prefix..).map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(serde_json::from_slice(v.value()).map_err(|e| corrupt(k.value(), e))?);
        }
        Ok(out)
    }

    /// How many keys start with `prefix`.
    pub fn definitions_count(&self, prefix: &str) -> Result<usize, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(DEFINITIONS).map_err(db_err)?;
        let mut count = 0;
        for row in table.range(prefix..).map_err(db_err)? {
            let (k, _) = row.map_err(db_err)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            count += 1;
        }
        Ok(count)
    }

    /// Stores one name's definitions.
    pub fn put_definitions(&self, record: &DefinitionsRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(DEFINITIONS).map_err(db_err)?;
            let bytes = serde_json::to_vec(record).expect("serializes");
            table.insert(record.key().as_str(), bytes.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Removes every record whose key starts with `prefix`; how many there were.
    pub fn delete_definitions(&self, prefix: &str) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let removed = {
            let mut table = txn.open_table(DEFINITIONS).map_err(db_err)?;
            let mut keys = Vec::new();
            for row in table.range(prefix..).map_err(db_err)? {
                let (k, _) = row.map_err(db_err)?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                keys.push(k.value().to_string());
            }
            for key in &keys {
                table.remove(key.as_str()).map_err(db_err)?;
            }
            keys.len()
        };
        txn.commit().map_err(db_err)?;
        Ok(removed)
    }

    /// Removes an agent from the registry; whether it was there.
    pub fn delete_agent(&self, id: &str, now_unix: i64) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let removed = {
            let mut agents = txn.open_table(AGENTS).map_err(db_err)?;
            let removed = agents.remove(id).map_err(db_err)?.is_some();
            let mut floors = txn.open_table(ATTESTATION_FLOORS).map_err(db_err)?;
            // Floors past every token's life say nothing any more.
            let stale: Vec<String> = floors
                .iter()
                .map_err(db_err)?
                .filter_map(|row| row.ok())
                .filter(|(_, floor)| super::floor_expired(floor.value(), now_unix))
                .map(|(id, _)| id.value().to_string())
                .collect();
            for stale in stale {
                floors.remove(stale.as_str()).map_err(db_err)?;
            }
            // Whatever the agent joined with, and even if it is not registered (forgotten, or
            // not joined yet): an attestation for the id must come after this.
            floors.insert(id, now_unix).map_err(db_err)?;
            removed
        };
        txn.commit().map_err(db_err)?;
        Ok(removed)
    }

    /// Removes an attested agent whose certificates all expired before `expired_before`.
    pub fn forget_expired_agent(&self, id: &str, expired_before: i64, now_unix: i64) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut agents = txn.open_table(AGENTS).map_err(db_err)?;
            let record: AgentRecord = match agents.get(id).map_err(db_err)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(|e| corrupt(id, e))?,
                None => return Ok(false),
            };
            if !record.departed(expired_before, now_unix) {
                return Ok(false);
            }
            agents.remove(id).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(true)
    }

    /// Records the certificate a renewal issued, if the agent still holds the one it renewed
    /// with (`presented`); in one transaction, so a renewal cannot write back a record an
    /// attested join or a deletion replaced since it was read.
    pub fn renew_agent(
        &self,
        id: &str,
        presented: &str,
        renewal: super::Renewal,
        now_unix: i64,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut agents = txn.open_table(AGENTS).map_err(db_err)?;
            let mut record: AgentRecord = match agents.get(id).map_err(db_err)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(|e| corrupt(id, e))?,
                None => return Ok(false),
            };
            if !record.accepts(presented, now_unix) || !record.renewed(renewal, now_unix) {
                return Ok(false);
            }
            agents.insert(id, serde_json::to_vec(&record).expect("serializes").as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(true)
    }
}

fn read_store_id(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<String, StoreError> {
    let v = meta.get(META_STORE_ID).map_err(db_err)?.ok_or_else(|| corrupt(META_STORE_ID, "missing"))?;
    Ok(String::from_utf8_lossy(v.value()).into_owned())
}

fn read_version(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<u64, StoreError> {
    let v = meta.get(META_VERSION).map_err(db_err)?.ok_or_else(|| corrupt(META_VERSION, "missing"))?;
    let bytes: [u8; 8] = v.value().try_into().map_err(|_| corrupt(META_VERSION, "not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}
