//! The secretless scorecard: the four outcomes a programme to take static secrets out of MCP is
//! judged by, computed from what the control plane stored — the agents' findings (stored
//! secrets), the decision records (token lifetimes, how each request was decided) and the
//! configuration (servers in audit mode). Nothing is estimated: every figure is a count or an
//! order statistic of stored records.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use proto::v1 as pb;
use tonic::Status;

use crate::configuration::Configuration;
use crate::configuration::store::StoreError;
use crate::fleet::Fleet;
use crate::telemetry::Telemetry;

/// Audit entries the scorecard reads for its revocation counts.
const AUDIT_READ: usize = 100_000;

/// The scorecard of the window since `since_unix_nanos` (0: everything stored), as
/// `wardenctl scorecard` and the console show it.
pub async fn compute(
    configuration: &Configuration,
    fleet: &Fleet,
    telemetry: &Telemetry,
    tallies: &Arc<Tallies>,
    since_unix_nanos: i64,
) -> Result<pb::ScorecardResponse, Status> {
    let (decisions, tallies) = (telemetry.decisions().clone(), tallies.clone());
    let read = tokio::task::spawn_blocking(move || tallies.tally(&decisions.snapshot()?, since_unix_nanos));
    let (tally, truncated) =
        read.await.map_err(|e| Status::internal(e.to_string()))?.map_err(|e| Status::internal(e.to_string()))?;
    let findings = configuration
        .store()
        .findings()
        .await
        .map_err(|e| Status::unavailable(format!("the findings cannot be read: {e}")))?;
    let now = crate::now_unix_ms() / 1000;
    let state = configuration.current();
    let audit = state
        .resources
        .iter()
        .filter_map(|(key, entry)| match &entry.document.spec {
            warden_core::resource::Spec::McpServer(s) if s.in_audit(now) => Some(key.name.clone()),
            _ => None,
        })
        .collect();
    let since_ms = since_unix_nanos.div_euclid(1_000_000);
    let parts = Parts {
        findings: &findings,
        servers_in_audit: audit,
        bridges: state.bridges(now),
        revocations_by_source: revocations_by_source(configuration, since_ms).await?,
        enforcement_ms: fleet.presence().enforcement_times(since_ms),
    };
    Ok(tally.finish(parts, truncated))
}

/// How long after a start the kept tallies are read for the first time: once agents have
/// reconnected (a storm of 10,000 settles within 10 s), before an operator's first scorecard.
pub const WARM_UP_DELAY: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads every whole stretch of the decision store into `tallies` once, [`WARM_UP_DELAY`] after
/// a start, so that no operator's first scorecard waits for it (3.1 s at 5,000,000 records).
/// Off the runtime's workers; a shutdown before it starts skips it.
pub async fn warm_up(
    tallies: Arc<Tallies>,
    decisions: Arc<crate::telemetry::decisions::Decisions>,
    mut stop: warden_tasks::Shutdown,
) {
    tokio::select! {
        () = tokio::time::sleep(WARM_UP_DELAY) => {}
        () = stop.requested() => return,
    }
    let started = std::time::Instant::now();
    let read = tokio::task::spawn_blocking(move || decisions.snapshot().and_then(|records| tallies.tally(&records, 0)));
    match read.await {
        Ok(Ok(_)) => tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "scorecard tallies read"),
        Ok(Err(e)) => tracing::warn!("reading the scorecard's tallies: {e}"),
        Err(e) => tracing::warn!("reading the scorecard's tallies: {e}"),
    }
}

/// Records per stretch whose tally is kept (the most a scorecard reads anew once the stretches
/// before are kept: ~20 ms).
const STRETCH: u64 = 32_768;

/// Tallies of whole stretches of the decision store, kept between scorecards. Records are
/// written once, at increasing cursors, and only the oldest are ever deleted, so a full
/// stretch's tally never changes: a scorecard reads only the records after the last full
/// stretch, and those of a stretch its window cuts through, where reading all 5,000,000 kept
/// took 3.2 s on every view (BENCHMARKS.md, "The console at 10,000 agents and 5,000,000
/// records"). Everything is read once, by [`warm_up`] soon after a start (or by a scorecard
/// before it).
#[derive(Default)]
pub struct Tallies {
    /// By stretch: stretch `k` holds cursors `k * STRETCH + 1 ..= (k + 1) * STRETCH`.
    held: Mutex<BTreeMap<u64, Arc<Stretch>>>,
}

