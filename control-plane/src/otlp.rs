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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_client,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse, metrics_service_client,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use proto::v1 as pb;
use tokio::sync::watch;

use crate::decisions::Decisions;

/// Decision records per export request.
const BATCH: usize = 512;

/// How a signal is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies.
    HttpProtobuf,
}

/// Where and how one signal is exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// For gRPC the server's URL; for HTTP the full URL of the signal (`…/v1/logs`).
    pub url: String,
    pub protocol: Protocol,
    /// Sent with every request (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

/// The export configuration: off unless an endpoint is set.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where decision records go as logs.
    pub logs: Option<Endpoint>,
    /// Where metrics go.
    pub metrics: Option<Endpoint>,
    /// How often metrics are exported (`OTEL_METRIC_EXPORT_INTERVAL`, default 60 s).
    pub metric_interval: Duration,
    /// The resource: `service.name` and `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource: Vec<(String, String)>,
}

/// A malformed `OTEL_*` variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    variable: String,
    message: String,
}

fn bad(variable: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { variable: variable.to_string(), message: message.into() }
}

/// `k=v,k2=v2` with percent-encoded values (W3C Baggage-like, as the specification says).
fn pairs(variable: &str, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| bad(variable, format!("{p:?} is not key=value")))?;
            let decode = |s: &str| {
                percent_decode(s.trim()).ok_or_else(|| bad(variable, format!("{s:?} is not percent-encoded UTF-8")))
            };
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Default for Config {
    fn default() -> Config {
        Config { logs: None, metrics: None, metric_interval: Duration::from_secs(60), resource: Vec::new() }
    }
}

impl Config {
    /// Reads the standard variables through `var` (the process environment in production).
    /// `service` is the default `service.name`.
    pub fn from_env(service: &str, var: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Config::default());
        }
        let mut resource = vec![("service.name".to_string(), service.to_string())];
        if let Some(text) = get("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, v) in pairs("OTEL_RESOURCE_ATTRIBUTES", &text)? {
                resource.retain(|(key, _)| *key != k);
                resource.push((k, v));
            }
        }
        if let Some(name) = get("OTEL_SERVICE_NAME") {
            resource.retain(|(key, _)| key != "service.name");
            resource.push(("service.name".into(), name));
        }
        resource.push(("service.version".into(), env!("CARGO_PKG_VERSION").into()));
        let metric_interval = match get("OTEL_METRIC_EXPORT_INTERVAL") {
            Some(ms) => match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(bad(
                        "OTEL_METRIC_EXPORT_INTERVAL",
                        format!("{ms:?} is not a positive number of milliseconds"),
                    ));
                }
            },
            None => Duration::from_secs(60),
        };
        Ok(Config {
            logs: endpoint("LOGS", "logs", &get)?,
            metrics: endpoint("METRICS", "metrics", &get)?,
            metric_interval,
            resource,
        })
    }
}

/// The endpoint of one signal, from its own variables or the general ones.
fn endpoint(signal: &str, path: &str, get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Endpoint>, ConfigError> {
    let specific = |name: &str| format!("OTEL_EXPORTER_OTLP_{signal}_{name}");
    let either = |name: &str| get(&specific(name)).or_else(|| get(&format!("OTEL_EXPORTER_OTLP_{name}")));
    let protocol = match either("PROTOCOL").as_deref() {
        None | Some("http/protobuf") => Protocol::HttpProtobuf,
        Some("grpc") => Protocol::Grpc,
        Some(other) => {
            return Err(bad(
                &specific("PROTOCOL"),
                format!("{other:?}: use grpc or http/protobuf (http/json is not supported)"),
            ));
        }
    };
    // A signal's own endpoint is used as is; the general one gets the signal's path for HTTP.
    let url = match (get(&specific("ENDPOINT")), get("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        (Some(url), _) => url,
        (None, Some(base)) if protocol == Protocol::HttpProtobuf => format!("{}/v1/{path}", base.trim_end_matches('/')),
        (None, Some(base)) => base,
        (None, None) => return Ok(None),
    };
    if !url.starts_with("http://") {
        let variable = if get(&specific("ENDPOINT")).is_some() {
            specific("ENDPOINT")
        } else {
            "OTEL_EXPORTER_OTLP_ENDPOINT".into()
        };
        return Err(bad(
            &variable,
            format!("{url:?}: only http:// endpoints are supported (run a Collector beside the control plane for TLS)"),
        ));
    }
    let headers = match either("HEADERS") {
        Some(text) => pairs(&specific("HEADERS"), &text)?,
        None => Vec::new(),
    };
    let timeout = match either("TIMEOUT") {
        Some(ms) => Duration::from_millis(
            ms.parse().map_err(|_| bad(&specific("TIMEOUT"), format!("{ms:?} is not milliseconds")))?,
        ),
        None => Duration::from_secs(10),
    };
    Ok(Some(Endpoint { url, protocol, headers, timeout }))
}

fn string(value: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) })
}

