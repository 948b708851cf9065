//! One request through the gateway, in the order of PRODUCT.md's "What a request goes through
//! at the agent": route, Origin, token, scopes, body, policy, forward, filter.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use serde_json::value::RawValue;
use warden_core::authorize::{RequestFacts, Shadow, Target};
use warden_core::pinning::{DefinitionKind, PinningMode, Verdict};
use warden_core::rate_limit::{Limiter, Permit, Subject};
use warden_core::refusal::Refusal;
use warden_core::server::McpServerSpec;
use warden_core::token::{Presenter, Reason, Verified};
use warden_core::{dpop, mcp, param_headers};

use super::filter::{self, Allows, Lists};
use super::param_headers::{Declarations, ServerDeclarations};
use super::record::{self, Decision};
use super::reply::{self, Body, Route, ServerConcurrency, ServerLimit};
use super::{Shared, Worker, proxy, refusals, sessions};
use crate::applied::Applied;
use crate::spans::{Facts, TraceContext};
use crate::sync::{EndedTask, KeyRefresh};

/// Bounds on what callers and upstreams may send, and how long they may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// JSON depth and batch size.
    pub json: mcp::Limits,
    /// How long an upstream may take to start its answer (its status and headers).
    pub upstream_response_timeout: Duration,
    /// How long reading a whole body may take: a caller's request, an upstream's list answer
    /// read for filtering. (Answers that stream through, SSE above all, are not bounded.)
    pub body_read_timeout: Duration,
    /// How long a caller may take to send a request's headers, and a connection may stay
    /// idle between requests (against slowloris).
    pub header_read_timeout: Duration,
    /// Connections one server's listener serves at a time (all workers together); past it,
    /// new ones are closed at once.
    pub max_connections_per_listener: usize,
    /// DPoP proofs remembered against replay per server (see `warden_core::dpop::ReplayCache`).
    pub dpop_proofs_per_server: usize,
    /// Of those, the most one key may hold.
    pub dpop_proofs_per_key: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 1024 * 1024,
            json: mcp::Limits::default(),
            upstream_response_timeout: Duration::from_secs(300),
            body_read_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_connections_per_listener: 4096,
            dpop_proofs_per_server: super::DPOP_PROOFS_REMEMBERED,
            dpop_proofs_per_key: super::DPOP_PROOFS_PER_KEY,
        }
    }
}

/// Who is calling, as the connection tells.
pub(crate) struct Caller<'a> {
    /// The peer's address.
    pub address: SocketAddr,
    /// The DER of the certificate it presented over mutual TLS.
    pub certificate: Option<&'a [u8]>,
    /// When the request arrived (decision latency is measured from here).
    pub arrived: Instant,
    /// Which front door: "gateway" or "ext_authz" (for decision records).
    pub via: &'static str,
    /// With tracing on: the request's trace context and what its span will say.
    pub trace: Option<(TraceContext, Arc<Mutex<Facts>>)>,
}

impl<'a> Caller<'a> {
    /// A caller without a trace.
    pub fn new(address: SocketAddr, certificate: Option<&'a [u8]>, arrived: Instant, via: &'static str) -> Caller<'a> {
        Caller { address, certificate, arrived, via, trace: None }
    }
}

/// Handles one request for `server`.
pub(super) async fn handle(
    worker: &Worker,
    server: &Arc<str>,
    caller: Caller<'_>,
    request: Request<hyper::body::Incoming>,
) -> Response<Body> {
    if in_audit(&worker.shared, server) {
        return audit(worker, server, caller, request).await;
    }
    let admitted = match admit(&worker.shared, server, &caller, request.method(), request.uri(), request.headers()) {
        Ok(a) => a,
        Err(answer) => return *answer,
    };
    match *request.method() {
        Method::POST => post(worker, admitted, request).await,
        _ => {
            let (parts, _) = request.into_parts();
            // A GET stream may replay earlier answers (resumption), lists included.
            let lists = (parts.method == Method::GET).then(|| {
                ["tools/list", "prompts/list", "resources/list"].into_iter().filter_map(mcp::list_filter).collect()
            });
            admitted.decider.record(&parts.headers, parts.method.as_str(), None, false, Outcome::default());
            forward(worker, &admitted, &parts, Bytes::new(), lists).await
        }
    }
}

/// A decision: why the request was refused (`None`: allowed), the ids of the policies that
/// decided, and what the server's shadow policies would have decided instead, if otherwise.
#[derive(Default)]
struct Outcome {
    refusal: Option<Refusal>,
    policies: Vec<String>,
    shadow: Option<Shadow>,
}

impl Outcome {
    fn refused(refusal: Refusal) -> Outcome {
        Outcome { refusal: Some(refusal), ..Outcome::default() }
    }
}

/// The answer that refuses a request, boxed: refusals are the rare path.
pub(crate) type Refused = Box<Response<Body>>;

/// A request that passed everything but its body: route, Origin, token, scopes, session.
pub(crate) struct Admitted {
    decider: Decider,
    principal: sessions::Principal,
    /// The session the request belongs to, as the upstream knows it.
    session: Option<HeaderValue>,
}

impl Admitted {
    /// The verified workload.
    pub(crate) fn workload(&self) -> &Verified {
        &self.decider.verified
    }

    /// The headers the server's credential bridges read (lower case).
    pub(crate) fn bridge_headers(&self) -> &[String] {
        self.decider.applied.bridges.headers(&self.decider.server)
    }
}

/// Whether `server` is in audit mode now (`enforcement: audit` before its `auditUntil`).
pub(crate) fn in_audit(shared: &Shared, server: &str) -> bool {
    let now = crate::identity::now_unix();
    shared.current.get().is_some_and(|applied| applied.config.servers.get(server).is_some_and(|s| s.in_audit(now)))
}

/// A request to a server in audit mode: every decision Warden would make is recorded (with
/// `audit`), and the request goes to the upstream as it came — its credentials included, for
/// the server's own handling — whatever they say; the answer comes back unfiltered. What
/// Warden serves itself (the metadata document, a server not served here) and its own bounds
/// (body size, read timeouts) hold in every mode.
async fn audit(
    worker: &Worker,
    server: &Arc<str>,
    caller: Caller<'_>,
    request: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let shared = &worker.shared;
    let Some(applied) = shared.current.get() else {
        return reply::error(StatusCode::SERVICE_UNAVAILABLE, "no configuration received yet");
    };
    let spec = match resolve(shared, &applied, server, request.method(), request.uri()) {
        Ok((spec, _)) => spec.clone(),
        Err(answer) => return *answer,
    };
    // A refusal here is recorded (as would_deny) and changes nothing.
    let admitted = admit(shared, server, &caller, request.method(), request.uri(), request.headers()).ok();
    let (parts, body) = request.into_parts();
    let limit = shared.limits.max_body_bytes;
    let read = tokio::time::timeout(shared.limits.body_read_timeout, Limited::new(body, limit).collect());
    let bytes = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(limit),
        Ok(Err(e)) => return reply::error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
        Err(_) => return reply::error(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time"),
    };
    if let Some(admitted) = &admitted {
        match parts.method {
            Method::POST => {
                // Each message decided and recorded as it would be; the verdict is not used.
                let _ = decide_body(&admitted.decider, &parts.headers, &bytes, shared.limits.json);
            }
            _ => admitted.decider.record(&parts.headers, parts.method.as_str(), None, false, Outcome::default()),
        }
    }
    let upstream = match proxy::passthrough(&spec.upstream, &parts.method, &parts.headers, bytes) {
        Ok(upstream) => upstream,
        Err(e) => return reply::error(StatusCode::BAD_GATEWAY, e),
    };
    let timeout = shared.limits.upstream_response_timeout;
    match tokio::time::timeout(timeout, worker.client.request(upstream)).await {
        Ok(Ok(response)) => {
            let (mut head, incoming) = response.into_parts();
            head.headers = proxy::forwardable(&head.headers);
            Response::from_parts(head, incoming.map_err(Into::into).boxed_unsync())
        }
        Ok(Err(e)) => {
            tracing::warn!(%server, "upstream: {e}");
            reply::error(StatusCode::BAD_GATEWAY, "the upstream MCP server did not answer")
        }
        Err(_) => reply::error(StatusCode::GATEWAY_TIMEOUT, "the upstream MCP server did not answer in time"),
    }
}

