//! A span per gateway request, exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with W3C trace context continued from the
//! caller and passed on to the upstream MCP server. Best effort, unlike decision records
//! (`crate::export`): never a wait on the request path.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use warden_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use warden_otlp::proto::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use warden_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use warden_otlp::{Sender, attribute};
use warden_tasks::{Shutdown, Tasks};

use crate::export::Queue;

/// A request's place in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// This request's span.
    pub span_id: [u8; 8],
    /// The caller's span, when it sent a `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
}

fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TraceContext {
    /// Continues the caller's trace (a valid W3C `traceparent`) or starts one.
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        TraceContext::continuing(headers.get("traceparent").and_then(|v| v.to_str().ok()))
    }

    /// This request's span in the trace `traceparent` names (from `_meta`, SEP-414), when it
    /// is valid: the caller sent its trace context in the message rather than in a header.
    pub fn adopting(&self, traceparent: &str) -> Option<TraceContext> {
        let continued = TraceContext::continuing(Some(traceparent));
        continued.parent.is_some().then_some(TraceContext { span_id: self.span_id, ..continued })
    }

    /// Continues the trace of a valid W3C `traceparent`, or starts one.
    fn continuing(traceparent: Option<&str>) -> TraceContext {
        let span_id = loop {
            let id: [u8; 8] = rand::random();
            if id != [0; 8] {
                break id;
            }
        };
        let parent = traceparent.and_then(|v| {
            let mut parts = v.split('-');
            let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            if version == "ff" || hex::<1>(version).is_none() {
                return None;
            }
            // Version 00 has exactly these four fields; a later version may append more.
            if version == "00" && parts.next().is_some() {
                return None;
            }
            let (trace, parent, flags) = (hex::<16>(trace)?, hex::<8>(parent)?, hex::<1>(flags)?);
            (trace != [0; 16] && parent != [0; 8]).then_some((trace, parent, flags[0] & 1 == 1))
        });
        match parent {
            Some((trace_id, parent, sampled)) => TraceContext { trace_id, span_id, parent: Some(parent), sampled },
            None => TraceContext { trace_id: rand::random(), span_id, parent: None, sampled: true },
        }
    }

    /// The `traceparent` for the upstream request: this request's span as the parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", to_hex(&self.trace_id), to_hex(&self.span_id), u8::from(self.sampled))
    }
}

/// What the request turned out to be, filled in as it is decided.
#[derive(Debug, Default)]
pub struct Facts {
    /// The trace the request's messages named in `_meta`, when its headers named none.
    pub adopted: Option<TraceContext>,
    pub method: Option<String>,
    pub target: Option<(&'static str, String)>,
    pub allowed: Option<bool>,
    pub reason: String,
    pub server: String,
}

impl Facts {
    /// Notes a decision (the first denial wins: it is why the request failed).
    pub fn decided(&mut self, method: &str, target: Option<(&'static str, &str)>, allowed: bool, reason: &str) {
        if self.allowed == Some(false) {
            return;
        }
        self.method = Some(method.to_string());
        self.target = target.map(|(k, t)| (k, t.to_string()));
        self.allowed = Some(allowed);
        self.reason = reason.to_string();
    }
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The exporter of gateway spans.
pub struct Spans {
    queue: Arc<Queue<Span>>,
}

impl Spans {
    /// Starts exporting with `sender` (a task of `tasks`) until `stop`.
    pub fn start(sender: Sender, resource: Vec<(String, String)>, stop: Shutdown, tasks: &mut Tasks) -> Arc<Spans> {
        let send = move |spans: Vec<Span>| {
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(warden_otlp::resource(&resource)),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "warden.gateway".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            let sender = sender.clone();
            async move { sender.traces(request).await }
        };
        let (queue, exporter) = Queue::start("spans", crate::export::LINGER, send, stop);
        tasks.spawn("span export", exporter);
        Arc::new(Spans { queue })
    }

    /// Spans not exported (see [`Queue::dropped`]).
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Ends the span of a request that started at `started` (nanoseconds since the epoch) and
    /// was answered with `status`.
    pub fn finish(&self, context: &TraceContext, started: u64, facts: &Mutex<Facts>, http_method: &str, status: u16) {
        if !context.sampled {
            return;
        }
        let facts = facts.lock().unwrap_or_else(|p| p.into_inner());
        let method = facts.method.as_deref().unwrap_or(http_method);
        // MCP semantic conventions: "{mcp.method.name} {target}".
        let name = match &facts.target {
            Some((_, target)) if !target.is_empty() => format!("{method} {target}"),
            _ => method.to_string(),
        };
        let int = |key: &str, value: i64| KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(any_value::Value::IntValue(value)) }),
            ..Default::default()
        };
        let mut attributes = vec![
            attribute("http.request.method", http_method),
            int("http.response.status_code", i64::from(status)),
            attribute("warden.server", &facts.server),
        ];
        if let Some(m) = &facts.method {
            attributes.push(attribute("mcp.method.name", m));
        }
        match &facts.target {
            Some(("tool", t)) => attributes.push(attribute("gen_ai.tool.name", t)),
            Some(("resource", t)) => attributes.push(attribute("mcp.resource.uri", t)),
            Some(("prompt", t)) => attributes.push(attribute("gen_ai.prompt.name", t)),
            _ => {}
        }
        if let Some(allowed) = facts.allowed {
            attributes.push(attribute("warden.decision", if allowed { "allow" } else { "deny" }));
        }
        if !facts.reason.is_empty() {
            attributes.push(attribute("warden.reason", &facts.reason));
        }
        let failed = status >= 500;
        let span = Span {
            trace_id: context.trace_id.to_vec(),
            span_id: context.span_id.to_vec(),
            parent_span_id: context.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name,
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: started,
            end_time_unix_nano: now_nanos(),
            attributes,
            status: Some(Status {
                code: if failed { status::StatusCode::Error } else { status::StatusCode::Unset } as i32,
                ..Default::default()
            }),
            flags: 0x100 | u32::from(context.sampled),
            ..Default::default()
        };
        self.queue.offer(span);
    }
}

/// Now, for a span's start.
pub fn started() -> u64 {
    now_nanos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_trace_is_continued_and_a_bad_traceparent_starts_a_new_one() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let ctx = TraceContext::from_headers(&headers);
        assert_eq!(to_hex(&ctx.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent.map(|p| to_hex(&p)).as_deref(), Some("00f067aa0ba902b7"));
        let upstream = ctx.traceparent();
        assert!(upstream.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!upstream.contains("00f067aa0ba902b7"), "the upstream's parent is our span");
        assert!(upstream.ends_with("-01"));
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            headers.insert("traceparent", bad.parse().unwrap());
            let fresh = TraceContext::from_headers(&headers);
            assert_eq!(fresh.parent, None, "{bad}");
            assert_ne!(fresh.trace_id, [0; 16]);
        }
        // A later version may carry more fields after the four it shares with 00.
        headers.insert("traceparent", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more".parse().unwrap());
        assert!(TraceContext::from_headers(&headers).parent.is_some());
    }
}
