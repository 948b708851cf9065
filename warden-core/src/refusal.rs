//! Every reason a request can be refused at an agent — by the gateway or the local check API —
//! as one type with one stable code each: what decision records, spans, refusal tallies and
//! callers' error bodies say. Token refusals keep their own [`Reason`] inside.

use crate::token::Reason;

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The token was refused (its own code: `expired`, `bad_signature`, …).
    Token(Reason),
    /// No token was presented.
    MissingToken,
    /// Credentials that cannot be read (two `Authorization` headers, a token in the query).
    MalformedCredentials,
    /// A DPoP proof that does not verify, or was seen before.
    InvalidDpopProof,
    /// A browser `Origin` other than the resource's own.
    OriginRefused,
    /// A path other than the server's MCP endpoint.
    UnknownPath,
    /// The token lacks a scope the server requires.
    InsufficientScope,
    /// A session id the workload did not open (or this gateway did not seal for it).
    SessionMismatch,
    /// More than one `Mcp-Session-Id`, or a value with a comma.
    SessionHeaderInvalid,
    /// A `GET` or `DELETE` whose framing promises a body.
    BodyNotAllowed,
    /// An HTTP method MCP does not use.
    MethodNotAllowed,
    /// A body that is not JSON (by its media type).
    UnsupportedMediaType,
    /// A body over the size limit.
    BodyTooLarge,
    /// A body that could not be read.
    BodyUnreadable,
    /// A body that did not arrive in time.
    BodyTimeout,
    /// A body that is not JSON-RPC within the bounds.
    MalformedBody,
    /// An `MCP-Protocol-Version` the gateway does not know.
    UnsupportedProtocolVersion,
    /// Routing headers that disagree with the body (or are sent twice).
    RoutingHeaderMismatch,
    /// A method that needs a name or URI the request does not give.
    MissingName,
    /// A method the gateway cannot decide (default deny).
    UnknownMethod,
    /// Policy denied it.
    PolicyDenied,
    /// A policy failed while evaluating (denied).
    PolicyError,
    /// A task token used for a tool it was not granted.
    ToolNotGranted,
    /// Past one of the server's rate limits for this caller.
    RateLimited,
    /// The server's definition of the tool or prompt is not the approved one (tool pinning).
    ToolDefinitionChanged,
    /// Nothing is approved for the tool or prompt and the server holds new definitions, or
    /// its definition was rejected or shows signs of poisoning (tool pinning).
    ToolNotApproved,
}

impl Refusal {
    /// Every refusal but the token's own reasons ([`Refusal::all`] has those too).
    const OWN: [Refusal; 25] = [
        Refusal::MissingToken,
        Refusal::MalformedCredentials,
        Refusal::InvalidDpopProof,
        Refusal::OriginRefused,
        Refusal::UnknownPath,
        Refusal::InsufficientScope,
        Refusal::SessionMismatch,
        Refusal::SessionHeaderInvalid,
        Refusal::BodyNotAllowed,
        Refusal::MethodNotAllowed,
        Refusal::UnsupportedMediaType,
        Refusal::BodyTooLarge,
        Refusal::BodyUnreadable,
        Refusal::BodyTimeout,
        Refusal::MalformedBody,
        Refusal::UnsupportedProtocolVersion,
        Refusal::RoutingHeaderMismatch,
        Refusal::MissingName,
        Refusal::UnknownMethod,
        Refusal::PolicyDenied,
        Refusal::PolicyError,
        Refusal::ToolNotGranted,
        Refusal::RateLimited,
        Refusal::ToolDefinitionChanged,
        Refusal::ToolNotApproved,
    ];

    /// Every refusal there is, token reasons included: what metrics count from zero.
    pub fn all() -> impl Iterator<Item = Refusal> {
        Refusal::OWN.into_iter().chain(Reason::ALL.into_iter().map(Refusal::Token))
    }

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Token(reason) => reason.code(),
            Refusal::MissingToken => "missing_token",
            Refusal::MalformedCredentials => "malformed_credentials",
            Refusal::InvalidDpopProof => "invalid_dpop_proof",
            Refusal::OriginRefused => "origin_refused",
            Refusal::UnknownPath => "unknown_path",
            Refusal::InsufficientScope => "insufficient_scope",
            Refusal::SessionMismatch => "session_mismatch",
            Refusal::SessionHeaderInvalid => "session_header_invalid",
            Refusal::BodyNotAllowed => "body_not_allowed",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::UnsupportedMediaType => "unsupported_media_type",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::BodyUnreadable => "body_unreadable",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::MalformedBody => "malformed_body",
            Refusal::UnsupportedProtocolVersion => "unsupported_protocol_version",
            Refusal::RoutingHeaderMismatch => "routing_header_mismatch",
            Refusal::MissingName => "missing_name",
            Refusal::UnknownMethod => "unknown_method",
            Refusal::PolicyDenied => "policy_denied",
            Refusal::PolicyError => "policy_error",
            Refusal::ToolNotGranted => "tool_not_granted",
            Refusal::RateLimited => "rate_limited",
            Refusal::ToolDefinitionChanged => "tool_definition_changed",
            Refusal::ToolNotApproved => "tool_not_approved",
        }
    }
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Refusal {
        Refusal::Token(reason)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_distinct_snake_case_and_token_refusals_keep_theirs() {
        let all: Vec<Refusal> = Refusal::all().collect();
        assert_eq!(all.len(), 25 + 17);
        let codes: std::collections::HashSet<&str> = all.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), all.len());
        assert!(codes.iter().all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')), "{codes:?}");
        assert_eq!(Refusal::from(Reason::Expired).code(), "expired");
        assert_eq!(Refusal::UnknownMethod.to_string(), "unknown_method");
    }
}
