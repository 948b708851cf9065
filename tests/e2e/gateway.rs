//! The gateway end to end: the official MCP Python SDK as client and as server, the agent in
//! between, tokens minted by PyJWT at an identity provider found by OIDC discovery.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tests::{Answer, ext_authz_client, loopback_addr, mcp_client, mcp_client_with, post, wait_for_or};

/// One agent, `agent-0`, serving `notes`, `bound`, `proofs` (and not `elsewhere`) under POLICY.
struct Fleet {
    fleet: tests::Fleet,
    /// The gateway of server `notes`.
    gateway: String,
    /// The gateway of server `bound` (TLS; requires certificate-bound tokens).
    bound_gateway: String,
    /// The gateway of server `proofs` (requires DPoP-bound tokens).
    dpop_gateway: String,
    /// Where server `elsewhere` (for agents labelled role=other only) would listen.
    elsewhere: String,
    /// The gateway's TLS certificate (self-signed, for the bound gateway's address).
    gateway_ca: std::path::PathBuf,
}

impl std::ops::Deref for Fleet {
    type Target = tests::Fleet;
    fn deref(&self) -> &tests::Fleet {
        &self.fleet
    }
}

impl std::ops::DerefMut for Fleet {
    fn deref_mut(&mut self) -> &mut tests::Fleet {
        &mut self.fleet
    }
}

const POLICY: &str = r#"
    permit(principal, action in [Action::"tools/list", Action::"prompts/list", Action::"resources/list"], resource);
    permit(principal, action == Action::"tools/call", resource)
      when { ["echo", "count", "seen_headers"].contains(resource.name) };
    permit(principal, action == Action::"tools/call", resource)
      when { principal has groups && principal.groups.contains("admins") };
    permit(principal, action == Action::"resources/read", resource) when { resource.uri == "notes://public" };
    permit(principal, action == Action::"prompts/get", resource);
    forbid(principal, action == Action::"tools/call", resource)
      when { context.arguments.hasTag("text") && context.arguments.getTag("text") like "*secret*" };
"#;

impl Fleet {
    fn start() -> Fleet {
        Fleet::start_with(&[])
    }

    /// [`Fleet::start`] with `extra` flags for the agent.
    fn start_with(extra: &[&str]) -> Fleet {
        let builder = tests::Fleet::builder().peers().cp_flags(&[
            "--key-refresh-default",
            "1h",
            "--key-refresh-request-interval",
            "1s",
        ]);
        let dir = builder.dir().to_path_buf();
        let (gateway, bound_gateway, elsewhere) = (loopback_addr(), loopback_addr(), loopback_addr());
        let dpop_gateway = loopback_addr();
        let host = bound_gateway.rsplit_once(':').unwrap().0.to_string();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::IpAddress(host.parse().unwrap())];
        let cert = params.self_signed(&key).unwrap();
        let (gateway_ca, gateway_key) = (dir.join("gateway.crt"), dir.join("gateway.key"));
        std::fs::write(&gateway_ca, cert.pem()).unwrap();
        std::fs::write(&gateway_key, key.serialize_pem()).unwrap();
        let ext_authz = format!("unix:{}", dir.join("authz.sock").display());
        let flags = [
            "--gateway-tls-cert",
            gateway_ca.to_str().unwrap(),
            "--gateway-tls-key",
            gateway_key.to_str().unwrap(),
            "--ext-authz-listen",
            &ext_authz,
        ];
        let fleet = builder.agent_flags(&flags).agent_flags(extra).start();
        let policy: String = POLICY.lines().map(|l| format!("    {l}\n")).collect();
        fleet.cp.apply_ok(&format!(
            r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: test-idp}}
spec:
  issuer: {issuer}
  keys: {{discovery: true}}
  allowedAlgorithms: [ES256, ES384, RS256, PS256, EdDSA]
  maxTokenLifetime: 10m
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: notes}}
spec:
  resource: http://{gateway}/mcp
  issuers: [test-idp]
  upstream: {upstream}
  listen: {gateway}
  scopes: [notes.use]
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: bound}}
spec:
  resource: https://{bound_gateway}/mcp
  issuers: [test-idp]
  upstream: {upstream}
  listen: {bound_gateway}
  binding: mtls
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: proofs}}
spec:
  resource: http://{dpop_gateway}/mcp
  issuers: [test-idp]
  upstream: {upstream}
  listen: {dpop_gateway}
  binding: dpop
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: elsewhere}}
spec:
  resource: http://{elsewhere}/mcp
  issuers: [test-idp]
  upstream: {upstream}
  listen: {elsewhere}
  agents: {{matchLabels: {{role: other}}}}
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {{name: notes-access}}
spec:
  servers: [notes, bound, proofs]
  cedar: |
{policy}"#,
            issuer = fleet.idp().issuer,
            upstream = fleet.upstream().url,
        ));
        fleet.wait_serving(&gateway);
        Fleet { fleet, gateway, bound_gateway, dpop_gateway, elsewhere, gateway_ca }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.gateway)
    }

    /// A token for `sub` on server `notes` with `extra` claims merged in (and `options` for
    /// the IdP: key, kid, attack).
    fn token(&self, sub: &str, extra: Value, options: Value) -> String {
        let now = now();
        let mut claims = json!({
            "iss": self.idp().issuer, "sub": sub, "aud": self.url(), "iat": now, "exp": now + 300,
            "jti": format!("{sub}-{now}-{}", rand_suffix()), "scope": "notes.use",
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        let mut request = json!({ "claims": claims });
        for (k, v) in options.as_object().unwrap() {
            request[k] = v.clone();
        }
        self.idp().mint(&request)
    }

    /// Serves one more `McpServer` `name` in front of `upstream` (with `binding`, if any) under
    /// POLICY plus `extra_policy`; its gateway's address once it listens.
    fn add_server(&self, name: &str, upstream: &str, binding: Option<&str>, extra_policy: &str) -> String {
        let addr = loopback_addr();
        let binding = binding.map(|b| format!("\n  binding: {b}")).unwrap_or_default();
        // POLICY's lines are indented; the extra ones are brought to the same depth.
        let extra: String = extra_policy.lines().map(|l| format!("    {l}\n")).collect();
        let policy: String = format!("{POLICY}\n{extra}").lines().map(|l| format!("    {l}\n")).collect();
        let yaml = format!(
            r#"
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: {name}}}
spec:
  resource: http://{addr}/mcp
  issuers: [test-idp]
  upstream: {upstream}
  listen: {addr}{binding}
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {{name: {name}-access}}
spec:
  servers: [{name}]
  cedar: |
{policy}"#
        );
        self.cp.apply_ok(&yaml);
        self.wait_serving(&addr);
        addr
    }

    /// A token of `sub` for the server whose gateway is at `addr`.
    fn token_for(&self, sub: &str, addr: &str) -> String {
        self.token(sub, json!({ "aud": format!("http://{addr}/mcp") }), json!({}))
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

fn call(tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {"text": "hi"}}})
        .to_string()
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

