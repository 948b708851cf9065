//! Policy changes tested against real traffic: `wardenctl explain` of a stored decision, and
//! `wardenctl apply --test` replaying a scripted day of decisions against a proposed
//! configuration; `wardenctl test` running PolicyTest files locally.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tests::post;

use super::decisions::Fleet;

/// A token for `sub` with these scopes and, when given, groups.
fn token(fleet: &Fleet, sub: &str, scope: &str, groups: Option<&[&str]>) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut claims = json!({
        "iss": fleet.idp().issuer, "sub": sub, "aud": fleet.url(), "iat": now - 5, "exp": now + 600,
        "jti": format!("jti-{sub}-secret"), "scope": scope,
    });
    if let Some(groups) = groups {
        claims["groups"] = json!(groups);
    }
    fleet.idp().mint(&json!({ "claims": claims }))
}

fn call_with(fleet: &Fleet, token: &str, tool: &str, arguments: Value) -> u16 {
    let body =
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}});
    post(&fleet.url(), Some(token), &[], &body.to_string()).status
}

const TODAY: &str = r#"
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: echo-only}
spec:
  servers: [notes]
  cedar: |
    permit(principal, action == Action::"tools/call", resource) when { context.scopes.contains("notes:write") && ["echo", "add"].contains(resource.name) };
    permit(principal, action == Action::"tools/list", resource);
"#;

/// Opens `seen_headers` to writers, shuts contractors out, and forbids `add` with a `b`
/// argument: one flip each way, and two calls that cannot be judged (records keep no
/// argument values).
const PROPOSED: &str = r#"
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: echo-only}
spec:
  servers: [notes]
  cedar: |
    permit(principal, action == Action::"tools/call", resource) when { context.scopes.contains("notes:write") && ["echo", "add", "seen_headers"].contains(resource.name) };
    permit(principal, action == Action::"tools/list", resource);
    forbid(principal, action == Action::"tools/call", resource) when { resource.name == "add" && context.arguments.hasTag("b") };
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: no-contractors}
spec:
  servers: [notes]
  cedar: |
    forbid(principal, action, resource) when { principal has groups && principal.groups.contains("contractors") };
"#;

