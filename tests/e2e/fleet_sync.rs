//! Configuration flows from `wardenctl apply` through the control plane to every agent, and
//! survives restarts of either side.

use tests::{Agent, ControlPlane, Fleet, fleet_yaml, wait_for};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn apply_reaches_every_agent_and_each_acks_the_new_version() {
    let fleet = Fleet::builder().agents(3).start();
    let Fleet { cp, agents, .. } = &fleet;
    let ids: Vec<&str> = agents.iter().map(|a| a.id.as_str()).collect();
    cp.wait_converged(&ids, 0);

    let out = cp.apply(&fleet_yaml("search"));
    assert!(out.status.success(), "{}", stderr(&out));
    let v1 = cp.version();
    assert_eq!(v1, 1);
    cp.wait_converged(&ids, v1);
    for agent in agents {
        let status = agent.status();
        assert_eq!(status["version"], v1);
        assert_eq!(status["enforcing"], true);
        assert_eq!(status["source"], "control-plane");
        assert_eq!(status["resources"]["Policy"], 1);
    }

    // A change travels as a delta and is acknowledged too; an unchanged apply moves nothing.
    assert!(cp.apply(&fleet_yaml("fetch")).status.success());
    assert_eq!(cp.version(), 2);
    cp.wait_converged(&ids, 2);
    let again = cp.apply(&fleet_yaml("fetch"));
    assert!(String::from_utf8_lossy(&again.stdout).contains("Policy/github-tools unchanged"));
    assert_eq!(cp.version(), 2);

    // A delete propagates as well.
    cp.ctl_ok(&["delete", "policy", "github-tools"]);
    cp.wait_converged(&ids, 3);
    assert_eq!(agents[0].status()["resources"]["Policy"], 0);

    let table = cp.ctl_ok(&["get", "agents"]);
    for id in &ids {
        assert!(table.lines().any(|l| l.starts_with(id) && l.contains("yes")), "{table}");
    }
}

#[test]
fn invalid_resources_are_refused_with_the_field_named_and_change_nothing() {
    let fleet = Fleet::builder().agents(1).start();
    let Fleet { cp, agents, .. } = &fleet;
    assert!(cp.apply(&fleet_yaml("search")).status.success());
    cp.wait_converged(&["agent-0"], 1);
    let before = cp.ctl_ok(&["get", "all", "-o", "yaml"]);

    let cases = [
        // An unknown field.
        (fleet_yaml("search").replace("maxTokenLifetime", "maxTokenLifeTime"), "spec.maxTokenLifeTime"),
        // Cedar that names an attribute the schema does not have.
        (fleet_yaml("search").replace("resource.name", "resource.title"), "spec.cedar"),
        // `alg: none` cannot be allowed.
        (fleet_yaml("search").replace("[ES256]", "[none]"), "spec.allowedAlgorithms[0]"),
        // Refused by the control plane's admission (plain http issuer without the flag).
        (fleet_yaml("search").replace("issuer: https://idp", "issuer: http://idp"), "spec.issuer"),
        // Refused by the control plane's cross-check: one bad document fails the whole batch.
        (
            fleet_yaml("other").replace("issuers: [corp-idp]", "issuers: [nobody]"),
            "spec.issuers names TrustedIssuer/nobody",
        ),
        // Broken YAML.
        ("kind: [unclosed".to_string(), "not valid YAML"),
    ];
    for (yaml, expected) in cases {
        let out = cp.apply(&yaml);
        assert!(!out.status.success(), "accepted: {yaml}");
        assert!(stderr(&out).contains(expected), "expected {expected:?} in: {}", stderr(&out));
    }

    // A stale resourceVersion is a conflict.
    let stale = fleet_yaml("new").replace("{name: github-tools}", "{name: github-tools, resourceVersion: 99}");
    let out = cp.apply(&stale);
    assert!(stderr(&out).contains("conflict"), "{}", stderr(&out));

    assert_eq!(cp.ctl_ok(&["get", "all", "-o", "yaml"]), before, "refused writes changed nothing");
    assert_eq!(cp.version(), 1);
    assert_eq!(agents[0].status()["version"], 1);
    assert!(cp.ctl_ok(&["history"]).lines().count() == 4, "only the one good apply is recorded");
}

#[test]
fn an_agent_restarted_while_the_control_plane_is_down_enforces_its_last_good_config() {
    let mut fleet = Fleet::builder().agents(1).start();
    let Fleet { cp, agents, .. } = &mut fleet;
    assert!(cp.apply(&fleet_yaml("search")).status.success());
    assert!(cp.apply(&fleet_yaml("fetch")).status.success());
    cp.wait_converged(&["agent-0"], 2);
    let agent = &mut agents[0];

    cp.stop();
    agent.stop();
    agent.restart();
    let status = agent.status();
    assert_eq!(status["enforcing"], true, "{status}");
    assert_eq!(status["source"], "disk");
    assert_eq!(status["version"], 2);
    assert_eq!(status["resources"]["Policy"], 1);
    assert_eq!(agent.readyz(), Some(200));
    wait_for("the agent to notice the control plane is down", || {
        let link = &agent.status()["link"];
        (link["connected"] == false && !link["lastError"].as_str()?.is_empty()).then_some(())
    });

    // The control plane comes back: the agent reconnects on its own and takes new versions.
    cp.restart();
    cp.wait_converged(&["agent-0"], 2);
    assert!(cp.apply(&fleet_yaml("list")).status.success());
    cp.wait_converged(&["agent-0"], 3);
    assert_eq!(agent.status()["source"], "control-plane");
}