#[test]
fn real_mcp_clients_get_allowed_tools_only_and_the_server_never_sees_their_token() {
    let fleet = Fleet::start();
    let alice = fleet.token("alice", json!({}), json!({}));
    let admin = fleet.token("root", json!({"groups": ["admins"]}), json!({"key": "eddsa"}));
    let expired = fleet.token("alice", json!({"iat": now() - 600, "exp": now() - 300}), json!({}));
    for mode in ["legacy", "modern"] {
        let steps: [(&str, &[&str]); 15] = [
            (&alice, &["list-tools"]),
            (&alice, &["call", "echo", r#"{"text":"hello"}"#]),
            (&alice, &["call", "delete_repository", r#"{"name":"warden"}"#]),
            (&admin, &["list-tools"]),
            (&admin, &["call", "delete_repository", r#"{"name":"warden"}"#]),
            (&alice, &["count", "3"]),
            (&alice, &["list-resources"]),
            (&alice, &["read", "notes://public"]),
            (&alice, &["read", "notes://secret"]),
            (&alice, &["list-prompts"]),
            (&alice, &["call", "seen_headers", "{}"]),
            (&expired, &["list-tools"]),
            ("-", &["list-tools"]),
            (&alice, &["get-prompt", "review"]),
            (&alice, &["call", "echo", r#"{"text":"the secret plan"}"#]),
        ];
        let out = mcp_client(&fleet.url(), mode, &steps);
        let context = |i: usize| format!("{mode} {:?}: {}", steps[i].1, out[i]);
        // The denied tool is hidden from the list, and refused when called anyway.
        assert_eq!(out[0]["result"], json!(["count", "echo", "seen_headers"]), "{}", context(0));
        assert_eq!(out[1]["result"]["text"], json!(["hello"]), "{}", context(1));
        assert_eq!(out[2]["error"], json!({"code": -32001, "message": "denied by policy"}), "{}", context(2));
        // Admins see and may call everything.
        assert_eq!(
            out[3]["result"],
            json!(["count", "delete_repository", "echo", "forecast", "seen_headers", "weather"]),
            "{}",
            context(3)
        );
        assert_eq!(out[4]["result"]["text"], json!(["deleted warden"]), "{}", context(4));
        // Progress notifications arrive through the SSE stream before the result.
        assert_eq!(out[5]["result"]["progress"], json!(["step 1", "step 2", "step 3"]), "{}", context(5));
        assert_eq!(out[5]["result"]["text"], json!(["counted to 3"]), "{}", context(5));
        // Resources and prompts are filtered and decided the same way.
        assert_eq!(out[6]["result"], json!(["notes://public"]), "{}", context(6));
        assert_eq!(out[7]["result"], json!(["public"]), "{}", context(7));
        assert_eq!(out[8]["error"]["code"], -32001, "{}", context(8));
        assert_eq!(out[9]["result"], json!(["review"]), "{}", context(9));
        assert_eq!(out[13]["result"], json!(["Review this: x"]), "{}", context(13));
        // Policy reads the call's arguments: the same tool is refused for this text.
        assert_eq!(out[14]["error"], json!({"code": -32001, "message": "denied by policy"}), "{}", context(14));
        // The upstream sees the identity context, never the caller's token.
        let seen = out[10]["result"]["text"][0].as_str().unwrap_or_default();
        assert!(seen.contains("x-warden-subject=alice"), "{}", context(10));
        assert!(seen.contains("x-warden-issuer=test-idp"), "{}", context(10));
        assert!(!seen.contains("authorization"), "the token reached the upstream: {}", context(10));
        // Real clients with an expired token or none are turned away at the gateway.
        assert_eq!(out[11]["ok"], false, "{}", context(11));
        assert_eq!(out[12]["ok"], false, "{}", context(12));
    }
    let log = fleet.agent().log_text();
    assert!(log.contains("token refused server=notes reason=expired"), "{log}");
}

#[test]
fn each_bad_token_is_refused_with_its_reason() {
    let fleet = Fleet::start();
    let url = fleet.url();
    let metadata_url = format!("http://{}/.well-known/oauth-protected-resource/mcp", fleet.gateway);

    // No token: 401 pointing at the resource metadata (RFC 9728), which names the issuer.
    let none = post(&url, None, &[], &call("echo"));
    assert_eq!(none.status, 401);
    assert_eq!(none.challenge, format!("Bearer resource_metadata=\"{metadata_url}\""));
    for path in ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"] {
        let doc: Value =
            ureq::get(&format!("http://{}{path}", fleet.gateway)).call().unwrap().body_mut().read_json().unwrap();
        assert_eq!(doc["resource"], url);
        assert_eq!(doc["authorization_servers"], json!([fleet.idp().issuer]));
        assert_eq!(doc["scopes_supported"], json!(["notes.use"]));
    }

    let now = now();
    let cases: Vec<(&str, Value, Value)> = vec![
        ("expired", json!({"iat": now - 600, "exp": now - 120}), json!({})),
        ("not_yet_valid", json!({"nbf": now + 600}), json!({})),
        ("wrong_audience", json!({"aud": "http://elsewhere.example/mcp"}), json!({})),
        ("untrusted_issuer", json!({"iss": "http://impostor.example"}), json!({})),
        ("lifetime_too_long", json!({"exp": now + 3600}), json!({})),
        ("bad_signature", json!({}), json!({"key": "rogue"})),
        ("alg_none", json!({}), json!({"attack": "none"})),
        ("alg_not_allowed", json!({}), json!({"attack": "hs256-public-key"})),
        ("unknown_kid", json!({}), json!({"kid": "retired-key"})),
        ("missing_claim", json!({"sub": null}), json!({})),
    ];
    for (reason, claims, options) in cases {
        let token = fleet.token("alice", claims, options);
        let answer = post(&url, Some(&token), &[], &call("echo"));
        assert_eq!(answer.status, 401, "{reason}: {}", answer.body);
        let expected = format!(
            "Bearer resource_metadata=\"{metadata_url}\", error=\"invalid_token\", error_description=\"{reason}\""
        );
        assert_eq!(answer.challenge, expected, "{reason}");
    }
    // Every algorithm the issuer allows works, signed by PyJWT.
    for key in ["es256", "es384", "rs256", "ps256", "eddsa"] {
        let token = fleet.token("alice", json!({}), json!({"key": key}));
        assert_eq!(post(&url, Some(&token), &[], INITIALIZE).status, 200, "{key}");
    }
    // The agent (labelled role=test) does not serve a server selected for role=other agents:
    // nothing listens at its address.
    assert!(std::net::TcpStream::connect(&fleet.elsewhere).is_err(), "an unselected server is served");
    // A token without the server's required scope: 403 naming it.
    let unscoped = fleet.token("alice", json!({"scope": "other"}), json!({}));
    let answer = post(&url, Some(&unscoped), &[], &call("echo"));
    assert_eq!(answer.status, 403);
    assert!(answer.challenge.ends_with("error=\"insufficient_scope\", scope=\"notes.use\""), "{}", answer.challenge);
}

fn rfc3339(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap();
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

#[test]
fn revoked_tokens_and_subjects_are_refused_once_the_revocation_arrives() {
    let fleet = Fleet::start();
    let url = fleet.url();
    let now = now();
    let leaked = fleet.token("alice", json!({"jti": "leaked-1"}), json!({}));
    let mallory_old = fleet.token("mallory", json!({"iat": now - 30}), json!({}));
    for token in [&leaked, &mallory_old] {
        assert_eq!(post(&url, Some(token), &[], INITIALIZE).status, 200, "valid before the revocation");
    }
    let yaml = format!(
        r#"
apiVersion: warden.dev/v1
kind: Revocation
metadata: {{name: leaked-1}}
spec: {{issuer: test-idp, jti: leaked-1}}
---
apiVersion: warden.dev/v1
kind: Revocation
metadata: {{name: mallory}}
spec: {{issuer: test-idp, subject: mallory, issuedBefore: "{}"}}
"#,
        rfc3339(now - 10)
    );
    let out = fleet.cp.apply(&yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Cached verifications do not outlive the revocation.
    for token in [&leaked, &mallory_old] {
        let refused = wait_for_or(
            "the revocation to reach the agent",
            || fleet.agent().log_text(),
            || Some(post(&url, Some(token), &[], INITIALIZE)).filter(|a| a.status == 401),
        );
        assert!(refused.challenge.ends_with("error_description=\"revoked\""), "{}", refused.challenge);
    }
    // Other tokens of alice, and mallory's tokens issued after the cut-off, still work.
    let other = fleet.token("alice", json!({"jti": "fine-2"}), json!({}));
    let mallory_new = fleet.token("mallory", json!({}), json!({}));
    assert_eq!(post(&url, Some(&other), &[], INITIALIZE).status, 200);
    assert_eq!(post(&url, Some(&mallory_new), &[], INITIALIZE).status, 200);
}

#[test]
fn a_rotated_issuer_key_is_fetched_when_a_token_first_names_it() {
    let fleet = Fleet::start();
    fleet.idp().rotate("es256-2");
    let token = fleet.token("alice", json!({}), json!({"key": "es256-2"}));
    // The first request is refused (the agent does not have the key yet) and makes the agent
    // ask the control plane, whose periodic refresh is an hour away, to refetch now.
    let first = post(&fleet.url(), Some(&token), &[], INITIALIZE);
    assert_eq!(first.status, 401);
    assert!(first.challenge.ends_with("\"unknown_kid\""), "{}", first.challenge);
    wait_for_or(
        "the new key to be accepted",
        || format!("{}\n{}", fleet.agent().log_text(), fleet.cp.process.as_ref().unwrap().log_text()),
        || (post(&fleet.url(), Some(&token), &[], INITIALIZE).status == 200).then_some(()),
    );
}

#[test]
fn malformed_and_mismatched_requests_are_refused_before_the_upstream() {
    let fleet = Fleet::start();
    let url = fleet.url();
    let alice = fleet.token("alice", json!({}), json!({}));
    let error_code = |a: &Answer| serde_json::from_str::<Value>(&a.body).unwrap()["error"]["code"].clone();

    let not_json = post(&url, Some(&alice), &[], "{\"jsonrpc\":");
    assert_eq!((not_json.status, error_code(&not_json)), (400, json!(-32700)), "{}", not_json.body);
    let deep = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{}{}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let deep = post(&url, Some(&alice), &[], &deep);
    assert_eq!((deep.status, error_code(&deep)), (400, json!(-32600)), "{}", deep.body);
    // A body declared larger than the limit is refused before it is read.
    let huge = 2 << 20;
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {alice}\r\ncontent-type: application/json\r\ncontent-length: {huge}\r\n\r\n",
        fleet.gateway
    );
    let mut stream = std::net::TcpStream::connect(&fleet.gateway).unwrap();
    std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
    let mut status_line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut status_line).unwrap();
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
    let nameless = post(&url, Some(&alice), &[], r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#);
    assert_eq!((nameless.status, error_code(&nameless)), (400, json!(-32602)));
    // An argument named twice: policy and the server could each read a different one.
    let twice = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"the secret","text":"hi"}}}"#;
    let twice = post(&url, Some(&alice), &[], twice);
    assert_eq!((twice.status, error_code(&twice)), (400, json!(-32602)), "{}", twice.body);
    assert!(twice.body.contains("params.arguments names an argument twice"), "{}", twice.body);
    let unknown_version = post(&url, Some(&alice), &[("mcp-protocol-version", "1999-01-01")], INITIALIZE);
    assert_eq!(unknown_version.status, 400);

    // One id, one spelling: `-0` would be answered as `0`.
    let odd_id = post(&url, Some(&alice), &[], r#"{"jsonrpc":"2.0","id":-0,"method":"tools/list"}"#);
    assert_eq!((odd_id.status, error_code(&odd_id)), (400, json!(-32600)), "{}", odd_id.body);
    // Completing a resource's arguments is decided as reading it.
    let completion = r#"{"jsonrpc":"2.0","id":9,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"notes://secret"},"argument":{"name":"a","value":"b"}}}"#;
    let denied = post(&url, Some(&alice), &[], completion);
    assert_eq!((denied.status, error_code(&denied)), (200, json!(-32001)), "{}", denied.body);
    // So is subscribing to a resource's updates.
    let subscribe = r#"{"jsonrpc":"2.0","id":10,"method":"resources/subscribe","params":{"uri":"notes://secret"}}"#;
    let denied = post(&url, Some(&alice), &[], subscribe);
    assert_eq!((denied.status, error_code(&denied)), (200, json!(-32001)), "{}", denied.body);
    // Two session ids: the upstream might pick the one not checked here.
    let two = [("mcp-session-id", "a"), ("mcp-session-id", "b")];
    assert_eq!(post(&url, Some(&alice), &two, INITIALIZE).status, 400);
    // A DELETE whose length promises a body that is never forwarded would desync the upstream.
    let head = format!(
        "DELETE /mcp HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {alice}\r\ncontent-length: 5\r\n\r\nhello",
        fleet.gateway
    );
    let mut stream = std::net::TcpStream::connect(&fleet.gateway).unwrap();
    std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
    let mut status_line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut status_line).unwrap();
    assert!(status_line.starts_with("HTTP/1.1 400"), "{status_line}");

    // 2026-07-28: the routing headers must name what the body asks for.
    let modern = [("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"), ("mcp-name", "echo")];
    let mismatch = post(&url, Some(&alice), &modern, &call("delete_repository"));
    assert_eq!((mismatch.status, error_code(&mismatch)), (400, json!(-32020)), "{}", mismatch.body);
    let missing = post(&url, Some(&alice), &modern[..1], &call("echo"));
    assert_eq!((missing.status, error_code(&missing)), (400, json!(-32020)), "{}", missing.body);

    // A browser page from another origin is refused; the resource's own origin is not.
    let evil = post(&url, Some(&alice), &[("origin", "http://evil.example")], INITIALIZE);
    assert_eq!(evil.status, 403);
    let own = format!("http://{}", fleet.gateway);
    assert_eq!(post(&url, Some(&alice), &[("origin", &own)], INITIALIZE).status, 200);

    // A session belongs to the workload that opened it.
    let opened = post(&url, Some(&alice), &[], INITIALIZE);
    let session = opened.session.expect("the upstream opened a session");
    let bob = fleet.token("bob", json!({}), json!({}));
    let ping = r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#;
    let with_session = [("mcp-session-id", session.as_str()), ("mcp-protocol-version", "2025-11-25")];
    assert_eq!(post(&url, Some(&bob), &with_session, ping).status, 404);
    assert_eq!(post(&url, Some(&alice), &with_session, ping).status, 200);

    // An authenticated caller's malformed requests are decisions on record, with their reasons.
    let plain: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let wrong_type = plain
        .post(&url)
        .header("content-type", "text/plain")
        .header("authorization", &format!("Bearer {alice}"))
        .send("{}")
        .unwrap();
    assert_eq!(wrong_type.status().as_u16(), 415);
    let expected = [
        ("malformed_body", "POST"),
        ("body_too_large", "POST"),
        ("missing_name", "tools/call"),
        ("unsupported_protocol_version", "initialize"),
        ("routing_header_mismatch", "tools/call"),
        ("unsupported_media_type", "POST"),
        ("session_header_invalid", "POST"),
        ("body_not_allowed", "DELETE"),
    ];
    let records = wait_for_or(
        "the malformed requests' records",
        || fleet.agent().log_text(),
        || {
            let out = fleet.cp.ctl_ok(&["decisions", "--subject", "alice", "--decision", "deny", "-o", "json"]);
            let records: Vec<Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            let found = |(reason, method): &(&str, &str)| {
                records.iter().any(|r| r["reason"] == *reason && r["method"] == *method)
            };
            expected.iter().all(found).then_some(records)
        },
    );
    assert!(records.iter().all(|r| r["issuer"] == "test-idp"), "{records:#?}");
}

#[test]
fn a_session_id_is_sealed_to_its_workload_and_holds_across_an_agent_restart() {
    let mut fleet = Fleet::start();
    let url = fleet.url();
    let alice = fleet.token("alice", json!({}), json!({}));
    let bob = fleet.token("bob", json!({}), json!({}));
    let ping = r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#;
    let with = |session: &str| [("mcp-session-id", session.to_string()), ("mcp-protocol-version", "2025-11-25".into())];
    let status = |token: &str, session: &str| {
        let headers = with(session);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        post(&url, Some(token), &headers, ping).status
    };
    let session = post(&url, Some(&alice), &[], INITIALIZE).session.expect("the upstream opened a session");
    // The caller sees the gateway's sealed id, never the upstream's own.
    let upstream_id = session.strip_prefix("w1.").and_then(|rest| rest.split_once('.')).map(|(_, id)| id.to_string());
    let upstream_id = upstream_id.unwrap_or_else(|| panic!("a sealed id: {session}"));
    assert_eq!((status(&alice, &session), status(&bob, &session)), (200, 404));

    // After a restart the agent remembers nobody, and still vouches only for alice: before
    // sealing, the first workload to present the id after a restart took the session over.
    fleet.agent_mut().stop();
    fleet.agent_mut().restart();
    assert_eq!(status(&bob, &session), 404, "bob cannot take alice's session after a restart");
    assert_eq!(status(&alice, &session), 200, "alice's session survives the restart");
    // The upstream's own id, or one with a forged seal, is no session at the gateway.
    assert_eq!(status(&alice, &upstream_id), 404);
    let forged = format!("w1.{}.{upstream_id}", "A".repeat(43));
    assert_eq!(status(&alice, &forged), 404);
    // The key is the agent's own, kept owner-only in its data directory.
    let key = fleet.agent().data_dir.join("session.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!((std::fs::read(&key).unwrap().len(), mode & 0o777), (32, 0o600));
}

/// A self-signed client certificate in `dir`: (certificate PEM path, key PEM path, DER).
fn client_certificate(dir: &std::path::Path, name: &str) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![format!("{name}.workload.test")]).unwrap().self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path.to_str().unwrap().into(), key_path.to_str().unwrap().into(), cert.der().to_vec())
}

#[test]
fn certificate_bound_tokens_work_only_with_their_certificate() {
    let fleet = Fleet::start();
    let url = format!("https://{}/mcp", fleet.bound_gateway);
    let (a_cert, a_key, a_der) = client_certificate(fleet.dir.path(), "workload-a");
    let (b_cert, b_key, _) = client_certificate(fleet.dir.path(), "workload-b");
    let now = now();
    let mint = |cnf: Option<Value>| {
        let mut claims = json!({"iss": fleet.idp().issuer, "sub": "alice", "aud": url, "iat": now, "exp": now + 300});
        if let Some(cnf) = cnf {
            claims["cnf"] = cnf;
        }
        fleet.idp().mint(&json!({ "claims": claims }))
    };
    let bound = mint(Some(json!({"x5t#S256": warden_core::token::certificate_thumbprint(&a_der)})));
    let bearer = mint(None);
    let ca = fleet.gateway_ca.to_str().unwrap();
    let with = |cert: &str, key: &str| json!({"ca": ca, "cert": cert, "key": key});
    let op: &[&str] = &["call", "echo", r#"{"text":"bound"}"#];
    // The token's own certificate: the call goes through (the SDK client over mutual TLS).
    let ok = mcp_client_with(&url, "legacy", &with(&a_cert, &a_key), &[(&bound, op)]);
    assert_eq!(ok[0]["result"]["text"], json!(["bound"]), "{ok:?}\n{}", fleet.agent().log_text());
    // Another certificate, or a bearer token with the right certificate: refused, with reasons.
    let stolen = mcp_client_with(&url, "legacy", &with(&b_cert, &b_key), &[(&bound, op)]);
    assert_eq!(stolen[0]["ok"], false, "{stolen:?}");
    let unbound = mcp_client_with(&url, "legacy", &with(&a_cert, &a_key), &[(&bearer, op)]);
    assert_eq!(unbound[0]["ok"], false, "{unbound:?}");
    let log = fleet.agent().log_text();
    assert!(log.contains("token refused server=bound reason=binding_mismatch"), "{log}");
    assert!(log.contains("token refused server=bound reason=binding_required"), "{log}");
    // Without any client certificate the TLS handshake itself fails.
    let anonymous = mcp_client_with(&url, "legacy", &json!({"ca": ca}), &[(&bound, op)]);
    assert_eq!(anonymous[0]["ok"], false, "{anonymous:?}");
}

#[test]
fn envoy_ext_authz_checks_are_answered_like_the_gateway_answers() {
    let fleet = Fleet::start();
    let socket = fleet.dir.path().join("authz.sock");
    wait_for_or("the local check API", || fleet.agent().log_text(), || socket.exists().then_some(()));
    let alice = fleet.token("alice", json!({}), json!({}));
    let expired = fleet.token("alice", json!({"iat": now() - 600, "exp": now() - 300}), json!({}));
    let host = fleet.gateway.clone();
    let check = |token: Option<&str>, body: String, host: &str, extensions: Value| {
        let mut headers =
            json!({":authority": host, ":method": "POST", ":path": "/mcp", "content-type": "application/json"});
        if let Some(token) = token {
            headers["authorization"] = json!(format!("Bearer {token}"));
        }
        json!({"path": "/mcp", "host": host, "headers": headers, "body": body, "context_extensions": extensions})
    };
    let notes = json!({"mcp_server": "notes"});
    let checks = json!([
        check(Some(&alice), call("echo"), &host, notes.clone()),
        check(Some(&alice), call("delete_repository"), &host, notes.clone()),
        check(None, call("echo"), &host, notes.clone()),
        check(Some(&expired), call("echo"), &host, notes.clone()),
        // Envoy names the server per route; the host does not matter.
        check(Some(&alice), call("echo"), "envoy.internal:10000", notes.clone()),
        // A route that names no server: refused, even with the gateway's own host.
        check(Some(&alice), call("echo"), &host, json!({})),
        {"method": "GET", "path": "/.well-known/oauth-protected-resource/mcp", "host": host, "headers": {},
         "context_extensions": notes},
    ]);
    let out = ext_authz_client(&format!("unix:{}", socket.display()), &checks);
    let context = |i: usize| format!("check {i}: {}", out[i]);
    // Allowed: identity headers added, credentials removed before Envoy forwards.
    assert_eq!((out[0]["allowed"].clone(), out[0]["code"].clone()), (json!(true), json!(0)), "{}", context(0));
    assert_eq!(out[0]["headers"]["x-warden-subject"], "alice", "{}", context(0));
    assert!(out[0]["headers_to_remove"].as_array().unwrap().contains(&json!("authorization")), "{}", context(0));
    // A denied tool: the gateway's JSON-RPC error, as Envoy will answer it.
    assert_eq!(
        (out[1]["allowed"].clone(), out[1]["http_status"].clone()),
        (json!(false), json!(200)),
        "{}",
        context(1)
    );
    let error: Value = serde_json::from_str(out[1]["body"].as_str().unwrap()).unwrap();
    assert_eq!(error["error"]["code"], -32001, "{}", context(1));
    // No token, an expired one: 401 with the gateway's challenge; gRPC code UNAUTHENTICATED.
    let metadata = format!("http://{host}/.well-known/oauth-protected-resource/mcp");
    assert_eq!((out[2]["http_status"].clone(), out[2]["code"].clone()), (json!(401), json!(16)), "{}", context(2));
    assert_eq!(out[2]["headers"]["www-authenticate"], format!("Bearer resource_metadata=\"{metadata}\""));
    assert!(
        out[3]["headers"]["www-authenticate"].as_str().unwrap().ends_with("error_description=\"expired\""),
        "{}",
        context(3)
    );
    assert_eq!(out[4]["allowed"], true, "{}", context(4));
    assert_eq!(
        (out[5]["allowed"].clone(), out[5]["http_status"].clone()),
        (json!(false), json!(500)),
        "{}",
        context(5)
    );
    // The metadata document is served through the denied response (status 200).
    assert_eq!(out[6]["http_status"], 200, "{}", context(6));
    let doc: Value = serde_json::from_str(out[6]["body"].as_str().unwrap()).unwrap();
    assert_eq!(doc["resource"], fleet.url(), "{}", context(6));
}

#[test]
fn dpop_bound_tokens_need_a_fresh_proof_by_their_key() {
    let fleet = Fleet::start();
    let url = format!("http://{}/mcp", fleet.dpop_gateway);
    let now = now();
    let claims = |cnf: Option<Value>| {
        let mut c = json!({"iss": fleet.idp().issuer, "sub": "alice", "aud": url, "iat": now, "exp": now + 300});
        if let Some(cnf) = cnf {
            c["cnf"] = cnf;
        }
        fleet.idp().mint(&json!({ "claims": c }))
    };
    // The thumbprint of client a's key, as PyJWT's side computes it.
    let jkt = fleet.idp().dpop("a", "POST", &url, "-")["jkt"].as_str().unwrap().to_string();
    let token = claims(Some(json!({ "jkt": jkt })));
    let with_proof = |proof: &Value| {
        let proof = proof["proof"].as_str().unwrap().to_string();
        post(&url, None, &[("authorization", &format!("DPoP {token}")), ("dpop", &proof)], INITIALIZE)
    };
    let proof = fleet.idp().dpop("a", "POST", &url, &token);
    let ok = with_proof(&proof);
    assert_eq!(ok.status, 200, "{}\n{}", ok.body, fleet.agent().log_text());
    let refused = |answer: Answer, error: &str, why: &str| {
        assert_eq!(answer.status, 401, "{why}: {}", answer.body);
        let tail = format!("error=\"{error}\", error_description=\"{why}\"");
        assert!(
            answer.challenge.starts_with("DPoP algs=\"") && answer.challenge.ends_with(&tail),
            "{}",
            answer.challenge
        );
    };
    refused(with_proof(&proof), "invalid_dpop_proof", "replayed");
    refused(with_proof(&fleet.idp().dpop("b", "POST", &url, &token)), "invalid_token", "binding_mismatch");
    refused(with_proof(&fleet.idp().dpop("a", "GET", &url, &token)), "invalid_dpop_proof", "wrong_request");
    refused(
        with_proof(&fleet.idp().dpop("a", "POST", &url, "another-token")),
        "invalid_dpop_proof",
        "wrong_token_hash",
    );
    // The bound token as a bearer token, and an unbound token: refused by the token rules.
    refused(post(&url, Some(&token), &[], &call("echo")), "invalid_token", "binding_mismatch");
    refused(post(&url, Some(&claims(None)), &[], &call("echo")), "invalid_token", "binding_required");
    let doc: Value = ureq::get(&format!("http://{}/.well-known/oauth-protected-resource/mcp", fleet.dpop_gateway))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(doc["dpop_bound_access_tokens_required"], true);
    assert!(doc["dpop_signing_alg_values_supported"].as_array().unwrap().contains(&json!("ES256")));
}

#[test]
fn a_stopping_agent_lets_calls_in_flight_finish() {
    let mut fleet = Fleet::start();
    let alice = fleet.token("alice", json!({}), json!({}));
    let url = fleet.url();
    let session = post(&url, Some(&alice), &[], INITIALIZE).session.expect("a session");
    let headers = [("mcp-session-id", session.as_str()), ("mcp-protocol-version", "2025-11-25")];
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    assert_eq!(post(&url, Some(&alice), &headers, initialized).status, 202);
    // A call whose answer streams (SSE) for about two seconds.
    let count = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"count","arguments":{"to":40},"_meta":{"progressToken":1}}}"#;
    let call = std::thread::spawn(move || {
        let headers = [("mcp-session-id", session.as_str()), ("mcp-protocol-version", "2025-11-25")];
        post(&url, Some(&alice), &headers, count)
    });
    wait_for_or(
        "the call to reach the upstream",
        || fleet.upstream().process.log_text(),
        || fleet.upstream().process.log_text().contains("count to 40 started").then_some(()),
    );
    fleet.agent_mut().stop();
    let answer = call.join().unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("counted to 40"), "{}\n{}", answer.body, fleet.agent().log_text());
    assert_eq!(answer.body.matches("notifications/progress").count(), 40, "{}", answer.body);
}

// ---------------------------------------------------------------------------------------------
// Hostile upstreams and raw HTTP: what the SDKs would never send, byte for byte.

/// An upstream that answers every request with the raw bytes the test chose (what a broken or
/// hostile MCP server could send) and keeps each request it got (head and body, names lower
/// case as hyper sends them). An empty answer holds the connection open without answering; an
/// answer ending in [`HOLD`] is sent without it, and the connection then held open.
struct RawUpstream {
    url: String,
    answer: std::sync::Arc<std::sync::Mutex<Answerer>>,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

type Answerer = Box<dyn Fn(&str) -> Vec<u8> + Send>;

/// The end of a [`RawUpstream`] answer after which it sends nothing more, nor closes.
const HOLD: &[u8] = b"<hold>";

impl RawUpstream {
    fn start() -> RawUpstream {
        use std::io::{Read, Write};
        let addr = loopback_addr();
        let listener = std::net::TcpListener::bind(&addr).unwrap();
        let answer: std::sync::Arc<std::sync::Mutex<Answerer>> =
            std::sync::Arc::new(std::sync::Mutex::new(Box::new(|_: &str| Vec::new())));
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (answer2, requests2) = (answer.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (answer, requests) = (answer2.clone(), requests2.clone());
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let request = String::from_utf8_lossy(&buf).to_string();
                    requests.lock().unwrap().push(request.clone());
                    let bytes = (answer.lock().unwrap())(&request);
                    let (bytes, hold) = match bytes.strip_suffix(HOLD) {
                        Some(sent) => (sent, true),
                        None => (&bytes[..], bytes.is_empty()),
                    };
                    let _ = stream.write_all(bytes);
                    if hold {
                        std::thread::sleep(std::time::Duration::from_secs(60));
                        return;
                    }
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        RawUpstream { url: format!("http://{addr}/mcp"), answer, requests }
    }

    /// Answers every request from now on with `answer(request)`.
    fn answer(&self, answer: impl Fn(&str) -> Vec<u8> + Send + 'static) {
        *self.answer.lock().unwrap() = Box::new(answer);
    }

    /// Answers every request from now on with `bytes`.
    fn always(&self, bytes: Vec<u8>) {
        self.answer(move |_| bytes.clone());
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// A raw HTTP/1.1 response: the head `status` line and `headers` as sent, then `body`.
fn http_response(status: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n").into_bytes();
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// What a raw request got back.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    /// Header lines, names lower case.
    headers: Vec<(String, String)>,
    /// The body, de-chunked.
    body: Vec<u8>,
}

impl RawAnswer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// POSTs `body` to the gateway at `addr` over a connection of its own, with `headers` (each
/// `name: value`), and reads the whole answer.
fn raw_post(addr: &str, headers: &[&str], body: &str) -> RawAnswer {
    try_raw_post(addr, headers, body).expect("a response head")
}

/// [`raw_post`], `None` when the connection closed before a response head.
fn try_raw_post(addr: &str, headers: &[&str], body: &str) -> Option<RawAnswer> {
    use std::io::{Read, Write};
    let mut request = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    // An aborted answer ends in an error: what arrived before it is what the caller got.
    let _ = stream.read_to_end(&mut raw);
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[head_end..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        let (mut out, mut rest) = (Vec::new(), &body[..]);
        while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..i]).unwrap().trim(), 16).unwrap_or(0);
            if size == 0 || rest.len() < i + 2 + size {
                break;
            }
            out.extend_from_slice(&rest[i + 2..i + 2 + size]);
            rest = &rest[(i + 4 + size).min(rest.len())..];
        }
        body = out;
    }
    Some(RawAnswer { status, headers, body })
}

/// The `data` of each event an SSE client following the HTML Standard would dispatch from
/// `body`: one leading BOM dropped, invalid UTF-8 replaced, lines ended by CRLF, LF or CR, an
/// event dispatched at each empty line (an unterminated last one is not).
fn sse_data(body: &[u8]) -> Vec<String> {
    let body = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
    let text = String::from_utf8_lossy(body);
    let (mut events, mut data, mut rest) = (Vec::new(), String::new(), &text[..]);
    while let Some(i) = rest.find(['\r', '\n']) {
        let line = &rest[..i];
        rest = &rest[i + if rest[i..].starts_with("\r\n") { 2 } else { 1 }..];
        if line.is_empty() {
            if !data.is_empty() {
                events.push(data.strip_suffix('\n').unwrap_or(&data).to_string());
            }
            data.clear();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
            data.push('\n');
        } else if line == "data" {
            data.push('\n');
        }
    }
    events
}

/// A gzip member holding `data` in stored (uncompressed) deflate blocks: what a server's
/// compression middleware sends, readable here without a compressor.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let len = data.len() as u16;
    out.push(1); // final stored block
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&(!crc).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

const TOOLS_LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

/// A tools/list answer naming a tool alice may call and one she may not.
const LIST_ANSWER: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo","inputSchema":{"type":"object"}},{"name":"delete_repository","inputSchema":{"type":"object"}}]}}"#;

const PROGRESS: &str =
    r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#;

/// The tool names of every list in `events`.
fn listed_tools(events: &[String]) -> Vec<Vec<String>> {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| v["result"]["tools"].as_array().cloned())
        .map(|tools| tools.iter().map(|t| t["name"].as_str().unwrap_or_default().to_string()).collect())
        .collect()
}

