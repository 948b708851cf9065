//! The secretless scorecard: the four outcomes a programme to take static secrets out of MCP is
//! judged by, computed from what the control plane stored — the agents' findings (stored
//! secrets), the decision records (token lifetimes, how each request was decided) and the
//! configuration (servers in audit mode). Nothing is estimated: every figure is a count or an
//! order statistic of stored records.

use proto::v1 as pb;

/// The longest token lifetime counted as short (15 minutes).
const SHORT_LIFETIME_SECONDS: u64 = 15 * 60;

/// The most decision records one scorecard reads (a retention's worth on most fleets).
pub const MAX_RECORDS: usize = 5_000_000;

/// Reasons given when policy decided on a validated token (any other deny was a refusal before
/// policy: no token, a bad one, a missing scope, a malformed request).
const POLICY_REASONS: &[&str] = &["policy_denied", "policy_error", "tool_not_granted"];

/// Bridges counted one by one (records name them; a configuration holds far fewer).
const MAX_BRIDGES: usize = 10_000;

/// The figures of the decision records within a window, added up record by record.
#[derive(Default)]
pub struct Tally {
    since_unix_nanos: i64,
    lifetimes: Vec<u64>,
    requests: u64,
    validated: u64,
    audited: u64,
    bridged: u64,
    /// Bridged requests by bridge (a bridged record's issuer is its bridge).
    by_bridge: std::collections::HashMap<String, u64>,
    refused: u64,
    read: u64,
}

impl Tally {
    /// A tally of the records made at or after `since_unix_nanos`.
    pub fn since(since_unix_nanos: i64) -> Tally {
        Tally { since_unix_nanos, ..Tally::default() }
    }

    /// Adds one stored record.
    pub fn add(&mut self, r: &pb::DecisionRecord) {
        self.read += 1;
        // Exchanges are the token service's decisions, not requests to a server.
        if r.time_unix_nanos < self.since_unix_nanos || r.via == "token-exchange" {
            return;
        }
        let n = r.count.max(1);
        self.requests += n;
        let allowed = r.decision == pb::Decision::Allow as i32;
        if !r.audit.is_empty() {
            self.audited += n;
        } else if r.via == "bridge" {
            self.bridged += n;
            if let Some(count) = self.by_bridge.get_mut(&r.issuer) {
                *count += n;
            } else if self.by_bridge.len() < MAX_BRIDGES {
                self.by_bridge.insert(r.issuer.clone(), n);
            }
        } else if allowed || POLICY_REASONS.contains(&r.reason.as_str()) {
            self.validated += n;
        } else {
            self.refused += n;
        }
        if r.token_lifetime_seconds > 0 {
            self.lifetimes.push(r.token_lifetime_seconds);
        }
    }

    /// The scorecard: these figures with the findings and the servers in audit mode.
    pub fn finish(
        mut self,
        findings: &[crate::configuration::store::FindingsRecord],
        servers_in_audit: Vec<String>,
        mut bridges: Vec<pb::BridgeStatus>,
        truncated: bool,
    ) -> pb::ScorecardResponse {
        for bridge in &mut bridges {
            bridge.requests = self.by_bridge.get(&bridge.name).copied().unwrap_or(0);
        }
        self.lifetimes.sort_unstable();
        // Nearest-rank percentiles: a value some decision's token actually had.
        let rank = |p: u64| {
            let n = self.lifetimes.len() as u64;
            if n == 0 { 0 } else { self.lifetimes[((p * n).div_ceil(100).max(1) - 1) as usize] }
        };
        let since_secs = self.since_unix_nanos.div_euclid(1_000_000_000);
        let mut card = pb::ScorecardResponse {
            since_unix_nanos: self.since_unix_nanos,
            token_decisions: self.lifetimes.len() as u64,
            lifetime_p50_seconds: rank(50),
            lifetime_p95_seconds: rank(95),
            lifetime_max_seconds: self.lifetimes.last().copied().unwrap_or(0),
            lifetime_at_most_15m: self.lifetimes.iter().filter(|&&l| l <= SHORT_LIFETIME_SECONDS).count() as u64,
            requests: self.requests,
            validated: self.validated,
            audited: self.audited,
            bridged: self.bridged,
            refused: self.refused,
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
        let card = tally.finish(&findings, vec!["notes".into()], bridges.to_vec(), false);
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
    }
}
