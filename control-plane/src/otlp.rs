//! Export to OpenTelemetry backends over OTLP (gRPC or HTTP with protobuf), configured by the
//! standard `OTEL_*` environment variables.
//!
//! Decision records go out as log records, reliably: the exporter reads the stored records after
//! a cursor kept in `decisions.redb`, sends a batch, and moves the cursor only when the receiver
//! accepted it (retryable failures are retried with backoff, so a receiver that is down for a
//! while loses nothing; a batch the receiver refuses for good is counted and skipped, as the
//! OTLP specification says). The wire types are the official OpenTelemetry protobufs
//! (`opentelemetry-proto`); the OpenTelemetry SDK's log pipeline is not used because it drops
//! records when its queue fills or an export fails, and these are audit records.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
use proto::v1 as pb;
use tokio::sync::watch;
pub use warden_otlp::{Config, Endpoint};
use warden_otlp::{ExportError, Sender, attribute, resource as otel_resource, string};

use crate::decisions::Decisions;

/// Decision records per export request.
const BATCH: usize = 512;

/// One decision as an OTLP log record. Attribute names follow OpenTelemetry's semantic
/// conventions where they exist (`mcp.method.name`, `gen_ai.tool.name`, `mcp.resource.uri`,
/// `gen_ai.prompt.name`); the rest are `warden.*`.
pub fn log_record(stored: &pb::StoredDecision) -> LogRecord {
    let r = stored.record.clone().unwrap_or_default();
    let allowed = r.decision == pb::Decision::Allow as i32;
    let mut attributes = vec![
        attribute("mcp.method.name", &r.method),
        attribute("warden.decision", if allowed { "allow" } else { "deny" }),
        attribute("warden.agent", &stored.agent),
        attribute("warden.server", &r.server),
        attribute("warden.record.id", format!("{}/{:016x}/{}", stored.agent, stored.boot, r.sequence)),
        attribute("warden.via", &r.via),
        KeyValue {
            key: "warden.latency_us".into(),
            value: Some(AnyValue { value: Some(any_value::Value::IntValue(r.latency_micros as i64)) }),
            ..Default::default()
        },
    ];
    let target_key = match r.target_kind.as_str() {
        "tool" => Some("gen_ai.tool.name"),
        "resource" => Some("mcp.resource.uri"),
        "prompt" => Some("gen_ai.prompt.name"),
        _ => None,
    };
    if let Some(key) = target_key {
        attributes.push(attribute(key, &r.target));
    }
    for (key, value) in [
        ("warden.reason", &r.reason),
        ("warden.subject", &r.subject),
        ("warden.issuer", &r.issuer),
        ("warden.jti_hash", &r.jti_hash),
        ("warden.actor", &r.actor),
        ("warden.binding", &r.binding),
    ] {
        if !value.is_empty() {
            attributes.push(attribute(key, value));
        }
    }
    if !r.policies.is_empty() {
        let values = r.policies.iter().map(|p| AnyValue { value: Some(any_value::Value::StringValue(p.clone())) });
        attributes.push(KeyValue {
            key: "warden.policies".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values: values.collect() })),
            }),
            ..Default::default()
        });
    }
    let target = if r.target.is_empty() { String::new() } else { format!(" {}", r.target) };
    let why = if r.reason.is_empty() { String::new() } else { format!(": {}", r.reason) };
    let body = format!("{} {}{target} on {}{why}", if allowed { "allow" } else { "deny" }, r.method, r.server);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    LogRecord {
        time_unix_nano: r.time_unix_nanos.max(0) as u64,
        observed_time_unix_nano: now,
        severity_number: if allowed { SeverityNumber::Info } else { SeverityNumber::Warn } as i32,
        severity_text: if allowed { "INFO" } else { "WARN" }.into(),
        body: string(body),
        attributes,
        trace_id: hex_bytes(&r.trace_id).unwrap_or_default(),
        event_name: "warden.decision".into(),
        ..Default::default()
    }
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    (text.len() == 32).then_some(())?;
    (0..16).map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

