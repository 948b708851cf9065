//! Following what the other replicas write: a watch of `<prefix>/config/` turned into one
//! [`Followed`] per configuration transaction (or, after a compaction the watch cannot resume
//! from, the whole configuration read again), and a watch of the agent registry for deletions.

use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::mpsc;
use warden_core::{Kind, ResourceKey};
use warden_tasks::{Backoff, Shutdown};

use super::{Etcd, MAX_ANSWER_BYTES, decimal};
use crate::configuration::store::{AgentRecord, KeyRecord, Loaded, LoadedResource};

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

/// What every watch here shares: re-established after each break (paced by
/// [`WATCH_BACKOFF`] from its consecutive failures) until shutdown.
struct Resuming<'a> {
    etcd: &'a Etcd,
    /// The watched key prefix.
    key: String,
    /// For logs.
    what: &'static str,
    failures: u32,
    shutdown: Shutdown,
}

/// Shutdown was requested.
struct Stopped;

impl Resuming<'_> {
    /// Waits out the backoff the failures so far call for.
    async fn pause(&mut self) -> Result<(), Stopped> {
        if self.failures == 0 {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_BACKOFF.ceiling(self.failures - 1)) => Ok(()),
            _ = self.shutdown.requested() => Err(Stopped),
        }
    }

    /// Opens the watch; `None` (a failure counted) if etcd refused it.
    async fn open(&mut self, options: WatchOptions) -> Option<WatchStream> {
        let mut client = self.etcd.client.watch_client().max_decoding_message_size(MAX_ANSWER_BYTES);
        match client.watch(self.key.clone(), Some(options)).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                self.failures += 1;
                tracing::warn!("etcd watch of {}: {e}; retrying", self.what);
                None
            }
        }
    }

    /// The next response; `Ok(None)` (a failure counted) when the stream broke or etcd cancelled
    /// the watch. A response that says etcd compacted past the watch is returned for the caller
    /// to handle.
    async fn next(&mut self, stream: &mut WatchStream) -> Result<Option<WatchResponse>, Stopped> {
        let message = tokio::select! {
            m = stream.message() => m,
            _ = self.shutdown.requested() => return Err(Stopped),
        };
        match message {
            Ok(Some(r)) if r.compact_revision() > 0 => Ok(Some(r)),
            Ok(Some(r)) if r.canceled() => {
                tracing::warn!("etcd cancelled the watch of {}: {}", self.what, r.cancel_reason());
                self.failures += 1;
                Ok(None)
            }
            Ok(Some(r)) => {
                self.failures = 0;
                Ok(Some(r))
            }
            Ok(None) => {
                self.failures += 1;
                Ok(None)
            }
            Err(e) => {
                tracing::warn!("etcd watch of {}: {e}; resuming", self.what);
                self.failures += 1;
                Ok(None)
            }
        }
    }
}

impl Etcd {
    /// Follows every configuration write after `revision` (whichever replica made it) into
    /// `out`, until `shutdown`. A broken watch is re-established from the last revision seen; one
    /// that cannot resume (etcd compacted that history, it keeps failing, or a write does not
    /// decode) is replaced by a full read.
    pub async fn follow(&self, revision: i64, out: mpsc::Sender<Followed>, shutdown: Shutdown) {
        let mut watch =
            Resuming { etcd: self, key: self.key("config/"), what: "the configuration", failures: 0, shutdown };
        let _ = self.follow_from(&mut watch, revision, &out).await;
    }

