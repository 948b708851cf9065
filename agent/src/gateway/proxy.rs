//! Forwarding to the upstream MCP server: the caller's credentials stay at the gateway, only
//! the minimum identity context goes on, and hop-by-hop headers stop at each hop.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use warden_core::token::Verified;

/// Pooled connections to upstreams.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// The upstream client: keep-alive pool, no Nagle, bounded connect time.
pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

/// Identity context added for the upstream: the TrustedIssuer's name and the subject. Any
/// header of this prefix the caller sent is dropped, so the upstream can trust these.
pub const IDENTITY_PREFIX: &str = "x-warden-";
const ISSUER_HEADER: HeaderName = HeaderName::from_static("x-warden-issuer");
const SUBJECT_HEADER: HeaderName = HeaderName::from_static("x-warden-subject");

/// RFC 9110 §7.6.1 hop-by-hop headers, plus the ones that carry the caller's credentials.
fn dropped(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            // The caller's token and DPoP proof: never passed through (MCP authorization spec,
            // "token passthrough" is forbidden).
            | "authorization"
            | "dpop"
    ) || name.as_str().starts_with(IDENTITY_PREFIX)
}

/// Copies `from` without hop-by-hop headers, those `Connection` names, and credentials.
pub fn forwardable(from: &HeaderMap) -> HeaderMap {
    forwardable_except(from, |_| false)
}

fn forwardable_except(from: &HeaderMap, also: fn(&HeaderName) -> bool) -> HeaderMap {
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    let mut out = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if !dropped(name) && !also(name) && !named.iter().any(|n| n == name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Headers that describe the body as the caller sent it: hyper frames the forwarded body
/// itself, so a caller's length can never disagree with what reaches the upstream.
fn framing(name: &HeaderName) -> bool {
    matches!(name.as_str(), "content-length" | "expect")
}

/// The request to send upstream for an allowed one.
pub fn request(
    upstream: &str,
    method: &Method,
    headers: &HeaderMap,
    body: Bytes,
    workload: &Verified,
) -> Result<Request<Full<Bytes>>, String> {
    request_as(upstream, method, headers, body, &workload.issuer, &workload.subject)
}

fn request_as(
    upstream: &str,
    method: &Method,
    headers: &HeaderMap,
    body: Bytes,
    issuer: &str,
    subject: &str,
) -> Result<Request<Full<Bytes>>, String> {
    let uri: http::Uri = upstream.parse().map_err(|e| format!("upstream {upstream:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("upstream {upstream:?}: only http upstreams are supported on the gateway's host"));
    }
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    let mut forwarded = forwardable_except(headers, framing);
    forwarded.insert(ISSUER_HEADER, header_value(issuer));
    forwarded.insert(SUBJECT_HEADER, header_value(subject));
    *request.headers_mut() = forwarded;
    Ok(request)
}

/// A claim as a header value: verbatim when it is visible ASCII, otherwise in the
/// `=?base64?…?=` form MCP uses for such header values.
fn header_value(text: &str) -> HeaderValue {
    use base64::Engine;
    if text.bytes().all(|b| (0x20..0x7f).contains(&b))
        && let Ok(v) = HeaderValue::from_str(text)
    {
        return v;
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(text);
    HeaderValue::from_str(&format!("=?base64?{encoded}?=")).expect("base64 is visible ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_here() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer secret"),
            ("dpop", "proof"),
            ("connection", "keep-alive, x-custom"),
            ("x-custom", "1"),
            ("x-warden-subject", "admin"),
            ("host", "gateway"),
            ("mcp-session-id", "s1"),
            ("mcp-protocol-version", "2025-11-25"),
            ("traceparent", "00-abc-def-01"),
            ("content-length", "300"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = forwardable(&h);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-length", "mcp-protocol-version", "mcp-session-id", "traceparent"]);
        // On the request the body's framing is hyper's: the caller's length never goes on.
        let r = request_as("http://127.0.0.1:9/mcp", &Method::DELETE, &h, Bytes::new(), "corp", "s").unwrap();
        assert!(r.headers().get("content-length").is_none());
    }

    #[test]
    fn identity_context_replaces_what_the_caller_claimed() {
        let mut h = HeaderMap::new();
        h.insert("x-warden-subject", HeaderValue::from_static("admin"));
        let r = request_as("http://127.0.0.1:9/mcp", &Method::POST, &h, Bytes::new(), "corp", "ünïcode").unwrap();
        assert_eq!(r.headers()["x-warden-issuer"], "corp");
        assert_eq!(r.headers().get_all("x-warden-subject").iter().count(), 1);
        assert_eq!(r.headers()["x-warden-subject"], "=?base64?w7xuw69jb2Rl?=");
        assert!(request_as("https://up/mcp", &Method::POST, &h, Bytes::new(), "corp", "s").is_err());
    }
}
