//! MCP's JSON-RPC messages as the gateway needs them: the method and the tool, resource or
//! prompt each request names, read from a bounded body, plus the HTTP header rules of the
//! Streamable HTTP transport that depend on the body (the 2026-07-28 routing headers).
//!
//! Only what a decision needs is read; the body itself is forwarded unchanged. Methods are
//! default-deny: the few that name no target pass on a valid token ([`TOKEN_ONLY_METHODS`]),
//! the ones that name or act on something are put to policy, and any other method — a case
//! variant, a trailing space, a vendor method — is refused ([`Undecidable::UnknownMethod`]),
//! since the gateway cannot know what it would do upstream.

use std::borrow::Cow;

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::authorize::Target;

/// Protocol revisions whose Streamable HTTP rules the gateway knows.
pub const PROTOCOL_VERSIONS: [&str; 5] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"];

/// Revisions with the stateless per-request envelope, where `Mcp-Method` and `Mcp-Name` must
/// match the body.
pub const ROUTING_HEADER_VERSIONS: [&str; 1] = ["2026-07-28"];

/// JSON-RPC: the body is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: the body is JSON but not a valid request.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: a method's parameters are wrong (e.g. `tools/call` without a tool name).
pub const INVALID_PARAMS: i64 = -32602;
/// MCP 2026-07-28: HTTP headers disagree with the body, or required ones are missing.
pub const HEADER_MISMATCH: i64 = -32020;
/// Warden: refused by policy. In the implementation-defined server-error range.
pub const POLICY_DENIED: i64 = -32001;
/// JSON-RPC error code of a request past one of the server's rate limits (HTTP 429 carries
/// `Retry-After`; `data.retryAfterSeconds` says the same inside the body).
pub const RATE_LIMITED: i64 = -32029;
/// JSON-RPC: the method does not exist or is not available (here: not through the gateway).
pub const METHOD_NOT_FOUND: i64 = -32601;

/// Methods that name no tool, resource or prompt and act on nothing a policy guards, across
/// the revisions of [`PROTOCOL_VERSIONS`]: lifecycle and utilities (2026-07-28's
/// `server/discover` included), the resource-template list (templates are patterns, not
/// resources; reading one is decided by its URI), dropping a subscription, and the
/// notifications a client sends. A valid token is enough for them. The list methods are not
/// here: they are put to policy and their answers filtered.
pub const TOKEN_ONLY_METHODS: [&str; 11] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "server/discover",
    "resources/templates/list",
    "resources/unsubscribe",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "notifications/tasks/status",
];

/// Most resources one `subscriptions/listen` may subscribe to: each is a policy decision.
pub const MAX_SUBSCRIPTIONS: usize = 256;

/// Bounds on a request body beyond its size (which the HTTP layer enforces).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Deepest nesting of arrays and objects.
    pub max_depth: usize,
    /// Most messages in one batch.
    pub max_batch: usize,
    /// Most arguments (top-level names of `params.arguments`) of one call: each becomes a tag
    /// of the Cedar entity the call's policy reads.
    pub max_arguments: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_depth: 64, max_batch: 32, max_arguments: 256 }
    }
}

/// Why a body was refused before any decision.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON at all.
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    /// Nested deeper than allowed.
    #[error("the body nests deeper than {0} levels")]
    TooDeep(usize),
    /// An empty batch (JSON-RPC 2.0 §6).
    #[error("empty batch")]
    EmptyBatch,
    /// A batch with more messages than allowed.
    #[error("a batch of {len} messages exceeds the limit of {max}")]
    BatchTooLarge {
        /// Messages in the batch.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// JSON, but not a JSON-RPC 2.0 message (or batch of them).
    #[error("not a JSON-RPC 2.0 message: {0}")]
    NotJsonRpc(String),
    /// `params.arguments` of a call is not an object with unique names, or has too many.
    #[error("params.arguments {0}")]
    BadArguments(String),
    /// Other parameters a decision reads are malformed (`subscriptions/listen`'s
    /// `params.notifications`).
    #[error("params.{0}")]
    BadParams(String),
}

impl BodyError {
    /// The JSON-RPC error code that answers it.
    pub fn code(&self) -> i64 {
        match self {
            BodyError::NotJson(_) => PARSE_ERROR,
            BodyError::BadArguments(_) | BodyError::BadParams(_) => INVALID_PARAMS,
            _ => INVALID_REQUEST,
        }
    }
}

