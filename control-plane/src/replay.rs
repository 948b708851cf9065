//! Stored decisions put to policy again: `wardenctl explain` (one record, against the current
//! configuration, policy by policy) and `wardenctl apply --test` (every record of a window,
//! against the configuration an apply would make, reporting what would flip).
//!
//! A record carries what policy read (the caller's facts by digest, the address, the time,
//! whether the call had arguments), never argument values: a call with arguments is not judged
//! against a policy that reads them. Only decisions policy made are replayed: refusals of a
//! token, and methods that pass on the token alone, do not depend on policies.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use proto::decision_record::record_id;
use proto::v1 as pb;
use warden_core::authorize::{Authorizer, RequestFacts};
use warden_core::explain::{self, Check, Recorded, Replayed};
use warden_core::token::Verified;

use crate::telemetry::decisions::{DecisionError, Decisions, caller_of};

/// Records one `apply --test` reads at most.
pub const MAX_RECORDS: usize = 5_000_000;

/// Flip groups reported at most (the largest).
const MAX_FLIPS: usize = 200;

/// Distinct callers counted per flip group (the answer says "at least" past it).
pub const MAX_CALLERS_COUNTED: usize = 10_000;

/// Whether policy decided a record, and what it decided (for audit mode, what Warden would
/// have decided); `None` for a decision no policy made.
fn recorded_decision(r: &pb::DecisionRecord) -> Option<bool> {
    if r.target_kind.is_empty() || r.via == "token-exchange" || r.subject.is_empty() {
        return None;
    }
    // Tool pinning refused a call policy allowed: policy's decision was to allow.
    if r.reason == "tool_definition_changed" || r.reason == "tool_not_approved" {
        return Some(true);
    }
    Some(match r.audit.as_str() {
        "would_allow" => true,
        "would_deny" => false,
        _ => r.decision == pb::Decision::Allow as i32,
    })
}

/// Callers remembered per run (then forgotten and looked up again).
const CALLERS_REMEMBERED: usize = 65_536;

/// Caller facts by digest, each looked up once per run (within [`CALLERS_REMEMBERED`]).
struct Callers<'a> {
    decisions: &'a Decisions,
    known: HashMap<Vec<u8>, Option<(pb::Caller, Arc<Verified>)>>,
}

impl Callers<'_> {
    fn get(&mut self, digest: &[u8]) -> Result<Option<&(pb::Caller, Arc<Verified>)>, DecisionError> {
        if !self.known.contains_key(digest) {
            if self.known.len() >= CALLERS_REMEMBERED {
                self.known.clear();
            }
            let facts = if digest.is_empty() { None } else { self.decisions.caller(digest)? };
            let entry = facts.map(|f| {
                let workload = Arc::new(caller_of(&f).workload());
                (f, workload)
            });
            self.known.insert(digest.to_vec(), entry);
        }
        Ok(self.known.get(digest).and_then(Option::as_ref))
    }
}

/// The time policy saw: the request's arrival, which the record keeps as a lag before its own.
fn policy_time(r: &pb::DecisionRecord) -> i64 {
    r.time_unix_nanos
        .div_euclid(1_000_000_000)
        .saturating_sub(i64::try_from(r.policy_time_lag_seconds).unwrap_or(i64::MAX))
}

fn source_ip(r: &pb::DecisionRecord) -> Option<IpAddr> {
    r.source.parse().ok()
}

/// Explains the record `id` (cursor or `agent/boot/sequence`) against `authorizer`, the
/// configuration of `version` (blocking).
pub fn explain(
    decisions: &Decisions,
    authorizer: &Authorizer,
    version: u64,
    id: &str,
) -> Result<pb::ExplainResponse, tonic::Status> {
    let internal = |e: DecisionError| tonic::Status::internal(e.to_string());
    let stored = decisions.find(id).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let stored = stored.ok_or_else(|| tonic::Status::not_found(format!("no stored decision {id}")))?;
    let record = stored.record.clone().unwrap_or_default();
    let mut out =
        pb::ExplainResponse { decision: Some(stored), version, source_ip: record.source.clone(), ..Default::default() };
    out.policy_time_unix = policy_time(&record);
    if recorded_decision(&record).is_none() {
        out.not_replayed = "no policy decided it: it was refused or passed on the token alone (see its reason)".into();
        return Ok(out);
    }
    let mut callers = Callers { decisions, known: HashMap::new() };
    let Some((facts, workload)) = callers.get(&record.caller).map_err(internal)?.cloned() else {
        out.not_replayed = "the record names no caller the control plane keeps (an agent older than \
                            explain, or facts past retention)"
            .into();
        return Ok(out);
    };
    out.caller = Some(facts);
    let Some(source_ip) = source_ip(&record) else {
        out.not_replayed = "the record has no caller address".into();
        return Ok(out);
    };
    let Some(target) = explain::target_of(&record.target_kind, &record.target) else {
        out.not_replayed = "the record names no target".into();
        return Ok(out);
    };
    if record.arguments && authorizer.reads_arguments(&record.server) {
        // Explained without them, and said so: the conditions on arguments read as absent.
        out.not_replayed = "the call had arguments, which records never keep, and a policy of this server reads \
                            them: conditions on arguments are read as if there were none"
            .into();
    }
    let granted = workload.task.as_ref().map_or(&[][..], |t| &t.tools[..]);
    let facts = RequestFacts { source_ip, now: policy_time(&record), granted_tools: granted, arguments: None };
    let explained = explain::explain(authorizer, &record.server, &workload, &record.method, target, &facts)
        .map_err(|e| tonic::Status::failed_precondition(e.to_string()))?;
    out.replayed = if explained.outcome.allowed { "allow" } else { "deny" }.into();
    out.decided_by = explained.outcome.policies.clone();
    out.changes = explained.changes.clone();
    out.policies = explained
        .readings
        .iter()
        .map(|r| pb::PolicyReading {
            id: r.id.clone(),
            effect: if r.forbid { "forbid" } else { "permit" }.into(),
            shadow: r.shadow,
            scope: r.scope.clone(),
            scope_check: r.scope_check.as_str().into(),
            matched: r.matched(),
            clauses: r
                .clauses
                .iter()
                .map(|c| pb::ClauseReading {
                    text: c.text.clone(),
                    check: c.check.as_str().into(),
                    error: match &c.check {
                        Check::Error(e) => e.clone(),
                        _ => String::new(),
                    },
                    fix: c.fix.clone().unwrap_or_default(),
                })
                .collect(),
        })
        .collect();
    Ok(out)
}

