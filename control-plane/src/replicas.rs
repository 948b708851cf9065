//! Following the other control-plane replicas that share an etcd store: every configuration
//! write any replica makes is watched and published here as the next state, exactly as if this
//! replica had made it, so agents converge whichever replica they are connected to.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::ControlPlane;
use crate::state::{self, FleetState};
use crate::store::Store;
use crate::store::etcd::Followed;

/// Runs until shutdown (nothing to do on the embedded store), following writes after etcd
/// revision `revision` (where this replica's configuration was read).
pub async fn follow(cp: Arc<ControlPlane>, revision: i64) {
    if !matches!(*cp.store, Store::Etcd(_)) {
        return;
    }
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
