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

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use proto::v1 as pb;
pub use warden_otlp::{Config, Endpoint};
use warden_otlp::{ExportError, Exports, Sender, attribute, string};
use warden_tasks::{Backoff, Shutdown};

use crate::fleet::replicas::Leadership;
use crate::telemetry::decisions::Decisions;
use crate::telemetry::metrics::ExportStats;

/// Decision records per export request.
const BATCH: usize = 512;

/// Pacing of a batch the receiver could not take (it is retried until it can).
const RETRY: Backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(30));

/// One stored decision as an OTLP log record.
pub fn log_record(stored: &pb::StoredDecision) -> LogRecord {
    let empty = pb::DecisionRecord::default();
    warden_otlp::decision::log_record(stored.record.as_ref().unwrap_or(&empty), &stored.agent, stored.boot)
}

/// Why a log source could not be read or its cursor moved.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The decision store failed.
    #[error(transparent)]
    Decisions(#[from] crate::telemetry::decisions::DecisionError),
    /// A read or write on the blocking pool ended before answering.
    #[error("decision store call interrupted: {0}")]
    Interrupted(String),
    /// The configuration store (the audit trail) failed.
    #[error(transparent)]
    Store(#[from] crate::configuration::store::StoreError),
}

/// Records exported as logs from a durable cursor.
pub trait LogSource: Send + Sync + 'static {
    /// The instrumentation scope of the records (`warden.decisions`, `warden.audit`).
    fn scope(&self) -> &'static str;
    /// Up to `max` records after the delivered cursor, with the cursor of the last.
    fn after_cursor(
        self: Arc<Self>,
        max: usize,
    ) -> impl Future<Output = Result<(u64, Vec<LogRecord>), SourceError>> + Send;
    /// Everything up to `cursor` was delivered (or refused for good).
    fn delivered(self: Arc<Self>, cursor: u64) -> impl Future<Output = Result<(), SourceError>> + Send;
    /// Woken when new records are stored, if the source can tell (otherwise polled each second).
    fn wakeup(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

impl LogSource for Decisions {
    fn scope(&self) -> &'static str {
        "warden.decisions"
    }

    // The decision store is a local redb file: its reads and writes run on the blocking pool.
    async fn after_cursor(self: Arc<Self>, max: usize) -> Result<(u64, Vec<LogRecord>), SourceError> {
        let read = tokio::task::spawn_blocking(move || self.unexported(max)).await;
        let (cursor, stored) = read.map_err(|e| SourceError::Interrupted(e.to_string()))??;
        Ok((cursor, stored.iter().map(log_record).collect()))
    }

    async fn delivered(self: Arc<Self>, cursor: u64) -> Result<(), SourceError> {
        let written = tokio::task::spawn_blocking(move || self.set_exported(cursor)).await;
        Ok(written.map_err(|e| SourceError::Interrupted(e.to_string()))??)
    }

    fn wakeup(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.stored_notify())
    }
}

/// The audit trail of admin changes, from the configuration store. Replicas sharing a store
/// share its trail (and its export cursor): only the leading one exports it.
pub struct AuditTrail {
    /// The configuration store.
    pub store: Arc<crate::configuration::store::Store>,
    /// Whether this replica leads.
    pub leadership: Leadership,
}

impl LogSource for AuditTrail {
    fn scope(&self) -> &'static str {
        "warden.audit"
    }

    async fn after_cursor(self: Arc<Self>, max: usize) -> Result<(u64, Vec<LogRecord>), SourceError> {
        if !self.leadership.is_leading() {
            return Ok((0, Vec::new()));
        }
        let after = self.store.audit_exported().await?;
        let entries = self.store.audit_after(after, max).await?;
        let cursor = entries.last().map_or(after, |(seq, _)| *seq);
        Ok((cursor, entries.iter().map(|(_, e)| audit_record(e)).collect()))
    }

    async fn delivered(self: Arc<Self>, cursor: u64) -> Result<(), SourceError> {
        Ok(self.store.set_audit_exported(cursor).await?)
    }
}

/// One admin change as an OTLP log record.
pub fn audit_record(e: &crate::configuration::store::AuditEntry) -> LogRecord {
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
    exports: Arc<Exports>,
    mut stop: Shutdown,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let scope = source.scope();
    let sender = match Sender::new(&endpoint, exports) {
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
        let (cursor, records) = match source.clone().after_cursor(BATCH).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(scope, "OTLP logs exporter: {e}");
                (0, Vec::new())
            }
        };
        if records.is_empty() {
            tokio::select! {
                _ = stored => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.requested() => return,
            }
            continue;
        }
        let count = records.len() as u64;
        let outcome = tokio::select! {
            r = sender.logs(warden_otlp::logs_request(&resource, scope, records)) => r,
            _ = stop.requested() => return,
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
                let delay = RETRY.ceiling(failures);
                failures = failures.saturating_add(1);
                tracing::warn!(scope, "OTLP logs export failed ({message}); retrying in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.requested() => return,
                }
                false
            }
        };
        if advance && let Err(e) = source.clone().delivered(cursor).await {
            tracing::error!(scope, "OTLP logs exporter: {e}");
        }
    }
}
