//! Token exchange and fleet-wide revocation end to end: subject tokens minted by PyJWT, exchanged
//! at the control plane's token service over HTTPS for task tokens, presented through the agent's
//! gateway with the official MCP Python SDK as client and server.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Value, json};
use tests::{ControlPlane, loopback_addr, mcp_client, post, wait_for_or};

const POLICY: &str = r#"
    permit(principal, action in [Action::"tools/list", Action::"tools/call"], resource);
    permit(principal in Issuer::"test-idp", action == Action::"token/exchange", resource in Server::"notes")
      when { ["echo", "count", "seen_headers"].contains(resource.name) && principal.subject != "bob" };
    permit(principal, action == Action::"token/exchange", resource in Server::"other");
"#;

/// One agent, `agent-0`, serving `notes` and `other` for task tokens of the control plane's
/// token service.
struct Fleet {
    fleet: tests::Fleet,
    /// `https://127.0.0.1:<port>`: the token service, and the issuer of task tokens.
    service: String,
    gateway: String,
    other_gateway: String,
    http: ureq::Agent,
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

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

impl Fleet {
    fn start() -> Fleet {
        Fleet::start_with(&[])
    }

    /// With `extra` control-plane flags.
    fn start_with(extra: &[&str]) -> Fleet {
        let token_listen = loopback_addr();
        let token_host = token_listen.rsplit_once(':').unwrap().0;
        let flags = ["--token-listen", &token_listen, "--server-name", token_host, "--signing-key-publish-delay", "0s"];
        let fleet = tests::Fleet::builder().peers().cp_flags(&flags).cp_flags(extra).start();
        let (gateway, other_gateway) = (loopback_addr(), loopback_addr());
        let service = format!("https://{token_listen}");
        let policy: String = POLICY.lines().map(|l| format!("    {l}\n")).collect();
        fleet.cp.apply_ok(&format!(
            r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: test-idp}}
spec:
  issuer: {issuer}
  keys: {{discovery: true}}
  allowedAlgorithms: [ES256]
  maxTokenLifetime: 10m
---
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: warden}}
spec:
  issuer: {service}
  keys: {{controlPlane: true}}
  allowedAlgorithms: [EdDSA]
  maxTokenLifetime: 10m
  clockSkew: 0s
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: notes}}
spec:
  resource: http://{gateway}/mcp
  issuers: [warden]
  upstream: {upstream}
  listen: {gateway}
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: other}}
spec:
  resource: http://{other_gateway}/mcp
  issuers: [warden]
  upstream: {upstream}
  listen: {other_gateway}
  maxTaskTokenLifetime: 2m
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {{name: tasks}}
spec:
  cedar: |
{policy}"#,
            issuer = fleet.idp().issuer,
            upstream = fleet.upstream().url,
        ));
        let http = https_client(&fleet.cp, None);
        fleet.wait_serving(&gateway);
        Fleet { fleet, service, gateway, other_gateway, http }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.gateway)
    }

    /// `sub`'s identity token from the IdP, for the token service.
    fn subject_token(&self, sub: &str) -> String {
        let now = now();
        let claims = json!({"iss": self.idp().issuer, "sub": sub, "aud": self.service, "iat": now, "exp": now + 600,
                            "jti": format!("{sub}-{}", rand::random::<u64>())});
        self.idp().mint(&json!({ "claims": claims }))
    }

    /// POSTs a form to the token service: (status, JSON body).
    fn form(&self, path: &str, pairs: &[(&str, &str)], headers: &[(&str, &str)]) -> (u16, Value) {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        let mut request = self
            .http
            .post(format!("{}{path}", self.service))
            .header("content-type", "application/x-www-form-urlencoded");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let mut response = request.send(body).expect("the token service answers");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Exchanges `subject_token` for a task token on `resource` with `extra` parameters.
    fn exchange(&self, subject_token: &str, resource: &str, extra: &[(&str, &str)]) -> (u16, Value) {
        self.exchange_with(subject_token, resource, extra, &[])
    }

    fn exchange_with(
        &self,
        subject_token: &str,
        resource: &str,
        extra: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut pairs = vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", subject_token),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("resource", resource),
        ];
        pairs.extend_from_slice(extra);
        self.form("/token", &pairs, headers)
    }

    /// A task token for `tools` on notes, once the service signs.
    fn task_token(&self, subject_token: &str, scope: &str) -> String {
        let url = self.url();
        let (status, body) = wait_for_or(
            "the token service to issue a task token",
            || self.cp.process.as_ref().map(|p| p.log_text()).unwrap_or_default(),
            || Some(self.exchange(subject_token, &url, &[("scope", scope)])).filter(|(s, _)| *s != 503),
        );
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    /// Waits until every agent applied the control plane's current configuration.
    fn converge(&self) {
        self.cp.wait_converged(&["agent-0"], self.cp.version());
    }
}

