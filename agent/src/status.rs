//! The local status endpoint: what the agent enforces, where it came from, and whether it is
//! connected. Plain HTTP, meant for loopback.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::watch;

use warden_core::metrics::{Descriptor, Family, Kind};

use crate::applied::{Current, Source};
use crate::decisions::Outbox;
use crate::spans::Spans;
use crate::sync::Link;

/// What `/status` reports.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// This agent.
    pub agent_id: String,
    /// False until a configuration was ever applied: until then every request is denied.
    pub enforcing: bool,
    /// Where the configuration in force came from.
    pub source: Option<Source>,
    /// Its store and version.
    pub store_id: String,
    /// See `store_id`.
    pub version: u64,
    /// Resources in force, by kind.
    pub resources: BTreeMap<&'static str, usize>,
    /// Key ids in force, by issuer (inline or fetched by the control plane).
    pub issuer_keys: BTreeMap<String, Vec<String>>,
    /// The control-plane link.
    pub link: Link,
    /// Expiry of the agent's certificate, seconds since the epoch.
    pub certificate_not_after: i64,
    /// Servers in audit mode (requests forwarded whatever Warden would decide), with when their
    /// audit ends (`auditUntil`): nobody should forget one is on.
    pub audit_servers: BTreeMap<String, String>,
}

/// What the status endpoint and the agent's metrics read.
#[derive(Clone)]
pub struct Shared {
    agent_id: String,
    current: Current,
    link: watch::Receiver<Link>,
    not_after: watch::Receiver<i64>,
    outbox: Arc<Outbox>,
    spans: Option<Arc<Spans>>,
    /// What is exported over OTLP, and how each export request went.
    otlp: (warden_otlp::Config, Arc<warden_otlp::Exports>),
}

impl Shared {
    /// What the agent reports on: its configuration, link, certificate, outbox, span export
    /// and OTLP exports.
    pub fn new(
        agent_id: String,
        current: Current,
        link: watch::Receiver<Link>,
        not_after: watch::Receiver<i64>,
        outbox: Arc<Outbox>,
        spans: Option<Arc<Spans>>,
        otlp: (warden_otlp::Config, Arc<warden_otlp::Exports>),
    ) -> Shared {
        Shared { agent_id, current, link, not_after, outbox, spans, otlp }
    }
}

/// Serves `router` on `listener` until `stop`.
pub async fn serve(router: Router, listener: tokio::net::TcpListener, mut stop: warden_tasks::Shutdown) {
    let _ = axum::serve(listener, router).with_graceful_shutdown(async move { stop.requested().await }).await;
}

/// The status routes: `/status` (JSON), `/metrics` (Prometheus text), `/healthz` (the process
/// runs), `/readyz` (a configuration is in force).
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(shared)
}

/// Every metric the agent exports, described once (`warden_core::metrics`).
const CONFIG_VERSION: Descriptor = Descriptor {
    name: "warden.agent.config.version",
    unit: "{version}",
    help: "The configuration version this agent enforces (0: none, everything denied).",
    kind: Kind::Gauge,
    labels: &[],
};
const CONNECTED: Descriptor = Descriptor {
    name: "warden.agent.connected",
    unit: "{connection}",
    help: "Whether the stream to a control plane is open.",
    kind: Kind::Gauge,
    labels: &[],
};
const RECORDS: Descriptor = Descriptor {
    name: "warden.agent.decision_records",
    unit: "{record}",
    help: "Decision records this run of the agent queued for the control plane.",
    kind: Kind::Counter,
    labels: &[],
};
const RECORDS_DROPPED: Descriptor = Descriptor {
    name: "warden.agent.decision_records.dropped",
    unit: "{record}",
    help: "Decision records dropped: memory and disk bounds both reached.",
    kind: Kind::Counter,
    labels: &[],
};
const QUEUE: Descriptor = Descriptor {
    name: "warden.agent.decision_queue.records",
    unit: "{record}",
    help: "Decision records waiting in memory.",
    kind: Kind::Gauge,
    labels: &[],
};
const SPOOL: Descriptor = Descriptor {
    name: "warden.agent.decision_spool.records",
    unit: "{record}",
    help: "Decision records waiting on disk.",
    kind: Kind::Gauge,
    labels: &[],
};
const LOGS_DROPPED: Descriptor = Descriptor {
    name: "warden.agent.decision_logs.dropped",
    unit: "{record}",
    help: "Decision records this agent did not export over OTLP itself: queue full, export failed or refused.",
    kind: Kind::Counter,
    labels: &[],
};
const AUDIT_SERVERS: Descriptor = Descriptor {
    name: "warden.agent.servers.audit_mode",
    unit: "{server}",
    help: "Servers this agent forwards every request to, recording what it would decide (enforcement: audit).",
    kind: Kind::Gauge,
    labels: &[],
};
const SPANS_DROPPED: Descriptor = Descriptor {
    name: "warden.agent.spans.dropped",
    unit: "{span}",
    help: "Spans not exported: queue full, export failed or refused.",
    kind: Kind::Counter,
    labels: &[],
};

