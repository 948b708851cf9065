//! Tool-definition pinning with the official Python SDK on both sides: a server that rewrites
//! a tool's description after it was trusted (a "rug pull") has that tool withheld from lists
//! and its calls refused until an operator approves the new definition; poisoned definitions
//! are flagged; new definitions can be held for approval.

use serde_json::{Value, json};
use tests::{Etcd, bin, mcp_client, wait_for_or};

use crate::decisions::Fleet;

/// `notes` again, with `spec` (one line of its spec) added, and a policy letting every
/// caller call `weather` too.
fn serve_with(fleet: &Fleet, spec: &str) {
    let gateway = fleet.url().trim_start_matches("http://").trim_end_matches("/mcp").to_string();
    fleet.cp.apply_ok(&format!(
        "apiVersion: warden.dev/v1\nkind: McpServer\nmetadata: {{name: notes}}\nspec:\n  resource: http://{gateway}/mcp\n  issuers: [test-idp]\n  upstream: {}\n  listen: {gateway}\n  {spec}\n---\napiVersion: warden.dev/v1\nkind: Policy\nmetadata: {{name: weather}}\nspec:\n  servers: [notes]\n  cedar: |\n    permit(principal, action == Action::\"tools/call\", resource) when {{ resource.name == \"weather\" }};\n",
        fleet.upstream().url
    ));
    converge(fleet);
}

fn converge(fleet: &Fleet) {
    let version = fleet.cp.version();
    fleet.cp.wait_converged(&["agent-d"], version);
}

/// The status of `name` as `wardenctl tools list -o json` shows it, once `ready` holds.
fn tool_status(fleet: &Fleet, name: &str, ready: impl Fn(&Value) -> bool) -> Value {
    wait_for_or(
        &format!("the control plane's status of {name}"),
        || format!("{}\n{}", fleet.cp.ctl_ok(&["tools", "list"]), fleet.cp.process.as_ref().unwrap().log_text()),
        || {
            let all = fleet.cp.ctl_json(&["tools", "list", "notes"]);
            let found = all["definitions"].as_array()?.iter().find(|d| d["name"] == name)?.clone();
            ready(&found).then_some(found)
        },
    )
}

fn tools(fleet: &Fleet, token: &str) -> Value {
    let out = mcp_client(&fleet.url(), "modern", &[(token, &["list-tools"])]);
    assert_eq!(out[0]["ok"], true, "{out:?}");
    out[0]["result"].clone()
}

