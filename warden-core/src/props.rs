//! Property tests over the entry points hostile input reaches: a fuzzer that runs on the stable
//! toolchain (`cargo test -p warden-core props`). Each property drives the same public functions
//! the gateway, the token service and the control plane call with what they received, from
//! generated input: arbitrary bytes and text, and structured mutations of valid input (JSON with
//! members named twice, huge numbers, deep nesting, every escape), and asserts what must hold
//! whatever comes in — beyond "no panic", what an accepted input is known to satisfy.
//!
//! The token properties live beside the token tests (`token_props.rs`) to sign with their
//! fixtures. Cases per property: [`cases`].

use proptest::prelude::*;

mod authorize;
mod mcp;
mod resource;

pub(crate) use warden_mutations::{Edit, apply, cases};

/// JSON text as a hostile client may write it, and whether any object in it names a member
/// twice (names compared unescaped). Always JSON by the grammar; not always what serde_json
/// reads (`1e400`, a lone surrogate escape).
#[derive(Clone, Debug)]
pub(crate) struct Json {
    pub text: String,
    pub repeats: bool,
}

impl Json {
    pub(crate) fn plain(text: impl Into<String>) -> Json {
        Json { text: text.into(), repeats: false }
    }
}

/// A member name written as a JSON string: as serde_json writes it, or every character as a
/// `\u` escape (which a parser must read as the same name).
pub(crate) fn spell(name: &str, escaped: bool) -> String {
    if !escaped {
        return serde_json::to_string(name).expect("a string serializes");
    }
    let mut out = String::from("\"");
    for unit in name.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
    out
}

/// An object's text from its members (already spelled names and values).
pub(crate) fn object(members: &[(String, bool, Json)]) -> Json {
    let mut names: Vec<&str> = members.iter().map(|(name, _, _)| name.as_str()).collect();
    names.sort_unstable();
    let repeats = names.windows(2).any(|w| w[0] == w[1]) || members.iter().any(|(_, _, v)| v.repeats);
    let body: Vec<String> =
        members.iter().map(|(name, escaped, value)| format!("{}:{}", spell(name, *escaped), value.text)).collect();
    Json { text: format!("{{{}}}", body.join(",")), repeats }
}

/// Member names: a few that mean something to Warden or MCP, short ones that collide often,
/// and any text at all.
pub(crate) fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "sub", "iss", "aud", "exp", "iat", "nbf", "jti", "cnf", "scope", "tenant", "groups", "alg", "kid",
            "crit", "b64", "jsonrpc", "id", "method", "params", "name", "uri", "arguments", "ref", "type",
            "notifications", "resourceSubscriptions", "apiVersion", "kind", "metadata", "spec", "keys",
        ])
        .prop_map(String::from),
        2 => "[a-c]{0,2}",
        1 => any::<String>(),
    ]
}

/// Text for JSON strings: any Unicode, or now and then a long run of it.
pub(crate) fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => any::<String>(),
        1 => (".{1,4}", 1_000..20_000usize).prop_map(|(unit, n)| unit.repeat(n / unit.len().max(1))),
    ]
}

/// JSON strings: escaped as serde_json escapes, every character a `\u` escape, or escapes
/// that are grammatical but not Unicode (lone surrogates).
pub(crate) fn string() -> impl Strategy<Value = Json> {
    prop_oneof![
        6 => text().prop_map(|s| Json::plain(spell(&s, false))),
        1 => text().prop_map(|s| Json::plain(spell(&s, true))),
        1 => prop::sample::select(vec![
            r#""\ud800""#, r#""\udc00\ud800""#, r#""\u0000""#, r#""\/\b\f\n\r\t\"\\""#, r#""\uFEFF""#,
            r#""\ud83d\ude00""#, "\"\u{feff}\"", "\"\u{202e}\"",
        ])
        .prop_map(Json::plain),
    ]
}

/// Numbers in every spelling: integers of every size, floats, exponents, negative zero, and
/// values past what an `f64` holds.
pub(crate) fn number() -> impl Strategy<Value = Json> {
    prop_oneof![
        any::<i64>().prop_map(|n| Json::plain(n.to_string())),
        any::<u64>().prop_map(|n| Json::plain(n.to_string())),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| Json::plain(format!("{f:e}"))),
        "-?[1-9][0-9]{19,80}(\\.[0-9]{1,5})?".prop_map(Json::plain),
        prop::sample::select(vec![
            "0",
            "-0",
            "0.0",
            "1.0",
            "1e0",
            "1E+2",
            "-1e-7",
            "1e308",
            "1e400",
            "-1e400",
            "4.9e-324",
            "1e-400",
            "9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "253402300799",
            "253402300800",
        ])
        .prop_map(Json::plain),
    ]
}

/// Any JSON value: scalars, arrays, objects (names colliding often), now and then an object
/// with a member named twice on purpose, or a value nested far deeper than any limit.
pub(crate) fn json() -> BoxedStrategy<Json> {
    let tree = tree();
    prop_oneof![
        12 => tree.clone(),
        1 => (1..300usize, tree).prop_map(|(depth, v)| Json {
            text: format!("{}{}{}", "[".repeat(depth), v.text, "]".repeat(depth)),
            repeats: v.repeats,
        }),
    ]
    .boxed()
}

/// [`json`] without the deep nesting: a few levels at most.
pub(crate) fn tree() -> BoxedStrategy<Json> {
    let leaf =
        prop_oneof![prop::sample::select(vec!["null", "true", "false"]).prop_map(Json::plain), number(), string(),];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            8 => prop::collection::vec(inner.clone(), 0..6).prop_map(|items| Json {
                repeats: items.iter().any(|i| i.repeats),
                text: format!("[{}]", items.iter().map(|i| i.text.as_str()).collect::<Vec<_>>().join(",")),
            }),
            8 => prop::collection::vec((name(), any::<bool>(), inner.clone()), 0..6).prop_map(|m| object(&m)),
            1 => (name(), inner.clone(), inner, any::<bool>()).prop_map(|(n, a, b, escaped)| {
                let mut twice = object(&[(n.clone(), false, a), (n, escaped, b)]);
                twice.repeats = true;
                twice
            }),
        ]
    })
    .boxed()
}

/// A few edits; inserted bytes are random or a token that matters to JSON, YAML or JOSE.
pub(crate) fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let token = prop_oneof![
        prop::collection::vec(any::<u8>(), 1..4),
        prop::sample::select(vec![
            "\"",
            "\\",
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            ".",
            "-",
            "_",
            "=",
            "+",
            "/",
            "\n",
            "\r",
            " ",
            "\t",
            "null",
            "\\u0000",
            "\\ud800",
            "1e400",
            "---\n",
            "&a ",
            "*a",
            "!!binary ",
            "<<: ",
            "? ",
            "#",
            "%YAML 1.2\n",
            "\u{feff}",
            "\u{0}",
        ])
        .prop_map(|t| t.as_bytes().to_vec()),
    ];
    warden_mutations::edits(token, 16, 64)
}

#[test]
fn spelled_names_read_back_as_the_same_name() {
    for name in ["sub", "", "é", "😀", "a\"b\\c\n"] {
        for escaped in [false, true] {
            assert_eq!(serde_json::from_str::<String>(&spell(name, escaped)).unwrap(), name, "{escaped}");
        }
    }
    let twice = object(&[("a".into(), false, Json::plain("1")), ("a".into(), true, Json::plain("2"))]);
    assert_eq!((twice.text.as_str(), twice.repeats), (r#"{"a":1,"\u0061":2}"#, true));
}
