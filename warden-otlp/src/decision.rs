//! A decision record as an OTLP log record: what the control plane exports for every stored
//! record and an agent, when asked, for every record it makes. Both give the same record the
//! same attributes, `warden.record.id` included, so a backend can de-duplicate.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use proto::v1 as pb;

use crate::{attribute, string};

/// The log record of `record`, made by `agent` in its run `boot`. Attribute names follow
/// OpenTelemetry's semantic conventions where they exist (`mcp.method.name`,
/// `gen_ai.tool.name`, `mcp.resource.uri`, `gen_ai.prompt.name`); the rest are `warden.*`.
pub fn log_record(r: &pb::DecisionRecord, agent: &str, boot: u64) -> LogRecord {
    let allowed = r.decision == pb::Decision::Allow as i32;
    let mut attributes = vec![
        attribute("mcp.method.name", &r.method),
        attribute("warden.decision", if allowed { "allow" } else { "deny" }),
        attribute("warden.agent", agent),
        attribute("warden.server", &r.server),
        attribute("warden.record.id", proto::decision_record::record_id(agent, boot, r.sequence)),
        attribute("warden.via", &r.via),
        KeyValue {
            key: "warden.latency_us".into(),
            value: Some(AnyValue { value: Some(any_value::Value::IntValue(r.latency_micros as i64)) }),
            ..Default::default()
        },
    ];
    if r.count > 1 {
        // An aggregated refusal: how many it stands for.
        attributes.push(KeyValue {
            key: "warden.count".into(),
            value: Some(AnyValue { value: Some(any_value::Value::IntValue(r.count.min(i64::MAX as u64) as i64)) }),
            ..Default::default()
        });
    }
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
        ("client.address", &r.source),
        ("warden.shadow", &r.shadow),
        ("warden.audit", &r.audit),
    ] {
        if !value.is_empty() {
            attributes.push(attribute(key, value));
        }
    }
    for (key, list) in [("warden.policies", &r.policies), ("warden.shadow.policies", &r.shadow_policies)] {
        if !list.is_empty() {
            let values = list.iter().map(|p| AnyValue { value: Some(any_value::Value::StringValue(p.clone())) });
            attributes.push(KeyValue {
                key: key.into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue { values: values.collect() })),
                }),
                ..Default::default()
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_becomes_a_log_record_with_semantic_attributes() {
        let record = pb::DecisionRecord {
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
        };
        let log = log_record(&record, "host-1", 0xab);
        let attr = |k: &str| {
            log.attributes.iter().find(|a| a.key == k).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
        };
        assert_eq!(attr("gen_ai.tool.name").as_deref(), Some("delete_repository"));
        assert_eq!(attr("mcp.method.name").as_deref(), Some("tools/call"));
        assert_eq!(attr("warden.reason").as_deref(), Some("policy_denied"));
        assert_eq!(attr("warden.agent").as_deref(), Some("host-1"));
        assert_eq!(attr("warden.record.id").as_deref(), Some("host-1/00000000000000ab/4"));
        assert_eq!(attr("warden.jti_hash"), None, "empty fields are left out");
        assert_eq!(log.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(log.time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(
            log.trace_id,
            [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36]
        );
        assert_eq!(log.event_name, "warden.decision");
    }
}
