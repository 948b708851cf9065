//! The agent-facing gRPC service: join, certificate renewal, and the configuration stream.
//!
//! Each connected agent has one [`session`] task. It is level-triggered: whenever the published
//! state moves, it sends the agent whatever takes it from what it holds to the current state (a
//! delta when it holds a version of this store, a full snapshot otherwise).

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use pb::control_message::Message as Out;
use proto::v1 as pb;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use warden_core::attestation::{Admitted, KubernetesJoin, Refusal};
use warden_core::identity::{FleetIdentity, JoinToken, secret_hash};
use warden_core::resource::validate_name;
use warden_core::token::Presenter;

use warden_tasks::Shutdown;

use crate::configuration::Configuration;
use crate::configuration::compiled::Compiled;
use crate::configuration::state::FleetState;
use crate::configuration::store::{AgentRecord, Attested, IssuedSerial, JoinTokenError, RESERVED_AGENT_IDS, Renewal};
use crate::fleet::Fleet;
use crate::fleet::peer::{self, certificate};
use crate::inventory::{self, Inventory};
use crate::pinning::Pinning;
use crate::telemetry::decisions::Decisions;
use crate::tokens::Tokens;

/// How long an agent has to say hello after opening its stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the agent service and each of its sessions use.
#[derive(Clone)]
pub struct AgentService {
    configuration: Arc<Configuration>,
    fleet: Arc<Fleet>,
    /// Where agents' decision records are stored.
    decisions: Arc<Decisions>,
    /// Key refreshes and ended tasks agents report.
    tokens: Arc<Tokens>,
    /// Where the secrets agents find on their hosts are kept.
    inventory: Arc<Inventory>,
    /// Where the definitions servers listed are kept (tool pinning).
    pinning: Arc<Pinning>,
    shutdown: Shutdown,
}

impl AgentService {
    /// A service admitting the agents of `fleet` to `configuration`; its streams end at
    /// `shutdown`.
    pub fn new(
        configuration: Arc<Configuration>,
        fleet: Arc<Fleet>,
        decisions: Arc<Decisions>,
        tokens: Arc<Tokens>,
        inventory: Arc<Inventory>,
        pinning: Arc<Pinning>,
        shutdown: Shutdown,
    ) -> AgentService {
        AgentService { configuration, fleet, decisions, tokens, inventory, pinning, shutdown }
    }

    /// The registered agent the caller's certificate names, that certificate's serial (hex)
    /// and when it expires; refuses anyone else, an agent that was deleted, a certificate the
    /// registry does not list for it (issued before the agent was deleted and joined again, or
    /// replaced by an attested join), and an expired one.
    async fn registered_agent<T>(&self, request: &Request<T>) -> Result<(AgentRecord, String, i64), Status> {
        let (id, serial) = match certificate(request, self.fleet.ca().trust_domain()) {
            Some((FleetIdentity::Agent(id), serial)) => (id, serial),
            _ => return Err(Status::unauthenticated("this call needs an agent certificate issued by the fleet CA")),
        };
        let now = now_unix();
        let not_after = peer::not_after(request).unwrap_or(i64::MIN);
        if not_after <= now {
            tracing::warn!(agent = %id, serial, "refused an expired agent certificate (a resumed TLS session)");
            return Err(Status::unauthenticated(format!(
                "the certificate of agent {id} has expired; join again with a new join token"
            )));
        }
        let record = self
            .configuration
            .store()
            .agent(&id)
            .await
            .map_err(|e| Status::unavailable(format!("the agent registry cannot be read: {e}")))?;
        match record {
            Some(record) if record.accepts(&serial, now) => Ok((record, serial, not_after)),
            _ => {
                tracing::warn!(agent = %id, serial, "refused a certificate of a deleted agent (or one it no longer holds)");
                Err(Status::permission_denied(format!(
                    "agent {id} is not registered with this certificate (deleted by an operator?); join again with a new join token"
                )))
            }
        }
    }
}

