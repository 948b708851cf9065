//! The just-in-time token service on its own HTTPS listener (`--token-listen`): token exchange
//! (RFC 8693) for short-lived task tokens, revocation (RFC 7009), authorization server metadata
//! (RFC 8414) and the JWKS of the keys it signs with.
//!
//! The service is the `TrustedIssuer` with `keys: {controlPlane: true}`: its `issuer` URL is the
//! `iss` of every task token, the audience subject tokens must name, and the base of every
//! endpoint URL. Subject and actor tokens are verified by the same compiled `Verifier` agents
//! use, against the same configuration version, and the tools asked for are put to the same
//! Cedar policies (action `token/exchange`, once per tool). No client secret exists: a client
//! may prove a key with DPoP (RFC 9449), and the task token is then bound to it.

use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use rand::RngCore;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use warden_core::Config;
use warden_core::authorize::{EXCHANGE_ACTION, RequestFacts, Target as PolicyTarget};
use warden_core::dpop::ReplayCache;
use warden_core::exchange::{self, Binding, ExchangeRequest, OAuthError, Target, TaskToken};
use warden_core::issuer::TrustedIssuerSpec;
use warden_core::token::Presenter;

use warden_tasks::Shutdown;

use crate::configuration::Configuration;
use crate::configuration::compiled::Compiled;
use crate::http_listener::{self, Peer};
use crate::telemetry::exchange_log::{self, ExchangeLog};
use crate::tokens::Tokens;
use crate::tokens::signing::Signer;

/// Default lifetime of a task token when the request names none.
pub const DEFAULT_LIFETIME_SECONDS: i64 = 300;
/// DPoP proofs remembered against replay (each is fresh for a minute), and at most by one key:
/// only holders of a valid subject token get this far, and none can take all the room.
const DPOP_PROOFS_REMEMBERED: usize = 65_536;
const DPOP_PROOFS_PER_KEY: usize = 4_096;
/// How old a DPoP proof may be, and how far ahead of our clock, in seconds.
const DPOP_MAX_AGE: i64 = 60;
const DPOP_SKEW: i64 = 5;

/// What the token service shares between requests.
pub struct TokenService {
    configuration: Arc<Configuration>,
    tokens: Arc<Tokens>,
    exchange_log: ExchangeLog,
    replay: Mutex<ReplayCache>,
}

impl TokenService {
    /// The service minting from `configuration` with the keys of `tokens`, logging each exchange.
    pub fn new(configuration: Arc<Configuration>, tokens: Arc<Tokens>, exchange_log: ExchangeLog) -> TokenService {
        TokenService {
            configuration,
            tokens,
            exchange_log,
            replay: Mutex::new(ReplayCache::with_key_quota(DPOP_PROOFS_REMEMBERED, DPOP_PROOFS_PER_KEY)),
        }
    }

    /// The current configuration, compiled (shared with the rest of the control plane).
    fn compiled(&self) -> Result<Arc<Compiled>, OAuthError> {
        self.configuration.compiled().map_err(|e| {
            tracing::error!(version = self.configuration.version(), "the stored configuration does not compile: {e}");
            OAuthError::temporarily_unavailable("the configuration cannot be read; try again")
        })
    }
}

/// The token service issuer of `config`: name, spec.
fn service_issuer(config: &Config) -> Result<(&str, &TrustedIssuerSpec), OAuthError> {
    config.control_plane_issuer().ok_or_else(|| {
        OAuthError::temporarily_unavailable(
            "the token service is not configured: apply a TrustedIssuer with keys: {controlPlane: true}",
        )
    })
}

fn now() -> i64 {
    crate::now_unix_ms() / 1000
}

