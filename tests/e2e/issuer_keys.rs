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
    let token = cp.join_token("5m");
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
