//! `mcp::parse` and `mcp::decision` on what a client may POST: arbitrary bytes, arbitrary JSON,
//! and JSON-RPC shapes (batches, ids of every type, params of every type, members named twice,
//! deep nesting, Unicode, huge strings), whole or edited byte by byte.

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::*;
use crate::authorize::Target;
use crate::mcp::{
    self, Decision, INVALID_PARAMS, INVALID_REQUEST, Limits, MAX_SUBSCRIPTIONS, Message, PARSE_ERROR,
    TOKEN_ONLY_METHODS, Undecidable,
};

/// Methods put to policy as themselves.
const POLICY_METHODS: [&str; 11] = [
    "tools/call",
    "resources/read",
    "prompts/get",
    "tools/list",
    "resources/list",
    "prompts/list",
    "tasks/get",
    "tasks/result",
    "tasks/list",
    "tasks/cancel",
    "tasks/update",
];

/// Methods decided as another (or, for a listen without resources, token-only).
const DECIDED_AS: [&str; 3] = ["completion/complete", "resources/subscribe", "subscriptions/listen"];

fn method() -> impl Strategy<Value = String> {
    let known: Vec<&str> = TOKEN_ONLY_METHODS.iter().chain(&POLICY_METHODS).chain(&DECIDED_AS).copied().collect();
    prop_oneof![
        4 => prop::sample::select(known).prop_map(String::from),
        1 => prop::sample::select(vec![
            "Tools/Call", "tools/call ", " tools/call", "tools/call\u{0}", "TOOLS/LIST", "tools/", "", "rpc.discover",
            "acme/deleteEverything", "notifications/acme/wipe", "tools\u{2215}call", "tools/calI",
        ])
        .prop_map(String::from),
        1 => any::<String>(),
    ]
}

fn id() -> impl Strategy<Value = Json> {
    prop_oneof![
        3 => string(),
        3 => any::<i64>().prop_map(|n| Json::plain(n.to_string())),
        1 => number(),
        1 => prop::sample::select(vec!["null", "true", "[1]", "{\"a\":1}", "{}", "[]"]).prop_map(Json::plain),
    ]
}

/// `params.arguments`: objects of many names (past any limit), repeated names, any value.
fn arguments(wild: bool) -> BoxedStrategy<Json> {
    let object_of = prop::collection::vec((name(), any::<bool>(), tree()), 0..8).prop_map(|m| object(&m));
    if !wild {
        return object_of.boxed();
    }
    prop_oneof![
        3 => object_of,
        1 => (0..400usize, any::<bool>()).prop_map(|(n, repeat)| {
            let mut members: Vec<(String, bool, Json)> =
                (0..n).map(|i| (format!("a{i}"), false, Json::plain(i.to_string()))).collect();
            if repeat && n > 0 {
                members.push(("a0".into(), true, Json::plain("\"again\"")));
            }
            object(&members)
        }),
        1 => json(),
    ]
    .boxed()
}

/// `subscriptions/listen`'s `params.notifications`.
fn notifications(wild: bool) -> BoxedStrategy<Json> {
    let uris = prop_oneof![
        4 => prop::collection::vec(string(), 0..8),
        1 => (0..300usize).prop_map(|n| (0..n).map(|i| Json::plain(format!("\"r://{i}\""))).collect()),
    ];
    let listen = (uris, any::<bool>()).prop_map(|(uris, changed)| {
        let list = Json {
            repeats: false,
            text: format!("[{}]", uris.iter().map(|u| u.text.as_str()).collect::<Vec<_>>().join(",")),
        };
        let mut members = vec![("resourceSubscriptions".to_string(), false, list)];
        if changed {
            members.push(("toolsListChanged".into(), false, Json::plain("true")));
        }
        object(&members)
    });
    if wild { prop_oneof![3 => listen, 1 => json()].boxed() } else { listen.boxed() }
}

