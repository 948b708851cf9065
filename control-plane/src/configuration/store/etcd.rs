//! The etcd store, shared by control-plane replicas. Everything lives under one key prefix
//! (`--etcd-prefix`, default `/warden`):
//!
//! | key                               | value                                                   |
//! |-----------------------------------|---------------------------------------------------------|
//! | `<prefix>/store-id`               | the store's identity, set once                          |
//! | `<prefix>/config/version`         | the configuration version (decimal)                     |
//! | `<prefix>/config/resources/<Kind>/<name>` | `{"resourceVersion", "document"}`               |
//! | `<prefix>/config/keys/<issuer>`   | an issuer's fetched keys                                |
//! | `<prefix>/audit/<version>`        | that version's write id and audit entries (zero-padded) |
//! | `<prefix>/audit-exported`         | the last audit sequence delivered over OTLP             |
//! | `<prefix>/join-tokens/<id>`       | a join token (hash of its secret, expiry, user)         |
//! | `<prefix>/agents/<id>`            | a registered agent                                      |
//! | `<prefix>/leader`                 | the replica doing singleton duties (on its lease)       |
//! | `<prefix>/presence/<cp>/<shard>`  | streams of the agents in that shard to replica `cp`, a JSON list (on `cp`'s lease) |
//!
//! A configuration write is one transaction guarded by `value(<prefix>/version) == base`: of two
//! replicas writing at once, one wins and the other is told [`StoreError::VersionMoved`] and
//! plans again. The version therefore orders configurations fleet-wide, whichever replica wrote
//! them, and an agent moving between replicas resumes from the version it holds.
//!
//! Every replica follows `<prefix>/config/` with a watch ([`Etcd::follow`]) and publishes what
//! the others wrote; after a compaction it cannot watch from, it reads everything again. Only
//! configuration lives under `config/`, so presence and registry churn never crowds the watch.
//!
//! This file holds the connection, the key layout and storage; what replicas coordinate
//! (leases, leader, presence) is in [`coordination`], following the others' writes in [`watch`].

mod coordination;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, SortOrder, SortTarget, TxnOp, TxnOpResponse,
};
use warden_tasks::Backoff;

pub use self::coordination::{PRESENCE_SHARDS, VersionsWrite, presence_shard};
pub use self::watch::{Committed, Followed};
use super::{
    AgentRecord, Attested, AuditEntry, Change, DefinitionsRecord, EtcdLimit, FindingsRecord, JoinTokenError,
    JoinTokenRecord, KeyRecord, Loaded, OperatorRecord, StoreError, corrupt, resource_key_text,
};

/// Audit entries of one version are numbered within it: sequence = version << 20 | index.
const AUDIT_INDEX_BITS: u32 = 20;

/// Largest answer read from etcd (a whole configuration, a watch catching up).
const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// Pacing of a store call retried within its deadline (elections, a member restarting).
const CALL_BACKOFF: Backoff = Backoff::new(Duration::from_millis(25), Duration::from_millis(500));

/// One version's audit record: the id of the write that made it (so a write retried after an
/// unanswered attempt can tell that the attempt succeeded) and its audit entries.
#[derive(serde::Serialize, serde::Deserialize)]
struct AuditRecord {
    write: String,
    entries: Vec<AuditEntry>,
}

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct Options {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// Key prefix of this fleet's data (no trailing slash).
    pub prefix: String,
    /// TLS to etcd: the CA that signed the members' certificates, and a client certificate and
    /// key when etcd asks for one.
    pub tls: Option<Tls>,
}

/// TLS settings for etcd (PEM files).
#[derive(Clone, Debug)]
pub struct Tls {
    /// CA certificate(s) that signed the members' certificates.
    pub ca: PathBuf,
    /// Client certificate and key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A `--store etcd://…` or `--etcd-prefix` that does not serve.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// Not an `etcd://` URL.
    #[error("{0:?}: expected etcd://host:port[,host:port…]")]
    Scheme(String),
    /// An endpoint that is not `host:port`.
    #[error("{0:?}: each etcd endpoint is host:port")]
    Endpoint(String),
    /// A prefix that does not start with `/` or names nothing.
    #[error("etcd prefix {0:?}: must start with / and name something")]
    Prefix(String),
}

