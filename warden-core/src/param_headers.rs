//! `Mcp-Param-*` headers (MCP 2026-07-28, "custom headers from tool parameters"): a tool's
//! `inputSchema` may mark a property with `"x-mcp-header": "Region"`, and a client calling the
//! tool then mirrors that argument into an `Mcp-Param-Region` header, so that proxies and
//! load balancers can route on it without reading the body.
//!
//! Warden decides on the body; whoever routes after it may act on the header. So, like
//! `Mcp-Method` and `Mcp-Name`, every such header sent must say what the body says: a value
//! that differs, a header whose argument the body does not carry, or a header for a parameter
//! the tool does not declare is refused (`-32020`, header mismatch). Under 2026-07-28 an
//! argument the tool declares must be mirrored when the body carries it.
//!
//! What the tool declares is read from its definition as the server listed it through the
//! gateway ([`Declared::of`]); a header for a tool whose definition the gateway has not seen
//! cannot be checked, and is refused like one for an undeclared parameter (a client that
//! lists tools again, as it must after such a refusal, gets its call through).

use serde_json::Value;
use serde_json::value::RawValue;

/// The header names' prefix, lowercase as HTTP header maps hold names.
pub const PREFIX: &str = "mcp-param-";

/// Types a declaring property may have: their values have one spelling as a header
/// (`number` is excluded by the specification: float formatting differs between languages).
const PRIMITIVE_TYPES: [&str; 3] = ["string", "integer", "boolean"];

/// The largest integer a header may carry (IEEE 754's exact range, `2^53 - 1`).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// Schema keywords whose value is one subschema, a list of them, or a map of them. Only
/// `properties` keeps a declaration reachable; a declaration reached through any of these is
/// invalid. Data keywords (`enum`, `const`, `default`, `examples`) are not schemas and are not
/// entered, and `$ref` is never followed.
const SUBSCHEMA: [&str; 11] = [
    "additionalItems",
    "contains",
    "unevaluatedItems",
    "additionalProperties",
    "propertyNames",
    "unevaluatedProperties",
    "not",
    "if",
    "then",
    "else",
    "contentSchema",
];
const SUBSCHEMA_LISTS: [&str; 4] = ["allOf", "anyOf", "oneOf", "prefixItems"];
const SUBSCHEMA_MAPS: [&str; 5] = ["patternProperties", "dependentSchemas", "$defs", "definitions", "dependencies"];

/// Headers one tool may declare at most, and how deep in `properties` one may be: past either,
/// the declarations are invalid (the upstream is not trusted to keep them small).
const MAX_PARAMS: usize = 64;
const MAX_PATH: usize = 16;

/// One declared header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The header's name as the client sends it: `Mcp-Param-` and the declared token.
    pub header: String,
    /// The path of `properties` keys from the schema's root to the property.
    pub path: Vec<String>,
}

/// What a tool's input schema declares about `Mcp-Param-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declared {
    /// Valid declarations (at least one).
    Params(Vec<Param>),
    /// Declarations the specification makes invalid, which makes clients drop the tool: the
    /// first reason found.
    Invalid(String),
}