/// Everything decided before the body: the gateway and the local check API (ext_authz) share
/// it. `Err` is the answer that refuses the request (or, for the metadata document, serves it).
///
/// The steps: the server and its route → the MCP path and `Origin` → the token (and its proof)
/// → scopes → the session → the method's framing. Every refusal from the path on is a decision.
pub(crate) fn admit(
    shared: &Shared,
    server: &Arc<str>,
    caller: &Caller<'_>,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Result<Admitted, Refused> {
    // Fail closed: with no configuration ever received there is nothing to enforce.
    let Some(applied) = shared.current.get() else {
        return Err(Box::new(reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration received yet; every request is refused",
        )));
    };
    let (spec, route_shared) = resolve(shared, &applied, server, method, uri)?;
    let route = &*route_shared;
    let now = crate::identity::now_unix();
    let audit = spec.in_audit(now);
    let refusal = Refuser { shared, server, caller, method, headers, audit, version: applied.version, now };
    if uri.path() != route.mcp_path {
        refusal.record(None, Refusal::UnknownPath);
        return Err(Box::new(reply::error(StatusCode::NOT_FOUND, format!("the MCP endpoint is {}", route.mcp_path))));
    }
    if let Some(origin) = headers.get(header::ORIGIN)
        && !origin_allowed(origin, route, spec)
    {
        // Against DNS rebinding: a browser page from another origin must not reach the server.
        refusal.record(None, Refusal::OriginRefused);
        return Err(Box::new(reply::error(StatusCode::FORBIDDEN, "this Origin may not call the server")));
    }
    let verified = authenticate(&refusal, &applied, route, uri, now)?;
    if shared.task_ended(&verified, now) {
        refusal.record(Some(&verified), Refusal::Token(Reason::Revoked));
        return Err(Box::new(reply::unauthorized(route, Some(Reason::Revoked))));
    }
    if !spec.scopes.iter().all(|s| verified.scopes.contains(s)) {
        refusal.record(Some(&verified), Refusal::InsufficientScope);
        return Err(Box::new(reply::insufficient_scope(route, &spec.scopes)));
    }
    let principal = sessions::principal(&verified);
    // In audit mode session ids are the upstream's own (nothing is sealed): not checked here.
    let session = if audit { None } else { session(&refusal, &verified, &principal)? };
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    if matches!(*method, Method::GET | Method::DELETE) && has_body {
        // Its body is not forwarded; a length that promises one would desync the upstream.
        refusal.record(Some(&verified), Refusal::BodyNotAllowed);
        return Err(Box::new(reply::error(StatusCode::BAD_REQUEST, "GET and DELETE carry no body")));
    }
    if !matches!(*method, Method::POST | Method::GET | Method::DELETE) {
        refusal.record(Some(&verified), Refusal::MethodNotAllowed);
        return Err(Box::new(method_not_allowed("GET, POST, DELETE")));
    }
    let decider = Decider {
        applied: applied.clone(),
        server: server.clone(),
        verified,
        source_ip: caller.address.ip(),
        now,
        arrived: caller.arrived,
        via: caller.via,
        outbox: shared.outbox.clone(),
        trace: caller.trace.clone(),
        audit,
        limits: route.limits.clone(),
        concurrency: route.concurrency.clone(),
        pins: route.pins.clone(),
        route: route_shared.clone(),
        adopted: std::sync::OnceLock::new(),
        declarations: shared.declarations.clone(),
    };
    Ok(Admitted { decider, principal, session })
}

/// The server's spec and route in `applied`; the metadata document is served here. Nothing is
/// recorded yet: a server not served here and metadata are not decisions about a caller.
fn resolve<'a>(
    shared: &Shared,
    applied: &'a Applied,
    server: &Arc<str>,
    method: &Method,
    uri: &http::Uri,
) -> Result<(&'a McpServerSpec, Arc<Route>), Refused> {
    let Some(spec) = applied.config.servers.get(&**server).filter(|s| shared.serves(s)) else {
        return Err(Box::new(reply::error(StatusCode::NOT_FOUND, format!("server {server} is not served here"))));
    };
    let Some(route) = shared.route(applied, server) else {
        return Err(Box::new(reply::error(StatusCode::INTERNAL_SERVER_ERROR, "the server's resource is not a URL")));
    };
    if route.is_metadata(uri.path()) {
        return Err(Box::new(match *method {
            Method::GET | Method::HEAD => {
                let issuers =
                    spec.issuers.iter().filter_map(|i| applied.config.issuers.get(i)).map(|i| i.issuer.clone());
                reply::metadata(server, spec, issuers.collect())
            }
            _ => method_not_allowed("GET"),
        }));
    }
    Ok((spec, route))
}

/// Records a refusal of the request being admitted as a decision with its reason: those of an
/// accepted token one record each, those before any token was accepted tallied per second and
/// source (garbage costs its sender nothing and must not flush the decision log).
struct Refuser<'a> {
    shared: &'a Shared,
    server: &'a Arc<str>,
    caller: &'a Caller<'a>,
    method: &'a Method,
    headers: &'a HeaderMap,
    /// The server is in audit mode: what is recorded is what Warden would do.
    audit: bool,
    /// The configuration version deciding.
    version: u64,
    /// When the request arrived (seconds since the epoch).
    now: i64,
}

impl Refuser<'_> {
    fn record(&self, workload: Option<&Verified>, refusal: Refusal) {
        let reason = refusal.code();
        let (shared, caller, method) = (self.shared, self.caller, self.method);
        let trace = caller.trace.as_ref().map(|(t, _)| t);
        match workload {
            Some(_) => {
                let decision = Decision {
                    server: self.server,
                    method: method.as_str(),
                    target: None,
                    workload,
                    allowed: false,
                    reason,
                    policies: &[],
                    shadow: None,
                    audit: self.audit,
                    source_ip: caller.address.ip(),
                    arguments: false,
                    config_version: self.version,
                    policy_time: self.now,
                };
                record::record(&shared.outbox, caller.arrived, caller.via, self.headers, trace, decision);
            }
            None if shared.outbox.enabled() => {
                let mut hex = [0; 32];
                let trace_id = match trace {
                    Some(context) => record::hex_of(&context.trace_id, &mut hex),
                    None => record::trace_id(self.headers).unwrap_or_default(),
                };
                shared.refusals.add(refusals::Refusal {
                    server: self.server,
                    method: method.as_str(),
                    reason,
                    source: caller.address.ip(),
                    via: caller.via,
                    latency_micros: caller.arrived.elapsed().as_micros() as u64,
                    trace_id,
                    audit: self.audit,
                });
            }
            None => {}
        }
        if let Some((_, facts)) = &caller.trace {
            facts.lock().unwrap_or_else(|p| p.into_inner()).decided(method.as_str(), None, false, reason);
        }
    }
}

