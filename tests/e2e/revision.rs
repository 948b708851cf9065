//! MCP 2026-07-28 end to end through the gateway, with the official Python SDK: a client that
//! discovers the server (`server/discover`, no session, no `initialize`) and calls tools with
//! the per-request envelope, and lists filtered per caller said to be private to it.

use serde_json::{Value, json};
use tests::{mcp_client, post};

use crate::decisions::Fleet;

#[test]
fn a_2026_07_28_client_discovers_without_a_session_and_its_filtered_lists_are_private() {
    let fleet = Fleet::start(&[]);
    let alice = fleet.token("alice", "jti-revision", -10, 600);
    // The SDK's default: probe server/discover, then requests without a session.
    let out = mcp_client(
        &fleet.url(),
        "auto",
        &[
            (&alice, &["list-tools"]),
            (&alice, &["call", "echo", r#"{"text":"hi"}"#]),
            (&alice, &["call", "count", "{}"]),
        ],
    );
    assert_eq!(out[0]["result"], json!(["echo", "seen_headers"]), "{out:?}");
    assert_eq!(out[1]["result"]["text"], json!(["hi"]), "{out:?}");
    assert_eq!(out[2]["error"]["code"], -32001, "{out:?}");
    let decisions = fleet.wait_for_decisions(6);
    let methods: Vec<&str> = decisions.iter().filter_map(|d| d["method"].as_str()).collect();
    assert!(methods.contains(&"server/discover"), "{methods:?}");
    assert!(!methods.contains(&"initialize"), "no handshake at 2026-07-28: {methods:?}");
    let discover = decisions.iter().find(|d| d["method"] == "server/discover").unwrap();
    assert_eq!((&discover["decision"], &discover["subject"]), (&json!("allow"), &json!("alice")), "{discover}");

    // A filtered list, asked for as the revision asks (routing headers, the envelope in _meta):
    // private to this caller, and fresh no longer than the token.
    let body = json!({
        "jsonrpc": "2.0", "id": 9, "method": "tools/list",
        "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
        }},
    });
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/list"),
        ("accept", "application/json, text/event-stream"),
    ];
    let answer = post(&fleet.url(), Some(&alice), &headers, &body.to_string());
    assert_eq!(answer.status, 200, "{}", answer.body);
    let message: Value = answer
        .body
        .lines()
        .find_map(|l| serde_json::from_str(l.strip_prefix("data: ").unwrap_or(l)).ok())
        .unwrap_or_else(|| panic!("a JSON-RPC answer: {}", answer.body));
    assert_eq!(message["result"]["cacheScope"], "private", "{message}");
    let tools: Vec<&str> =
        message["result"]["tools"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(tools, ["echo", "seen_headers"], "{message}");
    if let Some(ttl) = message["result"]["ttlMs"].as_u64() {
        assert!(ttl <= 600_000, "{message}");
    }

    // Trace context in `_meta` (SEP-414), with no `traceparent` header: the record continues
    // it, as it does the header's; the header wins when both are sent.
    let call = |id: u32, trace: &str, header: Option<&str>| {
        let body = json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "traced"}, "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {},
                "traceparent": format!("00-{trace}-00f067aa0ba902b7-01"),
            }},
        });
        let mut headers = vec![
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
            ("accept", "application/json, text/event-stream"),
        ];
        if let Some(header) = header {
            headers.push(("traceparent", header));
        }
        post(&fleet.url(), Some(&alice), &headers, &body.to_string())
    };
    let in_meta = "0af7651916cd43dd8448eb211c80319c";
    assert_eq!(call(10, in_meta, None).status, 200);
    let in_header = "4bf92f3577b34da6a3ce929d0e0e4736";
    let header = format!("00-{in_header}-00f067aa0ba902b7-01");
    assert_eq!(call(11, "1111111111111111111111111111111a", Some(&header)).status, 200);
    let decisions = fleet.wait_for_decisions(9);
    let traced: Vec<&str> = decisions
        .iter()
        .filter(|d| d["method"] == "tools/call" && d["target"] == "echo")
        .filter_map(|d| d["traceId"].as_str())
        .collect();
    assert!(traced.contains(&in_meta), "{traced:?}");
    assert!(traced.contains(&in_header) && !traced.contains(&"1111111111111111111111111111111a"), "{traced:?}");
}

/// The 2026-07-28 per-request envelope for `tools/call` of `tool` with `arguments`.
fn modern_call(id: u32, tool: &str, arguments: Value) -> String {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
        }},
    })
    .to_string()
}