impl Options {
    /// Parses `etcd://host:port[,host:port…]`.
    pub fn parse(url: &str, prefix: &str) -> Result<Options, OptionsError> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| OptionsError::Scheme(url.to_string()))?;
        let endpoints: Vec<String> = rest.trim_end_matches('/').split(',').map(|s| s.trim().to_string()).collect();
        if endpoints.iter().any(|e| e.is_empty() || !e.contains(':') || e.contains('/')) {
            return Err(OptionsError::Endpoint(url.to_string()));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.starts_with('/') || prefix.len() < 2 {
            return Err(OptionsError::Prefix(prefix.to_string()));
        }
        Ok(Options { endpoints, prefix: prefix.to_string(), tls: None })
    }
}

/// The etcd store.
pub struct Etcd {
    client: Client,
    prefix: String,
}

/// The store's error for `e`, telling etcd's request bounds apart (etcd says which only in its
/// message).
fn etcd_err(e: etcd_client::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("too many operations in txn request") {
        return StoreError::TooLarge(EtcdLimit::Operations);
    }
    if text.contains("request is too large") || text.contains("larger than max") {
        return StoreError::TooLarge(EtcdLimit::Bytes);
    }
    StoreError::Etcd(e)
}

/// How long a call keeps being retried while no etcd member can be reached.
const UNREACHABLE_RETRY_FOR: Duration = Duration::from_secs(5);

/// Runs `call` again while it fails because the member it went to cannot be reached: the
/// client balances over every endpoint and may pick one that just went away. Any other error
/// (or the member still unreachable after [`UNREACHABLE_RETRY_FOR`]) is returned. A call caught
/// in a leader election (etcd answers "request timed out" or "leader changed" only after its
/// election timeout, which may use up the whole deadline) is tried [`ELECTION_ATTEMPTS`] times
/// whatever the deadline. A call that never left because its endpoint refused the connection
/// is tried again at once, up to [`REFUSED_ATTEMPTS`] times whatever the deadline: the
/// balancer favours the least-loaded endpoint, and a dead member carries no load, so it keeps
/// being picked while elections use up the deadline. A write retried after it was in fact
/// applied meets the version guard and is planned again, which then finds nothing left to do.
async fn retrying<T, F: Future<Output = Result<T, etcd_client::Error>>>(
    mut call: impl FnMut() -> F,
) -> Result<T, etcd_client::Error> {
    let deadline = tokio::time::Instant::now() + UNREACHABLE_RETRY_FOR;
    let (mut attempts, mut refused, mut waits) = (0, 0, 0);
    loop {
        attempts += 1;
        match call().await {
            Err(e) if never_sent(&e) && refused < REFUSED_ATTEMPTS => {
                refused += 1;
                tracing::debug!(refused, "etcd: {e}; trying another endpoint");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e)
                if unreachable(&e)
                    && (tokio::time::Instant::now() + CALL_BACKOFF.ceiling(waits) < deadline
                        || attempts < ELECTION_ATTEMPTS) =>
            {
                tracing::debug!(attempts, "etcd: {e}; retrying");
                tokio::time::sleep(CALL_BACKOFF.ceiling(waits)).await;
                waits += 1;
            }
            result => return result,
        }
    }
}

/// Attempts of a call that keeps meeting an election, however long each took.
const ELECTION_ATTEMPTS: u32 = 3;

/// Calls refused a connection (each fails at once) tried before the deadline rule applies.
const REFUSED_ATTEMPTS: u32 = 20;

fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        // etcd's timeouts during an election are Unavailable ("request timed out", "leader
        // changed", "no leader"); a client deadline that passed is DeadlineExceeded.
        etcd_client::Error::GRpcStatus(status) => {
            matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded)
                || status.message().contains("leader changed")
                || status.message().contains("request timed out")
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// The call failed connecting, before any of it reached a member.
fn never_sent(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::Unavailable && status.message().contains("connect error"))
}

fn decimal(key: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).ok_or_else(|| corrupt(key, "not a decimal number"))
}

