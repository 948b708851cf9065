//! The operators' gRPC service: apply, get, delete, fleet status, join tokens, history.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use proto::v1 as pb;
use tonic::{Request, Response, Status};
use warden_core::authorize::Authorizer;
use warden_core::resource::validate_name;
use warden_core::{Document, Kind, ResourceKey};

use crate::configuration::Configuration;
use crate::configuration::history::{self, CHANGE_READ, Line};
use crate::configuration::state::{self, WriteError};
use crate::configuration::store::{AuditEntry, StoreError};
use crate::fleet::Fleet;
use crate::fleet::peer::{AdminCaller, admin_caller};
use crate::inventory::Inventory;
use crate::pinning::Pinning;
use crate::telemetry::Telemetry;
use crate::tokens::Tokens;

/// Most documents in one apply.
pub const MAX_DOCUMENTS_PER_APPLY: usize = 1000;
/// Largest single document.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Longest operator-certificate lifetime.
pub const MAX_OPERATOR_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Longest join-token lifetime.
pub const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The operators' view of every subsystem: the one service that reads them all.
#[derive(Clone)]
pub struct AdminService {
    configuration: Arc<Configuration>,
    fleet: Arc<Fleet>,
    tokens: Arc<Tokens>,
    telemetry: Arc<Telemetry>,
    inventory: Arc<Inventory>,
    pinning: Arc<Pinning>,
    /// The scorecard's kept tallies (shared with the console).
    tallies: Arc<crate::scorecard::Tallies>,
}

impl AdminService {
    /// A service over the subsystems of one control plane.
    pub fn new(
        configuration: Arc<Configuration>,
        fleet: Arc<Fleet>,
        tokens: Arc<Tokens>,
        telemetry: Arc<Telemetry>,
        inventory: Arc<Inventory>,
        pinning: Arc<Pinning>,
        tallies: Arc<crate::scorecard::Tallies>,
    ) -> AdminService {
        AdminService { configuration, fleet, tokens, telemetry, inventory, pinning, tallies }
    }

    /// The caller, for the audit trail; an operator certificate only while the registry lists
    /// it (not revoked, and issued since certificates were registered), read on every call so a
    /// revocation holds at once on every replica.
    async fn actor<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let caller = admin_caller(request, self.fleet.ca().trust_domain())?;
        if let AdminCaller::Operator(name, serial) = &caller {
            let record = self
                .configuration
                .store()
                .operator(name)
                .await
                .map_err(|e| Status::unavailable(format!("the operator registry cannot be read: {e}")))?;
            if !record.is_some_and(|r| r.accepts(serial, crate::now_unix_ms() / 1000)) {
                tracing::warn!(operator = %name, serial, "refused a revoked or unregistered operator certificate");
                return Err(Status::permission_denied(format!(
                    "this operator certificate for {name} was revoked (or predates the operator registry): have a new one issued over the admin socket"
                )));
            }
        }
        Ok(caller.actor())
    }
}

/// Resources one cascading delete removes per write at most (etcd's default `--max-txn-ops`
/// is 128).
const DELETED_PER_WRITE: usize = 100;

fn parse_kind(text: &str) -> Result<Kind, Status> {
    Kind::parse_loose(text).ok_or_else(|| {
        Status::invalid_argument(format!(
            "unknown kind {text:?}; expected TrustedIssuer, McpServer, Policy, CredentialBridge, ToolApproval or Revocation"
        ))
    })
}

impl AdminService {
    /// The documents of an apply, each parsed and validated.
    fn documents(&self, documents_json: &[Vec<u8>]) -> Result<Vec<Document>, Status> {
        if documents_json.len() > MAX_DOCUMENTS_PER_APPLY {
            return Err(Status::invalid_argument(format!(
                "{} documents in one apply; the limit is {MAX_DOCUMENTS_PER_APPLY}",
                documents_json.len()
            )));
        }
        let mut documents = Vec::with_capacity(documents_json.len());
        for (i, bytes) in documents_json.iter().enumerate() {
            if bytes.len() > MAX_DOCUMENT_BYTES {
                return Err(Status::invalid_argument(format!(
                    "document {}: {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
                    i + 1,
                    bytes.len()
                )));
            }
            let doc = Document::from_json_bytes(bytes, self.configuration.admission())
                .map_err(|error| WriteError::Document { index: i + 1, error })?;
            documents.push(doc);
        }
        Ok(documents)
    }
}