fn oauth_error(error: &OAuthError) -> Response {
    let status = match error.code {
        "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "invalid_client" => StatusCode::UNAUTHORIZED,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut response = (status, axum::Json(error.body())).into_response();
    no_store(response.headers_mut());
    response
}

/// RFC 6749 §5.1: token responses must not be cached.
fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

async fn token(
    State(service): State<Arc<TokenService>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let (answer, record) = exchange(&service, &peer, &headers, &body);
    if let Some(mut record) = record {
        record.latency = started.elapsed();
        service.exchange_log.record(record, peer.address.ip());
    }
    match answer {
        Ok(response) => {
            let mut response = axum::Json(response).into_response();
            no_store(response.headers_mut());
            response
        }
        Err(error) => oauth_error(&error),
    }
}

/// A refusal, with the exchange record once the request could be read (boxed: refusals are
/// the rare path and the record is large).
type Refusal = Box<(OAuthError, Option<exchange_log::Exchange>)>;

/// One token exchange: the answer, and the record of what was decided (absent only when the
/// request was not a token exchange form at all).
fn exchange(
    service: &TokenService,
    peer: &Peer,
    headers: &HeaderMap,
    body: &[u8],
) -> (Result<Value, OAuthError>, Option<exchange_log::Exchange>) {
    match decide(service, peer, headers, body) {
        Ok((response, record)) => (Ok(response), Some(record)),
        Err(refusal) => {
            let (error, record) = *refusal;
            (Err(error), record)
        }
    }
}

/// Why a step refused: the answer, and the reason code it is recorded under.
type Refused = (OAuthError, &'static str);

/// Every check in order; the first failure answers. Once the form is read, every refusal is
/// recorded — an exchange tried with a stolen, expired or forged token is what an operator
/// most needs to see — naming the workload only once its token verified.
///
/// The steps: read the form → the service's configuration and signing key → the target server
/// → the key the token will be bound to → the subject (and actor) token → what may be granted
/// → the lifetime → mint.
fn decide(
    service: &TokenService,
    peer: &Peer,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Value, exchange_log::Exchange), Refusal> {
    let form = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !form.starts_with("application/x-www-form-urlencoded") {
        return Err(Box::new((
            OAuthError::invalid_request("send the request as application/x-www-form-urlencoded"),
            None,
        )));
    }
    let request = ExchangeRequest::from_form(body).map_err(|e| Box::new((e, None)))?;
    // What is known so far, recorded with any refusal from here on.
    let mut partial = exchange_log::Exchange { tools: request.tools.clone(), ..Default::default() };
    let refused = |partial: &exchange_log::Exchange, (error, reason): Refused| -> Refusal {
        let record = exchange_log::Exchange { reason: reason.to_string(), ..partial.clone() };
        Box::new((error, Some(record)))
    };
    let compiled = service.compiled().map_err(|e| refused(&partial, (e, "unavailable")))?;
    let (issuer_name, issuer) = service_issuer(&compiled.config).map_err(|e| refused(&partial, (e, "unavailable")))?;
    let signer = service.tokens.signing_keys().active().ok_or_else(|| {
        let error =
            OAuthError::temporarily_unavailable("the signing key is still being published to the fleet; retry shortly");
        refused(&partial, (error, "unavailable"))
    })?;
    let now = now();

    // The target server, before the tokens: an unknown server is the caller's mistake whoever
    // they are.
    let (server_name, server) = match &request.target {
        Target::Resource(r) => compiled.config.servers.iter().find(|(_, s)| s.resource == *r),
        Target::Audience(a) => compiled.config.servers.get_key_value(a),
    }
    .ok_or_else(|| {
        let error = OAuthError::invalid_target("no McpServer has this resource (or name)");
        refused(&partial, (error, "unknown_server"))
    })?;
    partial.server = server_name.to_string();

    let (binding, proof) = key_binding(headers, peer, issuer, now).map_err(|r| refused(&partial, r))?;
    partial.binding = binding.kind();
    let presenter = Presenter {
        client_certificate: peer.certificate.as_deref(),
        dpop_key_thumbprint: match &binding {
            Binding::Dpop(jkt) => Some(jkt.as_str()),
            _ => None,
        },
    };
    let revoked = &service.configuration.current().revoked.clone();
    let subject = compiled
        .verifier
        .verify_for_exchange(&request.subject_token, &issuer.issuer, now, revoked, presenter)
        .map_err(|reason| {
            let error = OAuthError::invalid_grant(format!("subject_token refused: {reason}"));
            refused(&partial, (error, reason.code()))
        })?;
    partial.subject = subject.subject.clone();
    partial.issuer = subject.issuer.clone();
    if let Some(proven) = &proof {
        service
            .replay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(proven, now, DPOP_MAX_AGE + DPOP_SKEW)
            .map_err(|e| refused(&partial, (invalid_dpop(&e.to_string()), "dpop_replayed")))?;
    }
    let actor = match &request.actor_token {
        None => None,
        Some(token) => {
            let actor = compiled
                .verifier
                .verify_for_exchange(token, &issuer.issuer, now, revoked, Presenter::default())
                .map_err(|reason| {
                    let error = OAuthError::invalid_grant(format!("actor_token refused: {reason}"));
                    refused(&partial, (error, "actor_refused"))
                })?;
            let url = compiled.config.issuers.get(&actor.issuer).map(|s| s.issuer.clone()).unwrap_or_default();
            Some((actor, url))
        }
    };
    partial.actor = actor.as_ref().map(|(a, _)| format!("{}/{}", a.issuer, a.subject)).unwrap_or_default();

    let grant = Grant { compiled: &compiled, issuer_name, server_name, server, request: &request };
    let facts = RequestFacts { source_ip: peer.address.ip(), now, granted_tools: &request.tools, arguments: None };
    let scopes = grant.check(&subject, actor.as_ref().map(|(a, _)| &**a), &facts).map_err(|r| refused(&partial, r))?;
    let maxima = [issuer.max_token_lifetime.0.as_secs() as i64, signer.tokens_expire_by - now]
        .into_iter()
        .chain(server.max_task_token_lifetime.map(|d| d.0.as_secs() as i64));
    let lifetime = exchange::lifetime(request.lifetime, DEFAULT_LIFETIME_SECONDS, maxima, subject.expires_at, now)
        .map_err(|e| refused(&partial, (e, "subject_expiring")))?;

    let minted = Mint { issuer, issuer_name, server, request: &request, scopes: &scopes, binding: &binding };
    let subject_issuer_url = compiled.config.issuers.get(&subject.issuer).map(|s| s.issuer.as_str()).unwrap_or("");
    let actor = actor.as_ref().map(|(v, url)| (&**v, url.as_str()));
    let (response, jti_hash) = minted.sign(&signer, &subject, subject_issuer_url, actor, now, lifetime);
    tracing::debug!(server = %server_name, subject = %subject.subject, tools = ?request.tools, lifetime, "task token issued");
    let record = exchange_log::Exchange { allowed: true, lifetime_seconds: lifetime, jti_hash, ..partial };
    Ok((response, record))
}

/// Proof of a key, when the client offers one: the task token is then bound to it — to the DPoP
/// key when a proof is sent, else to the TLS client certificate when one was presented. The
/// proof's `jti` is remembered against replay by the caller, only once the subject token
/// verified, so nobody without a valid identity can fill the replay cache.
fn key_binding(
    headers: &HeaderMap,
    peer: &Peer,
    issuer: &TrustedIssuerSpec,
    now: i64,
) -> Result<(Binding, Option<warden_core::dpop::Proven>), Refused> {
    let Some(proof) = headers.get("dpop") else {
        return Ok(match &peer.certificate {
            Some(der) => (Binding::Certificate(warden_core::token::certificate_thumbprint(der)), None),
            None => (Binding::None, None),
        });
    };
    let proof = proof.to_str().map_err(|_| (invalid_dpop("malformed"), "dpop_invalid"))?;
    let token_endpoint = format!("{}/token", issuer.issuer.trim_end_matches('/'));
    let uris = [token_endpoint.as_str()];
    let request = warden_core::dpop::Request {
        method: "POST",
        uris: &uris,
        access_token: None,
        now,
        max_age: DPOP_MAX_AGE,
        skew: DPOP_SKEW,
    };
    let proven =
        warden_core::dpop::verify(proof, &request).map_err(|e| (invalid_dpop(&e.to_string()), "dpop_invalid"))?;
    Ok((Binding::Dpop(proven.jkt.clone()), Some(proven)))
}

/// What one exchange asks of one server, checked against what its verified tokens may have.
struct Grant<'a> {
    compiled: &'a Compiled,
    /// The token service issuer's name.
    issuer_name: &'a str,
    server_name: &'a str,
    server: &'a warden_core::server::McpServerSpec,
    request: &'a ExchangeRequest,
}

impl Grant<'_> {
    /// The scopes to grant, once the server takes task tokens, every scope and tool asked for
    /// is within what the subject token carries and policy allows it, and (with an actor) what
    /// policy allows the actor too.
    fn check(
        &self,
        subject: &warden_core::token::Verified,
        actor: Option<&warden_core::token::Verified>,
        facts: &RequestFacts<'_>,
    ) -> Result<Vec<String>, Refused> {
        let (server_name, server, request) = (self.server_name, self.server, self.request);
        if !server.issuers.iter().any(|i| i == self.issuer_name) {
            let error = OAuthError::invalid_target(format!(
                "McpServer {server_name} does not accept task tokens: add {} to its issuers",
                self.issuer_name
            ));
            return Err((error, "server_refuses_task_tokens"));
        }
        // A task token only ever narrows what its subject token already grants: each scope
        // asked for must be one of the server's and one the subject token carries, and the
        // server's required scopes must all be in the subject token (else the exchange would
        // mint access the workload never had).
        if let Some(scope) = request.scopes.iter().find(|s| !server.scopes.contains(s)) {
            let error =
                OAuthError::invalid_scope(format!("scope {scope:?} is not one of McpServer {server_name}'s scopes"));
            return Err((error, "unknown_scope"));
        }
        if let Some(scope) = server.scopes.iter().find(|s| !subject.scopes.contains(s)) {
            let error = OAuthError::invalid_scope(format!(
                "McpServer {server_name} requires scope {scope:?}, which the subject token does not carry"
            ));
            return Err((error, "insufficient_scope"));
        }
        let denied = self.denied_tools(subject, facts);
        if !denied.is_empty() {
            let error = OAuthError::invalid_scope(format!(
                "policy does not allow this workload the tools: {}",
                denied.join(", ")
            ));
            return Err((error, "policy_denied"));
        }
        // Delegation narrows too: an actor becomes `act` only for tools policy allows the actor
        // itself to be granted (the task token is then no more than either could get alone).
        if let Some(actor) = actor {
            let denied = self.denied_tools(actor, facts);
            if !denied.is_empty() {
                let error = OAuthError::invalid_grant(format!(
                    "actor_token: policy does not allow the actor the tools: {}",
                    denied.join(", ")
                ));
                return Err((error, "actor_policy_denied"));
            }
        }
        Ok(request.scopes.iter().filter(|s| subject.scopes.contains(s)).cloned().collect())
    }

    /// The tools asked for that policy does not allow `principal` to be granted.
    fn denied_tools(&self, principal: &warden_core::token::Verified, facts: &RequestFacts<'_>) -> Vec<&str> {
        self.request
            .tools
            .iter()
            .filter(|tool| {
                !self
                    .compiled
                    .authorizer
                    .authorize(self.server_name, principal, EXCHANGE_ACTION, PolicyTarget::Tool(tool), facts)
                    .is_ok_and(|o| o.allowed)
            })
            .map(String::as_str)
            .collect()
    }
}

