//! What replicas coordinate through etcd rather than store in it: each replica's lease, the
//! leader key on it (one replica does the singleton duties), and the presence of the agents
//! connected to each replica (on that replica's lease, so a crashed replica's entries expire
//! with it). Nothing here is configuration: none of it is under `config/`, none is watched.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, TxnOp, TxnOpResponse};

use super::{Etcd, etcd_err, retrying};
use crate::configuration::store::{PresenceRecord, PresenceVersions, StoreError};

/// Keys one replica spreads its agents' presence over. A configuration change moves every
/// agent's applied version: with a key per agent, 10,000 agents on a replica were 10,000 puts
/// (100 transactions) per change, and 100,000 across ten replicas a write storm; with shards it
/// is at most this many puts per replica, a few transactions. 256 keeps each shard's value small
/// (about 40 agents, 5 KB, at 10,000 agents a replica).
pub const PRESENCE_SHARDS: u32 = 256;

/// What a presence write does with the replica's [`PresenceVersions`] record.
#[derive(Debug, PartialEq)]
pub enum VersionsWrite {
    /// Leaves it.
    Unchanged,
    /// Writes it.
    Put(PresenceVersions),
    /// Removes it: the shards carry the versions again.
    Delete,
}

/// Bytes of presence values past which a transaction is sent and another begun.
const PRESENCE_TXN_BYTES: usize = 512 * 1024;

/// The presence shard of `agent`: FNV-1a of its id (the same in every build and on every
/// machine, unlike std's hasher).
pub fn presence_shard(agent: &str) -> u32 {
    let hash = agent.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    hash % PRESENCE_SHARDS
}

impl Etcd {
    /// Grants a lease of about `ttl`: what this replica's leadership and presence entries hang
    /// on. Returns its id and the lifetime etcd gave it.
    pub async fn grant(&self, ttl: Duration) -> Result<(i64, Duration), StoreError> {
        let ttl = ttl.as_secs().max(2) as i64;
        let granted = retrying(|| {
            let mut lease = self.client.lease_client();
            async move { lease.grant(ttl, None).await }
        })
        .await
        .map_err(etcd_err)?;
        Ok((granted.id(), Duration::from_secs(granted.ttl().max(1) as u64)))
    }

