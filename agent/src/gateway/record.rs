//! The decision record of each allow and deny (see `crate::decisions`): who called what, on
//! which server, the outcome and why. Never the token, a claim's secret or an argument value.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use proto::v1 as pb;
use warden_core::authorize::Target;
use warden_core::token::{Verified, jti_hash};

use crate::decisions::Outbox;
use crate::spans::TraceContext;

/// What one decision was about.
pub(crate) struct Decision<'a> {
    pub server: &'a str,
    /// The MCP method policy decided, or the HTTP method for refusals before the body.
    pub method: &'a str,
    pub target: Option<Target<'a>>,
    pub workload: Option<&'a Verified>,
    pub allowed: bool,
    /// A stable code; empty on allow.
    pub reason: &'a str,
    pub policies: Vec<String>,
}

/// Queues the record of `decision` for the control plane; the request arrived at `arrived`
/// through `via` ("gateway" or "ext_authz"). With tracing on, `trace` is the request's trace
/// (which the gateway may have started), so the record and the span share one trace id.
pub(crate) fn record(
    outbox: &Outbox,
    arrived: Instant,
    via: &str,
    headers: &HeaderMap,
    trace: Option<&TraceContext>,
    decision: Decision<'_>,
) {
    if !outbox.enabled() {
        return;
    }
    let (target_kind, target) = match decision.target {
        None => ("", ""),
        Some(Target::Server) => ("server", ""),
        Some(Target::Tool(name)) => ("tool", name),
        Some(Target::Resource(uri)) => ("resource", uri),
        Some(Target::Prompt(name)) => ("prompt", name),
    };
    let workload = decision.workload;
    outbox.record(pb::DecisionRecord {
        sequence: 0,
        time_unix_nanos: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64),
        server: decision.server.to_string(),
        method: decision.method.to_string(),
        target_kind: target_kind.to_string(),
        target: target.to_string(),
        subject: workload.map(|w| w.subject.clone()).unwrap_or_default(),
        issuer: workload.map(|w| w.issuer.clone()).unwrap_or_default(),
        decision: if decision.allowed { pb::Decision::Allow } else { pb::Decision::Deny } as i32,
        reason: decision.reason.to_string(),
        policies: decision.policies,
        latency_micros: Instant::now().saturating_duration_since(arrived).as_micros() as u64,
        trace_id: match trace {
            Some(context) => context.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
            None => trace_id(headers).unwrap_or_default(),
        },
        jti_hash: workload.and_then(|w| Some(jti_hash(&w.issuer, w.jti.as_deref()?))).unwrap_or_default(),
        via: via.to_string(),
        token_lifetime_seconds: workload.map_or(0, |w| w.expires_at.saturating_sub(w.issued_at).max(0) as u64),
        ..Default::default()
    });
}

/// The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), if valid.
pub(crate) fn trace_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2);
    valid.then(|| trace.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_traceparents_give_a_trace_id() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("traceparent", http::HeaderValue::from_static(v));
            trace_id(&h)
        };
        assert_eq!(
            with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(with("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(with("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), None);
        assert_eq!(with("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), None);
        assert_eq!(with("garbage"), None);
        assert_eq!(trace_id(&HeaderMap::new()), None);
    }
}