/// `params`: tame, each member of the type its method reads; wild, anything goes.
fn params(wild: bool) -> BoxedStrategy<Json> {
    let text = move || if wild { prop_oneof![6 => string(), 1 => json()].boxed() } else { string().boxed() };
    let kinds =
        prop::sample::select(vec!["ref/prompt", "ref/resource", "ref/other", "REF/PROMPT"]).prop_map(String::from);
    let kind = if wild { prop_oneof![3 => kinds, 1 => any::<String>()].boxed() } else { kinds.boxed() };
    let reference = (kind, text(), text()).prop_map(|(kind, name, uri)| {
        object(&[
            ("type".into(), false, Json::plain(spell(&kind, false))),
            ("name".into(), false, name),
            ("uri".into(), false, uri),
        ])
    });
    let reference = if wild { prop_oneof![3 => reference, 1 => json()].boxed() } else { reference.boxed() };
    let member = prop_oneof![
        text().prop_map(|v| ("name".to_string(), v)),
        text().prop_map(|v| ("uri".to_string(), v)),
        reference.prop_map(|v| ("ref".to_string(), v)),
        arguments(wild).prop_map(|v| ("arguments".to_string(), v)),
        notifications(wild).prop_map(|v| ("notifications".to_string(), v)),
        (name(), if wild { json() } else { tree() }),
    ];
    let twice = maybe(if wild { 0.2 } else { 0.0 }, any::<prop::sample::Index>());
    let members = (prop::collection::vec((member, any::<bool>()), 0..5), twice).prop_map(move |(members, twice)| {
        let mut members: Vec<(String, bool, Json)> =
            members.into_iter().map(|((name, value), escaped)| (name, escaped, value)).collect();
        if !wild {
            let mut seen = std::collections::HashSet::new();
            members.retain(|(name, _, _)| seen.insert(name.clone()));
        }
        // A name given twice (one `params.name` read, another forwarded).
        if let (Some(i), false) = (twice, members.is_empty()) {
            let again = members[i.index(members.len())].clone();
            members.push(again);
        }
        object(&members)
    });
    // JSON-RPC's params by position.
    let positional = prop::collection::vec(prop_oneof![string(), tree()], 0..6).prop_map(|items| Json {
        repeats: items.iter().any(|i| i.repeats),
        text: format!("[{}]", items.iter().map(|i| i.text.as_str()).collect::<Vec<_>>().join(",")),
    });
    if wild { prop_oneof![8 => members, 1 => positional, 1 => json()].boxed() } else { members.boxed() }
}

/// `Some` with probability `p` (which may be 0 or 1, unlike `prop::option::weighted`'s).
fn maybe<S: Strategy + 'static>(p: f64, strategy: S) -> BoxedStrategy<Option<S::Value>>
where
    S::Value: Clone,
{
    match p {
        p if p <= 0.0 => Just(None).boxed(),
        p if p >= 1.0 => strategy.prop_map(Some).boxed(),
        p => prop::option::weighted(p, strategy).boxed(),
    }
}

/// One JSON-RPC message. Tame: the members a client sends, of their types (values, names and
/// sizes still anything). Wild: each member may also be missing, mistyped or named twice.
fn message(wild: bool) -> BoxedStrategy<Json> {
    let jsonrpc = prop_oneof![
        8 => Just(Json::plain("\"2.0\"")),
        1 => prop::sample::select(vec!["\"1.0\"", "2.0", "null", "\"2.0 \"", "\"2\""]).prop_map(Json::plain),
        1 => json(),
    ];
    let jsonrpc = if wild { jsonrpc.boxed() } else { Just(Json::plain("\"2.0\"")).boxed() };
    let id = if wild {
        id().boxed()
    } else {
        prop_oneof![string(), any::<i64>().prop_map(|n| Json::plain(n.to_string()))].boxed()
    };
    let method = method().prop_map(|m| Json::plain(spell(&m, false)));
    let method = if wild { prop_oneof![4 => method, 1 => json()].boxed() } else { method.boxed() };
    let p = |p: f64| if wild { p } else { 0.0 };
    (
        maybe(1.0 - p(0.05), jsonrpc),
        maybe(0.8, id),
        maybe(1.0 - p(0.1), (method, any::<bool>())),
        maybe(0.8, params(wild)),
        prop::collection::vec((name(), json()), 0..if wild { 2 } else { 1 }),
        maybe(p(0.2), any::<prop::sample::Index>()),
    )
        .prop_map(|(jsonrpc, id, method, params, extra, twice)| {
            let mut members: Vec<(String, bool, Json)> = Vec::new();
            members.extend(jsonrpc.map(|v| ("jsonrpc".to_string(), false, v)));
            members.extend(id.map(|v| ("id".to_string(), false, v)));
            if let Some((Json { text, repeats }, escaped)) = method {
                // An escaped method name must read as the same method (`tools\/call`).
                let text = match serde_json::from_str::<String>(&text) {
                    Ok(m) if escaped => spell(&m, true),
                    _ => text,
                };
                members.push(("method".to_string(), false, Json { text, repeats }));
            }
            members.extend(params.map(|v| ("params".to_string(), false, v)));
            members.extend(extra.into_iter().map(|(name, v)| (name, false, v)));
            if let (Some(i), false) = (twice, members.is_empty()) {
                let again = members[i.index(members.len())].clone();
                members.push(again);
            }
            object(&members)
        })
        .boxed()
}