fn attribute(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue { key: key.to_string(), value: string(value), ..Default::default() }
}

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
            resource: Some(Resource {
                attributes: resource.iter().map(|(k, v)| attribute(k, v)).collect(),
                ..Default::default()
            }),
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

/// Why an export failed, and whether to try the same batch again.
#[derive(Debug)]
struct ExportError {
    retry: bool,
    message: String,
}

/// Sends export requests of one signal to one endpoint.
enum Sender {
    Grpc(tonic::transport::Channel, Endpoint),
    Http(Endpoint),
}

/// What the receiver refused of an accepted request (OTLP partial success).
trait Refused {
    fn refused(&self) -> i64;
}

impl Refused for ExportLogsServiceResponse {
    fn refused(&self) -> i64 {
        self.partial_success.as_ref().map_or(0, |p| p.rejected_log_records)
    }
}

impl Refused for ExportMetricsServiceResponse {
    fn refused(&self) -> i64 {
        self.partial_success.as_ref().map_or(0, |p| p.rejected_data_points)
    }
}

fn with_headers<T>(request: T, endpoint: &Endpoint) -> tonic::Request<T> {
    let mut call = tonic::Request::new(request);
    for (k, v) in &endpoint.headers {
        let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
            tonic::metadata::MetadataValue::try_from(v.as_str()),
        ) else {
            continue;
        };
        call.metadata_mut().insert(k, v);
    }
    call
}

fn grpc_error(status: tonic::Status) -> ExportError {
    use tonic::Code;
    // The OTLP specification's retryable codes (and Unknown, which a restarting receiver sends).
    let retry = matches!(
        status.code(),
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
            | Code::Unknown
    );
    ExportError { retry, message: format!("{}: {}", status.code(), status.message()) }
}

impl Sender {
    fn new(endpoint: &Endpoint) -> Result<Sender, String> {
        Ok(match endpoint.protocol {
            Protocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(endpoint.url.clone())
                    .map_err(|e| format!("{}: {e}", endpoint.url))?
                    .timeout(endpoint.timeout)
                    .connect_timeout(endpoint.timeout)
                    .connect_lazy();
                Sender::Grpc(channel, endpoint.clone())
            }
            Protocol::HttpProtobuf => Sender::Http(endpoint.clone()),
        })
    }

    /// Sends logs; `Ok` with the number of records the receiver refused.
    async fn logs(&self, request: ExportLogsServiceRequest) -> Result<i64, ExportError> {
        match self {
            Sender::Grpc(channel, endpoint) => {
                let mut client = logs_service_client::LogsServiceClient::new(channel.clone());
                let answer = client.export(with_headers(request, endpoint)).await.map_err(grpc_error)?;
                Ok(answer.into_inner().refused())
            }
            Sender::Http(endpoint) => http_post::<ExportLogsServiceResponse>(endpoint, request.encode_to_vec()).await,
        }
    }

    /// Sends metrics; `Ok` with the number of data points the receiver refused.
    async fn metrics(&self, request: ExportMetricsServiceRequest) -> Result<i64, ExportError> {
        match self {
            Sender::Grpc(channel, endpoint) => {
                let mut client = metrics_service_client::MetricsServiceClient::new(channel.clone());
                let answer = client.export(with_headers(request, endpoint)).await.map_err(grpc_error)?;
                Ok(answer.into_inner().refused())
            }
            Sender::Http(endpoint) => {
                http_post::<ExportMetricsServiceResponse>(endpoint, request.encode_to_vec()).await
            }
        }
    }
}

