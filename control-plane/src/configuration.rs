//! The configuration subsystem: the store, the published [`FleetState`] of each version, and the
//! one write path (plan → commit → publish).
//!
//! Every other subsystem holds an `Arc<Configuration>`: it reads the current state or watches
//! new ones, and writes only through [`Configuration::write`], which serialises writes on this
//! replica and retries when another replica sharing the store wrote first.

pub mod compiled;
pub mod history;
pub mod revocation_table;
pub mod state;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use warden_core::{Admission, ResourceKey};

use self::state::{FleetState, WriteError};
use self::store::{AuditEntry, Change, Store, StoreError};

/// Attempts of one write when other replicas keep writing first.
const WRITE_ATTEMPTS: usize = 5;

/// Bytes of applied documents one write's audit entries keep (for history's differences); past
/// it, the rest of that write's entries keep none (history says so).
const AUDIT_DOCUMENT_BYTES: usize = 256 * 1024;

/// The configuration of the fleet: what is stored and what was published from it.
pub struct Configuration {
    store: Arc<Store>,
    /// The current configuration; every agent session watches it.
    state: Arc<watch::Sender<Arc<FleetState>>>,
    /// Serialises writes so each plans against the state it commits over.
    writer: Mutex<()>,
    /// Largest encoded snapshot a write may produce.
    max_config_bytes: usize,
    /// What documents may say (http issuers for local testing).
    admission: Admission,
    /// Revocations this replica committed since it started, by source
    /// ([`AuditEntry::revocation_source`]): `session_end`, `rfc7009`, `operator`.
    revocations: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// The runtime commits run on, whichever runtime the writer is on (the admin socket has
    /// its own, which stops first at shutdown): the one `new` was called on, if any.
    runtime: Option<tokio::runtime::Handle>,
    /// The current configuration compiled for the control plane's own token checks.
    compiled: compiled::Cache,
}

impl Configuration {
    /// The configuration loaded from `store` as `state`.
    pub fn new(store: Store, state: FleetState, admission: Admission, max_config_bytes: usize) -> Configuration {
        Configuration {
            store: Arc::new(store),
            state: Arc::new(watch::Sender::new(Arc::new(state))),
            writer: Mutex::new(()),
            max_config_bytes,
            admission,
            revocations: std::sync::Mutex::new(
                ["session_end", "rfc7009", "operator"].into_iter().map(|source| (source, 0)).collect(),
            ),
            runtime: tokio::runtime::Handle::try_current().ok(),
            compiled: compiled::Cache::default(),
        }
    }

    /// The current state compiled for the token checks the control plane makes itself
    /// (exchange, revocation, attested joins): once per change of its resources.
    pub fn compiled(&self) -> Result<Arc<compiled::Compiled>, warden_core::ConfigError> {
        self.compiled.get(&self.current())
    }

    /// Revocations this replica committed since it started, by source (every source present,
    /// from 0).
    pub fn revocations_committed(&self) -> Vec<(&'static str, u64)> {
        let counts = self.revocations.lock().unwrap_or_else(|p| p.into_inner());
        counts.iter().map(|(source, n)| (*source, *n)).collect()
    }

    /// The state published last.
    pub fn current(&self) -> Arc<FleetState> {
        self.state.borrow().clone()
    }

    /// The version published last.
    pub fn version(&self) -> u64 {
        self.state.borrow().version
    }

    /// A receiver of every state published from now on (marked seen at the current one).
    pub fn subscribe(&self) -> watch::Receiver<Arc<FleetState>> {
        self.state.subscribe()
    }

    /// The store (registry, audit trail, and the resources behind the states).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// What documents written here may say.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The one write path: plans against the current state with `plan` (which also returns
    /// what the caller wants to know about the plan), commits, and publishes. Writes are
    /// serialised on this replica; when another replica sharing the store wrote first, waits
    /// until its write arrived here and plans again (optimistic concurrency). A no-op plan
    /// commits nothing and answers the current version.
    pub(crate) async fn write<T>(
        &self,
        actor: &str,
        operation: &str,
        mut plan: impl FnMut(&Arc<FleetState>) -> Result<(state::Plan, T), WriteError>,
    ) -> Result<(u64, T), WriteError> {
        let _writer = self.writer.lock().await;
        let mut attempt = 1;
        loop {
            let current = self.current();
            let (planned, answer) = plan(&current)?;
            if planned.is_noop() {
                return Ok((current.version, answer));
            }
            match self.commit(&current, planned, actor, operation).await {
                Err(WriteError::Store(StoreError::VersionMoved { found, .. })) if attempt < WRITE_ATTEMPTS => {
                    tracing::info!(%operation, base = current.version, found, "another replica wrote first; planning again");
                    let mut states = self.state.subscribe();
                    let arrived = states.wait_for(|s| s.version >= found);
                    let _ = tokio::time::timeout(Duration::from_secs(5), arrived).await;
                    attempt += 1;
                }
                result => return result.map(|version| (version, answer)),
            }
        }
    }