#[test]
fn list_answers_never_reach_the_caller_unfiltered_whatever_the_upstream_sends() {
    let fleet = Fleet::start();
    let upstream = RawUpstream::start();
    let addr = fleet.add_server("raw", &upstream.url, None, "");
    let alice = fleet.token_for("alice", &addr);
    let bearer = format!("authorization: Bearer {alice}");
    let sse = "content-type: text/event-stream";
    let list_event = format!("event: message\ndata: {LIST_ANSWER}\n\n");

    // Compression: a caller's Accept-Encoding must not make the answer unreadable to the filter.
    let plain = list_event.clone();
    upstream.answer(move |request| {
        if request.to_ascii_lowercase().contains("accept-encoding: gzip") {
            http_response("200 OK", &[sse, "content-encoding: gzip"], &gzip_stored(plain.as_bytes()))
        } else {
            http_response("200 OK", &[sse], plain.as_bytes())
        }
    });
    let answer = raw_post(&addr, &[&bearer, "accept-encoding: gzip"], TOOLS_LIST);
    assert!(!answer.text().contains("delete_repository"), "compressed and unfiltered: {answer:?}");
    assert_eq!(listed_tools(&sse_data(&answer.body)), [["echo"]], "{answer:?}");
    assert!(answer.header_values("content-encoding").is_empty(), "{answer:?}");
    let asked = upstream.requests();
    let asked = asked.last().unwrap().to_ascii_lowercase();
    assert!(asked.contains("accept-encoding: identity"), "{asked}");
    assert!(!asked.contains("gzip"), "{asked}");
    // An upstream that compresses unasked: refused, never passed through.
    upstream.always(http_response("200 OK", &[sse, "content-encoding: gzip"], &gzip_stored(list_event.as_bytes())));
    let answer = raw_post(&addr, &[&bearer], TOOLS_LIST);
    assert_eq!(answer.status, 502, "{answer:?}");
    assert!(!answer.text().contains("delete_repository"), "{answer:?}");

    // Event framing exactly as clients parse it: CR, LF and CRLF line ends in every mix, a
    // byte-order mark, bytes that are not UTF-8.
    let streams: Vec<(&str, Vec<u8>)> = vec![
        ("CRLF then CR", format!("data: {PROGRESS}\r\n\rdata: {LIST_ANSWER}\n\n").into_bytes()),
        ("LF then CRLF", format!("data: {PROGRESS}\n\r\ndata: {LIST_ANSWER}\n\n").into_bytes()),
        ("CR only", format!("data: {PROGRESS}\r\rdata: {LIST_ANSWER}\r\r").into_bytes()),
        ("CRLF", format!("data: {PROGRESS}\r\n\r\ndata: {LIST_ANSWER}\r\n\r\n").into_bytes()),
        ("byte-order mark", format!("\u{feff}data: {LIST_ANSWER}\n\n").into_bytes()),
        ("not UTF-8", {
            let mut bytes = format!("data: {PROGRESS}\n\n").into_bytes();
            let list =
                LIST_ANSWER.replace(r#""name":"delete_repository""#, r#""name":"delete_repository","title":"\xff""#);
            let mut list = list.into_bytes();
            let at = list.windows(4).position(|w| w == b"\\xff").unwrap();
            list.splice(at..at + 4, [0xff]);
            bytes.extend_from_slice(b"data: ");
            bytes.extend_from_slice(&list);
            bytes.extend_from_slice(b"\n\n");
            bytes
        }),
    ];
    for (case, stream) in streams {
        upstream.always(http_response("200 OK", &[sse], &stream));
        let answer = raw_post(&addr, &[&bearer], TOOLS_LIST);
        let events = sse_data(&answer.body);
        assert!(!answer.text().contains("delete_repository"), "{case}: unfiltered: {events:?}");
        assert_eq!(listed_tools(&events), [["echo"]], "{case}: {events:?} {answer:?}");
    }

    // While a list answer is pending, what cannot be filtered ends the stream with an error.
    let nan = LIST_ANSWER.replace(r#""id":1"#, r#""id":1,"n":NaN"#);
    upstream.always(http_response("200 OK", &[sse], format!("data: {PROGRESS}\n\ndata: {nan}\n\n").as_bytes()));
    let answer = raw_post(&addr, &[&bearer], TOOLS_LIST);
    assert!(!answer.text().contains("delete_repository"), "non-JSON event passed: {answer:?}");
    let events = sse_data(&answer.body);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], -32603, "{events:?}");

    // Error statuses are filtered too, and keep their status; a body that cannot be filtered
    // is replaced by the gateway's own.
    upstream.always(http_response(
        "500 Internal Server Error",
        &["content-type: application/json"],
        LIST_ANSWER.as_bytes(),
    ));
    let answer = raw_post(&addr, &[&bearer], TOOLS_LIST);
    assert_eq!(answer.status, 500, "{answer:?}");
    assert!(!answer.text().contains("delete_repository"), "{answer:?}");
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["result"]["tools"], json!([{"name": "echo", "inputSchema": {"type": "object"}}]));
    upstream.always(http_response("404 Not Found", &["content-type: text/plain"], LIST_ANSWER.as_bytes()));
    let answer = raw_post(&addr, &[&bearer], TOOLS_LIST);
    assert_eq!(answer.status, 404, "{answer:?}");
    assert!(!answer.text().contains("delete_repository"), "{answer:?}");
    upstream.always(http_response("400 Bad Request", &[sse], list_event.as_bytes()));
    let answer = raw_post(&addr, &[&bearer], TOOLS_LIST);
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(listed_tools(&sse_data(&answer.body)), [["echo"]], "{answer:?}");

    // Two media types: the gateway and the caller could each read the body as another one.
    upstream.always(http_response("200 OK", &[sse, "content-type: application/json"], LIST_ANSWER.as_bytes()));
    let answer = raw_post(&addr, &[&bearer], TOOLS_LIST);
    assert_eq!(answer.status, 502, "{answer:?}");
    assert!(!answer.text().contains("delete_repository"), "{answer:?}");

    // Answers to anything else stream through as they were sent.
    upstream.always(http_response("200 OK", &[sse], format!("data: {PROGRESS}\r\rdata: x\r\r").as_bytes()));
    let answer = raw_post(&addr, &[&bearer], &call("echo"));
    assert_eq!(answer.body, format!("data: {PROGRESS}\r\rdata: x\r\r").into_bytes());
}