/// OTLP/HTTP: POST of the protobuf body (ureq blocks: off the async threads).
async fn http_post<R: Message + Default + Refused>(endpoint: &Endpoint, body: Vec<u8>) -> Result<i64, ExportError> {
    let endpoint = endpoint.clone();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(endpoint.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let mut request = agent.post(&endpoint.url).header("content-type", "application/x-protobuf");
        for (k, v) in &endpoint.headers {
            request = request.header(k, v);
        }
        let mut response = request
            .send(&body[..])
            .map_err(|e| ExportError { retry: true, message: format!("{}: {e}", endpoint.url) })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            let bytes = response.body_mut().read_to_vec().unwrap_or_default();
            return Ok(R::decode(bytes.as_slice()).map_or(0, |r| r.refused()));
        }
        // OTLP/HTTP: these are worth retrying; any other failure is final for this request.
        let retry = matches!(status, 429 | 502 | 503 | 504);
        Err(ExportError { retry, message: format!("{}: HTTP {status}", endpoint.url) })
    })
    .await
    .map_err(|e| ExportError { retry: true, message: e.to_string() })?
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
                resource: Some(Resource {
                    attributes: resource.iter().map(|(k, v)| attribute(k, v)).collect(),
                    ..Default::default()
                }),
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

/// The audit trail of admin changes, from the configuration store.
pub struct AuditTrail(pub Arc<crate::store::Store>);

impl LogSource for AuditTrail {
    fn scope(&self) -> &'static str {
        "warden.audit"
    }

    fn after_cursor(&self, max: usize) -> Result<(u64, Vec<LogRecord>), String> {
        let after = self.0.audit_exported().map_err(|e| e.to_string())?;
        let entries = self.0.audit_after(after, max).map_err(|e| e.to_string())?;
        let cursor = entries.last().map_or(after, |(seq, _)| *seq);
        Ok((cursor, entries.iter().map(|(_, e)| audit_record(e)).collect()))
    }

    fn delivered(&self, cursor: u64) -> Result<(), String> {
        self.0.set_audit_exported(cursor).map_err(|e| e.to_string())
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

/// The process environment as a lookup.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// For tests: a lookup over fixed pairs.
pub fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name| map.get(name).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_variables_configure_the_export() {
        let none = Config::from_env("warden-cp", env_of(&[])).unwrap();
        assert_eq!(none.logs, None);
        let http = Config::from_env("warden-cp", env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]))
            .unwrap();
        let logs = http.logs.unwrap();
        assert_eq!((logs.url.as_str(), logs.protocol), ("http://collector:4318/v1/logs", Protocol::HttpProtobuf));
        assert_eq!(http.metrics.unwrap().url, "http://collector:4318/v1/metrics");
        assert_eq!(http.metric_interval, Duration::from_secs(60));
        let grpc = Config::from_env(
            "warden-cp",
            env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20x, team = sec"),
                ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "2500"),
                ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,service.name=ignored"),
                ("OTEL_SERVICE_NAME", "cp-eu"),
            ]),
        )
        .unwrap();
        let logs = grpc.logs.unwrap();
        assert_eq!((logs.url.as_str(), logs.protocol), ("http://logs:4317", Protocol::Grpc));
        assert_eq!(logs.headers, [("authorization".into(), "Bearer x".into()), ("team".into(), "sec".into())]);
        assert_eq!(logs.timeout, Duration::from_millis(2500));
        let resource: HashMap<_, _> = grpc.resource.into_iter().collect();
        assert_eq!(resource["service.name"], "cp-eu");
        assert_eq!(resource["deployment.environment"], "prod");
        let disabled = Config::from_env(
            "x",
            env_of(&[("OTEL_SDK_DISABLED", "true"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c")]),
        );
        assert_eq!(disabled.unwrap().logs, None);
    }

    #[test]
    fn malformed_variables_are_named_in_the_error() {
        let err = |pairs: &[(&str, &str)]| Config::from_env("x", env_of(pairs)).unwrap_err().to_string();
        assert!(
            err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
                .starts_with("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL:")
        );
        assert!(err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c")]).starts_with("OTEL_EXPORTER_OTLP_ENDPOINT:"));
        assert!(
            err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")])
                .contains("not key=value")
        );
        assert!(
            err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")])
                .contains("not milliseconds")
        );
        assert!(err(&[("OTEL_RESOURCE_ATTRIBUTES", "a=%zz")]).starts_with("OTEL_RESOURCE_ATTRIBUTES:"));
        assert!(err(&[("OTEL_METRIC_EXPORT_INTERVAL", "0")]).starts_with("OTEL_METRIC_EXPORT_INTERVAL:"));
    }

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
