//! Forwarding to the upstream MCP server: the caller's credentials stay at the gateway, only
//! the minimum identity context goes on, and hop-by-hop headers stop at each hop. What the
//! caller claims about the path its request took (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`)
//! and its cookies stop here too: the upstream could take them as the gateway's word. Answers
//! are asked for in identity encoding, so list answers can always be read and filtered.

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

/// RFC 9110 §7.6.1 hop-by-hop headers, `Host`, and `X-Warden-*` (which an upstream behind
/// Warden must be able to trust): never passed on, in any mode.
fn hop_by_hop(name: &HeaderName) -> bool {
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
    ) || name.as_str().starts_with(IDENTITY_PREFIX)
}

/// [`hop_by_hop`], plus the caller's token and DPoP proof: never passed through (MCP
/// authorization spec, "token passthrough" is forbidden).
fn dropped(name: &HeaderName) -> bool {
    hop_by_hop(name) || matches!(name.as_str(), "authorization" | "dpop")
}

/// Copies `from` without hop-by-hop headers, those `Connection` names, and credentials.
pub fn forwardable(from: &HeaderMap) -> HeaderMap {
    forwardable_except(from, |_| false)
}

fn forwardable_except(from: &HeaderMap, also: fn(&HeaderName) -> bool) -> HeaderMap {
    copied(from, |name| dropped(name) || also(name))
}