/// The caller's token, verified under `applied` (and its DPoP proof, when it is bound to one).
fn authenticate(
    refusal: &Refuser<'_>,
    applied: &Applied,
    route: &Route,
    uri: &http::Uri,
    now: i64,
) -> Result<Arc<Verified>, Refused> {
    let (shared, server, headers) = (refusal.shared, refusal.server, refusal.headers);
    // A legacy client's static key, where a bridge of this server takes one: decided like a
    // token's workload from here on. A key no bridge knows goes on as a token would, and so
    // does a request with a token besides a key in a header of its own (a client moving to
    // tokens keeps working when its bridge closes).
    let values = |name: &str| headers.get_all(name).iter().map(HeaderValue::as_bytes).collect();
    let has_token = headers.contains_key(header::AUTHORIZATION);
    if let Some(bridge) = applied.bridges.find(server, values).filter(|b| b.header == "authorization" || !has_token) {
        return bridge.admit(now, &applied.revocations).map_err(|reason| {
            tracing::info!(server = %server, bridge = %bridge.name, reason = %reason, "bridged key refused");
            // Tallied like a refused token: a leaked key, expired or revoked, cannot flood the
            // decision log.
            refusal.record(None, Refusal::Token(reason));
            Box::new(reply::unauthorized(route, Some(reason)))
        });
    }
    let (scheme, token) = match credentials(headers, uri.query()) {
        Ok(Some(credentials)) => credentials,
        Ok(None) => {
            refusal.record(None, Refusal::MissingToken);
            return Err(Box::new(reply::unauthorized(route, None)));
        }
        Err(message) => {
            refusal.record(None, Refusal::MalformedCredentials);
            return Err(Box::new(reply::error(StatusCode::BAD_REQUEST, message)));
        }
    };
    let proven = match scheme {
        Scheme::Dpop => match dpop_proof(route, refusal.method, headers, token, now) {
            Ok(p) => Some(p),
            Err(answer) => {
                refusal.record(None, Refusal::InvalidDpopProof);
                return Err(answer);
            }
        },
        Scheme::Bearer => None,
    };
    let jkt = proven.as_ref().map(|p| p.jkt.as_str());
    let presenter = Presenter { client_certificate: refusal.caller.certificate, dpop_key_thumbprint: jkt };
    match applied.verifier.verify(token, server, now, &applied.revocations, presenter) {
        // A proof's jti is remembered only once the token it came with is accepted, and only
        // when that token is bound to the proof's key: anyone can sign proofs with a key of
        // their own, and a proof sent with a bearer token proves nothing (the token is enough
        // without it). So only a bound token's holder can use the server's replay memory, and
        // each key only its quota of it.
        Ok(v) => match proven.as_ref().filter(|p| bound_key(&v) == Some(p.jkt.as_str())) {
            Some(p) => match shared.record_proof(server, p, now, PROOF_MAX_AGE + PROOF_SKEW) {
                Ok(()) => Ok(v),
                Err(e) => {
                    refusal.record(Some(&v), Refusal::InvalidDpopProof);
                    Err(Box::new(reply::invalid_dpop_proof(route, &e.to_string())))
                }
            },
            None => Ok(v),
        },
        Err(reason) => {
            tracing::info!(server = %server, reason = %reason, "token refused");
            refusal.record(None, Refusal::Token(reason));
            if reason == Reason::UnknownKey {
                ask_for_keys(shared, applied, token);
            }
            Err(Box::new(reply::unauthorized(route, Some(reason))))
        }
    }
}

/// The session the request names, as the upstream knows it. The gateway hands out sealed ids
/// and takes back only those it sealed for this workload; the upstream sees its own id. Behind
/// Envoy (the local check API) the caller holds the upstream's id, bound to the first workload
/// seen with it.
fn session(
    refusal: &Refuser<'_>,
    verified: &Verified,
    principal: &sessions::Principal,
) -> Result<Option<HeaderValue>, Refused> {
    let (shared, server) = (refusal.shared, refusal.server);
    let mut sessions = refusal.headers.get_all("mcp-session-id").iter();
    let session = sessions.next();
    // One session id, without commas: proxies join repeated headers with commas, and the
    // upstream might pick another value than the one checked here.
    if sessions.next().is_some() || session.is_some_and(|s| s.as_bytes().contains(&b',')) {
        refusal.record(Some(verified), Refusal::SessionHeaderInvalid);
        return Err(Box::new(reply::error(StatusCode::BAD_REQUEST, "one Mcp-Session-Id header, one value")));
    }
    let mismatch = |warning: &str| -> Refused {
        tracing::warn!(server = %server, "{warning}");
        refusal.record(Some(verified), Refusal::SessionMismatch);
        Box::new(reply::error(StatusCode::NOT_FOUND, "no such session for this workload"))
    };
    match session {
        None => Ok(None),
        Some(presented) if refusal.caller.via == VIA_GATEWAY => {
            match shared.seal.open(presented.as_bytes(), principal).map(HeaderValue::from_bytes) {
                Some(Ok(upstream)) => Ok(Some(upstream)),
                _ => Err(mismatch("a session id this gateway did not seal for this workload")),
            }
        }
        Some(presented) if shared.sessions.allows(presented.as_bytes(), principal) => Ok(Some(presented.clone())),
        Some(_) => Err(mismatch("a session was presented by another workload than the one that opened it")),
    }
}

/// The tool (of a `tools/call`, else none) of each message of `body` a limit counts, by
/// `applies(method, tool)`: requests and notifications, never responses.
fn counted<'a>(
    body: &'a mcp::Body<'_>,
    applies: impl Fn(&str, Option<&str>) -> bool + 'a,
) -> impl Iterator<Item = Option<&'a str>> + 'a {
    body.messages.iter().filter_map(move |m| {
        let method = m.method.as_deref()?;
        let tool = if method == "tools/call" { m.name.as_deref() } else { None };
        applies(method, tool).then_some(tool)
    })
}

/// The clock rate limits count on: monotonic, from the first request.
static RATE_CLOCK: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// The caller's decisions for one request: its verified token under the configuration that
/// verified it.
#[derive(Clone)]
struct Decider {
    applied: Arc<Applied>,
    server: Arc<str>,
    verified: Arc<Verified>,
    source_ip: IpAddr,
    now: i64,
    arrived: Instant,
    via: &'static str,
    outbox: Arc<crate::decisions::Outbox>,
    trace: Option<(TraceContext, Arc<Mutex<Facts>>)>,
    /// The server is in audit mode: decisions are recorded as what Warden would do.
    audit: bool,
    /// The server's rate limits.
    limits: Arc<[reply::ServerLimit]>,
    /// The server's concurrency limits.
    concurrency: Arc<[reply::ServerConcurrency]>,
    /// The server's tool pinning, when it records definitions.
    pins: Option<Arc<filter::Pinned>>,
    /// The server's route (its challenges).
    route: Arc<Route>,
    /// The trace the body named in `_meta` (SEP-414), when the headers named none: records,
    /// the span and the upstream's `traceparent` continue it.
    adopted: std::sync::OnceLock<TraceContext>,
    /// The `Mcp-Param-*` headers each server's tools declare, as last listed.
    declarations: Arc<Declarations>,
}