#[test]
fn methods_the_gateway_does_not_know_never_reach_the_upstream() {
    let fleet = Fleet::start();
    let upstream = RawUpstream::start();
    upstream.always(http_response(
        "200 OK",
        &["content-type: application/json"],
        br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
    ));
    // The 2025-11-25 task methods are actions policy can name: here only tasks/get is allowed.
    let permit_tasks = r#"permit(principal, action == Action::"tasks/get", resource);"#;
    let addr = fleet.add_server("raw", &upstream.url, None, permit_tasks);
    let alice = fleet.token_for("alice", &addr);
    let url = format!("http://{addr}/mcp");
    let reached = |method: &str| upstream.requests().iter().any(|r| r.contains(&format!("\"method\":\"{method}\"")));
    let request = |method: &str, params: Value| {
        json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).to_string()
    };

    let unknown = [
        ("Tools/Call", json!({"name": "delete_repository"})),
        ("tools/call ", json!({"name": "delete_repository"})),
        ("TOOLS/LIST", json!({})),
        ("acme/deleteEverything", json!({})),
        ("tasks/cancel", json!({"taskId": "t-1"})),
    ];
    for (method, params) in unknown {
        let answer = post(&url, Some(&alice), &[], &request(method, params));
        let body: Value = serde_json::from_str(&answer.body).unwrap_or_default();
        assert!(!reached(method), "{method:?} reached the upstream: {}", answer.body);
        assert_eq!(answer.status, 200, "{method:?}: {}", answer.body);
        assert_eq!(body["id"], 7, "{method:?}: {}", answer.body);
        let code = if method == "tasks/cancel" { -32001 } else { -32601 };
        assert_eq!(body["error"]["code"], code, "{method:?}: {}", answer.body);
    }
    let unknown_reason = |method: &str| {
        let body = post(&url, Some(&alice), &[], &request(method, json!({}))).body;
        serde_json::from_str::<Value>(&body).unwrap()["error"]["data"]["reason"].clone()
    };
    assert_eq!(unknown_reason("Tools/Call"), "unknown_method");
    assert_eq!(unknown_reason("tasks/result"), "policy_denied");
    // A notification of a kind the gateway does not know: refused with no answer body to give.
    let vendor = json!({"jsonrpc": "2.0", "method": "notifications/acme/wipe"}).to_string();
    assert_eq!(post(&url, Some(&alice), &[], &vendor).status, 403);
    assert!(!reached("notifications/acme/wipe"));
    // One unknown method refuses its whole batch.
    let batch = format!("[{TOOLS_LIST},{}]", request("Tools/Call", json!({"name": "echo"})));
    let answer = post(&url, Some(&alice), &[], &batch);
    let answers: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(answers[1]["error"]["data"]["reason"], "unknown_method", "{}", answer.body);
    assert!(!reached("Tools/Call"));

    // What the protocol defines without a target still passes on the token alone, and what
    // names one is decided like the method it stands for.
    for (method, params) in [
        ("ping", json!({})),
        (
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
        ),
        ("server/discover", json!({})),
        ("logging/setLevel", json!({"level": "info"})),
        ("resources/templates/list", json!({})),
        ("tasks/get", json!({"taskId": "t-1"})),
        (
            "subscriptions/listen",
            json!({"notifications": {"toolsListChanged": true, "resourceSubscriptions": ["notes://public"]}}),
        ),
    ] {
        let answer = post(&url, Some(&alice), &[], &request(method, params));
        assert_eq!(answer.status, 200, "{method}: {}", answer.body);
        assert!(reached(method), "{method} did not reach the upstream: {}", answer.body);
    }
    let secret = json!({"notifications": {"resourceSubscriptions": ["notes://public", "notes://secret"]}});
    let before = upstream.requests().len();
    let answer = post(&url, Some(&alice), &[], &request("subscriptions/listen", secret));
    assert_eq!(serde_json::from_str::<Value>(&answer.body).unwrap()["error"]["code"], -32001, "{}", answer.body);
    assert_eq!(upstream.requests().len(), before, "a subscription to a resource alice may not read was forwarded");

    // Each refusal is a decision record with its stable reason.
    let records = wait_for_or(
        "the unknown methods' records",
        || fleet.agent().log_text(),
        || {
            let out = fleet.cp.ctl_ok(&["decisions", "--reason", "unknown_method", "-o", "json"]);
            let records: Vec<Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            (records.len() >= 7).then_some(records)
        },
    );
    let methods: Vec<&str> = records.iter().filter_map(|r| r["method"].as_str()).collect();
    for method in ["Tools/Call", "tools/call ", "acme/deleteEverything", "notifications/acme/wipe"] {
        assert!(methods.contains(&method), "{method:?} not in {records:#?}");
    }
    assert!(records.iter().all(|r| r["decision"] == "deny" && r["subject"] == "alice"), "{records:#?}");
}

