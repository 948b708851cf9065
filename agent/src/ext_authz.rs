//! The local check API: Envoy's external authorization service (ext_authz v3, gRPC), for
//! proxies and servers that terminate MCP traffic themselves but want the fleet's decisions.
//! It answers from the same engine as the gateway (`gateway::admit` and the same body checks),
//! on a Unix socket or a loopback address.
//!
//! Which `McpServer` a check is for: the route's `context_extensions["mcp_server"]`, set per
//! route in Envoy's filter configuration. It is required: guessing the server from the
//! request's `Host` would let a caller have the check made against another server's token
//! rules and policies than the one Envoy routes it to. Allowed requests get `ok_response` with the identity headers added and the
//! caller's credentials removed; refused ones get `denied_response` with exactly the status,
//! `WWW-Authenticate` and body the gateway would have answered.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body_util::BodyExt;
use proto::envoy::config::core::v3 as core;
use proto::envoy::service::auth::v3::attribute_context::HttpRequest;
use proto::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use proto::envoy::service::auth::v3::{self as auth, CheckRequest, CheckResponse};
use proto::envoy::r#type::v3::HttpStatus;
use proto::google::rpc::Status as RpcStatus;
use tonic::{Request, Response, Status};
use warden_tasks::Shutdown;

use crate::gateway::{self, Caller, Shared};

/// The service.
pub struct LocalCheck {
    shared: Shared,
}

/// gRPC status codes used in `CheckResponse.status`.
const OK: i32 = 0;
const INVALID_ARGUMENT: i32 = 3;
const NOT_FOUND: i32 = 5;
const PERMISSION_DENIED: i32 = 7;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

#[tonic::async_trait]
impl Authorization for LocalCheck {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let Some(http) = attributes.request.and_then(|r| r.http) else {
            return Err(Status::invalid_argument("attributes.request.http is required"));
        };
        let source = attributes.source.unwrap_or_default();
        let address = source_address(source.address.as_ref());
        let certificate = client_certificate(&source.certificate);
        let caller = Caller::new(address, certificate.as_deref(), std::time::Instant::now(), "ext_authz");
        let Some(server) = attributes.context_extensions.get("mcp_server").map(|n| Arc::<str>::from(n.as_str())) else {
            return Ok(Response::new(denied(&unnamed())));
        };
        let method = Method::from_bytes(http.method.as_bytes()).map_err(|_| Status::invalid_argument("bad method"))?;
        let uri: http::Uri = http.path.parse().map_err(|_| Status::invalid_argument("bad path"))?;
        let headers = header_map(&http);
        if gateway::in_audit(&self.shared, &server) {
            // Audit mode: what Warden would decide is recorded; the request passes unchanged.
            if let Ok(admitted) = gateway::admit(&self.shared, &server, &caller, &method, &uri, &headers)
                && method == Method::POST
            {
                let body = if http.raw_body.is_empty() { http.body.as_bytes() } else { &http.raw_body };
                let _ = gateway::check_body(&self.shared, &admitted, &headers, body);
            }
            return Ok(Response::new(CheckResponse {
                status: Some(RpcStatus { code: OK, message: String::new(), details: Vec::new() }),
                http_response: Some(auth::check_response::HttpResponse::OkResponse(auth::OkHttpResponse::default())),
            }));
        }
        let admitted = match gateway::admit(&self.shared, &server, &caller, &method, &uri, &headers) {
            Ok(a) => a,
            Err(answer) => return Ok(Response::new(denied(&answer_parts(*answer).await))),
        };
        if method == Method::POST {
            let body = if http.raw_body.is_empty() { http.body.as_bytes() } else { &http.raw_body };
            if let Err(answer) = gateway::check_body(&self.shared, &admitted, &headers, body) {
                return Ok(Response::new(denied(&answer_parts(*answer).await)));
            }
        }
        let workload = admitted.workload();
        // The same identity, encoded the same way, as the gateway sends its upstream.
        let (issuer, subject) = crate::gateway::proxy::identity(workload);
        let add = |key: &str, value: &str| core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: key.into(),
                value: crate::gateway::proxy::header_value(value).to_str().unwrap_or_default().into(),
                raw_value: Vec::new(),
            }),
            append: None,
            append_action: core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        };
        let ok = auth::OkHttpResponse {
            headers: vec![add("x-warden-issuer", issuer), add("x-warden-subject", subject)],
            headers_to_remove: removed_headers(&admitted),
            response_headers_to_add: Vec::new(),
        };
        Ok(Response::new(CheckResponse {
            status: Some(RpcStatus { code: OK, message: String::new(), details: Vec::new() }),
            http_response: Some(auth::check_response::HttpResponse::OkResponse(ok)),
        }))
    }
}

/// The headers Envoy must take off before the request goes upstream: the caller's token and
/// proof, and the headers the server's credential bridges read, unless the bridge that admitted
/// the request forwards its key.
fn removed_headers(admitted: &gateway::Admitted) -> Vec<String> {
    let kept = admitted.workload().bridge.as_ref().filter(|b| b.forward_key).map(|b| b.header.as_str());
    ["authorization", "dpop"]
        .into_iter()
        .chain(admitted.bridge_headers().iter().map(String::as_str))
        .filter(|name| Some(*name) != kept)
        .map(str::to_string)
        .collect()
}

/// An answer taken apart: status, headers, body.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