/// One JSON-RPC message: a request (method and id), a notification (method, no id), or a
/// response to a server request (neither).
#[derive(Debug)]
pub struct Message<'a> {
    /// The id, verbatim, for requests and responses.
    pub id: Option<&'a RawValue>,
    /// The method of requests and notifications.
    pub method: Option<Cow<'a, str>>,
    /// `params.name` (tools, prompts) or `params.uri` (resources) of the methods that name one;
    /// for `completion/complete`, the name or URI of the prompt or resource it completes.
    pub name: Option<Cow<'a, str>>,
    /// For methods that use a prompt or resource another method names: the method whose
    /// policy decides (`completion/complete` of a `ref/prompt` → `prompts/get`, of a
    /// `ref/resource` → `resources/read`; `resources/subscribe` → `resources/read`).
    pub decided_as: Option<&'static str>,
    /// `params.arguments` of `tools/call` and `prompts/get`, verbatim (`null` is none).
    pub arguments: Option<&'a RawValue>,
    /// The URIs of `subscriptions/listen`'s `params.notifications.resourceSubscriptions`
    /// (2026-07-28: it replaces `resources/subscribe`), each decided as reading it.
    pub subscriptions: Vec<Cow<'a, str>>,
    /// `params._meta.traceparent` (OpenTelemetry trace context in `_meta`, SEP-414), when a
    /// string; checked by whoever continues the trace.
    pub traceparent: Option<Cow<'a, str>>,
}

/// A parsed body.
#[derive(Debug)]
pub struct Body<'a> {
    /// The messages, in order.
    pub messages: Vec<Message<'a>>,
    /// Whether they came as a JSON array.
    pub batch: bool,
}

#[derive(Deserialize)]
struct Wire<'a> {
    jsonrpc: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    /// Read as [`Params`] once it is known to be an object (see [`object`]).
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct Params<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uri: Option<Cow<'a, str>>,
    /// Read as [`Reference`] once it is known to be an object.
    #[serde(borrow, default, rename = "ref")]
    reference: Option<&'a RawValue>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    /// Read only for `subscriptions/listen`: other methods may use the name differently.
    #[serde(borrow, default)]
    notifications: Option<&'a RawValue>,
}

/// `params._meta`, read apart from the fields that decide (see [`trace_of`]).
#[derive(Deserialize)]
struct WithMeta<'a> {
    #[serde(borrow, default, rename = "_meta")]
    meta: Option<&'a RawValue>,
}

/// `params._meta` itself: only the trace context is read (the rest is the peers' own).
#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default)]
    traceparent: Option<&'a RawValue>,
}

/// `params._meta.traceparent` of `params`, when `_meta` is an object naming it once as a
/// string. Read in a pass of its own that never fails the message: `_meta` is not a
/// decision's input, so nothing about it (named twice, of another shape) refuses a request.
fn trace_of(params: &str) -> Option<Cow<'_, str>> {
    let with: WithMeta<'_> = object(params).ok()?;
    let meta: Meta<'_> = object(with.meta?.get()).ok()?;
    serde_json::from_str(meta.traceparent?.get()).ok()
}

/// `subscriptions/listen`'s `params.notifications`: only the part that names resources.
#[derive(Deserialize)]
struct Listen<'a> {
    #[serde(borrow, default, rename = "resourceSubscriptions")]
    resource_subscriptions: Option<Vec<Cow<'a, str>>>,
}

/// `completion/complete`'s `params.ref`.
#[derive(Deserialize)]
struct Reference<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uri: Option<Cow<'a, str>>,
}

/// Parses a POSTed body within `limits`.
pub fn parse(bytes: &[u8], limits: Limits) -> Result<Body<'_>, BodyError> {
    check_depth(bytes, limits.max_depth)?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first == Some(b'[') {
        let items: Vec<&RawValue> = serde_json::from_slice(bytes).map_err(|e| BodyError::NotJson(e.to_string()))?;
        if items.is_empty() {
            return Err(BodyError::EmptyBatch);
        }
        if items.len() > limits.max_batch {
            return Err(BodyError::BatchTooLarge { len: items.len(), max: limits.max_batch });
        }
        let messages = items.into_iter().map(|raw| message(raw.get(), limits)).collect::<Result<_, _>>()?;
        return Ok(Body { messages, batch: true });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| BodyError::NotJson(e.to_string()))?;
    // Parsed to a value first so a non-JSON body is told apart from a wrong-shaped one.
    let _: &RawValue = serde_json::from_str(text).map_err(|e| BodyError::NotJson(e.to_string()))?;
    Ok(Body { messages: vec![message(text, limits)?], batch: false })
}

