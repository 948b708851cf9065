//! The answers the gateway gives itself: JSON-RPC errors, the OAuth challenges the MCP
//! authorization spec requires (RFC 6750 §3, RFC 9728 §5.1), and protected resource metadata.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use warden_core::server::{Binding, McpServerSpec};
use warden_core::token::Reason;

/// Errors of bodies the gateway streams.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body: the gateway's own, or an upstream's passed through.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body of known bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A JSON response.
pub fn json(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A plain error from the gateway, as `{"error": "..."}`.
pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Body> {
    json(status, &json!({ "error": message.to_string() }))
}

/// One JSON-RPC error object answering the request with `id` (`null` when unknown).
pub fn jsonrpc_error_value(id: Option<&RawValue>, code: i64, message: &str, data: Option<Value>) -> Value {
    let id: Value = id.and_then(|raw| serde_json::from_str(raw.get()).ok()).unwrap_or(Value::Null);
    let mut error = json!({ "code": code, "message": message });
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

/// A JSON-RPC error as the whole response.
pub fn jsonrpc_error(status: StatusCode, id: Option<&RawValue>, code: i64, message: &str) -> Response<Body> {
    json(status, &jsonrpc_error_value(id, code, message, None))
}

/// A body past a rate limit: `429` with `Retry-After` (whole seconds, at least 1) and the
/// JSON-RPC error MCP clients read, which says the same — one per request of a batch.
pub fn rate_limited(ids: &[Option<&RawValue>], batch: bool, wait: std::time::Duration) -> Response<Body> {
    let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    let error = |id| {
        let data = json!({"reason": "rate_limited", "retryAfterSeconds": seconds});
        jsonrpc_error_value(id, warden_core::mcp::RATE_LIMITED, "rate limited", Some(data))
    };
    let body = if batch {
        Value::Array(ids.iter().filter(|id| id.is_some()).map(|id| error(*id)).collect())
    } else {
        error(ids.first().copied().flatten())
    };
    let mut answer = json(StatusCode::TOO_MANY_REQUESTS, &body);
    answer.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
    answer
}

/// Where a server's URLs are: the MCP endpoint path and the metadata document, derived from its
/// resource identifier.
pub struct Route {
    /// The path MCP requests are served on (the resource's path).
    pub mcp_path: String,
    /// RFC 9728 §3.1: the well-known path with the resource's path inserted after it.
    pub metadata_path: String,
    /// The same as an absolute URL, for `resource_metadata`.
    pub metadata_url: String,
    /// The resource's origin, always allowed as a browser `Origin`.
    pub origin: String,
    /// The resource's URL without query: what a DPoP proof's `htu` names.
    pub url: String,
    /// The start of every challenge: the scheme the server expects (`DPoP` with the accepted
    /// algorithms for `binding: dpop`, else `Bearer`) and the metadata URL.
    challenge: String,
    /// The server's rate limits, with their buckets (kept across configuration versions that
    /// leave a limit as it is).
    pub limits: Arc<[ServerLimit]>,
    /// The server's concurrency limits, with their counts of requests in flight (kept likewise).
    pub concurrency: Arc<[ServerConcurrency]>,
    /// The server's tool pinning, when it records definitions.
    pub pins: Option<Arc<super::filter::Pinned>>,
}

/// One of a server's concurrency limits and this agent's count of requests in flight under it.
pub struct ServerConcurrency {
    /// The limit as configured.
    pub limit: warden_core::rate_limit::ConcurrencyLimit,
    /// Requests in flight, by caller.
    pub in_flight: Arc<warden_core::rate_limit::InFlight>,
}

/// One of a server's rate limits and the buckets this agent keeps for it.
pub struct ServerLimit {
    /// The limit as configured.
    pub limit: warden_core::rate_limit::RateLimit,
    /// Its buckets.
    pub limiter: Arc<warden_core::rate_limit::Limiter>,
}

const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

impl Route {
    /// The routes of `spec` (its resource was validated as an absolute URL on admission).
    pub fn new(spec: &McpServerSpec) -> Option<Route> {
        let url = url::Url::parse(&spec.resource).ok()?;
        let path = url.path().trim_end_matches('/');
        let metadata_path = format!("{WELL_KNOWN}{path}");
        let origin = url.origin().ascii_serialization();
        let metadata_url = format!("{origin}{metadata_path}");
        let challenge = match spec.binding {
            Binding::Dpop => format!("DPoP algs=\"{}\", resource_metadata=\"{metadata_url}\"", dpop_algs().join(" ")),
            _ => format!("Bearer resource_metadata=\"{metadata_url}\""),
        };
        let mcp_path = if path.is_empty() { "/".to_string() } else { path.to_string() };
        Some(Route {
            url: format!("{origin}{mcp_path}"),
            mcp_path,
            metadata_url,
            metadata_path,
            origin,
            challenge,
            limits: Arc::from([]),
            concurrency: Arc::from([]),
            pins: None,
        })
    }

    /// The route with its rate and concurrency limits.
    pub fn with_limits(self, limits: Vec<ServerLimit>, concurrency: Vec<ServerConcurrency>) -> Route {
        Route { limits: limits.into(), concurrency: concurrency.into(), ..self }
    }

    /// The route with its tool pinning.
    pub fn with_pins(self, pins: Option<Arc<super::filter::Pinned>>) -> Route {
        Route { pins, ..self }
    }

    /// Whether `path` asks for the metadata: the path-inserted form or the root form.
    pub fn is_metadata(&self, path: &str) -> bool {
        path == self.metadata_path || path == WELL_KNOWN
    }
}

/// RFC 9728 §2: what a client needs to get a token for this server.
pub fn metadata(server: &str, spec: &McpServerSpec, issuer_urls: Vec<String>) -> Response<Body> {
    let mut doc = json!({
        "resource": spec.resource,
        "resource_name": server,
        "authorization_servers": issuer_urls,
        "bearer_methods_supported": ["header"],
        "tls_client_certificate_bound_access_tokens": spec.binding == Binding::Mtls,
        "dpop_bound_access_tokens_required": spec.binding == Binding::Dpop,
    });
    if !spec.scopes.is_empty() {
        doc["scopes_supported"] = json!(spec.scopes);
    }
    if spec.binding == Binding::Dpop {
        doc["dpop_signing_alg_values_supported"] = json!(dpop_algs());
    }
    let mut response = json(StatusCode::OK, &doc);
    response.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    response
}

/// 401: no token (no error code, RFC 6750 §3.1) or a refused one (`invalid_token` with the
/// reason code as description; never anything from the token itself).
pub fn unauthorized(route: &Route, reason: Option<Reason>) -> Response<Body> {
    match reason {
        None => challenged(
            StatusCode::UNAUTHORIZED,
            route.challenge.clone(),
            &json!({ "error": "unauthorized", "error_description": "a bearer token is required" }),
        ),
        Some(reason) => refused(route, "invalid_token", reason.code()),
    }
}

/// 401 `invalid_dpop_proof` (RFC 9449 §7.1).
pub fn invalid_dpop_proof(route: &Route, why: &str) -> Response<Body> {
    refused(route, "invalid_dpop_proof", why)
}

fn refused(route: &Route, error: &str, description: &str) -> Response<Body> {
    let challenge = format!("{}, error=\"{error}\", error_description=\"{description}\"", route.challenge);
    challenged(StatusCode::UNAUTHORIZED, challenge, &json!({ "error": error, "error_description": description }))
}

/// 403 `insufficient_scope` naming the scopes the server requires (RFC 6750 §3.1).
pub fn insufficient_scope(route: &Route, scopes: &[String]) -> Response<Body> {
    let scope = scopes.join(" ");
    let challenge = format!("{}, error=\"insufficient_scope\", scope=\"{scope}\"", route.challenge);
    challenged(StatusCode::FORBIDDEN, challenge, &json!({ "error": "insufficient_scope", "scope": scope }))
}

fn dpop_algs() -> Vec<String> {
    warden_core::dpop::ALGORITHMS
        .iter()
        .map(|a| serde_json::to_value(a).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default())
        .collect()
}

fn challenged(status: StatusCode, challenge: String, body: &Value) -> Response<Body> {
    let mut response = json(status, body);
    // Every part comes from validated configuration (URLs, scope tokens) or a fixed code.
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(WWW_AUTHENTICATE, value);
    }
    response
}