async fn answer_parts(answer: http::Response<gateway::Body>) -> Answer {
    let (parts, body) = answer.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    Answer { status: parts.status.as_u16(), headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

fn denied(answer: &Answer) -> CheckResponse {
    let code = match answer.status {
        401 => UNAUTHENTICATED,
        400 | 413 | 415 => INVALID_ARGUMENT,
        404 => NOT_FOUND,
        429 => RESOURCE_EXHAUSTED,
        503 => UNAVAILABLE,
        _ => PERMISSION_DENIED,
    };
    let headers = answer
        .headers
        .iter()
        .filter_map(|(k, v)| {
            Some(core::HeaderValueOption {
                header: Some(core::HeaderValue {
                    key: k.as_str().into(),
                    value: v.to_str().ok()?.into(),
                    raw_value: Vec::new(),
                }),
                append: None,
                append_action: core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            })
        })
        .collect();
    let response = auth::DeniedHttpResponse {
        status: Some(HttpStatus { code: i32::from(answer.status) }),
        headers,
        body: answer.body.clone(),
    };
    CheckResponse {
        status: Some(RpcStatus { code, message: format!("HTTP {}", answer.status), details: Vec::new() }),
        http_response: Some(auth::check_response::HttpResponse::DeniedResponse(response)),
    }
}

/// The answer to a check whose route names no server.
fn unnamed() -> Answer {
    let body = serde_json::json!({ "error": "the route sets no context_extensions.mcp_server" });
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Answer { status: 500, headers, body: body.to_string() }
}

fn header_map(http: &HttpRequest) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(http.headers.len());
    for (k, v) in &http.headers {
        // Pseudo-headers (`:authority`, `:path`, …) are carried in their own fields.
        if k.starts_with(':') {
            continue;
        }
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            headers.append(k, v);
        }
    }
    // HTTP/2-style requests name their host only as `:authority` (the `host` field).
    if !headers.contains_key(http::header::HOST)
        && let Ok(host) = HeaderValue::from_str(&http.host)
    {
        headers.insert(http::header::HOST, host);
    }
    headers
}

fn source_address(address: Option<&core::Address>) -> SocketAddr {
    let unknown = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);
    let Some(core::address::Address::SocketAddress(socket)) = address.and_then(|a| a.address.as_ref()) else {
        return unknown;
    };
    let port = match socket.port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).unwrap_or(0),
        _ => 0,
    };
    socket.address.parse().map_or(unknown, |ip| SocketAddr::new(ip, port))
}

/// Envoy sends the client certificate as URL-encoded PEM.
fn client_certificate(encoded: &str) -> Option<Vec<u8>> {
    if encoded.is_empty() {
        return None;
    }
    let pem = url::form_urlencoded::parse(format!("c={encoded}").as_bytes()).next()?.1.into_owned();
    crate::tls::certs_from_pem(&pem).ok()?.into_iter().next().map(|c| c.as_ref().to_vec())
}

/// Why the local check API cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Neither `unix:/path` nor `host:port`.
    #[error("{0:?} is not unix:/path or host:port")]
    NotAnAddress(String),
    /// An address beyond this host.
    #[error(
        "the local check API listens on loopback or a Unix socket only, not {0}: anyone who reaches it can ask for decisions"
    )]
    NotLoopback(SocketAddr),
    /// The socket could not be bound or restricted.
    #[error("{what} {at}: {source}")]
    Socket {
        /// What failed (binding, restricting).
        what: &'static str,
        /// The path or address.
        at: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The server failed.
    #[error("{0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Where the local check API may listen: a Unix socket, or a loopback address. Anyone who can
/// reach it can ask for decisions about any token, so it never listens beyond this host.
pub fn check_listen(listen: &str) -> Result<(), ListenError> {
    if listen.strip_prefix("unix:").is_some_and(|p| !p.is_empty()) {
        return Ok(());
    }
    let addr: SocketAddr = listen.parse().map_err(|_| ListenError::NotAnAddress(listen.to_string()))?;
    if !addr.ip().is_loopback() {
        return Err(ListenError::NotLoopback(addr));
    }
    Ok(())
}

/// [`serve`], logging why it could not.
pub async fn serve_logged(shared: Shared, listen: String, stop: Shutdown) {
    if let Err(e) = serve(shared, listen, stop).await {
        tracing::error!("local check API: {e}");
    }
}

/// Serves the local check API on `listen` (`unix:/path` or a loopback `host:port`) until `stop`.
pub async fn serve(shared: Shared, listen: String, mut stop: Shutdown) -> Result<(), ListenError> {
    check_listen(&listen)?;
    let service = AuthorizationServer::new(LocalCheck { shared });
    let shutdown = async move { stop.requested().await };
    let router = tonic::transport::Server::builder().add_service(service);
    if let Some(path) = listen.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let socket = |what| move |source| ListenError::Socket { what, at: path.to_string(), source };
        let listener = tokio::net::UnixListener::bind(path).map_err(socket("binding"))?;
        // Only this user may ask: a caller that can reach the socket learns decisions.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(socket("restricting"))?;
        tracing::info!(%path, "local check API (ext_authz) listening");
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        Ok(router.serve_with_incoming_shutdown(incoming, shutdown).await?)
    } else {
        let addr: SocketAddr = listen.parse().map_err(|_| ListenError::NotAnAddress(listen.clone()))?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ListenError::Socket {
            what: "binding",
            at: addr.to_string(),
            source,
        })?;
        tracing::info!(%addr, "local check API (ext_authz) listening");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        Ok(router.serve_with_incoming_shutdown(incoming, shutdown).await?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_local_check_api_listens_only_on_this_host() {
        for ok in ["unix:/run/warden/authz.sock", "127.0.0.1:9191", "127.8.0.1:1", "[::1]:9191"] {
            assert!(super::check_listen(ok).is_ok(), "{ok}");
        }
        for refused in ["0.0.0.0:9191", "[::]:9191", "10.0.0.5:9191", "unix:", "localhost:9191", "9191"] {
            assert!(super::check_listen(refused).is_err(), "{refused}");
        }
    }
}