impl AgentService {
    /// A join with a platform's token (`request.attestation`) under the `--join-attestation`
    /// rules: the token verified like any (signature, issuer, the rule's audience, lifetime,
    /// revocation) by the configuration agents enforce, then the rule's own checks (service
    /// account, the agent id the token names), then registered unless the agent joined with
    /// this token or a newer one already. Refusals tell the agent why, never echo the token.
    async fn join_attested(&self, request: pb::JoinRequest) -> Result<Response<pb::JoinResponse>, Status> {
        let rules = self.fleet.join_attestation();
        if rules.is_empty() {
            return Err(Status::unauthenticated(
                "this control plane admits no attested joins (warden-cp --join-attestation); join with a join token",
            ));
        }
        let (compiled, now, state) = (self.compiled_for_joins()?, now_unix(), self.configuration.current());
        let mut refusal = None;
        let mut admitted = None;
        for rule in rules.rules() {
            match judge(&compiled, &state.revoked, rule, &request.attestation, &request.agent_id, now) {
                Verdict::Admitted { admitted: a, issued_at, skew } => {
                    admitted = Some((a, issued_at, skew));
                    break;
                }
                Verdict::Refused(why) => {
                    refusal.get_or_insert(why);
                }
                // Another rule of the same cluster and audience may list the account.
                Verdict::RuleRefused(e @ Refusal::ServiceAccountNotAllowed(_)) => refusal = Some(e.to_string()),
                // The rule for this account refuses: final.
                Verdict::RuleRefused(e) => {
                    refusal = Some(e.to_string());
                    break;
                }
            }
        }
        let Some((admitted, issued_at, skew)) = admitted else {
            let why = refusal.unwrap_or_else(|| "no join rule accepts this token".into());
            tracing::warn!(agent = %request.agent_id, "attested join refused: {why}");
            return Err(Status::unauthenticated(format!("attested join refused: {why}")));
        };
        let attested = Attested { rule: admitted.rule.clone(), issued_at };
        let (answer, record) =
            self.certify(&admitted.agent_id, &request.csr_pem, admitted.labels, Some(attested), now)?;
        let replaced = self.configuration.store().register_attested_agent(&record, skew).await.inspect_err(
            |e| tracing::warn!(agent = %admitted.agent_id, rule = %admitted.rule, "attested join refused: {e}"),
        )?;
        if replaced {
            // The agent this join replaced loses its stream here at once (other replicas follow
            // the registry): the registry no longer lists its certificate.
            self.fleet.agent_changed(Some(admitted.agent_id.clone()));
        }
        tracing::info!(
            agent = %admitted.agent_id,
            rule = %admitted.rule,
            service_account = %admitted.service_account,
            "agent joined with an attestation"
        );
        Ok(Response::new(answer))
    }

    /// The configuration compiled, for judging platform tokens.
    fn compiled_for_joins(&self) -> Result<Arc<Compiled>, Status> {
        self.configuration.compiled().map_err(|e| {
            tracing::error!("the stored configuration does not compile: {e}");
            Status::unavailable("the configuration cannot be read; try again")
        })
    }

    /// For a renewal of agent `id`, which joined with an attestation (`before`): its platform's
    /// current `token`, judged as a join would be by the rule that admitted it, and issued no
    /// earlier than the one it joined with; the attestation and the rule's labels to
    /// register. So an identity lasts only while its platform vouches for it (a stolen key
    /// renews nothing without the pod's token), a rule or account taken out of
    /// `--join-attestation` ends its agents at their next renewal, and a rule's changed labels
    /// are registered.
    fn vouched_again(
        &self,
        id: &str,
        before: &Attested,
        token: &str,
    ) -> Result<(Attested, BTreeMap<String, String>), Status> {
        let refuse = |why: String| {
            tracing::warn!(agent = %id, rule = %before.rule, "renewal refused: {why}");
            Status::permission_denied(format!("renewal of agent {id} refused: {why}"))
        };
        if token.is_empty() {
            return Err(refuse("it joined with its platform's token, and renews only with the current one".into()));
        }
        let rules = self.fleet.join_attestation();
        let Some(rule) = rules.rules().find(|r| r.name == before.rule) else {
            return Err(refuse("the join rule that admitted it is no longer configured".into()));
        };
        let compiled = self.compiled_for_joins()?;
        match judge(&compiled, &self.configuration.current().revoked, rule, token, id, now_unix()) {
            Verdict::Admitted { issued_at, .. } if issued_at < before.issued_at => {
                Err(refuse("the token is older than the one it joined with".into()))
            }
            Verdict::Admitted { admitted, issued_at, .. } => {
                Ok((Attested { rule: admitted.rule, issued_at }, admitted.labels))
            }
            Verdict::Refused(why) => Err(refuse(why)),
            Verdict::RuleRefused(e) => Err(refuse(e.to_string())),
        }
    }