/// JSON `text` as `T` when it is an object. serde reads a struct from a JSON array too
/// (`["2.0", 1, "tools/call", ["echo"]]`, or `"params": ["echo"]`): the gateway would then read
/// a positional field as a name that the upstream, reading the same bytes, never sees as one.
/// MCP messages, params and references are objects; anything else is refused.
fn object<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, String> {
    if !text.trim_start().starts_with('{') {
        return Err("must be a JSON object".into());
    }
    serde_json::from_str(text).map_err(|e| e.to_string())
}

fn message(text: &str, limits: Limits) -> Result<Message<'_>, BodyError> {
    let wire: Wire<'_> = object(text).map_err(|e| BodyError::NotJsonRpc(format!("a message {e}")))?;
    if wire.jsonrpc != "2.0" {
        return Err(BodyError::NotJsonRpc("\"jsonrpc\" must be \"2.0\"".into()));
    }
    // MCP request ids are strings or integers; one number in one spelling, so every party
    // reads the same id (no `-0`, `1.0`, `1e0`).
    if wire.method.is_some()
        && let Some(id) = wire.id
        && !id.get().starts_with('"')
        && id.get().parse::<i64>().map(|n| n.to_string()).as_deref() != Ok(id.get())
    {
        return Err(BodyError::NotJsonRpc("a request id is a string or an integer".into()));
    }
    let params: Params<'_> = match wire.params.filter(|p| p.get() != "null") {
        Some(raw) => object(raw.get()).map_err(|e| BodyError::BadParams(format!("params {e}")))?,
        None => Params::default(),
    };
    // Only completion reads `ref`; other methods may use the name for anything.
    let reference: Option<Reference<'_>> = match (wire.method.as_deref(), params.reference) {
        (Some("completion/complete"), Some(raw)) => {
            Some(object(raw.get()).map_err(|e| BodyError::BadParams(format!("ref {e}")))?)
        }
        _ => None,
    };
    let (name, decided_as) = match wire.method.as_deref() {
        Some("tools/call" | "prompts/get") => (params.name, None),
        Some("resources/read") => (params.uri, None),
        // A subscription streams the resource's updates: decided as reading it.
        Some("resources/subscribe") => (params.uri, Some("resources/read")),
        // Completing a prompt's or resource's arguments runs server code for it: decided as
        // using it. An unknown reference type is decided as a prompt with no name (refused).
        Some("completion/complete") => match reference {
            Some(r) if r.kind == "ref/resource" => (r.uri, Some("resources/read")),
            Some(r) if r.kind == "ref/prompt" => (r.name, Some("prompts/get")),
            _ => (None, Some("prompts/get")),
        },
        _ => (None, None),
    };
    let arguments = match wire.method.as_deref() {
        Some("tools/call" | "prompts/get") => params.arguments.filter(|a| a.get() != "null"),
        _ => None,
    };
    // Checked here, with the body, so a call policy could misread is refused before any
    // decision (and the authorizer reads them again only when it evaluates).
    if let Some(arguments) = arguments {
        crate::arguments::tags(arguments, limits.max_arguments).map_err(|e| BodyError::BadArguments(e.to_string()))?;
    }
    let subscriptions = match (wire.method.as_deref(), params.notifications) {
        (Some("subscriptions/listen"), Some(raw)) => {
            let listen: Listen<'_> =
                object(raw.get()).map_err(|e| BodyError::BadParams(format!("notifications {e}")))?;
            let uris = listen.resource_subscriptions.unwrap_or_default();
            if uris.len() > MAX_SUBSCRIPTIONS {
                return Err(BodyError::BadParams(format!(
                    "notifications.resourceSubscriptions names {} resources; at most {MAX_SUBSCRIPTIONS} are accepted",
                    uris.len()
                )));
            }
            uris
        }
        _ => Vec::new(),
    };
    // Most messages carry no `_meta`: their params are not read a second time. (One spelled
    // with escapes is passed over: a trace is never a decision's input.)
    let traceparent = wire.params.filter(|raw| raw.get().contains("\"_meta\"")).and_then(|raw| trace_of(raw.get()));
    Ok(Message { id: wire.id, method: wire.method, name, decided_as, arguments, subscriptions, traceparent })
}

