//! The control plane's metrics, kept from what it stores and sees, and its HTTP endpoint:
//! `/metrics` (Prometheus text), `/healthz`, `/readyz`.

use std::collections::HashMap;
use std::hash::RandomState;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use hashbrown::Equivalent;
use opentelemetry_proto::tonic::metrics::v1 as om;
use proto::decision_record::DecisionRecordView;
use proto::v1 as pb;
use warden_core::metrics::{self, Descriptor, Family, Kind, Label};
use warden_core::prometheus::{Histogram, LATENCY_BUCKETS, LIFETIME_BUCKETS};
use warden_core::resource::Spec;

use crate::scorecard::How;
use warden_tasks::Shutdown;

use crate::configuration::Configuration;
use crate::fleet::Fleet;
use crate::fleet::replicas::Leadership;

/// Counts of the log export, for operators.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Records the receiver accepted.
    pub exported: std::sync::atomic::AtomicU64,
    /// Records the receiver refused for good (counted and skipped).
    pub rejected: std::sync::atomic::AtomicU64,
}

/// What the metrics are read from.
pub struct Sources {
    /// Counts of the stored decision records.
    pub counts: Counts,
    /// The OTLP log export's counts.
    pub export_stats: Arc<ExportStats>,
    /// When this process started: the start of every cumulative metric.
    pub started: std::time::SystemTime,
    /// The version in force, and the agent registry.
    pub configuration: Arc<Configuration>,
    /// Who is connected and what each applied.
    pub fleet: Arc<Fleet>,
    /// Whether this replica leads.
    pub leadership: Leadership,
    /// The static secrets agents found.
    pub inventory: Arc<crate::inventory::Inventory>,
}

/// Label sets kept per family; past this, decisions are counted in an overflow counter only, so
/// hostile or runaway tool names cannot grow the control plane's memory.
const MAX_SERIES: usize = 10_000;

/// Distinct targets (tool, resource, prompt) labelled per agent and server; further ones are
/// counted under [`OTHER_TARGET`]. Target names come from callers: one caller inventing names
/// can then use up only its own server's share of the label budget, never the fleet's.
const MAX_TARGETS_PER_SERVER: usize = 256;
/// The target label of decisions past [`MAX_TARGETS_PER_SERVER`].
const OTHER_TARGET: &str = "_other";

/// (agent, server, tool/resource/prompt, decision, reason).
type DecisionKey = (String, String, String, &'static str, String);

/// A [`DecisionKey`] borrowed from a record, to look a series up without allocating. It hashes
/// as the key does: a tuple and a tuple struct both hash their fields in order, and `String`
/// hashes as `str`.
#[derive(Hash)]
struct DecisionLabels<'a>(&'a str, &'a str, &'a str, &'static str, &'a str);

impl Equivalent<DecisionKey> for DecisionLabels<'_> {
    fn equivalent(&self, k: &DecisionKey) -> bool {
        (self.0, self.1, self.2, self.3, self.4) == (k.0.as_str(), k.1.as_str(), k.2.as_str(), k.3, k.4.as_str())
    }
}

/// (agent, server), borrowed likewise.
#[derive(Hash)]
struct ServerLabels<'a>(&'a str, &'a str);

impl Equivalent<(String, String)> for ServerLabels<'_> {
    fn equivalent(&self, k: &(String, String)) -> bool {
        self.0 == k.0 && self.1 == k.1
    }
}

/// (server, decision), borrowed likewise.
#[derive(Hash)]
struct LatencyLabels<'a>(&'a str, &'static str);

