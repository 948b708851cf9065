//! The how-tos of `deploy/identity/`, applied as written (only addresses swapped for this
//! machine's) and exercised with tokens shaped like each source's real ones, signed by PyJWT:
//! Kubernetes projected service-account tokens, GitHub Actions OIDC tokens, SPIFFE JWT-SVIDs,
//! and a corporate IdP's client-credentials token exchanged for task tokens.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tests::{loopback_addr, post, wait_for_or};

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A fleet of one agent with the how-to `name` applied: its issuer URLs swapped for the test
/// IdP's (and the token service's), its server's address for a loopback one.
struct HowTo {
    fleet: tests::Fleet,
    resource: String,
}

impl HowTo {
    fn start(name: &str, cp_flags: &[&str], issuers: &[(&str, &str)]) -> HowTo {
        let fleet = tests::Fleet::builder().peers().agent_ids(&["agent-i"]).cp_flags(cp_flags).start();
        let gateway = loopback_addr();
        let resource = format!("http://{gateway}/mcp");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/identity/{name}.yaml"));
        let mut yaml = std::fs::read_to_string(&path).unwrap();
        for (from, to) in [
            ("https://mcp.example.com/tickets", resource.as_str()),
            ("http://127.0.0.1:3001/mcp", fleet.upstream().url.as_str()),
            ("0.0.0.0:8443", gateway.as_str()),
        ]
        .into_iter()
        .chain(issuers.iter().copied())
        {
            assert!(yaml.contains(from), "{name}.yaml has {from}");
            yaml = yaml.replace(from, to);
        }
        let yaml = yaml.replace("issuer: IDP", &format!("issuer: {}", fleet.idp().issuer));
        fleet.cp.apply_ok(&yaml);
        fleet.wait_serving(&gateway);
        HowTo { fleet, resource }
    }

    /// A token with `claims` (plus `iss`, `iat`, `exp` in `lifetime` seconds), signed with the
    /// IdP's key `key` (`rs256`, `es256`).
    fn token(&self, key: &str, lifetime: i64, claims: Value) -> String {
        let mut claims = claims;
        let now = now();
        claims["iss"] = json!(self.fleet.idp().issuer);
        claims["iat"] = json!(now);
        claims["exp"] = json!(now + lifetime);
        self.fleet.idp().mint(&json!({"claims": claims, "key": key}))
    }

    /// How the gateway answers `tool` called with `token`: "allow" when the request reached
    /// the upstream (whose answer to a call outside a session is its own 400, "Missing session
    /// ID"), the reason of a policy refusal, "401 <reason>" for a refused token; anything else
    /// verbatim, so no other answer passes for one of these.
    fn call(&self, token: &str, tool: &str) -> String {
        let body =
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}});
        let answer = post(&self.resource, Some(token), &[], &body.to_string());
        let value: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        if answer.status == 401 {
            let reason = answer.challenge.split("error_description=\"").nth(1).and_then(|r| r.split('"').next());
            return format!("401 {}", reason.unwrap_or("-"));
        }
        if let (200, Some(reason)) = (answer.status, value["error"]["data"]["reason"].as_str()) {
            return reason.to_string();
        }
        if answer.status == 400 && answer.body.contains("Missing session ID") {
            return "allow".into();
        }
        format!("{} {}", answer.status, answer.body)
    }
}