/// Refuses nesting deeper than `max` without building anything: one pass over the bytes.
fn check_depth(bytes: &[u8], max: usize) -> Result<(), BodyError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(BodyError::TooDeep(max));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// How the gateway decides one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<'m> {
    /// A response to a server's request, or a method of [`TOKEN_ONLY_METHODS`]: a valid token
    /// is enough.
    TokenOnly,
    /// Put to policy as `action` on each of `targets`; every one must be allowed.
    Policy {
        /// The Cedar action (the method, or the one it is decided as).
        action: &'m str,
        /// What the action is on.
        targets: Targets<'m>,
    },
}

/// What one message acts on: one target, or (`subscriptions/listen`) one resource per URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Targets<'m> {
    /// One tool, resource, prompt, or the server itself.
    One(Target<'m>),
    /// Resources by URI.
    Resources(&'m [Cow<'m, str>]),
}

impl<'m> Targets<'m> {
    /// Each target, in order.
    pub fn iter(self) -> impl Iterator<Item = Target<'m>> {
        let (one, uris) = match self {
            Targets::One(target) => (Some(target), &[][..]),
            Targets::Resources(uris) => (None, uris),
        };
        one.into_iter().chain(uris.iter().map(|uri| Target::Resource(uri.as_ref())))
    }
}

/// Why a message cannot be decided; it is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Undecidable {
    /// A method that is neither token-only nor one policy can decide: a case or spacing
    /// variant of a known one, a vendor method, a method of a later revision. What it would do
    /// upstream is unknown, so it is refused (reason code `unknown_method`).
    #[error("the method is not one the gateway can decide")]
    UnknownMethod,
    /// The method needs a name or URI the request does not give.
    #[error("{0}")]
    MissingName(&'static str),
}

impl Undecidable {
    /// The stable reason code of the refusal.
    pub fn reason(self) -> &'static str {
        match self {
            Undecidable::UnknownMethod => "unknown_method",
            Undecidable::MissingName(_) => "invalid_params",
        }
    }
}

/// How `message` is decided. Default deny: a method that is not token-only and names nothing
/// policy can decide on is [`Undecidable::UnknownMethod`].
pub fn decision<'m>(message: &'m Message<'_>) -> Result<Decision<'m>, Undecidable> {
    let Some(method) = message.method.as_deref() else {
        return Ok(Decision::TokenOnly);
    };
    if TOKEN_ONLY_METHODS.contains(&method) {
        return Ok(Decision::TokenOnly);
    }
    if method == "subscriptions/listen" {
        // List-change notifications name nothing; each subscribed resource is decided as
        // reading it, like `resources/subscribe` before it.
        if message.subscriptions.is_empty() {
            return Ok(Decision::TokenOnly);
        }
        return Ok(Decision::Policy { action: "resources/read", targets: Targets::Resources(&message.subscriptions) });
    }
    let action = message.decided_as.unwrap_or(method);
    let target = match message.decided_as {
        Some(_) => target(action, message.name.as_deref())
            .map_err(|_| Undecidable::MissingName("needs params.ref or params.uri"))?,
        None => target(method, message.name.as_deref()).map_err(Undecidable::MissingName)?,
    };
    match target {
        Some(target) => Ok(Decision::Policy { action, targets: Targets::One(target) }),
        None => Err(Undecidable::UnknownMethod),
    }
}

/// What policy decides about a method, if anything (`None`: not a method policy decides).
/// `Err` when the method needs a name the request does not give.
pub fn target<'m>(method: &str, name: Option<&'m str>) -> Result<Option<Target<'m>>, &'static str> {
    Ok(Some(match method {
        "tools/call" => Target::Tool(name.ok_or("tools/call needs params.name")?),
        "resources/read" => Target::Resource(name.ok_or("resources/read needs params.uri")?),
        "prompts/get" => Target::Prompt(name.ok_or("prompts/get needs params.name")?),
        "tools/list" | "resources/list" | "prompts/list" => Target::Server,
        // Tasks (2025-11-25; an extension from 2026-07-28) name a task id the gateway cannot
        // tie to the call that started it: whether a workload may use them at all is policy's.
        "tasks/get" | "tasks/result" | "tasks/list" | "tasks/cancel" | "tasks/update" => Target::Server,
        _ => return Ok(None),
    }))
}

/// How a list method's answer is filtered: which result array, which key names each entry, and
/// which method's policy decides whether an entry is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListFilter {
    /// The array in `result`.
    pub array: &'static str,
    /// The key naming each entry.
    pub key: &'static str,
    /// The method whose policy decides over an entry.
    pub decided_by: &'static str,
}