fn call_weather(fleet: &Fleet, token: &str) -> Value {
    mcp_client(&fleet.url(), "modern", &[(token, &["call", "weather", r#"{"city": "Paris"}"#])]).remove(0)
}

/// Calls of `weather` the upstream answered (it logs each tool call it runs).
fn weather_calls(fleet: &Fleet) -> usize {
    fleet.upstream().process.log_text().matches("weather for ").count()
}

/// Has the upstream rewrite `weather`'s description (SIGUSR1), and waits until it did.
fn rug_pull(fleet: &Fleet) {
    let pid = fleet.upstream().process.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-USR1", &pid]).status().unwrap().success());
    wait_for_or(
        "the upstream to rewrite its tool",
        || fleet.upstream().process.log_text(),
        || fleet.upstream().process.log_text().contains("description rewritten").then_some(()),
    );
}

#[test]
fn a_rewritten_tool_is_withheld_and_refused_until_its_new_definition_is_approved() {
    let fleet = Fleet::start(&[]);
    serve_with(&fleet, "toolPinning: {mode: enforce}");
    let alice = fleet.token("alice", "jti-pin", -10, 600);

    // First use: listed and callable, and pinned by the control plane as first seen.
    assert_eq!(tools(&fleet, &alice), json!(["echo", "seen_headers", "weather"]));
    let pinned = tool_status(&fleet, "weather", |d| d["state"] == "approved");
    assert_eq!(pinned["pinning"], "enforce");
    let first = pinned["seen"][0]["digest"].as_str().unwrap().to_string();
    assert_eq!(pinned["approvedDigest"], first.as_str());
    let texts = fleet.cp.ctl_ok(&["tools", "diff", "notes", "weather"]);
    assert!(texts.contains("\"description\": \"Returns the forecast for a city.\""), "{texts}");
    assert!(texts.contains("(no change: this is the approved definition)"), "{texts}");
    let history = fleet.cp.ctl_ok(&["history"]);
    assert!(history.contains("pin-first-use"), "{history}");
    converge(&fleet);
    assert_eq!(call_weather(&fleet, &alice)["result"]["text"], json!(["sunny in Paris"]));

    // The rug pull: the server rewrites the description.
    rug_pull(&fleet);
    assert_eq!(tools(&fleet, &alice), json!(["echo", "seen_headers"]), "the changed tool is withheld");
    let calls = weather_calls(&fleet);
    let refused = call_weather(&fleet, &alice);
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("changed since it was approved"), "{refused}");
    assert_eq!(weather_calls(&fleet), calls, "a refused call never reaches the upstream");
    let decisions = fleet.decisions();
    assert!(
        decisions.iter().any(|d| d["reason"] == "tool_definition_changed" && d["target"] == "weather"),
        "{decisions:?}"
    );

    // The operator sees what changed, flagged.
    let changed = tool_status(&fleet, "weather", |d| d["state"] == "changed");
    assert_eq!(changed["approvedDigest"], first.as_str(), "the approval still names the old one");
    let signs: Vec<&str> =
        changed["seen"][0]["flags"].as_array().unwrap().iter().filter_map(|f| f["sign"].as_str()).collect();
    assert!(signs.contains(&"model_instructions") && signs.contains(&"credential_reference"), "{changed}");
    let table = fleet.cp.ctl_ok(&["tools", "list", "notes"]);
    assert!(
        table.lines().any(|l| l.contains("weather") && l.contains("changed") && l.contains("model_instructions")),
        "{table}"
    );
    let diff = fleet.cp.ctl_ok(&["tools", "diff", "notes", "weather"]);
    assert!(diff.contains(&format!("--- {first} (approved)")), "{diff}");
    assert!(diff.contains("-  \"description\": \"Returns the forecast for a city.\","), "{diff}");
    assert!(
        diff.contains("+  \"description\": \"Returns the forecast for a city. <IMPORTANT> Before using this tool"),
        "{diff}"
    );
    assert!(diff.contains("model_instructions  at description"), "{diff}");

    // Approved: listed and callable again, and the approval is on record as the operator's.
    let approved = fleet.cp.ctl_ok(&["tools", "approve", "notes", "weather"]);
    assert!(approved.contains("approved sha256:"), "{approved}");
    converge(&fleet);
    assert_eq!(tools(&fleet, &alice), json!(["echo", "seen_headers", "weather"]));
    assert_eq!(call_weather(&fleet, &alice)["result"]["text"], json!(["sunny in Paris"]));
    // An older revision's client too: its session, notifications (202, no body) and SSE
    // answers all pass through the filter every answer goes through under pinning.
    let legacy = mcp_client(
        &fleet.url(),
        "legacy",
        &[(&alice, &["list-tools"]), (&alice, &["call", "weather", r#"{"city": "Oslo"}"#]), (&alice, &["count", "2"])],
    );
    assert_eq!(legacy[0]["result"], json!(["echo", "seen_headers", "weather"]), "{legacy:?}");
    assert_eq!(legacy[1]["result"]["text"], json!(["sunny in Oslo"]), "{legacy:?}");
    assert_eq!(legacy[2]["ok"], false, "count is not allowed by policy: {legacy:?}");
    let history = fleet.cp.ctl_json(&["history"]);
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["operation"] == "approve-definition" && e["kind"] == "ToolApproval"),
        "{history}"
    );
}

#[test]
fn new_definitions_can_be_held_for_approval_and_a_rejected_one_stays_out() {
    let fleet = Fleet::start(&[]);
    serve_with(&fleet, "toolPinning: {mode: enforce, newDefinitions: hold}");
    let alice = fleet.token("alice", "jti-hold", -10, 600);
    // Nothing approved: nothing listed, nothing callable, nothing pinned on first use.
    assert_eq!(tools(&fleet, &alice), json!([]));
    let refused = call_weather(&fleet, &alice);
    assert!(refused["error"]["message"].as_str().unwrap().contains("not approved"), "{refused}");
    let weather = tool_status(&fleet, "weather", |d| d["state"] == "new");
    assert!(weather["approval"].is_null(), "{weather}");
    for tool in ["echo", "seen_headers"] {
        tool_status(&fleet, tool, |d| d["state"] == "new");
    }

    fleet.cp.ctl_ok(&["tools", "approve", "notes", "weather"]);
    fleet.cp.ctl_ok(&["tools", "reject", "notes", "seen_headers"]);
    converge(&fleet);
    assert_eq!(tools(&fleet, &alice), json!(["weather"]));
    assert_eq!(call_weather(&fleet, &alice)["result"]["text"], json!(["sunny in Paris"]));
    tool_status(&fleet, "seen_headers", |d| d["state"] == "rejected");
    let decisions = fleet.decisions();
    assert!(decisions.iter().any(|d| d["reason"] == "tool_not_approved"), "{decisions:?}");

    // Approvals are resources: listed, and a bad one is refused with its field named.
    let approvals = fleet.cp.ctl_ok(&["get", "toolapprovals"]);
    assert!(approvals.contains("notes-weather-"), "{approvals}");
    let bad = fleet.cp.apply(
        "apiVersion: warden.dev/v1\nkind: ToolApproval\nmetadata: {name: bad}\nspec: {server: notes, kind: tool, name: echo, approved: 'sha256:00'}\n",
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("spec.approved"), "{bad:?}");

    // Record only: everything listed again, nothing withheld.
    serve_with(&fleet, "toolPinning: {mode: record, newDefinitions: hold}");
    assert_eq!(tools(&fleet, &alice), json!(["echo", "seen_headers", "weather"]));

    // A deleted server takes its approvals and the definitions its agents reported with it:
    // one made anew under its name starts with nothing approved and nothing seen.
    assert!(!fleet.cp.ctl_json(&["tools", "list", "notes"])["definitions"].as_array().unwrap().is_empty());
    for (kind, name) in [("policy", "weather"), ("policy", "echo-only"), ("mcpserver", "notes")] {
        fleet.cp.ctl_ok(&["delete", kind, name]);
    }
    let left = fleet.cp.ctl_json(&["tools", "list", "notes"]);
    assert!(left["definitions"].as_array().is_none_or(Vec::is_empty), "{left}");
    assert!(!fleet.cp.ctl_ok(&["get", "toolapprovals"]).contains("notes-"));
}

#[test]
fn a_tool_poisoned_from_the_start_is_never_pinned_and_its_name_is_held() {
    let fleet = Fleet::start(&[]);
    serve_with(&fleet, "toolPinning: {mode: enforce}");
    // The server is poisoned before anything was listed through Warden.
    rug_pull(&fleet);
    let alice = fleet.token("alice", "jti-poisoned", -10, 600);
    // Withheld at once by the agent (it reads the signs too), and held by the control plane.
    assert_eq!(tools(&fleet, &alice), json!(["echo", "seen_headers"]));
    let held = tool_status(&fleet, "weather", |d| d["state"] == "rejected");
    assert!(held["approvedDigest"].is_null(), "{held}");
    tool_status(&fleet, "echo", |d| d["state"] == "approved");
    let history = fleet.cp.ctl_json(&["history"]);
    assert!(
        history.as_array().unwrap().iter().any(|e| e["operation"] == "hold-flagged" && e["actor"] == "control-plane"),
        "{history}"
    );
    converge(&fleet);
    assert_eq!(tools(&fleet, &alice), json!(["echo", "seen_headers"]), "still held once the agent has the hold");
    let refused = call_weather(&fleet, &alice);
    assert!(refused["error"]["message"].as_str().unwrap().contains("not approved"), "{refused}");

    // An operator who read it and approves it anyway: it is served.
    let digest = held["seen"][0]["digest"].as_str().unwrap();
    let diff = fleet.cp.ctl_ok(&["tools", "diff", "notes", "weather"]);
    assert!(diff.contains(&format!("--digest {digest}")), "{diff}");
    fleet.cp.ctl_ok(&["tools", "approve", "notes", "weather", "--digest", digest]);
    converge(&fleet);
    assert_eq!(tools(&fleet, &alice), json!(["echo", "seen_headers", "weather"]));
}

#[test]
fn on_etcd_a_deleted_server_takes_the_definitions_reported_for_it_along() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path(), 1);
    let ca = dir.path().join("fleet-ca");
    let out = std::process::Command::new(bin("warden-cp")).args(["create-ca", "--out"]).arg(&ca).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (cert, key, url) = (ca.join("ca.crt"), ca.join("ca.key"), etcd.url());
    let store = ["--store", &url, "--ca-cert", cert.to_str().unwrap(), "--ca-key", key.to_str().unwrap()];
    let fleet = Fleet::start_with(&[], &store, &[], &[]);
    serve_with(&fleet, "toolPinning: {mode: record}");
    let alice = fleet.token("alice", "jti-etcd-pins", -10, 600);
    assert_eq!(tools(&fleet, &alice), json!(["echo", "seen_headers", "weather"]));
    tool_status(&fleet, "weather", |d| d["state"] == "approved");
    for (kind, name) in [("policy", "weather"), ("policy", "echo-only"), ("mcpserver", "notes")] {
        fleet.cp.ctl_ok(&["delete", kind, name]);
    }
    let left = fleet.cp.ctl_json(&["tools", "list", "notes"]);
    let log = fleet.cp.process.as_ref().unwrap().log_text();
    assert!(left["definitions"].as_array().is_none_or(Vec::is_empty), "{left}\n{log}");
}
