//! Resource documents as operators (or anything that reaches the admin API) send them, and
//! `Config::build` over them: arbitrary text and bytes, and the example fleet edited as text and
//! as values. Parsing is pure, so a refusal changes nothing by construction; what is checked is
//! that nothing panics, every refusal says why, and what is accepted reads back the same from
//! its canonical form (what the control plane stores and agents parse again).

use serde_json::Value;

use super::*;
use crate::config::Config;
use crate::resource::{Admission, Document, yaml_documents};

/// The example fleet, and one document of each kind it lacks.
const FLEET: &str = include_str!("../../../deploy/examples/fleet.yaml");
const MORE: &str = r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {name: warden, labels: {team: platform}}
spec:
  issuer: https://cp.example.com:8443
  keys: {controlPlane: true}
  allowedAlgorithms: [EdDSA]
  maxTokenLifetime: 5m
---
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {name: okta}
spec:
  issuer: https://okta.example.com
  keys: {discovery: true}
  allowedAlgorithms: [RS256, PS256]
  audiences: [https://mcp.example.com/github]
  subjectClaim: client_id
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {name: notes}
spec:
  resource: https://mcp.example.com/notes
  issuers: [corp-idp, warden]
  upstream: https://notes.internal:9000/mcp
  agents: {matchLabels: {zone: a}}
  binding: mtls
  scopes: [notes:read]
  allowedOrigins: [https://app.example.com]
  maxTaskTokenLifetime: 2m
  revokeTaskTokenOnSessionEnd: true
---
apiVersion: warden.dev/v1
kind: Revocation
metadata: {name: leaked}
spec: {issuer: corp-idp, subject: ci-runner, issuedBefore: "2026-11-24T05:00:00Z", expires: "2026-11-25T05:00:00Z"}
---
apiVersion: warden.dev/v1
kind: Revocation
metadata: {name: one-token}
spec: {issuer: okta, jti: t-1}
"#;

fn valid_yaml() -> String {
    format!("{FLEET}\n---\n{MORE}")
}

/// YAML that parsers have been known to choke on: aliases that multiply, merge keys, tags,
/// deep flow nesting, duplicate keys, huge numbers, directives.
fn yaml_snippet() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
            "a0: &a [x, x, x, x, x, x, x, x, x]\na1: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\na2: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\na3: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\na4: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\na5: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\na6: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\na7: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n",
            "base: &b {issuer: x}\nspec:\n  <<: *b\n",
            "spec: !!binary aGVsbG8=\n",
            "spec: !custom {a: 1}\n",
            "metadata: {name: a}\nmetadata: {name: b}\n",
            "? [a, b]\n: c\n",
            "spec: {maxTokenLifetime: 99999999999999999999999h}\n",
            "spec: {clockSkew: -5s}\n",
            "%YAML 1.2\n---\na: 1\n",
            "a: *undefined\n",
            "a: 0x7fffffffffffffffffff\nb: .inf\nc: .nan\nd: -.inf\n",
            "---\n...\n---\n",
            "a: \"\\ud800\"\n",
            "metadata:\n  labels: {\"\": x, \"A\": y}\n",
        ])
        .prop_map(String::from),
        (1..300usize).prop_map(|n| format!("spec: {}1{}\n", "[".repeat(n), "]".repeat(n))),
        (1..200usize).prop_map(|n| format!("spec:\n{}", (0..n).map(|i| format!("{}- \n", " ".repeat(i))).collect::<String>())),
        any::<String>(),
    ]
}

/// The valid documents as text, edited: bytes, whole lines, or a hostile snippet put in.
fn edited_yaml() -> impl Strategy<Value = String> {
    let lines = valid_yaml().lines().count();
    prop_oneof![
        edits().prop_map(|e| String::from_utf8_lossy(&apply(valid_yaml().as_bytes(), &e)).into_owned()),
        (0..lines, 0..lines, any::<bool>()).prop_map(|(a, b, swap)| {
            let text = valid_yaml();
            let mut lines: Vec<&str> = text.lines().collect();
            let (a, b) = (a.min(lines.len() - 1), b.min(lines.len() - 1));
            if swap {
                lines.swap(a, b)
            } else {
                lines.remove(a);
            }
            lines.join("\n")
        }),
        (0..lines, yaml_snippet()).prop_map(|(at, snippet)| {
            let mut lines: Vec<String> = valid_yaml().lines().map(String::from).collect();
            lines.insert(at.min(lines.len()), snippet);
            lines.join("\n")
        }),
    ]
}

/// Every path in a JSON value (object members and array items), depth first.
fn paths(value: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let children: Vec<(String, &Value)> = match value {
        Value::Object(members) => members.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Value::Array(items) => items.iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
        _ => return,
    };
    for (key, child) in children {
        at.push(key);
        out.push(at.clone());
        paths(child, at, out);
        at.pop();
    }
}

/// What is done at a path of a valid document.
#[derive(Clone, Debug)]
enum Change {
    /// Replace the value (parsed from generated JSON; skipped when serde_json refuses it).
    Set(String),
    Remove,
    /// Add a member of this name and value beside it (objects only).
    Add(String, String),
}

fn change() -> impl Strategy<Value = Change> {
    let value = || {
        prop_oneof![
            3 => json().prop_map(|j| j.text),
            1 => prop::sample::select(vec![
                "\"\"", "\"UPPER\"", "\"a..b\"", "\"-a\"", "\"http://idp.example.com\"", "\"https://x#frag\"",
                "\"https://x?q=1\"", "\"file:///etc/passwd\"", "\"0s\"", "\"25h\"", "\"301s\"", "\"1e400s\"",
                "\"HS256\"", "\"none\"", "[]", "{}", "\"9999-12-31T23:59:59Z\"", "\"10000-01-01T00:00:00Z\"",
                "\"[::1]:0\"", "\"permit(principal, action, resource);\"", "\"forbid(principal, action, resource) when { 1 };\"",
            ])
            .prop_map(String::from),
        ]
    };
    prop_oneof![
        4 => value().prop_map(Change::Set),
        1 => Just(Change::Remove),
        1 => (name(), value()).prop_map(|(n, v)| Change::Add(n, v)),
    ]
}