/// A task token about to be signed: what was granted, for whom, bound to what.
struct Mint<'a> {
    issuer: &'a TrustedIssuerSpec,
    issuer_name: &'a str,
    server: &'a warden_core::server::McpServerSpec,
    request: &'a ExchangeRequest,
    scopes: &'a [String],
    binding: &'a Binding,
}

impl Mint<'_> {
    /// Signs the task token with a fresh `jti`: the RFC 8693 answer, and the hash of the `jti`
    /// for the record.
    fn sign(
        &self,
        signer: &Signer,
        subject: &warden_core::token::Verified,
        subject_issuer_url: &str,
        actor: Option<(&warden_core::token::Verified, &str)>,
        now: i64,
        lifetime: i64,
    ) -> (Value, String) {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let jti = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
        let task = TaskToken {
            issuer: &self.issuer.issuer,
            subject_issuer_url,
            subject,
            actor,
            audience: &self.server.resource,
            tools: &self.request.tools,
            scopes: self.scopes,
            jti: &jti,
            issued_at: now,
            lifetime,
            binding: self.binding,
        };
        let access_token = signer.sign(&task.claims());
        let response =
            token_response(access_token, self.request, self.scopes, self.binding, lifetime, &self.server.resource);
        (response, warden_core::token::jti_hash(self.issuer_name, &jti))
    }
}