#[test]
fn dpop_replay_memory_is_per_server_kept_for_bound_tokens_and_shared_fairly_between_keys() {
    // Room for 8 proofs per server, 2 per key, so filling it takes a few requests.
    let fleet = Fleet::start_with(&["--dpop-proofs-per-server", "8", "--dpop-proofs-per-key", "2"]);
    let proofs_url = format!("http://{}/mcp", fleet.dpop_gateway);
    let now = now();
    let bound = |url: &str, sub: &str, client: &str| {
        let jkt = fleet.idp().dpop(client, "POST", url, "-")["jkt"].as_str().unwrap().to_string();
        let claims = json!({"iss": fleet.idp().issuer, "sub": sub, "aud": url, "iat": now, "exp": now + 300,
            "scope": "notes.use", "cnf": {"jkt": jkt}});
        fleet.idp().mint(&json!({ "claims": claims }))
    };
    let with_proof = |url: &str, token: &str, client: &str| {
        let proof = fleet.idp().dpop(client, "POST", url, token)["proof"].as_str().unwrap().to_string();
        post(url, None, &[("authorization", &format!("DPoP {token}")), ("dpop", &proof)], INITIALIZE)
    };
    let refused_because = |answer: &Answer| {
        answer.challenge.rsplit_once("error_description=\"").map(|(_, r)| r.trim_end_matches('"').to_string())
    };

    // Mallory holds an ordinary bearer token for `notes` and sends it with throw-away proofs:
    // accepted (it is a bearer token), but those proofs prove nothing and are not remembered.
    let mallory = fleet.token("mallory", json!({}), json!({}));
    for _ in 0..10 {
        let answer = with_proof(&fleet.url(), &mallory, "mallory");
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    // So alice's bound token still works on `proofs`.
    let alice = bound(&proofs_url, "alice", "alice");
    let answer = with_proof(&proofs_url, &alice, "alice");
    assert_eq!(answer.status, 200, "{:?}: {}", refused_because(&answer), answer.body);

    // One key gets its quota of the server's memory, not all of it.
    let answer = with_proof(&proofs_url, &alice, "alice");
    assert_eq!(answer.status, 200, "{:?}", refused_because(&answer));
    let answer = with_proof(&proofs_url, &alice, "alice");
    assert_eq!((answer.status, refused_because(&answer).as_deref()), (401, Some("too_many_proofs")));
    let bob = bound(&proofs_url, "bob", "bob");
    assert_eq!(with_proof(&proofs_url, &bob, "bob").status, 200);

    // A server's memory filled by many keys leaves other servers' untouched.
    for client in ["c", "d", "e"] {
        let token = bound(&proofs_url, client, client);
        for _ in 0..2 {
            let answer = with_proof(&proofs_url, &token, client);
            if answer.status != 200 {
                assert_eq!(refused_because(&answer).as_deref(), Some("replay_cache_full"), "{client}");
            }
        }
    }
    let frank = bound(&proofs_url, "frank", "frank");
    let full = with_proof(&proofs_url, &frank, "frank");
    assert_eq!((full.status, refused_because(&full).as_deref()), (401, Some("replay_cache_full")));
    let other = fleet.add_server("proofs2", &fleet.upstream().url, Some("dpop"), "");
    let other_url = format!("http://{other}/mcp");
    let frank = bound(&other_url, "frank", "frank");
    let answer = with_proof(&other_url, &frank, "frank");
    assert_eq!(answer.status, 200, "{:?}: {}", refused_because(&answer), answer.body);
}

#[test]
fn routing_headers_are_checked_whenever_sent_and_caller_forwarding_headers_stop_here() {
    let fleet = Fleet::start();
    let upstream = RawUpstream::start();
    upstream.always(http_response(
        "200 OK",
        &["content-type: application/json"],
        br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
    ));
    let addr = fleet.add_server("raw", &upstream.url, None, "");
    let alice = fleet.token_for("alice", &addr);
    let url = format!("http://{addr}/mcp");
    let code =
        |a: &Answer| serde_json::from_str::<Value>(&a.body).map(|v| v["error"]["code"].clone()).unwrap_or_default();

    // Under a revision without routing headers, a proxy before the upstream may still route on
    // them: whenever present they must agree with the body, once each.
    let old = ("mcp-protocol-version", "2025-11-25");
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, Headers, String); 5] = [
        ("a name the body does not call", &[old, ("mcp-name", "delete_repository")], call("echo")),
        ("a method the body does not call", &[old, ("mcp-method", "tools/list")], call("echo")),
        ("a name for a method that names none", &[("mcp-name", "echo")], TOOLS_LIST.to_string()),
        ("Mcp-Name twice", &[old, ("mcp-name", "echo"), ("mcp-name", "delete_repository")], call("echo")),
        ("Mcp-Method twice", &[("mcp-method", "tools/call"), ("mcp-method", "tools/list")], call("echo")),
    ];
    for (case, headers, body) in cases {
        let before = upstream.requests().len();
        let answer = post(&url, Some(&alice), headers, &body);
        assert_eq!((answer.status, code(&answer)), (400, json!(-32020)), "{case}: {}", answer.body);
        assert_eq!(upstream.requests().len(), before, "{case}: forwarded");
    }
    let agreeing = post(&url, Some(&alice), &[old, ("mcp-method", "tools/call"), ("mcp-name", "echo")], &call("echo"));
    assert_eq!(agreeing.status, 200, "{}", agreeing.body);

    // Cookies and forwarding claims are the caller's word: they stop at the gateway.
    let sent = [
        ("cookie", "session=caller-chosen"),
        ("forwarded", "for=10.0.0.1;by=trusted-proxy"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-host", "admin.internal"),
        ("x-forwarded-proto", "https"),
        ("x-real-ip", "10.0.0.1"),
        ("x-custom", "kept"),
    ];
    assert_eq!(post(&url, Some(&alice), &sent, &call("echo")).status, 200);
    let request = upstream.requests().last().unwrap().to_ascii_lowercase();
    for (name, _) in &sent[..6] {
        assert!(!request.contains(&format!("\r\n{name}:")), "{name} was forwarded:\n{request}");
    }
    assert!(request.contains("\r\nx-custom: kept"), "{request}");
    assert!(request.contains("\r\nx-warden-subject: alice"), "{request}");
}