    async fn follow_from(
        &self,
        watch: &mut Resuming<'_>,
        mut revision: i64,
        out: &mpsc::Sender<Followed>,
    ) -> Result<(), Stopped> {
        loop {
            watch.pause().await?;
            if watch.failures >= RESUMES_BEFORE_RELOAD {
                tracing::warn!(
                    revision,
                    failures = watch.failures,
                    "the etcd watch keeps failing; reading the configuration again"
                );
                self.reload(out, &mut revision, watch).await?;
                continue;
            }
            let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
            let Some(mut stream) = watch.open(options).await else { continue };
            while let Some(response) = watch.next(&mut stream).await? {
                if response.compact_revision() > 0 {
                    // The history after `revision` is gone: read everything again.
                    tracing::warn!(
                        revision,
                        compacted = response.compact_revision(),
                        "etcd compacted past this replica's watch; reading the configuration again"
                    );
                    self.reload(out, &mut revision, watch).await?;
                    break;
                }
                let mut broken = false;
                for (rev, decoded) in self.committed(response.events()) {
                    match decoded {
                        Decoded::Write(c) => out.send(Followed::Committed(c)).await.map_err(|_| Stopped)?,
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
                    self.reload(out, &mut revision, watch).await?;
                    break;
                }
            }
        }
    }

    /// Sends the id of every agent whose registry record changed (by any replica: deleted,
    /// replaced by an attested join, renewed) to `out`, until `shutdown`, so each replica ends
    /// at once the streams of certificates the registry no longer lists. When changes may have
    /// been missed (the watch broke and etcd compacted past it), sends `None`: every session
    /// then checks its certificate is still listed.
    pub async fn follow_agent_registry(&self, out: tokio::sync::broadcast::Sender<Option<String>>, shutdown: Shutdown) {
        let prefix = self.key("agents/");
        let mut watch = Resuming { etcd: self, key: prefix.clone(), what: "the agent registry", failures: 0, shutdown };
        let mut revision: Option<i64> = None;
        loop {
            if watch.pause().await.is_err() {
                return;
            }
            let mut options = WatchOptions::new().with_prefix().with_prev_key();
            if let Some(r) = revision {
                options = options.with_start_revision(r + 1);
            }
            let Some(mut stream) = watch.open(options).await else { continue };
            loop {
                let response = match watch.next(&mut stream).await {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(Stopped) => return,
                };
                if response.compact_revision() > 0 {
                    // Changes after `revision` may be lost: every session checks itself.
                    let _ = out.send(None);
                    revision = Some(response.compact_revision() - 1);
                    break;
                }
                if revision.is_none() {
                    // The first answer of a watch opened from "now": a change made before it
                    // (after a session read the registry) is in no event. Every session checks.
                    let _ = out.send(None);
                }
                if let Some(header) = response.header() {
                    revision = Some(revision.map_or(header.revision(), |r| r.max(header.revision())));
                }
                for event in response.events() {
                    if let Some(kv) = event.kv()
                        && let Some(id) = kv.key().strip_prefix(prefix.as_bytes())
                        && (event.event_type() == EventType::Delete || drops_certificates(event.prev_kv(), kv))
                    {
                        let _ = out.send(Some(String::from_utf8_lossy(id).into_owned()));
                    }
                }
            }
        }
    }

    /// Reads everything and sends it, moving `revision` to where it was read (a failed read
    /// counts as a watch failure). `Err` when nobody listens any more.
    async fn reload(
        &self,
        out: &mpsc::Sender<Followed>,
        revision: &mut i64,
        watch: &mut Resuming<'_>,
    ) -> Result<(), Stopped> {
        match self.load().await {
            Ok(loaded) => {
                (*revision, watch.failures) = (loaded.revision, 0);
                out.send(Followed::Reloaded(loaded)).await.map_err(|_| Stopped)
            }
            Err(e) => {
                tracing::warn!("reading the configuration from etcd: {e}");
                watch.failures += 1;
                Ok(())
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

/// Whether a put of an agent record stops listing an unexpired certificate the record before
/// it listed (an attested join replacing the agent): only then may a session have to end.
/// Joins (no record before) and renewals (which keep every certificate but expired ones) wake
/// no session, where each broadcast wakes every session of the replica to compare the id. A
/// record that does not decode counts as a change: the sessions check the registry themselves.
fn drops_certificates(before: Option<&etcd_client::KeyValue>, after: &etcd_client::KeyValue) -> bool {
    let Some(before) = before else { return false };
    let decode = |kv: &etcd_client::KeyValue| serde_json::from_slice::<AgentRecord>(kv.value()).ok();
    let now = crate::now_unix_ms() / 1000;
    match (decode(before), decode(after)) {
        (Some(before), Some(after)) => before
            .certificates
            .iter()
            .filter(|c| c.not_after_unix > now)
            .any(|c| !after.certificates.iter().any(|a| a.serial == c.serial)),
        _ => true,
    }
}