#[test]
fn a_control_plane_restart_keeps_all_state_and_agents_reconverge() {
    let mut fleet = Fleet::builder().agents(2).start();
    let Fleet { cp, agents, .. } = &mut fleet;
    assert!(cp.apply(&fleet_yaml("search")).status.success());
    cp.wait_converged(&["agent-0", "agent-1"], 1);
    let resources = cp.ctl_ok(&["get", "all", "-o", "yaml"]);
    let history = cp.ctl_ok(&["history", "-o", "json"]);
    let ca = std::fs::read(cp.data_dir.join("ca.crt")).unwrap();

    cp.stop();
    cp.restart();
    assert_eq!(cp.ctl_ok(&["get", "all", "-o", "yaml"]), resources);
    assert_eq!(cp.ctl_ok(&["history", "-o", "json"]), history);
    assert_eq!(std::fs::read(cp.data_dir.join("ca.crt")).unwrap(), ca, "the fleet CA is kept");
    let registered = cp.ctl_json(&["get", "agents"]);
    assert_eq!(registered["agents"].as_array().unwrap().len(), 2, "agent registrations are kept");

    cp.wait_converged(&["agent-0", "agent-1"], 1);
    assert!(cp.apply(&fleet_yaml("fetch")).status.success());
    cp.wait_converged(&["agent-0", "agent-1"], 2);
    for agent in agents {
        assert_eq!(agent.status()["version"], 2);
    }
}

#[test]
fn an_agent_that_never_had_a_configuration_denies_everything() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: the agent cannot join and has nothing on disk.
    let nowhere = tests::loopback_addr();
    let token = "abc.def.ghi";
    let agent = Agent::start(dir.path(), "lonely", &[&nowhere], Some(token));
    let status = agent.status();
    assert_eq!(status["enforcing"], false, "{status}");
    assert_eq!(status["version"], 0);
    assert_eq!(agent.readyz(), Some(503));
}

#[test]
fn agents_and_control_plane_shut_down_cleanly_on_sigterm() {
    let mut fleet = Fleet::builder().agents(1).start();
    let Fleet { cp, agents, .. } = &mut fleet;
    cp.wait_converged(&["agent-0"], 0);
    // Each stop asserts a zero exit within the harness's patience, with the stream still open.
    agents[0].stop();
    cp.stop();
    assert!(!cp.socket().exists(), "the admin socket is removed on exit");
}

#[test]
fn an_agent_that_missed_a_change_resumes_from_its_version_with_a_delta() {
    let mut fleet = Fleet::builder().agents(2).start();
    let ids: Vec<String> = fleet.agents.iter().map(|a| a.id.clone()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert!(fleet.cp.apply(&fleet_yaml("search")).status.success());
    fleet.cp.wait_converged(&ids, 1);

    // One agent is away while the configuration moves; the other takes the change as a delta.
    fleet.agents[0].stop();
    assert!(fleet.cp.apply(&fleet_yaml("fetch")).status.success());
    fleet.cp.wait_converged(&ids[1..], 2);
    fleet.agents[0].restart();
    fleet.cp.wait_converged(&ids, 2);
    assert_eq!(fleet.agents[0].status()["resources"]["Policy"], 1);
    let log = fleet.cp.process.as_ref().map(|p| p.log_text()).unwrap_or_default();
    let resumed = log.lines().rev().find(|l| l.contains(ids[0]) && l.contains("agent connected")).unwrap_or("");
    assert!(resumed.contains("sending a delta from its version"), "no snapshot for one missed change:\n{log}");
}

#[test]
fn history_shows_what_one_change_did_to_each_document() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]);
    cp.apply_ok(&fleet_yaml("search"));
    cp.apply_ok(&fleet_yaml("list"));
    let shown = cp.ctl_ok(&["history", "--version", "2"]);
    let mut lines = shown.lines();
    assert!(lines.next().unwrap().starts_with("apply Policy/github-tools at version 2 by uid:"), "{shown}");
    // Only the policy changed; its one line went from one tool to the other, the rest stayed.
    let removed: Vec<&str> = shown.lines().filter(|l| l.starts_with("- ")).collect();
    let added: Vec<&str> = shown.lines().filter(|l| l.starts_with("+ ")).collect();
    assert!(removed.len() == 1 && removed[0].contains("resource.name == \"search\""), "{shown}");
    assert!(added.len() == 1 && added[0].contains("resource.name == \"list\""), "{shown}");
    assert!(shown.lines().any(|l| l == "  kind: Policy"), "{shown}");
    // The first version created all three: every line added.
    let created = cp.ctl_json(&["history", "--version", "1"]);
    let created = created.as_array().unwrap();
    assert_eq!(created.len(), 3, "{created:?}");
    for change in created {
        let lines = change["difference"].as_array().unwrap();
        assert!(!lines.is_empty() && lines.iter().all(|l| l.as_str().unwrap().starts_with("+ ")), "{change}");
    }
    // A version that wrote nothing is an error, not an empty answer.
    let out = cp.ctl(&["history", "--version", "99"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no document was written at version 99"));
}