#[test]
fn kubernetes_service_account_tokens() {
    let h = HowTo::start("kubernetes", &[], &[("issuer: https://oidc.prod-cluster.example.com", "issuer: IDP")]);
    // What the kubelet projects: RS256, the audience asked for, the pod and service account.
    let sa = |ns: &str, name: &str| {
        h.token(
            "rs256",
            3600,
            json!({
                "aud": [h.resource], "nbf": now(), "sub": format!("system:serviceaccount:{ns}:{name}"),
                "jti": format!("{ns}-{name}-{}", now()),
                "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": "6a1c9b2e-8d47-4f3a-9e21-0c5b7d8e9f10"},
                                  "pod": {"name": format!("{name}-7d9f8c6b5-x2x4k"), "uid": "0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"},
                                  "node": {"name": "node-1", "uid": "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"}},
            }),
        )
    };
    let research = sa("agents", "research-bot");
    let helper = sa("agents", "helper");
    let outsider = sa("default", "web");
    assert_eq!(h.call(&research, "file_ticket"), "allow");
    assert_eq!(h.call(&research, "search"), "allow");
    assert_eq!(h.call(&helper, "search"), "allow");
    assert_eq!(h.call(&helper, "file_ticket"), "policy_denied");
    assert_eq!(h.call(&outsider, "search"), "policy_denied");
    // A token of the same issuer that is not a service-account token (no `kubernetes.io`).
    let other = h.token("rs256", 600, json!({"aud": h.resource, "sub": "system:serviceaccount:agents:research-bot"}));
    assert_eq!(h.call(&other, "search"), "401 missing_claim");
    // Longer than the projected token can live.
    let long = h.token(
        "rs256",
        7200,
        json!({"aud": h.resource, "sub": "system:serviceaccount:agents:helper", "kubernetes.io": {}}),
    );
    assert_eq!(h.call(&long, "search"), "401 lifetime_too_long");
}

#[test]
fn github_actions_oidc_tokens() {
    let h =
        HowTo::start("github-actions", &[], &[("issuer: https://token.actions.githubusercontent.com", "issuer: IDP")]);
    // The claims GitHub puts in a job's token.
    let job = |repo: &str, sub_tail: &str, git_ref: &str| {
        h.token(
            "rs256",
            300,
            json!({
                "aud": h.resource, "nbf": now(), "jti": format!("{repo}-{}", now()),
                "sub": format!("repo:{repo}:{sub_tail}"), "repository": repo, "repository_owner": "acme",
                "repository_id": "74", "repository_owner_id": "65", "ref": git_ref, "ref_type": "branch",
                "sha": "d6b2a1c0ffee", "workflow": "deploy", "job_workflow_ref": format!("{repo}/.github/workflows/deploy.yml@{git_ref}"),
                "event_name": "push", "run_id": "1234567890", "run_number": "42", "run_attempt": "1", "actor": "octocat",
                "actor_id": "1", "runner_environment": "github-hosted",
            }),
        )
    };
    let main = job("acme/deploy-tools", "ref:refs/heads/main", "refs/heads/main");
    let branch = job("acme/deploy-tools", "ref:refs/heads/feature", "refs/heads/feature");
    let pull = job("acme/deploy-tools", "pull_request", "refs/pull/7/merge");
    let foreign = job("evil/deploy-tools", "ref:refs/heads/main", "refs/heads/main");
    assert_eq!(h.call(&main, "file_ticket"), "allow");
    assert_eq!(h.call(&branch, "search"), "allow");
    assert_eq!(h.call(&branch, "file_ticket"), "policy_denied");
    assert_eq!(h.call(&pull, "search"), "policy_denied", "pull requests get nothing");
    assert_eq!(h.call(&foreign, "search"), "policy_denied");
    // A token of the issuer without a run (not a job's token).
    let bare = h.token("rs256", 300, json!({"aud": h.resource, "sub": "repo:acme/deploy-tools:ref:refs/heads/main"}));
    assert_eq!(h.call(&bare, "search"), "401 missing_claim");
}