impl Declared {
    /// The declarations of `input_schema`; `None` when it declares no header.
    pub fn of(input_schema: &Value) -> Option<Declared> {
        let mut params: Vec<Param> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut invalid: Option<String> = None;
        // (path of `properties` keys, or None once another keyword was crossed; schema)
        let mut stack: Vec<(Option<Vec<String>>, &Value)> = vec![(Some(Vec::new()), input_schema)];
        while let Some((path, node)) = stack.pop() {
            let Value::Object(schema) = node else { continue };
            if let Some(token) = schema.get("x-mcp-header")
                && invalid.is_none()
            {
                match declaration(path.as_deref(), token, schema.get("type"), &mut seen) {
                    Ok(_) if params.len() == MAX_PARAMS => {
                        invalid = Some(format!("more than {MAX_PARAMS} x-mcp-header declarations"));
                    }
                    Ok(param) => params.push(param),
                    Err(reason) => invalid = Some(reason),
                }
            }
            for (keyword, value) in schema {
                match (keyword.as_str(), value) {
                    ("properties", Value::Object(properties)) => {
                        for (name, sub) in properties {
                            let path = path.as_ref().map(|p| p.iter().cloned().chain([name.clone()]).collect());
                            stack.push((path, sub));
                        }
                    }
                    // `items` is one schema, or (before 2020-12) a list of them.
                    ("items", Value::Array(list)) => stack.extend(list.iter().map(|sub| (None, sub))),
                    ("items", v) => stack.push((None, v)),
                    (k, v) if SUBSCHEMA.contains(&k) => stack.push((None, v)),
                    (k, Value::Array(list)) if SUBSCHEMA_LISTS.contains(&k) => {
                        stack.extend(list.iter().map(|sub| (None, sub)));
                    }
                    (k, Value::Object(map)) if SUBSCHEMA_MAPS.contains(&k) => {
                        stack.extend(map.values().map(|sub| (None, sub)));
                    }
                    _ => {}
                }
            }
        }
        match invalid {
            Some(reason) => Some(Declared::Invalid(reason)),
            None if params.is_empty() => None,
            None => {
                // One order whatever order the schema's members came in.
                params.sort_by(|a, b| a.path.cmp(&b.path));
                Some(Declared::Params(params))
            }
        }
    }
}

/// The declaration of `token` on the property at `path` (of type `kind`), or why it is invalid.
fn declaration(
    path: Option<&[String]>,
    token: &Value,
    kind: Option<&Value>,
    seen: &mut std::collections::HashSet<String>,
) -> Result<Param, String> {
    let path = match path {
        Some(path) if path.len() > MAX_PATH => {
            return Err(format!("x-mcp-header more than {MAX_PATH} properties deep"));
        }
        Some(path) if !path.is_empty() => path,
        Some(_) => return Err("x-mcp-header on the schema's root".into()),
        None => return Err("x-mcp-header on a property not reached through `properties` alone".into()),
    };
    let at = path.join(".");
    let Some(token) = token.as_str() else {
        return Err(format!("x-mcp-header of property {at:?} is not a string"));
    };
    if token.is_empty() || !token.bytes().all(is_tchar) {
        return Err(format!("x-mcp-header of property {at:?} is not an HTTP token"));
    }
    if !kind.and_then(Value::as_str).is_some_and(|k| PRIMITIVE_TYPES.contains(&k)) {
        return Err(format!("x-mcp-header on property {at:?}, which is not of type string, integer or boolean"));
    }
    let header = format!("Mcp-Param-{token}");
    if !seen.insert(header.to_ascii_lowercase()) {
        return Err(format!("x-mcp-header {token:?} is declared twice"));
    }
    Ok(Param { header, path: path.to_vec() })
}