/// Every family the agent knows, now: what `/metrics` and the OTLP export both read.
pub fn families(s: &Shared) -> Vec<Family> {
    let (made, dropped) = s.outbox.made();
    let (queued, spooled) = s.outbox.depths();
    let mut out = vec![
        Family::single(&CONFIG_VERSION, s.current.get().map_or(0, |a| a.version) as f64),
        Family::single(&CONNECTED, if s.link.borrow().connected { 1.0 } else { 0.0 }),
        Family::single(&RECORDS, made as f64),
        Family::single(&RECORDS_DROPPED, dropped as f64),
        Family::single(&QUEUE, queued as f64),
        Family::single(&AUDIT_SERVERS, audit_servers(s).len() as f64),
    ];
    if let Some(spooled) = spooled {
        out.push(Family::single(&SPOOL, spooled as f64));
    }
    if let Some(direct) = s.outbox.direct() {
        out.push(Family::single(&LOGS_DROPPED, direct.dropped() as f64));
    }
    if let Some(spans) = &s.spans {
        out.push(Family::single(&SPANS_DROPPED, spans.dropped() as f64));
    }
    let (config, exports) = &s.otlp;
    let signals = [
        (warden_otlp::Signal::Logs, config.logs.is_some()),
        (warden_otlp::Signal::Metrics, config.metrics.is_some()),
        (warden_otlp::Signal::Traces, config.traces.is_some()),
    ];
    out.push(exports.family(signals.into_iter().filter(|(_, on)| *on).map(|(s, _)| s)));
    out
}

/// The servers in audit mode now, with when it ends.
fn audit_servers(s: &Shared) -> BTreeMap<String, String> {
    let now = crate::identity::now_unix();
    let Some(applied) = s.current.get() else { return BTreeMap::new() };
    applied
        .config
        .servers
        .iter()
        .filter(|(_, spec)| spec.in_audit(now))
        .map(|(name, spec)| (name.clone(), spec.audit_until.clone().unwrap_or_default()))
        .collect()
}

async fn metrics(State(s): State<Shared>) -> impl axum::response::IntoResponse {
    let text = warden_core::metrics::prometheus_text(&families(&s));
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn status(State(s): State<Shared>) -> Json<Status> {
    let applied = s.current.get();
    let mut resources = BTreeMap::new();
    if let Some(a) = &applied {
        resources.insert("TrustedIssuer", a.config.issuers.len());
        resources.insert("McpServer", a.config.servers.len());
        resources.insert("Policy", a.config.policies.len());
    }
    Json(Status {
        agent_id: s.agent_id.clone(),
        enforcing: applied.is_some(),
        source: applied.as_ref().map(|a| a.source),
        store_id: applied.as_ref().map(|a| a.store_id.clone()).unwrap_or_default(),
        version: applied.as_ref().map_or(0, |a| a.version),
        resources,
        issuer_keys: applied
            .as_ref()
            .map(|a| a.config.keys.iter().map(|(k, v)| (k.clone(), warden_core::jwks::kids(v))).collect())
            .unwrap_or_default(),
        link: s.link.borrow().clone(),
        certificate_not_after: *s.not_after.borrow(),
        audit_servers: audit_servers(&s),
    })
}

async fn ready(State(s): State<Shared>) -> (StatusCode, &'static str) {
    match s.current.get() {
        Some(_) => (StatusCode::OK, "ready"),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no configuration yet: denying everything"),
    }
}