/// The request carrying `records`.
pub fn logs_request(resource: &[(String, String)], scope: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(otel_resource(resource)),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: scope.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Exports the control plane's metrics (cumulative) every `interval` until `stop`. Nothing is
/// kept for a failed export: the next one carries the totals.
pub async fn export_metrics(
    cp: Arc<crate::ControlPlane>,
    endpoint: Endpoint,
    resource: Vec<(String, String)>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let sender = match Sender::new(&endpoint) {
        Ok(s) => s,
        Err(e) => return tracing::error!("OTLP metrics exporter: {e}"),
    };
    tracing::info!(endpoint = %endpoint.url, protocol = ?endpoint.protocol, ?interval, "exporting metrics over OTLP");
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let snapshot = {
            let cp = cp.clone();
            tokio::task::spawn_blocking(move || crate::metrics::otlp(&cp)).await.unwrap_or_default()
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(otel_resource(&resource)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "warden.control_plane".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    metrics: snapshot,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        match sender.metrics(request).await {
            Ok(0) => {}
            Ok(refused) => tracing::warn!(refused, "the OTLP receiver refused some data points"),
            Err(ExportError { message, .. }) => tracing::warn!("OTLP metrics export failed: {message}"),
        }
    }
}

/// Counts of the log export, for operators.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Records the receiver accepted.
    pub exported: std::sync::atomic::AtomicU64,
    /// Records the receiver refused for good (counted and skipped).
    pub rejected: std::sync::atomic::AtomicU64,
}

/// Records exported as logs from a durable cursor. The methods block (storage): they are called
/// from `spawn_blocking`.
pub trait LogSource: Send + Sync + 'static {
    /// The instrumentation scope of the records (`warden.decisions`, `warden.audit`).
    fn scope(&self) -> &'static str;
    /// Up to `max` records after the delivered cursor, with the cursor of the last.
    fn after_cursor(&self, max: usize) -> Result<(u64, Vec<LogRecord>), String>;
    /// Everything up to `cursor` was delivered (or refused for good).
    fn delivered(&self, cursor: u64) -> Result<(), String>;
    /// Woken when new records are stored, if the source can tell (otherwise polled each second).
    fn wakeup(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

impl LogSource for Decisions {
    fn scope(&self) -> &'static str {
        "warden.decisions"
    }

    fn after_cursor(&self, max: usize) -> Result<(u64, Vec<LogRecord>), String> {
        let (cursor, stored) = self.unexported(max).map_err(|e| e.to_string())?;
        Ok((cursor, stored.iter().map(log_record).collect()))
    }

    fn delivered(&self, cursor: u64) -> Result<(), String> {
        self.set_exported(cursor).map_err(|e| e.to_string())
    }

    fn wakeup(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.stored_notify())
    }
}

/// The audit trail of admin changes, from the configuration store. Replicas sharing a store
/// share its trail (and its export cursor): only the leading one exports it.
pub struct AuditTrail {
    /// The configuration store.
    pub store: Arc<crate::store::Store>,
    /// Whether this replica leads.
    pub leading: tokio::sync::watch::Receiver<bool>,
}

impl LogSource for AuditTrail {
    fn scope(&self) -> &'static str {
        "warden.audit"
    }

    fn after_cursor(&self, max: usize) -> Result<(u64, Vec<LogRecord>), String> {
        if !*self.leading.borrow() {
            return Ok((0, Vec::new()));
        }
        let after = self.store.audit_exported().map_err(|e| e.to_string())?;
        let entries = self.store.audit_after(after, max).map_err(|e| e.to_string())?;
        let cursor = entries.last().map_or(after, |(seq, _)| *seq);
        Ok((cursor, entries.iter().map(|(_, e)| audit_record(e)).collect()))
    }

    fn delivered(&self, cursor: u64) -> Result<(), String> {
        self.store.set_audit_exported(cursor).map_err(|e| e.to_string())
    }
}

/// One admin change as an OTLP log record.
pub fn audit_record(e: &crate::store::AuditEntry) -> LogRecord {
    let resource = format!("{}/{}", e.kind, e.name);
    let body = format!("{} {resource} by {} (configuration version {})", e.operation, e.actor, e.version);
    let int = |key: &str, value: u64| KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::IntValue(value as i64)) }),
        ..Default::default()
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    LogRecord {
        time_unix_nano: (e.time_unix_ms.max(0) as u64).saturating_mul(1_000_000),
        observed_time_unix_nano: now,
        severity_number: SeverityNumber::Info as i32,
        severity_text: "INFO".into(),
        body: string(body),
        attributes: vec![
            attribute("warden.audit.actor", &e.actor),
            attribute("warden.audit.operation", &e.operation),
            attribute("warden.resource.kind", &e.kind),
            attribute("warden.resource.name", &e.name),
            int("warden.config.version", e.version),
            int("warden.resource.previous_version", e.previous_resource_version),
        ],
        event_name: "warden.audit".into(),
        ..Default::default()
    }
}

