//! `McpServer`: an MCP server behind Warden agents, named by its resource identifier.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::validation::{DocumentError, validate_name};

/// How a token must be bound to its presenter on this server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Binding {
    /// Bearer tokens are accepted.
    #[default]
    None,
    /// Certificate-bound tokens (`cnf.x5t#S256`, RFC 8705) over mTLS.
    Mtls,
    /// DPoP-bound tokens (RFC 9449).
    Dpop,
}

/// Which agents serve a server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentSelector {
    /// Agents whose labels include all of these; empty selects every agent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

impl AgentSelector {
    /// Whether an agent with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// `spec` of an `McpServer`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct McpServerSpec {
    /// The server's resource identifier (RFC 8707): the audience tokens must name.
    pub resource: String,
    /// Names of the `TrustedIssuer`s whose tokens this server accepts.
    pub issuers: Vec<String>,
    /// Where the agent forwards allowed requests (http or https URL).
    pub upstream: String,
    /// Where the agent's gateway listens for this server, e.g. `127.0.0.1:8443`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Which agents serve this server.
    #[serde(default)]
    pub agents: AgentSelector,
    /// Token binding required of callers.
    #[serde(default)]
    pub binding: Binding,
    /// Scopes every token must carry for this server; a token without one is answered 403
    /// `insufficient_scope`. Also advertised as `scopes_supported` in the resource metadata.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Browser origins allowed to call the server besides the resource's own (requests from any
    /// other `Origin` are refused, against DNS rebinding).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Longest lifetime of a task token for this server from token exchange (default: the
    /// control plane issuer's `maxTokenLifetime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_task_token_lifetime: Option<HumanDuration>,
    /// When the MCP session a task token opened is closed (`DELETE`), the agent refuses that
    /// token from then on and asks the control plane to revoke it across the fleet: one task,
    /// one session. Off by default, since a client may open several sessions with one token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoke_task_token_on_session_end: bool,
    /// `enforce` (the default), or `audit`: until `auditUntil`, every request is forwarded as it
    /// came — its credentials included, for the server's own handling — and recorded with the
    /// decision Warden would have made.
    #[serde(default, skip_serializing_if = "Enforcement::is_enforce")]
    pub enforcement: Enforcement,
    /// When audit mode ends (RFC 3339); required with `enforcement: audit`. From then on the
    /// server is enforced, whatever `enforcement` says: an audit never outlives its date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_until: Option<String>,
    /// Requests each caller may make (token buckets kept by each agent): past one, a request is
    /// answered `429` with `Retry-After` and recorded as `rate_limited`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<crate::rate_limit::RateLimit>,
    /// Requests each caller may have in flight at once (counted by each agent): past one, a
    /// request is answered `429` with `Retry-After: 1` and recorded as `rate_limited`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concurrency_limits: Vec<crate::rate_limit::ConcurrencyLimit>,
    /// Whether agents record the definitions this server lists (tools, prompts, resource
    /// templates) and, under `enforce`, withhold one that differs from its `ToolApproval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_pinning: Option<crate::pinning::ToolPinning>,
}

/// Whether Warden decides a server's requests or only records what it would decide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Requests are decided.
    #[default]
    Enforce,
    /// Requests are forwarded as they came and recorded with the decision Warden would make.
    Audit,
}

impl Enforcement {
    fn is_enforce(&self) -> bool {
        *self == Enforcement::Enforce
    }
}

/// The unix time of an RFC 3339 text.
fn unix_time(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok().map(|t| t.unix_timestamp())
}

impl McpServerSpec {
    /// Whether the server is in audit mode at unix time `now`: `enforcement: audit` and its
    /// `auditUntil` still ahead.
    pub fn in_audit(&self, now: i64) -> bool {
        self.enforcement == Enforcement::Audit
            && self.audit_until.as_deref().and_then(unix_time).is_some_and(|until| now < until)
    }

