//! `warden-demo-mcp`: a small MCP server for the local demo (`deploy/local/run.sh`), so the
//! demo needs nothing but this repository. It speaks the Streamable HTTP transport's JSON
//! answers (no SSE stream, no sessions: every request stands alone), and knows nothing about
//! identity: it only reports the `X-Warden-*` headers the gateway adds.
//!
//! Tools: `echo` (returns its text), `add` (two numbers), `whoami` (who the gateway said is
//! calling, and whether any credential reached it) and `delete_repository`, the dangerous one
//! policies keep from most callers (it deletes nothing).
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A small MCP server for Warden's local demo.
#[derive(clap::Parser, Debug)]
#[command(version)]
struct Args {
    /// Where to listen (loopback).
    #[arg(long, default_value = "127.0.0.1:3001")]
    listen: SocketAddr,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let app = axum::Router::new().route("/mcp", axum::routing::post(post).get(not_here).delete(not_here));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("warden-demo-mcp listening on http://{}/mcp", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

/// No server-initiated stream and no sessions to end.
async fn not_here() -> StatusCode {
    StatusCode::METHOD_NOT_ALLOWED
}

/// One JSON-RPC message or a batch; notifications are accepted without an answer.
async fn post(headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, axum::Json(error(Value::Null, -32700, "parse error"))).into_response();
    };
    let answers: Vec<Value> = match &message {
        Value::Array(batch) => batch.iter().filter_map(|m| answer(m, &headers)).collect(),
        single => answer(single, &headers).into_iter().collect(),
    };
    match (message.is_array(), answers.len()) {
        (_, 0) => StatusCode::ACCEPTED.into_response(),
        (false, _) => axum::Json(answers.into_iter().next().unwrap_or_default()).into_response(),
        (true, _) => axum::Json(Value::Array(answers)).into_response(),
    }
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn text(text: impl Into<String>) -> Value {
    json!({"content": [{"type": "text", "text": text.into()}], "isError": false})
}

/// The answer to one message (`None` for a notification).
fn answer(message: &Value, headers: &HeaderMap) -> Option<Value> {
    let id = message.get("id")?.clone();
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    Some(match message.get("method").and_then(Value::as_str).unwrap_or_default() {
        "initialize" => {
            let version = params["protocolVersion"].as_str().unwrap_or("2025-11-25");
            result(
                id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": {"name": "warden-demo-mcp", "version": env!("CARGO_PKG_VERSION")},
                }),
            )
        }
        "ping" => result(id, json!({})),
        "tools/list" => result(id, json!({"tools": tools()})),
        "tools/call" => call(id, &params, headers),
        _ => error(id, -32601, "method not found"),
    })
}

fn tools() -> Value {
    let object = |properties: Value, required: &[&str]| json!({"type": "object", "properties": properties, "required": required});
    json!([
        {"name": "echo", "description": "Returns its text.",
         "inputSchema": object(json!({"text": {"type": "string"}}), &["text"])},
        {"name": "add", "description": "Adds two numbers.",
         "inputSchema": object(json!({"a": {"type": "number"}, "b": {"type": "number"}}), &["a", "b"])},
        {"name": "whoami", "description": "Who the gateway says is calling.",
         "inputSchema": object(json!({}), &[])},
        {"name": "delete_repository", "description": "Deletes a repository (in this demo: nothing).",
         "inputSchema": object(json!({"name": {"type": "string"}}), &["name"]),
         "annotations": {"destructiveHint": true}},
    ])
}

fn call(id: Value, params: &Value, headers: &HeaderMap) -> Value {
    let arguments = &params["arguments"];
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    match params["name"].as_str().unwrap_or_default() {
        "echo" => result(id, text(arguments["text"].as_str().unwrap_or_default())),
        "add" => match (arguments["a"].as_f64(), arguments["b"].as_f64()) {
            (Some(a), Some(b)) => result(id, text((a + b).to_string())),
            _ => error(id, -32602, "add takes two numbers, a and b"),
        },
        "whoami" => {
            let credential = ["authorization", "x-api-key"].iter().any(|h| headers.contains_key(*h));
            result(
                id,
                text(format!(
                    "issuer={} subject={} credential-reached-the-server={credential}",
                    header("x-warden-issuer"),
                    header("x-warden-subject")
                )),
            )
        }
        "delete_repository" => {
            result(id, text(format!("deleted {} (a demo: nothing was)", arguments["name"].as_str().unwrap_or("?"))))
        }
        _ => error(id, -32602, "unknown tool"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_what_an_mcp_client_asks_and_refuses_the_rest() {
        let headers = HeaderMap::new();
        let ask = |m: Value| answer(&m, &headers);
        let init = ask(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}),
        );
        assert_eq!(init.unwrap()["result"]["protocolVersion"], "2025-06-18");
        assert!(ask(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).is_none());
        let listed = ask(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).unwrap();
        assert_eq!(listed["result"]["tools"].as_array().map(Vec::len), Some(4));
        let sum = ask(
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 2, "b": 3}}}),
        );
        assert_eq!(sum.unwrap()["result"]["content"][0]["text"], "5");
        let unknown = ask(json!({"jsonrpc": "2.0", "id": 4, "method": "resources/list"})).unwrap();
        assert_eq!(unknown["error"]["code"], -32601);
    }
}
