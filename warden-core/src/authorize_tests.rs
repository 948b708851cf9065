use super::*;
use crate::resource::test_documents;

const NOW: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z, a Tuesday

fn authorizer(policies: &str) -> Authorizer {
    let yaml = format!(
        r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: corp-idp}}
spec:
  issuer: https://idp.example.com
  keys: {{jwksUri: https://idp.example.com/jwks}}
  allowedAlgorithms: [ES256]
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: github}}
spec:
  resource: https://mcp.example.com/github
  issuers: [corp-idp]
  upstream: http://127.0.0.1:3000/mcp
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: billing}}
spec:
  resource: https://mcp.example.com/billing
  issuers: [corp-idp]
  upstream: http://127.0.0.1:3001/mcp
{policies}"#
    );
    let docs = test_documents(&yaml);
    Authorizer::new(&Config::build(&docs).unwrap())
}

fn workload(subject: &str, claims: serde_json::Value) -> Verified {
    Verified {
        issuer: "corp-idp".into(),
        subject: subject.into(),
        jti: None,
        jti_hash: None,
        jti_key: None,
        expires_at: NOW + 600,
        issued_at: NOW - 60,
        valid_until: NOW + 660,
        bound_certificate: None,
        bound_dpop_key: None,
        scopes: vec!["repo:read".into()],
        claims: claims.as_object().cloned().unwrap_or_default(),
        task: None,
        bridge: None,
        derived: Default::default(),
    }
}

fn facts() -> RequestFacts<'static> {
    RequestFacts { source_ip: "10.1.2.3".parse().unwrap(), now: NOW, granted_tools: &[], arguments: None }
}

const COOKBOOK: &str = r#"
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: github-tools}
spec:
  servers: [github]
  cedar: |
    permit(principal, action == Action::"tools/list", resource);
    permit(principal, action == Action::"tools/call", resource)
    when { ["search", "get_file"].contains(resource.name) && context.scopes.contains("repo:read") };
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: tenant-isolation}
spec:
  cedar: |
    forbid(principal, action, resource)
    when { principal has tenant && principal.tenant == "blocked" };
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: billing-office-hours}
spec:
  servers: [billing]
  cedar: |
    permit(principal, action == Action::"tools/call", resource)
    when { resource.name == "invoice" && context.time.toTime() >= duration("8h") && context.time.toTime() < duration("18h") };
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: public-files-only}
spec:
  servers: [github]
  cedar: |
    permit(principal, action == Action::"tools/call", resource == Tool::"github/read_file");
    forbid(principal, action == Action::"tools/call", resource == Tool::"github/read_file")
    unless { context.arguments.hasTag("path") && context.arguments.getTag("path") like "/srv/public/*"
             && !(context.arguments.getTag("path") like "*..*") };
"#;

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_string()).unwrap()
}

#[test]
fn per_tool_permits_with_default_deny() {
    let a = authorizer(COOKBOOK);
    let w = workload("ci-runner", serde_json::json!({}));
    let call = |server, tool| a.authorize(server, &w, "tools/call", Target::Tool(tool), &facts()).unwrap();
    let ok = call("github", "search");
    assert!(ok.allowed, "{ok:?}");
    assert_eq!(ok.policies, ["github-tools.1"]);
    assert!(!call("github", "delete_repo").allowed, "not permitted: default deny");
    assert!(a.authorize("github", &w, "tools/list", Target::Server, &facts()).unwrap().allowed);
    // The github policy is scoped to github: it grants nothing on billing.
    assert!(!call("billing", "search").allowed);
    assert!(!call("no-such-server", "search").allowed);
}

#[test]
fn claims_and_scopes_feed_the_decision_and_forbid_wins() {
    let a = authorizer(COOKBOOK);
    let w = workload("ci-runner", serde_json::json!({"tenant": "blocked"}));
    let denied = a.authorize("github", &w, "tools/call", Target::Tool("search"), &facts()).unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.policies, ["tenant-isolation.0"], "the forbid decided");
    // Another token of the same workload, with other claims.
    let mut w = workload("ci-runner", serde_json::json!({"tenant": "acme"}));
    assert!(a.authorize("github", &w, "tools/call", Target::Tool("search"), &facts()).unwrap().allowed);
    w = Verified { scopes: Vec::new(), ..w.clone() };
    assert!(!a.authorize("github", &w, "tools/call", Target::Tool("search"), &facts()).unwrap().allowed);
    // Changed in place after use (what is kept beside it was built from the old claims): decided
    // as it now is, not as it was.
    let mut w = workload("ci-runner", serde_json::json!({"tenant": "acme"}));
    assert!(a.authorize("github", &w, "tools/call", Target::Tool("search"), &facts()).unwrap().allowed);
    w.claims.insert("tenant".into(), "blocked".into());
    assert!(!a.authorize("github", &w, "tools/call", Target::Tool("search"), &facts()).unwrap().allowed);
}