/// Names (servers, issuers, bridges) and their bytes a stretch may count and still be kept.
/// Names come from agents' records: a fleet has a few dozen, and an agent inventing them makes
/// its stretches read anew on every scorecard rather than held (memory stays bounded: at most
/// ~153 stretches at the default retention, each under these bounds).
const KEPT_NAMES: usize = 256;
const KEPT_NAME_BYTES: usize = 16 * 1024;

/// One full stretch's tally (of every record, whatever its time) and the times it spans.
struct Stretch {
    tally: Tally,
    earliest: i64,
    latest: i64,
}

impl Tallies {
    /// The tally of the records of `records` made at or after `since_unix_nanos`, among the
    /// newest [`MAX_RECORDS`]; whether older records of the window were left out (blocking).
    pub fn tally(
        &self,
        records: &crate::telemetry::decisions::Snapshot,
        since_unix_nanos: i64,
    ) -> Result<(Tally, bool), crate::telemetry::decisions::DecisionError> {
        self.tally_newest(records, since_unix_nanos, MAX_RECORDS as u64)
    }

    /// [`Tallies::tally`] among the newest `max` records.
    fn tally_newest(
        &self,
        records: &crate::telemetry::decisions::Snapshot,
        since_unix_nanos: i64,
        max: u64,
    ) -> Result<(Tally, bool), crate::telemetry::decisions::DecisionError> {
        let mut tally = Tally::since(since_unix_nanos);
        if records.last == 0 {
            return Ok((tally, false));
        }
        let start = records.first.max(records.last.saturating_sub(max) + 1);
        let (first_stretch, last_stretch) = ((start - 1) / STRETCH, (records.last - 1) / STRETCH);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        // Stretches whose records were deleted are not needed again.
        held.retain(|k, _| *k >= first_stretch);
        let mut earliest = i64::MAX;
        for k in first_stretch..=last_stretch {
            let (from, through) = ((k * STRETCH + 1).max(start), ((k + 1) * STRETCH).min(records.last));
            // Only a stretch read whole is kept or used: one whose oldest records were deleted,
            // or that the newest `max` cut through, is read.
            let whole = from == k * STRETCH + 1 && through == (k + 1) * STRETCH;
            let stretch = match held.get(&k) {
                Some(stretch) if whole => Some(stretch.clone()),
                _ if !whole => None,
                _ => {
                    let mut stretch = Stretch { tally: Tally::since(i64::MIN), earliest: i64::MAX, latest: i64::MIN };
                    records.visit(from, through, |r| {
                        stretch.earliest = stretch.earliest.min(r.time_unix_nanos);
                        stretch.latest = stretch.latest.max(r.time_unix_nanos);
                        stretch.tally.add(r);
                    })?;
                    // One of invented names is neither kept nor merged: read again below, in record
                    // order, as a one-pass tally gives names their own entries.
                    stretch.tally.names_within(KEPT_NAMES, KEPT_NAME_BYTES).then(|| {
                        let stretch = Arc::new(stretch);
                        held.insert(k, stretch.clone());
                        stretch
                    })
                }
            };
            match stretch {
                Some(stretch) if stretch.earliest >= since_unix_nanos => {
                    earliest = earliest.min(stretch.earliest);
                    tally.merge(&stretch.tally);
                }
                Some(stretch) if stretch.latest < since_unix_nanos => tally.read += stretch.tally.read,
                // The newest, partial stretch, or one the window cuts through: read.
                _ => records.visit(from, through, |r| {
                    earliest = earliest.min(r.time_unix_nanos);
                    tally.add(r);
                })?,
            }
        }
        // Records older than those read were left out: did the window reach them?
        let truncated = start > records.first && earliest != i64::MAX && earliest >= since_unix_nanos;
        Ok((tally, truncated))
    }
}

