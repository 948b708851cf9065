//! The fleet subsystem: the fleet CA and its certificates ([`pki`], [`peer`]), who is
//! connected and what each applied ([`presence`]), and the other replicas sharing an etcd store
//! ([`replicas`]: following their writes, leadership, the lease). The agent service that admits
//! agents and runs their streams (`crate::agents`) is built on it, with the token and telemetry
//! subsystems beside it.

pub mod departed;
pub mod peer;
pub mod pki;
pub mod presence;
pub mod replicas;

use std::time::Duration;

use tokio::sync::broadcast;
use warden_core::attestation::JoinAttestation;

use self::pki::FleetCa;
use self::presence::Presence;

/// The fleet as this replica sees it.
pub struct Fleet {
    ca: FleetCa,
    presence: Presence,
    /// Agents whose registry record changed (deleted, replaced by an attested join, renewed; by
    /// this replica or, watched, another): each session of a named agent checks whether the
    /// registry still lists its certificate, and on `None` every session does (changes may have
    /// been missed).
    changed: broadcast::Sender<Option<String>>,
    /// Lifetime of agent client certificates.
    agent_cert_ttl: Duration,
    /// How often each stream carries a heartbeat when nothing else moves.
    heartbeat_interval: Duration,
    /// Who may join with a platform's token in place of a join token (`--join-attestation`).
    join_attestation: JoinAttestation,
}

impl Fleet {
    /// The fleet of `ca`, with no agent connected yet.
    pub fn new(ca: FleetCa, agent_cert_ttl: Duration, heartbeat_interval: Duration) -> Fleet {
        Fleet {
            ca,
            presence: Presence::default(),
            changed: broadcast::Sender::new(256),
            agent_cert_ttl,
            heartbeat_interval,
            join_attestation: JoinAttestation::default(),
        }
    }

    /// The fleet admitting agents that join with a platform's token under `rules`.
    pub fn with_join_attestation(self, rules: JoinAttestation) -> Fleet {
        Fleet { join_attestation: rules, ..self }
    }

    /// Who may join with a platform's token.
    pub fn join_attestation(&self) -> &JoinAttestation {
        &self.join_attestation
    }

    /// The fleet CA.
    pub fn ca(&self) -> &FleetCa {
        &self.ca
    }

    /// Live status of the agents connected here.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// Tells the sessions on this replica that `agent`'s record changed (`None`: any may have):
    /// the stream of a certificate the registry no longer lists ends.
    pub fn agent_changed(&self, agent: Option<String>) {
        // No receiver: no session is open.
        let _ = self.changed.send(agent);
    }

    /// Changes to the agent registry, from now on.
    pub(crate) fn registry_changes(&self) -> broadcast::Receiver<Option<String>> {
        self.changed.subscribe()
    }

    /// Lifetime of agent client certificates.
    pub fn agent_cert_ttl(&self) -> Duration {
        self.agent_cert_ttl
    }

    /// How often each stream carries a heartbeat when nothing else moves.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// Where changes other replicas made to the registry are announced.
    pub(crate) fn registry_changes_sender(&self) -> broadcast::Sender<Option<String>> {
        self.changed.clone()
    }
}

/// Tells `fleet`'s presence of every version carrying new revocations that this replica sees
/// published, so their time to enforcement is measured, until `stop`. (A version published
/// and replaced before this task looks is not measured.)
pub async fn watch_revocations(
    configuration: std::sync::Arc<crate::configuration::Configuration>,
    fleet: std::sync::Arc<Fleet>,
    mut stop: warden_tasks::Shutdown,
) {
    let mut states = configuration.subscribe();
    let mut seen = states.borrow_and_update().version;
    loop {
        tokio::select! {
            changed = states.changed() => if changed.is_err() { return },
            _ = stop.requested() => return,
        }
        let state = states.borrow_and_update().clone();
        if state.version > seen && !state.revocation_write.puts.is_empty() {
            fleet.presence().revocations_published(state.version, crate::now_unix_ms());
        }
        seen = seen.max(state.version);
    }
}
