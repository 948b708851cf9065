//! Agents that are gone: an agent that joined with an attestation (a Kubernetes pod's or node's
//! agent) is forgotten once its newest certificate has been expired for [`GRACE`] and the token
//! it joined with has expired for sure (so its record is not what keeps that token from joining
//! again), unless it is connected somewhere. Pods come and go, and without this every pod a
//! sidecar ever ran in would stay registered; an agent that is still there joins again by
//! itself with its platform's current token. Agents that joined with a join token are never
//! forgotten this way: they cannot come back without an operator, who deletes them (`wardenctl
//! delete agent`).

use std::sync::Arc;
use std::time::Duration;

use warden_tasks::Shutdown;

use crate::configuration::Configuration;
use crate::fleet::Fleet;
use crate::fleet::replicas::Leadership;

/// How long past its newest certificate's expiry an attested agent stays registered: longer
/// than the largest clock skew, so every token it joined with has expired too.
pub const GRACE: Duration = Duration::from_secs(3600);

/// How often the registry is looked at.
const EVERY: Duration = Duration::from_secs(600);

/// The ids among `agents` to forget at `now_unix`, but those `connected`.
pub fn departed<'a>(
    agents: impl IntoIterator<Item = &'a crate::configuration::store::AgentRecord>,
    connected: &std::collections::HashSet<String>,
    now_unix: i64,
) -> Vec<String> {
    let before = now_unix - GRACE.as_secs() as i64;
    agents
        .into_iter()
        .filter(|a| a.departed(before, now_unix) && !connected.contains(&a.id))
        .map(|a| a.id.clone())
        .collect()
}

/// Forgets departed agents every [`EVERY`] on the leading replica, until `stop`.
pub async fn forget(configuration: Arc<Configuration>, fleet: Arc<Fleet>, mut leading: Leadership, mut stop: Shutdown) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = stop.requested() => return,
        }
        if !leading.observe() {
            continue;
        }
        let store = configuration.store();
        let now = crate::now_unix_ms() / 1000;
        let agents = match store.agents().await {
            Ok(agents) => agents,
            Err(e) => {
                tracing::warn!("reading the agent registry to forget departed agents: {e}");
                continue;
            }
        };
        // Connected here or to another replica: not gone, whatever the clock says.
        let mut connected: std::collections::HashSet<String> =
            fleet.presence().records("").into_values().map(|r| r.agent).collect();
        match store.presence().await {
            Ok(elsewhere) => connected.extend(elsewhere.into_iter().map(|r| r.agent)),
            Err(e) => {
                tracing::warn!("reading presence to forget departed agents: {e}");
                continue;
            }
        }
        let mut forgotten = 0;
        for id in departed(agents.values(), &connected, now) {
            // Checked again in the store's transaction: one that joined again since stays.
            match store.forget_expired_agent(&id, now - GRACE.as_secs() as i64, now).await {
                Ok(true) => forgotten += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(agent = %id, "forgetting a departed agent: {e}"),
            }
        }
        if forgotten > 0 {
            tracing::info!(forgotten, "attested agents whose certificates expired over an hour ago forgotten");
        }
    }
}
