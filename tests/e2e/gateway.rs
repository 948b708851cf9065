//! The gateway end to end: the official MCP Python SDK as client and as server, the agent in
//! between, tokens minted by PyJWT at an identity provider found by OIDC discovery.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tests::{
    Agent, Answer, ControlPlane, McpUpstream, MintingIdp, ext_authz_client, loopback_addr, mcp_client, mcp_client_with,
    post, wait_for_or,
};

/// Everything one test needs running.
struct Fleet {
    idp: MintingIdp,
    upstream: McpUpstream,
    cp: ControlPlane,
    agent: Agent,
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
    dir: tempfile::TempDir,
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
        let dir = tempfile::tempdir().unwrap();
        let idp = MintingIdp::start(dir.path());
        let upstream = McpUpstream::start(dir.path());
        let cp = ControlPlane::start(
            dir.path(),
            &["--allow-http-issuers", "--key-refresh-default", "1h", "--key-refresh-request-interval", "1s"],
        );
        let token = cp.join_token("5m");
        let (gateway, bound_gateway, elsewhere) = (loopback_addr(), loopback_addr(), loopback_addr());
        let dpop_gateway = loopback_addr();
        let host = bound_gateway.rsplit_once(':').unwrap().0.to_string();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::IpAddress(host.parse().unwrap())];
        let cert = params.self_signed(&key).unwrap();
        let (gateway_ca, gateway_key) = (dir.path().join("gateway.crt"), dir.path().join("gateway.key"));
        std::fs::write(&gateway_ca, cert.pem()).unwrap();
        std::fs::write(&gateway_key, key.serialize_pem()).unwrap();
        let ext_authz = format!("unix:{}", dir.path().join("authz.sock").display());
        let flags = [
            "--gateway-tls-cert",
            gateway_ca.to_str().unwrap(),
            "--gateway-tls-key",
            gateway_key.to_str().unwrap(),
            "--ext-authz-listen",
            &ext_authz,
        ];
        let agent = Agent::start_with(dir.path(), "agent-0", &[&cp.address], Some(&token), &flags);
        let policy: String = POLICY.lines().map(|l| format!("    {l}\n")).collect();
        let yaml = format!(
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
            issuer = idp.issuer,
            upstream = upstream.url,
        );
        let out = cp.apply(&yaml);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let fleet =
            Fleet { idp, upstream, cp, agent, gateway, bound_gateway, dpop_gateway, elsewhere, gateway_ca, dir };
        let metadata = format!("http://{}/.well-known/oauth-protected-resource/mcp", fleet.gateway);
        wait_for_or("the gateway to serve", || fleet.agent.log_text(), || ureq::get(&metadata).call().ok().map(|_| ()));
        fleet
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.gateway)
    }

    /// A token for `sub` on server `notes` with `extra` claims merged in (and `options` for
    /// the IdP: key, kid, attack).
    fn token(&self, sub: &str, extra: Value, options: Value) -> String {
        let now = now();
        let mut claims = json!({
            "iss": self.idp.issuer, "sub": sub, "aud": self.url(), "iat": now, "exp": now + 300,
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
        self.idp.mint(&request)
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
        assert_eq!(out[3]["result"].as_array().map(Vec::len), Some(4), "{}", context(3));
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
    let log = fleet.agent.log_text();
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
        assert_eq!(doc["authorization_servers"], json!([fleet.idp.issuer]));
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
            || fleet.agent.log_text(),
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
    fleet.idp.rotate("es256-2");
    let token = fleet.token("alice", json!({}), json!({"key": "es256-2"}));
    // The first request is refused (the agent does not have the key yet) and makes the agent
    // ask the control plane, whose periodic refresh is an hour away, to refetch now.
    let first = post(&fleet.url(), Some(&token), &[], INITIALIZE);
    assert_eq!(first.status, 401);
    assert!(first.challenge.ends_with("\"unknown_kid\""), "{}", first.challenge);
    wait_for_or(
        "the new key to be accepted",
        || format!("{}\n{}", fleet.agent.log_text(), fleet.cp.process.as_ref().unwrap().log_text()),
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
        let mut claims = json!({"iss": fleet.idp.issuer, "sub": "alice", "aud": url, "iat": now, "exp": now + 300});
        if let Some(cnf) = cnf {
            claims["cnf"] = cnf;
        }
        fleet.idp.mint(&json!({ "claims": claims }))
    };
    let bound = mint(Some(json!({"x5t#S256": warden_core::token::certificate_thumbprint(&a_der)})));
    let bearer = mint(None);
    let ca = fleet.gateway_ca.to_str().unwrap();
    let with = |cert: &str, key: &str| json!({"ca": ca, "cert": cert, "key": key});
    let op: &[&str] = &["call", "echo", r#"{"text":"bound"}"#];
    // The token's own certificate: the call goes through (the SDK client over mutual TLS).
    let ok = mcp_client_with(&url, "legacy", &with(&a_cert, &a_key), &[(&bound, op)]);
    assert_eq!(ok[0]["result"]["text"], json!(["bound"]), "{ok:?}\n{}", fleet.agent.log_text());
    // Another certificate, or a bearer token with the right certificate: refused, with reasons.
    let stolen = mcp_client_with(&url, "legacy", &with(&b_cert, &b_key), &[(&bound, op)]);
    assert_eq!(stolen[0]["ok"], false, "{stolen:?}");
    let unbound = mcp_client_with(&url, "legacy", &with(&a_cert, &a_key), &[(&bearer, op)]);
    assert_eq!(unbound[0]["ok"], false, "{unbound:?}");
    let log = fleet.agent.log_text();
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
    wait_for_or("the local check API", || fleet.agent.log_text(), || socket.exists().then_some(()));
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
        let mut c = json!({"iss": fleet.idp.issuer, "sub": "alice", "aud": url, "iat": now, "exp": now + 300});
        if let Some(cnf) = cnf {
            c["cnf"] = cnf;
        }
        fleet.idp.mint(&json!({ "claims": c }))
    };
    // The thumbprint of client a's key, as PyJWT's side computes it.
    let jkt = fleet.idp.dpop("a", "POST", &url, "-")["jkt"].as_str().unwrap().to_string();
    let token = claims(Some(json!({ "jkt": jkt })));
    let with_proof = |proof: &Value| {
        let proof = proof["proof"].as_str().unwrap().to_string();
        post(&url, None, &[("authorization", &format!("DPoP {token}")), ("dpop", &proof)], INITIALIZE)
    };
    let proof = fleet.idp.dpop("a", "POST", &url, &token);
    let ok = with_proof(&proof);
    assert_eq!(ok.status, 200, "{}\n{}", ok.body, fleet.agent.log_text());
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
    refused(with_proof(&fleet.idp.dpop("b", "POST", &url, &token)), "invalid_token", "binding_mismatch");
    refused(with_proof(&fleet.idp.dpop("a", "GET", &url, &token)), "invalid_dpop_proof", "wrong_request");
    refused(with_proof(&fleet.idp.dpop("a", "POST", &url, "another-token")), "invalid_dpop_proof", "wrong_token_hash");
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
        || fleet.upstream.process.log_text(),
        || fleet.upstream.process.log_text().contains("count to 40 started").then_some(()),
    );
    fleet.agent.stop();
    let answer = call.join().unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("counted to 40"), "{}\n{}", answer.body, fleet.agent.log_text());
    assert_eq!(answer.body.matches("notifications/progress").count(), 40, "{}", answer.body);
}
