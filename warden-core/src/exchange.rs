//! OAuth 2.0 Token Exchange (RFC 8693) at the control plane, the pure part: reading a request,
//! the errors RFC 6749 §5.2 and RFC 8693 §2.2.2 define, the lifetime a task token gets, and the
//! claims it carries. Verifying the presented tokens is [`token::Verifier::verify_for_exchange`];
//! authorizing the tools is the [`authorize::EXCHANGE_ACTION`] of the server's policies; signing
//! and serving are the control plane's.
//!
//! [`token::Verifier::verify_for_exchange`]: crate::token::Verifier::verify_for_exchange
//! [`authorize::EXCHANGE_ACTION`]: crate::authorize::EXCHANGE_ACTION

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::token::{Verified, task_claims};

/// `grant_type` of a token exchange.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Token type of JWT subject/actor tokens, and of the issued token.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Other token types accepted for subject and actor tokens (all must be JWTs).
pub const TOKEN_TYPES_ACCEPTED: [&str; 3] =
    [TOKEN_TYPE_JWT, "urn:ietf:params:oauth:token-type:access_token", "urn:ietf:params:oauth:token-type:id_token"];
/// The issued token's type (RFC 8693 §3); it is a JWT access token (RFC 9068).
pub const ISSUED_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `scope` values naming a tool: `tool:<name>`.
pub const TOOL_SCOPE_PREFIX: &str = "tool:";
/// The RFC 9396 `authorization_details` type requesting tools: `{"type": "mcp_tools",
/// "tools": ["..."]}`, optionally with `locations` naming the server's resource.
pub const AUTHORIZATION_DETAILS_TYPE: &str = "mcp_tools";
/// Most tools one task token can carry.
pub const MAX_TOOLS: usize = 64;
/// Longest request body read.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// An error response (RFC 6749 §5.2), answered with HTTP 400 (401 for `invalid_client`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct OAuthError {
    /// The `error` code.
    pub code: &'static str,
    /// `error_description`: says what to fix, never echoes a token.
    pub description: String,
}

impl OAuthError {
    fn new(code: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError { code, description: description.into() }
    }
    /// The request is missing a parameter, repeats one, or is otherwise malformed.
    pub fn invalid_request(description: impl Into<String>) -> OAuthError {
        OAuthError::new("invalid_request", description)
    }
    /// The subject or actor token is invalid (expired, revoked, untrusted, ...).
    pub fn invalid_grant(description: impl Into<String>) -> OAuthError {
        OAuthError::new("invalid_grant", description)
    }
    /// The `resource`/`audience` names no server tokens can be issued for.
    pub fn invalid_target(description: impl Into<String>) -> OAuthError {
        OAuthError::new("invalid_target", description)
    }
    /// A tool or scope requested is unknown or not allowed to this workload.
    pub fn invalid_scope(description: impl Into<String>) -> OAuthError {
        OAuthError::new("invalid_scope", description)
    }
    /// The service cannot issue tokens right now (no signing key published yet).
    pub fn temporarily_unavailable(description: impl Into<String>) -> OAuthError {
        OAuthError::new("temporarily_unavailable", description)
    }

    /// The JSON body of the error response.
    pub fn body(&self) -> Value {
        json!({ "error": self.code, "error_description": self.description })
    }
}

/// Which server the task token is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `resource`: the server's resource URI (RFC 8707).
    Resource(String),
    /// `audience`: the `McpServer`'s name.
    Audience(String),
}

/// A token exchange request, read and checked for shape (nothing verified yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeRequest {
    /// The workload's own identity token.
    pub subject_token: String,
    /// For delegation: the token of the party acting on the subject's behalf.
    pub actor_token: Option<String>,
    /// The server.
    pub target: Target,
    /// Tools requested (from `tool:` scopes and `authorization_details`), sorted, unique.
    pub tools: Vec<String>,
    /// Other scopes requested, sorted, unique.
    pub scopes: Vec<String>,
    /// Lifetime asked for, in seconds (`expires_in`); the service's default when absent.
    pub lifetime: Option<i64>,
    /// Whether tools were asked for as `authorization_details` (they are then echoed back).
    pub authorization_details: bool,
}