/// The filter for a list method's answer.
pub fn list_filter(method: &str) -> Option<ListFilter> {
    let (array, key, decided_by) = match method {
        "tools/list" => ("tools", "name", "tools/call"),
        "prompts/list" => ("prompts", "name", "prompts/get"),
        "resources/list" => ("resources", "uri", "resources/read"),
        _ => return None,
    };
    Some(ListFilter { array, key, decided_by })
}

/// `Mcp-Method` must equal the body's method and `Mcp-Name` the name or URI it names.
/// Proxies and servers may route on the headers while Warden decides on the body, so they must
/// never disagree: whenever a header is present it is checked, whatever the revision. With
/// `required` (revisions with routing headers) `Mcp-Method` must be sent, and `Mcp-Name` for
/// the methods that name their target (those decided as another method — completions,
/// subscriptions — need not send it, but may not contradict).
pub fn check_routing_headers(
    message: &Message<'_>,
    method_header: Option<&str>,
    name_header: Option<&str>,
    required: bool,
) -> Result<(), String> {
    let Some(method) = message.method.as_deref() else {
        // A response to the server: there is no method or name for a header to name.
        if method_header.is_some() || name_header.is_some() {
            return Err("routing headers sent with a message that is not a request".into());
        }
        return Ok(());
    };
    match method_header {
        Some(header) if header != method => {
            return Err("Mcp-Method header does not match the request body's method".into());
        }
        None if required => return Err("Mcp-Method header is missing".into()),
        _ => {}
    }
    match (message.name.as_deref(), name_header) {
        (Some(name), Some(_)) if decode_header_value(name_header).as_deref() != Some(name) => {
            Err("Mcp-Name header does not match the request body's name".into())
        }
        (Some(_), None) if required && message.decided_as.is_none() => Err("Mcp-Name header is missing".into()),
        (None, Some(_)) => Err("Mcp-Name header names something the request body does not".into()),
        _ => Ok(()),
    }
}

