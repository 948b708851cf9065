//! Keeping the revocation list small: a `Revocation` that says when every token it covers has
//! expired (`expires`, which the token service and `wardenctl revoke` always set) is deleted
//! then — an ordinary audited write, so agents drop it with the next version.

use std::sync::Arc;
use std::time::Duration;

use warden_core::resource::Spec;

use crate::ControlPlane;

/// Checked at least this often, and within a second of the next expiry.
const INTERVAL: Duration = Duration::from_secs(60);

/// Runs until shutdown.
pub async fn expire(cp: Arc<ControlPlane>) {
    let mut state_rx = cp.state.subscribe();
    let mut shutdown = cp.shutdown.clone();
    loop {
        let current = state_rx.borrow_and_update().clone();
        let now = crate::now_unix_ms() / 1000;
        let mut expired = Vec::new();
        let mut next: Option<i64> = None;
        for (key, entry) in &current.resources {
            if let Spec::Revocation(spec) = &entry.document.spec
                && let Some(expires) = spec.expires_unix()
            {
                if expires <= now {
                    expired.push(key.clone());
                } else {
                    next = Some(next.map_or(expires, |n| n.min(expires)));
                }
            }
        }
        let mut wait = INTERVAL;
        if !expired.is_empty() {
            let count = expired.len();
            match crate::admin::delete_resources(&cp, expired, "control-plane", "expire-revocations").await {
                Ok(version) => tracing::info!(count, version, "expired revocations deleted"),
                Err(e) => {
                    tracing::error!("deleting expired revocations failed: {e}");
                    wait = Duration::from_secs(5);
                }
            }
        } else if let Some(next) = next {
            wait = wait.min(Duration::from_secs((next - now).max(0) as u64 + 1));
        }
        tokio::select! {
            changed = state_rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