impl Decider {
    /// Counts `body` against the server's rate limits that apply to it: `Err` with how long
    /// until it would be allowed, past one of them. Each request or notification counts (every
    /// one of a batch), or for a limit on some tools, each call of one of them. Nothing is
    /// counted unless every limit allows the whole body.
    fn rate_limit(&self, body: &mcp::Body<'_>) -> Result<(), std::time::Duration> {
        if self.limits.is_empty() {
            return Ok(());
        }
        let verified = &*self.verified;
        let tenant = verified.claims.get("tenant").and_then(|t| t.as_str());
        let now = RATE_CLOCK.elapsed().as_nanos() as u64;
        // (limit, bucket, requests)
        let mut charges: Vec<(&Limiter, u64, u64)> = Vec::new();
        for ServerLimit { limit, limiter } in self.limits.iter() {
            for tool in counted(body, |method, tool| limit.applies(method, tool)) {
                let subject = Subject { issuer: &verified.issuer, subject: &verified.subject, tool, tenant };
                let bucket = limiter.bucket(&subject);
                match charges.iter_mut().find(|(l, b, _)| std::ptr::eq(*l, &**limiter) && *b == bucket) {
                    Some((_, _, n)) => *n += 1,
                    None => charges.push((limiter, bucket, 1)),
                }
            }
        }
        let refused = charges.iter().filter_map(|(limiter, bucket, n)| limiter.would_allow(*bucket, *n, now).err());
        if let Some(wait) = refused.max() {
            return Err(wait);
        }
        for (limiter, bucket, n) in charges {
            // Another request of the same caller may have taken the room since: refused then.
            limiter.take(bucket, n, now)?;
        }
        Ok(())
    }

    /// Counts `body`'s requests in flight under the server's concurrency limits that apply to
    /// it (each message of a batch); `Err` past one of them, with nothing counted.
    fn in_flight(&self, body: &mcp::Body<'_>) -> Result<Vec<Permit>, ()> {
        let mut permits = Vec::new();
        if self.concurrency.is_empty() {
            return Ok(permits);
        }
        let verified = &*self.verified;
        let tenant = verified.claims.get("tenant").and_then(|t| t.as_str());
        for ServerConcurrency { limit, in_flight } in self.concurrency.iter() {
            let mut counts: Vec<(u64, u32)> = Vec::new();
            for tool in counted(body, |method, tool| limit.applies(method, tool)) {
                let key =
                    in_flight.key(&Subject { issuer: &verified.issuer, subject: &verified.subject, tool, tenant });
                match counts.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((key, 1)),
                }
            }
            for (key, n) in counts {
                // A refusal drops the permits taken so far: nothing stays counted.
                permits.push(in_flight.acquire(key, n).ok_or(())?);
            }
        }
        Ok(permits)
    }

    /// Puts one MCP method on one target to policy: why not (`None`: allowed), with the ids of
    /// the policies that decided.
    fn decide(&self, method: &str, target: Target<'_>, arguments: Option<&RawValue>) -> Outcome {
        let granted_tools = self.verified.task.as_ref().map_or(&[][..], |t| &t.tools[..]);
        let facts = RequestFacts { source_ip: self.source_ip, now: self.now, granted_tools, arguments };
        match self.applied.authorizer.authorize(&self.server, &self.verified, method, target, &facts) {
            Ok(outcome) => {
                for e in &outcome.errors {
                    tracing::warn!(server = %self.server, method, "policy evaluation error (denied): {e}");
                }
                let refusal = match (outcome.allowed, outcome.errors.is_empty()) {
                    (true, _) => None,
                    (false, _) if outcome.not_granted => Some(Refusal::ToolNotGranted),
                    (false, true) => Some(Refusal::PolicyDenied),
                    (false, false) => Some(Refusal::PolicyError),
                };
                Outcome { refusal, policies: outcome.policies, shadow: outcome.shadow }
            }
            Err(e) => {
                tracing::warn!(server = %self.server, method, "{e} (denied)");
                Outcome::refused(Refusal::PolicyError)
            }
        }
    }

    /// Continues the trace `traceparent` (from a message's `_meta`) names, if it is valid.
    fn adopt(&self, traceparent: &str) {
        let base = self.trace.as_ref().map_or_else(|| TraceContext::from_headers(&HeaderMap::new()), |(t, _)| *t);
        let Some(context) = base.adopting(traceparent) else { return };
        if self.adopted.set(context).is_ok()
            && let Some((_, facts)) = &self.trace
        {
            facts.lock().unwrap_or_else(|p| p.into_inner()).adopted = Some(context);
        }
    }

    /// The request's trace: the one `_meta` named, else the headers' (or the one started).
    fn trace_context(&self) -> Option<&TraceContext> {
        self.adopted.get().or(self.trace.as_ref().map(|(t, _)| t))
    }

    /// The scopes that would allow a request policy denied (see
    /// [`warden_core::authorize::Authorizer::step_up`]).
    fn step_up(
        &self,
        method: &str,
        target: Target<'_>,
        arguments: Option<&RawValue>,
        denied_by: &[String],
    ) -> Option<Vec<String>> {
        let granted_tools = self.verified.task.as_ref().map_or(&[][..], |t| &t.tools[..]);
        let facts = RequestFacts { source_ip: self.source_ip, now: self.now, granted_tools, arguments };
        self.applied.authorizer.step_up(&self.server, &self.verified, method, target, &facts, denied_by)
    }

    /// The `403 insufficient_scope` challenge naming every scope the request needs at once: the
    /// server's, the caller's own (a client asking again keeps them) and `needed`.
    fn insufficient_scope(&self, needed: &[String]) -> Response<Body> {
        let spec = self.applied.config.servers.get(&*self.server);
        let mut scopes: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let all = spec.map_or(&[][..], |s| &s.scopes[..]).iter().chain(&self.verified.scopes).chain(needed);
        for scope in all {
            // A token's scopes are the caller's text: only scope tokens go into the header.
            if warden_core::policy::is_scope_token(scope) && seen.insert(scope.as_str()) {
                scopes.push(scope.clone());
            }
        }
        reply::insufficient_scope(&self.route, &scopes)
    }

    /// Whether a call of `method` on `target` uses a definition other than the approved one
    /// (tool pinning under `enforce`), judged by the definition this gateway saw listed last.
    fn pinned(&self, method: &str, target: Target<'_>) -> Option<Refusal> {
        let pinned = self.pins.as_ref()?;
        let kind = DefinitionKind::used_by(method)?;
        let (Target::Tool(name) | Target::Prompt(name)) = target else { return None };
        let observed = pinned.observed.get(&pinned.server, kind, name);
        // A name past what is remembered may have been listed (and withheld): not judged on
        // its approval alone.
        if observed.is_none() && pinned.pins.mode == PinningMode::Enforce && pinned.observed.overflowed(&pinned.server)
        {
            return Some(Refusal::ToolNotApproved);
        }
        match pinned.pins.verdict(kind, name, observed.as_ref().map(|(digest, flagged)| (digest, *flagged))) {
            Verdict::Allowed => None,
            Verdict::Changed => Some(Refusal::ToolDefinitionChanged),
            Verdict::NotApproved => Some(Refusal::ToolNotApproved),
        }
    }

    /// Refuses this caller's request for what its body is (or is not): a decision, recorded
    /// with `reason` (an authenticated caller's malformed requests are as much on record as
    /// its denied ones).
    fn refuse_body(&self, headers: &HeaderMap, method: &str, refusal: Refusal, answer: Response<Body>) -> Refused {
        self.record(headers, method, None, false, Outcome::refused(refusal));
        Box::new(answer)
    }

    /// Records a decision about this caller's request (`arguments`: the call had some).
    fn record(&self, headers: &HeaderMap, method: &str, target: Option<Target<'_>>, arguments: bool, outcome: Outcome) {
        let Outcome { refusal, policies, shadow } = outcome;
        let (allowed, reason) = (refusal.is_none(), refusal.map_or("", Refusal::code));
        if let Some((_, facts)) = &self.trace {
            let named = target.map(|t| match t {
                Target::Server => ("server", ""),
                Target::Tool(n) => ("tool", n),
                Target::Resource(u) => ("resource", u),
                Target::Prompt(n) => ("prompt", n),
            });
            facts.lock().unwrap_or_else(|p| p.into_inner()).decided(method, named, allowed, reason);
        }
        let decision = Decision {
            server: &self.server,
            method,
            target,
            workload: Some(&self.verified),
            allowed,
            reason,
            policies: &policies,
            shadow: shadow.as_ref(),
            audit: self.audit,
            source_ip: self.source_ip,
            arguments,
            config_version: self.applied.version,
            policy_time: self.now,
        };
        record::record(&self.outbox, self.arrived, self.via, headers, self.trace_context(), decision);
    }
}