impl Equivalent<(String, &'static str)> for LatencyLabels<'_> {
    fn equivalent(&self, k: &(String, &'static str)) -> bool {
        self.0 == k.0 && self.1 == k.1
    }
}

/// Maps keyed by label sets that agents' and callers' strings make: SipHash with a per-process
/// key, as std's maps use.
type LabelMap<K, V> = hashbrown::HashMap<K, V, RandomState>;

/// Decision counts from the records stored since the control plane started.
#[derive(Default)]
pub struct DecisionCounts {
    decisions: LabelMap<DecisionKey, u64>,
    /// (server, decision) → decision latency.
    latency: LabelMap<(String, &'static str), Histogram>,
    /// Issuer → lifetime (`exp - iat`) of the tokens decisions were made with.
    lifetimes: HashMap<String, Histogram>,
    overflow: u64,
    /// Records agents reported dropping, all runs (cumulative).
    dropped: HashMap<String, u64>,
    /// (agent, server) → the targets labelled.
    targets: LabelMap<(String, String), std::collections::HashSet<String>>,
    /// Server → requests by how they were decided (the scorecard's claim validation).
    requests: HashMap<String, [u64; 4]>,
}

fn decision_name(d: i32) -> &'static str {
    if d == pb::Decision::Allow as i32 { "allow" } else { "deny" }
}

impl DecisionCounts {
    /// Counts one stored record of `agent` (allocating only for a series not seen before).
    pub fn observe(&mut self, agent: &str, r: &DecisionRecordView<'_>) {
        let decision = decision_name(r.decision);
        let n = r.decisions();
        let mut target = r.target;
        if let Some(count) = self.decisions.get_mut(&DecisionLabels(agent, r.server, target, decision, r.reason)) {
            *count += n;
            return self.observe_rest(decision, r);
        }
        // A target not labelled yet for this agent and server: past the share, counted as other.
        let labelled = self.targets.get(&ServerLabels(agent, r.server));
        if !labelled.is_some_and(|t| t.contains(target)) {
            if labelled.is_some_and(|t| t.len() >= MAX_TARGETS_PER_SERVER) {
                target = OTHER_TARGET;
            } else if self.decisions.len() < MAX_SERIES {
                self.targets.entry((agent.to_string(), r.server.to_string())).or_default().insert(target.to_string());
            }
        }
        if let Some(count) = self.decisions.get_mut(&DecisionLabels(agent, r.server, target, decision, r.reason)) {
            *count += n;
        } else if self.decisions.len() < MAX_SERIES {
            self.decisions.insert((agent.into(), r.server.into(), target.into(), decision, r.reason.into()), n);
        } else {
            self.overflow += n;
        }
        self.observe_rest(decision, r);
    }

    /// The token-lifetime and latency histograms of one record, and how it was decided.
    fn observe_rest(&mut self, decision: &'static str, r: &DecisionRecordView<'_>) {
        if let Some(how) = How::of(r.decision, r.reason, r.via, r.audit) {
            let index = How::ALL.iter().position(|h| *h == how).unwrap_or(0);
            if let Some(counts) = self.requests.get_mut(r.server) {
                counts[index] += r.decisions();
            } else if self.requests.len() < MAX_SERIES {
                // Every way from 0, so the first of each is an increase.
                let mut counts = [0; 4];
                counts[index] = r.decisions();
                self.requests.insert(r.server.to_string(), counts);
            }
        }
        if r.token_lifetime_seconds > 0 {
            let lifetime = r.token_lifetime_seconds as f64;
            if let Some(h) = self.lifetimes.get_mut(r.issuer) {
                h.observe(lifetime);
            } else if self.lifetimes.len() < MAX_SERIES {
                let mut h = Histogram::new(LIFETIME_BUCKETS);
                h.observe(lifetime);
                self.lifetimes.insert(r.issuer.to_string(), h);
            }
        }
        let latency = r.latency_micros as f64 / 1e6;
        if let Some(h) = self.latency.get_mut(&LatencyLabels(r.server, decision)) {
            h.observe(latency);
        } else if self.latency.len() < MAX_SERIES {
            let mut h = Histogram::new(LATENCY_BUCKETS);
            h.observe(latency);
            self.latency.insert((r.server.to_string(), decision), h);
        }
    }

    /// Decisions counted, all series.
    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.decisions.values().sum::<u64>() + self.overflow
    }

    /// An agent's cumulative drop count for one run moved from `before` to `now`.
    pub fn dropped(&mut self, agent: &str, before: u64, now: u64) {
        *self.dropped.entry(agent.to_string()).or_default() += now.saturating_sub(before);
    }
}

/// Shared handle to the counts.
pub type Counts = Arc<Mutex<DecisionCounts>>;

const AGENT: Label = Label { prometheus: "agent", otel: "warden.agent" };
const SERVER: Label = Label { prometheus: "server", otel: "warden.server" };
const TOOL: Label = Label { prometheus: "tool", otel: "gen_ai.tool.name" };
const DECISION: Label = Label { prometheus: "decision", otel: "warden.decision" };
const REASON: Label = Label { prometheus: "reason", otel: "warden.reason" };
const ISSUER: Label = Label { prometheus: "issuer", otel: "warden.issuer" };
const BRIDGE: Label = Label { prometheus: "bridge", otel: "warden.credential_bridge" };
const FORWARDS_KEY: Label = Label { prometheus: "forwards_key", otel: "warden.credential_bridge.forwards_key" };
const STATE: Label = Label { prometheus: "state", otel: "warden.credential_bridge.state" };
const KIND: Label = Label { prometheus: "kind", otel: "warden.secret.kind" };
const HOW: Label = Label { prometheus: "decided", otel: "warden.request.decided" };
const SOURCE: Label = Label { prometheus: "source", otel: "warden.revocation.source" };

/// Every metric the control plane exports, described once.
const DECISIONS: Descriptor = Descriptor {
    prometheus: "warden_decisions_total",
    otel: "warden.decisions",
    unit: "{decision}",
    help: "Decisions the agents made, stored by this control plane since it started.",
    kind: Kind::Counter,
    labels: &[AGENT, SERVER, TOOL, DECISION, REASON],
};
const DECISIONS_OVERFLOW: Descriptor = Descriptor {
    prometheus: "warden_decisions_overflow_total",
    otel: "warden.decisions.overflow",
    unit: "{decision}",
    help: "Decisions not broken down by labels: too many label sets.",
    kind: Kind::Counter,
    labels: &[],
};
const DECISION_LATENCY: Descriptor = Descriptor {
    prometheus: "warden_decision_latency_seconds",
    otel: "warden.decision.duration",
    unit: "s",
    help: "Time from a request's arrival at the agent to its decision.",
    kind: Kind::Histogram,
    labels: &[SERVER, DECISION],
};
const TOKEN_LIFETIME: Descriptor = Descriptor {
    prometheus: "warden_token_lifetime_seconds",
    otel: "warden.token.lifetime",
    unit: "s",
    help: "Lifetime (exp - iat) of the tokens decisions were made with.",
    kind: Kind::Histogram,
    labels: &[ISSUER],
};
const RECORDS_DROPPED: Descriptor = Descriptor {
    prometheus: "warden_decision_records_dropped_total",
    otel: "warden.decision_records.dropped",
    unit: "{record}",
    help: "Decision records agents dropped because their disk bound was reached.",
    kind: Kind::Counter,
    labels: &[AGENT],
};
const CONFIG_VERSION: Descriptor = Descriptor {
    prometheus: "warden_config_version",
    otel: "warden.config.version",
    unit: "{version}",
    help: "The configuration version in force.",
    kind: Kind::Gauge,
    labels: &[],
};
const LEADER: Descriptor = Descriptor {
    prometheus: "warden_control_plane_leader",
    otel: "warden.control_plane.leader",
    unit: "1",
    help: "1 on the replica doing the singleton duties (key refresh, revocation expiry, audit export).",
    kind: Kind::Gauge,
    labels: &[],
};
const AGENTS_CONNECTED: Descriptor = Descriptor {
    prometheus: "warden_agents_connected",
    otel: "warden.agents.connected",
    unit: "{agent}",
    help: "Agents with an open stream to this control plane.",
    kind: Kind::Gauge,
    labels: &[],
};
const CONFIG_LAG: Descriptor = Descriptor {
    prometheus: "warden_agent_config_lag_versions",
    otel: "warden.agent.config_lag",
    unit: "{version}",
    help: "Versions between the configuration in force and what each connected agent applied.",
    kind: Kind::Gauge,
    labels: &[AGENT],
};
const LOG_RECORDS_EXPORTED: Descriptor = Descriptor {
    prometheus: "warden_otlp_log_records_exported_total",
    otel: "warden.otlp.log_records.exported",
    unit: "{record}",
    help: "Decision records an OTLP receiver accepted.",
    kind: Kind::Counter,
    labels: &[],
};
const LOG_RECORDS_REJECTED: Descriptor = Descriptor {
    prometheus: "warden_otlp_log_records_rejected_total",
    otel: "warden.otlp.log_records.rejected",
    unit: "{record}",
    help: "Decision records an OTLP receiver refused for good.",
    kind: Kind::Counter,
    labels: &[],
};

const BRIDGE_EXPIRY: Descriptor = Descriptor {
    prometheus: "warden_credential_bridge_expiry_timestamp_seconds",
    otel: "warden.credential_bridge.expiry",
    unit: "s",
    help: "When each credential bridge closes (unix time); its legacy key is refused as bridge_expired from then on.",
    kind: Kind::Gauge,
    labels: &[BRIDGE, SERVER, FORWARDS_KEY],
};
const BRIDGES: Descriptor = Descriptor {
    prometheus: "warden_credential_bridges",
    otel: "warden.credential_bridges",
    unit: "{bridge}",
    help: "Credential bridges by state: open, expiring (within 7 days: warn the owner), expired or revoked.",
    kind: Kind::Gauge,
    labels: &[STATE],
};

const REQUESTS: Descriptor = Descriptor {
    prometheus: "warden_requests_total",
    otel: "warden.requests",
    unit: "{request}",
    help: "Requests to MCP servers by how they were decided: validated (policy decided on a validated token), audited, bridged (a credential bridge's key), refused (before policy).",
    kind: Kind::Counter,
    labels: &[SERVER, HOW],
};
const SECRETS_OPEN: Descriptor = Descriptor {
    prometheus: "warden_secrets_open",
    otel: "warden.secrets.open",
    unit: "{secret}",
    help: "Static secrets the agents found on their hosts and still see, by kind (counted at most once a minute).",
    kind: Kind::Gauge,
    labels: &[KIND],
};
const REVOCATIONS: Descriptor = Descriptor {
    prometheus: "warden_revocations_total",
    otel: "warden.revocations",
    unit: "{revocation}",
    help: "Revocations this replica committed since it started, by source: session_end, rfc7009, operator.",
    kind: Kind::Counter,
    labels: &[SOURCE],
};
const ENFORCEMENT: Descriptor = Descriptor {
    prometheus: "warden_revocation_enforcement_seconds",
    otel: "warden.revocation.enforcement",
    unit: "s",
    help: "Time from a version carrying revocations to its application by every agent connected to this replica then.",
    kind: Kind::Histogram,
    labels: &[],
};
const SERVERS_IN_AUDIT: Descriptor = Descriptor {
    prometheus: "warden_servers_in_audit_mode",
    otel: "warden.servers.audit_mode",
    unit: "{server}",
    help: "McpServers in audit mode now: forwarded unenforced, Warden's decisions only recorded.",
    kind: Kind::Gauge,
    labels: &[],
};

/// Every family the control plane knows, now: what `/metrics` and the OTLP export both read.
pub async fn families(cp: &Sources) -> Vec<Family> {
    let registered = cp.configuration.store().agents().await.unwrap_or_default();
    let mut out = Vec::new();
    {
        let counts = cp.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut decisions = Family::new(&DECISIONS);
        for ((agent, server, tool, decision, reason), n) in &counts.decisions {
            decisions.add(&[agent, server, tool, decision, reason], *n as f64);
        }
        let mut latency = Family::new(&DECISION_LATENCY);
        for ((server, decision), h) in &counts.latency {
            latency.add_histogram(&[server, decision], h);
        }
        let mut lifetimes = Family::new(&TOKEN_LIFETIME);
        for (issuer, h) in &counts.lifetimes {
            lifetimes.add_histogram(&[issuer], h);
        }
        let mut dropped = Family::new(&RECORDS_DROPPED);
        for (agent, n) in &counts.dropped {
            dropped.add(&[agent], *n as f64);
        }
        let overflow = Family::single(&DECISIONS_OVERFLOW, counts.overflow as f64);
        let mut requests = Family::new(&REQUESTS);
        for (server, by_how) in &counts.requests {
            for (how, n) in How::ALL.iter().zip(by_how) {
                requests.add(&[server, how.as_str()], *n as f64);
            }
        }
        out.extend([decisions, overflow, latency, lifetimes, dropped, requests]);
    }
    let version = cp.configuration.version();
    out.push(Family::single(&CONFIG_VERSION, version as f64));
    out.push(Family::single(&LEADER, if cp.leadership.is_leading() { 1.0 } else { 0.0 }));
    let agents = cp.fleet.presence().report(registered, &[]);
    let connected: Vec<_> = agents.iter().filter(|a| a.connected).collect();
    out.push(Family::single(&AGENTS_CONNECTED, connected.len() as f64));
    let mut lag = Family::new(&CONFIG_LAG);
    for a in connected {
        lag.add(&[&a.id], version.saturating_sub(a.applied_version) as f64);
    }
    out.push(lag);
    let (state, now) = (cp.configuration.current(), crate::now_unix_ms() / 1000);
    out.extend(bridges(&state, now));
    let in_audit =
        state.resources.values().filter(|e| matches!(&e.document.spec, Spec::McpServer(s) if s.in_audit(now)));
    out.push(Family::single(&SERVERS_IN_AUDIT, in_audit.count() as f64));
    let mut revocations = Family::new(&REVOCATIONS);
    for (source, n) in cp.configuration.revocations_committed() {
        revocations.add(&[source], n as f64);
    }
    out.push(revocations);
    let mut enforcement = Family::new(&ENFORCEMENT);
    enforcement.add_histogram(&[], &cp.fleet.presence().enforcement_histogram());
    out.push(enforcement);
    // A store that cannot be read leaves the family out rather than report no secrets.
    if let Ok(open) = cp.inventory.open_by_kind().await {
        let mut secrets = Family::new(&SECRETS_OPEN);
        for (kind, n) in &open {
            secrets.add(&[kind], *n as f64);
        }
        out.push(secrets);
    }
    out.push(Family::single(&LOG_RECORDS_EXPORTED, cp.export_stats.exported.load(Relaxed) as f64));
    out.push(Family::single(&LOG_RECORDS_REJECTED, cp.export_stats.rejected.load(Relaxed) as f64));
    out
}

/// The credential bridges of `state` at `now`: each one's close time, and how many are in each
/// state (every state present, so an alert on `expiring` sees its first one).
fn bridges(state: &crate::configuration::state::FleetState, now: i64) -> [Family; 2] {
    let mut expiry = Family::new(&BRIDGE_EXPIRY);
    let mut by_state = [("open", 0u32), ("expiring", 0), ("expired", 0), ("revoked", 0)];
    for bridge in state.bridges(now) {
        let forwards = if bridge.forwards_key { "true" } else { "false" };
        expiry.add(&[&bridge.name, &bridge.server, forwards], bridge.expires_unix as f64);
        by_state.iter_mut().filter(|(s, _)| *s == bridge.state).for_each(|(_, n)| *n += 1);
    }
    let mut states = Family::new(&BRIDGES);
    for (state, n) in by_state {
        states.add(&[state], f64::from(n));
    }
    [expiry, states]
}

/// The Prometheus text of everything the control plane knows.
pub async fn render(cp: &Sources) -> String {
    metrics::prometheus_text(&families(cp).await)
}

/// The same families as OTLP metrics, cumulative since the process started.
pub async fn otlp(cp: &Sources) -> Vec<om::Metric> {
    let families = families(cp).await;
    let nanos = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    warden_otlp::metrics::metrics(&families, nanos(cp.started), nanos(std::time::SystemTime::now()))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop`.
pub async fn serve(sources: Arc<Sources>, listener: tokio::net::TcpListener, mut stop: Shutdown) {
    use axum::routing::get;
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "metrics endpoint listening");
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|axum::extract::State(cp): axum::extract::State<Arc<Sources>>| async move {
                let text = render(&cp).await;
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        // Serving means the store was loaded and the CA is in place: nothing else gates it.
        .route("/readyz", get(|| async { "ready" }))
        .with_state(sources);
    let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.requested().await }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_found_again_by_its_borrowed_labels() {
        let mut counts = DecisionCounts::default();
        let allowed = DecisionRecordView {
            server: "github",
            target: "search",
            issuer: "corp",
            decision: pb::Decision::Allow as i32,
            latency_micros: 40,
            token_lifetime_seconds: 300,
            ..Default::default()
        };
        let denied = DecisionRecordView { decision: pb::Decision::Deny as i32, reason: "policy_denied", ..allowed };
        for _ in 0..3 {
            counts.observe("agent-1", &allowed);
        }
        counts.observe("agent-1", &denied);
        counts.observe("agent-2", &allowed);
        let key = |agent: &str, decision, reason: &str| {
            (agent.to_string(), "github".to_string(), "search".to_string(), decision, reason.to_string())
        };
        assert_eq!(counts.decisions.len(), 3);
        assert_eq!(counts.decisions[&key("agent-1", "allow", "")], 3);
        assert_eq!(counts.decisions[&key("agent-1", "deny", "policy_denied")], 1);
        assert_eq!(counts.decisions[&key("agent-2", "allow", "")], 1);
        assert_eq!(counts.latency.len(), 2, "one histogram per (server, decision)");
        assert_eq!(counts.lifetimes.len(), 1);
        // How each was decided: on a validated token, allowed or denied by policy.
        assert_eq!(counts.requests["github"], [5, 0, 0, 0]);
        counts.observe("agent-1", &DecisionRecordView { via: "bridge", ..allowed });
        counts.observe("agent-1", &DecisionRecordView { audit: "would_deny", ..denied });
        counts.observe("agent-1", &DecisionRecordView { reason: "expired", count: 3, ..denied });
        counts.observe("agent-1", &DecisionRecordView { via: "token-exchange", ..allowed });
        assert_eq!(counts.requests["github"], [5, 1, 1, 3], "validated, audited, bridged, refused");
    }
}
