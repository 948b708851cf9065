//! OTLP export plumbing shared by the control plane and the agent: the standard `OTEL_*`
//! configuration ([`Config`]), a [`Sender`] for logs, metrics and traces over gRPC or HTTP
//! with protobuf bodies, the log record a decision becomes ([`decision`]), which both send, and
//! the OTLP form of the metric families both describe once and their periodic export
//! ([`metrics`]), and the count of every export request by outcome ([`exports`]).
//! The wire types are the official OpenTelemetry protobufs (`opentelemetry-proto`). When to
//! send, and how reliably, is each binary's business.
#![forbid(unsafe_code)]

mod config;
pub mod decision;
pub mod exports;
pub mod metrics;
mod sender;

pub use config::{Config, ConfigError, Endpoint, Protocol, Tls, env_of, process_env};
pub use exports::{Exports, Signal};
pub use opentelemetry_proto::tonic as proto;
pub use sender::{EndpointError, ExportError, Sender, TlsError};

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;

pub fn string(value: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) })
}

pub fn attribute(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue { key: key.to_string(), value: string(value), ..Default::default() }
}

/// An export request of `records` from the instrumentation scope `scope`.
pub fn logs_request(
    resource_attributes: &[(String, String)],
    scope: &str,
    records: Vec<proto::logs::v1::LogRecord>,
) -> proto::collector::logs::v1::ExportLogsServiceRequest {
    use proto::logs::v1::{ResourceLogs, ScopeLogs};
    proto::collector::logs::v1::ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource(resource_attributes)),
            scope_logs: vec![ScopeLogs {
                scope: Some(proto::common::v1::InstrumentationScope {
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

/// The resource of everything a process exports.
pub fn resource(attributes: &[(String, String)]) -> Resource {
    Resource { attributes: attributes.iter().map(|(k, v)| attribute(k, v)).collect(), ..Default::default() }
}