fn batch() -> impl Strategy<Value = Json> {
    let item = prop_oneof![4 => message(false), 1 => message(true)];
    let items = prop_oneof![4 => prop::collection::vec(item.clone(), 0..6), 1 => prop::collection::vec(item, 0..40)];
    items.prop_map(|items| Json {
        repeats: items.iter().any(|i| i.repeats),
        text: format!("[{}]", items.iter().map(|i| i.text.as_str()).collect::<Vec<_>>().join(",")),
    })
}

/// A body, shown as text when a case fails.
#[derive(Clone)]
struct Body(Vec<u8>);

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

fn body() -> impl Strategy<Value = Body> {
    let shaped = || prop_oneof![3 => message(false), 2 => message(true), 2 => batch()];
    let whitespace = prop::sample::select(vec!["", "", " ", "\n\t\r ", "\u{feff}"]);
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        1 => json().prop_map(|j| j.text.into_bytes()),
        5 => (whitespace, shaped()).prop_map(|(ws, j)| format!("{ws}{}{ws}", j.text).into_bytes()),
        3 => (shaped(), edits()).prop_map(|(j, e)| apply(j.text.as_bytes(), &e)),
    ]
    .prop_map(Body)
}

fn limits() -> impl Strategy<Value = Limits> {
    (prop_oneof![3 => 16..80usize, 1 => 1..16usize], 1..40usize, 0..300usize)
        .prop_map(|(max_depth, max_batch, max_arguments)| Limits { max_depth, max_batch, max_arguments })
}

/// An object's member values in order, repeats kept.
struct Values<'a>(Vec<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Values<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Walk<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Walk<'a> {
            type Value = Values<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Values<'a>, M::Error> {
                let mut values = Vec::new();
                while let Some((_, value)) = map.next_entry::<&'de RawValue, &'de RawValue>()? {
                    values.push(value);
                }
                Ok(Values(values))
            }
        }
        deserializer.deserialize_map(Walk(std::marker::PhantomData))
    }
}

/// Nesting depth of JSON text, by a walk of its own (not the byte scanner under test).
fn depth(text: &str) -> usize {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let inner = match text.as_bytes().first() {
        Some(b'[') => serde_json::from_str::<Vec<&RawValue>>(text).expect("accepted JSON").into_iter().collect(),
        Some(b'{') => serde_json::from_str::<Values<'_>>(text).expect("accepted JSON").0,
        _ => return 0,
    };
    1 + inner.iter().map(|v| depth(v.get())).max().unwrap_or(0)
}