/// One group of flips being counted.
#[derive(Default)]
struct Group {
    count: u64,
    examples: Vec<String>,
    callers: std::collections::HashSet<Vec<u8>>,
}

/// Replays every decision stored since `since_unix_nanos` against the `current` configuration
/// and the `proposed` one, and reports where they differ: what the change would flip, not what
/// changed since a decision was recorded (blocking).
pub fn test_apply(
    decisions: &Decisions,
    current: &Authorizer,
    proposed: &Authorizer,
    since_unix_nanos: i64,
    examples: usize,
) -> Result<pb::TestApplyResponse, DecisionError> {
    let mut out = pb::TestApplyResponse::default();
    let mut callers = Callers { decisions, known: HashMap::new() };
    // (direction, server, method, target, policies now, policies then) → the group.
    type Key = (&'static str, String, String, String, Vec<String>, Vec<String>);
    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    let mut failed = None;
    out.truncated = decisions.visit_since(since_unix_nanos, MAX_RECORDS, |stored| {
        if failed.is_some() {
            return;
        }
        let Some(record) = &stored.record else { return };
        out.records += 1;
        if out.first_unix_nanos == 0 {
            out.first_unix_nanos = record.time_unix_nanos;
        }
        let Some(recorded_allowed) = recorded_decision(record) else {
            out.not_policy += 1;
            return;
        };
        let mut cannot = |why: &str| *out.cannot_judge.entry(why.to_string()).or_default() += 1;
        let workload = match callers.get(&record.caller) {
            Ok(Some((_, w))) => w.clone(),
            Ok(None) => return cannot("caller_unknown"),
            Err(e) => {
                failed = Some(e);
                return;
            }
        };
        let Some(source_ip) = source_ip(record) else { return cannot("no_address") };
        let recorded = Recorded {
            server: &record.server,
            method: &record.method,
            target_kind: &record.target_kind,
            target: &record.target,
            workload: &workload,
            source_ip,
            time: policy_time(record),
            arguments: record.arguments,
        };
        let (now, outcome) = match (explain::replay(current, &recorded), explain::replay(proposed, &recorded)) {
            (Replayed::Decided(now), Replayed::Decided(then)) => (now, then),
            (Replayed::CannotJudge(why), _) | (_, Replayed::CannotJudge(why)) => return cannot(why),
        };
        out.replayed += 1;
        if now.allowed != recorded_allowed {
            out.differs_from_recorded += 1;
        }
        let was_allowed = now.allowed;
        if outcome.allowed == was_allowed {
            out.unchanged += 1;
            return;
        }
        let direction = if was_allowed { "allow_to_deny" } else { "deny_to_allow" };
        let key = (
            direction,
            record.server.clone(),
            record.method.clone(),
            record.target.clone(),
            outcome.policies.clone(),
            if was_allowed { now.policies.clone() } else { Vec::new() },
        );
        let group = groups.entry(key).or_default();
        group.count += 1;
        if group.examples.len() < examples {
            group.examples.push(record_id(&stored.agent, stored.boot, record.sequence));
        }
        if group.callers.len() < MAX_CALLERS_COUNTED {
            group.callers.insert(record.caller.clone());
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let mut flips: Vec<pb::Flip> = groups
        .into_iter()
        .map(|((direction, server, method, target, policies, was_allowed_by), g)| pb::Flip {
            direction: direction.into(),
            server,
            method,
            target,
            policies,
            was_allowed_by,
            count: g.count,
            examples: g.examples,
            callers: g.callers.len() as u64,
        })
        .collect();
    flips.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.direction.cmp(&b.direction)));
    flips.truncate(MAX_FLIPS);
    out.flips = flips;
    Ok(out)
}
