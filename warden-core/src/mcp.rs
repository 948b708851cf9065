//! MCP's JSON-RPC messages as the gateway needs them: the method and the tool, resource or
//! prompt each request names, read from a bounded body, plus the HTTP header rules of the
//! Streamable HTTP transport that depend on the body (the 2026-07-28 routing headers).
//!
//! Only what a decision needs is read; the body itself is forwarded unchanged.

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
}

impl BodyError {
    /// The JSON-RPC error code that answers it.
    pub fn code(&self) -> i64 {
        match self {
            BodyError::NotJson(_) => PARSE_ERROR,
            BodyError::BadArguments(_) => INVALID_PARAMS,
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
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize, Default)]
struct Params<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uri: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "ref")]
    reference: Option<Reference<'a>>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
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

fn message(text: &str, limits: Limits) -> Result<Message<'_>, BodyError> {
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|e| BodyError::NotJsonRpc(e.to_string()))?;
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
    let params = wire.params.unwrap_or_default();
    let (name, decided_as) = match wire.method.as_deref() {
        Some("tools/call" | "prompts/get") => (params.name, None),
        Some("resources/read") => (params.uri, None),
        // A subscription streams the resource's updates: decided as reading it.
        Some("resources/subscribe") => (params.uri, Some("resources/read")),
        // Completing a prompt's or resource's arguments runs server code for it: decided as
        // using it. An unknown reference type is decided as a prompt with no name (refused).
        Some("completion/complete") => match params.reference {
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
    Ok(Message { id: wire.id, method: wire.method, name, decided_as, arguments })
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

/// The policy action and target that decide `message`, if any (`Err` when it lacks the name
/// its method needs).
pub fn decision<'m>(message: &'m Message<'_>) -> Result<Option<(&'m str, Target<'m>)>, &'static str> {
    let Some(method) = message.method.as_deref() else {
        return Ok(None);
    };
    let action = message.decided_as.unwrap_or(method);
    let target = match message.decided_as {
        Some(_) => target(action, message.name.as_deref()).map_err(|_| "needs params.ref or params.uri")?,
        None => target(method, message.name.as_deref())?,
    };
    Ok(target.map(|t| (action, t)))
}

/// What policy decides about a method, if anything. `Err` when the method needs a name the
/// request does not give.
pub fn target<'m>(method: &str, name: Option<&'m str>) -> Result<Option<Target<'m>>, &'static str> {
    Ok(Some(match method {
        "tools/call" => Target::Tool(name.ok_or("tools/call needs params.name")?),
        "resources/read" => Target::Resource(name.ok_or("resources/read needs params.uri")?),
        "prompts/get" => Target::Prompt(name.ok_or("prompts/get needs params.name")?),
        "tools/list" | "resources/list" | "prompts/list" => Target::Server,
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

/// For revisions with routing headers: `Mcp-Method` must equal the body's method and, for
/// methods that name a tool, prompt or resource, `Mcp-Name` its name. Proxies and servers may
/// route on the headers while Warden decides on the body, so they must not disagree.
pub fn check_routing_headers(
    message: &Message<'_>,
    method_header: Option<&str>,
    name_header: Option<&str>,
) -> Result<(), String> {
    let Some(method) = message.method.as_deref() else {
        return Ok(());
    };
    if method_header != Some(method) {
        return Err("Mcp-Method header does not match the request body's method".into());
    }
    // `Mcp-Name` is required for the methods that name their target; the ones decided as
    // another method (completions, subscriptions) need not send it, but may not contradict.
    let Some(name) = message.name.as_deref() else {
        return Ok(());
    };
    if (message.decided_as.is_none() || name_header.is_some())
        && decode_header_value(name_header).as_deref() != Some(name)
    {
        return Err("Mcp-Name header does not match the request body's name".into());
    }
    Ok(())
}

/// `=?base64?…?=` carries values that are not plain visible ASCII; anything else is verbatim.
/// A malformed or non-canonical encoding decodes to nothing, so it never matches.
fn decode_header_value(value: Option<&str>) -> Option<String> {
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
        let cases: [(&[u8], i64); 9] = [
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
            (m.arguments.map(|a| a.get().to_string()), decision(m).map(|d| d.is_some()))
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
            decision(&parsed.messages[0]).map(|d| d.map(|(a, t)| (a.to_string(), format!("{t:?}"))))
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
        assert!(check_routing_headers(m, Some("tools/call"), Some("=?base64?Y2Fmw6k=?=")).is_ok());
        assert!(check_routing_headers(m, Some("tools/call"), Some("cafe")).is_err());
        assert!(check_routing_headers(m, Some("tools/call"), None).is_err());
        assert!(check_routing_headers(m, Some("tools/list"), Some("=?base64?Y2Fmw6k=?=")).is_err());
        assert!(check_routing_headers(m, None, Some("=?base64?Y2Fmw6k=?=")).is_err());
        // Non-canonical base64 never matches.
        assert!(check_routing_headers(m, Some("tools/call"), Some("=?base64?Y2Fmw6l=?=")).is_err());
        let list = parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, Limits::default()).unwrap();
        assert!(check_routing_headers(&list.messages[0], Some("tools/list"), None).is_ok());
        // A subscription names its resource in the body only; a header, if sent, must agree.
        let sub = parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"notes://a"}}"#,
            Limits::default(),
        )
        .unwrap();
        let m = &sub.messages[0];
        assert!(check_routing_headers(m, Some("resources/subscribe"), None).is_ok());
        assert!(check_routing_headers(m, Some("resources/subscribe"), Some("notes://a")).is_ok());
        assert!(check_routing_headers(m, Some("resources/subscribe"), Some("notes://b")).is_err());
    }
}