    /// Keeps `lease` alive, refreshing it every third of `ttl`; returns once it is lost (expired,
    /// revoked, or etcd unreachable for longer than `ttl`).
    pub async fn keep_alive(&self, lease: i64, ttl: Duration) {
        let mut refreshed = tokio::time::Instant::now();
        loop {
            let remaining = ttl.saturating_sub(refreshed.elapsed());
            let opened = tokio::time::timeout(remaining, self.client.lease_client().keep_alive(lease)).await;
            let (mut keeper, mut responses) = match opened {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::warn!("etcd lease keep-alive: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Err(_) => return,
            };
            loop {
                let remaining = ttl.saturating_sub(refreshed.elapsed());
                let round = async {
                    keeper.keep_alive().await?;
                    responses.message().await
                };
                match tokio::time::timeout(remaining, round).await {
                    // etcd unreachable for as long as the lease lives: it is gone.
                    Err(_) => return,
                    Ok(Err(e)) => {
                        tracing::warn!("etcd lease keep-alive: {e}; reopening");
                        break;
                    }
                    Ok(Ok(Some(answer))) if answer.ttl() > 0 => refreshed = tokio::time::Instant::now(),
                    // Expired or revoked: nothing left to keep.
                    Ok(Ok(Some(_))) => return,
                    // The stream ended without an answer: open another.
                    Ok(Ok(None)) => break,
                }
                tokio::time::sleep(ttl / 3).await;
            }
        }
    }

    /// Ends `lease` at once (a clean shutdown): leadership and presence entries go with it.
    pub async fn revoke(&self, lease: i64) {
        let _ = self.client.lease_client().revoke(lease).await;
    }

    /// Takes `<prefix>/leader` for `replica` on `lease` if nobody holds it; whether `replica`
    /// holds it now.
    pub async fn lead(&self, lease: i64, replica: &str) -> Result<bool, StoreError> {
        let key = self.key("leader");
        let take = etcd_client::Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), replica, Some(etcd_client::PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn(take).await?;
        if response.succeeded() {
            return Ok(true);
        }
        Ok(response.op_responses().into_iter().any(|r| match r {
            // Ours only on this lease: a key left on a lost lease of ours is about to expire.
            TxnOpResponse::Get(g) => {
                g.kvs().first().is_some_and(|kv| kv.value() == replica.as_bytes() && kv.lease() == lease)
            }
            _ => false,
        }))
    }

    /// Publishes this replica's agent streams on `lease`, shard by shard
    /// ([`presence_shard`]): `Some` writes a shard's records whole, `None` removes the shard;
    /// and, when given, the versions its agents applied ([`PresenceVersions`]), which readers
    /// take over the records' own.
    pub async fn put_presence(
        &self,
        lease: i64,
        replica: &str,
        changes: &[(u32, Option<Vec<PresenceRecord>>)],
        versions: &VersionsWrite,
    ) -> Result<(), StoreError> {
        let mut ops = Vec::new();
        let mut bytes = 0;
        let key = self.key(&format!("presence-versions/{replica}"));
        match versions {
            VersionsWrite::Unchanged => {}
            VersionsWrite::Put(versions) => {
                let value = serde_json::to_vec(versions).expect("serializes");
                bytes += value.len();
                ops.push(TxnOp::put(key, value, Some(etcd_client::PutOptions::new().with_lease(lease))));
            }
            VersionsWrite::Delete => ops.push(TxnOp::delete(key, None)),
        }
        for (shard, records) in changes {
            let key = self.key(&format!("presence/{replica}/{shard:03}"));
            let op = match records {
                Some(records) => {
                    let value = serde_json::to_vec(records).expect("serializes");
                    bytes += value.len();
                    TxnOp::put(key, value, Some(etcd_client::PutOptions::new().with_lease(lease)))
                }
                None => TxnOp::delete(key, None),
            };
            ops.push(op);
            // Within etcd's default --max-txn-ops (128) and request size (1.5 MiB).
            if ops.len() == 100 || bytes > PRESENCE_TXN_BYTES {
                self.txn(etcd_client::Txn::new().and_then(std::mem::take(&mut ops))).await?;
                bytes = 0;
            }
        }
        if !ops.is_empty() {
            self.txn(etcd_client::Txn::new().and_then(ops)).await?;
        }
        Ok(())
    }

    /// Every replica's agent streams, each with the version it applied.
    pub async fn presence(&self) -> Result<Vec<PresenceRecord>, StoreError> {
        // Shards and versions records in one read: one revision of both.
        let (shards, prefix) = (self.key("presence/"), self.key("presence-versions/"));
        let response = self.get(self.key("presence"), Some(GetOptions::new().with_prefix())).await?;
        let mut versions: std::collections::HashMap<String, PresenceVersions> = Default::default();
        for kv in response.kvs().iter().filter(|kv| kv.key().starts_with(prefix.as_bytes())) {
            let replica = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
            match serde_json::from_slice::<PresenceVersions>(kv.value()) {
                Ok(v) => {
                    versions.insert(replica, v);
                }
                Err(e) => tracing::warn!("{}: {e}", String::from_utf8_lossy(kv.key())),
            }
        }
        let mut out = Vec::new();
        for kv in response.kvs().iter().filter(|kv| kv.key().starts_with(shards.as_bytes())) {
            match serde_json::from_slice::<Vec<PresenceRecord>>(kv.value()) {
                Ok(records) => out.extend(records),
                // A replica of an earlier release (during a rolling upgrade): one agent a key.
                Err(e) => match serde_json::from_slice::<PresenceRecord>(kv.value()) {
                    Ok(record) => out.push(record),
                    Err(_) => tracing::warn!("{}: {e}", String::from_utf8_lossy(kv.key())),
                },
            }
        }
        // A replica's versions record is newer than its shards' (which a release before it
        // keeps current instead, and writes no versions record).
        for record in &mut out {
            if let Some(v) = versions.get(&record.replica) {
                record.applied_version = v.of_agent(&record.agent);
            }
        }
        Ok(out)
    }
}
