//! The configuration stream: connect to one of the control-plane addresses, say hello, apply
//! every snapshot or delta whole (or refuse it whole), answer ACK or NACK, and reconnect with
//! backoff and jitter when the connection is lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use warden_tasks::{Backoff, Shutdown};

use crate::applied::{self, Applied, Current, Source};
use crate::decisions::{InFlight, Outbox};
use crate::definitions::Observed;
use crate::identity::Identity;
use crate::last_good::LastGood;
use crate::tls;

/// Connection state, for the status endpoint.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    /// Whether a stream is open.
    pub connected: bool,
    /// The address of the control plane it is open to, or was last tried.
    pub control_plane: String,
    /// The last connection error.
    pub last_error: String,
}

/// The configuration stream's client: everything it needs.
pub struct Client {
    /// This agent's id.
    pub agent_id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Control-plane addresses, tried in turn.
    pub addresses: Vec<String>,
    /// The current identity (replaced on renewal).
    pub identity: watch::Receiver<Identity>,
    /// The configuration in force.
    pub current: Current,
    /// Where the last good snapshot is kept.
    pub last_good: Arc<LastGood>,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// A stream that carried nothing for this long is considered dead.
    pub idle_timeout: Duration,
    /// How often the agent sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// Published connection state.
    pub link: watch::Sender<Link>,
    /// What the gateway asks of the control plane, sent while a stream is open.
    pub requests: tokio::sync::Mutex<RequestQueues>,
    /// Decision records to send up (none for agents that make no decisions, such as the
    /// propagation benchmark's simulated ones).
    pub outbox: Option<Arc<Outbox>>,
    /// Where the fleet's fingerprint key goes when the control plane sends it (to the scanner).
    pub fleet_key: watch::Sender<Option<[u8; 32]>>,
    /// The scanner's newest findings report, sent at the start of each stream and whenever it
    /// changes.
    pub findings: watch::Receiver<Option<Arc<pb::Findings>>>,
}

/// The gateway's side of its requests to the control plane. Both are bounded and never block
/// a request: a key refresh is dropped when one is already queued (the control plane refreshes
/// on its own schedule anyway); an ended task is dropped only past [`ENDED_TASKS_QUEUED`] (the
/// agent refuses the token itself, and it expires within minutes).
#[derive(Clone)]
pub struct Requests {
    /// Refetch an issuer's keys.
    pub key_refresh: mpsc::Sender<KeyRefresh>,
    /// Revoke a task token whose session ended.
    pub ended_tasks: mpsc::Sender<EndedTask>,
    /// The definitions servers listed (tool pinning), reported as they change.
    pub definitions: Arc<Observed>,
}

/// The stream's side of [`Requests`]; what queued while no stream was open is sent on the next.
pub struct RequestQueues {
    key_refresh: mpsc::Receiver<KeyRefresh>,
    ended_tasks: mpsc::Receiver<EndedTask>,
    definitions: Arc<Observed>,
}

/// How long definitions that changed wait before they are reported, so a burst of list
/// answers becomes one report.
const DEFINITIONS_DELAY: Duration = Duration::from_secs(1);

/// How often every definition remembered is reported again.
const DEFINITIONS_RESENT: Duration = Duration::from_secs(300);

/// Ended tasks queued for the control plane at most.
pub const ENDED_TASKS_QUEUED: usize = 4096;

/// A connected pair of request queues.
pub fn requests() -> (Requests, RequestQueues) {
    let (key_refresh, key_refresh_rx) = mpsc::channel(16);
    let (ended_tasks, ended_tasks_rx) = mpsc::channel(ENDED_TASKS_QUEUED);
    let definitions = Arc::new(Observed::default());
    (
        Requests { key_refresh, ended_tasks, definitions: definitions.clone() },
        RequestQueues { key_refresh: key_refresh_rx, ended_tasks: ended_tasks_rx, definitions },
    )
}

/// A task token that opened a session, to be revoked fleet-wide when the session ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndedTask {
    /// The TrustedIssuer's name (the control plane's token service).
    pub issuer: String,
    /// The token's `jti`.
    pub jti: String,
    /// The token's `exp`, seconds since the epoch.
    pub expires_unix: i64,
}

/// A token named a key its issuer's keys lack: the issuer may have rotated.
#[derive(Clone, Debug)]
pub struct KeyRefresh {
    /// The TrustedIssuer's name.
    pub issuer: String,
    /// The unknown `kid`.
    pub kid: String,
}

/// Why a configuration stream ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// This agent's TLS identity or the address does not serve.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The control plane refused the stream.
    #[error("{} ({})", .0.message(), tls::error_chain(.0))]
    Refused(tonic::Status),
    /// Nothing came within the idle timeout.
    #[error("nothing heard for {0:?}")]
    Silent(Duration),
    /// The stream failed.
    #[error("{}: {}", .0.code(), .0.message())]
    Broken(tonic::Status),
    /// The outgoing half closed.
    #[error("the stream closed")]
    Closed,
}