    /// A certificate for agent `id` over its CSR, as the answer to its join, and the registry
    /// record that lists it (to be written by the caller's check of how it joined).
    fn certify(
        &self,
        id: &str,
        csr_pem: &str,
        labels: BTreeMap<String, String>,
        attested: Option<Attested>,
        now: i64,
    ) -> Result<(pb::JoinResponse, AgentRecord), Status> {
        let spiffe_id = self.fleet.ca().agent_spiffe_id(id);
        let cert = self
            .fleet
            .ca()
            .sign_client_csr(csr_pem, &spiffe_id, self.fleet.agent_cert_ttl())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut record = AgentRecord {
            id: id.to_string(),
            labels,
            joined_unix: now,
            certificate_not_after_unix: cert.not_after_unix,
            certificates: Vec::new(),
            attested,
        };
        record.issued(cert.serial.clone(), cert.not_after_unix, now);
        let answer =
            pb::JoinResponse { certificate_pem: cert.pem, ca_pem: self.fleet.ca().cert_pem().to_string(), spiffe_id };
        Ok((answer, record))
    }
}

/// What else `rule`'s audience names in `config`, if anything: an MCP server's resource, or a
/// trusted issuer's URL (the token service's identifier; a Kubernetes issuer's URL, its API
/// server's default audience). A token for any of those is presented elsewhere, so it must
/// not join.
/// One join rule's verdict on a platform token offered for agent `id`.
enum Verdict {
    /// The rule admits it: the agent, when the token was issued, and the issuer's clock skew.
    Admitted { admitted: Admitted, issued_at: i64, skew: i64 },
    /// Not under this rule, or not at all, for a reason told to the caller as it is.
    Refused(String),
    /// The rule read the token and refuses it.
    RuleRefused(Refusal),
}

/// `rule`'s verdict on `token` for agent `id`: the token verified like any (signature, issuer,
/// the rule's audience, lifetime, `revoked`) by the configuration agents enforce, then the
/// rule's own checks (service account, the agent id the token names). What the caller is told
/// names nothing of the configuration; the log says which rule and why.
fn judge(
    compiled: &Compiled,
    revoked: &warden_core::token::Revocations,
    rule: &KubernetesJoin,
    token: &str,
    id: &str,
    now: i64,
) -> Verdict {
    if let Some(also) = audience_in_use(&compiled.config, rule) {
        // A token for that must never join: the rule is unusable until fixed.
        tracing::error!(rule = %rule.name, audience = %rule.audience, "join rule refused: its audience is also {also}");
        return Verdict::Refused(
            "a join rule is misconfigured (its audience is used for something else: see the control plane's log)"
                .into(),
        );
    }
    let verified =
        match compiled.verifier.verify_for_exchange(token, &rule.audience, now, revoked, Presenter::default()) {
            Ok(v) if v.issuer == rule.issuer => v,
            Ok(v) => {
                // Which issuers are trusted is the configuration's: logged, not answered.
                let why = Refusal::NoRule { issuer: v.issuer.clone(), audience: rule.audience.clone() };
                // Another rule (another cluster with the same audience) may admit it: debug only.
                tracing::debug!(agent = %id, rule = %rule.name, "not under this join rule: {why}");
                return Verdict::Refused("no join rule accepts tokens of this issuer for this audience".into());
            }
            Err(reason) => return Verdict::Refused(format!("the token is refused: {}", reason.code())),
        };
    match rule.admit(&verified.claims, id) {
        Ok(admitted) => {
            let skew = compiled.config.issuers.get(&rule.issuer).map_or(0, |i| i.clock_skew.0.as_secs() as i64);
            Verdict::Admitted { admitted, issued_at: verified.issued_at, skew }
        }
        Err(e) => Verdict::RuleRefused(e),
    }
}