/// Revocations written at or after `since_unix_ms`, by source, from the audit trail (the
/// newest [`AUDIT_READ`] entries at most).
async fn revocations_by_source(
    configuration: &Configuration,
    since_unix_ms: i64,
) -> Result<HashMap<String, u64>, Status> {
    let unavailable = |e: StoreError| Status::unavailable(format!("the audit trail cannot be read: {e}"));
    let entries = configuration.store().audit(AUDIT_READ).await.map_err(unavailable)?;
    let mut by_source = HashMap::new();
    for entry in entries.iter().filter(|e| e.time_unix_ms >= since_unix_ms) {
        if let Some(source) = entry.revocation_source() {
            *by_source.entry(source.to_string()).or_default() += 1;
        }
    }
    Ok(by_source)
}

/// The longest token lifetime counted as short (15 minutes).
const SHORT_LIFETIME_SECONDS: u64 = 15 * 60;

/// The most decision records one scorecard reads (a retention's worth on most fleets).
pub const MAX_RECORDS: usize = 5_000_000;

/// Reasons given when a validated token's request was decided past policy (any other deny was
/// a refusal before policy: no token, a bad one, a missing scope, a malformed request).
const POLICY_REASONS: &[&str] =
    &["policy_denied", "policy_error", "tool_not_granted", "tool_definition_changed", "tool_not_approved"];

/// Bridges, servers and issuers counted one by one (records name them; a configuration holds
/// far fewer); past this, a record counts under [`OTHER`].
const MAX_NAMES: usize = 10_000;
/// Where records of names past [`MAX_NAMES`] are counted.
const OTHER: &str = "_other";

/// Requests by how they were decided.
#[derive(Clone, Copy, Default)]
struct Requests {
    requests: u64,
    validated: u64,
    audited: u64,
    bridged: u64,
    refused: u64,
}

/// How one record's request was decided.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Policy decided it on a validated token (allowed or denied).
    Validated,
    /// Forwarded in audit mode, Warden's decision only recorded.
    Audited,
    /// A credential bridge's key admitted it (a refused key is counted as refused).
    Bridged,
    /// Refused before policy: no token, a bad one, a missing scope, a malformed request.
    Refused,
}

impl How {
    /// Every way, in the order figures list them.
    pub const ALL: [How; 4] = [How::Validated, How::Audited, How::Bridged, How::Refused];

    /// How a record of `decision` with `reason`, `via` and `audit` (naming a target or not) was
    /// decided; `None` for a token exchange (the token service's decision, not a request to a
    /// server). `insufficient_scope` on a target is policy's step-up, not the server's scopes.
    pub fn of(decision: i32, reason: &str, via: &str, audit: &str, targeted: bool) -> Option<How> {
        Some(if via == "token-exchange" {
            return None;
        } else if !audit.is_empty() {
            How::Audited
        } else if via == "bridge" {
            How::Bridged
        } else if decision == pb::Decision::Allow as i32
            || POLICY_REASONS.contains(&reason)
            || (targeted && reason == "insufficient_scope")
        {
            How::Validated
        } else {
            How::Refused
        })
    }

    /// As metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            How::Validated => "validated",
            How::Audited => "audited",
            How::Bridged => "bridged",
            How::Refused => "refused",
        }
    }
}

impl Requests {
    fn merge(&mut self, other: &Requests) {
        self.requests += other.requests;
        self.validated += other.validated;
        self.audited += other.audited;
        self.bridged += other.bridged;
        self.refused += other.refused;
    }

    fn add(&mut self, how: How, n: u64) {
        self.requests += n;
        *match how {
            How::Validated => &mut self.validated,
            How::Audited => &mut self.audited,
            How::Bridged => &mut self.bridged,
            How::Refused => &mut self.refused,
        } += n;
    }

    fn to_proto(self) -> pb::RequestCounts {
        let Requests { requests, validated, audited, bridged, refused } = self;
        pb::RequestCounts { requests, validated, audited, bridged, refused }
    }
}

/// Token lifetimes seen, as counts per lifetime: exact order statistics in the memory of the
/// distinct lifetimes (a few per issuer), not of the records.
#[derive(Default)]
struct Lifetimes(std::collections::BTreeMap<u64, u64>);