    pub(crate) fn validate(&self) -> Result<(), DocumentError> {
        let resource = url::Url::parse(&self.resource).map_err(|e| {
            DocumentError::field("spec.resource", format!("{:?} is not an absolute URI: {e}", self.resource))
        })?;
        if resource.fragment().is_some() {
            return Err(DocumentError::field("spec.resource", "must not have a fragment (RFC 8707)"));
        }
        match self.binding {
            Binding::Mtls if resource.scheme() != "https" => {
                return Err(DocumentError::field(
                    "spec.binding",
                    "mtls needs an https resource: callers present their certificate to the gateway over TLS",
                ));
            }
            _ => {}
        }
        match (self.enforcement, &self.audit_until) {
            (Enforcement::Audit, None) => {
                return Err(DocumentError::field("spec.auditUntil", "is required with enforcement: audit"));
            }
            (Enforcement::Enforce, Some(_)) => {
                return Err(DocumentError::field("spec.auditUntil", "applies only with enforcement: audit"));
            }
            (_, Some(until)) if unix_time(until).is_none() => {
                return Err(DocumentError::field(
                    "spec.auditUntil",
                    format!("{until:?} is not an RFC 3339 time like 2026-12-31T00:00:00Z"),
                ));
            }
            _ => {}
        }
        if self.max_task_token_lifetime.is_some_and(|d| d.0.is_zero()) {
            return Err(DocumentError::field("spec.maxTaskTokenLifetime", "must be more than 0s"));
        }
        if self.issuers.is_empty() {
            return Err(DocumentError::field("spec.issuers", "name at least one TrustedIssuer"));
        }
        for (i, name) in self.issuers.iter().enumerate() {
            validate_name(name).map_err(|m| DocumentError::field(format!("spec.issuers[{i}]"), m))?;
        }
        let upstream = url::Url::parse(&self.upstream)
            .map_err(|e| DocumentError::field("spec.upstream", format!("{:?} is not a URL: {e}", self.upstream)))?;
        if !matches!(upstream.scheme(), "http" | "https") || upstream.host().is_none() {
            return Err(DocumentError::field("spec.upstream", "must be an http or https URL with a host"));
        }
        crate::validation::validate_scopes("spec.scopes", &self.scopes)?;
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let parsed = url::Url::parse(origin)
                .ok()
                .filter(|u| u.origin().is_tuple() && u.path() == "/" && u.query().is_none());
            if parsed.is_none() || origin.ends_with('/') {
                return Err(DocumentError::field(
                    format!("spec.allowedOrigins[{i}]"),
                    format!("{origin:?} is not an origin like https://app.example.com"),
                ));
            }
        }
        if self.rate_limits.len() > crate::rate_limit::MAX_RATE_LIMITS {
            return Err(DocumentError::field(
                "spec.rateLimits",
                format!("at most {} per server", crate::rate_limit::MAX_RATE_LIMITS),
            ));
        }
        for (i, limit) in self.rate_limits.iter().enumerate() {
            limit.validate(&format!("spec.rateLimits[{i}]"))?;
            if self.rate_limits[..i].contains(limit) {
                return Err(DocumentError::field(format!("spec.rateLimits[{i}]"), "is the same as an earlier one"));
            }
        }
        if self.concurrency_limits.len() > crate::rate_limit::MAX_RATE_LIMITS {
            return Err(DocumentError::field(
                "spec.concurrencyLimits",
                format!("at most {} per server", crate::rate_limit::MAX_RATE_LIMITS),
            ));
        }
        for (i, limit) in self.concurrency_limits.iter().enumerate() {
            limit.validate(&format!("spec.concurrencyLimits[{i}]"))?;
            if self.concurrency_limits[..i].contains(limit) {
                return Err(DocumentError::field(
                    format!("spec.concurrencyLimits[{i}]"),
                    "is the same as an earlier one",
                ));
            }
        }
        if let Some(listen) = &self.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(DocumentError::field(
                "spec.listen",
                format!("{listen:?} is not an address like 127.0.0.1:8443"),
            ));
        }
        Ok(())
    }
}