impl Allows for Decider {
    /// A list entry is shown when calling it without arguments would be allowed.
    fn allows(&self, method: &str, target: Target<'_>) -> bool {
        self.decide(method, target, None).refusal.is_none()
    }
}

async fn post(worker: &Worker, admitted: Admitted, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let refuse = |refusal: Refusal, answer: Response<Body>| {
        *admitted.decider.refuse_body(request.headers(), "POST", refusal, answer)
    };
    if let Err(answer) = json_content(request.headers()) {
        return refuse(Refusal::UnsupportedMediaType, *answer);
    }
    let limit = worker.shared.limits.max_body_bytes;
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return refuse(Refusal::BodyTooLarge, too_large(limit));
    }
    let (parts, body) = request.into_parts();
    let refuse = |refusal: Refusal, answer: Response<Body>| {
        *admitted.decider.refuse_body(&parts.headers, "POST", refusal, answer)
    };
    // A caller that sends its body slowly holds a connection and a buffer: bounded in time too.
    let read = tokio::time::timeout(worker.shared.limits.body_read_timeout, Limited::new(body, limit).collect());
    let bytes = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(Refusal::BodyTooLarge, too_large(limit));
        }
        Ok(Err(e)) => {
            return refuse(
                Refusal::BodyUnreadable,
                reply::error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
            );
        }
        Err(_) => {
            let answer = reply::error(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time");
            return refuse(Refusal::BodyTimeout, answer);
        }
    };
    let Decided { lists, permits } =
        match decide_body(&admitted.decider, &parts.headers, &bytes, worker.shared.limits.json) {
            Ok(decided) => decided,
            Err(refusal) => return *refusal,
        };
    let answer = forward(worker, &admitted, &parts, bytes, Some(lists)).await;
    if permits.is_empty() {
        return answer;
    }
    // In flight until the answer's body is sent in full or dropped (the caller went away).
    let (head, body) = answer.into_parts();
    let body = body.map_frame(move |frame| {
        let _held = &permits;
        frame
    });
    Response::from_parts(head, body.boxed_unsync())
}

/// The local check API's body step: the body Envoy buffered, checked and decided like the
/// gateway's. (List answers cannot be filtered there: Envoy does not show them to ext_authz.)
pub(crate) fn check_body(
    shared: &Shared,
    admitted: &Admitted,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Refused> {
    let decider = &admitted.decider;
    json_content(headers)
        .map_err(|answer| decider.refuse_body(headers, "POST", Refusal::UnsupportedMediaType, *answer))?;
    if body.len() > shared.limits.max_body_bytes {
        return Err(decider.refuse_body(
            headers,
            "POST",
            Refusal::BodyTooLarge,
            too_large(shared.limits.max_body_bytes),
        ));
    }
    // Envoy does not say when the answer is done: concurrency limits cannot be held here.
    decide_body(&admitted.decider, headers, body, shared.limits.json).map(drop)
}

fn json_content(headers: &HeaderMap) -> Result<(), Refused> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if json {
        Ok(())
    } else {
        Err(Box::new(reply::error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "MCP requests are application/json")))
    }
}

fn too_large(limit: usize) -> Response<Body> {
    let message = format!("the body exceeds {limit} bytes");
    reply::jsonrpc_error(StatusCode::PAYLOAD_TOO_LARGE, None, mcp::INVALID_REQUEST, &message)
}

/// Whether a call's arguments name anything (`{}` and `null` name nothing).
fn has_arguments(arguments: Option<&RawValue>) -> bool {
    arguments.is_some_and(|a| {
        let text = a.get().trim();
        text != "null" && text.strip_prefix('{').is_none_or(|rest| rest.trim_start() != "}")
    })
}

/// A body decided and allowed.
struct Decided {
    /// The list requests whose answers policy filters.
    lists: Vec<mcp::ListFilter>,
    /// The permits of the requests in flight, held until the answer is sent.
    permits: Vec<Permit>,
}

/// Checks the body and decides each message: what its answer needs, or the response that
/// refuses the request.
fn decide_body(decider: &Decider, headers: &HeaderMap, bytes: &[u8], limits: mcp::Limits) -> Result<Decided, Refused> {
    let body = match mcp::parse(bytes, limits) {
        Ok(b) => b,
        Err(e) => {
            let answer = reply::jsonrpc_error(StatusCode::BAD_REQUEST, None, e.code(), &e.to_string());
            return Err(decider.refuse_body(headers, "POST", Refusal::MalformedBody, answer));
        }
    };
    // A single message may carry its trace context in `_meta` instead of the headers.
    if !body.batch
        && !headers.contains_key("traceparent")
        && let Some(traceparent) = body.messages.first().and_then(|m| m.traceparent.as_deref())
    {
        decider.adopt(traceparent);
    }
    // Refusals of a body that parsed are recorded under its (first) method.
    let first = body.messages.first().and_then(|m| m.method.as_deref()).unwrap_or("POST");
    check_headers(&body, headers, decider)
        .map_err(|(reason, answer)| decider.refuse_body(headers, first, reason, *answer))?;
    // Limits before policy: a caller hammering what policy refuses is held to them too. The
    // requests in flight first, so that a body refused there uses up none of its rate.
    let permits = decider.in_flight(&body);
    let limited = match permits {
        Ok(_) => decider.rate_limit(&body).err(),
        Err(()) => Some(Duration::from_secs(1)),
    };
    if let Some(wait) = limited {
        let ids: Vec<Option<&RawValue>> = body.messages.iter().map(|m| m.id).collect();
        let answer = reply::rate_limited(&ids, body.batch, wait);
        return Err(decider.refuse_body(headers, first, Refusal::RateLimited, answer));
    }
    let permits = permits.unwrap_or_default();
    let mut denied = Vec::new();
    let mut lists = Vec::new();
    for (i, m) in body.messages.iter().enumerate() {
        let Some(method) = m.method.as_deref() else { continue };
        let (action, targets) = match mcp::decision(m) {
            Ok(mcp::Decision::Policy { action, targets }) => (action, targets),
            Ok(mcp::Decision::TokenOnly) => {
                // A method that names no target (initialize, ping, notifications): the token was enough.
                decider.record(headers, method, None, false, Outcome::default());
                continue;
            }
            Err(mcp::Undecidable::UnknownMethod) => {
                // Default deny: what a method the gateway does not know does upstream cannot be
                // known here (a case variant of a known one may well be served as that one).
                decider.record(headers, method, None, false, Outcome::refused(Refusal::UnknownMethod));
                denied.push((i, Refusal::UnknownMethod));
                continue;
            }
            Err(mcp::Undecidable::MissingName(message)) => {
                let answer = reply::jsonrpc_error(StatusCode::BAD_REQUEST, m.id, mcp::INVALID_PARAMS, message);
                return Err(decider.refuse_body(headers, first, Refusal::MissingName, answer));
            }
        };
        // Every target must be allowed (a subscription names several resources); each one is a
        // decision of its own.
        let mut refusal = None;
        for target in targets.iter() {
            let mut outcome = decider.decide(action, target, m.arguments);
            if outcome.refusal.is_none() {
                outcome.refusal = decider.pinned(action, target);
            }
            // Denied for want of a scope a policy names: the caller is told which, as MCP
            // clients expect, to step up its authorization (one request: a batch cannot be
            // answered for one of its messages with a status).
            if outcome.refusal == Some(Refusal::PolicyDenied)
                && !body.batch
                && targets.iter().count() == 1
                && let Some(needed) = decider.step_up(action, target, m.arguments, &outcome.policies)
            {
                outcome.refusal = Some(Refusal::InsufficientScope);
                decider.record(headers, action, Some(target), has_arguments(m.arguments), outcome);
                return Err(Box::new(decider.insufficient_scope(&needed)));
            }
            let refused = outcome.refusal;
            decider.record(headers, action, Some(target), has_arguments(m.arguments), outcome);
            if refused.is_some() {
                refusal = refused;
                break;
            }
        }
        if let Some(reason) = refusal {
            denied.push((i, reason));
        } else if let Some(filter) = mcp::list_filter(method)
            && !lists.contains(&filter)
        {
            lists.push(filter);
        }
    }
    if denied.is_empty() {
        return Ok(Decided { lists, permits });
    }
    // (Each denial is on record already, message by message.)
    Err(Box::new(denial(&body, &denied)))
}