impl Lifetimes {
    fn add(&mut self, lifetime: u64, n: u64) {
        *self.0.entry(lifetime).or_default() += n;
    }

    fn merge(&mut self, other: &Lifetimes) {
        for (lifetime, n) in &other.0 {
            self.add(*lifetime, *n);
        }
    }

    fn to_proto(&self) -> pb::TokenLifetimes {
        let decisions: u64 = self.0.values().sum();
        // Nearest rank: a lifetime some decision's token actually had.
        let rank = |p: u64| {
            let wanted = (p * decisions).div_ceil(100).max(1);
            let mut seen = 0;
            self.0.iter().find(|(_, n)| {
                seen += **n;
                seen >= wanted
            })
        };
        let at = |p: u64| if decisions == 0 { 0 } else { rank(p).map_or(0, |(l, _)| *l) };
        pb::TokenLifetimes {
            decisions,
            p50_seconds: at(50),
            p95_seconds: at(95),
            max_seconds: self.0.keys().next_back().copied().unwrap_or(0),
            at_most_15m: self.0.range(..=SHORT_LIFETIME_SECONDS).map(|(_, n)| n).sum(),
        }
    }
}

/// `map[name]`, made if there is room for another name, else `map[OTHER]`.
fn entry<'a, T: Default>(map: &'a mut HashMap<String, T>, name: &str) -> &'a mut T {
    if !map.contains_key(name) {
        let key = if map.len() < MAX_NAMES { name } else { OTHER };
        return map.entry(key.to_string()).or_default();
    }
    map.get_mut(name).expect("present")
}

/// The figures of the decision records within a window, added up record by record.
#[derive(Default)]
pub struct Tally {
    since_unix_nanos: i64,
    fleet: Requests,
    by_server: HashMap<String, Requests>,
    lifetimes: Lifetimes,
    by_issuer: HashMap<String, Lifetimes>,
    /// Bridged requests by bridge (a bridged record's issuer is its bridge).
    by_bridge: HashMap<String, u64>,
    read: u64,
}

impl Tally {
    /// A tally of the records made at or after `since_unix_nanos`.
    pub fn since(since_unix_nanos: i64) -> Tally {
        Tally { since_unix_nanos, ..Tally::default() }
    }

    /// Whether the names it counts are at most `names`, of at most `bytes` together.
    fn names_within(&self, names: usize, bytes: usize) -> bool {
        let keys = || self.by_server.keys().chain(self.by_issuer.keys()).chain(self.by_bridge.keys());
        keys().count() <= names && keys().map(String::len).sum::<usize>() <= bytes
    }

    /// Adds what `other` counted (records of the same window: [`Tallies`] merges only those
    /// made within it). A name `other` counted that finds no room here counts under [`OTHER`]:
    /// past [`MAX_NAMES`] names, which ones have an entry of their own can differ from a
    /// record-by-record tally (the counts, and the sum of the entries, do not).
    fn merge(&mut self, other: &Tally) {
        self.read += other.read;
        self.fleet.merge(&other.fleet);
        for (name, requests) in &other.by_server {
            entry(&mut self.by_server, name).merge(requests);
        }
        self.lifetimes.merge(&other.lifetimes);
        for (name, lifetimes) in &other.by_issuer {
            entry(&mut self.by_issuer, name).merge(lifetimes);
        }
        for (name, n) in &other.by_bridge {
            *entry(&mut self.by_bridge, name) += n;
        }
    }

    /// Adds one stored record.
    pub fn add(&mut self, r: &pb::DecisionRecord) {
        self.read += 1;
        // Exchanges are the token service's decisions, not requests to a server.
        let how = How::of(r.decision, &r.reason, &r.via, &r.audit, !r.target_kind.is_empty());
        let Some(how) = how.filter(|_| r.time_unix_nanos >= self.since_unix_nanos) else { return };
        let n = r.count.max(1);
        self.fleet.add(how, n);
        entry(&mut self.by_server, &r.server).add(how, n);
        if how == How::Bridged {
            *entry(&mut self.by_bridge, &r.issuer) += n;
        }
        if r.token_lifetime_seconds > 0 {
            self.lifetimes.add(r.token_lifetime_seconds, n);
            entry(&mut self.by_issuer, &r.issuer).add(r.token_lifetime_seconds, n);
        }
    }