#[test]
fn time_windows_use_the_request_time() {
    let a = authorizer(COOKBOOK);
    let w = workload("accountant", serde_json::json!({}));
    let at = |now| {
        let facts = RequestFacts { now, ..facts() };
        a.authorize("billing", &w, "tools/call", Target::Tool("invoice"), &facts).unwrap().allowed
    };
    assert!(!at(NOW), "22:13 UTC is outside office hours");
    assert!(at(NOW - 10 * 3600), "12:13 UTC is inside");
}

#[test]
fn arguments_reach_policy_as_tags() {
    let a = authorizer(COOKBOOK);
    let w = workload("ci-runner", serde_json::json!({}));
    let read = |arguments: Option<&str>| {
        let arguments = arguments.map(raw);
        let facts = RequestFacts { arguments: arguments.as_deref(), ..facts() };
        a.authorize("github", &w, "tools/call", Target::Tool("read_file"), &facts).unwrap()
    };
    for _ in 0..2 {
        // The second time, each answer comes from the outcomes remembered: by arguments too.
        assert!(read(Some(r#"{"path": "/srv/public/a.txt", "lines": 10}"#)).allowed);
        assert!(read(Some(r#"{"path":"/srv/public/\u0061.txt"}"#)).allowed, "escapes decoded");
        let denied = read(Some(r#"{"path": "/etc/passwd"}"#));
        assert_eq!((denied.allowed, &denied.policies[..]), (false, &["public-files-only.1".to_string()][..]));
        assert!(!read(Some(r#"{"path": "/srv/public/../../etc/passwd"}"#)).allowed);
        assert!(!read(Some(r#"{"file": "/srv/public/a.txt"}"#)).allowed, "no path: forbidden");
        assert!(!read(Some(r#"{"path": ["/srv/public/a.txt"]}"#)).allowed, "an array is its JSON text");
        assert!(!read(None).allowed);
    }
}

#[test]
fn argument_values_other_than_strings_are_their_canonical_json() {
    let policy = r#"
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: shapes}
spec:
  servers: [github]
  cedar: |
    permit(principal, action == Action::"tools/call", resource)
    when { context.arguments.hasTag("limit") && context.arguments.getTag("limit") == "10"
           && context.arguments.hasTag("draft") && context.arguments.getTag("draft") == "false"
           && context.arguments.hasTag("labels")
           && context.arguments.getTag("labels") == "[\"a\",{\"b\":null}]" };
"#;
    let a = authorizer(policy);
    let w = workload("ci-runner", serde_json::json!({}));
    let call = |arguments: &str| {
        let arguments = raw(arguments);
        let facts = RequestFacts { arguments: Some(&arguments), ..facts() };
        a.authorize("github", &w, "tools/call", Target::Tool("create_issue"), &facts).unwrap()
    };
    assert!(call(r#"{"limit": 10, "draft": false, "labels": [ "a", {"b": null} ]}"#).allowed);
    assert!(!call(r#"{"limit": "11", "draft": false, "labels": ["a", {"b": null}]}"#).allowed);
    // Policies must guard every tag read with `hasTag` (strict validation), so a missing
    // argument makes the condition false rather than an error.
    let missing = call(r#"{"limit": 10}"#);
    assert!(!missing.allowed && missing.errors.is_empty(), "{missing:?}");
    let unguarded = r#"
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: unguarded}
spec:
  cedar: |
    permit(principal, action, resource) when { context.arguments.getTag("limit") == "10" };
"#;
    let document = crate::resource::yaml_documents(unguarded).unwrap().remove(0);
    let refused = crate::resource::Document::from_json(document, &Default::default()).unwrap_err().to_string();
    assert!(refused.contains("unable to guarantee safety of access to tag"), "{refused}");
}

#[test]
fn unknown_methods_are_not_authorized() {
    let a = authorizer(COOKBOOK);
    let w = workload("ci-runner", serde_json::json!({}));
    assert!(a.authorize("github", &w, "tools/exec", Target::Tool("search"), &facts()).is_err());
}

#[test]
fn iso8601_dates() {
    assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
    assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(iso8601(4_102_444_800), "2100-01-01T00:00:00Z");
}

#[test]
fn a_policy_that_fails_at_evaluation_denies() {
    // Validates (types are right), but overflows at run time for every request.
    let overflow = r#"
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: broken-forbid}
spec:
  cedar: |
    forbid(principal, action, resource) when { 9223372036854775807 + 1 > 0 };
"#;
    let a = authorizer(&format!("{COOKBOOK}{overflow}"));
    let w = workload("ci-runner", serde_json::json!({}));
    let outcome = a.authorize("github", &w, "tools/call", Target::Tool("search"), &facts()).unwrap();
    assert!(!outcome.allowed, "{outcome:?}");
    assert_eq!(outcome.errors.len(), 1);
}

#[test]
fn reused_principals_contexts_and_entities_never_cross_inputs() {
    let a = authorizer(
        r#"
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: ops-from-inside}
spec:
  cedar: |
    permit(principal, action == Action::"tools/call", resource)
    when { resource.name == "restart" && context.source_ip.isInRange(ip("10.0.0.0/8"))
           && principal has groups && principal.groups.contains("ops") };
"#,
    );
    let decide = |groups: serde_json::Value, ip: &str, tool: &str| {
        let w = workload("alice", serde_json::json!({ "groups": groups }));
        let facts = RequestFacts { source_ip: ip.parse().unwrap(), ..facts() };
        a.authorize("github", &w, "tools/call", Target::Tool(tool), &facts).unwrap().allowed
    };
    // Each case right after one that shares all but one input with it.
    assert!(decide(serde_json::json!(["ops"]), "10.1.2.3", "restart"));
    assert!(!decide(serde_json::json!(["ops"]), "192.168.1.1", "restart"));
    assert!(!decide(serde_json::json!(["dev"]), "10.1.2.3", "restart"));
    assert!(!decide(serde_json::json!(["ops"]), "10.1.2.3", "delete"));
    assert!(!decide(serde_json::json!([]), "10.1.2.3", "restart"));
    assert!(decide(serde_json::json!(["ops"]), "10.1.2.3", "restart"));
}

#[test]
fn a_task_token_is_its_workload_limited_to_its_granted_tools() {
    let a = authorizer(
        r#"
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: alice-everything}
spec:
  cedar: |
    permit(principal == Workload::"corp-idp/alice", action, resource);
"#,
    );
    let mut task = workload("alice", serde_json::json!({}));
    task.issuer = "warden".into();
    task.task = Some(crate::token::Task {
        subject_issuer: "corp-idp".into(),
        tools: vec!["search".into()],
        subject_token: None,
    });
    let granted = ["search".to_string()];
    let facts = RequestFacts { granted_tools: &granted, ..facts() };
    let call = |tool| a.authorize("github", &task, "tools/call", Target::Tool(tool), &facts).unwrap();
    let allowed = call("search");
    assert!(allowed.allowed, "policies written for corp-idp/alice hold for her task token: {allowed:?}");
    let other = call("delete_repository");
    assert!(!other.allowed && other.not_granted, "policy would allow it; the task was not granted it");
    assert!(a.authorize("github", &task, "tools/list", Target::Server, &facts).unwrap().allowed);
    // Resources and prompts (and so their completions and subscriptions, which are decided as
    // these actions) were never granted: the workload's own policy allows them, the task token
    // does not.
    for (method, target) in
        [("resources/read", Target::Resource("file:///etc/passwd")), ("prompts/get", Target::Prompt("summarise"))]
    {
        let outcome = a.authorize("github", &task, method, target, &facts).unwrap();
        assert!(!outcome.allowed && outcome.not_granted, "{method}: {outcome:?}");
        let own = workload("alice", serde_json::json!({}));
        assert!(a.authorize("github", &own, method, target, &facts).unwrap().allowed, "{method}");
    }
    // The exchange itself is put to policy, per tool, with its own action (for the workload's
    // own token: a task token is never exchanged again).
    let alice = workload("alice", serde_json::json!({}));
    assert!(a.authorize("github", &alice, EXCHANGE_ACTION, Target::Tool("delete_repository"), &facts).unwrap().allowed);
    let bob = workload("bob", serde_json::json!({}));
    assert!(!a.authorize("github", &bob, EXCHANGE_ACTION, Target::Tool("search"), &facts).unwrap().allowed);
}

#[test]
fn a_remembered_outcome_answers_only_the_very_same_request() {
    // One authorizer sees every request (and remembers outcomes); each answer must equal that of
    // an authorizer seeing the request for the first time.
    let warm = authorizer(COOKBOOK);
    let mut requests = Vec::new();
    for subject in ["ci-runner", "accountant", "contractor"] {
        for tenant in [None, Some("acme"), Some("other")] {
            for scopes in [vec![], vec!["repo:read".to_string()]] {
                for now in [NOW, NOW - 10 * 3600] {
                    for ip in ["10.1.2.3", "192.0.2.7"] {
                        let mut w = workload(subject, serde_json::json!({}));
                        if let Some(t) = tenant {
                            w.claims.insert("tenant".into(), t.into());
                        }
                        w.scopes = scopes.clone();
                        requests.push((w, now, ip));
                    }
                }
            }
        }
    }
    for _ in 0..2 {
        for (w, now, ip) in &requests {
            let facts = RequestFacts { source_ip: ip.parse().unwrap(), now: *now, granted_tools: &[], arguments: None };
            for (server, method, target) in [
                ("github", "tools/call", Target::Tool("search")),
                ("github", "tools/call", Target::Tool("delete_repository")),
                ("github", "tools/list", Target::Server),
                ("billing", "tools/call", Target::Tool("invoice")),
            ] {
                let fresh = authorizer(COOKBOOK).authorize(server, w, method, target, &facts);
                assert_eq!(warm.authorize(server, w, method, target, &facts), fresh, "{server} {method} {target:?}");
            }
            for arguments in [r#"{"path":"/srv/public/a"}"#, r#"{"path":"/etc/passwd"}"#, "{}"] {
                let arguments = raw(arguments);
                let facts = RequestFacts { arguments: Some(&arguments), ..facts.clone() };
                let target = Target::Tool("read_file");
                let fresh = authorizer(COOKBOOK).authorize("github", w, "tools/call", target, &facts);
                assert_eq!(warm.authorize("github", w, "tools/call", target, &facts), fresh, "{arguments}");
            }
        }
    }
}

#[test]
fn an_ipv4_caller_seen_through_a_dual_stack_listener_is_decided_by_its_ipv4_address() {
    // Found by the property tests (props::authorize): Cedar's `ip()` refuses IPv4-mapped IPv6,
    // so every request through a `[::]` listener from an IPv4 caller failed to build and was
    // denied, whatever policy said.
    let policy = r#"
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: office-network}
spec:
  cedar: |
    permit(principal, action == Action::"tools/list", resource)
    when { context.source_ip.isInRange(ip("10.0.0.0/8")) };
"#;
    let a = authorizer(policy);
    let w = workload("ci-runner", serde_json::json!({}));
    let from = |ip: &str| {
        let facts = RequestFacts { source_ip: ip.parse().unwrap(), ..facts() };
        a.authorize("github", &w, "tools/list", Target::Server, &facts)
    };
    assert!(from("10.1.2.3").unwrap().allowed);
    assert!(from("::ffff:10.1.2.3").unwrap().allowed, "the same caller, mapped");
    assert!(!from("::ffff:192.0.2.1").unwrap().allowed);
    assert!(!from("2001:db8::1").unwrap().allowed);
}

#[test]
fn a_method_is_decided_only_on_the_kind_of_resource_it_applies_to_in_every_build() {
    // Found by the property tests (props::authorize) in a release build: only debug builds
    // validated the request against the schema, so there a method on the wrong kind of target,
    // or a method the schema does not know, was put to the policies, and an unscoped `permit`
    // allowed it.
    let policy = r#"
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: everything}
spec:
  cedar: |
    permit(principal, action, resource);
"#;
    let a = authorizer(policy);
    let w = workload("ci-runner", serde_json::json!({}));
    let decide = |method, target| a.authorize("github", &w, method, target, &facts());
    assert!(decide("tools/call", Target::Tool("search")).unwrap().allowed);
    assert!(decide("tools/list", Target::Server).unwrap().allowed);
    for (method, target) in [
        ("tools/list", Target::Tool("search")),
        ("tools/call", Target::Server),
        ("resources/read", Target::Prompt("p")),
        ("Tools/Call", Target::Tool("search")),
        ("acme/deleteEverything", Target::Server),
    ] {
        let refused = decide(method, target).unwrap_err();
        assert!(refused.to_string().contains("is not an action on a"), "{method} {target:?}: {refused}");
    }
}

#[test]
fn shadow_policies_change_no_outcome_and_name_every_flip() {
    let policies = r#"
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: github-tools}
spec:
  servers: [github]
  cedar: |
    permit(principal, action == Action::"tools/call", resource) when { resource.name == "search" };
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: next-tools}
spec:
  servers: [github]
  mode: shadow
  cedar: |
    permit(principal, action == Action::"tools/call", resource) when { resource.name == "get_file" };
    forbid(principal, action == Action::"tools/call", resource) when { resource.name == "search" && principal.subject == "ci-bot" };
"#;
    let a = authorizer(policies);
    let call = |who: &str, tool: &str| {
        a.authorize("github", &workload(who, serde_json::json!({})), "tools/call", Target::Tool(tool), &facts())
            .unwrap()
    };
    // Enforced outcomes as without the shadow policy; the records say what it would flip.
    let allowed_now = call("alice", "search");
    assert!(allowed_now.allowed);
    assert_eq!(allowed_now.shadow, None, "same outcome under the shadow policy: nothing to record");
    let newly_allowed = call("alice", "get_file");
    assert!(!newly_allowed.allowed, "a shadow permit allows nothing");
    let shadow = newly_allowed.shadow.expect("a flip");
    assert_eq!(
        (shadow.allowed, shadow.code(), shadow.policies),
        (true, "shadow_allow", vec!["next-tools.0".to_string()])
    );
    let newly_denied = call("ci-bot", "search");
    assert!(newly_denied.allowed, "a shadow forbid denies nothing");
    let shadow = newly_denied.shadow.expect("a flip");
    assert_eq!(
        (shadow.allowed, shadow.code(), shadow.policies),
        (false, "shadow_deny", vec!["next-tools.1".to_string()])
    );
    assert_eq!(call("alice", "delete_repo").shadow, None, "denied either way");
    // On a server no shadow policy applies to, nothing is evaluated twice.
    let billing = a
        .authorize("billing", &workload("alice", serde_json::json!({})), "tools/call", Target::Tool("x"), &facts())
        .unwrap();
    assert_eq!(billing.shadow, None);
}

#[test]
fn step_up_names_the_scopes_of_the_permits_that_would_allow_and_the_forbids_that_denied() {
    let a = authorizer(
        r#"---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: scoped}
spec:
  servers: [github]
  cedar: |
    @scope("repo:write")
    permit(principal, action == Action::"tools/call", resource)
    when { resource.name == "merge" && context.scopes.contains("repo:write") };
    @scope("repo:admin")
    forbid(principal, action == Action::"tools/call", resource)
    when { resource.name == "merge" } unless { context.scopes.contains("repo:admin") };
    @scope("billing:audit")
    permit(principal, action == Action::"tools/call", resource)
    when { resource.name == "ledger" && context.scopes.contains("billing:audit") };
"#,
    );
    let caller = workload("alice", serde_json::json!({}));
    let merge = Target::Tool("merge");
    let denied = a.authorize("github", &caller, "tools/call", merge, &facts()).unwrap();
    assert!(!denied.allowed);
    // Both the permit's and the forbid's scopes, and not the unrelated one.
    let needed = a.step_up("github", &caller, "tools/call", merge, &facts(), &denied.policies).unwrap();
    assert_eq!(needed, ["repo:write", "repo:admin"]);
    // Advisory only: the caller's own request is still denied.
    assert!(!a.authorize("github", &caller, "tools/call", merge, &facts()).unwrap().allowed);
    // Holding one, only the other is named.
    let mut half = caller.clone();
    half.scopes.push("repo:admin".into());
    let denied = a.authorize("github", &half, "tools/call", merge, &facts()).unwrap();
    assert_eq!(a.step_up("github", &half, "tools/call", merge, &facts(), &denied.policies).unwrap(), ["repo:write"]);
    // Nothing any scope would open: no step-up.
    let other = Target::Tool("delete");
    assert_eq!(a.step_up("github", &caller, "tools/call", other, &facts(), &[]), None);
    // A server with no annotated policy: none.
    assert_eq!(a.step_up("billing", &caller, "tools/call", merge, &facts(), &[]), None);
}

/// One `Policy` document for the github server.
fn github_policy(name: &str, mode: &str, cedar: &str) -> String {
    let indented: String = cedar.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "---\napiVersion: warden.dev/v1\nkind: Policy\nmetadata: {{name: {name}}}\nspec:\n  servers: [github]\n  mode: {mode}\n  cedar: |\n{indented}"
    )
}

#[test]
fn what_no_policy_reads_is_fixed_so_new_seconds_and_addresses_reuse_the_outcome() {
    let a = authorizer(&github_policy(
        "tools",
        "enforce",
        r#"permit(principal, action == Action::"tools/call", resource) when { context.scopes.contains("repo:read") };"#,
    ));
    let w = workload("ci-runner", serde_json::json!({}));
    for second in 0..50 {
        let facts = RequestFacts { now: NOW + second, source_ip: IpAddr::from([10, 0, 0, second as u8]), ..facts() };
        let arguments = raw(&format!(r#"{{"n": {second}}}"#));
        let facts = RequestFacts { arguments: Some(&arguments), ..facts };
        assert!(a.authorize("github", &w, "tools/call", Target::Tool("search"), &facts).unwrap().allowed);
    }
    let lens = |a: &Authorizer| (a.outcomes.lock().unwrap().len(), a.contexts.lock().unwrap().len());
    assert_eq!(lens(&a), (1, 1), "time, address and arguments read by no policy: one context, one evaluation");

    // A policy that reads the time: a context and an outcome per second.
    let a = authorizer(&github_policy(
        "tools",
        "enforce",
        r#"permit(principal, action == Action::"tools/call", resource) when { context.time.toDate() > datetime("2020-01-01") };"#,
    ));
    for second in 0..5 {
        let facts = RequestFacts { now: NOW + second, ..facts() };
        assert!(a.authorize("github", &w, "tools/call", Target::Tool("search"), &facts).unwrap().allowed);
    }
    assert_eq!(lens(&a), (5, 5));
}

#[test]
fn a_shadow_policy_that_reads_the_time_sees_the_time() {
    // The enforced policy reads no time; the shadow one does, and must see the request's.
    let policies = github_policy(
        "tools",
        "enforce",
        r#"permit(principal, action == Action::"tools/call", resource == Tool::"github/search");"#,
    ) + &github_policy(
        "office-hours",
        "shadow",
        r#"forbid(principal, action, resource) unless { context.time.toTime() >= duration("8h") && context.time.toTime() < duration("18h") };"#,
    );
    let a = authorizer(&policies);
    let w = workload("ci-runner", serde_json::json!({}));
    let at = |now| {
        let facts = RequestFacts { now, ..facts() };
        a.authorize("github", &w, "tools/call", Target::Tool("search"), &facts).unwrap()
    };
    let night = at(NOW);
    assert!(night.allowed);
    assert_eq!(night.shadow.map(|s| s.allowed), Some(false), "22:13 UTC: the shadow forbid would deny");
    let day = at(NOW - 10 * 3600);
    assert!(day.allowed && day.shadow.is_none(), "12:13 UTC: the same outcome");
}

#[test]
fn arguments_reached_other_than_by_name_are_still_read() {
    // `context` used through an expression, not `context.arguments`: the arguments are read, so
    // they must not be fixed (else this forbid could never match, and would fail open).
    let a = authorizer(&github_policy(
        "files",
        "enforce",
        r#"permit(principal, action == Action::"tools/call", resource);
forbid(principal, action == Action::"tools/call", resource)
  when { (if true then context else context).arguments.hasTag("path") &&
         (if true then context else context).arguments.getTag("path") == "/etc/passwd" };"#,
    ));
    assert!(a.reads_arguments("github"));
    let w = workload("ci-runner", serde_json::json!({}));
    let call = |arguments: &str| {
        let arguments = raw(arguments);
        let facts = RequestFacts { arguments: Some(&arguments), ..facts() };
        a.authorize("github", &w, "tools/call", Target::Tool("read_file"), &facts).unwrap().allowed
    };
    assert!(call(r#"{"path": "/srv/a.txt"}"#));
    assert!(!call(r#"{"path": "/etc/passwd"}"#), "the forbid sees the arguments");
}