/// RFC 9110 `tchar`: what a header field name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks the `Mcp-Param-*` headers of a `tools/call` against its `arguments`, by what the
/// tool `declared` (`None`: nothing, or a definition the gateway has not seen). `headers` are
/// every `Mcp-Param-*` header sent, name lowercase, in order. With `required` (2026-07-28) a
/// declared argument the body carries must be mirrored; otherwise only the headers sent are
/// checked. `Err` says what disagrees.
pub fn check(
    declared: Option<&Declared>,
    arguments: Option<&RawValue>,
    headers: &[(&str, &str)],
    required: bool,
) -> Result<(), String> {
    for (i, (name, _)) in headers.iter().enumerate() {
        if headers[..i].iter().any(|(other, _)| other == name) {
            return Err(format!("{name} header appears more than once"));
        }
    }
    let params = match declared {
        Some(Declared::Params(params)) => params,
        Some(Declared::Invalid(reason)) => {
            return match headers.first() {
                Some((name, _)) => Err(format!("{name}: the tool's x-mcp-header declarations are invalid ({reason})")),
                None => Ok(()),
            };
        }
        None => {
            return match headers.first() {
                Some((name, _)) => Err(format!(
                    "{name} header names no parameter of the tool as it was listed through this gateway \
                     (list the tools again)"
                )),
                None => Ok(()),
            };
        }
    };
    if let Some((name, _)) =
        headers.iter().find(|(name, _)| !params.iter().any(|p| p.header.eq_ignore_ascii_case(name)))
    {
        return Err(format!("{name} header names no parameter the tool declares"));
    }
    if headers.is_empty() && !required {
        return Ok(());
    }
    let arguments: Value = match arguments.map(|a| serde_json::from_str(a.get())) {
        Some(Ok(value)) => value,
        Some(Err(_)) => return Err("the request's arguments could not be read".into()),
        None => Value::Null,
    };
    for param in params {
        let sent = headers.iter().find(|(name, _)| param.header.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
        let value = param.path.iter().try_fold(&arguments, |node, key| node.get(key)).filter(|v| !v.is_null());
        match (value, sent) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(format!(
                    "{} header is sent but the request body has no {:?} argument",
                    param.header,
                    param.path.join(".")
                ));
            }
            // Only a value with a header spelling is mirrored.
            (Some(value), None) => {
                if required && matches!(value, Value::String(_) | Value::Bool(_) | Value::Number(_)) {
                    return Err(format!(
                        "{} header is missing but the request body has a {:?} argument",
                        param.header,
                        param.path.join(".")
                    ));
                }
            }
            (Some(value), Some(sent)) => {
                if !matches(value, sent) {
                    return Err(format!(
                        "{} header does not match the request body's {:?} argument",
                        param.header,
                        param.path.join(".")
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether header value `sent` mirrors `value`: a string as itself (or in the `=?base64?…?=`
/// form), a boolean as `true`/`false`, an integer as a decimal integer equal to it (`42.0`
/// mirrors `42`; no exponent, no rounding).
fn matches(value: &Value, sent: &str) -> bool {
    match value {
        // Only strings are ever base64-encoded (other values are visible ASCII as they are).
        Value::String(s) => crate::mcp::decode_header_value(Some(sent)).is_some_and(|sent| *s == sent),
        Value::Bool(b) => sent == if *b { "true" } else { "false" },
        Value::Number(n) => match (n.as_i64().or_else(|| whole(n.as_f64()?)), integer(sent)) {
            (Some(a), Some(b)) => a == b && (a as f64).abs() <= MAX_SAFE_INTEGER,
            // Not integers: a declaration is on integers, so nothing else is mirrored.
            _ => false,
        },
        _ => false,
    }
}

/// A JSON number written with a fraction (`42.0`) that is a whole number in the exact range.
fn whole(n: f64) -> Option<i64> {
    (n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER).then_some(n as i64)
}

/// A header value spelling an integer: decimal digits with an optional sign, and an optional
/// fraction of zeros (`42`, `-7`, `42.0`); no exponent, no spaces.
fn integer(text: &str) -> Option<i64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if !fraction.bytes().all(|b| b == b'0') || (text.contains('.') && fraction.is_empty()) {
        return None;
    }
    let digits = whole.strip_prefix('-').unwrap_or(whole);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    whole.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declared(schema: Value) -> Option<Declared> {
        Declared::of(&schema)
    }

    fn params(schema: Value) -> Vec<(String, String)> {
        match declared(schema) {
            Some(Declared::Params(p)) => p.into_iter().map(|p| (p.header, p.path.join("."))).collect(),
            other => panic!("not valid declarations: {other:?}"),
        }
    }

    fn invalid(schema: Value) -> String {
        match declared(schema) {
            Some(Declared::Invalid(reason)) => reason,
            other => panic!("not invalid: {other:?}"),
        }
    }

    #[test]
    fn declarations_are_read_along_properties_only() {
        let schema = json!({
            "type": "object",
            "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "query": {"type": "string"},
                "target": {"type": "object", "properties": {"shard": {"type": "integer", "x-mcp-header": "Shard"}}},
                "dry": {"type": "boolean", "x-mcp-header": "Dry-Run"},
                // Data, not schemas: a member named like the annotation inside them is nothing.
                "mode": {"type": "string", "enum": [{"x-mcp-header": "X"}], "default": {"x-mcp-header": "Y"}},
                // A property that happens to be named like the annotation.
                "x-mcp-header": {"type": "string"}
            }
        });
        assert_eq!(
            params(schema),
            [
                ("Mcp-Param-Dry-Run".to_string(), "dry".to_string()),
                ("Mcp-Param-Region".to_string(), "region".to_string()),
                ("Mcp-Param-Shard".to_string(), "target.shard".to_string()),
            ]
        );
        assert_eq!(declared(json!({"type": "object", "properties": {"a": {"type": "string"}}})), None);
        assert_eq!(declared(json!(true)), None);
    }

    #[test]
    fn declarations_the_specification_forbids_make_the_tool_invalid() {
        let under = |keyword: &str, sub: Value| invalid(json!({"type": "object", "properties": {"a": {keyword: sub}}}));
        let annotated = json!({"type": "string", "x-mcp-header": "A"});
        for (keyword, sub) in [
            ("items", annotated.clone()),
            ("anyOf", json!([annotated.clone()])),
            ("oneOf", json!([annotated.clone()])),
            ("allOf", json!([annotated.clone()])),
            ("not", annotated.clone()),
            ("if", annotated.clone()),
            ("$defs", json!({"d": annotated.clone()})),
            ("additionalProperties", annotated.clone()),
        ] {
            assert!(under(keyword, sub).contains("not reached through"), "{keyword}");
        }
        assert!(under("items", json!([annotated.clone()])).contains("not reached through"), "draft-07 items");
        assert!(under("dependencies", json!({"b": annotated.clone()})).contains("not reached through"));
        assert!(under("additionalItems", annotated.clone()).contains("not reached through"));
        assert!(invalid(json!({"type": "object", "x-mcp-header": "Root"})).contains("root"));
        let many: serde_json::Map<String, Value> =
            (0..65).map(|i| (format!("p{i}"), json!({"type": "string", "x-mcp-header": format!("H{i}")}))).collect();
        assert!(invalid(json!({"type": "object", "properties": many})).contains("more than 64"));
        let mut deep = json!({"type": "string", "x-mcp-header": "Deep"});
        for _ in 0..17 {
            deep = json!({"type": "object", "properties": {"a": deep}});
        }
        assert!(invalid(deep).contains("deep"));
        let property = |p: Value| invalid(json!({"type": "object", "properties": {"a": p}}));
        assert!(property(json!({"type": "number", "x-mcp-header": "A"})).contains("not of type"));
        assert!(property(json!({"type": ["string", "null"], "x-mcp-header": "A"})).contains("not of type"));
        assert!(property(json!({"x-mcp-header": "A"})).contains("not of type"));
        assert!(property(json!({"type": "string", "x-mcp-header": ""})).contains("token"));
        assert!(property(json!({"type": "string", "x-mcp-header": "Two Words"})).contains("token"));
        assert!(property(json!({"type": "string", "x-mcp-header": "Bad:Colon"})).contains("token"));
        assert!(property(json!({"type": "string", "x-mcp-header": 7})).contains("not a string"));
        let twice = json!({"type": "object", "properties": {
            "a": {"type": "string", "x-mcp-header": "Region"},
            "b": {"type": "string", "x-mcp-header": "region"}
        }});
        assert!(invalid(twice).contains("twice"));
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

    fn region_and_shard() -> Declared {
        declared(json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "shard": {"type": "integer", "x-mcp-header": "Shard"},
            "dry": {"type": "boolean", "x-mcp-header": "Dry"},
            "nested": {"type": "object", "properties": {"zone": {"type": "string", "x-mcp-header": "Zone"}}}
        }}))
        .unwrap()
    }

    #[test]
    fn headers_must_say_what_the_body_says() {
        let declared = region_and_shard();
        let check = |args: &str, headers: &[(&str, &str)], required: bool| {
            check(Some(&declared), Some(&raw(args)), headers, required)
        };
        let all = [
            ("mcp-param-region", "us-west1"),
            ("mcp-param-shard", "42"),
            ("mcp-param-dry", "false"),
            ("mcp-param-zone", "=?base64?SGVsbG8sIOS4lueVjA==?="),
        ];
        let args = r#"{"region":"us-west1","shard":42,"dry":false,"nested":{"zone":"Hello, 世界"}}"#;
        assert_eq!(check(args, &all, true), Ok(()));
        // Numbers compare as numbers.
        assert_eq!(check(r#"{"shard":42}"#, &[("mcp-param-shard", "42.0")], true), Ok(()));
        assert_eq!(check(r#"{"shard":-7}"#, &[("mcp-param-shard", "-7")], true), Ok(()));
        assert_eq!(check(r#"{"shard":42.0}"#, &[("mcp-param-shard", "42")], true), Ok(()));
        // Absent and null arguments are mirrored by no header.
        assert_eq!(check(r#"{"region":null}"#, &[], true), Ok(()));
        assert_eq!(check("{}", &[], true), Ok(()));
        // Values that cannot be spelled as a header are not mirrored.
        assert_eq!(check(r#"{"region":{"a":1}}"#, &[], true), Ok(()));

        let refused = |args: &str, headers: &[(&str, &str)], required: bool, why: &str| {
            let err = check(args, headers, required).unwrap_err();
            assert!(err.contains(why), "{args} {headers:?}: {err}");
        };
        refused(r#"{"region":"eu"}"#, &[("mcp-param-region", "us-west1")], false, "does not match");
        refused(r#"{"shard":42}"#, &[("mcp-param-shard", "43")], false, "does not match");
        refused(r#"{"shard":42}"#, &[("mcp-param-shard", " 42")], false, "does not match");
        refused(r#"{"dry":true}"#, &[("mcp-param-dry", "1")], false, "does not match");
        refused(r#"{"region":"42"}"#, &[("mcp-param-shard", "42")], false, "no \"shard\" argument");
        refused(r#"{"region":{"a":1}}"#, &[("mcp-param-region", "{\"a\":1}")], false, "does not match");
        refused(r#"{"nested":{"zone":"a"}}"#, &[("mcp-param-zone", "=?base64?YQ?=")], false, "does not match");
        refused(r#"{"region":"eu"}"#, &[], true, "missing");
        refused(
            r#"{"region":"eu"}"#,
            &[("mcp-param-region", "eu"), ("mcp-param-region", "eu")],
            false,
            "more than once",
        );
        refused(r#"{"region":"eu"}"#, &[("mcp-param-region", "eu"), ("mcp-param-tenant", "t")], false, "declares");
        refused(r#"{"shard":9007199254740993}"#, &[("mcp-param-shard", "9007199254740993")], false, "does not match");
        // Numbers as exact decimals: no exponent, no rounding, no base64 for what is not a string.
        for sent in ["4.2e1", "42.0000000000000001", "42.", "+42", "=?base64?NDI=?=", "0x2a"] {
            refused(r#"{"shard":42}"#, &[("mcp-param-shard", sent)], false, "does not match");
        }
        refused(r#"{"shard":0}"#, &[("mcp-param-shard", "1e-400")], false, "does not match");
        refused(r#"{"dry":true}"#, &[("mcp-param-dry", "=?base64?dHJ1ZQ==?=")], false, "does not match");
        // Without `required`, a header not sent is not checked.
        assert_eq!(check(r#"{"region":"eu","shard":1}"#, &[("mcp-param-shard", "1")], false), Ok(()));
    }

    #[test]
    fn headers_for_what_was_not_seen_or_declared_invalidly_are_refused() {
        let headers = [("mcp-param-region", "eu")];
        let args = raw(r#"{"region":"eu"}"#);
        assert!(check(None, Some(&args), &headers, true).unwrap_err().contains("list the tools again"));
        assert_eq!(check(None, Some(&args), &[], true), Ok(()));
        let invalid = Declared::Invalid("x-mcp-header on the schema's root".into());
        assert!(check(Some(&invalid), Some(&args), &headers, true).unwrap_err().contains("invalid"));
        assert_eq!(check(Some(&invalid), Some(&args), &[], true), Ok(()));
        // No arguments at all: a header has nothing to mirror.
        let declared = region_and_shard();
        assert!(check(Some(&declared), None, &headers, true).is_err());
        assert_eq!(check(Some(&declared), None, &[], true), Ok(()));
    }
}
