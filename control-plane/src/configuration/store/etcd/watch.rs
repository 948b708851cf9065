//! Following what the other replicas write: a watch of `<prefix>/config/` turned into one
//! [`Followed`] per configuration transaction (or, after a compaction the watch cannot resume
//! from, the whole configuration read again), and a watch of the agent registry for deletions.

use std::time::Duration;

use etcd_client::{EventType, WatchFilterType, WatchOptions};
use tokio::sync::mpsc;
use warden_core::{Kind, ResourceKey};
use warden_tasks::{Backoff, Shutdown};

use super::{Etcd, MAX_ANSWER_BYTES, decimal};
use crate::configuration::store::{KeyRecord, Loaded, LoadedResource};

/// Consecutive watch failures after which the configuration is read whole instead of resuming.
const RESUMES_BEFORE_RELOAD: u32 = 5;

/// Pacing of a broken watch's re-establishment.
const WATCH_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// What the watch saw: a configuration write (by any replica), or, after a compaction the
/// watch could not resume from, the whole configuration read again.
pub enum Followed {
    /// One configuration write.
    Committed(Committed),
    /// Everything, read again.
    Reloaded(Loaded),
}

/// One configuration write as watched: the changes of one etcd transaction.
pub struct Committed {
    /// The configuration version it produced.
    pub version: u64,
    /// Resources created or replaced.
    pub puts: Vec<(ResourceKey, LoadedResource)>,
    /// Resources removed.
    pub deletes: Vec<ResourceKey>,
    /// Fetched key sets stored.
    pub key_puts: Vec<(String, KeyRecord)>,
    /// Fetched key sets dropped.
    pub key_deletes: Vec<String>,
}