fn audience_in_use(config: &warden_core::Config, rule: &warden_core::attestation::KubernetesJoin) -> Option<String> {
    // What API servers take by default (`--api-audiences`) when it is not the issuer's URL.
    const API_AUDIENCES: [&str; 3] =
        ["https://kubernetes.default.svc", "https://kubernetes.default.svc.cluster.local", "kubernetes"];
    if API_AUDIENCES.contains(&rule.audience.as_str()) {
        return Some("a Kubernetes API server's default audience".into());
    }
    if let Some((name, _)) = config.servers.iter().find(|(_, s)| s.resource == rule.audience) {
        return Some(format!("McpServer {name}'s resource"));
    }
    if let Some((name, _)) = config.issuers.iter().find(|(_, i)| i.issuer == rule.audience) {
        return Some(format!("TrustedIssuer {name}'s issuer URL"));
    }
    None
}

/// Labels an agent may give itself, and the bytes of each key and value.
const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY_BYTES: usize = 63;
const MAX_LABEL_VALUE_BYTES: usize = 255;

/// Refuses labels past [`MAX_LABELS`] or the bytes of a key or value.
fn bounded_labels(labels: &std::collections::HashMap<String, String>) -> Result<(), Status> {
    let oversized = labels.iter().find(|(k, v)| k.len() > MAX_LABEL_KEY_BYTES || v.len() > MAX_LABEL_VALUE_BYTES);
    if labels.len() > MAX_LABELS || oversized.is_some() {
        return Err(Status::invalid_argument(format!(
            "labels: at most {MAX_LABELS}, keys of at most {MAX_LABEL_KEY_BYTES} bytes, values of at most \
             {MAX_LABEL_VALUE_BYTES}"
        )));
    }
    Ok(())
}

fn now_unix() -> i64 {
    crate::now_unix_ms() / 1000
}