impl ExchangeRequest {
    /// Reads an `application/x-www-form-urlencoded` body.
    pub fn from_form(body: &[u8]) -> Result<ExchangeRequest, OAuthError> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(OAuthError::invalid_request(format!("the request is larger than {MAX_REQUEST_BYTES} bytes")));
        }
        let mut seen: Vec<(String, String)> = Vec::new();
        for (name, value) in url::form_urlencoded::parse(body) {
            // RFC 6749 §3.2: parameters must not be repeated.
            if seen.iter().any(|(n, _)| *n == name) {
                let error = if name == "resource" || name == "audience" {
                    OAuthError::invalid_target("a task token is for one server: give one resource or audience")
                } else {
                    OAuthError::invalid_request(format!("parameter {name} appears more than once"))
                };
                return Err(error);
            }
            seen.push((name.into_owned(), value.into_owned()));
        }
        let get = |name: &str| seen.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
        let required = |name: &str| get(name).ok_or_else(|| OAuthError::invalid_request(format!("{name} is missing")));

        match required("grant_type")? {
            GRANT_TYPE => {}
            other => {
                return Err(OAuthError::new(
                    "unsupported_grant_type",
                    format!("grant_type {other:?} is not supported; use {GRANT_TYPE}"),
                ));
            }
        }
        let subject_token = required("subject_token")?.to_string();
        check_token_type("subject_token_type", required("subject_token_type")?)?;
        let actor_token = get("actor_token").map(String::from);
        match (&actor_token, get("actor_token_type")) {
            (Some(_), Some(t)) => check_token_type("actor_token_type", t)?,
            (Some(_), None) => return Err(OAuthError::invalid_request("actor_token_type is missing")),
            (None, Some(_)) => return Err(OAuthError::invalid_request("actor_token_type given without actor_token")),
            (None, None) => {}
        }
        if let Some(t) = get("requested_token_type")
            && t != ISSUED_TOKEN_TYPE
            && t != TOKEN_TYPE_JWT
        {
            return Err(OAuthError::invalid_request(format!(
                "requested_token_type {t:?} cannot be issued; the service issues {ISSUED_TOKEN_TYPE}"
            )));
        }
        let target = match (get("resource"), get("audience")) {
            (Some(r), None) => Target::Resource(r.to_string()),
            (None, Some(a)) => Target::Audience(a.to_string()),
            (None, None) => return Err(OAuthError::invalid_request("resource (or audience) is missing")),
            (Some(_), Some(_)) => {
                return Err(OAuthError::invalid_target("give resource or audience, not both"));
            }
        };

        let mut tools = BTreeSet::new();
        let mut scopes = BTreeSet::new();
        for item in get("scope").unwrap_or("").split(' ').filter(|s| !s.is_empty()) {
            match item.strip_prefix(TOOL_SCOPE_PREFIX) {
                Some(tool) => tools.insert(check_tool(tool)?),
                None => scopes.insert(item.to_string()),
            };
        }
        let details = get("authorization_details");
        if let Some(text) = details {
            for tool in tools_from_details(text, &target)? {
                tools.insert(tool);
            }
        }
        if tools.is_empty() {
            return Err(OAuthError::invalid_scope(format!(
                "request at least one tool: scope=\"{TOOL_SCOPE_PREFIX}<name>\" or authorization_details of type {AUTHORIZATION_DETAILS_TYPE}"
            )));
        }
        if tools.len() > MAX_TOOLS {
            return Err(OAuthError::invalid_scope(format!("at most {MAX_TOOLS} tools per task token")));
        }
        let lifetime = match get("expires_in") {
            None => None,
            Some(text) => match text.parse::<i64>() {
                Ok(seconds) if seconds > 0 => Some(seconds),
                _ => return Err(OAuthError::invalid_request("expires_in must be a positive number of seconds")),
            },
        };
        Ok(ExchangeRequest {
            subject_token,
            actor_token,
            target,
            tools: tools.into_iter().collect(),
            scopes: scopes.into_iter().collect(),
            lifetime,
            authorization_details: details.is_some(),
        })
    }
}

fn check_token_type(parameter: &str, value: &str) -> Result<(), OAuthError> {
    if TOKEN_TYPES_ACCEPTED.contains(&value) {
        Ok(())
    } else {
        Err(OAuthError::invalid_request(format!("{parameter} {value:?} is not supported; tokens must be JWTs")))
    }
}

/// A tool name: what an MCP client would send as `params.name`, printable and short.
fn check_tool(name: &str) -> Result<String, OAuthError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(OAuthError::invalid_scope(format!("{name:?} is not a tool name")));
    }
    Ok(name.to_string())
}

/// Tools from RFC 9396 `authorization_details`: every entry must be of our type; `locations`,
/// when given, must name the requested resource.
fn tools_from_details(text: &str, target: &Target) -> Result<Vec<String>, OAuthError> {
    let invalid = |m: String| OAuthError::new("invalid_authorization_details", m);
    let value: Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("authorization_details is not JSON: {e}")))?;
    let entries = value.as_array().ok_or_else(|| invalid("authorization_details must be a JSON array".into()))?;
    let mut tools = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let kind = entry.get("type").and_then(Value::as_str);
        if kind != Some(AUTHORIZATION_DETAILS_TYPE) {
            return Err(invalid(format!("authorization_details[{i}]: type must be {AUTHORIZATION_DETAILS_TYPE:?}")));
        }
        if let Some(locations) = entry.get("locations") {
            let named = locations.as_array().is_some_and(|l| {
                l.iter().all(|loc| matches!((loc.as_str(), target), (Some(a), Target::Resource(r)) if a == r))
            });
            if !named {
                return Err(invalid(format!("authorization_details[{i}]: locations must name the resource requested")));
            }
        }
        let list = entry.get("tools").and_then(Value::as_array);
        let list = list.ok_or_else(|| invalid(format!("authorization_details[{i}]: tools must be an array")))?;
        for tool in list {
            let name =
                tool.as_str().ok_or_else(|| invalid(format!("authorization_details[{i}]: tool names are strings")))?;
            tools.push(check_tool(name)?);
        }
    }
    Ok(tools)
}