/// `=?base64?…?=` carries values that are not plain visible ASCII; anything else is verbatim.
/// A malformed or non-canonical encoding decodes to nothing, so it never matches.
pub(crate) fn decode_header_value(value: Option<&str>) -> Option<String> {
    let value = value?;
    let Some(payload) = value.strip_prefix("=?base64?").and_then(|v| v.strip_suffix("?=")) else {
        return Some(value.to_string());
    };
    let engine = base64::engine::general_purpose::STANDARD;
    let bytes = engine.decode(payload).ok()?;
    if engine.encode(&bytes) != payload {
        return None;
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_in_meta_is_read_and_nothing_else_there_matters() {
        let traced = |meta: &str| {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","_meta":{meta}}}}}"#
            );
            parse(body.as_bytes(), Limits::default()).map(|b| b.messages[0].traceparent.as_deref().map(str::to_string))
        };
        let tp = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
        assert_eq!(traced(&format!(r#"{{"traceparent":"{tp}","other":{{"x":1}}}}"#)).unwrap().as_deref(), Some(tp));
        // Escapes are decoded; a value that is not a string, or `_meta` that is not an object,
        // carries no trace, and the message is decided all the same.
        assert_eq!(traced(r#"{"traceparent":"\u0030\u0030-x"}"#).unwrap().as_deref(), Some("00-x"));
        for meta in
            [r#"{"traceparent":7}"#, r#"[1]"#, r#"["00-x"]"#, r#""s""#, r#"{"traceparent":"a","traceparent":"b"}"#]
        {
            assert_eq!(traced(meta).unwrap(), None, "{meta}");
        }
        // `_meta` named twice: no trace, and the request still parses (it did before `_meta`
        // was read at all).
        let twice = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{},"name":"echo","_meta":{}}}"#;
        let parsed = parse(twice, Limits::default()).unwrap();
        assert_eq!((parsed.messages[0].name.as_deref(), &parsed.messages[0].traceparent), (Some("echo"), &None));
    }

    #[test]
    fn requests_notifications_and_responses_are_told_apart() {
        let body = br#"[{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"a":[1]}}},
            {"jsonrpc":"2.0","method":"notifications/initialized"},
            {"jsonrpc":"2.0","id":"s-1","result":{}},
            {"jsonrpc":"2.0","id":8,"method":"resources/read","params":{"uri":"notes://a"}}]"#;
        let parsed = parse(body, Limits::default()).unwrap();
        assert!(parsed.batch);
        let m = &parsed.messages;
        assert_eq!(
            (m[0].id.unwrap().get(), m[0].method.as_deref(), m[0].name.as_deref()),
            ("7", Some("tools/call"), Some("echo"))
        );
        assert_eq!((m[1].id.is_none(), m[1].method.as_deref()), (true, Some("notifications/initialized")));
        assert_eq!((m[2].id.unwrap().get(), m[2].method.as_deref()), ("\"s-1\"", None));
        assert_eq!(m[3].name.as_deref(), Some("notes://a"));
        // Escapes in names are decoded, so policy sees the real name.
        let one = parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ec\u0068o"}}"#,
            Limits::default(),
        )
        .unwrap();
        assert_eq!(one.messages[0].name.as_deref(), Some("echo"));
        assert!(!one.batch);
    }

    #[test]
    fn bad_bodies_get_the_json_rpc_error_that_fits() {
        let limits = Limits { max_depth: 4, max_batch: 2, ..Limits::default() };
        let cases: [(&[u8], i64); 13] = [
            (b"{not json", PARSE_ERROR),
            (b"", PARSE_ERROR),
            (b"[]", INVALID_REQUEST),
            (
                br#"[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","method":"b"},{"jsonrpc":"2.0","method":"c"}]"#,
                INVALID_REQUEST,
            ),
            (br#"{"jsonrpc":"1.0","method":"a"}"#, INVALID_REQUEST),
            (br#"{"jsonrpc":"2.0","method":"a","params":{"x":[[[[1]]]]}}"#, INVALID_REQUEST),
            (br#"{"jsonrpc":"2.0","method":7}"#, INVALID_REQUEST),
            (br#"{"jsonrpc":"2.0","id":-0,"method":"tools/list"}"#, INVALID_REQUEST),
            (br#"{"jsonrpc":"2.0","id":1.0,"method":"tools/list"}"#, INVALID_REQUEST),
            // Positional forms, which serde would read as the fields in order: a message, its
            // params and a completion's ref are objects (the gateway must read the name the
            // upstream reads).
            (br#"["2.0", 1, "tools/call", {"name": "echo"}]"#, INVALID_REQUEST),
            (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["delete_repo"]}"#, INVALID_PARAMS),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":["ref/prompt","x"]}}"#,
                INVALID_PARAMS,
            ),
            (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"echo"}"#, INVALID_PARAMS),
        ];
        for (body, code) in cases {
            let e = parse(body, limits).expect_err(std::str::from_utf8(body).unwrap());
            assert_eq!(e.code(), code, "{e}");
        }
        // Brackets inside strings are not nesting.
        assert!(parse(br#"{"jsonrpc":"2.0","method":"a","params":{"name":"[[[[[[\"{{{{"}}"#, limits).is_ok());
    }

    #[test]
    fn methods_map_to_policy_targets() {
        assert_eq!(target("tools/call", Some("echo")), Ok(Some(Target::Tool("echo"))));
        assert_eq!(target("resources/read", Some("a://b")), Ok(Some(Target::Resource("a://b"))));
        assert_eq!(target("prompts/get", Some("p")), Ok(Some(Target::Prompt("p"))));
        assert_eq!(target("tools/list", None), Ok(Some(Target::Server)));
        assert!(target("tools/call", None).is_err());
        assert_eq!(target("initialize", None), Ok(None));
        assert_eq!(target("ping", None), Ok(None));
    }

    #[test]
    fn call_arguments_are_kept_for_policy_and_must_be_an_object_with_unique_names() {
        let call = |params: &str| format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#);
        let limits = Limits { max_arguments: 3, ..Limits::default() };
        let arguments = |body: &str| {
            let parsed = parse(body.as_bytes(), limits).unwrap();
            let m = &parsed.messages[0];
            (m.arguments.map(|a| a.get().to_string()), decision(m).map(|d| matches!(d, Decision::Policy { .. })))
        };
        let path = call(r#"{"name":"read_file","arguments":{"path":"/srv/a"}}"#);
        assert_eq!(arguments(&path), (Some(r#"{"path":"/srv/a"}"#.into()), Ok(true)));
        assert_eq!(arguments(&call(r#"{"name":"read_file"}"#)), (None, Ok(true)));
        assert_eq!(arguments(&call(r#"{"name":"read_file","arguments":null}"#)), (None, Ok(true)));
        let prompt = r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p","arguments":{"a":"b"}}}"#;
        assert_eq!(arguments(prompt).0.as_deref(), Some(r#"{"a":"b"}"#));
        // Other methods' arguments are not theirs to decide on.
        let other = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"arguments":[1]}}"#;
        assert_eq!(arguments(other), (None, Ok(true)));
        assert!(arguments(&call(r#"{"name":"f","arguments":{"a":1,"b":2,"c":3}}"#)).0.is_some());
        let cases = [
            (r#"[1]"#, "must be an object"),
            (r#""x""#, "must be an object"),
            ("7", "must be an object"),
            (r#"{"path":"/srv/a","path":"/etc/passwd"}"#, "names an argument twice"),
            (r#"{"a":1,"\u0061":2}"#, "names an argument twice"),
            (r#"{"a":1,"b":2,"c":3,"d":4}"#, "has 4 names; at most 3 are accepted"),
        ];
        for (bad, why) in cases {
            let body = call(&format!(r#"{{"name":"read_file","arguments":{bad}}}"#));
            let e = parse(body.as_bytes(), limits).unwrap_err();
            assert_eq!((e.code(), e.to_string()), (INVALID_PARAMS, format!("params.arguments {why}")), "{bad}");
        }
    }

    #[test]
    fn completions_are_decided_as_using_what_they_complete() {
        let decide = |body: &str| {
            let parsed = parse(body.as_bytes(), Limits::default()).unwrap();
            decision(&parsed.messages[0]).map(|d| match d {
                Decision::Policy { action, targets } => {
                    Some((action.to_string(), targets.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(" ")))
                }
                Decision::TokenOnly => None,
            })
        };
        let prompt = r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"review"},"argument":{"name":"code","value":"x"}}}"#;
        assert_eq!(decide(prompt), Ok(Some(("prompts/get".into(), "Prompt(\"review\")".into()))));
        let resource =
            prompt.replace(r#""type":"ref/prompt","name":"review""#, r#""type":"ref/resource","uri":"notes://{id}""#);
        assert_eq!(decide(&resource), Ok(Some(("resources/read".into(), "Resource(\"notes://{id}\")".into()))));
        let unknown = prompt.replace("ref/prompt", "ref/other");
        assert!(decide(&unknown).is_err());
        assert!(decide(r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{}}"#).is_err());
        assert_eq!(decide(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), Ok(None));
        let subscribe = r#"{"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{"uri":"notes://a"}}"#;
        assert_eq!(decide(subscribe), Ok(Some(("resources/read".into(), "Resource(\"notes://a\")".into()))));
        assert!(decide(r#"{"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{}}"#).is_err());
    }

    #[test]
    fn routing_headers_must_agree_with_the_body() {
        let body = parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"caf\u00e9"}}"#,
            Limits::default(),
        )
        .unwrap();
        let m = &body.messages[0];
        // "café" is not visible ASCII, so clients send it base64-encoded.
        assert!(check_routing_headers(m, Some("tools/call"), Some("=?base64?Y2Fmw6k=?="), true).is_ok());
        assert!(check_routing_headers(m, Some("tools/call"), Some("cafe"), true).is_err());
        assert!(check_routing_headers(m, Some("tools/call"), None, true).is_err());
        assert!(check_routing_headers(m, Some("tools/list"), Some("=?base64?Y2Fmw6k=?="), true).is_err());
        assert!(check_routing_headers(m, None, Some("=?base64?Y2Fmw6k=?="), true).is_err());
        // Non-canonical base64 never matches.
        assert!(check_routing_headers(m, Some("tools/call"), Some("=?base64?Y2Fmw6l=?="), true).is_err());
        let list = parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, Limits::default()).unwrap();
        assert!(check_routing_headers(&list.messages[0], Some("tools/list"), None, true).is_ok());
        // A subscription names its resource in the body only; a header, if sent, must agree.
        let sub = parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"notes://a"}}"#,
            Limits::default(),
        )
        .unwrap();
        let m = &sub.messages[0];
        assert!(check_routing_headers(m, Some("resources/subscribe"), None, true).is_ok());
        assert!(check_routing_headers(m, Some("resources/subscribe"), Some("notes://a"), true).is_ok());
        assert!(check_routing_headers(m, Some("resources/subscribe"), Some("notes://b"), true).is_err());
    }

    #[test]
    fn routing_headers_are_checked_whenever_present_even_when_not_required() {
        let call =
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#, Limits::default())
                .unwrap();
        let m = &call.messages[0];
        assert!(check_routing_headers(m, None, None, false).is_ok());
        assert!(check_routing_headers(m, Some("tools/call"), None, false).is_ok());
        assert!(check_routing_headers(m, None, Some("echo"), false).is_ok());
        assert!(check_routing_headers(m, None, Some("delete_repository"), false).is_err());
        assert!(check_routing_headers(m, Some("tools/list"), None, false).is_err());
        assert!(check_routing_headers(m, Some("Tools/Call"), Some("echo"), false).is_err());
        let list = parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, Limits::default()).unwrap();
        // A name for a request that names nothing: a router could act on it.
        assert!(check_routing_headers(&list.messages[0], None, Some("echo"), false).is_err());
        let response = parse(br#"{"jsonrpc":"2.0","id":"s-1","result":{}}"#, Limits::default()).unwrap();
        assert!(check_routing_headers(&response.messages[0], None, None, true).is_ok());
        assert!(check_routing_headers(&response.messages[0], Some("tools/call"), None, false).is_err());
    }

    fn decided(body: &str) -> Result<Option<(String, Vec<String>)>, Undecidable> {
        let parsed = parse(body.as_bytes(), Limits::default()).unwrap();
        decision(&parsed.messages[0]).map(|d| match d {
            Decision::Policy { action, targets } => {
                Some((action.to_string(), targets.iter().map(|t| format!("{t:?}")).collect()))
            }
            Decision::TokenOnly => None,
        })
    }

    #[test]
    fn methods_are_default_deny() {
        let request =
            |method: &str| format!(r#"{{"jsonrpc":"2.0","id":1,"method":{method:?},"params":{{"name":"echo"}}}}"#);
        let notification = |method: &str| format!(r#"{{"jsonrpc":"2.0","method":{method:?}}}"#);
        // Every revision's target-less client methods and notifications pass on the token.
        for method in TOKEN_ONLY_METHODS {
            assert_eq!(decided(&request(method)), Ok(None), "{method}");
        }
        assert_eq!(decided(&notification("notifications/initialized")), Ok(None));
        // Variants of known methods, vendor methods, unknown notifications: refused.
        for method in [
            "Tools/Call",
            "tools/call ",
            " tools/call",
            "TOOLS/LIST",
            "tools/",
            "",
            "acme/deleteEverything",
            "notifications/acme/wipe",
            "resources/subscribe/all",
            "rpc.discover",
        ] {
            assert_eq!(decided(&request(method)), Err(Undecidable::UnknownMethod), "{method:?}");
            assert_eq!(Undecidable::UnknownMethod.reason(), "unknown_method");
        }
        assert_eq!(decided(&notification("notifications/acme/wipe")), Err(Undecidable::UnknownMethod));
        // Escapes decode before the comparison: this is tools/call and is decided as such.
        let escaped = r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"echo"}}"#;
        assert_eq!(decided(escaped), Ok(Some(("tools/call".into(), vec!["Tool(\"echo\")".into()]))));
        // Tasks are put to policy, on the server.
        for method in ["tasks/get", "tasks/result", "tasks/list", "tasks/cancel", "tasks/update"] {
            assert_eq!(decided(&request(method)), Ok(Some((method.into(), vec!["Server".into()]))), "{method}");
        }
        // A response to the server decides nothing.
        assert_eq!(decided(r#"{"jsonrpc":"2.0","id":"s-1","result":{}}"#), Ok(None));
    }

    #[test]
    fn a_subscription_stream_is_decided_as_reading_each_resource_it_names() {
        let listen = |notifications: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{{"notifications":{notifications}}}}}"#
            )
        };
        assert_eq!(decided(&listen(r#"{"toolsListChanged":true}"#)), Ok(None));
        assert_eq!(decided(&listen(r#"{"resourceSubscriptions":[]}"#)), Ok(None));
        assert_eq!(
            decided(&listen(r#"{"toolsListChanged":true,"resourceSubscriptions":["notes://a","notes://b"]}"#)),
            Ok(Some((
                "resources/read".into(),
                vec!["Resource(\"notes://a\")".into(), "Resource(\"notes://b\")".into()]
            )))
        );
        for bad in [r#"{"resourceSubscriptions":"notes://a"}"#, r#"{"resourceSubscriptions":[1]}"#, "7"] {
            let e = parse(listen(bad).as_bytes(), Limits::default()).unwrap_err();
            assert_eq!(e.code(), INVALID_PARAMS, "{bad}: {e}");
        }
        let many: Vec<String> = (0..=MAX_SUBSCRIPTIONS).map(|i| format!("\"r://{i}\"")).collect();
        let many = listen(&format!(r#"{{"resourceSubscriptions":[{}]}}"#, many.join(",")));
        assert_eq!(parse(many.as_bytes(), Limits::default()).unwrap_err().code(), INVALID_PARAMS);
        // Another method's `notifications` parameter is not read.
        let other = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"n","notifications":7}}"#;
        assert!(parse(other.as_bytes(), Limits::default()).is_ok());
    }
}
