//! The control plane's metrics, kept from what it stores and sees, and its HTTP endpoint:
//! `/metrics` (Prometheus text), `/healthz`, `/readyz`.

use std::collections::HashMap;
use std::hash::RandomState;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use hashbrown::Equivalent;
use opentelemetry_proto::tonic as otel;
use opentelemetry_proto::tonic::metrics::v1 as om;
use proto::decision_record::DecisionRecordView;
use proto::v1 as pb;
use warden_core::prometheus::{Exposition, Histogram, LATENCY_BUCKETS, LIFETIME_BUCKETS};
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

    /// The token-lifetime and latency histograms of one record.
    fn observe_rest(&mut self, decision: &'static str, r: &DecisionRecordView<'_>) {
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

/// The Prometheus text of everything the control plane knows.
pub fn render(cp: &Sources) -> String {
    let mut e = Exposition::default();
    {
        let counts = cp.counts.lock().unwrap_or_else(|p| p.into_inner());
        e.family(
            "warden_decisions_total",
            "counter",
            "Decisions the agents made, stored by this control plane since it started.",
        );
        for ((agent, server, tool, decision, reason), n) in &counts.decisions {
            let labels = [
                ("agent", agent.as_str()),
                ("server", server.as_str()),
                ("tool", tool.as_str()),
                ("decision", decision),
                ("reason", reason.as_str()),
            ];
            e.sample("warden_decisions_total", &labels, *n as f64);
        }
        e.family(
            "warden_decisions_overflow_total",
            "counter",
            "Decisions not broken down by labels: too many label sets.",
        );
        e.sample("warden_decisions_overflow_total", &[], counts.overflow as f64);
        e.family(
            "warden_decision_latency_seconds",
            "histogram",
            "Time from a request's arrival at the agent to its decision.",
        );
        for ((server, decision), h) in &counts.latency {
            e.histogram("warden_decision_latency_seconds", &[("server", server), ("decision", decision)], h);
        }
        e.family(
            "warden_token_lifetime_seconds",
            "histogram",
            "Lifetime (exp - iat) of the tokens decisions were made with.",
        );
        for (issuer, h) in &counts.lifetimes {
            e.histogram("warden_token_lifetime_seconds", &[("issuer", issuer)], h);
        }
        e.family(
            "warden_decision_records_dropped_total",
            "counter",
            "Decision records agents dropped because their disk bound was reached.",
        );
        for (agent, n) in &counts.dropped {
            e.sample("warden_decision_records_dropped_total", &[("agent", agent)], *n as f64);
        }
    }
    let version = cp.configuration.version();
    e.family("warden_config_version", "gauge", "The configuration version in force.");
    e.sample("warden_config_version", &[], version as f64);
    e.family(
        "warden_control_plane_leader",
        "gauge",
        "1 on the replica doing the singleton duties (key refresh, revocation expiry, audit export).",
    );
    e.sample("warden_control_plane_leader", &[], if cp.leadership.is_leading() { 1.0 } else { 0.0 });
    let agents = cp.fleet.presence().report(cp.configuration.store().agents().unwrap_or_default(), &[]);
    e.family("warden_agents_connected", "gauge", "Agents with an open stream to this control plane.");
    e.sample("warden_agents_connected", &[], agents.iter().filter(|a| a.connected).count() as f64);
    e.family(
        "warden_agent_config_lag_versions",
        "gauge",
        "Versions between the configuration in force and what each connected agent applied.",
    );
    for a in agents.iter().filter(|a| a.connected) {
        e.sample(
            "warden_agent_config_lag_versions",
            &[("agent", &a.id)],
            version.saturating_sub(a.applied_version) as f64,
        );
    }
    e.family("warden_otlp_log_records_exported_total", "counter", "Decision records an OTLP receiver accepted.");
    e.sample("warden_otlp_log_records_exported_total", &[], cp.export_stats.exported.load(Relaxed) as f64);
    e.family(
        "warden_otlp_log_records_rejected_total",
        "counter",
        "Decision records an OTLP receiver refused for good.",
    );
    e.sample("warden_otlp_log_records_rejected_total", &[], cp.export_stats.rejected.load(Relaxed) as f64);
    e.finish()
}

fn nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn attributes(pairs: &[(&str, &str)]) -> Vec<otel::common::v1::KeyValue> {
    pairs
        .iter()
        .map(|(k, v)| otel::common::v1::KeyValue {
            key: k.to_string(),
            value: Some(otel::common::v1::AnyValue {
                value: Some(otel::common::v1::any_value::Value::StringValue(v.to_string())),
            }),
            ..Default::default()
        })
        .collect()
}

/// The same figures as OTLP metrics (cumulative since the process started), named in
/// OpenTelemetry's dotted style.
pub fn otlp(cp: &Sources) -> Vec<om::Metric> {
    use om::metric::Data;
    let (start, now) = (nanos(cp.started), nanos(std::time::SystemTime::now()));
    let cumulative = om::AggregationTemporality::Cumulative as i32;
    let point = |pairs: &[(&str, &str)], value: f64| om::NumberDataPoint {
        attributes: attributes(pairs),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(om::number_data_point::Value::AsInt(value as i64)),
        ..Default::default()
    };
    let sum = |name: &str, unit: &str, description: &str, data_points| om::Metric {
        name: name.into(),
        unit: unit.into(),
        description: description.into(),
        data: Some(Data::Sum(om::Sum { data_points, aggregation_temporality: cumulative, is_monotonic: true })),
        ..Default::default()
    };
    let gauge = |name: &str, unit: &str, description: &str, data_points| om::Metric {
        name: name.into(),
        unit: unit.into(),
        description: description.into(),
        data: Some(Data::Gauge(om::Gauge { data_points })),
        ..Default::default()
    };
    let mut out = Vec::new();
    {
        let counts = cp.counts.lock().unwrap_or_else(|p| p.into_inner());
        let points = counts
            .decisions
            .iter()
            .map(|((agent, server, tool, decision, reason), n)| {
                let pairs = [
                    ("warden.agent", agent.as_str()),
                    ("warden.server", server.as_str()),
                    ("gen_ai.tool.name", tool.as_str()),
                    ("warden.decision", decision),
                    ("warden.reason", reason.as_str()),
                ];
                point(&pairs, *n as f64)
            })
            .collect();
        out.push(sum(
            "warden.decisions",
            "{decision}",
            "Decisions the agents made, stored by this control plane.",
            points,
        ));
        let histogram = |name: &str, description: &str, series: Vec<(Vec<(&str, &str)>, &Histogram)>| {
            let data_points = series
                .into_iter()
                .map(|(pairs, h)| om::HistogramDataPoint {
                    attributes: attributes(&pairs),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    count: h.count(),
                    sum: Some(h.sum()),
                    bucket_counts: h.bucket_counts().to_vec(),
                    explicit_bounds: h.bounds().to_vec(),
                    ..Default::default()
                })
                .collect();
            om::Metric {
                name: name.into(),
                unit: "s".into(),
                description: description.into(),
                data: Some(Data::Histogram(om::Histogram { data_points, aggregation_temporality: cumulative })),
                ..Default::default()
            }
        };
        let latency = counts
            .latency
            .iter()
            .map(|((server, decision), h)| {
                (vec![("warden.server", server.as_str()), ("warden.decision", *decision)], h)
            })
            .collect();
        out.push(histogram(
            "warden.decision.duration",
            "Time from a request's arrival at the agent to its decision.",
            latency,
        ));
        let lifetimes =
            counts.lifetimes.iter().map(|(issuer, h)| (vec![("warden.issuer", issuer.as_str())], h)).collect();
        out.push(histogram(
            "warden.token.lifetime",
            "Lifetime (exp - iat) of the tokens decisions were made with.",
            lifetimes,
        ));
        let dropped = counts.dropped.iter().map(|(agent, n)| point(&[("warden.agent", agent)], *n as f64)).collect();
        out.push(sum(
            "warden.decision_records.dropped",
            "{record}",
            "Decision records agents dropped (disk bound reached).",
            dropped,
        ));
    }
    let version = cp.configuration.version();
    let agents = cp.fleet.presence().report(cp.configuration.store().agents().unwrap_or_default(), &[]);
    let connected = agents.iter().filter(|a| a.connected).count();
    out.push(gauge(
        "warden.agents.connected",
        "{agent}",
        "Agents with an open stream.",
        vec![point(&[], connected as f64)],
    ));
    let lag = agents
        .iter()
        .filter(|a| a.connected)
        .map(|a| point(&[("warden.agent", &a.id)], version.saturating_sub(a.applied_version) as f64))
        .collect();
    out.push(gauge("warden.agent.config_lag", "{version}", "Versions each connected agent is behind.", lag));
    out.push(gauge(
        "warden.config.version",
        "{version}",
        "The configuration version in force.",
        vec![point(&[], version as f64)],
    ));
    out
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
                let text = tokio::task::spawn_blocking(move || render(&cp)).await.unwrap_or_default();
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
    }
}