/// What an accepted message is known to satisfy, read again from its own text.
fn check_message(m: &Message<'_>, raw: &str, limits: Limits) -> Result<(), TestCaseError> {
    let method = m.method.as_deref();
    // A request's id is a string or an integer in its one spelling.
    if let (Some(_), Some(id)) = (method, m.id) {
        let id = id.get();
        prop_assert!(id.starts_with('"') || id.parse::<i64>().is_ok_and(|n| n.to_string() == id), "id {id}");
    }
    if let Some(arguments) = m.arguments {
        prop_assert!(matches!(method, Some("tools/call" | "prompts/get")), "{method:?} with arguments");
        let tags = crate::arguments::tags(arguments, limits.max_arguments);
        prop_assert!(tags.as_ref().is_ok_and(|t| t.len() <= limits.max_arguments), "{tags:?}");
    }
    prop_assert!(m.subscriptions.len() <= MAX_SUBSCRIPTIONS);
    prop_assert!(m.subscriptions.is_empty() || method == Some("subscriptions/listen"));
    // serde_json reads the same message (unless something it refuses sits in a member the
    // gateway skips: `1e400`, a lone surrogate).
    if let Ok(value) = serde_json::from_str::<Value>(raw) {
        prop_assert_eq!(value.get("jsonrpc").and_then(Value::as_str), Some("2.0"));
        prop_assert_eq!(method, value.get("method").and_then(Value::as_str));
        if m.id.is_some() {
            prop_assert!(value.get("id").is_some_and(|id| !id.is_null()));
        }
        // MCP's params are named: an accepted message's params are an object (or absent), so
        // the name the gateway decides on is the one every reader of the message sees. (Found
        // by these tests: params by position were read as fields in declaration order.)
        let params = value.get("params");
        prop_assert!(params.is_none_or(|p| p.is_object() || p.is_null()), "accepted params {params:?}");
        let param = |name: &str| params.and_then(|p| p.get(name));
        let expected_name = match method {
            Some("tools/call" | "prompts/get") => param("name").and_then(Value::as_str),
            Some("resources/read" | "resources/subscribe") => param("uri").and_then(Value::as_str),
            _ => m.name.as_deref(),
        };
        prop_assert_eq!(m.name.as_deref(), expected_name);
        if let Some(arguments) = m.arguments {
            prop_assert!(param("arguments").is_some_and(Value::is_object), "{}", arguments.get());
        }
    }
    // Default deny: exactly the known methods are decided, each the way its rule says.
    let known = |m: &str| TOKEN_ONLY_METHODS.contains(&m) || POLICY_METHODS.contains(&m) || DECIDED_AS.contains(&m);
    match mcp::decision(m) {
        Ok(Decision::TokenOnly) => prop_assert!(
            method.is_none_or(|x| TOKEN_ONLY_METHODS.contains(&x))
                || (method == Some("subscriptions/listen") && m.subscriptions.is_empty()),
            "{method:?} passed on the token alone"
        ),
        Ok(Decision::Policy { action, targets }) => {
            prop_assert!(method.is_some_and(known), "{method:?} put to policy");
            prop_assert!(POLICY_METHODS.contains(&action), "{action}");
            prop_assert!(targets.iter().count() >= 1);
            for target in targets.iter() {
                match target {
                    Target::Tool(name) => prop_assert_eq!((action, Some(name)), ("tools/call", m.name.as_deref())),
                    Target::Resource(_) => prop_assert_eq!(action, "resources/read"),
                    Target::Prompt(_) => prop_assert_eq!(action, "prompts/get"),
                    Target::Server => prop_assert!(action.ends_with("/list") || action.starts_with("tasks/")),
                }
            }
        }
        Err(Undecidable::UnknownMethod) => prop_assert!(!method.is_some_and(known), "{method:?} refused"),
        Err(Undecidable::MissingName(_)) => prop_assert!(m.name.is_none()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(4096))]

    /// Whatever the body: no panic; refused with one of the documented JSON-RPC codes, or
    /// accepted within every bound, each message read as its text says and decided by its
    /// method's rule (default deny).
    #[test]
    fn a_body_is_accepted_within_bounds_or_refused_with_a_json_rpc_code(body in body(), limits in limits()) {
        let body = body.0;
        match mcp::parse(&body, limits) {
            Err(e) => {
                prop_assert!([PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS].contains(&e.code()), "{e:?}");
                prop_assert!(!e.to_string().is_empty());
            }
            Ok(parsed) => {
                let text = std::str::from_utf8(&body).expect("accepted JSON is UTF-8");
                prop_assert!(depth(text) <= limits.max_depth, "depth {} > {}", depth(text), limits.max_depth);
                let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
                prop_assert_eq!(parsed.batch, first == Some(b'['));
                let raws: Vec<&RawValue> = if parsed.batch {
                    serde_json::from_str(text).expect("accepted JSON")
                } else {
                    vec![serde_json::from_str(text).expect("accepted JSON")]
                };
                prop_assert!(!parsed.messages.is_empty());
                prop_assert!(!parsed.batch || parsed.messages.len() <= limits.max_batch);
                prop_assert_eq!(parsed.messages.len(), raws.len());
                for (m, raw) in parsed.messages.iter().zip(&raws) {
                    check_message(m, raw.get(), limits)?;
                }
            }
        }
    }
}