/// The protocol version and the routing headers, checked against the body: the reason and the
/// answer that refuse it.
fn check_headers(body: &mcp::Body<'_>, headers: &HeaderMap, decider: &Decider) -> Result<(), (Refusal, Refused)> {
    let version = headers.get("mcp-protocol-version").map(|v| v.to_str().unwrap_or(""));
    if let Some(v) = version
        && !mcp::PROTOCOL_VERSIONS.contains(&v)
    {
        let message = format!("unsupported MCP-Protocol-Version; supported: {}", mcp::PROTOCOL_VERSIONS.join(", "));
        let answer = reply::jsonrpc_error(StatusCode::BAD_REQUEST, None, mcp::INVALID_REQUEST, &message);
        return Err((Refusal::UnsupportedProtocolVersion, Box::new(answer)));
    }
    // Proxies and servers may route on these headers while Warden decides on the body: each one
    // sent is checked, and must be sent once, whatever the revision (2026-07-28 requires them).
    let first_id = body.messages.first().and_then(|m| m.id);
    let mismatch = |message: &str| {
        let answer = reply::jsonrpc_error(StatusCode::BAD_REQUEST, first_id, mcp::HEADER_MISMATCH, message);
        Err((Refusal::RoutingHeaderMismatch, Box::new(answer)))
    };
    for name in ["mcp-method", "mcp-name", "mcp-protocol-version"] {
        if headers.get_all(name).iter().count() > 1 {
            return mismatch(&format!("{name} header appears more than once"));
        }
    }
    let required = version.is_some_and(|v| mcp::ROUTING_HEADER_VERSIONS.contains(&v));
    let (method_header, name_header) = (headers.get("mcp-method"), headers.get("mcp-name"));
    if required || method_header.is_some() || name_header.is_some() {
        if body.batch {
            return mismatch("batches cannot carry routing headers");
        }
        // A value that is not visible ASCII cannot equal the body's (such names are sent
        // base64-encoded), and another reader could decode its bytes as something else.
        let (method_header, name_header) =
            (method_header.map(HeaderValue::to_str).transpose(), name_header.map(HeaderValue::to_str).transpose());
        let (Ok(method_header), Ok(name_header)) = (method_header, name_header) else {
            return mismatch("routing headers must be visible ASCII");
        };
        if let Err(message) = mcp::check_routing_headers(&body.messages[0], method_header, name_header, required) {
            return mismatch(&message);
        }
    }
    // Arguments mirrored into `Mcp-Param-*` headers: each one sent says what the body says,
    // and under 2026-07-28 each one the tool declares is sent.
    let mut params = Vec::new();
    for (name, value) in headers {
        if name.as_str().starts_with(param_headers::PREFIX) {
            let Ok(value) = value.to_str() else { return mismatch(&format!("{name} header is not visible ASCII")) };
            params.push((name.as_str(), value));
        }
    }
    for (i, (name, _)) in params.iter().enumerate() {
        if params[..i].iter().any(|(other, _)| other == name) {
            return mismatch(&format!("{name} header appears more than once"));
        }
    }
    let call = match &body.messages[..] {
        [m] if m.method.as_deref() == Some("tools/call") => m.name.as_deref().map(|tool| (m, tool)),
        _ => None,
    };
    match call {
        Some((m, tool)) => {
            let declared = decider.declarations.get(&decider.server, tool);
            // Behind Envoy (ext_authz) no answer passes here, so no tool is ever seen listed:
            // what a tool declares is unknown, and only the server can check its headers.
            let unknowable = declared.is_none() && decider.via != VIA_GATEWAY;
            if !unknowable
                && let Err(message) = param_headers::check(declared.as_deref(), m.arguments, &params, required)
            {
                return mismatch(&message);
            }
        }
        None if !params.is_empty() => return mismatch("Mcp-Param headers are sent with tools/call alone"),
        None => {}
    }
    Ok(())
}

/// The answer to a body with `denied` messages (index, reason): the caller reads the same
/// reason code the decision record holds. A batch goes upstream whole or not at all, so each of
/// its requests gets an error.
fn denial(body: &mcp::Body<'_>, denied: &[(usize, Refusal)]) -> Response<Body> {
    let error = |m: &mcp::Message<'_>, message: &str, reason: &str| {
        let (code, message) = if reason == Refusal::UnknownMethod.code() {
            (mcp::METHOD_NOT_FOUND, "method not available through the gateway")
        } else if reason == Refusal::ToolDefinitionChanged.code() {
            (mcp::POLICY_DENIED, "its definition changed since it was approved: an operator must approve the new one")
        } else if reason == Refusal::ToolNotApproved.code() {
            (mcp::POLICY_DENIED, "its definition is not approved")
        } else {
            (mcp::POLICY_DENIED, message)
        };
        reply::jsonrpc_error_value(m.id, code, message, Some(serde_json::json!({"reason": reason})))
    };
    if !body.batch {
        let m = &body.messages[0];
        // A denied notification has no id to answer; the HTTP status carries the refusal.
        let status = if m.id.is_some() { StatusCode::OK } else { StatusCode::FORBIDDEN };
        return reply::json(status, &error(m, "denied by policy", denied[0].1.code()));
    }
    let answers: Vec<Value> = body
        .messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.id.is_some())
        .map(|(i, m)| match denied.iter().find(|(d, _)| *d == i) {
            Some((_, reason)) => error(m, "denied by policy", reason.code()),
            None => error(m, "not sent: another request in the batch was denied", "batch_denied"),
        })
        .collect();
    reply::json(StatusCode::OK, &Value::Array(answers))
}