/// `from` without the headers `left_out` names and those its `Connection` header names.
fn copied(from: &HeaderMap, left_out: impl Fn(&HeaderName) -> bool) -> HeaderMap {
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    let mut out = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if !left_out(name) && !named.iter().any(|n| n == name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// What is withheld from the upstream request beyond [`dropped`]: headers that describe the body
/// as the caller sent it (hyper frames the forwarded body itself, so a caller's length can
/// never disagree with what reaches the upstream); the encodings the caller accepts (the
/// gateway asks for identity); the caller's cookies and its claims about the path the request
/// took, which an upstream behind the gateway would read as the gateway's (the caller's
/// address is not passed on at all: identity is `X-Warden-*`).
fn withheld(name: &HeaderName) -> bool {
    matches!(name.as_str(), "content-length" | "expect" | "accept-encoding" | "cookie" | "forwarded" | "x-real-ip")
        || name.as_str().starts_with("x-forwarded-")
}

/// The request to send upstream for a server in audit mode: as the caller sent it.
pub fn passthrough(
    upstream: &str,
    method: &Method,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, UpstreamError> {
    let uri: http::Uri =
        upstream.parse().map_err(|source| UpstreamError::Uri { upstream: upstream.to_string(), source })?;
    if uri.scheme_str() != Some("http") {
        return Err(UpstreamError::Scheme(upstream.to_string()));
    }
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    // Everything the caller sent, its credentials included (the upstream still checks them
    // itself), but what never passes and the framing hyper redoes.
    *request.headers_mut() =
        copied(headers, |name| hop_by_hop(name) || matches!(name.as_str(), "content-length" | "expect"));
    Ok(request)
}

/// The request to send upstream for an allowed one. `bridge_headers` are the headers the
/// server's credential bridges read: a static key stops here like a token, unless the bridge
/// that admitted the request says the upstream still needs it.
pub fn request(
    upstream: &str,
    method: &Method,
    headers: &HeaderMap,
    body: Bytes,
    workload: &Verified,
    bridge_headers: &[String],
) -> Result<Request<Full<Bytes>>, UpstreamError> {
    let (issuer, subject) = identity(workload);
    let mut request = request_as(upstream, method, headers, body, issuer, subject)?;
    for name in bridge_headers {
        request.headers_mut().remove(name.as_str());
    }
    if let Some(bridge) = workload.bridge.as_ref().filter(|b| b.forward_key) {
        for value in headers.get_all(bridge.header.as_str()) {
            if let Ok(name) = HeaderName::from_bytes(bridge.header.as_bytes()) {
                request.headers_mut().append(name, value.clone());
            }
        }
    }
    Ok(request)
}

/// Who the upstream is told is calling: the workload's own issuer (for a task token, the
/// issuer of the identity it was exchanged for, not the token service) and subject.
pub(crate) fn identity(workload: &Verified) -> (&str, &str) {
    (own_issuer(&workload.issuer, workload.task.as_ref()), &workload.subject)
}

fn own_issuer<'a>(issuer: &'a str, task: Option<&'a warden_core::token::Task>) -> &'a str {
    task.map_or(issuer, |t| t.subject_issuer.as_str())
}

/// An upstream the gateway cannot forward to.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Not a URI.
    #[error("upstream {upstream:?}: {source}")]
    Uri {
        /// The configured upstream.
        upstream: String,
        /// Why it does not parse.
        source: http::uri::InvalidUri,
    },
    /// Not `http:`.
    #[error("upstream {0:?}: only http upstreams are supported on the gateway's host")]
    Scheme(String),
}

fn request_as(
    upstream: &str,
    method: &Method,
    headers: &HeaderMap,
    body: Bytes,
    issuer: &str,
    subject: &str,
) -> Result<Request<Full<Bytes>>, UpstreamError> {
    let uri: http::Uri =
        upstream.parse().map_err(|source| UpstreamError::Uri { upstream: upstream.to_string(), source })?;
    if uri.scheme_str() != Some("http") {
        return Err(UpstreamError::Scheme(upstream.to_string()));
    }
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    let mut forwarded = forwardable_except(headers, withheld);
    // A compressed answer could not be filtered; every answer is asked for as it is.
    forwarded.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    forwarded.insert(ISSUER_HEADER, header_value(issuer));
    forwarded.insert(SUBJECT_HEADER, header_value(subject));
    *request.headers_mut() = forwarded;
    Ok(request)
}

/// A claim as a header value: verbatim when it is visible ASCII and does not itself look
/// encoded, otherwise in the `=?base64?…?=` form MCP uses for such header values. A subject
/// that is literally `=?base64?…?=` is encoded too, so decoding (unwrap and decode what is
/// wrapped, take anything else as it is) always gives back the claim, never someone else's.
pub(crate) fn header_value(text: &str) -> HeaderValue {
    use base64::Engine;
    if text.bytes().all(|b| (0x21..0x7f).contains(&b) || b == b' ')
        && !text.starts_with("=?")
        && text.trim() == text
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
    fn audit_mode_passes_credentials_but_never_hop_by_hop_or_identity_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer static-key"),
            ("connection", "x-custom"),
            ("x-custom", "1"),
            ("x-warden-subject", "admin"),
            ("host", "gateway"),
            ("cookie", "a=b"),
            ("content-length", "300"),
            ("mcp-session-id", "s1"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let r = passthrough("http://127.0.0.1:9/mcp", &Method::POST, &h, Bytes::new()).unwrap();
        let mut names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["authorization", "cookie", "mcp-session-id"]);
        assert!(passthrough("https://up/mcp", &Method::POST, &h, Bytes::new()).is_err());
    }

    #[test]
    fn the_caller_s_cookies_path_claims_and_encodings_stay_here() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("cookie", "session=1"),
            ("forwarded", "for=10.0.0.1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "admin.internal"),
            ("x-real-ip", "10.0.0.1"),
            ("accept-encoding", "gzip, br"),
            ("accept", "application/json, text/event-stream"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let r = request_as("http://127.0.0.1:9/mcp", &Method::POST, &h, Bytes::new(), "corp", "s").unwrap();
        let mut names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["accept", "accept-encoding", "x-warden-issuer", "x-warden-subject"]);
        assert_eq!(r.headers().get_all("accept-encoding").iter().collect::<Vec<_>>(), ["identity"]);
        // Answers keep what the upstream sets (its cookies are the caller's to keep).
        let mut answer = HeaderMap::new();
        answer.insert("set-cookie", HeaderValue::from_static("a=1"));
        assert!(forwardable(&answer).contains_key("set-cookie"));
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

    /// What an upstream does with an identity header: unwrap and decode an encoded value, take
    /// anything else as it is.
    fn decode(value: &HeaderValue) -> String {
        use base64::Engine;
        let text = value.to_str().unwrap();
        match text.strip_prefix("=?base64?").and_then(|t| t.strip_suffix("?=")) {
            Some(b64) => String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap(),
            None => text.to_string(),
        }
    }

    #[test]
    fn every_subject_decodes_to_itself_and_never_to_someone_else() {
        // "=?base64?YWRtaW4=?=" is the encoding of "admin": sent verbatim, an upstream would
        // read admin.
        for subject in ["alice", "=?base64?YWRtaW4=?=", "=?x", " admin", "admin ", "ünïcode", "a\tb", "", "=?base64??="]
        {
            let value = header_value(subject);
            assert_eq!(decode(&value), subject, "{subject:?} sent as {value:?}");
        }
        assert_eq!(header_value("alice"), "alice", "plain subjects stay readable");
    }

    #[test]
    fn a_bridged_key_stops_here_unless_its_bridge_forwards_it() {
        use std::sync::Arc;
        use warden_core::bridge::Bridge;
        let bridge = |header: &str, forward_key: bool| {
            Arc::new(Bridge {
                name: "legacy".into(),
                header: header.into(),
                digest: "sha256:00".into(),
                principal: "ci".into(),
                scopes: Vec::new(),
                expires_at: i64::MAX,
                forward_key,
            })
            .workload()
        };
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("static-key"));
        h.insert("authorization", HeaderValue::from_static("Bearer static-key"));
        h.insert("x-other", HeaderValue::from_static("1"));
        let read = ["x-api-key".to_string(), "authorization".to_string()];
        let sent = |workload| {
            let r = request("http://127.0.0.1:9/mcp", &Method::POST, &h, Bytes::new(), &workload, &read).unwrap();
            let mut names: Vec<String> =
                r.headers().keys().map(|k| k.to_string()).filter(|k| !k.starts_with("x-warden")).collect();
            names.sort();
            names
        };
        assert_eq!(sent(bridge("x-api-key", false)), ["accept-encoding", "x-other"]);
        assert_eq!(sent(bridge("x-api-key", true)), ["accept-encoding", "x-api-key", "x-other"]);
        assert_eq!(sent(bridge("authorization", true)), ["accept-encoding", "authorization", "x-other"]);
        let r = request("http://127.0.0.1:9/mcp", &Method::POST, &h, Bytes::new(), &bridge("x-api-key", true), &read);
        assert_eq!(r.unwrap().headers()["x-api-key"], "static-key");
    }

    #[test]
    fn a_task_token_names_the_workload_s_own_issuer() {
        assert_eq!(own_issuer("corp-idp", None), "corp-idp");
        let task = warden_core::token::Task {
            subject_issuer: "corp-idp".into(),
            tools: vec!["search".into()],
            subject_token: None,
        };
        assert_eq!(own_issuer("warden", Some(&task)), "corp-idp", "not the token service");
    }
}