    /// Deletes resources on behalf of the control plane itself; one that is already gone is
    /// skipped.
    pub(crate) async fn delete(&self, keys: Vec<ResourceKey>, actor: &str, operation: &str) -> Result<u64, WriteError> {
        let (version, ()) = self
            .write(actor, operation, |current| {
                let mut plan = state::Plan::empty();
                for key in &keys {
                    if let Ok(one) = state::plan_delete(current, key.clone(), 0) {
                        plan.deletes.extend(one.deletes);
                        plan.key_deletes.extend(one.key_deletes);
                    }
                }
                Ok((plan, ()))
            })
            .await?;
        Ok(version)
    }

    /// Publishes `next` to every agent session, unless this replica already holds that version
    /// or a newer one (its own write and the watch of it race to get here).
    pub(crate) fn publish(&self, next: FleetState) -> bool {
        publish_to(&self.state, next)
    }

    /// Writes a validated plan, records who did it, and publishes the new state to every agent
    /// session. The caller holds the writer lock.
    async fn commit(
        &self,
        current: &Arc<FleetState>,
        plan: state::Plan,
        actor: &str,
        operation: &str,
    ) -> Result<u64, WriteError> {
        let version = current.version + 1;
        let time_unix_ms = crate::now_unix_ms();
        let audit = |key: &ResourceKey, previous: u64, by: Option<&(String, String)>| AuditEntry {
            version,
            time_unix_ms,
            actor: by.map_or(actor, |(a, _)| a.as_str()).to_string(),
            operation: by.map_or(operation, |(_, o)| o.as_str()).to_string(),
            kind: key.kind.as_str().to_string(),
            name: key.name.clone(),
            previous_resource_version: previous,
            document: None,
        };
        let mut entries: Vec<AuditEntry> = Vec::new();
        let mut documents_kept = 0;
        for (i, (key, action, previous)) in plan.results.iter().enumerate() {
            if *action != state::Action::Unchanged {
                let mut entry = audit(key, *previous, plan.actors.get(i));
                let json = plan.puts.iter().find(|(put, _, _)| put == key).map(|(_, _, json)| json);
                // Within a bound per write: on etcd the audit record goes in the same
                // transaction as the resources, under etcd's request size.
                if let Some(json) = json.filter(|j| {
                    key.kind != warden_core::Kind::Revocation && documents_kept + j.len() <= AUDIT_DOCUMENT_BYTES
                }) {
                    documents_kept += json.len();
                    entry.document = Some(String::from_utf8_lossy(json).into_owned());
                }
                entries.push(entry);
            }
        }
        for (key, previous) in &plan.deletes {
            entries.push(audit(key, *previous, None));
        }
        for (issuer, _) in &plan.key_puts {
            entries.push(audit(&ResourceKey { kind: warden_core::Kind::TrustedIssuer, name: issuer.clone() }, 0, None));
        }
        let changes: Vec<Change> = plan
            .puts
            .iter()
            .map(|(key, _, json)| Change::Put { key: key.clone(), json: json.clone() })
            .chain(plan.deletes.iter().map(|(key, _)| Change::Delete(key.clone())))
            .chain(
                plan.key_puts
                    .iter()
                    .map(|(issuer, record)| Change::PutKeys { issuer: issuer.clone(), record: record.clone() }),
            )
            .chain(plan.key_deletes.iter().map(|issuer| Change::DeleteKeys(issuer.clone())))
            .collect();
        let entries_logged = entries.clone();
        let (store, states) = (self.store.clone(), self.state.clone());
        let base = current.version;
        let next = state::next_state(current, plan, version);
        // Refused here, naming the limit, rather than met by an agent that cannot load it.
        let size = next.snapshot_bytes();
        if size > self.max_config_bytes {
            return Err(WriteError::TooLarge { size, limit: self.max_config_bytes });
        }
        // Committed and published in a task of its own: a caller that goes away mid-write (an
        // operator's Ctrl-C) cannot leave a committed version unpublished.
        let committing = async move {
            let written = store.commit(base, changes, entries).await?;
            // Even if the watch of this write got here first: then this changes nothing.
            publish_to(&states, next);
            Ok::<_, StoreError>(written)
        };
        let written = match &self.runtime {
            Some(runtime) => runtime.spawn(committing),
            None => tokio::spawn(committing),
        }
        .await
        .map_err(|e| WriteError::Store(StoreError::Interrupted(e.to_string())))??;
        debug_assert_eq!(written, version);
        {
            let mut counts = self.revocations.lock().unwrap_or_else(|p| p.into_inner());
            for source in entries_logged.iter().filter_map(AuditEntry::revocation_source) {
                *counts.entry(source).or_default() += 1;
            }
        }
        for entry in &entries_logged {
            let (actor, operation) = (&entry.actor, &entry.operation);
            tracing::info!(%actor, resource = %format!("{}/{}", entry.kind, entry.name), version, "{operation}");
        }
        Ok(version)
    }
}

/// Publishes `next` unless `states` holds that version or a newer one already.
fn publish_to(states: &watch::Sender<Arc<FleetState>>, mut next: FleetState) -> bool {
    states.send_if_modified(move |held| {
        let newer = next.version > held.version || next.store_id != held.store_id;
        if newer {
            next.published(held);
            *held = Arc::new(next);
        }
        newer
    })
}