/// The first JSON-RPC message of an answer, JSON or SSE.
fn message_of(body: &str) -> Value {
    body.lines()
        .find_map(|l| serde_json::from_str(l.strip_prefix("data: ").unwrap_or(l)).ok())
        .unwrap_or_else(|| panic!("a JSON-RPC answer: {body}"))
}

#[test]
fn mcp_param_headers_must_say_what_the_body_says() {
    let fleet = Fleet::start(&[]);
    fleet.cp.apply_ok(
        "apiVersion: warden.dev/v1\nkind: Policy\nmetadata: {name: forecast}\nspec:\n  servers: [notes]\n  cedar: |\n    \
         permit(principal, action == Action::\"tools/call\", resource) when { resource.name == \"forecast\" };\n",
    );
    let alice = fleet.token("alice", "jti-param-headers", -10, 600);
    let upstream_calls = || fleet.upstream().process.log_text().matches("forecast for ").count();
    // The SDK at 2026-07-28 lists the tools, learns that `forecast` mirrors `region` into
    // `Mcp-Param-Region`, and sends it; the gateway checks it and so does the SDK's server. An
    // older revision sends no such header and works as before.
    let sdk = |mode: &str, region: &str| {
        let arguments = json!({"region": region, "days": 2}).to_string();
        let out = tests::wait_for_or("the forecast policy in force", String::new, || {
            let out = mcp_client(&fleet.url(), mode, &[(&alice, &["list-then-call", "forecast", &arguments])]);
            (out[0]["ok"] == true).then_some(out)
        });
        out[0]["result"]["text"][0].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(sdk("modern", "eu-west1"), "2 day(s) of sun in eu-west1");
    assert_eq!(sdk("modern", "Zürich "), "2 day(s) of sun in Zürich ", "sent base64-encoded, decoded to compare");
    assert_eq!(sdk("legacy", "eu-west1"), "2 day(s) of sun in eu-west1");
    let before = upstream_calls();

    // Raw requests: the gateway has seen the tool listed, so it knows what it declares.
    let call = |headers: &[(&str, &str)], tool: &str, arguments: Value| {
        let mut all = vec![
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", tool),
            ("accept", "application/json, text/event-stream"),
        ];
        all.extend_from_slice(headers);
        post(&fleet.url(), Some(&alice), &all, &modern_call(7, tool, arguments))
    };
    let eu = json!({"region": "eu-west1"});
    let refused = [
        ("another region in the header", call(&[("mcp-param-region", "us-east1")], "forecast", eu.clone())),
        ("the header missing", call(&[], "forecast", eu.clone())),
        (
            "the header sent twice",
            call(&[("mcp-param-region", "eu-west1"), ("mcp-param-region", "eu-west1")], "forecast", eu.clone()),
        ),
        ("a header for an argument not sent", call(&[("mcp-param-region", "eu-west1")], "forecast", json!({}))),
        ("a header the tool does not declare", call(&[("mcp-param-tenant", "acme")], "echo", json!({"text": "x"}))),
        ("a malformed base64 form", call(&[("mcp-param-region", "=?base64?ZXUtd2VzdDE?=")], "forecast", eu.clone())),
    ];
    for (what, answer) in &refused {
        assert_eq!(answer.status, 400, "{what}: {}", answer.body);
        let message = message_of(&answer.body);
        assert_eq!(message["error"]["code"], -32020, "{what}: {message}");
        assert_eq!(message["id"], 7, "{what}: {message}");
    }
    let agreeing = call(&[("mcp-param-region", "eu-west1")], "forecast", eu.clone());
    assert_eq!(agreeing.status, 200, "{}", agreeing.body);
    assert_eq!(message_of(&agreeing.body)["result"]["content"][0]["text"], "1 day(s) of sun in eu-west1");
    let encoded = call(&[("mcp-param-region", "=?base64?ZXUtd2VzdDE=?=")], "forecast", eu);
    assert_eq!(encoded.status, 200, "the base64 form of the same value: {}", encoded.body);
    assert_eq!(upstream_calls(), before + 2, "no refused call reached the server");

    let mismatches = tests::wait_for_or("the refusals on record", String::new, || {
        let n = fleet.decisions().iter().filter(|d| d["reason"] == "routing_header_mismatch").count();
        (n >= refused.len()).then_some(n)
    });
    assert_eq!(mismatches, refused.len(), "each refusal is on record");
}
