//! OTLP export plumbing shared by the control plane and the agent: the standard `OTEL_*`
//! configuration ([`Config`]) and a [`Sender`] for logs, metrics and traces over gRPC or HTTP
//! with protobuf bodies. The wire types are the official OpenTelemetry protobufs
//! (`opentelemetry-proto`). What to send, and when, is each binary's business.
#![forbid(unsafe_code)]

mod config;
mod sender;

pub use config::{Config, ConfigError, Endpoint, Protocol, Tls, env_of, process_env};
pub use opentelemetry_proto::tonic as proto;
pub use sender::{ExportError, Sender};

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;

pub fn string(value: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) })
}

pub fn attribute(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue { key: key.to_string(), value: string(value), ..Default::default() }
}

/// The resource of everything a process exports.
pub fn resource(attributes: &[(String, String)]) -> Resource {
    Resource { attributes: attributes.iter().map(|(k, v)| attribute(k, v)).collect(), ..Default::default() }
}