#[test]
fn slow_peers_and_connection_floods_are_cut_off() {
    let fleet = Fleet::start_with(&[
        "--upstream-response-timeout",
        "2s",
        "--body-read-timeout",
        "1s",
        "--header-read-timeout",
        "1s",
        "--max-connections-per-listener",
        "3",
    ]);
    let upstream = RawUpstream::start();
    let addr = fleet.add_server("raw", &upstream.url, None, "");
    let alice = fleet.token_for("alice", &addr);
    let bearer = format!("authorization: Bearer {alice}");
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    // An upstream that never answers: the gateway answers for it.
    let started = Instant::now();
    let answer = raw_post(&addr, &[&bearer], &call("echo"));
    assert_eq!(answer.status, 504, "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // An upstream that sends the head of a list answer but never its body.
    upstream.always(http_response("200 OK", &["content-type: application/json", "content-length: 500"], b"{<hold>"));
    let answer = raw_post(&addr, &[&bearer], TOOLS_LIST);
    assert_eq!(answer.status, 504, "{answer:?}");

    // A caller that never finishes its body.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\n{bearer}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"jsonrpc\""
    );
    slow.write_all(head.as_bytes()).unwrap();
    let mut status = [0u8; 12];
    slow.read_exact(&mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 408", "{}", String::from_utf8_lossy(&status));

    // A caller that never finishes its headers (slowloris): cut after the header timeout.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    slow.write_all(b"POST /mcp HTTP/1.1\r\nhost: x\r\n").unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(5), "the connection stayed open {:?}", started.elapsed());

    // Past the cap, connections are closed at once; below it again, served.
    std::thread::sleep(Duration::from_millis(300));
    let idle: Vec<std::net::TcpStream> = (0..3).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    extra.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let started = Instant::now();
    let cut = match extra.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    assert!(cut && started.elapsed() < Duration::from_millis(500), "a connection past the cap was kept open");
    drop(idle);
    upstream.always(http_response(
        "200 OK",
        &["content-type: application/json"],
        br#"{"jsonrpc":"2.0","id":0,"result":{}}"#,
    ));
    wait_for_or(
        "a connection below the cap to be served",
        || fleet.agent().log_text(),
        || try_raw_post(&addr, &[&bearer], INITIALIZE).filter(|a| a.status == 200).map(drop),
    );
}
