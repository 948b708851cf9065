//! Living with the other control-plane replicas that share an etcd store:
//!
//! * every configuration write any replica makes is watched and published here as the next
//!   state, exactly as if this replica had made it, so agents converge whichever replica they
//!   are connected to ([`follow`]); so is every deletion from the agent registry, which ends the
//!   deleted agent's stream wherever it is connected;
//! * a lease holds this replica's part: the leader key (one replica does the singleton duties)
//!   and the presence of the agents connected here, so a replica that crashes loses both within
//!   the lease's lifetime and another takes over ([`hold_lease`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::ControlPlane;
use crate::state::{self, FleetState};
use crate::store::etcd::Followed;
use crate::store::{PresenceRecord, Store};

/// Runs until shutdown (nothing to do on the embedded store), following writes after etcd
/// revision `revision` (where this replica's configuration was read).
pub async fn follow(cp: Arc<ControlPlane>, revision: i64) {
    if !matches!(*cp.store, Store::Etcd(_)) {
        return;
    }
    let registry = {
        let (cp, shutdown) = (cp.clone(), cp.shutdown.clone());
        tokio::spawn(async move {
            if let Store::Etcd(etcd) = &*cp.store {
                etcd.follow_deleted_agents(cp.deleted_agents.clone(), shutdown).await;
            }
        })
    };
    let (tx, mut rx) = mpsc::channel(64);
    let watcher = {
        let (cp, shutdown) = (cp.clone(), cp.shutdown.clone());
        tokio::spawn(async move {
            if let Store::Etcd(etcd) = &*cp.store {
                etcd.follow(revision, tx, shutdown).await;
            }
        })
    };
    while let Some(followed) = rx.recv().await {
        apply(&cp, followed).await;
    }
    let _ = watcher.await;
    let _ = registry.await;
}

async fn apply(cp: &Arc<ControlPlane>, followed: Followed) {
    let current = cp.state.borrow().clone();
    match followed {
        // This replica's own write, or one it already has.
        Followed::Committed(c) if c.version <= current.version => {}
        Followed::Committed(c) if c.version == current.version + 1 => {
            let version = c.version;
            if cp.publish(state::next_state(&current, state::plan_committed(c), version)) {
                tracing::info!(version, "configuration written by another replica");
            }
        }
        Followed::Committed(c) => {
            // A gap: versions this replica never saw. Read everything again.
            tracing::warn!(held = current.version, watched = c.version, "missed configuration versions; reading all");
            let store = cp.store.clone();
            match tokio::task::spawn_blocking(move || store.load()).await {
                Ok(Ok(loaded)) => {
                    cp.publish(FleetState::from_loaded(loaded));
                }
                Ok(Err(e)) => tracing::error!("reading the configuration: {e}"),
                Err(e) => tracing::error!("reading the configuration: {e}"),
            }
        }
        Followed::Reloaded(loaded) => {
            let version = loaded.version;
            if cp.publish(FleetState::from_loaded(loaded)) {
                tracing::info!(version, "configuration read again after an etcd compaction");
            }
        }
    }
}

/// How often leadership is checked and presence changes are published.
const LEASE_TICK: Duration = Duration::from_secs(1);

/// Runs until shutdown (on etcd; the embedded store's one control plane always leads): holds
/// this replica's lease, campaigns for leadership, publishes the agents connected here, and
/// revokes the lease on the way out so the others take over at once.
pub async fn hold_lease(cp: Arc<ControlPlane>) {
    let Store::Etcd(etcd) = &*cp.store else { return };
    let mut shutdown = cp.shutdown.clone();
    loop {
        let (lease, ttl) = match etcd.grant(cp.options.lease_ttl).await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!("etcd lease: {e}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(LEASE_TICK) => continue,
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        };
        // What etcd holds under this lease for the agents connected here.
        let mut published: HashMap<String, PresenceRecord> = HashMap::new();
        // Refreshed on a task of its own, so slow elections or presence writes never delay it.
        let mut alive = {
            let cp = cp.clone();
            tokio::spawn(async move {
                if let Store::Etcd(etcd) = &*cp.store {
                    etcd.keep_alive(lease, ttl).await;
                }
            })
        };
        let _stop_refreshing = AbortOnDrop(alive.abort_handle());
        let mut tick = tokio::time::interval(LEASE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut alive => {
                    tracing::warn!("this replica's etcd lease was lost; no longer leading");
                    set_leading(&cp, false);
                    break;
                }
                _ = tick.tick() => {
                    match etcd.lead(lease, &cp.replica).await {
                        Ok(leading) => set_leading(&cp, leading),
                        Err(e) => tracing::warn!("etcd leader election: {e}"),
                    }
                    let now = cp.presence.records(&cp.replica);
                    let mut changes: Vec<(String, Option<PresenceRecord>)> = now
                        .iter()
                        .filter(|(agent, record)| published.get(*agent) != Some(record))
                        .map(|(agent, record)| (agent.clone(), Some(record.clone())))
                        .collect();
                    changes.extend(published.keys().filter(|a| !now.contains_key(*a)).map(|a| (a.clone(), None)));
                    if !changes.is_empty() {
                        match etcd.put_presence(lease, &cp.replica, &changes).await {
                            Ok(()) => published = now,
                            Err(e) => tracing::warn!("publishing agent presence: {e}"),
                        }
                    }
                }
                changed = shutdown.changed() => {
                    let stopping = changed.is_err() || *shutdown.borrow();
                    if stopping {
                        set_leading(&cp, false);
                        etcd.revoke(lease).await;
                        return;
                    }
                }
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn set_leading(cp: &ControlPlane, leading: bool) {
    let changed = cp.leading.send_if_modified(|held| std::mem::replace(held, leading) != leading);
    if changed {
        if leading {
            tracing::info!(replica = %cp.replica, "this replica now leads the singleton duties");
        } else {
            tracing::info!(replica = %cp.replica, "this replica no longer leads");
        }
    }
}