    /// The scorecard: these figures with the findings, the servers in audit mode, the bridges,
    /// the revocations by source and their enforcement times.
    pub fn finish(self, parts: Parts<'_>, truncated: bool) -> pb::ScorecardResponse {
        let Parts { findings, servers_in_audit, mut bridges, revocations_by_source, enforcement_ms } = parts;
        for bridge in &mut bridges {
            bridge.requests = self.by_bridge.get(&bridge.name).copied().unwrap_or(0);
        }
        let since_secs = self.since_unix_nanos.div_euclid(1_000_000_000);
        let lifetimes = self.lifetimes.to_proto();
        let mut enforcement = Lifetimes::default();
        for ms in enforcement_ms {
            enforcement.add(ms, 1);
        }
        let enforcement = enforcement.to_proto();
        let mut card = pb::ScorecardResponse {
            since_unix_nanos: self.since_unix_nanos,
            token_decisions: lifetimes.decisions,
            lifetime_p50_seconds: lifetimes.p50_seconds,
            lifetime_p95_seconds: lifetimes.p95_seconds,
            lifetime_max_seconds: lifetimes.max_seconds,
            lifetime_at_most_15m: lifetimes.at_most_15m,
            requests: self.fleet.requests,
            validated: self.fleet.validated,
            audited: self.fleet.audited,
            bridged: self.fleet.bridged,
            refused: self.fleet.refused,
            requests_by_server: self.by_server.into_iter().map(|(k, v)| (k, v.to_proto())).collect(),
            lifetimes_by_issuer: self.by_issuer.iter().map(|(k, v)| (k.clone(), v.to_proto())).collect(),
            revocations_by_source,
            enforcement_measured: enforcement.decisions,
            enforcement_p50_ms: enforcement.p50_seconds,
            enforcement_p95_ms: enforcement.p95_seconds,
            enforcement_max_ms: enforcement.max_seconds,
            servers_in_audit,
            bridges,
            records_read: self.read,
            truncated,
            hosts_scanned: findings.len() as u64,
            ..Default::default()
        };
        for f in findings.iter().flat_map(|h| &h.findings) {
            if f.gone_unix == 0 {
                card.secrets_open += 1;
                *card.secrets_open_by_kind.entry(f.kind.clone()).or_default() += 1;
            } else if f.gone_unix >= since_secs {
                card.secrets_resolved += 1;
            }
            if f.first_seen_unix >= since_secs {
                card.secrets_new += 1;
            }
        }
        card
    }
}