/// Sends the decided request upstream and passes the answer on: the session id sealed to the
/// caller's workload, list answers filtered.
async fn forward(
    worker: &Worker,
    admitted: &Admitted,
    parts: &http::request::Parts,
    body: Bytes,
    lists: Option<Vec<mcp::ListFilter>>,
) -> Response<Body> {
    let decider = &admitted.decider;
    let spec: &McpServerSpec = match decider.applied.config.servers.get(&*decider.server) {
        Some(s) => s,
        None => return reply::error(StatusCode::NOT_FOUND, "the server is no longer configured"),
    };
    let response = match send_upstream(worker, admitted, spec, parts, body).await {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    let shared = &worker.shared;
    if let Some(session) = response.headers().get(MCP_SESSION_ID) {
        shared.sessions.bind(session.as_bytes(), admitted.principal, ended_task(spec, &decider.verified));
    }
    if parts.method == Method::DELETE
        && response.status().is_success()
        && let Some(session) = &admitted.session
        && let Some(task) = shared.sessions.end(session.as_bytes())
    {
        shared.end_task(task);
    }
    let (mut head, incoming) = response.into_parts();
    head.headers = proxy::forwardable(&head.headers);
    // The caller gets the id sealed to its workload, never the upstream's own.
    let opened =
        head.headers.get_all(MCP_SESSION_ID).iter().map(|s| shared.seal.seal(s.as_bytes(), &admitted.principal));
    let sealed: Option<Vec<Option<HeaderValue>>> =
        (head.headers.contains_key(MCP_SESSION_ID)).then(|| opened.collect());
    if let Some(sealed) = sealed {
        head.headers.remove(MCP_SESSION_ID);
        match &sealed[..] {
            [Some(one)] => {
                head.headers.insert(MCP_SESSION_ID, one.clone());
            }
            _ => {
                tracing::warn!(server = %decider.server, "the upstream answered with several or unusable session ids");
                return reply::error(StatusCode::BAD_GATEWAY, "the upstream's session id could not be passed on");
            }
        }
    }
    // Error answers are filtered too: a list in one would reach the caller all the same.
    // Under tool pinning every answer is read (JSON whole, SSE event by event): the upstream is
    // the party pinning guards against, and it could answer a list request pending on one
    // stream with a message on another (clients match answers by id, not by stream).
    let pinned = decider.pins.is_some();
    match lists.filter(|l| !l.is_empty() || pinned) {
        None => Response::from_parts(head, incoming.map_err(Into::into).boxed_unsync()),
        Some(kinds) => filter_answer(worker, decider, kinds, head, incoming).await,
    }
}

/// The body's next frame if it has already arrived, without waiting for it.
fn ready_frame(
    incoming: &mut hyper::body::Incoming,
) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
    use hyper::body::Body as _;
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(incoming).poll_frame(&mut context)
}

/// The upstream's answer (its status and headers) to the request as the proxy rewrites it,
/// within the response timeout.
async fn send_upstream(
    worker: &Worker,
    admitted: &Admitted,
    spec: &McpServerSpec,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<Response<hyper::body::Incoming>, Refused> {
    let decider = &admitted.decider;
    let bridge_headers = decider.applied.bridges.headers(&decider.server);
    let mut upstream =
        proxy::request(&spec.upstream, &parts.method, &parts.headers, body, &decider.verified, bridge_headers)
            .map_err(|e| Box::new(reply::error(StatusCode::BAD_GATEWAY, e)))?;
    if let Some(session) = &admitted.session {
        upstream.headers_mut().insert(MCP_SESSION_ID, session.clone());
    }
    // The upstream's parent span is this request's (W3C trace context), when spans are on.
    if decider.trace.is_some()
        && let Some(context) = decider.trace_context()
        && let Ok(value) = HeaderValue::from_str(&context.traceparent())
    {
        upstream.headers_mut().insert("traceparent", value);
    }
    let timeout = worker.shared.limits.upstream_response_timeout;
    match tokio::time::timeout(timeout, worker.client.request(upstream)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            tracing::warn!(server = %decider.server, "upstream: {e}");
            Err(Box::new(reply::error(StatusCode::BAD_GATEWAY, "the upstream MCP server did not answer")))
        }
        Err(_) => {
            tracing::warn!(server = %decider.server, "upstream: no answer within {timeout:?}");
            Err(Box::new(reply::error(StatusCode::GATEWAY_TIMEOUT, "the upstream MCP server did not answer in time")))
        }
    }
}

/// A list answer with what the caller may not see removed, or refused when it cannot be read
/// as the caller would read it (fail closed).
async fn filter_answer(
    worker: &Worker,
    decider: &Decider,
    kinds: Vec<mcp::ListFilter>,
    mut head: http::response::Parts,
    incoming: hyper::body::Incoming,
) -> Response<Body> {
    let unfiltered = |why: &str| {
        tracing::warn!(server = %decider.server, "the upstream's list answer {why}: refused");
        reply::error(StatusCode::BAD_GATEWAY, "the upstream's list answer could not be filtered")
    };
    // The filter must read the body as the caller will: as one media type, and as sent. (The
    // gateway asked for identity encoding; an upstream that compresses anyway is refused.)
    let mut types = head.headers.get_all(header::CONTENT_TYPE).iter();
    let named = match (types.next(), types.next()) {
        (Some(_), Some(_)) => return unfiltered("names two media types"),
        (one, _) => one.map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase()),
    };
    // No list was asked for (tool pinning reads every answer): one whose media type names
    // neither JSON nor an event stream anywhere — clients match the whole value by substring —
    // is not read as JSON-RPC by any client, and passes as it came.
    let unasked = kinds.is_empty();
    if unasked && named.as_deref().is_some_and(|m| !m.contains("json") && !m.contains("event-stream")) {
        return Response::from_parts(head, incoming.map_err(Into::into).boxed_unsync());
    }
    let media = named.unwrap_or_default();
    if head.headers.get_all(header::CONTENT_ENCODING).iter().any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity")) {
        return unfiltered("has a content coding");
    }
    head.headers.remove(header::CONTENT_ENCODING);
    head.headers.remove(header::CONTENT_LENGTH);
    let left = decider.verified.expires_at.saturating_sub(crate::identity::now_unix()).max(0);
    let lists = || {
        // A list an upstream put in an answer to something else is filtered like an asked one.
        let kinds = if unasked {
            ["tools/list", "prompts/list", "resources/list"].into_iter().filter_map(mcp::list_filter).collect()
        } else {
            kinds
        };
        Arc::new(Lists {
            kinds,
            allows: decider.clone(),
            ttl_cap_ms: left as u64 * 1000,
            pins: decider.pins.clone(),
            unasked,
            declarations: Some(ServerDeclarations {
                server: decider.server.clone(),
                store: decider.declarations.clone(),
            }),
        })
    };
    if media.split(';').next().is_some_and(|essence| essence.trim() == "text/event-stream") {
        return Response::from_parts(head, filter::sse(lists(), incoming));
    }
    use hyper::body::Body as _;
    let mut incoming = incoming;
    // Most answers arrive whole with their head: one already read is taken without arming a
    // timer or a collector (under tool pinning, every answer comes this way).
    let (first, ended) = match ready_frame(&mut incoming) {
        std::task::Poll::Ready(Some(Ok(frame))) => (Some(frame.into_data().unwrap_or_default()), false),
        std::task::Poll::Ready(Some(Err(e))) => return unfiltered(&format!("was not read: {e}")),
        // The body has ended: there is nothing to read.
        std::task::Poll::Ready(None) => (Some(Bytes::new()), true),
        std::task::Poll::Pending => (None, false),
    };
    if first.as_ref().is_some_and(|f| f.len() > filter::MAX_FILTERED_BYTES) {
        return unfiltered("is too large to filter");
    }
    let bytes = match first {
        Some(first) if ended || incoming.is_end_stream() => first,
        first => {
            let taken = first.as_ref().map_or(0, Bytes::len);
            let read = tokio::time::timeout(
                worker.shared.limits.body_read_timeout,
                Limited::new(incoming, filter::MAX_FILTERED_BYTES.saturating_sub(taken)).collect(),
            );
            match read.await {
                Ok(Ok(rest)) => match first {
                    Some(first) => [first, rest.to_bytes()].concat().into(),
                    None => rest.to_bytes(),
                },
                Ok(Err(e)) => return unfiltered(&format!("was not read: {e}")),
                Err(_) => {
                    tracing::warn!(server = %decider.server, "the upstream's list answer did not arrive in time");
                    return reply::error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the upstream's list answer did not arrive in time",
                    );
                }
            }
        }
    };
    // Nothing asked for a list and none can be in it (or there is nothing at all, as in a 202
    // to a notification): passed on as it came, unparsed and uncopied.
    if unasked && (bytes.is_empty() || !filter::may_hold_list(&bytes)) {
        return Response::from_parts(head, reply::full(bytes));
    }
    let lists = lists();
    match lists.json(&bytes) {
        Some(filtered) => Response::from_parts(head, reply::full(filtered)),
        // An error status keeps its meaning (a 404 tells the client its session is gone); only
        // the body the filter could not read is withheld.
        None if !head.status.is_success() => {
            head.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let body = serde_json::json!({"error": "the upstream's answer is withheld: it could not be filtered"});
            Response::from_parts(head, reply::full(body.to_string()))
        }
        None => unfiltered("is not JSON"),
    }
}

