//! The pinning subsystem: the definitions (tools, prompts, resource templates) that servers
//! with `toolPinning` listed through the agents' gateways, every version of each with its
//! signs of poisoning, and the approvals operators decide on them.
//!
//! Agents report a definition when it is new or changed where they saw it, for the servers
//! they serve; each version is stored once per name (at most [`MAX_SEEN_PER_NAME`], the
//! approved one always kept), a report that changes nothing is not written, and a server's
//! writes are paced ([`WRITES_PER_SECOND`], after a burst of [`WRITE_BURST`]), so a server
//! flipping between definitions cannot turn its agents' reports into a write storm. A name
//! nothing was approved for is pinned as first seen (a `ToolApproval` written by the control
//! plane, audited as `pin-first-use`) unless its server holds new definitions, its text was not
//! reported, or it shows signs of poisoning — then the name is held (a ToolApproval rejecting
//! it, `hold-flagged`) until an operator approves a definition. Operators approve or reject
//! through [`Pinning::decide`]: a `ToolApproval` written like any resource, so it is audited
//! and reaches every agent with the next version.

use std::collections::HashMap;
use std::sync::Arc;

use proto::v1 as pb;
use warden_core::pinning::{
    self, Definition, DefinitionKind, NewDefinitions, PinningMode, ToolApprovalSpec, approval_name,
};
use warden_core::resource::Spec;
use warden_core::{Document, Kind};

use crate::configuration::Configuration;
use crate::configuration::state::{self, FleetState, WriteError};
use crate::configuration::store::{DefinitionsRecord, SeenDefinition, StoreError, definitions_key};

/// Names kept per server at most; definitions of further names are not stored (they are
/// still enforced by the agents).
pub const MAX_NAMES_PER_SERVER: usize = 2_000;

/// Versions kept per name at most (the approved one is never dropped).
pub const MAX_SEEN_PER_NAME: usize = 8;

/// Definitions one report may carry.
pub const MAX_PER_REPORT: usize = 256;

/// Definition writes per server per second, on average.
pub const WRITES_PER_SECOND: f64 = 1.0;

/// Definition writes a server may make at once (a server listing its tools the first time).
pub const WRITE_BURST: f64 = 200.0;

/// Why a report, a listing or a decision failed.
#[derive(Debug, thiserror::Error)]
pub enum PinningError {
    /// A report with more definitions than one may carry.
    #[error("a report carries {0} definitions; at most {MAX_PER_REPORT}")]
    TooMany(usize),
    /// A request naming something that does not exist or is not of its form.
    #[error("{0}")]
    Invalid(String),
    /// Nothing was seen for what a decision names.
    #[error("{0}")]
    NotSeen(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The approval could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl From<PinningError> for tonic::Status {
    fn from(e: PinningError) -> tonic::Status {
        match e {
            PinningError::TooMany(_) | PinningError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
            PinningError::NotSeen(_) => tonic::Status::not_found(e.to_string()),
            PinningError::Store(e) => tonic::Status::unavailable(format!("the definitions cannot be read: {e}")),
            PinningError::Write(e) => e.into(),
        }
    }
}

/// The definitions seen and their approvals.
pub struct Pinning {
    configuration: Arc<Configuration>,
    /// The digest each name's agents reported last, as stored: the same report again writes
    /// nothing. Cleared when it grows past a bound (it is only a cache).
    latest: std::sync::Mutex<HashMap<String, String>>,
    /// Each server's write allowance: (tokens, when counted).
    writes: std::sync::Mutex<HashMap<String, (f64, std::time::Instant)>>,
}

/// ToolApprovals one first-use write carries at most (etcd's default `--max-txn-ops` is 128
/// and a write takes two more); the rest are written when reported again.
const FIRST_USE_PER_WRITE: usize = 100;

/// Entries of [`Pinning::latest`] at most.
const LATEST_CACHED: usize = 100_000;

/// A server's pinning and each approval of it, as the configuration at one version has them.
fn approval_of<'a>(
    state: &'a FleetState,
    server: &str,
    kind: DefinitionKind,
    name: &str,
) -> Option<(&'a str, &'a ToolApprovalSpec)> {
    state.resources.iter().find_map(|(key, entry)| match &entry.document.spec {
        Spec::ToolApproval(a) if a.server == server && a.kind == kind && a.name == name => Some((key.name.as_str(), a)),
        _ => None,
    })
}

/// The `toolPinning` of `server`, if it is configured.
fn pinning_of(state: &FleetState, server: &str) -> Option<pinning::ToolPinning> {
    let key = warden_core::ResourceKey { kind: Kind::McpServer, name: server.to_string() };
    match &state.resources.get(&key)?.document.spec {
        Spec::McpServer(s) => Some(s.tool_pinning.clone().unwrap_or_default()),
        _ => None,
    }
}

impl Pinning {
    /// The definitions, stored beside `configuration`.
    pub fn new(configuration: Arc<Configuration>) -> Pinning {
        Pinning { configuration, latest: std::sync::Mutex::default(), writes: std::sync::Mutex::default() }
    }