/// The RFC 8693 answer carrying `access_token`.
fn token_response(
    access_token: String,
    request: &ExchangeRequest,
    scopes: &[String],
    binding: &Binding,
    lifetime: i64,
    resource: &str,
) -> Value {
    // RFC 8693 §2.2.1: `scope` says what was granted, which may be less than was asked for.
    let granted: Vec<String> = request
        .tools
        .iter()
        .map(|t| format!("{}{t}", exchange::TOOL_SCOPE_PREFIX))
        .chain(scopes.iter().cloned())
        .collect();
    let mut response = json!({
        "access_token": access_token,
        "issued_token_type": exchange::ISSUED_TOKEN_TYPE,
        "token_type": if matches!(binding, Binding::Dpop(_)) { "DPoP" } else { "Bearer" },
        "expires_in": lifetime,
        "scope": granted.join(" "),
    });
    if request.authorization_details {
        response["authorization_details"] = json!([{
            "type": exchange::AUTHORIZATION_DETAILS_TYPE,
            "locations": [resource],
            "tools": request.tools,
        }]);
    }
    response
}

fn invalid_dpop(code: &str) -> OAuthError {
    OAuthError { code: "invalid_dpop_proof", description: format!("the DPoP proof was refused: {code}") }
}

/// RFC 7009: whoever holds a token may revoke it. The answer is 200 whatever the token was
/// (an unknown or invalid token is not an error, §2.2); a valid token with a `jti` becomes a
/// `Revocation` that every agent receives, and that is deleted once the token has expired.
async fn revoke(State(service): State<Arc<TokenService>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !form.starts_with("application/x-www-form-urlencoded") {
        return oauth_error(&OAuthError::invalid_request("send the request as application/x-www-form-urlencoded"));
    }
    if body.len() > exchange::MAX_REQUEST_BYTES {
        return oauth_error(&OAuthError::invalid_request("the request is too large"));
    }
    let token: Vec<String> =
        url::form_urlencoded::parse(&body).filter(|(k, _)| k == "token").map(|(_, v)| v.into_owned()).collect();
    let [token] = &token[..] else {
        return oauth_error(&OAuthError::invalid_request("give exactly one token"));
    };
    let compiled = match service.compiled() {
        Ok(c) => c,
        Err(e) => return oauth_error(&e),
    };
    let now = now();
    if let Some(revocable) = compiled.verifier.revocable(token, now)
        && let Some(spec) = compiled.config.issuers.get(&revocable.issuer)
    {
        let principal = format!("{}/{}", revocable.issuer, revocable.subject);
        if let Err(wait) = service.tokens.revoker().take(&principal) {
            let error = OAuthError::temporarily_unavailable("too many revocations from this holder; retry later");
            let mut response = oauth_error(&error);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return response;
        }
        let document = match crate::tokens::revocations::token_revocation(
            &revocable.issuer,
            spec,
            &revocable.jti,
            revocable.expires_at,
            now,
        ) {
            Ok(d) => d,
            Err(e) => {
                // A jti too long for a revocation: nothing the holder can fix, nothing revoked.
                tracing::warn!("a presented token cannot be revoked: {e}");
                return oauth_error(&OAuthError::invalid_request(format!("this token cannot be revoked: {e}")));
            }
        };
        match service.tokens.revoker().apply(vec![document], "token-service", "revoke").await {
            Ok((version, _)) => tracing::info!(
                issuer = %revocable.issuer,
                jti_hash = %warden_core::token::jti_hash(&revocable.issuer, &revocable.jti),
                version,
                "token revoked by its holder"
            ),
            Err(e) => {
                tracing::error!("storing a revocation failed: {e}");
                return oauth_error(&OAuthError::temporarily_unavailable("the revocation could not be stored; retry"));
            }
        }
    }
    let mut response = StatusCode::OK.into_response();
    no_store(response.headers_mut());
    response
}

