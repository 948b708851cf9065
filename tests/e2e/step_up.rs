//! Step-up from policy: a policy that says which scope it needs (`@scope("…")`) turns a call
//! denied only for want of that scope into `403 insufficient_scope` naming every scope the
//! request needs, which MCP clients answer by asking for a token with them.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use tests::post;

use crate::decisions::Fleet;

fn token(fleet: &Fleet, sub: &str, scope: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = json!({
        "iss": fleet.idp().issuer, "sub": sub, "aud": fleet.url(), "iat": now - 10, "exp": now + 600,
        "jti": format!("jti-{sub}-{scope}"), "scope": scope,
    });
    fleet.idp().mint(&json!({ "claims": claims }))
}

fn call(fleet: &Fleet, token: &str, tool: &str) -> tests::Answer {
    let body = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": tool, "arguments": {"name": "x"}}});
    post(&fleet.url(), Some(token), &[], &body.to_string())
}

#[test]
fn a_call_denied_only_for_a_scope_a_policy_names_is_a_step_up_challenge() {
    let fleet = Fleet::start(&[]);
    fleet.cp.apply_ok(
        r#"
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: writers}
spec:
  servers: [notes]
  cedar: |
    @scope("notes:write notes:admin")
    permit(principal, action == Action::"tools/call", resource)
    when { resource.name == "delete_repository" && context.scopes.contains("notes:write") && context.scopes.contains("notes:admin") };
"#,
    );
    let version = fleet.cp.version();
    fleet.cp.wait_converged(&["agent-d"], version);

    // Neither scope: both are named at once, with the caller's own kept.
    let reader = token(&fleet, "alice", "notes:read");
    let answer = call(&fleet, &reader, "delete_repository");
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.challenge.contains(r#"error="insufficient_scope""#), "{}", answer.challenge);
    assert!(answer.challenge.contains(r#"scope="notes:read notes:write notes:admin""#), "{}", answer.challenge);
    assert!(answer.challenge.contains("resource_metadata="), "{}", answer.challenge);
    // One of the two: the other is still asked for.
    let half = token(&fleet, "bob", "notes:write");
    let answer = call(&fleet, &half, "delete_repository");
    assert_eq!(answer.status, 403);
    assert!(answer.challenge.contains(r#"scope="notes:write notes:admin""#), "{}", answer.challenge);
    // With both: allowed.
    let writer = token(&fleet, "carol", "notes:write notes:admin");
    let answer = call(&fleet, &writer, "delete_repository");
    assert!(answer.status != 403 && answer.challenge.is_empty(), "{}", answer.body);
    // A tool no scope would open stays a plain denial, and a batch is answered per message.
    let answer = call(&fleet, &reader, "count");
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("-32001") && answer.challenge.is_empty(), "{}", answer.body);
    let batch = json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_repository", "arguments": {"name": "x"}}}]);
    let answer = post(&fleet.url(), Some(&reader), &[], &batch.to_string());
    assert_eq!(answer.status, 200, "{}", answer.body);
    let decisions = fleet.wait_for_decisions(5);
    let reasons: Vec<&str> = decisions.iter().filter_map(|d| d["reason"].as_str()).collect();
    assert_eq!(reasons.iter().filter(|r| **r == "insufficient_scope").count(), 2, "{reasons:?}");
    assert!(
        decisions
            .iter()
            .any(|d| d["subject"] == "carol" && d["decision"] == "allow" && d["policies"] == json!(["writers.0"])),
        "{decisions:?}"
    );

    // A scope that is not a scope token is refused when applied.
    let bad = fleet.cp.apply(
        "apiVersion: warden.dev/v1\nkind: Policy\nmetadata: {name: bad}\nspec:\n  cedar: |\n    @scope(\"a\\\"b\")\n    permit(principal, action, resource);\n",
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("@scope"), "{bad:?}");
}