    /// Takes one write from `server`'s allowance; false when it has none left.
    fn may_write(&self, server: &str) -> bool {
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let (tokens, at) = writes.entry(server.to_string()).or_insert((WRITE_BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * WRITES_PER_SECOND).min(WRITE_BURST);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    /// Stores what `agent` (with `labels`) reported at `now_unix`; returns how many
    /// definitions were new or listed again after another. Entries that name no server with
    /// pinning this agent serves, or are not of their form, are skipped (and logged).
    pub async fn record(
        &self,
        agent: &str,
        labels: &std::collections::BTreeMap<String, String>,
        report: &pb::ToolDefinitions,
        now_unix: i64,
    ) -> Result<usize, PinningError> {
        if report.definitions.len() > MAX_PER_REPORT {
            return Err(PinningError::TooMany(report.definitions.len()));
        }
        let store = self.configuration.store();
        let current = self.configuration.current();
        let mut changed = 0;
        let mut first_use = Vec::new();
        let mut settled = Vec::new();
        for reported in &report.definitions {
            let (kind, digest, parsed) = match check(&current, labels, reported) {
                Ok(checked) => checked,
                Err(why) => {
                    tracing::warn!(%agent, server = %reported.server, "a reported definition is skipped: {why}");
                    continue;
                }
            };
            let key = definitions_key(&reported.server, kind.as_str(), &reported.name);
            // Known as listed last, and settled (pinned, held or approved): nothing to do. A
            // name whose approval went (deleted, or its server made anew) is looked at again.
            let settled_here = self.latest.lock().unwrap_or_else(|p| p.into_inner()).get(&key) == Some(&digest);
            if settled_here && approval_of(&current, &reported.server, kind, &reported.name).is_some() {
                continue;
            }
            let mut record = match store.definitions_of(&key).await? {
                Some(record) => record,
                None => {
                    if store.definitions_count(&reported.server).await? >= MAX_NAMES_PER_SERVER {
                        tracing::warn!(%agent, server = %reported.server, "a server lists more than {MAX_NAMES_PER_SERVER} names: not stored");
                        continue;
                    }
                    DefinitionsRecord {
                        server: reported.server.clone(),
                        kind: kind.as_str().to_string(),
                        name: reported.name.clone(),
                        seen: Vec::new(),
                    }
                }
            };
            let listed_last = record.seen.first().is_some_and(|s| s.digest == digest);
            // Paced per server, and charged only for what is written.
            if !listed_last && !self.may_write(&reported.server) {
                tracing::warn!(%agent, server = %reported.server, "the server's definitions change faster than they are stored: skipped (reported again within minutes)");
                continue;
            }
            if !listed_last {
                let seen = match record.seen.iter().position(|s| s.digest == digest) {
                    Some(i) => record.seen.remove(i),
                    None => SeenDefinition {
                        digest: digest.clone(),
                        definition: reported.definition.clone(),
                        first_seen_unix: now_unix,
                        last_seen_unix: now_unix,
                        first_agent: agent.to_string(),
                        flags: parsed.as_ref().map(pinning::flags).unwrap_or_default(),
                    },
                };
                record.seen.insert(0, SeenDefinition { last_seen_unix: now_unix, ..seen });
                let approved =
                    approval_of(&current, &record.server, kind, &record.name).and_then(|(_, a)| a.approved.clone());
                while record.seen.len() > MAX_SEEN_PER_NAME {
                    // The oldest that is not the approved one goes.
                    let Some(i) = record.seen.iter().rposition(|s| Some(&s.digest) != approved.as_ref()) else { break };
                    record.seen.remove(i);
                }
                store.put_definitions(record.clone()).await?;
                changed += 1;
            }
            settled.push((key, digest.clone()));
            if approval_of(&current, &record.server, kind, &record.name).is_none() {
                let listed = &record.seen[0];
                let flagged = reported.flagged || !listed.flags.is_empty();
                let pinning = pinning_of(&current, &record.server).unwrap_or_default();
                if flagged {
                    first_use.push((record.server.clone(), kind, record.name.clone(), digest, false));
                } else if pinning.new_definitions == NewDefinitions::Allow && parsed.is_some() {
                    first_use.push((record.server.clone(), kind, record.name.clone(), digest, true));
                }
            }
        }
        if !first_use.is_empty() {
            self.first_use(first_use).await?;
        }
        // Only now: a report resent after a failure above is handled again.
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        for (key, digest) in settled {
            if latest.len() >= LATEST_CACHED {
                latest.clear();
            }
            latest.insert(key, digest);
        }
        Ok(changed)
    }

    /// For each (server, kind, name, digest, approve) nothing was approved or rejected for yet
    /// (another replica may have written one meanwhile), one write: approves the digest as
    /// first seen, or (not `approve`: it shows signs of poisoning) holds the name by rejecting
    /// it.
    async fn first_use(&self, pins: Vec<(String, DefinitionKind, String, String, bool)>) -> Result<(), PinningError> {
        let admission = *self.configuration.admission();
        for (operation, approve) in [("pin-first-use", true), ("hold-flagged", false)] {
            let (version, written) = self
                .configuration
                .write("control-plane", operation, |current| {
                    let mut documents = Vec::new();
                    for (server, kind, name, digest, _) in pins.iter().filter(|p| p.4 == approve) {
                        if approval_of(current, server, *kind, name).is_some() {
                            continue;
                        }
                        // One etcd transaction holds 128 operations by default.
                        if documents.len() == FIRST_USE_PER_WRITE {
                            break;
                        }
                        let spec = ToolApprovalSpec {
                            server: server.clone(),
                            kind: *kind,
                            name: name.clone(),
                            approved: approve.then(|| digest.clone()),
                            rejected: if approve { Vec::new() } else { vec![digest.clone()] },
                        };
                        let Some(document_name) = free_name(current, &spec) else { continue };
                        documents.push(approval_document(&document_name, &spec, &admission)?);
                    }
                    let count = documents.len();
                    Ok((state::plan_apply(current, documents)?, count))
                })
                .await?;
            if written > 0 {
                tracing::info!(version, written, "{operation}");
            }
        }
        Ok(())
    }

    /// The definitions seen that match `filter` (each field ignored when empty), with how each
    /// stands against its approval.
    pub async fn list(
        &self,
        filter: &pb::ListToolDefinitionsRequest,
    ) -> Result<pb::ListToolDefinitionsResponse, PinningError> {
        let current = self.configuration.current();
        let records = self.configuration.store().definitions(&filter.server).await?;
        let mut out = pb::ListToolDefinitionsResponse::default();
        for record in records {
            if (!filter.kind.is_empty() && record.kind != filter.kind)
                || (!filter.name.is_empty() && record.name != filter.name)
            {
                continue;
            }
            let Some(kind) = DefinitionKind::parse(&record.kind) else { continue };
            let approval = approval_of(&current, &record.server, kind, &record.name);
            let pinning = pinning_of(&current, &record.server).unwrap_or_default();
            let listed = record.seen.first();
            let state = match (approval.map(|(_, a)| a), listed) {
                (_, None) => "new",
                (Some(a), Some(l)) if a.approved.as_ref() == Some(&l.digest) => "approved",
                (Some(a), Some(l)) if a.rejected.contains(&l.digest) => "rejected",
                (Some(a), Some(_)) if a.approved.is_some() => "changed",
                (Some(_), Some(_)) => "held",
                (_, Some(l)) if !l.flags.is_empty() => "flagged",
                _ => "new",
            };
            out.definitions.push(pb::ToolDefinitionStatus {
                server: record.server.clone(),
                kind: record.kind.clone(),
                name: record.name.clone(),
                state: state.into(),
                pinning: pinning.mode.as_str().into(),
                approval: approval.map(|(n, _)| n.to_string()).unwrap_or_default(),
                approved_digest: approval.and_then(|(_, a)| a.approved.clone()).unwrap_or_default(),
                rejected_digests: approval.map(|(_, a)| a.rejected.clone()).unwrap_or_default(),
                seen: record
                    .seen
                    .iter()
                    .map(|s| pb::SeenDefinition {
                        digest: s.digest.clone(),
                        // Texts only when one name is asked for (`tools diff`): a listing of a
                        // fleet's names stays small.
                        definition: if filter.name.is_empty() { String::new() } else { s.definition.clone() },
                        first_seen_unix: s.first_seen_unix,
                        last_seen_unix: s.last_seen_unix,
                        first_agent: s.first_agent.clone(),
                        flags: s
                            .flags
                            .iter()
                            .map(|f| pb::DefinitionFlag {
                                sign: f.sign.code().into(),
                                at: f.at.clone(),
                                detail: f.detail.clone(),
                            })
                            .collect(),
                    })
                    .collect(),
            });
        }
        Ok(out)
    }

    /// Approves (or rejects) one definition seen, as `actor`: writes the name's ToolApproval.
    /// Answers the version that carries it, the approval's name and the digest decided on.
    pub async fn decide(
        &self,
        actor: &str,
        request: &pb::DecideToolDefinitionRequest,
    ) -> Result<(u64, String, String), PinningError> {
        let kind = DefinitionKind::parse(&request.kind).ok_or_else(|| {
            PinningError::Invalid(format!("unknown kind {:?}: tool, prompt or resourceTemplate", request.kind))
        })?;
        let key = definitions_key(&request.server, kind.as_str(), &request.name);
        let record = self.configuration.store().definitions_of(&key).await?.ok_or_else(|| {
            PinningError::NotSeen(format!(
                "no definition of {kind} {:?} of server {:?} was seen (`wardenctl tools list` shows what was)",
                request.name, request.server
            ))
        })?;
        let digest = if request.digest.is_empty() {
            record.seen.first().map(|s| s.digest.clone()).unwrap_or_default()
        } else {
            request.digest.clone()
        };
        if !record.seen.iter().any(|s| s.digest == digest) {
            return Err(PinningError::NotSeen(format!(
                "{digest} is not a definition seen for {kind} {:?}",
                request.name
            )));
        }
        let admission = *self.configuration.admission();
        let operation = if request.approve { "approve-definition" } else { "reject-definition" };
        let (version, name) = self
            .configuration
            .write(actor, operation, |current| {
                let existing = approval_of(current, &request.server, kind, &request.name);
                let mut spec = existing.map(|(_, a)| a.clone()).unwrap_or_else(|| ToolApprovalSpec {
                    server: request.server.clone(),
                    kind,
                    name: request.name.clone(),
                    approved: None,
                    rejected: Vec::new(),
                });
                let name = match existing {
                    Some((name, _)) => name.to_string(),
                    None => free_name(current, &spec).ok_or_else(|| {
                        WriteError::Config(warden_core::ConfigError::ToolApproval {
                            from: warden_core::ResourceKey {
                                kind: Kind::ToolApproval,
                                name: approval_name(&request.server, kind, &request.name),
                            },
                            message: "the name is taken by another definition's approval".into(),
                        })
                    })?,
                };
                spec.rejected.retain(|d| *d != digest);
                if request.approve {
                    spec.approved = Some(digest.clone());
                } else {
                    if spec.approved.as_ref() == Some(&digest) {
                        spec.approved = None;
                    }
                    spec.rejected.push(digest.clone());
                    // The oldest rejections go first past the bound.
                    let over = spec.rejected.len().saturating_sub(pinning::MAX_REJECTED);
                    spec.rejected.drain(..over);
                }
                let document = approval_document(&name, &spec, &admission)?;
                Ok((state::plan_apply(current, vec![document])?, name))
            })
            .await?;
        Ok((version, name, digest))
    }
}

/// The name `spec`'s ToolApproval is written under: [`approval_name`], unless another
/// definition's approval has it (a name made to collide): then none.
fn free_name(state: &FleetState, spec: &ToolApprovalSpec) -> Option<String> {
    let name = approval_name(&spec.server, spec.kind, &spec.name);
    let key = warden_core::ResourceKey { kind: Kind::ToolApproval, name: name.clone() };
    match state.resources.get(&key).map(|e| &e.document.spec) {
        Some(Spec::ToolApproval(a)) if (&a.server, a.kind, &a.name) != (&spec.server, spec.kind, &spec.name) => {
            tracing::warn!(%name, server = %spec.server, "a ToolApproval name is taken by another definition: not written");
            None
        }
        _ => Some(name),
    }
}

/// A reported definition checked: its kind, digest, and the definition parsed (`None` when
/// only its digest was reported).
fn check(
    state: &FleetState,
    labels: &std::collections::BTreeMap<String, String>,
    reported: &pb::ToolDefinition,
) -> Result<(DefinitionKind, String, Option<serde_json::Value>), String> {
    let key = warden_core::ResourceKey { kind: Kind::McpServer, name: reported.server.clone() };
    let Some(Spec::McpServer(server)) = state.resources.get(&key).map(|e| &e.document.spec) else {
        return Err("no such server".into());
    };
    // An agent speaks for the servers it serves, no other.
    if !server.agents.matches(labels) {
        return Err("the agent does not serve this server".into());
    }
    let pinning = server.tool_pinning.clone().unwrap_or_default();
    if pinning.mode == PinningMode::Off {
        return Err("the server's toolPinning is off".into());
    }
    let kind = DefinitionKind::parse(&reported.kind).ok_or("unknown kind")?;
    if reported.name.is_empty() || reported.name.len() > pinning::MAX_NAME_BYTES {
        return Err("a name that is empty or too long".into());
    }
    let digest = pinning::parse_digest(&reported.digest).ok_or("a digest not of its form")?;
    if reported.definition.is_empty() {
        return Ok((kind, reported.digest.clone(), None));
    }
    let definition = Definition::from_reported(kind, &reported.name, &reported.definition)?;
    if definition.digest != digest {
        return Err("the digest is not the definition's".into());
    }
    let value = serde_json::from_str(&reported.definition).map_err(|e| e.to_string())?;
    Ok((kind, reported.digest.clone(), Some(value)))
}

/// A ToolApproval document, validated like one an operator applies.
fn approval_document(
    name: &str,
    spec: &ToolApprovalSpec,
    admission: &warden_core::Admission,
) -> Result<Document, WriteError> {
    let value = serde_json::json!({
        "apiVersion": warden_core::resource::API_VERSION,
        "kind": "ToolApproval",
        "metadata": {"name": name},
        "spec": spec,
    });
    Document::from_json(value, admission).map_err(|error| WriteError::Document { index: 1, error })
}