/// What the scorecard takes from elsewhere than the decision records.
pub struct Parts<'a> {
    /// Every host's findings.
    pub findings: &'a [crate::configuration::store::FindingsRecord],
    /// Servers in audit mode now.
    pub servers_in_audit: Vec<String>,
    /// Credential bridges now (their request counts are filled in here).
    pub bridges: Vec<pb::BridgeStatus>,
    /// Revocations written within the window, by source.
    pub revocations_by_source: HashMap<String, u64>,
    /// Times from commit to fleet-wide enforcement of the revocations within the window (ms).
    pub enforcement_ms: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::store::{FindingsRecord, StoredFinding};

    fn record(decision: pb::Decision, reason: &str, lifetime: u64) -> pb::DecisionRecord {
        pb::DecisionRecord {
            time_unix_nanos: 2_000_000_000_000,
            decision: decision as i32,
            reason: reason.into(),
            token_lifetime_seconds: lifetime,
            via: "gateway".into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_request_is_counted_once_by_how_it_was_decided() {
        let mut tally = Tally::since(1_000_000_000_000);
        tally.add(&record(pb::Decision::Allow, "", 300));
        tally.add(&record(pb::Decision::Allow, "", 3_600));
        tally.add(&record(pb::Decision::Deny, "policy_denied", 600));
        tally.add(&pb::DecisionRecord { count: 7, ..record(pb::Decision::Deny, "missing_token", 0) });
        tally.add(&pb::DecisionRecord { audit: "would_deny".into(), ..record(pb::Decision::Allow, "malformed", 0) });
        tally.add(&pb::DecisionRecord { via: "token-exchange".into(), ..record(pb::Decision::Allow, "", 300) });
        tally.add(&pb::DecisionRecord { time_unix_nanos: 1, ..record(pb::Decision::Allow, "", 300) });
        let bridged =
            |decision| pb::DecisionRecord { via: "bridge".into(), issuer: "legacy".into(), ..record(decision, "", 0) };
        tally.add(&bridged(pb::Decision::Allow));
        tally.add(&bridged(pb::Decision::Deny));
        let gone = |kind: &str, first: i64, gone: i64| StoredFinding {
            kind: kind.into(),
            first_seen_unix: first,
            gone_unix: gone,
            ..Default::default()
        };
        let findings = [FindingsRecord {
            findings: vec![gone("github_token", 500, 0), gone("github_token", 1_500, 0), gone("jwt", 100, 1_200)],
            ..Default::default()
        }];
        let bridges = ["legacy", "idle"].map(|name| pb::BridgeStatus { name: name.into(), ..Default::default() });
        let parts = Parts {
            findings: &findings,
            servers_in_audit: vec!["notes".into()],
            bridges: bridges.to_vec(),
            revocations_by_source: HashMap::from([("operator".to_string(), 2)]),
            enforcement_ms: vec![120, 80, 400],
        };
        let card = tally.finish(parts, false);
        assert_eq!((card.requests, card.validated, card.refused, card.audited, card.bridged), (13, 3, 7, 1, 2));
        assert_eq!(card.bridges.iter().map(|b| b.requests).collect::<Vec<_>>(), [2, 0]);
        assert_eq!((card.token_decisions, card.lifetime_at_most_15m), (3, 2));
        assert_eq!(
            (card.lifetime_p50_seconds, card.lifetime_p95_seconds, card.lifetime_max_seconds),
            (600, 3_600, 3_600)
        );
        assert_eq!((card.secrets_open, card.secrets_new, card.secrets_resolved), (2, 1, 1));
        assert_eq!(card.secrets_open_by_kind.get("github_token"), Some(&2));
        assert_eq!((card.records_read, card.servers_in_audit.len()), (9, 1));
        assert_eq!(
            (card.enforcement_measured, card.enforcement_p50_ms, card.enforcement_p95_ms, card.enforcement_max_ms),
            (3, 120, 400, 400)
        );
        assert_eq!(card.revocations_by_source.get("operator"), Some(&2));
    }

    #[test]
    fn servers_and_issuers_are_broken_down_and_add_up_to_the_fleet() {
        let mut tally = Tally::since(0);
        let at = |server: &str, issuer: &str, decision, reason: &str, lifetime| pb::DecisionRecord {
            server: server.into(),
            issuer: issuer.into(),
            ..record(decision, reason, lifetime)
        };
        tally.add(&at("github", "corp", pb::Decision::Allow, "", 300));
        tally.add(&at("github", "corp", pb::Decision::Allow, "", 300));
        tally.add(&at("github", "ci", pb::Decision::Allow, "", 900));
        tally.add(&at("jira", "ci", pb::Decision::Deny, "policy_denied", 3_600));
        tally.add(&pb::DecisionRecord { count: 4, ..at("jira", "", pb::Decision::Deny, "missing_token", 0) });
        let parts = Parts {
            findings: &[],
            servers_in_audit: Vec::new(),
            bridges: Vec::new(),
            revocations_by_source: HashMap::new(),
            enforcement_ms: Vec::new(),
        };
        let card = tally.finish(parts, false);
        let github = card.requests_by_server["github"];
        let jira = card.requests_by_server["jira"];
        assert_eq!((github.requests, github.validated, github.refused), (3, 3, 0));
        assert_eq!((jira.requests, jira.validated, jira.refused), (5, 1, 4));
        assert_eq!(github.requests + jira.requests, card.requests);
        let (corp, ci) = (card.lifetimes_by_issuer["corp"], card.lifetimes_by_issuer["ci"]);
        assert_eq!((corp.decisions, corp.p50_seconds, corp.max_seconds, corp.at_most_15m), (2, 300, 300, 2));
        assert_eq!((ci.decisions, ci.p50_seconds, ci.p95_seconds, ci.at_most_15m), (2, 900, 3_600, 1));
        assert_eq!((card.token_decisions, card.lifetime_p50_seconds), (4, 300));
    }

    #[test]
    fn revocations_are_told_apart_by_who_wrote_them() {
        let entry = |actor: &str, operation: &str, kind: &str| crate::configuration::store::AuditEntry {
            document: None,
            version: 1,
            time_unix_ms: 0,
            actor: actor.into(),
            operation: operation.into(),
            kind: kind.into(),
            name: "r".into(),
            previous_resource_version: 0,
        };
        assert_eq!(entry("agent:a", "end-task", "Revocation").revocation_source(), Some("session_end"));
        assert_eq!(entry("token-service", "revoke", "Revocation").revocation_source(), Some("rfc7009"));
        assert_eq!(entry("uid:0", "apply", "Revocation").revocation_source(), Some("operator"));
        assert_eq!(entry("control-plane", "delete", "Revocation").revocation_source(), None, "an expiry");
        assert_eq!(entry("uid:0", "apply", "Policy").revocation_source(), None);
    }

    /// A store in `dir` keeping `retention` records, and `n` more records (times increasing,
    /// servers, issuers, lifetimes and outcomes varying) appended to it by agent `agent`.
    async fn fill(store: &crate::telemetry::decisions::Decisions, agent: &str, from: usize, n: usize) {
        let all: Vec<usize> = (from..from + n).collect();
        for chunk in all.chunks(1_000) {
            let records = chunk.iter().map(|&i| {
                let record = pb::DecisionRecord {
                    sequence: i as u64 + 1,
                    time_unix_nanos: 1_000_000_000 * i as i64,
                    server: format!("server-{}", i % 7),
                    issuer: format!("issuer-{}", i % 3),
                    token_lifetime_seconds: 60 * (1 + i as u64 % 20),
                    via: if i % 13 == 0 { "bridge".into() } else { "gateway".into() },
                    target_kind: "tool".into(),
                    ..record(
                        if i % 4 == 0 { pb::Decision::Deny } else { pb::Decision::Allow },
                        if i % 4 == 0 { "missing_token" } else { "" },
                        0,
                    )
                };
                prost::Message::encode_to_vec(&record).into()
            });
            let batch = pb::DecisionBatch { boot: 7, records: records.collect(), dropped: 0 };
            store.ingest(agent, batch).await.unwrap();
        }
    }

    /// The scorecard of the window from `since` counted record by record, and as the kept
    /// tallies give it.
    fn both_ways(
        tallies: &Tallies,
        store: &crate::telemetry::decisions::Decisions,
        since: i64,
    ) -> (pb::ScorecardResponse, pb::ScorecardResponse) {
        let parts = || Parts {
            findings: &[],
            servers_in_audit: Vec::new(),
            bridges: Vec::new(),
            revocations_by_source: HashMap::new(),
            enforcement_ms: Vec::new(),
        };
        let records = store.snapshot().unwrap();
        let mut plain = Tally::since(since);
        records.visit(records.first, records.last, |r| plain.add(r)).unwrap();
        let (kept, truncated) = tallies.tally(&records, since).unwrap();
        (plain.finish(parts(), false), kept.finish(parts(), truncated))
    }

    #[tokio::test]
    async fn kept_tallies_give_the_scorecard_record_by_record_counting_gives() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::telemetry::decisions::Decisions::open(dir.path(), 1_000_000, Default::default()).unwrap();
        let tallies = Tallies::default();
        // Two whole stretches and part of a third.
        fill(&store, "a", 0, 2 * STRETCH as usize + 5_000).await;
        let (plain, kept) = both_ways(&tallies, &store, 0);
        assert!(plain.requests > 0 && plain.bridged > 0 && plain.refused > 0);
        assert_eq!(kept, plain);
        assert_eq!(tallies.held.lock().unwrap().len(), 2, "the two whole stretches are kept");
        // Kept, and then more records: the same as counting them all again.
        assert_eq!(both_ways(&tallies, &store, 0).1, plain);
        fill(&store, "a", 2 * STRETCH as usize + 5_000, STRETCH as usize).await;
        let (plain, kept) = both_ways(&tallies, &store, 0);
        assert_eq!(kept, plain);
        assert_eq!(tallies.held.lock().unwrap().len(), 3);
        // Windows that start inside a kept stretch, between stretches, and after everything.
        for since_record in [10_000, STRETCH as i64, STRETCH as i64 + 1, 3 * STRETCH as i64 + 4_000, 10_000_000] {
            let (plain, kept) = both_ways(&tallies, &store, 1_000_000_000 * since_record);
            assert_eq!(kept, plain, "since record {since_record}");
        }
    }

    #[tokio::test]
    async fn stretches_of_deleted_records_are_let_go_and_the_rest_still_add_up() {
        let dir = tempfile::tempdir().unwrap();
        // Not a whole number of stretches: the oldest kept stretch is partly deleted.
        let retention = 3 * STRETCH + 1_000;
        let store = crate::telemetry::decisions::Decisions::open(dir.path(), retention, Default::default()).unwrap();
        let tallies = Tallies::default();
        fill(&store, "a", 0, 3 * STRETCH as usize).await;
        assert_eq!(both_ways(&tallies, &store, 0).1, both_ways(&Tallies::default(), &store, 0).0);
        // Past the retention: the oldest records go, and the stretches they were in with them.
        fill(&store, "a", 3 * STRETCH as usize, 2 * STRETCH as usize).await;
        let records = store.snapshot().unwrap();
        assert!(records.first > 1, "records were deleted");
        let (plain, kept) = both_ways(&tallies, &store, 0);
        assert_eq!(kept, plain);
        assert_ne!((records.first - 1) % STRETCH, 0, "the oldest stretch is partly deleted");
        let oldest_kept = (records.first - 1) / STRETCH;
        assert!(tallies.held.lock().unwrap().keys().all(|k| *k >= oldest_kept));
        assert_eq!(both_ways(&tallies, &store, 0).1, plain, "and again, from what is kept");
    }

    #[tokio::test]
    async fn only_the_newest_records_are_counted_when_more_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::telemetry::decisions::Decisions::open(dir.path(), 1_000_000, Default::default()).unwrap();
        let tallies = Tallies::default();
        fill(&store, "a", 0, 3 * STRETCH as usize).await;
        let records = store.snapshot().unwrap();
        assert_eq!(both_ways(&tallies, &store, 0).1.requests, 3 * STRETCH, "every stretch kept");
        // The newest 1.5 stretches: the stretch the bound cuts through is read, not taken whole.
        let max = STRETCH + STRETCH / 2;
        let (kept, truncated) = tallies.tally_newest(&records, 0, max).unwrap();
        let mut plain = Tally::since(0);
        records.visit(records.last - max + 1, records.last, |r| plain.add(r)).unwrap();
        assert_eq!((kept.fleet.requests, kept.read), (plain.fleet.requests, max));
        assert!(truncated, "older records of the window were left out");
    }

    #[tokio::test]
    async fn a_stretch_of_invented_names_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::telemetry::decisions::Decisions::open(dir.path(), 1_000_000, Default::default()).unwrap();
        let tallies = Tallies::default();
        fill(&store, "a", 0, STRETCH as usize).await;
        // A stretch whose records name a new server each.
        let records = (0..STRETCH).map(|i| {
            let record =
                pb::DecisionRecord { sequence: STRETCH + i + 1, server: format!("invented-{i}"), ..Default::default() };
            prost::Message::encode_to_vec(&record).into()
        });
        let records: Vec<prost::bytes::Bytes> = records.collect();
        for chunk in records.chunks(1_000) {
            store.ingest("a", pb::DecisionBatch { boot: 7, records: chunk.to_vec(), dropped: 0 }).await.unwrap();
        }
        let (plain, kept) = both_ways(&tallies, &store, 0);
        assert_eq!(kept, plain);
        assert_eq!(tallies.held.lock().unwrap().keys().copied().collect::<Vec<_>>(), [0], "only the ordinary one");
    }
}