#[test]
fn explain_and_apply_test_report_exactly_what_a_scripted_day_implies() {
    let fleet = Fleet::start(&[]);
    fleet.cp.apply_ok(TODAY);
    fleet.cp.wait_converged(&["agent-d"], fleet.cp.version());
    let before = fleet.decisions().len();
    let alice = token(&fleet, "alice", "notes:write", None);
    let bob = token(&fleet, "bob", "notes:read", None);
    let carol = token(&fleet, "carol", "notes:write", Some(&["contractors"]));
    // The day: what policy decided, recorded by the real agent.
    for _ in 0..3 {
        fleet.call(Some(&alice), "echo");
    }
    call_with(&fleet, &alice, "add", json!({"a": 1, "b": 2, "note": "argument-value-never-recorded"}));
    call_with(&fleet, &alice, "add", json!({"a": 5, "b": 8}));
    fleet.call(Some(&alice), "seen_headers");
    fleet.call(Some(&bob), "echo");
    fleet.call(Some(&bob), "echo");
    fleet.call(Some(&carol), "echo");
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    post(&fleet.url(), Some(&alice), &[], &list.to_string());
    assert_eq!(fleet.call(None, "echo"), 401, "a refusal no policy decided");
    let all = fleet.wait_for_decisions(before + 11);
    let day = &all[before..];
    let find = |subject: &str, target: &str| {
        day.iter()
            .find(|d| d["subject"] == subject && d["target"] == target)
            .unwrap_or_else(|| panic!("{subject} {target} in {day:#?}"))
    };
    // Records name their caller by digest, the configuration version that decided, and
    // whether a call had arguments; never a token or an argument's value.
    let denied = find("bob", "echo");
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["caller"].as_str().unwrap().len(), 32);
    assert_eq!(denied["configVersion"], fleet.cp.version());
    assert_eq!(find("alice", "add")["arguments"], true);
    assert_eq!(find("alice", "echo")["arguments"], false);
    let text = serde_json::to_string(&day).unwrap();
    for secret in ["jti-alice-secret", alice.as_str(), "argument-value-never-recorded"] {
        assert!(!text.contains(secret), "a record reveals {secret:?}");
    }
    let add = find("alice", "add")["cursor"].to_string();
    let explained_add = fleet.cp.ctl_ok(&["explain", &add, "-o", "json"]);
    assert!(!explained_add.contains("argument-value-never-recorded"), "{explained_add}");

    // Why bob was refused: what policy saw, each condition, and what would allow it.
    let cursor = denied["cursor"].to_string();
    let why = fleet.cp.ctl_json(&["explain", &cursor]);
    assert_eq!(why["caller"]["subject"], "bob", "{why:#}");
    assert_eq!(why["caller"]["scopes"], json!(["notes:read"]));
    assert_eq!(why["sourceIp"], "127.0.0.1");
    assert_eq!(why["replayed"], "deny");
    let permit = &why["policies"][0];
    assert_eq!((permit["id"].as_str(), permit["scopeCheck"].as_str()), (Some("echo-only.0"), Some("held")));
    let checks: Vec<(&str, &str)> = permit["clauses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["text"].as_str().unwrap(), c["check"].as_str().unwrap()))
        .collect();
    assert_eq!(
        checks,
        [
            (r#"context.scopes.contains("notes:write")"#, "failed"),
            (r#"["echo", "add"].contains(resource.name)"#, "held")
        ]
    );
    assert_eq!(why["changes"], json!([r#"echo-only.0 would permit it with a token with the scope "notes:write""#]));
    // By id too, and in the table operators read.
    let id = denied["id"].as_str().unwrap();
    let table = fleet.cp.ctl_ok(&["explain", id]);
    assert!(table.contains("what would allow it:"), "{table}");
    assert!(table.contains(r#"failed  context.scopes.contains("notes:write")"#), "{table}");
    assert!(table.contains(r#"held    permit(principal, action == Action::"tools/call", resource)"#), "{table}");
    assert!(!table.contains(&bob), "explain never shows a token");
    let list_table = fleet.cp.ctl_ok(&["decisions", "--subject", "bob"]);
    assert!(list_table.starts_with("ID "), "{list_table}");
    // The refusal before any token: no policy to explain, and said so.
    let anonymous = day.iter().find(|d| d["reason"] == "missing_token").unwrap();
    let why_not = fleet.cp.ctl_json(&["explain", &anonymous["cursor"].to_string()]);
    assert!(why_not["notReplayed"].as_str().unwrap().starts_with("no policy decided it"), "{why_not:#}");
    assert!(!fleet.cp.ctl(&["explain", "99999999"]).status.success());

    // The proposed change, tested against the day: exactly the flips the script implies.
    let version = fleet.cp.version();
    let file = std::env::temp_dir().join(format!("warden-proposed-{}.yaml", std::process::id()));
    std::fs::write(&file, PROPOSED).unwrap();
    let test = fleet.cp.ctl_json(&["apply", "--test", "--since", "1h", "-f", file.to_str().unwrap()]);
    let flips = test["flips"].as_array().unwrap();
    let summary: Vec<(&str, &str, u64, Value)> = flips
        .iter()
        .map(|f| {
            (
                f["direction"].as_str().unwrap(),
                f["target"].as_str().unwrap(),
                f["count"].as_u64().unwrap(),
                f["policies"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("allow_to_deny", "echo", 1, json!(["no-contractors.0"])),
            ("deny_to_allow", "seen_headers", 1, json!(["echo-only.0"])),
        ],
        "{test:#}"
    );
    assert_eq!(flips[0]["wasAllowedBy"], json!(["echo-only.0"]));
    assert_eq!(flips[0]["callers"], 1);
    assert_eq!(flips[0]["examples"].as_array().unwrap().len(), 1);
    // 10 policy decisions (3 + 2 + 1 + 2 + 1 echo/add/seen_headers calls, 1 list): the two
    // `add` calls had arguments that a proposed policy reads.
    assert_eq!(test["cannotJudge"], json!({"policy_reads_arguments": 2}), "{test:#}");
    assert_eq!((test["replayed"].as_u64(), test["unchanged"].as_u64()), (Some(8), Some(6)), "{test:#}");
    assert!(test["notPolicy"].as_u64().unwrap() >= 1);
    assert_eq!(test["differsFromRecorded"], 0);
    assert_eq!(fleet.cp.version(), version, "a test applies nothing");
    let table = fleet.cp.ctl_ok(&["apply", "--test", "--since", "1h", "-f", file.to_str().unwrap()]);
    assert!(table.contains("allow → deny: tools/call echo on notes — 1 decision, 1 caller"), "{table}");
    assert!(table.contains("forbidden by no-contractors.0"), "{table}");
    // Once the change is applied, testing it again flips nothing: flips are counted against the
    // configuration in force, and the two decisions it changed are said to differ from their
    // records.
    fleet.cp.apply_ok(PROPOSED);
    let again = fleet.cp.ctl_json(&["apply", "--test", "--since", "1h", "-f", file.to_str().unwrap()]);
    assert_eq!(again["flips"], json!([]), "{again:#}");
    assert_eq!(again["differsFromRecorded"], 2, "{again:#}");
    // A proposal that does not compile is refused, and nothing is replayed.
    std::fs::write(&file, PROPOSED.replace("principal.groups.contains", "principal.groupz.contains")).unwrap();
    let refused = fleet.cp.ctl(&["apply", "--test", "-f", file.to_str().unwrap()]);
    assert!(!refused.status.success());
    let _ = std::fs::remove_file(&file);
}

#[test]
fn policy_tests_run_locally_and_fail_with_what_would_allow_the_request() {
    let fleet = Fleet::start(&[]);
    let dir = std::env::temp_dir().join(format!("warden-policy-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("resources.yaml"),
        r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {name: corp}
spec:
  issuer: https://idp.example.com
  keys: {jwksUri: https://idp.example.com/jwks}
  allowedAlgorithms: [ES256]
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {name: notes}
spec:
  resource: https://mcp.example.com/notes
  issuers: [corp]
  upstream: http://127.0.0.1:1/mcp
"#,
    )
    .unwrap();
    std::fs::write(dir.join("policy.yaml"), TODAY).unwrap();
    let tests = |extra: &str| {
        format!(
            r#"
apiVersion: warden.dev/v1
kind: PolicyTest
metadata: {{name: writers}}
spec:
  cases:
    - {{name: a writer echoes, server: notes, principal: {{issuer: corp, subject: a, scopes: [notes:write]}},
       method: tools/call, tool: echo, expect: allow, decidedBy: [echo-only.0]}}
    - {{name: a reader does not, server: notes, principal: {{issuer: corp, subject: b, scopes: [notes:read]}},
       method: tools/call, tool: echo, expect: deny}}
{extra}"#
        )
    };
    std::fs::write(dir.join("tests.yaml"), tests("")).unwrap();
    let path = dir.to_str().unwrap();
    let out = fleet.cp.ctl(&["test", "-f", path]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 passed, 0 failed"), "{text}");
    // A case that fails says why and what would allow the request; the exit code is 1.
    let failing = "    - {name: readers may delete, server: notes, principal: {issuer: corp, subject: b, scopes: [notes:read]},\n       method: tools/call, tool: delete_repository, expect: allow}\n";
    std::fs::write(dir.join("tests.yaml"), tests(failing)).unwrap();
    let out = fleet.cp.ctl(&["test", "-f", path]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED writers: readers may delete"), "{text}");
    assert!(text.contains("expected allow, policy decided deny"), "{text}");
    assert!(
        text.contains(r#"would allow it: echo-only.0 would permit it with a token with the scope "notes:write" and "delete_repository" added to the list ["echo", "add"]"#),
        "{text}"
    );
    // The same directory applies: the tests are left out, and said so.
    let applied = fleet.cp.ctl(&["apply", "--dry-run", "-f", path]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    assert!(String::from_utf8_lossy(&applied.stderr).contains("skipping 1 PolicyTest document(s)"));
    // A broken test file is an error with its place, not a pass.
    std::fs::write(dir.join("tests.yaml"), tests("    - {name: x, server: notes, expect: perhaps}\n")).unwrap();
    let out = fleet.cp.ctl(&["test", "-f", path]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tests.yaml (document 1)"), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