/// What an apply does to each document, as the plan says.
fn results_of(plan: &state::Plan) -> Vec<pb::ApplyResult> {
    plan.results
        .iter()
        .map(|(key, action, stored)| pb::ApplyResult {
            kind: key.kind.as_str().into(),
            name: key.name.clone(),
            action: action.as_str().into(),
            resource_version: *stored,
        })
        .collect()
}

/// The policies of `config`, compiled.
fn authorizer(config: Result<warden_core::Config, warden_core::ConfigError>) -> Result<Authorizer, Status> {
    let config = config.map_err(|e| Status::failed_precondition(format!("the configuration does not compile: {e}")))?;
    Ok(Authorizer::new(&config))
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminService {
    async fn explain(&self, request: Request<pb::ExplainRequest>) -> Result<Response<pb::ExplainResponse>, Status> {
        self.actor(&request).await?;
        let id = request.into_inner().record;
        let state = self.configuration.current();
        let authorizer = authorizer(warden_core::Config::build(state.resources.values().map(|e| &e.document)))?;
        let decisions = self.telemetry.decisions().clone();
        let version = state.version;
        let answer = tokio::task::spawn_blocking(move || crate::replay::explain(&decisions, &authorizer, version, &id))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(answer))
    }

    async fn test_apply(
        &self,
        request: Request<pb::TestApplyRequest>,
    ) -> Result<Response<pb::TestApplyResponse>, Status> {
        self.actor(&request).await?;
        let request = request.into_inner();
        let documents = self.documents(&request.documents_json)?;
        let current = self.configuration.current();
        let plan = state::plan_operator_apply(&current, documents, crate::now_unix_ms() / 1000)?;
        let proposed = authorizer(state::proposed(&current, &plan))?;
        let now = authorizer(warden_core::Config::build(current.resources.values().map(|e| &e.document)))?;
        let decisions = self.telemetry.decisions().clone();
        let (since, examples) =
            (request.since_unix_nanos, if request.examples == 0 { 3 } else { request.examples.min(100) });
        let mut answer = tokio::task::spawn_blocking(move || {
            crate::replay::test_apply(&decisions, &now, &proposed, since, examples as usize)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))?;
        answer.results = results_of(&plan);
        answer.version = current.version;
        Ok(Response::new(answer))
    }

    async fn apply(&self, request: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let actor = self.actor(&request).await?;
        let request = request.into_inner();
        let documents = self.documents(&request.documents_json)?;
        if request.dry_run {
            let current = self.configuration.current();
            let plan = state::plan_operator_apply(&current, documents, crate::now_unix_ms() / 1000)?;
            return Ok(Response::new(pb::ApplyResponse { results: results_of(&plan), version: current.version }));
        }
        if !documents.is_empty() && documents.iter().all(|d| d.key().kind == Kind::Revocation) {
            // Committed with whatever other revocations are waiting.
            let (version, applied) = self.tokens.revoker().apply(documents, &actor, "apply").await?;
            let results = applied
                .into_iter()
                .map(|(key, action, stored)| pb::ApplyResult {
                    kind: key.kind.as_str().into(),
                    name: key.name,
                    action: action.as_str().into(),
                    resource_version: if action == state::Action::Unchanged { stored } else { version },
                })
                .collect();
            return Ok(Response::new(pb::ApplyResponse { results, version }));
        }
        let (version, results) = self
            .configuration
            .write(&actor, "apply", |current| {
                let plan = state::plan_operator_apply(current, documents.clone(), crate::now_unix_ms() / 1000)?;
                let results = results_of(&plan);
                Ok((plan, results))
            })
            .await?;
        let results = results
            .into_iter()
            .map(|mut r| {
                if r.action != "unchanged" {
                    r.resource_version = version;
                }
                r
            })
            .collect();
        Ok(Response::new(pb::ApplyResponse { results, version }))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        self.actor(&request).await?;
        let request = request.into_inner();
        let kind = if request.kind.is_empty() { None } else { Some(parse_kind(&request.kind)?) };
        let state = self.configuration.current();
        let name = (!request.name.is_empty()).then_some(request.name.as_str());
        let resources = state.documents(kind, name);
        if !request.name.is_empty() && resources.is_empty() {
            return Err(Status::not_found(format!(
                "{}/{} not found",
                kind.map_or("resource", Kind::as_str),
                request.name
            )));
        }
        let statuses = self.tokens.key_statuses().snapshot();
        let issuer_keys = resources
            .iter()
            .filter(|r| r.kind == Kind::TrustedIssuer.as_str())
            .filter_map(|r| {
                let status = statuses.get(&r.name);
                let keys = state.keys.get(&r.name);
                (status.is_some() || keys.is_some()).then(|| pb::IssuerKeyStatus {
                    issuer: r.name.clone(),
                    kids: keys.map(|k| warden_core::jwks::kids(&k.jwks)).unwrap_or_default(),
                    fetched_at_unix: keys.map_or(0, |k| k.fetched_at_unix),
                    source_uri: keys.map(|k| k.source_uri.clone()).unwrap_or_default(),
                    last_error: status.map(|s| s.last_error.clone()).unwrap_or_default(),
                    next_refresh_unix: status.map_or(0, |s| s.next_refresh_unix),
                })
            })
            .collect();
        let revocations_total = state.revocation_table().len() as u64;
        let now = crate::now_unix_ms() / 1000;
        let bridges = state
            .bridges(now)
            .into_iter()
            .filter(|b| resources.iter().any(|r| r.kind == Kind::CredentialBridge.as_str() && r.name == b.name))
            .collect();
        Ok(Response::new(pb::GetResponse {
            resources,
            version: state.version,
            issuer_keys,
            revocations_total,
            bridges,
        }))
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let actor = self.actor(&request).await?;
        let request = request.into_inner();
        let key = ResourceKey { kind: parse_kind(&request.kind)?, name: request.name };
        let expected = request.expected_resource_version;
        if key.kind == Kind::McpServer {
            // Its ToolApprovals go with it (`plan_delete`); a server with many goes in steps, so
            // no transaction is over etcd's operation limit.
            let approvals: Vec<ResourceKey> = self
                .configuration
                .current()
                .resources
                .iter()
                .filter(|(_, e)| matches!(&e.document.spec, warden_core::resource::Spec::ToolApproval(a) if a.server == key.name))
                .map(|(k, _)| k.clone())
                .collect();
            if approvals.len() > DELETED_PER_WRITE {
                for chunk in approvals.chunks(DELETED_PER_WRITE) {
                    self.configuration.delete(chunk.to_vec(), &actor, "delete").await?;
                }
            }
        }
        let (version, ()) = self
            .configuration
            .write(&actor, "delete", |current| Ok((state::plan_delete(current, key.clone(), expected)?, ())))
            .await?;
        // The definitions its agents reported go too: a server made anew under the name starts
        // with none. (Agents forget a server no longer configured, so none are reported again.)
        if key.kind == Kind::McpServer {
            match self.configuration.store().delete_definitions(&key.name).await {
                Ok(removed) => {
                    tracing::info!(server = %key.name, removed, "the deleted server's tool definitions removed")
                }
                Err(e) => {
                    tracing::warn!(server = %key.name, "the deleted server's tool definitions were not removed: {e}")
                }
            }
        }
        Ok(Response::new(pb::DeleteResponse { version }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.actor(&request).await?;
        let store = self.configuration.store();
        let read = async { Ok::<_, StoreError>((store.agents().await?, store.presence().await?)) };
        let (registered, elsewhere) = match read.await {
            Ok(read) => read,
            // The registry is in the store; without it, this replica still knows who is
            // connected to it (an etcd outage is when operators look).
            Err(e) => {
                tracing::warn!("listing agents from what this replica sees: the store cannot be read: {e}");
                (self.fleet.presence().seen_here(), Vec::new())
            }
        };
        let agents = self.fleet.presence().report(registered, &elsewhere);
        Ok(Response::new(pb::ListAgentsResponse { agents, version: self.configuration.version() }))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let actor = self.actor(&request).await?;
        let request = request.into_inner();
        let ttl = Duration::from_secs(request.ttl_seconds);
        if ttl.is_zero() || ttl > MAX_JOIN_TOKEN_TTL {
            return Err(Status::invalid_argument("join token ttl must be between 1s and 7 days"));
        }
        let agent = request.agent_id;
        warden_core::resource::validate_name(&agent)
            .map_err(|m| Status::invalid_argument(format!("agent id {agent:?}: {m}")))?;
        if crate::configuration::store::RESERVED_AGENT_IDS.contains(&agent.as_str()) {
            return Err(Status::invalid_argument(format!("agent id {agent:?} is reserved")));
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        // Hex, so a token never starts with '-' and reads as a flag on a command line.
        let id: String = rand::random::<[u8; 6]>().iter().map(|b| format!("{b:02x}")).collect();
        let secret = b64.encode(rand::random::<[u8; 24]>());
        let expires_unix = crate::now_unix_ms() / 1000 + ttl.as_secs() as i64;
        let hash = warden_core::identity::secret_hash(&secret);
        let store = self.configuration.store();
        let registered = async {
            if store.agent(&agent).await?.is_some() {
                return Ok(true);
            }
            store.create_join_token(&id, &hash, expires_unix, &agent).await.map(|()| false)
        }
        .await
        .map_err(|e: StoreError| Status::internal(e.to_string()))?;
        if registered {
            return Err(Status::already_exists(format!(
                "agent {agent} is registered already: `wardenctl delete agent {agent}` first if its host was rebuilt"
            )));
        }
        tracing::info!(%actor, token_id = %id, %agent, expires_unix, "join token created");
        let token = warden_core::identity::JoinToken { id, secret, ca_pin: self.fleet.ca().pin() };
        Ok(Response::new(pb::CreateJoinTokenResponse { token: token.to_text(), expires_unix }))
    }

    async fn revoke_operator_certificates(
        &self,
        request: Request<pb::RevokeOperatorCertificatesRequest>,
    ) -> Result<Response<pb::RevokeOperatorCertificatesResponse>, Status> {
        let actor = self.actor(&request).await?;
        let name = request.into_inner().name;
        let removed =
            self.configuration.store().delete_operator(&name).await.map_err(|e| Status::internal(e.to_string()))?;
        if !removed {
            return Err(Status::not_found(format!("no operator certificates were issued to {name}")));
        }
        tracing::warn!(%actor, operator = %name, "operator certificates revoked");
        Ok(Response::new(pb::RevokeOperatorCertificatesResponse {}))
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let actor = self.actor(&request).await?;
        let agent = request.into_inner().agent_id;
        // The store keeps a deletion floor under the id even when nothing is registered.
        validate_name(&agent).map_err(|m| Status::invalid_argument(format!("agent id: {m}")))?;
        let removed = self
            .configuration
            .store()
            .delete_agent(&agent, crate::now_unix_ms() / 1000)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if !removed {
            tracing::warn!(%actor, %agent, "agent deleted while not registered: attestations issued before now are refused");
            return Err(Status::not_found(format!(
                "no agent {agent} is registered; attested joins as {agent} with platform tokens issued before now are \
                 refused from now on all the same"
            )));
        }
        // This replica's session ends at once; other replicas see the deletion in their watch.
        self.fleet.agent_changed(Some(agent.clone()));
        tracing::warn!(%actor, %agent, "agent deleted: its certificates are refused from now on");
        Ok(Response::new(pb::DeleteAgentResponse {}))
    }

    async fn list_tool_definitions(
        &self,
        request: Request<pb::ListToolDefinitionsRequest>,
    ) -> Result<Response<pb::ListToolDefinitionsResponse>, Status> {
        self.actor(&request).await?;
        Ok(Response::new(self.pinning.list(request.get_ref()).await?))
    }

    async fn decide_tool_definition(
        &self,
        request: Request<pb::DecideToolDefinitionRequest>,
    ) -> Result<Response<pb::DecideToolDefinitionResponse>, Status> {
        let actor = self.actor(&request).await?;
        let (version, approval, digest) = self.pinning.decide(&actor, request.get_ref()).await?;
        Ok(Response::new(pb::DecideToolDefinitionResponse { version, approval, digest }))
    }

    async fn list_findings(
        &self,
        request: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<pb::ListFindingsResponse>, Status> {
        self.actor(&request).await?;
        let answer = self
            .inventory
            .list(request.get_ref())
            .await
            .map_err(|e| Status::unavailable(format!("the findings cannot be read: {e}")))?;
        Ok(Response::new(answer))
    }

    async fn scorecard(
        &self,
        request: Request<pb::ScorecardRequest>,
    ) -> Result<Response<pb::ScorecardResponse>, Status> {
        self.actor(&request).await?;
        let since = request.into_inner().since_unix_nanos;
        let card =
            crate::scorecard::compute(&self.configuration, &self.fleet, &self.telemetry, &self.tallies, since).await?;
        Ok(Response::new(card))
    }

    async fn list_decisions(
        &self,
        request: Request<pb::ListDecisionsRequest>,
    ) -> Result<Response<pb::ListDecisionsResponse>, Status> {
        self.actor(&request).await?;
        let filter = request.into_inner();
        let decisions = self.telemetry.decisions().clone();
        let answer = tokio::task::spawn_blocking(move || decisions.list(&filter))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(answer))
    }

    async fn history(&self, request: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        self.actor(&request).await?;
        let request = request.into_inner();
        let record = |e: &AuditEntry| pb::AuditRecord {
            version: e.version,
            time_unix_ms: e.time_unix_ms,
            actor: e.actor.clone(),
            operation: e.operation.clone(),
            kind: e.kind.clone(),
            name: e.name.clone(),
            resource_version: e.previous_resource_version,
            difference: Vec::new(),
            difference_note: String::new(),
        };
        if request.version != 0 {
            let entries =
                self.configuration.store().audit(CHANGE_READ).await.map_err(|e| Status::internal(e.to_string()))?;
            // Off the runtime's workers: differences are work (each bounded in time).
            let records = tokio::task::spawn_blocking(move || {
                history::changes_at(&entries, request.version)
                    .iter()
                    .map(|change| {
                        let difference = change.difference();
                        pb::AuditRecord {
                            difference: difference
                                .lines
                                .iter()
                                .map(|(tag, text)| {
                                    format!(
                                        "{}{text}",
                                        match tag {
                                            Line::Same => "  ",
                                            Line::Removed => "- ",
                                            Line::Added => "+ ",
                                        }
                                    )
                                })
                                .collect(),
                            difference_note: difference.note.unwrap_or_default().to_string(),
                            ..record(change.entry)
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
            if records.is_empty() {
                return Err(Status::not_found(format!(
                    "no document was written at version {} among the newest {CHANGE_READ} changes",
                    request.version
                )));
            }
            return Ok(Response::new(pb::HistoryResponse { records }));
        }
        let limit = match request.limit {
            0 => 100,
            n => n.min(10_000) as usize,
        };
        let entries = self.configuration.store().audit(limit).await.map_err(|e| Status::internal(e.to_string()))?;
        let records = entries.iter().map(record).collect();
        Ok(Response::new(pb::HistoryResponse { records }))
    }

    async fn sign_operator_certificate(
        &self,
        request: Request<pb::SignOperatorCertificateRequest>,
    ) -> Result<Response<pb::SignOperatorCertificateResponse>, Status> {
        let actor = self.actor(&request).await?;
        if !actor.starts_with("uid:") {
            return Err(Status::permission_denied("operator certificates are issued only over the local admin socket"));
        }
        let request = request.into_inner();
        warden_core::resource::validate_name(&request.name)
            .map_err(|m| Status::invalid_argument(format!("operator name: {m}")))?;
        let ttl = Duration::from_secs(request.ttl_seconds);
        if ttl.is_zero() || ttl > MAX_OPERATOR_CERT_TTL {
            return Err(Status::invalid_argument("operator certificate ttl must be between 1s and 90 days"));
        }
        let spiffe_id = self.fleet.ca().operator_spiffe_id(&request.name);
        let cert = self
            .fleet
            .ca()
            .sign_client_csr(&request.csr_pem, &spiffe_id, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now = crate::now_unix_ms() / 1000;
        self.configuration
            .store()
            .operator_issued(&request.name, &cert.serial, cert.not_after_unix, now)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(%actor, operator = %request.name, not_after = cert.not_after_unix, "operator certificate issued");
        Ok(Response::new(pb::SignOperatorCertificateResponse {
            certificate_pem: cert.pem,
            ca_pem: self.fleet.ca().cert_pem().to_string(),
        }))
    }
}
