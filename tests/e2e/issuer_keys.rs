//! Issuers' keys are resolved by the control plane (OIDC discovery here) and shipped to agents
//! inside the configuration; rotation reaches agents, and a failing identity provider leaves the
//! last keys in force.

use tests::{Agent, ControlPlane, StaticIdp, wait_for};

fn issuer_yaml(issuer: &str) -> String {
    format!(
        r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: corp-idp}}
spec:
  issuer: {issuer}
  keys: {{discovery: true}}
  allowedAlgorithms: [ES256]
"#
    )
}

fn agent_kids(agent: &Agent) -> Option<Vec<String>> {
    let status = agent.try_status()?;
    let kids = status["issuerKeys"]["corp-idp"].as_array()?;
    Some(kids.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
}

fn wait_kids(agent: &Agent, expected: &[&str]) {
    wait_for(&format!("the agent to hold keys {expected:?}"), || (agent_kids(agent)? == expected).then_some(()));
}

#[test]
fn keys_found_by_discovery_reach_agents_follow_rotation_and_survive_outages() {
    let dir = tempfile::tempdir().unwrap();
    let mut idp = StaticIdp::start(dir.path(), &["k1"]);
    let mut cp = ControlPlane::start(
        dir.path(),
        &["--allow-http-issuers", "--key-refresh-default", "1s", "--key-refresh-min", "1s"],
    );
    let token = cp.join_token("5m", "agent-0");
    let agent = Agent::start(dir.path(), "agent-0", &[&cp.address], Some(&token));

    let out = cp.apply(&issuer_yaml(&idp.issuer));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_kids(&agent, &["k1"]);
    let issuers = cp.ctl_json(&["get", "issuers"]);
    assert_eq!(issuers[0]["status"]["sourceUri"], format!("{}/jwks.json", idp.issuer));

    // The provider rotates: the new key reaches the agent without any operator action.
    idp.publish(&["k1", "k2"]);
    wait_kids(&agent, &["k1", "k2"]);

    // The provider goes away: the refresh fails, is reported, and the last keys stay in force.
    idp.stop();
    let error = wait_for("the refresh failure to be reported", || {
        let issuers = cp.ctl_json(&["get", "issuers"]);
        let error = issuers[0]["status"]["lastError"].as_str()?.to_string();
        (!error.is_empty()).then_some(error)
    });
    assert!(error.contains(&idp.issuer), "{error}");
    assert_eq!(agent_kids(&agent).unwrap(), ["k1", "k2"]);

    // ... also across a control-plane restart: fetched keys are part of the stored state.
    cp.stop();
    cp.restart();
    let issuers = cp.ctl_json(&["get", "issuers"]);
    assert_eq!(issuers[0]["status"]["kids"], serde_json::json!(["k1", "k2"]));
    assert_eq!(agent_kids(&agent).unwrap(), ["k1", "k2"]);

    // Back again, rotated once more.
    idp.publish(&["k2", "k3"]);
    idp.restart();
    wait_kids(&agent, &["k2", "k3"]);
}

#[test]
fn a_discovery_document_for_another_issuer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let idp = StaticIdp::start(dir.path(), &["k1"]);
    let cp = ControlPlane::start(dir.path(), &["--allow-http-issuers"]);
    // Same server, but the configured issuer differs from the one the document names.
    let impostor = format!("{}/", idp.issuer);
    assert!(cp.apply(&issuer_yaml(&impostor)).status.success());
    let error = wait_for("the mismatch to be reported", || {
        let issuers = cp.ctl_json(&["get", "issuers"]);
        let error = issuers[0]["status"]["lastError"].as_str()?.to_string();
        (!error.is_empty()).then_some(error)
    });
    assert!(error.contains("\"issuer\" is not"), "{error}");
    assert_eq!(cp.ctl_json(&["get", "issuers"])[0]["status"]["kids"], serde_json::json!([]));
}

/// Opens a stream as agent `id` (with its stored identity) and asks for a key refresh `times`
/// times in a row.
fn request_refresh(cp: &ControlPlane, agent: &Agent, times: usize) {
    use proto::v1 as pb;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let identity = agent::identity::Files::new(&agent.data_dir).load().unwrap().unwrap();
        let channel = agent::tls::connect(&cp.address, identity.client_config().unwrap()).await.unwrap();
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let message = |m| pb::AgentMessage { message: Some(m) };
        let hello = pb::Hello { agent_id: agent.id.clone(), ..Default::default() };
        tx.send(message(pb::agent_message::Message::Hello(hello))).await.unwrap();
        for _ in 0..times {
            let request = pb::KeyRefreshRequest { issuer: "corp-idp".into(), kid: "k2".into() };
            tx.send(message(pb::agent_message::Message::KeyRefresh(request))).await.unwrap();
        }
        let mut inbound = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        // The snapshot answering Hello shows the stream was accepted; give the requests time to land.
        inbound.message().await.unwrap().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    });
}

#[test]
fn an_unknown_kid_prompts_one_refresh_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let idp = StaticIdp::start(dir.path(), &["k1"]);
    // No scheduled refresh during the test (1h): only requests can cause one, at most one per 3s
    // counting from the last fetch of any kind.
    let cp = ControlPlane::start(dir.path(), &["--allow-http-issuers", "--key-refresh-request-interval", "3s"]);
    let token = cp.join_token("5m", "agent-0");
    let agent = Agent::start(dir.path(), "agent-0", &[&cp.address], Some(&token));
    assert!(cp.apply(&issuer_yaml(&idp.issuer)).status.success());
    wait_kids(&agent, &["k1"]);
    let fetches = || idp.log_text().matches("GET /jwks.json").count();
    let before = fetches();
    // Right after the initial fetch a request is within the interval and changes nothing.
    idp.publish(&["k1", "k2"]);
    request_refresh(&cp, &agent, 1);
    assert_eq!(fetches(), before, "rate-limited right after the initial fetch");
    std::thread::sleep(std::time::Duration::from_millis(3100));

    // The provider rotated; an agent meets the new kid and asks, several times over.
    request_refresh(&cp, &agent, 3);
    wait_kids(&agent, &["k1", "k2"]);
    assert_eq!(fetches(), before + 1, "one refresh for a burst of requests");
    request_refresh(&cp, &agent, 2);
    assert_eq!(fetches(), before + 1, "no further refresh within the interval");
}