impl Etcd {
    /// Follows every configuration write after `revision` (whichever replica made it) into
    /// `out`, until `shutdown`. A broken watch is re-established from the last revision seen; one
    /// that cannot resume (etcd compacted that history, it keeps failing, or a write does not
    /// decode) is replaced by a full read.
    pub async fn follow(&self, mut revision: i64, out: mpsc::Sender<Followed>, mut shutdown: Shutdown) {
        let mut failures = 0u32;
        loop {
            if failures > 0 {
                let delay = WATCH_BACKOFF.ceiling(failures - 1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.requested() => return,
                }
            }
            if failures >= RESUMES_BEFORE_RELOAD {
                tracing::warn!(revision, failures, "the etcd watch keeps failing; reading the configuration again");
                match self.reload(&out).await {
                    Some(Ok(r)) => (revision, failures) = (r, 0),
                    Some(Err(())) => failures += 1,
                    None => return,
                }
                continue;
            }
            let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
            let mut client = self.client.watch_client().max_decoding_message_size(MAX_ANSWER_BYTES);
            let mut stream = match client.watch(self.key("config/"), Some(options)).await {
                Ok(w) => w,
                Err(e) => {
                    failures += 1;
                    tracing::warn!("etcd watch: {e}; retrying");
                    continue;
                }
            };
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    _ = shutdown.requested() => return,
                };
                let response = match message {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        failures += 1;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("etcd watch: {e}; resuming from revision {revision}");
                        failures += 1;
                        break;
                    }
                };
                if response.compact_revision() > 0 {
                    // The history after `revision` is gone: read everything again.
                    tracing::warn!(
                        revision,
                        compacted = response.compact_revision(),
                        "etcd compacted past this replica's watch; reading the configuration again"
                    );
                    match self.reload(&out).await {
                        Some(Ok(r)) => (revision, failures) = (r, 0),
                        Some(Err(())) => failures += 1,
                        None => return,
                    }
                    break;
                }
                if response.canceled() {
                    tracing::warn!("etcd cancelled the watch: {}", response.cancel_reason());
                    failures += 1;
                    break;
                }
                failures = 0;
                let mut broken = false;
                for (rev, decoded) in self.committed(response.events()) {
                    match decoded {
                        Decoded::Write(c) => {
                            if out.send(Followed::Committed(c)).await.is_err() {
                                return;
                            }
                        }
                        Decoded::Other => {}
                        Decoded::Broken => {
                            broken = true;
                            break;
                        }
                    }
                    revision = revision.max(rev);
                }
                if broken {
                    // Publishing the write without what did not decode would leave this replica
                    // wrong for good: read everything instead.
                    match self.reload(&out).await {
                        Some(Ok(r)) => revision = r,
                        Some(Err(())) => failures += 1,
                        None => return,
                    }
                    break;
                }
            }
        }
    }

    /// Sends the id of every agent deleted from the registry (by any replica) to `out`, until
    /// `shutdown`, so each replica ends the deleted agent's stream at once. When deletions may
    /// have been missed (the watch broke and etcd compacted past it), sends `None`: every
    /// session then checks its agent is still registered.
    pub async fn follow_deleted_agents(
        &self,
        out: tokio::sync::broadcast::Sender<Option<String>>,
        mut shutdown: Shutdown,
    ) {
        let prefix = self.key("agents/");
        let mut revision: Option<i64> = None;
        let mut failures = 0u32;
        loop {
            if failures > 0 {
                let delay = WATCH_BACKOFF.ceiling(failures - 1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.requested() => return,
                }
            }
            let mut options = WatchOptions::new().with_prefix().with_filters([WatchFilterType::NoPut]);
            if let Some(r) = revision {
                options = options.with_start_revision(r + 1);
            }
            let mut stream = match self.client.watch_client().watch(prefix.clone(), Some(options)).await {
                Ok(w) => w,
                Err(e) => {
                    failures += 1;
                    tracing::warn!("etcd watch of the agent registry: {e}; retrying");
                    continue;
                }
            };
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    _ = shutdown.requested() => return,
                };
                let response = match message {
                    Ok(Some(r)) if !r.canceled() && r.compact_revision() == 0 => r,
                    Ok(Some(r)) if r.compact_revision() > 0 => {
                        // Deletions after `revision` may be lost: every session checks itself.
                        let _ = out.send(None);
                        revision = Some(r.compact_revision() - 1);
                        break;
                    }
                    _ => {
                        failures += 1;
                        break;
                    }
                };
                failures = 0;
                if let Some(header) = response.header() {
                    revision = Some(revision.map_or(header.revision(), |r| r.max(header.revision())));
                }
                for event in response.events() {
                    if let Some(kv) = event.kv()
                        && let Some(id) = kv.key().strip_prefix(prefix.as_bytes())
                    {
                        let _ = out.send(Some(String::from_utf8_lossy(id).into_owned()));
                    }
                }
            }
        }
    }

    /// Reads everything and sends it: `Some(Ok(revision))` read at, `Some(Err(()))` the read
    /// failed, `None` nobody listens any more.
    async fn reload(&self, out: &mpsc::Sender<Followed>) -> Option<Result<i64, ()>> {
        match self.read_all().await {
            Ok(loaded) => {
                let revision = loaded.revision;
                out.send(Followed::Reloaded(loaded)).await.ok()?;
                Some(Ok(revision))
            }
            Err(e) => {
                tracing::warn!("reading the configuration from etcd: {e}");
                Some(Err(()))
            }
        }
    }

    /// Groups watched events by revision (one transaction each) and decodes the configuration
    /// writes among them: those that moved the version.
    fn committed(&self, events: &[etcd_client::Event]) -> Vec<(i64, Decoded)> {
        let mut groups: Vec<(i64, Vec<&etcd_client::Event>)> = Vec::new();
        for event in events {
            let Some(kv) = event.kv() else { continue };
            match groups.last_mut() {
                Some((rev, group)) if *rev == kv.mod_revision() => group.push(event),
                _ => groups.push((kv.mod_revision(), vec![event])),
            }
        }
        groups.into_iter().map(|(rev, group)| (rev, self.decode(&group))).collect()
    }

    fn decode(&self, events: &[&etcd_client::Event]) -> Decoded {
        let (version_key, resources, keys) =
            (self.key("config/version"), self.key("config/resources/"), self.key("config/keys/"));
        let mut committed = Committed {
            version: 0,
            puts: Vec::new(),
            deletes: Vec::new(),
            key_puts: Vec::new(),
            key_deletes: Vec::new(),
        };
        let mut is_write = false;
        for event in events {
            let Some(kv) = event.kv() else { return Decoded::Broken };
            let key = String::from_utf8_lossy(kv.key());
            let put = event.event_type() == EventType::Put;
            let decoded: Result<(), String> = if key == version_key && put {
                decimal(&key, kv.value()).map(|v| committed.version = v).map_err(|e| e.to_string())
            } else if let Some(rest) = key.strip_prefix(&resources) {
                if put {
                    crate::configuration::store::decode_resource(&key, kv.value())
                        .map(|r| committed.puts.push((r.document.key(), r)))
                        .map_err(|e| e.to_string())
                } else {
                    match rest.split_once('/').and_then(|(kind, name)| Some((Kind::parse_loose(kind)?, name))) {
                        Some((kind, name)) => {
                            committed.deletes.push(ResourceKey { kind, name: name.to_string() });
                            Ok(())
                        }
                        None => Err(format!("{key}: not a resource key")),
                    }
                }
            } else if let Some(issuer) = key.strip_prefix(&keys) {
                if put {
                    serde_json::from_slice(kv.value())
                        .map(|record| committed.key_puts.push((issuer.to_string(), record)))
                        .map_err(|e| format!("{key}: {e}"))
                } else {
                    committed.key_deletes.push(issuer.to_string());
                    Ok(())
                }
            } else {
                Ok(())
            };
            if let Err(e) = decoded {
                tracing::error!("a watched configuration write does not decode: {e}");
                return Decoded::Broken;
            }
            is_write |= key == version_key && put;
        }
        if is_write { Decoded::Write(committed) } else { Decoded::Other }
    }
}

/// One watched transaction.
enum Decoded {
    /// A configuration write.
    Write(Committed),
    /// Something else under the prefix.
    Other,
    /// A configuration write this replica cannot read.
    Broken,
}