/// Exports `source`'s records as logs until `stop`, from its persisted cursor on.
pub async fn export_logs<S: LogSource>(
    source: Arc<S>,
    endpoint: Endpoint,
    resource: Vec<(String, String)>,
    stats: Arc<ExportStats>,
    mut stop: watch::Receiver<bool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let scope = source.scope();
    let sender = match Sender::new(&endpoint) {
        Ok(s) => s,
        Err(e) => return tracing::error!(scope, "OTLP logs exporter: {e}"),
    };
    tracing::info!(scope, endpoint = %endpoint.url, protocol = ?endpoint.protocol, "exporting as OTLP logs");
    let wakeup = source.wakeup().unwrap_or_default();
    let mut failures = 0u32;
    loop {
        let stored = wakeup.notified();
        tokio::pin!(stored);
        stored.as_mut().enable();
        let batch = {
            let source = source.clone();
            tokio::task::spawn_blocking(move || source.after_cursor(BATCH)).await
        };
        let (cursor, records) = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(scope, "OTLP logs exporter: {e}");
                (0, Vec::new())
            }
            Err(e) => {
                tracing::error!(scope, "OTLP logs exporter: {e}");
                (0, Vec::new())
            }
        };
        if records.is_empty() {
            tokio::select! {
                _ = stored => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        }
        let count = records.len() as u64;
        let outcome = tokio::select! {
            r = sender.logs(logs_request(&resource, scope, records)) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let advance = match outcome {
            Ok(rejected) => {
                failures = 0;
                let rejected = (rejected.max(0) as u64).min(count);
                if rejected > 0 {
                    tracing::warn!(scope, rejected, "the OTLP receiver refused some records");
                }
                stats.exported.fetch_add(count - rejected, Relaxed);
                stats.rejected.fetch_add(rejected, Relaxed);
                true
            }
            Err(ExportError { retry: false, message }) => {
                tracing::error!(
                    scope,
                    records = count,
                    "the OTLP receiver refused a batch for good ({message}); skipped"
                );
                stats.rejected.fetch_add(count, Relaxed);
                true
            }
            Err(ExportError { retry: true, message }) => {
                failures = failures.saturating_add(1);
                let delay = Duration::from_millis(200u64 << failures.min(7)).min(Duration::from_secs(30));
                tracing::warn!(scope, "OTLP logs export failed ({message}); retrying in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                false
            }
        };
        if advance {
            let source = source.clone();
            match tokio::task::spawn_blocking(move || source.delivered(cursor)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(scope, "OTLP logs exporter: {e}"),
                Err(e) => tracing::error!(scope, "OTLP logs exporter: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_becomes_a_log_record_with_semantic_attributes() {
        let stored = pb::StoredDecision {
            cursor: 9,
            agent: "host-1".into(),
            boot: 0xab,
            record: Some(pb::DecisionRecord {
                sequence: 4,
                time_unix_nanos: 1_700_000_000_000_000_000,
                server: "github".into(),
                method: "tools/call".into(),
                target_kind: "tool".into(),
                target: "delete_repository".into(),
                subject: "ci-bot".into(),
                issuer: "corp".into(),
                decision: pb::Decision::Deny as i32,
                reason: "policy_denied".into(),
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                ..Default::default()
            }),
        };
        let log = log_record(&stored);
        let attr = |k: &str| {
            log.attributes.iter().find(|a| a.key == k).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
        };
        assert_eq!(attr("gen_ai.tool.name").as_deref(), Some("delete_repository"));
        assert_eq!(attr("mcp.method.name").as_deref(), Some("tools/call"));
        assert_eq!(attr("warden.reason").as_deref(), Some("policy_denied"));
        assert_eq!(attr("warden.record.id").as_deref(), Some("host-1/00000000000000ab/4"));
        assert_eq!(log.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(log.time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(log.trace_id.len(), 16);
        assert_eq!(log.event_name, "warden.decision");
    }
}