impl Client {
    /// Runs until `shutdown` flips to true.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut attempt = 0u32;
        let mut next = rand::random::<u32>() as usize % self.addresses.len().max(1);
        loop {
            let address = self.addresses[next % self.addresses.len()].clone();
            next += 1;
            let started = Instant::now();
            let result = tokio::select! {
                r = self.session(&address) => r,
                _ = shutdown.requested() => return,
            };
            let error = match result {
                Ok(()) => "the control plane closed the stream".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(control_plane = %address, "configuration stream: {error}");
            self.link.send_modify(|l| {
                l.connected = false;
                l.control_plane = address.clone();
                l.last_error = error;
            });
            // A stream that lived a while was a success; start backing off afresh.
            if started.elapsed() > Duration::from_secs(30) {
                attempt = 0;
            }
            let delay = self.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.requested() => return,
            }
        }
    }

    /// One connection, until it fails or the control plane closes it.
    async fn session(&self, address: &str) -> Result<(), SessionError> {
        let config = self.identity.borrow().client_config()?;
        let channel = tls::connect(address, config).await?;
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel)
            .max_decoding_message_size(proto::MAX_CONFIG_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(8);
        let held = self.current.get();
        let hello = pb::Hello {
            agent_id: self.agent_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            labels: self.labels.clone().into_iter().collect(),
            applied_store_id: held.as_ref().map(|a| a.store_id.clone()).unwrap_or_default(),
            applied_version: held.as_ref().map_or(0, |a| a.version),
        };
        send(&tx, pb::agent_message::Message::Hello(hello)).await?;
        let mut inbound = client.stream(ReceiverStream::new(rx)).await.map_err(SessionError::Refused)?.into_inner();
        tracing::info!(control_plane = %address, "configuration stream open");
        self.link.send_modify(|l| {
            l.connected = true;
            l.control_plane = address.to_string();
            l.last_error.clear();
        });
        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        heartbeat.tick().await;
        // The control plane replaces a host's findings with each report: the newest goes on
        // every new stream, then each change.
        let mut findings = self.findings.clone();
        let held = findings.borrow_and_update().clone();
        if let Some(report) = held {
            send(&tx, pb::agent_message::Message::Findings((*report).clone())).await?;
        }
        let mut requests = self.requests.lock().await;
        let RequestQueues { key_refresh, ended_tasks, definitions } = &mut *requests;
        // Every definition remembered goes on each new stream (the control plane keeps each
        // version once), then what changes, a second after it does.
        let mut definitions_changed = definitions.subscribe();
        definitions_changed.borrow_and_update();
        let (reports, mut definitions_sent) = definitions.reports_since(0);
        for report in reports {
            send(&tx, pb::agent_message::Message::ToolDefinitions(report)).await?;
        }
        let mut definitions_due: Option<tokio::time::Instant> = None;
        // And everything again now and then: the control plane may have skipped some (it paces
        // each server's writes), and this is how it hears of them again.
        let mut definitions_again = tokio::time::interval(DEFINITIONS_RESENT);
        definitions_again.tick().await;
        // One batch of decision records in flight at a time; unacknowledged ones are resent on
        // the next stream (the outbox forgets a record only when acknowledged).
        let mut in_flight: Option<InFlight> = None;
        let mut outbox_retry: Option<tokio::time::Instant> = None;
        loop {
            let can_send = self.outbox.is_some() && in_flight.is_none() && outbox_retry.is_none();
            tokio::select! {
                message = tokio::time::timeout(self.idle_timeout, inbound.message()) => {
                    let message = match message {
                        Err(_) => return Err(SessionError::Silent(self.idle_timeout)),
                        Ok(Err(status)) => return Err(SessionError::Broken(status)),
                        Ok(Ok(None)) => return Ok(()),
                        Ok(Ok(Some(m))) => m,
                    };
                    if let Some(pb::control_message::Message::DecisionsAck(ack)) = &message.message {
                        match in_flight.take() {
                            Some(batch) if batch.boot() == ack.boot => {
                                if let Some(outbox) = &self.outbox
                                    && let Err(e) = outbox.acknowledge(batch, ack.sequence).await
                                {
                                    tracing::error!("{e}");
                                }
                            }
                            other => in_flight = other,
                        }
                        continue;
                    }
                    if let Some(reply) = self.handle(message) {
                        send(&tx, reply).await?;
                    }
                }
                batch = next_batch(self.outbox.as_deref()), if can_send => match batch {
                    Ok((batch, flight)) => {
                        send(&tx, pb::agent_message::Message::Decisions(batch)).await?;
                        in_flight = Some(flight);
                    }
                    Err(e) => {
                        tracing::error!("{e}; retrying in 5s");
                        outbox_retry = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                    }
                },
                _ = async { tokio::time::sleep_until(outbox_retry.unwrap_or_else(tokio::time::Instant::now)).await }, if outbox_retry.is_some() => {
                    outbox_retry = None;
                }
                Some(KeyRefresh { issuer, kid }) = key_refresh.recv() => {
                    tracing::info!(%issuer, %kid, "asking the control plane to refresh an issuer's keys");
                    send(&tx, pb::agent_message::Message::KeyRefresh(pb::KeyRefreshRequest { issuer, kid })).await?;
                }
                Some(task) = ended_tasks.recv() => {
                    let EndedTask { issuer, jti, expires_unix } = task;
                    tracing::info!(%issuer, jti_hash = %warden_core::token::jti_hash(&issuer, &jti), "a task's session ended: asking the control plane to revoke its token");
                    send(&tx, pb::agent_message::Message::TaskEnded(pb::TaskEnded { issuer, jti, expires_unix })).await?;
                }
                _ = definitions_again.tick() => {
                    definitions_sent = 0;
                    definitions_due.get_or_insert_with(tokio::time::Instant::now);
                }
                Ok(()) = definitions_changed.changed(), if definitions_due.is_none() => {
                    definitions_due = Some(tokio::time::Instant::now() + DEFINITIONS_DELAY);
                }
                _ = async { tokio::time::sleep_until(definitions_due.unwrap_or_else(tokio::time::Instant::now)).await }, if definitions_due.is_some() => {
                    definitions_due = None;
                    definitions_changed.borrow_and_update();
                    let (reports, at) = definitions.reports_since(definitions_sent);
                    definitions_sent = at;
                    for report in reports {
                        send(&tx, pb::agent_message::Message::ToolDefinitions(report)).await?;
                    }
                }
                Ok(()) = findings.changed() => {
                    let held = findings.borrow_and_update().clone();
                    if let Some(report) = held {
                        send(&tx, pb::agent_message::Message::Findings((*report).clone())).await?;
                    }
                }
                _ = heartbeat.tick() => {
                    let version = self.current.get().map_or(0, |a| a.version);
                    send(&tx, pb::agent_message::Message::Heartbeat(pb::Heartbeat { applied_version: version })).await?;
                }
            }
        }
    }

    /// Applies one control message; returns the ACK or NACK to send.
    fn handle(&self, message: pb::ControlMessage) -> Option<pb::agent_message::Message> {
        use pb::control_message::Message;
        let (version, result, journal) = match message.message? {
            Message::Snapshot(s) => (s.version, applied::from_snapshot(s, Source::ControlPlane), None),
            Message::Delta(d) => {
                // What is journaled on disk when only revocations change (small: no resources).
                let journal = applied::revocations_only(&d).then(|| d.clone());
                (d.version, applied::from_delta(self.current.get().as_deref(), d), journal)
            }
            Message::FleetKeys(keys) => {
                match <[u8; 32]>::try_from(keys.finding_fingerprint_key.as_slice()) {
                    Ok(key) => {
                        self.fleet_key.send_if_modified(|held| {
                            let changed = *held != Some(key);
                            *held = Some(key);
                            changed
                        });
                    }
                    Err(_) => tracing::warn!("the control plane sent a fingerprint key that is not 32 bytes; ignored"),
                }
                return None;
            }
            Message::Heartbeat(_) | Message::DecisionsAck(_) => return None,
        };
        Some(match result {
            Ok(applied) => {
                self.enforce(applied, journal.as_ref());
                pb::agent_message::Message::Ack(pb::Ack { version })
            }
            Err(error) => {
                tracing::warn!(version, %error, "configuration refused; keeping the one in force");
                pb::agent_message::Message::Nack(pb::Nack { version, error: error.to_string() })
            }
        })
    }

    fn enforce(&self, applied: Applied, delta: Option<&pb::Delta>) {
        // Persist first so a crash right after the ACK still restarts on this version; a disk
        // failure does not stop the newer configuration from being enforced.
        if let Err(e) = self.last_good.keep(&applied, delta) {
            tracing::error!("could not persist the configuration: {e}");
        }
        let (version, revoked) = (applied.version, applied.revocations.len());
        let compiled = !applied.revocations_only;
        if compiled {
            tracing::info!(version, resources = applied.resources.len(), revoked, "configuration applied");
        } else {
            tracing::debug!(version, revoked, "revocations applied");
        }
        self.current.set(applied);
        if compiled {
            // Compiling a configuration is a burst of allocations, most of them garbage now.
            crate::allocator::trim_soon();
        }
    }
}

async fn next_batch(
    outbox: Option<&Outbox>,
) -> Result<(pb::DecisionBatch, InFlight), crate::decisions::spool::SpoolError> {
    match outbox {
        Some(outbox) => outbox.next_batch().await,
        None => std::future::pending().await,
    }
}

async fn send(tx: &mpsc::Sender<pb::AgentMessage>, message: pb::agent_message::Message) -> Result<(), SessionError> {
    tx.send(pb::AgentMessage { message: Some(message) }).await.map_err(|_| SessionError::Closed)
}