/// RFC 8414 metadata; the issuer has no path (admission checks), so root and path-inserted
/// locations coincide.
async fn metadata(State(service): State<Arc<TokenService>>) -> Response {
    let compiled = match service.compiled() {
        Ok(c) => c,
        Err(e) => return oauth_error(&e),
    };
    let Ok((_, issuer)) = service_issuer(&compiled.config) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let base = issuer.issuer.trim_end_matches('/');
    axum::Json(json!({
        "issuer": issuer.issuer,
        "token_endpoint": format!("{base}/token"),
        "revocation_endpoint": format!("{base}/revoke"),
        "jwks_uri": format!("{base}/jwks.json"),
        "grant_types_supported": [exchange::GRANT_TYPE],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "dpop_signing_alg_values_supported": warden_core::dpop::ALGORITHMS,
        "tls_client_certificate_bound_access_tokens": true,
        "authorization_details_types_supported": [exchange::AUTHORIZATION_DETAILS_TYPE],
        "scopes_supported": [format!("{}<tool>", exchange::TOOL_SCOPE_PREFIX)],
    }))
    .into_response()
}

/// The public keys task tokens are signed with (as agents receive them).
async fn jwks(State(service): State<Arc<TokenService>>) -> Response {
    let state = service.configuration.current();
    let keys = state
        .token_service_issuer()
        .and_then(|(name, _, _)| state.keys.get(name))
        .map_or_else(|| json!({ "keys": [] }), |r| r.jwks.clone());
    let mut response = axum::Json(keys).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
    response
}

/// Serves the token service on `listener` with `tls` until shutdown.
pub async fn serve(service: TokenService, listener: TcpListener, tls: Arc<rustls::ServerConfig>, stop: Shutdown) {
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, "token service listening");
    let service = Arc::new(service);
    let app = axum::Router::new()
        .route("/token", post(token))
        .route("/revoke", post(revoke))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/jwks.json", get(jwks))
        .layer(axum::extract::DefaultBodyLimit::max(exchange::MAX_REQUEST_BYTES))
        .with_state(service);
    http_listener::serve(app, listener, Some(tls), http_listener::Limits::default(), stop).await;
}