impl From<JoinTokenError> for Status {
    fn from(e: JoinTokenError) -> Status {
        match e {
            JoinTokenError::Store(e) => Status::internal(e.to_string()),
            e => Status::unauthenticated(e.to_string()),
        }
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentService {
    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let request = request.into_inner();
        validate_name(&request.agent_id).map_err(|m| Status::invalid_argument(format!("agent id: {m}")))?;
        if RESERVED_AGENT_IDS.contains(&request.agent_id.as_str()) {
            return Err(Status::invalid_argument(format!("agent id {:?} is reserved", request.agent_id)));
        }
        bounded_labels(&request.labels)?;
        if !request.attestation.is_empty() {
            return self.join_attested(request).await;
        }
        let (id, secret) = JoinToken::parse_credential(&request.token)
            .map_err(|_| Status::unauthenticated(JoinTokenError::Invalid.to_string()))?;
        let store = self.configuration.store();
        store
            .check_join_token(id, &secret_hash(secret), now_unix(), &request.agent_id)
            .await
            .inspect_err(|e| tracing::warn!(token_id = %id, agent = %request.agent_id, "join refused: {e}"))?;
        let labels = request.labels.into_iter().collect();
        let (answer, record) = self.certify(&request.agent_id, &request.csr_pem, labels, None, now_unix())?;
        store
            .consume_join_token(id, &secret_hash(secret), now_unix(), &record)
            .await
            .inspect_err(|e| tracing::warn!(token_id = %id, agent = %request.agent_id, "join refused: {e}"))?;
        tracing::info!(token_id = %id, agent = %request.agent_id, "agent joined");
        Ok(Response::new(answer))
    }

    async fn renew(&self, request: Request<pb::RenewRequest>) -> Result<Response<pb::RenewResponse>, Status> {
        let (record, serial, _) = self.registered_agent(&request).await?;
        let agent = record.id;
        let request = request.into_inner();
        let attested = match &record.attested {
            Some(before) => Some(self.vouched_again(&agent, before, &request.attestation)?),
            None => None,
        };
        let spiffe_id = self.fleet.ca().agent_spiffe_id(&agent);
        let cert = self
            .fleet
            .ca()
            .sign_client_csr(&request.csr_pem, &spiffe_id, self.fleet.agent_cert_ttl())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let issued = IssuedSerial { serial: cert.serial.clone(), not_after_unix: cert.not_after_unix };
        let renewed = self
            .configuration
            .store()
            .renew_agent(&agent, &serial, Renewal { issued, attested }, now_unix())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if !renewed {
            return Err(Status::permission_denied(format!(
                "agent {agent} was deleted or joined again with another certificate"
            )));
        }
        tracing::info!(%agent, not_after = cert.not_after_unix, "agent certificate renewed");
        Ok(Response::new(pb::RenewResponse {
            certificate_pem: cert.pem,
            ca_pem: self.fleet.ca().cert_pem().to_string(),
        }))
    }

    type StreamStream = Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, Status>> + Send + 'static>>;

    async fn stream(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        // Listening for registry changes before reading the registry: a deletion or a
        // replacement landing while the agent takes its time with Hello still ends the stream.
        let changes = self.fleet.registry_changes();
        let (record, serial, not_after) = self.registered_agent(&request).await?;
        let (agent, registered_labels) = (record.id, record.labels);
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::AgentMessage { message: Some(pb::agent_message::Message::Hello(hello)) }))) => hello,
            Ok(Err(status)) => return Err(status),
            Ok(_) => return Err(Status::invalid_argument("the first message on the stream must be Hello")),
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 10s")),
        };
        // What the agent says of itself is kept (presence) and published to etcd: bounded.
        bounded_labels(&hello.labels)?;
        if hello.agent_id != agent {
            return Err(Status::permission_denied(format!(
                "Hello names agent {:?} but the certificate is for {agent:?}",
                hello.agent_id
            )));
        }
        let presented = Presented { serial, not_after_unix: not_after, changes };
        let session = Session::start(self.clone(), agent, presented, registered_labels, hello, inbound);
        let stream = futures_util::stream::unfold(session, |mut session| async move {
            let message = session.next().await?;
            Some((Ok(pb::ControlMessage { message: Some(message) }), session))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The certificate a stream was opened with, and the registry changes that may end it (listened
/// to from before the registry was read).
struct Presented {
    /// Its serial (hex).
    serial: String,
    /// When it expires, seconds since the epoch.
    not_after_unix: i64,
    changes: tokio::sync::broadcast::Receiver<Option<String>>,
}

/// What the session last sent, to decide between a delta and a snapshot.
enum Sent {
    /// The agent holds this state (it ACKed it, said so in Hello, or was just sent it); the flag
    /// says whether it went as a snapshot.
    State(Arc<FleetState>, bool),
    /// The agent's state is unknown (it refused a snapshot): send a snapshot on the next change.
    Unknown,
}

/// One agent's stream. It *is* the response stream (no task, no channel): tonic polls it when
/// the connection can take a message, so a slow agent applies back-pressure to its own session
/// only, and an idle session costs only this struct and the future of [`Session::next`] (its
/// rare store calls are boxed to keep that small: `an_idle_session_holds_little`).
struct Session {
    service: AgentService,
    agent: String,
    generation: u64,
    inbound: Streaming<pb::AgentMessage>,
    state_rx: watch::Receiver<Arc<FleetState>>,
    shutdown: Shutdown,
    heartbeat: tokio::time::Interval,
    /// Changes to the agent registry: after one to this agent's record, the stream ends unless
    /// the registry still lists its certificate.
    changed: tokio::sync::broadcast::Receiver<Option<String>>,
    /// The serial (hex) of the certificate the stream was opened with.
    serial: String,
    /// The registry could not be read after a change: look again at the next heartbeat.
    recheck: bool,
    /// Moves when the same agent opens another stream, which replaces this one.
    superseded: watch::Receiver<u64>,
    sent: Sent,
    /// Messages decided before the next poll (the fleet keys and the answer to Hello).
    pending: VecDeque<Out>,
    /// Findings reports on their way to the store, one write per [`inventory::WRITE_INTERVAL`].
    findings: inventory::Paced<pb::Findings>,
    /// The labels the registry gave the agent when it joined: which servers it serves (not
    /// what its Hello claims).
    labels: std::collections::BTreeMap<String, String>,
    /// When the certificate the stream was opened with expires: the stream ends then, and the
    /// agent comes back with its renewed one (or cannot). One timer for the stream's life, not
    /// one per poll.
    expires: Pin<Box<tokio::time::Sleep>>,
}

impl Session {
    fn start(
        service: AgentService,
        agent: String,
        presented: Presented,
        labels: std::collections::BTreeMap<String, String>,
        hello: pb::Hello,
        inbound: Streaming<pb::AgentMessage>,
    ) -> Session {
        let (generation, superseded) =
            service.fleet.presence().connected(&agent, hello.labels.into_iter().collect(), hello.applied_version);
        let mut state_rx = service.configuration.subscribe();
        let current = state_rx.borrow_and_update().clone();
        let keys = pb::FleetKeys { finding_fingerprint_key: service.inventory.fingerprint_key().to_vec() };
        let mut pending = VecDeque::from([Out::FleetKeys(keys)]);
        let same_store = hello.applied_store_id == current.store_id;
        let delta = (same_store && hello.applied_version < current.version)
            .then(|| current.cached_delta_from(hello.applied_version))
            .flatten();
        let sent = if same_store && hello.applied_version == current.version {
            tracing::info!(%agent, version = current.version, "agent connected, up to date");
            Sent::State(current, false)
        } else if let Some(delta) = delta {
            tracing::info!(%agent, from = hello.applied_version, to = current.version, "agent connected, sending a delta from its version");
            pending.push_back(Out::Delta(delta));
            Sent::State(current, false)
        } else {
            tracing::info!(%agent, from = hello.applied_version, to = current.version, "agent connected, sending snapshot");
            pending.push_back(Out::Snapshot(current.snapshot()));
            Sent::State(current, true)
        };
        let mut heartbeat = tokio::time::interval(service.fleet.heartbeat_interval());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Session {
            shutdown: service.shutdown.clone(),
            service,
            agent,
            generation,
            inbound,
            state_rx,
            heartbeat,
            changed: presented.changes,
            serial: presented.serial,
            recheck: false,
            superseded,
            sent,
            pending,
            findings: inventory::Paced::new(inventory::WRITE_INTERVAL, tokio::time::Instant::now()),
            labels,
            expires: Box::pin(tokio::time::sleep(Duration::from_secs(
                u64::try_from(presented.not_after_unix.saturating_sub(now_unix())).unwrap_or(0),
            ))),
        }
    }

    /// The next message for the agent; `None` ends the stream.
    async fn next(&mut self) -> Option<Out> {
        if let Some(message) = self.pending.pop_front() {
            return Some(message);
        }
        loop {
            tokio::select! {
                changed = self.state_rx.changed() => {
                    changed.ok()?;
                    let current = self.state_rx.borrow_and_update().clone();
                    let message = match &self.sent {
                        Sent::State(held, _) if held.store_id == current.store_id && held.version == current.version => continue,
                        Sent::State(held, _) if held.store_id == current.store_id => Out::Delta(current.delta_from(held)),
                        _ => Out::Snapshot(current.snapshot()),
                    };
                    self.sent = Sent::State(current, matches!(message, Out::Snapshot(_)));
                    return Some(message);
                }
                message = self.inbound.message() => {
                    use pb::agent_message::Message as In;
                    match message {
                        Ok(Some(pb::AgentMessage { message: Some(In::Decisions(batch)) })) => {
                            return self.store_decisions(batch).await;
                        }
                        Ok(Some(pb::AgentMessage { message: Some(In::ToolDefinitions(report)) })) => {
                            // Stored before the next message is read: back-pressure on this agent.
                            let now = crate::now_unix_ms() / 1000;
                            let record = Box::pin(self.service.pinning.record(&self.agent, &self.labels, &report, now));
                            if let Err(e) = record.await {
                                tracing::warn!(agent = %self.agent, "tool definitions not stored: {e}");
                            }
                            continue;
                        }
                        Ok(Some(pb::AgentMessage { message: Some(In::Findings(report)) })) => {
                            if let Some(report) = self.findings.offer(report, tokio::time::Instant::now()) {
                                Box::pin(self.store_findings(report)).await;
                            }
                            continue;
                        }
                        _ => {}
                    }
                    if let Some(reply) = self.handle(message)? {
                        return Some(reply);
                    }
                }
                () = sleep_until_some(self.findings.deadline()) => {
                    if let Some(report) = self.findings.take(tokio::time::Instant::now()) {
                        Box::pin(self.store_findings(report)).await;
                    }
                }
                _ = self.heartbeat.tick() => {
                    if self.recheck && !Box::pin(self.still_listed()).await {
                        return None;
                    }
                    let version = self.service.configuration.version();
                    return Some(Out::Heartbeat(pb::Heartbeat { applied_version: version }));
                }
                changed = self.superseded.changed() => {
                    // One stream per agent: a newer one (a reconnect the old TCP connection did
                    // not notice, or an agent opening streams in a loop) replaces this one.
                    if changed.is_err() || *self.superseded.borrow() != self.generation {
                        tracing::info!(agent = %self.agent, "a newer stream of this agent replaces this one");
                        return None;
                    }
                }
                changed = self.changed.recv() => {
                    let check = match changed {
                        Ok(Some(id)) => id == self.agent,
                        // Changes may have been missed: ask the registry.
                        Ok(None) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => false,
                    };
                    if check && !Box::pin(self.still_listed()).await {
                        return None;
                    }
                }
                () = &mut self.expires => {
                    tracing::info!(agent = %self.agent, "the certificate this stream was opened with expired: the stream ends");
                    return None;
                }
                _ = self.shutdown.requested() => return None,
            }
        }
    }

    /// Whether the registry still lists the certificate the stream was opened with. When the
    /// registry cannot be read, yes for now (a store outage must not disconnect the fleet),
    /// and it is read again at the next heartbeat until it answers.
    async fn still_listed(&mut self) -> bool {
        let listed = match self.service.configuration.store().agent(&self.agent).await {
            Ok(Some(record)) => record.accepts(&self.serial, now_unix()),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(agent = %self.agent, "the agent registry cannot be read ({e}): checking again at the next heartbeat");
                self.recheck = true;
                return true;
            }
        };
        self.recheck = false;
        if !listed {
            tracing::warn!(agent = %self.agent, "the registry no longer lists this stream's certificate (agent deleted or joined again): the stream ends");
        }
        listed
    }

    /// Stores a batch of decision records, then acknowledges it. While this waits for the disk
    /// the session reads nothing more from its agent: back-pressure on that agent alone. A
    /// store failure ends the stream; the agent keeps the records and resends them.
    async fn store_decisions(&self, batch: pb::DecisionBatch) -> Option<Out> {
        let boot = batch.boot;
        match self.service.decisions.ingest(&self.agent, batch).await {
            Ok(sequence) => Some(Out::DecisionsAck(pb::DecisionAck { boot, sequence })),
            Err(e) => {
                tracing::error!(agent = %self.agent, "{e}");
                None
            }
        }
    }

    /// Stores a findings report (a refused or failed one is logged and dropped: the agent sends
    /// its set again after its next scan or reconnect).
    async fn store_findings(&self, report: pb::Findings) {
        let now = crate::now_unix_ms() / 1000;
        match self.service.inventory.record(&self.agent, &report, now).await {
            Ok(changes) => {
                let (opened, gone, open) = (changes.opened, changes.gone, changes.open);
                if opened > 0 || gone > 0 {
                    tracing::warn!(agent = %self.agent, opened, gone, open, "static secrets found on this agent's host changed");
                }
            }
            Err(e) => tracing::warn!(agent = %self.agent, "findings report not stored: {e}"),
        }
    }

    /// Handles one message from the agent: `None` ends the stream, `Some(Some(m))` answers.
    fn handle(&mut self, message: Result<Option<pb::AgentMessage>, Status>) -> Option<Option<Out>> {
        use pb::agent_message::Message as In;
        let (service, agent) = (&self.service, &self.agent);
        match message {
            Ok(Some(pb::AgentMessage { message: Some(In::Ack(ack)) })) => {
                tracing::debug!(%agent, version = ack.version, "ACK");
                service.fleet.presence().acked(agent, ack.version);
            }
            Ok(Some(pb::AgentMessage { message: Some(In::Nack(nack)) })) => {
                let error = crate::fleet::presence::bounded(&nack.error, 1024);
                tracing::warn!(%agent, version = nack.version, %error, "NACK");
                service.fleet.presence().nacked(agent, &nack.error);
                // A refused delta means the agent does not hold what we thought: resend whole.
                // A refused snapshot is not retried until the configuration moves.
                if let Sent::State(_, false) = self.sent {
                    let current = service.configuration.current();
                    let snapshot = Out::Snapshot(current.snapshot());
                    self.sent = Sent::State(current, true);
                    return Some(Some(snapshot));
                }
                self.sent = Sent::Unknown;
            }
            Ok(Some(pb::AgentMessage { message: Some(In::Heartbeat(_)) })) => service.fleet.presence().seen(agent),
            Ok(Some(pb::AgentMessage { message: Some(In::KeyRefresh(request)) })) => {
                tracing::debug!(%agent, issuer = %request.issuer, "key refresh requested");
                service.tokens.request_key_refresh(request.issuer);
            }
            Ok(Some(pb::AgentMessage { message: Some(In::TaskEnded(task)) })) => {
                let (tokens, agent) = (service.tokens.clone(), agent.clone());
                tokio::spawn(async move { tokens.revoker().end_task(agent, task).await });
            }
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(status) => {
                tracing::info!(%agent, "stream error: {}", status.message());
                return None;
            }
        }
        Some(None)
    }
}

/// Sleeps until `deadline`; never wakes without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        tracing::info!(agent = %self.agent, "agent disconnected");
        self.service.fleet.presence().disconnected(&self.agent, self.generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` would return, without calling it.
    fn future_size<'a, F: std::future::Future>(_: impl FnOnce(&'a mut Session) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn labels_an_agent_gives_itself_are_bounded() {
        let labels = |n: usize, key: usize, value: usize| -> std::collections::HashMap<String, String> {
            (0..n).map(|i| (format!("{i:0>key$}"), "v".repeat(value))).collect()
        };
        assert!(bounded_labels(&labels(64, 63, 255)).is_ok());
        for (n, key, value) in [(65, 8, 8), (1, 64, 8), (1, 8, 256)] {
            let refused = bounded_labels(&labels(n, key, value)).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{n} labels, {key}/{value} bytes");
        }
    }

    #[test]
    fn an_idle_session_holds_little() {
        // Every connected agent's session waits in `next()`: at 10,000 agents each KiB here is
        // 10 MB. The store calls it makes now and then are boxed, or they alone made it ~5 KiB.
        let size = future_size(|s: &mut Session| s.next());
        assert!(size <= 1536, "Session::next's future is {size} bytes");
    }
}