/// The lifetime of a task token, in seconds: what was asked for (or `default`), capped by the
/// issuer's and the server's maxima and by the subject token's own expiry (a task never
/// outlives the identity it was exchanged for).
pub fn lifetime(
    requested: Option<i64>,
    default: i64,
    maxima: impl IntoIterator<Item = i64>,
    subject_expires_at: i64,
    now: i64,
) -> Result<i64, OAuthError> {
    let capped = maxima.into_iter().fold(requested.unwrap_or(default), i64::min).min(subject_expires_at - now);
    if capped <= 0 {
        return Err(OAuthError::invalid_grant("the subject token expires now: exchange a fresh one"));
    }
    Ok(capped)
}

/// What the control plane proved about the client, bound into the task token (RFC 7800 `cnf`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Bearer: usable by whoever holds it.
    None,
    /// RFC 8705: SHA-256 thumbprint of the client certificate the exchange was made over.
    Certificate(String),
    /// RFC 9449: thumbprint of the key of the DPoP proof sent with the exchange.
    Dpop(String),
}

/// Everything a task token says.
pub struct TaskToken<'a> {
    /// `iss`: the token service's issuer URL.
    pub issuer: &'a str,
    /// The subject token's `iss` (the URL), carried as `subject_iss`.
    pub subject_issuer_url: &'a str,
    /// The verified subject token.
    pub subject: &'a Verified,
    /// The verified actor token and its `iss` URL, for delegation.
    pub actor: Option<(&'a Verified, &'a str)>,
    /// `aud`: the server's resource.
    pub audience: &'a str,
    /// Granted tools.
    pub tools: &'a [String],
    /// Granted scopes.
    pub scopes: &'a [String],
    /// `jti`.
    pub jti: &'a str,
    /// `iat`.
    pub issued_at: i64,
    /// Seconds it lives.
    pub lifetime: i64,
    /// Key binding.
    pub binding: &'a Binding,
}

/// Claims of the subject token a task token repeats, so policies on the workload hold for it.
const CARRIED_CLAIMS: [&str; 3] = ["tenant", "groups", "email"];

impl Binding {
    /// `bearer`, `mtls` or `dpop`, for records.
    pub fn kind(&self) -> &'static str {
        match self {
            Binding::None => "bearer",
            Binding::Certificate(_) => "mtls",
            Binding::Dpop(_) => "dpop",
        }
    }
}

impl TaskToken<'_> {
    /// The JWT claims set.
    pub fn claims(&self) -> Map<String, Value> {
        let mut claims = Map::new();
        claims.insert("iss".into(), self.issuer.into());
        claims.insert("sub".into(), self.subject.subject.clone().into());
        claims.insert("aud".into(), self.audience.into());
        claims.insert("iat".into(), self.issued_at.into());
        claims.insert("nbf".into(), self.issued_at.into());
        claims.insert("exp".into(), (self.issued_at + self.lifetime).into());
        claims.insert("jti".into(), self.jti.into());
        claims.insert(task_claims::SUBJECT_ISSUER.into(), self.subject_issuer_url.into());
        claims.insert(task_claims::TOOLS.into(), self.tools.iter().map(|t| Value::from(t.as_str())).collect());
        if let Some(hash) = &self.subject.jti_hash {
            claims.insert(task_claims::SUBJECT_JTI.into(), hash.clone().into());
        }
        if !self.scopes.is_empty() {
            claims.insert("scope".into(), self.scopes.join(" ").into());
        }
        for name in CARRIED_CLAIMS {
            if let Some(value) = self.subject.claims.get(name) {
                claims.insert(name.into(), value.clone());
            }
        }
        if let Some((actor, actor_issuer_url)) = self.actor {
            // RFC 8693 §4.1: the current actor, with the chain it already carried nested inside.
            let mut act = Map::new();
            act.insert("sub".into(), actor.subject.clone().into());
            act.insert("iss".into(), actor_issuer_url.into());
            if let Some(prior) = actor.claims.get("act") {
                act.insert("act".into(), prior.clone());
            }
            claims.insert("act".into(), Value::Object(act));
        }
        match self.binding {
            Binding::None => {}
            Binding::Certificate(thumbprint) => {
                claims.insert("cnf".into(), json!({ "x5t#S256": thumbprint }));
            }
            Binding::Dpop(thumbprint) => {
                claims.insert("cnf".into(), json!({ "jkt": thumbprint }));
            }
        }
        claims
    }
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