impl Etcd {
    /// Connects, without writing anything.
    pub async fn connect(options: &Options) -> Result<Etcd, StoreError> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let scheme = match &options.tls {
            Some(tls) => {
                let read = |path: &PathBuf| {
                    std::fs::read(path).map_err(|source| StoreError::EtcdFile { path: path.clone(), source })
                };
                let mut config =
                    etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
                if let Some((cert, key)) = &tls.identity {
                    config = config.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
                }
                connect = connect.with_tls(config);
                "https"
            }
            None => "http",
        };
        let endpoints: Vec<String> = options.endpoints.iter().map(|e| format!("{scheme}://{e}")).collect();
        let client = Client::connect(&endpoints, Some(connect)).await.map_err(etcd_err)?;
        Ok(Etcd { client, prefix: options.prefix.clone() })
    }

    /// Connects and, on the first start of a fleet, creates its store identity and version.
    pub async fn open(options: &Options) -> Result<Etcd, StoreError> {
        let store = Etcd::connect(options).await?;
        let id = format!("{:032x}", rand::random::<u128>());
        let first = etcd_client::Txn::new()
            .when([Compare::create_revision(store.key("store-id"), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(store.key("store-id"), id, None),
                TxnOp::put(store.key("config/version"), "0", None),
            ]);
        store.txn(first).await?;
        Ok(store)
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.client.kv_client().max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    async fn txn(&self, txn: etcd_client::Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        retrying(|| {
            let (mut kv, txn) = (self.kv(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(etcd_err)
    }

    async fn get(&self, key: String, options: Option<GetOptions>) -> Result<etcd_client::GetResponse, StoreError> {
        retrying(|| {
            let (mut kv, key, options) = (self.kv(), key.clone(), options.clone());
            async move { kv.get(key, options).await }
        })
        .await
        .map_err(etcd_err)
    }

    async fn put(&self, key: String, value: Vec<u8>) -> Result<(), StoreError> {
        retrying(|| {
            let (mut kv, key, value) = (self.kv(), key.clone(), value.clone());
            async move { kv.put(key, value, None).await }
        })
        .await
        .map_err(etcd_err)?;
        Ok(())
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    /// Deletes `key`; whether it was there.
    async fn delete(&self, key: String) -> Result<bool, StoreError> {
        let response = retrying(|| {
            let (mut kv, key) = (self.kv(), key.clone());
            async move { kv.delete(key, None).await }
        })
        .await
        .map_err(etcd_err)?;
        Ok(response.deleted() > 0)
    }

    /// The end of the range of keys starting with `<prefix>/<dir>/`.
    fn dir_end(&self, dir: &str) -> String {
        // '0' is the byte after '/'.
        format!("{}/{dir}0", self.prefix)
    }

    /// Reads the whole configuration, at one revision.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        let dir = |d: &str| TxnOp::get(self.key(&format!("{d}/")), Some(GetOptions::new().with_prefix()));
        let read = etcd_client::Txn::new().and_then([
            TxnOp::get(self.key("store-id"), None),
            TxnOp::get(self.key("config/version"), None),
            dir("config/resources"),
            dir("config/keys"),
        ]);
        let response = self.txn(read).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut results = response.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(g) => g,
            _ => unreachable!("a read-only transaction answers gets"),
        });
        let (Some(id), Some(version), Some(resources), Some(keys)) =
            (results.next(), results.next(), results.next(), results.next())
        else {
            return Err(corrupt(&self.prefix, "etcd answered fewer reads than asked"));
        };
        let store_id = id
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .ok_or_else(|| corrupt(&self.key("store-id"), "missing"))?;
        let version = match version.kvs().first() {
            Some(kv) => decimal(&self.key("config/version"), kv.value())?,
            None => return Err(corrupt(&self.key("config/version"), "missing")),
        };
        let mut loaded = Loaded { store_id, version, resources: BTreeMap::new(), keys: BTreeMap::new(), revision };
        for kv in resources.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let resource = super::decode_resource(&key, kv.value())?;
            loaded.resources.insert(resource.document.key(), resource);
        }
        for kv in keys.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let issuer = key.rsplit('/').next().unwrap_or_default().to_string();
            loaded.keys.insert(issuer, serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e))?);
        }
        Ok(loaded)
    }

    /// Writes `changes` as version `base + 1` in one transaction, if the version is still `base`.
    pub async fn commit(&self, base: u64, changes: &[Change], audit: &[AuditEntry]) -> Result<u64, StoreError> {
        let next = base + 1;
        let mut ops = vec![TxnOp::put(self.key("config/version"), next.to_string(), None)];
        for change in changes {
            ops.push(match change {
                Change::Put { key, json } => TxnOp::put(
                    self.key(&format!("config/resources/{}", resource_key_text(key))),
                    super::encode_resource(key, json, next)?,
                    None,
                ),
                Change::Delete(key) => {
                    TxnOp::delete(self.key(&format!("config/resources/{}", resource_key_text(key))), None)
                }
                Change::PutKeys { issuer, record } => {
                    let record = KeyRecord { version: next, ..(*record).clone() };
                    TxnOp::put(
                        self.key(&format!("config/keys/{issuer}")),
                        serde_json::to_vec(&record).expect("serializes"),
                        None,
                    )
                }
                Change::DeleteKeys(issuer) => TxnOp::delete(self.key(&format!("config/keys/{issuer}")), None),
            });
        }
        let write_id = format!("{:032x}", rand::random::<u128>());
        let audit_key = self.key(&format!("audit/{next:020}"));
        let record = AuditRecord { write: write_id.clone(), entries: audit.to_vec() };
        ops.push(TxnOp::put(audit_key.clone(), serde_json::to_vec(&record).expect("audit records serialize"), None));
        let write = etcd_client::Txn::new()
            .when([Compare::value(self.key("config/version"), CompareOp::Equal, base.to_string())])
            .and_then(ops)
            .or_else([TxnOp::get(self.key("config/version"), None), TxnOp::get(audit_key, None)]);
        let response = self.txn(write).await?;
        if response.succeeded() {
            return Ok(next);
        }
        let answers: Vec<etcd_client::GetResponse> = response
            .op_responses()
            .into_iter()
            .filter_map(|r| match r {
                TxnOpResponse::Get(g) => Some(g),
                _ => None,
            })
            .collect();
        // An attempt that got no answer (the member went away) may have been applied: then the
        // version it made carries its write id.
        let ours = answers
            .get(1)
            .and_then(|g| g.kvs().first())
            .is_some_and(|kv| serde_json::from_slice::<AuditRecord>(kv.value()).is_ok_and(|r| r.write == write_id));
        if ours {
            return Ok(next);
        }
        let found = match answers.first().and_then(|g| g.kvs().first()) {
            Some(kv) => decimal(&self.key("config/version"), kv.value())?,
            None => return Err(corrupt(&self.key("config/version"), "missing")),
        };
        Err(StoreError::VersionMoved { expected: base, found })
    }

    async fn audit_rows(&self, options: GetOptions, from: String) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
        let response = self.get(from, Some(options)).await?;
        let mut out = Vec::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let version = decimal(&key, key.rsplit('/').next().unwrap_or_default().as_bytes())?;
            let record: AuditRecord = serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e))?;
            out.extend(
                record.entries.into_iter().enumerate().map(|(i, e)| ((version << AUDIT_INDEX_BITS) | i as u64, e)),
            );
        }
        Ok(out)
    }

    /// The newest `limit` audit entries, oldest first.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        // Each version holds at least one entry: `limit` versions are enough.
        let options = GetOptions::new()
            .with_range(self.dir_end("audit"))
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit as i64);
        let mut rows = self.audit_rows(options, self.key("audit/")).await?;
        rows.sort_by_key(|(seq, _)| *seq);
        let skip = rows.len().saturating_sub(limit);
        Ok(rows.into_iter().skip(skip).map(|(_, e)| e).collect())
    }

    /// Audit entries after sequence `after`, oldest first, at most `max`, with their sequence.
    pub async fn audit_after(&self, after: u64, max: usize) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
        let from = self.key(&format!("audit/{:020}", after >> AUDIT_INDEX_BITS));
        let options = GetOptions::new().with_range(self.dir_end("audit")).with_limit(max as i64 + 1);
        let rows = self.audit_rows(options, from).await?;
        Ok(rows.into_iter().filter(|(seq, _)| *seq > after).take(max).collect())
    }

    /// The sequence of the last audit entry exported over OTLP (0: none).
    pub async fn audit_exported(&self) -> Result<u64, StoreError> {
        let key = self.key("audit-exported");
        let response = self.get(key.clone(), None).await?;
        response.kvs().first().map_or(Ok(0), |kv| decimal(&key, kv.value()))
    }

    /// Records that audit entries up to `sequence` were exported.
    pub async fn set_audit_exported(&self, sequence: u64) -> Result<(), StoreError> {
        let key = self.key("audit-exported");
        let value = sequence.to_string();
        self.put(key, value.into_bytes()).await?;
        Ok(())
    }

    /// How far the findings' events were exported over OTLP (0: none).
    pub async fn findings_exported(&self) -> Result<u64, StoreError> {
        let key = self.key("findings-exported");
        let response = self.get(key.clone(), None).await?;
        response.kvs().first().map_or(Ok(0), |kv| decimal(&key, kv.value()))
    }

    /// Records that the findings' events up to `cursor` were exported.
    pub async fn set_findings_exported(&self, cursor: u64) -> Result<(), StoreError> {
        self.put(self.key("findings-exported"), cursor.to_string().into_bytes()).await?;
        Ok(())
    }

    /// Records a new join token (only the hash of its secret).
    pub(crate) async fn create_join_token(&self, id: &str, record: &JoinTokenRecord) -> Result<(), StoreError> {
        let (key, value) = (self.key(&format!("join-tokens/{id}")), serde_json::to_vec(record).expect("serializes"));
        self.put(key, value).await?;
        Ok(())
    }

    /// Checks a join token and marks it used by `agent` while registering the agent, in one
    /// transaction that fails if the token changed since it was read: two replicas cannot both
    /// admit an agent with it.
    /// Whether join token `id` would admit agent `agent` now (read only; consuming it checks
    /// again in its transaction).
    pub async fn check_join_token(
        &self,
        id: &str,
        secret_hash: &[u8; 32],
        now_unix: i64,
        agent: &str,
    ) -> Result<(), JoinTokenError> {
        let key = self.key(&format!("join-tokens/{id}"));
        let response = self.get(key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else { return Err(JoinTokenError::Invalid) };
        let record: JoinTokenRecord = serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e))?;
        super::check_join_token(id, &record, secret_hash, now_unix, agent)
    }

    pub async fn consume_join_token(
        &self,
        id: &str,
        secret_hash: &[u8; 32],
        now_unix: i64,
        agent: &AgentRecord,
    ) -> Result<(), JoinTokenError> {
        let key = self.key(&format!("join-tokens/{id}"));
        for _ in 0..3 {
            let response = self.get(key.clone(), None).await?;
            let Some(kv) = response.kvs().first() else { return Err(JoinTokenError::Invalid) };
            let mut record: JoinTokenRecord = serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e))?;
            super::check_join_token(id, &record, secret_hash, now_unix, &agent.id)?;
            record.used_by = Some(agent.id.clone());
            let agent_key = self.key(&format!("agents/{}", agent.id));
            // The token unchanged since read, and no agent of this id registered (a key never
            // created has create revision 0).
            let claim = etcd_client::Txn::new()
                .when([
                    Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
                    Compare::create_revision(agent_key.clone(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(key.clone(), serde_json::to_vec(&record).expect("serializes"), None),
                    TxnOp::put(agent_key.clone(), serde_json::to_vec(agent).expect("serializes"), None),
                ]);
            let response = self.txn(claim).await?;
            if response.succeeded() {
                return Ok(());
            }
            if !self.get(agent_key, None).await?.kvs().is_empty() {
                return Err(JoinTokenError::AgentExists(agent.id.clone()));
            }
            // Changed under us (another replica used it): read it again and say why it fails.
        }
        Err(JoinTokenError::Store(StoreError::Contended(format!("join token {id}"))))
    }

    /// Registers an attested agent, replacing the record of one its rule admitted before, in a
    /// transaction that fails if the record or its deletion floor changed since they were read:
    /// two replicas cannot both admit a replayed token, nor one race a deletion.
    pub async fn register_attested_agent(
        &self,
        agent: &AgentRecord,
        attested: &Attested,
        skew: i64,
    ) -> Result<bool, JoinTokenError> {
        let key = self.key(&format!("agents/{}", agent.id));
        let floor_key = self.key(&format!("attestation-floors/{}", agent.id));
        for _ in 0..3 {
            let (record, floor) = (self.get(key.clone(), None).await?, self.get(floor_key.clone(), None).await?);
            let existing: Option<AgentRecord> = match record.kvs().first() {
                Some(kv) => Some(serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e))?),
                None => None,
            };
            let deleted_at = match floor.kvs().first() {
                Some(kv) => Some(
                    std::str::from_utf8(kv.value())
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok())
                        .ok_or_else(|| corrupt(&floor_key, "not a time"))?,
                ),
                None => None,
            };
            // Our own write, committed though its answer was lost (and the transaction retried).
            let ours = |e: &AgentRecord| e.attested == agent.attested && e.certificates == agent.certificates;
            if existing.as_ref().is_some_and(ours) {
                return Ok(true);
            }
            super::attested_may_replace(existing.as_ref(), deleted_at, skew, &agent.id, attested)?;
            // Both unchanged since read (a key never created has create revision 0).
            let unchanged = |key: &str, kv: Option<&etcd_client::KeyValue>| match kv {
                Some(kv) => Compare::mod_revision(key.to_string(), CompareOp::Equal, kv.mod_revision()),
                None => Compare::create_revision(key.to_string(), CompareOp::Equal, 0),
            };
            let txn = etcd_client::Txn::new()
                .when([unchanged(&key, record.kvs().first()), unchanged(&floor_key, floor.kvs().first())])
                .and_then([TxnOp::put(key.clone(), serde_json::to_vec(agent).expect("serializes"), None)]);
            if self.txn(txn).await?.succeeded() {
                return Ok(existing.is_some());
            }
        }
        Err(JoinTokenError::Store(StoreError::Contended(format!("agent {}", agent.id))))
    }

    /// Removes an attested agent whose certificates all expired before `expired_before`, if its
    /// record did not change since it was read.
    pub async fn forget_expired_agent(&self, id: &str, expired_before: i64, now_unix: i64) -> Result<bool, StoreError> {
        let key = self.key(&format!("agents/{id}"));
        let response = self.get(key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else { return Ok(false) };
        let record: AgentRecord = serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e))?;
        if !record.departed(expired_before, now_unix) {
            return Ok(false);
        }
        let txn = etcd_client::Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Records the certificate a renewal issued, if the agent still holds the one it renewed
    /// with, in a transaction that fails if the record changed since it was read (an attested
    /// join replacing it, a deletion): a renewal never writes back a stale record.
    pub async fn renew_agent(
        &self,
        id: &str,
        presented: &str,
        renewal: super::Renewal,
        now_unix: i64,
    ) -> Result<bool, StoreError> {
        let key = self.key(&format!("agents/{id}"));
        for _ in 0..3 {
            let response = self.get(key.clone(), None).await?;
            let Some(kv) = response.kvs().first() else { return Ok(false) };
            let mut record: AgentRecord = serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e))?;
            if !record.accepts(presented, now_unix) || !record.renewed(renewal.clone(), now_unix) {
                return Ok(false);
            }
            let txn = etcd_client::Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())])
                .and_then([TxnOp::put(key.clone(), serde_json::to_vec(&record).expect("serializes"), None)]);
            if self.txn(txn).await?.succeeded() {
                return Ok(true);
            }
        }
        Err(StoreError::Contended(format!("agent {id}")))
    }

    /// One registered agent.
    pub async fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let key = self.key(&format!("agents/{id}"));
        let response = self.get(key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else { return Ok(None) };
        Ok(Some(serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e))?))
    }

    /// Removes an agent from the registry; whether it was there. Every replica watches these
    /// changes ([`Etcd::follow_agent_registry`]) and ends the agent's stream.
    pub async fn delete_agent(&self, id: &str, now_unix: i64) -> Result<bool, StoreError> {
        let key = self.key(&format!("agents/{id}"));
        // Whatever the agent joined with, and even if it is not registered (forgotten, or not
        // joined yet), an attestation for the id must come after this: the time is kept for
        // the life of the tokens it refuses.
        let (lease, _) = self.grant(std::time::Duration::from_secs(super::floor_life() as u64)).await?;
        let floor = || {
            let options = etcd_client::PutOptions::new().with_lease(lease);
            TxnOp::put(self.key(&format!("attestation-floors/{id}")), now_unix.to_string(), Some(options))
        };
        // The record's existence decides only what is answered: a renewal moving it on does not
        // make the delete fail. The lease is never revoked here: a write whose answer was lost
        // (and retried) may have committed, and revoking would take its floor away.
        let txn = etcd_client::Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::NotEqual, 0)])
            .and_then([TxnOp::delete(key, None), floor()])
            .or_else([floor()]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// The certificates issued to operator `name`.
    pub async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        let key = self.key(&format!("operators/{name}"));
        let response = self.get(key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else { return Ok(None) };
        Ok(Some(serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e))?))
    }

    /// Stores an operator's certificates.
    pub async fn put_operator(&self, record: &OperatorRecord) -> Result<(), StoreError> {
        let key = self.key(&format!("operators/{}", record.name));
        self.put(key, serde_json::to_vec(record).expect("serializes")).await
    }

    /// Forgets an operator's certificates; whether it had any.
    pub async fn delete_operator(&self, name: &str) -> Result<bool, StoreError> {
        let key = self.key(&format!("operators/{name}"));
        self.delete(key).await
    }

    /// What the last scan of `agent`'s host found.
    pub async fn findings_of(&self, agent: &str) -> Result<Option<FindingsRecord>, StoreError> {
        let key = self.key(&format!("findings/{agent}"));
        let response = self.get(key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else { return Ok(None) };
        Ok(Some(serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e))?))
    }

    /// Every host's findings.
    pub async fn findings(&self) -> Result<Vec<FindingsRecord>, StoreError> {
        let response = self.get(self.key("findings/"), Some(GetOptions::new().with_prefix())).await?;
        let mut out = Vec::new();
        for kv in response.kvs() {
            out.push(serde_json::from_slice(kv.value()).map_err(|e| corrupt(&String::from_utf8_lossy(kv.key()), e))?);
        }
        Ok(out)
    }

    /// Stores a host's findings, replacing what was stored for it.
    pub async fn put_findings(&self, record: &FindingsRecord) -> Result<(), StoreError> {
        let key = self.key(&format!("findings/{}", record.agent));
        self.put(key, serde_json::to_vec(record).expect("serializes")).await
    }

    /// The definitions seen for one `server/kind/name`.
    pub async fn definitions_of(&self, key: &str) -> Result<Option<DefinitionsRecord>, StoreError> {
        let key = self.key(&format!("definitions/{key}"));
        let response = self.get(key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else { return Ok(None) };
        Ok(Some(serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e))?))
    }

    /// The definitions seen under keys starting with `prefix`.
    pub async fn definitions(&self, prefix: &str) -> Result<Vec<DefinitionsRecord>, StoreError> {
        let response =
            self.get(self.key(&format!("definitions/{prefix}")), Some(GetOptions::new().with_prefix())).await?;
        let mut out = Vec::new();
        for kv in response.kvs() {
            out.push(serde_json::from_slice(kv.value()).map_err(|e| corrupt(&String::from_utf8_lossy(kv.key()), e))?);
        }
        Ok(out)
    }

    /// How many keys start with `prefix`.
    pub async fn definitions_count(&self, prefix: &str) -> Result<usize, StoreError> {
        let options = GetOptions::new().with_prefix().with_count_only();
        let response = self.get(self.key(&format!("definitions/{prefix}")), Some(options)).await?;
        Ok(response.count() as usize)
    }

    /// Stores one name's definitions.
    pub async fn put_definitions(&self, record: &DefinitionsRecord) -> Result<(), StoreError> {
        let key = self.key(&format!("definitions/{}", record.key()));
        self.put(key, serde_json::to_vec(record).expect("serializes")).await
    }

    /// Removes every record whose key starts with `prefix`; how many there were.
    pub async fn delete_definitions(&self, prefix: &str) -> Result<usize, StoreError> {
        let key = self.key(&format!("definitions/{prefix}"));
        let response = retrying(|| {
            let (mut kv, key) = (self.kv(), key.clone());
            async move { kv.delete(key, Some(etcd_client::DeleteOptions::new().with_prefix())).await }
        })
        .await
        .map_err(etcd_err)?;
        Ok(response.deleted() as usize)
    }

    /// Every registered agent.
    pub async fn agents(&self) -> Result<BTreeMap<String, AgentRecord>, StoreError> {
        let options = GetOptions::new().with_prefix();
        let response = self.get(self.key("agents/"), Some(options)).await?;
        let mut out = BTreeMap::new();
        for kv in response.kvs() {
            let record: AgentRecord =
                serde_json::from_slice(kv.value()).map_err(|e| corrupt(&String::from_utf8_lossy(kv.key()), e))?;
            out.insert(record.id.clone(), record);
        }
        Ok(out)
    }

    /// Writes `dump` into this prefix, which must be empty: everything but the store's identity
    /// in transactions of at most `batch` operations, then the identity and version in one that
    /// fails if a replica started on the prefix meanwhile.
    pub async fn import(&self, dump: super::Dump, batch: usize) -> Result<(), StoreError> {
        let taken = self.get(self.key(""), Some(GetOptions::new().with_prefix().with_count_only())).await?;
        if taken.count() > 0 {
            return Err(StoreError::PrefixInUse { prefix: self.prefix.clone(), keys: taken.count() as usize });
        }
        let mut puts: Vec<(String, Vec<u8>)> = Vec::new();
        let dirs = [
            ("config/resources", dump.resources),
            ("config/keys", dump.keys),
            ("join-tokens", dump.join_tokens),
            ("agents", dump.agents),
            ("findings", dump.findings),
            ("definitions", dump.definitions),
            ("operators", dump.operators),
        ];
        for (dir, rows) in dirs {
            puts.extend(rows.into_iter().map(|(k, v)| (self.key(&format!("{dir}/{k}")), v)));
        }
        // The audit trail, one key per version, numbered as this store numbers it.
        let mut by_version: BTreeMap<u64, Vec<AuditEntry>> = BTreeMap::new();
        let mut exported = 0u64;
        for (i, entry) in dump.audit.into_iter().enumerate() {
            let entries = by_version.entry(entry.version).or_default();
            if i < dump.audit_exported {
                exported = (entry.version << AUDIT_INDEX_BITS) | entries.len() as u64;
            }
            entries.push(entry);
        }
        for (version, entries) in by_version {
            let record = AuditRecord { write: "migrated".into(), entries };
            puts.push((self.key(&format!("audit/{version:020}")), serde_json::to_vec(&record).expect("serializes")));
        }
        if exported > 0 {
            puts.push((self.key("audit-exported"), exported.to_string().into_bytes()));
        }
        if dump.findings_exported > 0 {
            puts.push((self.key("findings-exported"), dump.findings_exported.to_string().into_bytes()));
        }
        for chunk in puts.chunks(batch.max(1)) {
            let ops: Vec<TxnOp> = chunk.iter().map(|(k, v)| TxnOp::put(k.clone(), v.clone(), None)).collect();
            self.txn(etcd_client::Txn::new().and_then(ops)).await?;
        }
        // Deletion floors on leases for what is left of their life, as `delete_agent` writes
        // them; those past every token's life say nothing any more and stay behind.
        let now_unix = crate::now_unix_ms() / 1000;
        for (id, deleted_at) in dump.attestation_floors {
            let left = deleted_at.saturating_add(super::floor_life()).saturating_sub(now_unix);
            if left <= 0 {
                continue;
            }
            // One second over, never under: a lease's TTL is whole seconds.
            let (lease, _) = self.grant(std::time::Duration::from_secs(left as u64 + 1)).await?;
            let put = TxnOp::put(
                self.key(&format!("attestation-floors/{id}")),
                deleted_at.to_string(),
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            );
            self.txn(etcd_client::Txn::new().and_then([put])).await?;
        }
        let identity = etcd_client::Txn::new()
            .when([Compare::create_revision(self.key("store-id"), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(self.key("store-id"), dump.store_id, None),
                TxnOp::put(self.key("config/version"), dump.version.to_string(), None),
            ]);
        if !self.txn(identity).await?.succeeded() {
            return Err(StoreError::MigrationRaced(self.prefix.clone()));
        }
        Ok(())
    }
}