#[test]
fn spiffe_jwt_svids() {
    let h = HowTo::start("spiffe", &[], &[("issuer: https://oidc-discovery.example.org", "issuer: IDP")]);
    // A JWT-SVID: sub the SPIFFE ID, aud the audience asked for, a five-minute life, ES256.
    let svid = |id: &str| h.token("es256", 300, json!({"aud": [h.resource], "sub": id}));
    let research = svid("spiffe://example.org/ns/agents/sa/research-bot");
    let helper = svid("spiffe://example.org/ns/agents/sa/helper");
    let web = svid("spiffe://example.org/ns/web/sa/frontend");
    let other_domain = svid("spiffe://other.org/ns/agents/sa/research-bot");
    assert_eq!(h.call(&research, "file_ticket"), "allow");
    assert_eq!(h.call(&helper, "search"), "allow");
    assert_eq!(h.call(&helper, "file_ticket"), "policy_denied");
    assert_eq!(h.call(&web, "search"), "policy_denied");
    assert_eq!(h.call(&other_domain, "search"), "policy_denied");
}

#[test]
fn a_corporate_idp_client_credentials_token_exchanged_for_task_tokens() {
    let token_listen = loopback_addr();
    let host = token_listen.rsplit_once(':').unwrap().0.to_string();
    let service = format!("https://{token_listen}");
    let flags = ["--token-listen", &token_listen, "--server-name", &host, "--signing-key-publish-delay", "0s"];
    let h = HowTo::start(
        "client-credentials",
        &flags,
        &[
            ("issuer: https://login.example.com/tenant-1/v2.0", "issuer: IDP"),
            ("https://cp.example.internal:7444", &service),
        ],
    );
    let http = super::token_exchange::https_client(&h.fleet.cp, None);
    // A client-credentials access token as Okta mints it: sub and cid the application's client
    // id, `scp` an array of the scopes granted, the token service as audience.
    let app = |client_id: &str, scp: &[&str]| {
        h.token(
            "rs256",
            3600,
            json!({"aud": service, "sub": client_id, "cid": client_id, "scp": scp, "ver": 1,
                   "jti": format!("AT.{client_id}-{}", now())}),
        )
    };
    let exchange = |subject: &str, scope: &str| -> (u16, Value) {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", subject),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ("resource", h.resource.as_str()),
                ("scope", scope),
            ])
            .finish();
        let mut response = http
            .post(format!("{service}/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .send(body)
            .expect("the token service answers");
        let status = response.status().as_u16();
        (status, serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null))
    };
    let reader = app("0oa3f2a9c1ereader", &["tickets.read"]);
    let writer = app("0oa7b4d0e2fwriter", &["tickets.read", "tickets.write"]);
    // The token service signs once its key reached the agents.
    let (status, task) = wait_for_or(
        "the token service to issue a task token",
        || h.fleet.cp.process.as_ref().map(|p| p.log_text()).unwrap_or_default(),
        || Some(exchange(&writer, "tool:search tool:file_ticket")).filter(|(s, _)| *s != 503),
    );
    assert_eq!(status, 200, "{task}");
    let task = task["access_token"].as_str().unwrap().to_string();
    h.fleet.cp.wait_converged(&["agent-i"], h.fleet.cp.version());
    assert_eq!(h.call(&task, "file_ticket"), "allow");
    assert_eq!(h.call(&task, "search"), "allow");
    assert_eq!(h.call(&task, "delete_everything"), "tool_not_granted");
    // The reader's scopes get it search only; asking for more is refused whole.
    let (status, refused) = exchange(&reader, "tool:search tool:file_ticket");
    assert_eq!((status, refused["error"].as_str()), (400, Some("invalid_scope")), "{refused}");
    assert!(refused["error_description"].as_str().unwrap().contains("file_ticket"), "{refused}");
    let (status, body) = exchange(&reader, "tool:search");
    assert_eq!(status, 200, "{body}");
    let search_only = body["access_token"].as_str().unwrap();
    assert_eq!(h.call(search_only, "search"), "allow");
    assert_eq!(h.call(search_only, "file_ticket"), "tool_not_granted");
    // The IdP token itself is no key to the server: only task tokens are.
    assert_eq!(h.call(&writer, "search"), "401 issuer_not_allowed");
}