/// A client of the token service, which presents a certificate from the fleet CA; with
/// `client` (certificate PEM, key PEM), one that proves a certificate of its own.
pub(crate) fn https_client(cp: &ControlPlane, client: Option<(&str, &str)>) -> ureq::Agent {
    let ca = std::fs::read(cp.data_dir.join("ca.crt")).unwrap();
    let ca = ureq::tls::Certificate::from_pem(&ca).unwrap().to_owned();
    let client = client.map(|(cert, key)| {
        let cert = ureq::tls::Certificate::from_pem(cert.as_bytes()).unwrap().to_owned();
        let key = ureq::tls::PrivateKey::from_pem(key.as_bytes()).unwrap().to_owned();
        ureq::tls::ClientCert::new_with_certs(&[cert], key)
    });
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
        .client_cert(client)
        .build();
    ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().into()
}

fn claims(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

fn call(tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {"text": "hi"}}})
        .to_string()
}

/// The reason in a 401's challenge.
fn refusal(answer: &tests::Answer) -> String {
    assert_eq!(answer.status, 401, "{}", answer.body);
    answer.challenge.rsplit_once("error_description=\"").map(|(_, r)| r.trim_end_matches('"').to_string()).unwrap()
}

#[test]
fn a_workload_exchanges_its_identity_for_a_task_token_that_opens_only_its_tools() {
    let fleet = Fleet::start();
    let alice = fleet.subject_token("alice");
    let token = fleet.task_token(&alice, "tool:echo");

    // The task token: the workload, one server, the tools granted, minutes to live.
    let c = claims(&token);
    assert_eq!(c["iss"], fleet.service);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["aud"], fleet.url());
    assert_eq!(c["subject_iss"], fleet.idp().issuer);
    assert_eq!(c["tools"], json!(["echo"]));
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300, "the default lifetime");
    assert!(c["jti"].as_str().is_some_and(|j| j.len() >= 22));
    assert!(c.get("cnf").is_none(), "no key was proved: a bearer token");

    // Through the gateway with the MCP SDK: the granted tool works, another is refused (policy
    // alone would allow it) and hidden from the list.
    let steps: [(&str, &[&str]); 3] = [
        (&token, &["list-tools"]),
        (&token, &["call", "echo", r#"{"text":"hello"}"#]),
        (&token, &["call", "delete_repository", r#"{"name":"warden"}"#]),
    ];
    let out = mcp_client(&fleet.url(), "modern", &steps);
    assert_eq!(out[0]["result"], json!(["echo"]), "{}", out[0]);
    assert_eq!(out[1]["result"]["text"], json!(["hello"]), "{}", out[1]);
    assert_eq!(out[2]["error"]["code"], -32001, "{}", out[2]);

    // Another server does not accept it; the IdP token itself is no good at the gateway either.
    let other = format!("http://{}/mcp", fleet.other_gateway);
    assert_eq!(refusal(&post(&other, Some(&token), &[], &call("echo"))), "wrong_audience");
    assert_eq!(refusal(&post(&fleet.url(), Some(&alice), &[], &call("echo"))), "issuer_not_allowed");

    // Lifetimes: capped by the server's maximum (2m on `other`) and the issuer's (10m).
    let (status, body) = fleet.exchange(&alice, &other, &[("scope", "tool:echo"), ("expires_in", "3600")]);
    assert_eq!((status, body["expires_in"].as_i64()), (200, Some(120)), "{body}");
    // (and by the subject token's own expiry, which is a little under 10m away by now).
    let (status, body) = fleet.exchange(&alice, &fleet.url(), &[("scope", "tool:echo"), ("expires_in", "3600")]);
    assert!(status == 200 && (590..=600).contains(&body["expires_in"].as_i64().unwrap()), "{body}");
    // RFC 9396 authorization_details ask for tools too, and are answered in kind.
    let details = json!([{"type": "mcp_tools", "locations": [fleet.url()], "tools": ["count"]}]).to_string();
    let (status, body) = fleet.exchange(&alice, &fleet.url(), &[("authorization_details", &details)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["authorization_details"][0]["tools"], json!(["count"]));
    assert_eq!(claims(body["access_token"].as_str().unwrap())["tools"], json!(["count"]));

    // Delegation: an actor acting for alice is named in the task token's `act` claim.
    let runner = fleet.subject_token("ci-runner");
    let (status, body) = fleet.exchange(
        &alice,
        &fleet.url(),
        &[
            ("scope", "tool:echo"),
            ("actor_token", &runner),
            ("actor_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let delegated = claims(body["access_token"].as_str().unwrap());
    assert_eq!(delegated["sub"], "alice");
    assert_eq!(delegated["act"], json!({"sub": "ci-runner", "iss": fleet.idp().issuer}));
    // The actor is put to policy too: one that may not be granted the tools itself (bob) cannot
    // act for alice, who may.
    let bob_actor = fleet.subject_token("bob");
    let (status, body) = fleet.exchange(
        &alice,
        &fleet.url(),
        &[
            ("scope", "tool:echo"),
            ("actor_token", &bob_actor),
            ("actor_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ],
    );
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("echo"), "{body}");

    // An expired task token is refused.
    let (_, short) = fleet.exchange(&alice, &fleet.url(), &[("scope", "tool:echo"), ("expires_in", "1")]);
    let short = short["access_token"].as_str().unwrap().to_string();
    assert_eq!(post(&fleet.url(), Some(&short), &[], INITIALIZE).status, 200);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(refusal(&post(&fleet.url(), Some(&short), &[], &call("echo"))), "expired");

    // What the exchange refuses, with RFC 6749/8693 error codes.
    let bob = fleet.subject_token("bob");
    let for_notes = fleet.url();
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let refused: [Case; 6] = [
        (alice.clone(), vec![("scope", "tool:delete_repository")], "invalid_scope"),
        (bob.clone(), vec![("scope", "tool:echo")], "invalid_scope"),
        (alice.clone(), vec![("scope", "notes.admin tool:echo")], "invalid_scope"),
        (alice.clone(), vec![], "invalid_scope"),
        ("not-a-token".into(), vec![("scope", "tool:echo")], "invalid_grant"),
        (token.clone(), vec![("scope", "tool:echo")], "invalid_grant"),
    ];
    for (subject, extra, code) in refused {
        let (status, body) = fleet.exchange(&subject, &for_notes, &extra);
        assert_eq!((status, body["error"].as_str()), (400, Some(code)), "{extra:?}: {body}");
        assert!(!body.to_string().contains(&subject[..subject.len().min(40)]), "errors never echo a token");
    }
    let (status, body) = fleet.exchange(&alice, "http://127.0.0.1:1/unknown", &[("scope", "tool:echo")]);
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")), "{body}");
    // A token for an MCP server is not a token for the token service.
    let now = now();
    let misdirected =
        fleet.idp().mint(&json!({"claims": {"iss": fleet.idp().issuer, "sub": "alice", "aud": fleet.url(),
        "iat": now, "exp": now + 300}}));
    let (status, body) = fleet.exchange(&misdirected, &for_notes, &[("scope", "tool:echo")]);
    assert_eq!(body["error_description"], "subject_token refused: wrong_audience", "{status}");

    // Metadata (RFC 8414) and the published keys.
    let metadata: Value = fleet
        .http
        .get(format!("{}/.well-known/oauth-authorization-server", fleet.service))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(metadata["token_endpoint"], format!("{}/token", fleet.service));
    assert_eq!(metadata["revocation_endpoint"], format!("{}/revoke", fleet.service));
    assert_eq!(metadata["grant_types_supported"], json!(["urn:ietf:params:oauth:grant-type:token-exchange"]));
    let jwks: Value =
        fleet.http.get(format!("{}/jwks.json", fleet.service)).call().unwrap().body_mut().read_json().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap(),
    )
    .unwrap();
    let kids: Vec<&Value> = jwks["keys"].as_array().unwrap().iter().map(|k| &k["kid"]).collect();
    assert!(kids.contains(&&header["kid"]), "{jwks} {header}");
    assert!(jwks["keys"].as_array().unwrap().iter().all(|k| k.get("d").is_none()), "public halves only");

    // Every exchange is on record, named by the same jti hash as the decisions made with the
    // token it issued.
    let records = || -> Vec<Value> {
        let out = fleet.cp.ctl_ok(&["decisions", "--limit", "1000", "-o", "json"]);
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let found = wait_for_or(
        "the exchange and the gateway's decisions on record",
        || format!("{:?}", records()),
        || {
            let all = records();
            let exchange = all
                .iter()
                .find(|r| r["via"] == "token-exchange" && r["decision"] == "allow" && r["target"] == "echo")?
                .clone();
            let decision = all.iter().find(|r| r["via"] == "gateway" && r["jtiHash"] == exchange["jtiHash"])?.clone();
            let denied = all.iter().find(|r| r["via"] == "token-exchange" && r["subject"] == "bob")?.clone();
            Some((exchange, decision, denied))
        },
    );
    let (exchange, decision, denied) = found;
    assert_eq!(exchange["agent"], "control-plane");
    assert_eq!(exchange["subject"], "alice");
    assert_eq!(exchange["method"], "token/exchange");
    assert_eq!(decision["subject"], "alice");
    assert!(records().iter().any(|r| r["via"] == "token-exchange" && r["actor"] == "test-idp/ci-runner"));
    assert_eq!((denied["decision"].as_str(), denied["reason"].as_str()), (Some("deny"), Some("policy_denied")));
}

#[test]
fn bound_task_tokens_need_their_key_and_revocation_reaches_the_fleet_and_survives_a_restart() {
    let mut fleet = Fleet::start();
    let alice = fleet.subject_token("alice");
    let token_endpoint = format!("{}/token", fleet.service);

    // DPoP at the exchange binds the task token to the client's key.
    let proof = fleet.idp().dpop("client-a", "POST", &token_endpoint, "");
    let _ = fleet.task_token(&alice, "tool:echo"); // the service signs by now
    // A proof sent with a subject token that does not verify is not remembered: nobody without
    // a valid identity fills the replay memory, or spends a proof someone else will send.
    let early = fleet.idp().dpop("client-b", "POST", &token_endpoint, "");
    let early = early["proof"].as_str().unwrap();
    let (status, body) =
        fleet.exchange_with("not-a-token", &fleet.url(), &[("scope", "tool:echo")], &[("dpop", early)]);
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    let (status, body) = fleet.exchange_with(&alice, &fleet.url(), &[("scope", "tool:echo")], &[("dpop", early)]);
    assert_eq!(status, 200, "the proof was not spent by the refused exchange: {body}");
    let (status, body) = fleet.exchange_with(
        &alice,
        &fleet.url(),
        &[("scope", "tool:echo")],
        &[("dpop", proof["proof"].as_str().unwrap())],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let bound = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims(&bound)["cnf"]["jkt"], proof["jkt"]);
    // Stolen and presented without the key: refused.
    assert_eq!(refusal(&post(&fleet.url(), Some(&bound), &[], &call("echo"))), "binding_mismatch");
    let with_key = fleet.idp().dpop("client-a", "POST", &fleet.url(), &bound);
    let dpop_headers =
        [("authorization", format!("DPoP {bound}")), ("dpop", with_key["proof"].as_str().unwrap().into())];
    let dpop_headers: Vec<(&str, &str)> = dpop_headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let answer = post(&fleet.url(), None, &dpop_headers, INITIALIZE);
    assert_eq!(answer.status, 200, "{} {}", answer.challenge, answer.body);
    // A certificate proved at the exchange (mutual TLS, RFC 8705) binds the task token to it.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["workload.example".to_string()]).unwrap().self_signed(&key).unwrap();
    let with_cert = https_client(&fleet.cp, Some((&cert.pem(), &key.serialize_pem())));
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", alice.as_str()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("resource", fleet.url().as_str()),
            ("scope", "tool:echo"),
        ])
        .finish();
    let mut response =
        with_cert.post(&token_endpoint).header("content-type", "application/x-www-form-urlencoded").send(body).unwrap();
    let body: Value = response.body_mut().read_json().unwrap();
    let cert_bound = body["access_token"].as_str().expect("a task token").to_string();
    let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(<sha2::Sha256 as sha2::Digest>::digest(cert.der().as_ref()));
    assert_eq!(claims(&cert_bound)["cnf"]["x5t#S256"], thumbprint);
    assert_eq!(refusal(&post(&fleet.url(), Some(&cert_bound), &[], &call("echo"))), "binding_mismatch");
    // A replayed exchange proof is refused.
    let (status, body) = fleet.exchange_with(
        &alice,
        &fleet.url(),
        &[("scope", "tool:echo")],
        &[("dpop", proof["proof"].as_str().unwrap())],
    );
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_dpop_proof")), "{body}");

    // RFC 7009: the holder revokes its task token at the end of the task; every agent refuses it.
    let done = fleet.task_token(&alice, "tool:echo");
    let carol = fleet.subject_token("carol");
    let carols = fleet.task_token(&carol, "tool:echo");
    assert_eq!(post(&fleet.url(), Some(&done), &[], INITIALIZE).status, 200);
    let (status, _) = fleet.form("/revoke", &[("token", &done)], &[]);
    assert_eq!(status, 200);
    fleet.converge();
    assert_eq!(refusal(&post(&fleet.url(), Some(&done), &[], &call("echo"))), "revoked");
    // Nonsense is answered alike (RFC 7009 §2.2) and changes nothing.
    let version = fleet.cp.version();
    assert_eq!(fleet.form("/revoke", &[("token", "garbage")], &[]).0, 200);
    assert_eq!(fleet.cp.version(), version);

    // wardenctl revoke by subject: alice's task tokens and her identity token are cut off.
    let before = fleet.task_token(&alice, "tool:echo");
    let out = fleet.cp.ctl_ok(&["revoke", "--issuer", "test-idp", "--subject", "alice"]);
    assert!(out.contains("Revocation/subject-"), "{out}");
    fleet.converge();
    assert_eq!(refusal(&post(&fleet.url(), Some(&before), &[], &call("echo"))), "revoked");
    let (status, body) = fleet.exchange(&alice, &fleet.url(), &[("scope", "tool:echo")]);
    assert_eq!((status, body["error_description"].as_str()), (400, Some("subject_token refused: revoked")));
    // ...and by jti (the token's own jti, as an operator would read it from a record).
    let jti = claims(&carols)["jti"].as_str().unwrap().to_string();
    let still = fleet.task_token(&carol, "tool:echo");
    fleet.cp.ctl_ok(&["revoke", "--issuer", "warden", "--jti", &jti]);
    fleet.converge();
    assert_eq!(refusal(&post(&fleet.url(), Some(&carols), &[], &call("echo"))), "revoked");
    assert_eq!(post(&fleet.url(), Some(&still), &[], INITIALIZE).status, 200);

    // A control-plane restart: revoked stays revoked, and still-valid tokens stay valid (their
    // key is still published, though its private half died with the old process).
    fleet.cp.stop();
    fleet.cp.restart();
    let after = fleet.task_token(&carol, "tool:echo");
    fleet.converge();
    assert_ne!(claims(&after)["jti"], claims(&still)["jti"]);
    for (token, expected) in [(&done, Some("revoked")), (&carols, Some("revoked")), (&still, None), (&after, None)] {
        match expected {
            Some(reason) => assert_eq!(refusal(&post(&fleet.url(), Some(token), &[], &call("echo"))), reason),
            None => assert_eq!(post(&fleet.url(), Some(token), &[], INITIALIZE).status, 200),
        }
    }

    // Revoking the subject token itself (by its holder, RFC 7009) revokes every task token
    // minted from it, and no other.
    let dave = fleet.subject_token("dave");
    let from_dave = fleet.task_token(&dave, "tool:echo");
    assert_eq!(post(&fleet.url(), Some(&from_dave), &[], INITIALIZE).status, 200);
    assert_eq!(fleet.form("/revoke", &[("token", &dave)], &[]).0, 200);
    fleet.converge();
    assert_eq!(refusal(&post(&fleet.url(), Some(&from_dave), &[], &call("echo"))), "revoked");
    assert_eq!(post(&fleet.url(), Some(&after), &[], INITIALIZE).status, 200);
}

#[test]
fn a_task_token_dies_with_the_mcp_session_it_opened_when_the_server_asks_for_it() {
    let mut fleet = Fleet::start();
    let yaml = format!(
        "apiVersion: warden.dev/v1\nkind: McpServer\nmetadata: {{name: notes}}\nspec:\n  resource: {url}\n  \
         issuers: [warden]\n  upstream: {upstream}\n  listen: {gateway}\n  revokeTaskTokenOnSessionEnd: true\n",
        url = fleet.url(),
        upstream = fleet.upstream().url,
        gateway = fleet.gateway,
    );
    let out = fleet.cp.apply(&yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fleet.converge();
    let alice = fleet.subject_token("alice");
    let task = fleet.task_token(&alice, "tool:echo");
    let sibling = fleet.task_token(&alice, "tool:echo");
    let echo: &[&str] = &["call", "echo", r#"{"text": "hi"}"#];

    // The SDK client opens a session (initialize), calls the tool, and closes the session with
    // DELETE when it is done: from then on the task token is refused, first by this agent...
    let version = fleet.cp.version();
    let out = mcp_client(&fleet.url(), "legacy", &[(&task, echo), (&task, echo)]);
    assert_eq!(out[0]["ok"], true, "{out:?}");
    assert_eq!(out[1]["ok"], false, "a second session with the ended task's token: {out:?}");
    assert_eq!(refusal(&post(&fleet.url(), Some(&task), &[], &call("echo"))), "revoked");
    // ...then by the whole fleet: the control plane stored the revocation, done by the agent.
    wait_for_or(
        "the control plane to revoke the ended task",
        || fleet.agent().log_text(),
        || (fleet.cp.version() > version).then_some(()),
    );
    let history = fleet.cp.ctl_ok(&["history"]);
    assert!(history.contains("end-task") && history.contains("agent:agent-0"), "{history}");
    let jti = claims(&task)["jti"].as_str().unwrap().to_string();
    let revocations = fleet.cp.ctl_json(&["get", "revocations"]);
    assert!(revocations.to_string().contains(&jti), "{revocations}");
    fleet.converge();
    // A restarted agent forgot what it saw itself, and refuses the token from the configuration.
    fleet.agent_mut().stop();
    fleet.agent_mut().restart();
    assert_eq!(refusal(&post(&fleet.url(), Some(&task), &[], &call("echo"))), "revoked");
    // Other task tokens of the same workload are untouched.
    let answer = post(&fleet.url(), Some(&sibling), &[], INITIALIZE);
    assert_eq!(answer.status, 200, "{}", answer.body);

    // A server that does not ask for it leaves task tokens alive when their sessions end.
    let other = format!("http://{}/mcp", fleet.other_gateway);
    let (status, body) = fleet.exchange(&alice, &other, &[("scope", "tool:echo")]);
    assert_eq!(status, 200, "{body}");
    let kept = body["access_token"].as_str().unwrap().to_string();
    let out = mcp_client(&other, "legacy", &[(&kept, echo), (&kept, echo)]);
    assert!(out.iter().all(|r| r["ok"] == true), "{out:?}");
}

#[test]
fn signing_keys_rotate_without_a_single_refusal() {
    let fleet = Fleet::start_with(&["--signing-key-rotation", "3s"]);
    let alice = fleet.subject_token("alice");
    let first = fleet.task_token(&alice, "tool:echo");
    let kid = |token: &str| -> Value {
        let header = token.split('.').next().unwrap();
        serde_json::from_slice::<Value>(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap())
            .unwrap()["kid"]
            .clone()
    };
    // Exchange and use task tokens without pause across two rotations: every one is accepted,
    // because a key signs only once the agents hold it, and stays published while its tokens live.
    let mut kids = vec![kid(&first)];
    let started = std::time::Instant::now();
    let mut used = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let (status, body) = fleet.exchange(&alice, &fleet.url(), &[("scope", "tool:echo")]);
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap();
        for t in [token, first.as_str()] {
            let answer = post(&fleet.url(), Some(t), &[], INITIALIZE);
            assert_eq!(answer.status, 200, "{} {}", answer.challenge, fleet.agent().log_text());
        }
        if !kids.contains(&kid(token)) {
            kids.push(kid(token));
        }
        used += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(kids.len() >= 3, "two rotations in 8s: {kids:?} over {used} exchanges");
}

#[test]
fn a_task_token_never_carries_more_than_its_subject_token_and_every_refusal_is_on_record() {
    let fleet = Fleet::start();
    // A server that requires a scope of every token.
    let scoped_gateway = loopback_addr();
    let scoped = format!("http://{scoped_gateway}/mcp");
    let yaml = format!(
        "apiVersion: warden.dev/v1\nkind: McpServer\nmetadata: {{name: scoped}}\nspec:\n  resource: {scoped}\n  \
         issuers: [warden]\n  upstream: {upstream}\n  listen: {scoped_gateway}\n  scopes: [notes.read]\n---\n\
         apiVersion: warden.dev/v1\nkind: Policy\nmetadata: {{name: scoped}}\nspec:\n  cedar: |\n    \
         permit(principal, action == Action::\"token/exchange\", resource in Server::\"scoped\");\n    \
         permit(principal, action in [Action::\"resources/read\", Action::\"prompts/get\"], resource);\n",
        upstream = fleet.upstream().url,
    );
    let out = fleet.cp.apply(&yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fleet.converge();
    let alice = fleet.subject_token("alice");
    let _ = fleet.task_token(&alice, "tool:echo"); // the service signs by now

    // Alice's identity token carries no scope: asking for the server's scope in the exchange
    // must not mint it (the task token would pass the gateway's scope gate).
    let (status, body) = fleet.exchange(&alice, &scoped, &[("scope", "tool:echo notes.read")]);
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("notes.read"), "{body}");
    // Nor by leaving it out: the server requires it, the subject does not have it.
    let (status, body) = fleet.exchange(&alice, &scoped, &[("scope", "tool:echo")]);
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")), "{body}");

    // Dave's identity token carries it: the task token gets it, and only what was asked for.
    let now = now();
    let dave = fleet.idp().mint(&json!({"claims": {"iss": fleet.idp().issuer, "sub": "dave", "aud": fleet.service,
        "iat": now, "exp": now + 600, "scope": "notes.read notes.write calendar"}}));
    let (status, body) = fleet.exchange(&dave, &scoped, &[("scope", "tool:echo notes.read")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "tool:echo notes.read");
    let task = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims(&task)["scope"], "notes.read");
    let answer = post(&scoped, Some(&task), &[], INITIALIZE);
    assert_eq!(answer.status, 200, "{} {}", answer.challenge, answer.body);

    // The upstream is told the workload's own issuer, not the token service's.
    let seen = fleet.task_token(&alice, "tool:seen_headers");
    let out = mcp_client(&fleet.url(), "modern", &[(&seen, &["call", "seen_headers", "{}"])]);
    let headers = out[0]["result"]["text"][0].as_str().unwrap_or_default();
    assert!(headers.contains("x-warden-issuer=test-idp") && headers.contains("x-warden-subject=alice"), "{out:?}");

    // A task token grants tools only: no resource, prompt or completion, although the
    // workload's own policy would allow every method.
    let notes_task = fleet.task_token(&alice, "tool:echo");
    for body in [
        json!({"jsonrpc": "2.0", "id": 7, "method": "resources/read", "params": {"uri": "file:///etc/passwd"}}),
        json!({"jsonrpc": "2.0", "id": 7, "method": "prompts/get", "params": {"name": "summarise"}}),
    ] {
        let answer = post(&fleet.url(), Some(&notes_task), &[], &body.to_string());
        let reply: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        assert!(reply["error"]["code"].as_i64().is_some(), "{} refused: {}", body["method"], answer.body);
        assert_eq!(reply["error"]["data"]["reason"], "tool_not_granted", "{}", answer.body);
    }

    // Refused exchanges are on record, even when the subject token never verified.
    let expired =
        fleet.idp().mint(&json!({"claims": {"iss": fleet.idp().issuer, "sub": "mallory", "aud": fleet.service,
        "iat": now - 900, "exp": now - 300}}));
    let (status, _) = fleet.exchange(&expired, &fleet.url(), &[("scope", "tool:echo")]);
    assert_eq!(status, 400);
    let (status, _) = fleet.exchange(&alice, "http://127.0.0.1:1/unknown", &[("scope", "tool:secrets")]);
    assert_eq!(status, 400);
    // Garbage costs its sender nothing: refusals before the subject token verified are tallied
    // (one record per server, reason and source each second), so a flood cannot roll the
    // decision log over.
    for _ in 0..50 {
        assert_eq!(fleet.exchange("garbage", &fleet.url(), &[("scope", "tool:echo")]).0, 400);
    }
    let records = || -> Vec<Value> {
        let out = fleet.cp.ctl_ok(&["decisions", "--agent", "control-plane", "--limit", "1000", "-o", "json"]);
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let denied = |reason: &'static str| move |r: &&Value| r["decision"] == "deny" && r["reason"] == reason;
    let (expired_record, unknown_record, scope_record) = wait_for_or(
        "refused exchanges on record",
        || format!("{:?}", records()),
        || {
            let all = records();
            Some((
                all.iter().find(denied("expired"))?.clone(),
                all.iter().find(denied("unknown_server"))?.clone(),
                all.iter().find(denied("insufficient_scope"))?.clone(),
            ))
        },
    );
    assert_eq!((expired_record["subject"].as_str(), expired_record["server"].as_str()), (Some(""), Some("notes")));
    assert_eq!((expired_record["count"].as_u64(), expired_record["source"].as_str()), (Some(1), Some("127.0.0.1")));
    assert_eq!((unknown_record["server"].as_str(), unknown_record["count"].as_u64()), (Some(""), Some(1)));
    let garbage = wait_for_or(
        "the garbage exchanges tallied",
        || format!("{:?}", records()),
        || {
            let tallied: Vec<Value> = records().into_iter().filter(|r| r["reason"] == "malformed").collect();
            let count: u64 = tallied.iter().map(|r| r["count"].as_u64().unwrap_or(1)).sum();
            (count == 50).then_some(tallied)
        },
    );
    assert!(garbage.len() <= 10, "50 refusals in a few records, not 50: {garbage:?}");
    assert_eq!((scope_record["subject"].as_str(), scope_record["server"].as_str()), (Some("alice"), Some("scoped")));
}

#[test]
fn revocations_from_holders_are_bounded_in_number_and_time_and_an_oversized_configuration_is_refused() {
    let fleet = Fleet::start_with(&["--max-config-bytes", "65536"]);
    let alice = fleet.subject_token("alice");
    let _ = fleet.task_token(&alice, "tool:echo"); // the service signs by now

    // A token claiming to live ten years plants no revocation beyond what a usable token of its
    // issuer can live (10m, plus its skew): agents refuse it after that anyway.
    let now = now();
    let forever = fleet.idp().mint(&json!({"claims": {"iss": fleet.idp().issuer, "sub": "bob", "aud": fleet.service,
        "iat": now, "exp": now + 10 * 365 * 86400, "jti": "bob-forever"}}));
    assert_eq!(fleet.form("/revoke", &[("token", &forever)], &[]).0, 200);
    let revocations = fleet.cp.ctl_json(&["get", "revocations"]);
    let expires = revocations
        .as_array()
        .and_then(|r| r.iter().find(|d| d["spec"]["jti"] == "bob-forever"))
        .map(|d| d["spec"]["expires"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{revocations}"));
    let expires = time::OffsetDateTime::parse(&expires, &time::format_description::well_known::Rfc3339).unwrap();
    assert!(expires.unix_timestamp() <= now + 600 + 120, "{expires}");

    // One holder looping /token + /revoke writes a bounded number of fleet-wide revocations.
    let version = fleet.cp.version();
    let mut answers = Vec::new();
    for _ in 0..14 {
        let task = fleet.task_token(&alice, "tool:echo");
        let body = url::form_urlencoded::Serializer::new(String::new()).append_pair("token", &task).finish();
        let response = fleet
            .http
            .post(format!("{}/revoke", fleet.service))
            .header("content-type", "application/x-www-form-urlencoded")
            .send(body)
            .unwrap();
        answers.push((response.status().as_u16(), response.headers().get("retry-after").is_some()));
    }
    assert_eq!(answers[..10], [(200, false); 10], "{answers:?}");
    assert!(answers[10..].iter().all(|a| *a == (503, true)), "{answers:?}");
    assert_eq!(fleet.cp.version(), version + 10);
    // Another holder is not held back by it.
    let carol = fleet.task_token(&fleet.subject_token("carol"), "tool:echo");
    assert_eq!(fleet.form("/revoke", &[("token", &carol)], &[]).0, 200);

    // A configuration larger than agents take in one message is refused at apply, naming the
    // limit, and changes nothing.
    let version = fleet.cp.version();
    // (Each Policy within its own 64 KiB bound; together past the 64 KiB configuration.)
    let yaml: String = (0..3)
        .map(|p| {
            let lines: String = (0..500)
                .map(|i| {
                    format!(
                        "    forbid(principal, action, resource) when {{ context.scopes.contains(\"no-{p}-{i}\") }};\n"
                    )
                })
                .collect();
            format!(
                "---\napiVersion: warden.dev/v1\nkind: Policy\nmetadata: {{name: huge-{p}}}\nspec:\n  cedar: |\n{lines}"
            )
        })
        .collect();
    let out = fleet.cp.apply(&yaml);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--max-config-bytes"), "{stderr}");
    assert_eq!(fleet.cp.version(), version);
}