fn edit_value(root: &mut Value, path: &[String], change: &Change) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut at = &mut *root;
    for key in parents {
        at = match at {
            Value::Object(members) => members.get_mut(key),
            Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        }
        .expect("a path of this value");
    }
    let parse = |text: &str| serde_json::from_str::<Value>(text).ok();
    match (at, change) {
        (Value::Object(members), Change::Set(text)) => {
            if let Some(v) = parse(text) {
                members.insert(last.clone(), v);
            }
        }
        (Value::Object(members), Change::Remove) => drop(members.remove(last)),
        (Value::Object(members), Change::Add(name, text)) => {
            if let Some(v) = parse(text) {
                members.insert(name.clone(), v);
            }
        }
        (Value::Array(items), Change::Set(text)) => {
            if let (Some(v), Ok(i)) = (parse(text), last.parse::<usize>()) {
                items[i] = v;
            }
        }
        (Value::Array(items), Change::Remove) => drop(items.remove(last.parse::<usize>().expect("an index"))),
        _ => {}
    }
}

/// The checks every input gets: no panic (the harness), a message with every refusal, and for
/// what is accepted, the same documents and the same verdict from their canonical form.
fn check_documents(values: Vec<Value>) -> Result<(), TestCaseError> {
    let mut docs = Vec::new();
    for value in values {
        match Document::from_json(value, &Admission::default()) {
            Ok(doc) => docs.push(doc),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
    // What the control plane stores, as an agent reads it back.
    let stored: Vec<Document> = docs
        .iter()
        .map(|doc| {
            let canonical = doc.to_canonical_json();
            let again = Document::from_json_bytes(&canonical, &Admission::from_control_plane()).expect("canonical");
            assert_eq!(again.to_canonical_json(), canonical, "the canonical form is a fixed point");
            again
        })
        .collect();
    for (doc, again) in docs.iter().zip(&stored) {
        let mut doc = doc.clone();
        doc.metadata.resource_version = None;
        prop_assert_eq!(&doc, again);
    }
    let built = Config::build(&docs);
    if let Err(e) = &built {
        prop_assert!(!e.to_string().is_empty());
    }
    // The control plane and the agents cannot disagree about validity.
    prop_assert_eq!(built.is_ok(), Config::build(&stored).is_ok(), "{:?}", built.err());
    Ok(())
}

#[test]
fn the_documents_edited_here_are_valid_to_begin_with() {
    let docs: Vec<Document> = yaml_documents(&valid_yaml())
        .unwrap()
        .into_iter()
        .map(|v| Document::from_json(v, &Admission::default()).unwrap())
        .collect();
    assert_eq!(docs.len(), 8);
    Config::build(&docs).unwrap();
}

#[test]
fn a_number_in_a_document_reads_back_from_storage_exactly() {
    // Found by `edited_documents_are_admitted_or_refused_with_a_message`: without serde_json's
    // correctly rounded parsing, this member of a JWK read back one `f64` off, so the stored
    // form of a document was not the form it was read back as.
    let yaml = FLEET.replace("crv: P-256", "crv: P-256\n          x-weight: 2.157012179808385e288");
    let doc = Document::from_json(yaml_documents(&yaml).unwrap().remove(0), &Admission::default()).unwrap();
    let canonical = doc.to_canonical_json();
    assert!(String::from_utf8_lossy(&canonical).contains("2.157012179808385e+288"));
    let again = Document::from_json_bytes(&canonical, &Admission::from_control_plane()).unwrap();
    assert_eq!((again.to_canonical_json(), again), (canonical, doc));
}

proptest! {
    #![proptest_config(cases(1024))]

    /// Any text, and the example fleet edited as text: parsed (YAML), admitted and built
    /// without a panic, refusals with a message, acceptance stable through storage.
    #[test]
    fn yaml_text_is_parsed_or_refused_with_a_message(text in prop_oneof![any::<String>(), yaml_snippet(), edited_yaml()]) {
        match yaml_documents(&text) {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            Ok(values) => check_documents(values)?,
        }
    }

    /// Any bytes as a JSON document (what the admin API and snapshots carry).
    #[test]
    fn json_bytes_are_parsed_or_refused_with_a_message(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            json().prop_map(|j| j.text.into_bytes()),
            edits().prop_map(|e| {
                let doc = &yaml_documents(FLEET).expect("the example parses")[0];
                apply(&serde_json::to_vec(doc).expect("a value serializes"), &e)
            }),
        ]
    ) {
        match Document::from_json_bytes(&bytes, &Admission::default()) {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            Ok(doc) => check_documents(vec![serde_json::from_slice(&doc.to_canonical_json()).expect("canonical")])?,
        }
    }

    /// The valid documents with values replaced, removed or added anywhere in them.
    #[test]
    fn edited_documents_are_admitted_or_refused_with_a_message(
        changes in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), change()), 1..4)
    ) {
        let mut values = yaml_documents(&valid_yaml()).expect("the examples parse");
        for (which, path, change) in &changes {
            let which = which.index(values.len());
            let doc = &mut values[which];
            let mut all = Vec::new();
            paths(doc, &mut Vec::new(), &mut all);
            let path = &all[path.index(all.len())];
            edit_value(doc, path, change);
        }
        check_documents(values)?;
    }
}