/// The task token to revoke when the session `verified` opens ends, if the server asks for it.
fn ended_task(spec: &McpServerSpec, verified: &Verified) -> Option<EndedTask> {
    if !spec.revoke_task_token_on_session_end || verified.task.is_none() {
        return None;
    }
    Some(EndedTask { issuer: verified.issuer.clone(), jti: verified.jti.clone()?, expires_unix: verified.expires_at })
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = reply::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// How the token was presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    /// `Authorization: Bearer` (RFC 6750).
    Bearer,
    /// `Authorization: DPoP` with a `DPoP` proof header (RFC 9449).
    Dpop,
}

/// The token of `Authorization` (RFC 6750 §2.1, RFC 9449 §7.1); the query form is refused
/// outright (the MCP authorization spec forbids it) and so is more than one `Authorization`.
fn credentials<'h>(headers: &'h HeaderMap, query: Option<&str>) -> Result<Option<(Scheme, &'h str)>, &'static str> {
    if query.is_some_and(|q| q.split('&').any(|p| p.starts_with("access_token="))) {
        return Err("tokens are accepted only in the Authorization header");
    }
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Authorization header");
    }
    let value = value.to_str().map_err(|_| "the Authorization header is not ASCII")?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Ok(None);
    };
    let token = token.trim();
    match scheme {
        _ if token.is_empty() => Ok(None),
        s if s.eq_ignore_ascii_case("bearer") => Ok(Some((Scheme::Bearer, token))),
        s if s.eq_ignore_ascii_case("dpop") => Ok(Some((Scheme::Dpop, token))),
        // Another scheme (Basic, …): as if no usable token was sent.
        _ => Ok(None),
    }
}

/// The `cnf.jkt` a verified token is bound to, if any (the verifier checked it against the
/// proof's key).
fn bound_key(verified: &Verified) -> Option<&str> {
    verified.claims.get("cnf")?.get("jkt")?.as_str()
}

/// How old a DPoP proof may be (seconds), and how far ahead of our clock.
/// The gateway's own front door, as `Caller::via` names it (the local check API is another).
pub(crate) const VIA_GATEWAY: &str = "gateway";
/// The MCP session header.
const MCP_SESSION_ID: http::HeaderName = http::HeaderName::from_static("mcp-session-id");

const PROOF_MAX_AGE: i64 = 60;
const PROOF_SKEW: i64 = 5;

/// Checks the DPoP proof sent with `token` (its `jti` is checked against replay once the token
/// is accepted).
fn dpop_proof(
    route: &Route,
    method: &Method,
    headers: &HeaderMap,
    token: &str,
    now: i64,
) -> Result<dpop::Proven, Refused> {
    let refuse = |why: &str| Box::new(reply::invalid_dpop_proof(route, why));
    let mut proofs = headers.get_all("dpop").iter();
    let (Some(proof), None) = (proofs.next(), proofs.next()) else {
        return Err(refuse("one DPoP header is required"));
    };
    let proof = proof.to_str().map_err(|_| refuse("malformed"))?;
    // Only the server's own URL: a Host header is the caller's to choose.
    let uris = [route.url.as_str()];
    let request = dpop::Request {
        method: method.as_str(),
        uris: &uris,
        access_token: Some(token),
        now,
        max_age: PROOF_MAX_AGE,
        skew: PROOF_SKEW,
    };
    dpop::verify(proof, &request).map_err(|e| Box::new(reply::invalid_dpop_proof(route, &e.to_string())))
}

/// The resource's own origin, localhost forms of it, and the configured ones.
fn origin_allowed(origin: &HeaderValue, route: &Route, spec: &McpServerSpec) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    origin == route.origin || spec.allowed_origins.iter().any(|o| o == origin)
}

/// Names the issuer of a token signed with a `kid` its keys lack, so the control plane can
/// refetch them. The claims are read unverified only to name the issuer: the control plane
/// rate-limits refreshes per issuer, so a forged token costs at most one early refresh.
fn ask_for_keys(shared: &super::Shared, applied: &Applied, token: &str) {
    use base64::Engine;
    let mut parts = token.split('.');
    let decode = |part: Option<&str>| -> Option<Value> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part?).ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let (Some(header), Some(claims)) = (decode(parts.next()), decode(parts.next())) else {
        return;
    };
    let (Some(kid), Some(iss)) = (header["kid"].as_str(), claims["iss"].as_str()) else {
        return;
    };
    if let Some((name, _)) = applied.config.issuers.iter().find(|(_, spec)| spec.issuer == iss) {
        // Full queue: a refresh is already on its way.
        let _ = shared.requests.key_refresh.try_send(KeyRefresh { issuer: name.clone(), kid: kid.to_string() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_token_comes_from_one_authorization_header_only() {
        let bearer = |t| Ok(Some((Scheme::Bearer, t)));
        assert_eq!(credentials(&headers(&[("authorization", "Bearer abc")]), None), bearer("abc"));
        assert_eq!(credentials(&headers(&[("authorization", "bearer  abc ")]), None), bearer("abc"));
        assert_eq!(credentials(&headers(&[("authorization", "DPoP abc")]), None), Ok(Some((Scheme::Dpop, "abc"))));
        assert_eq!(credentials(&headers(&[("authorization", "Basic dTpw")]), None), Ok(None));
        assert_eq!(credentials(&headers(&[("authorization", "Bearer ")]), None), Ok(None));
        assert_eq!(credentials(&headers(&[]), None), Ok(None));
        assert!(credentials(&headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]), None).is_err());
        assert!(credentials(&headers(&[]), Some("x=1&access_token=abc")).is_err());
    }
}
