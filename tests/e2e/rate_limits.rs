//! Rate limits per caller: each agent keeps a token bucket per validated workload (and tool or
//! tenant, when asked); past it a request is answered 429 with Retry-After, recorded as
//! `rate_limited`, and never reaches the upstream MCP server.

use std::time::{Duration, Instant};

use serde_json::json;
use tests::{post, wait_for_or};

use crate::decisions::Fleet;

/// `notes` again, with `limits` (YAML flow sequence) as its rate limits.
fn limit(fleet: &Fleet, limits: &str) {
    serve_with(fleet, &format!("rateLimits: {limits}"));
}

/// `notes` again, with `spec` (one line of its spec) added.
fn serve_with(fleet: &Fleet, spec: &str) {
    let gateway = fleet.url().trim_start_matches("http://").trim_end_matches("/mcp").to_string();
    fleet.cp.apply_ok(&format!(
        "apiVersion: warden.dev/v1\nkind: McpServer\nmetadata: {{name: notes}}\nspec:\n  resource: http://{gateway}/mcp\n  issuers: [test-idp]\n  upstream: {}\n  listen: {gateway}\n  {spec}\n",
        fleet.upstream().url
    ));
    let version = fleet.cp.version();
    fleet.cp.wait_converged(&["agent-d"], version);
}

/// Requests the upstream MCP server has answered (its access log).
fn upstream_calls(fleet: &Fleet) -> usize {
    fleet.upstream().process.log_text().matches("\"POST /mcp").count()
}

fn call(fleet: &Fleet, token: &str, tool: &str) -> tests::Answer {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": {}}});
    post(&fleet.url(), Some(token), &[], &body.to_string())
}

#[test]
fn one_caller_gets_its_burst_and_then_the_rate_and_the_rest_never_reach_the_upstream() {
    let fleet = Fleet::start(&[]);
    limit(&fleet, "[{requests: 10, period: 1s}]");
    let alice = fleet.token("alice", "jti-limited", -10, 600);
    let before = upstream_calls(&fleet);
    let (mut allowed, mut limited) = (0u64, 0u64);
    let started = Instant::now();
    let mut first_refusal = None;
    while started.elapsed() < Duration::from_secs(10) {
        let answer = call(&fleet, &alice, "echo");
        if answer.status == 429 {
            limited += 1;
            first_refusal.get_or_insert(answer);
        } else {
            allowed += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst (10) at once, then 10 a second.
    let expected = 10.0 + 10.0 * elapsed;
    assert!(
        (allowed as f64 - expected).abs() <= 0.1 * expected,
        "{allowed} allowed in {elapsed:.1} s, {expected:.0} expected ({limited} limited)"
    );
    assert!(limited > allowed, "the caller was held back: {limited} limited");
    let refusal = first_refusal.unwrap();
    let retry_after: u64 = refusal.retry_after.as_deref().expect("Retry-After").parse().unwrap();
    assert_eq!(retry_after, 1, "a tenth of a second rounds up to 1");
    let body: serde_json::Value = serde_json::from_str(&refusal.body).unwrap();
    assert_eq!(body["error"]["data"]["reason"], "rate_limited", "{body}");
    assert_eq!(body["id"], 7);

    // Only what was allowed reached the upstream; each refusal is on record.
    let reached = wait_for_or(
        "the upstream's log",
        || fleet.upstream().process.log_text(),
        || {
            let n = upstream_calls(&fleet) - before;
            (n as u64 == allowed).then_some(n)
        },
    );
    assert_eq!(reached as u64, allowed);
    let decisions = fleet.wait_for_decisions((allowed + limited) as usize);
    let recorded = decisions.iter().filter(|d| d["reason"] == "rate_limited").count() as u64;
    assert_eq!(recorded, limited);
}

#[test]
fn a_thousand_callers_each_get_their_own_bucket_and_a_limit_can_be_on_one_tool() {
    let fleet = Fleet::start(&[]);
    // One call of `echo` per caller a minute; other tools unlimited.
    limit(&fleet, "[{requests: 1, period: 1m, tools: [echo]}]");
    let tokens: Vec<String> =
        (0..1000).map(|i| fleet.token(&format!("caller-{i}"), &format!("jti-{i}"), -10, 600)).collect();
    let before = upstream_calls(&fleet);
    // Each caller calls `echo` three times within the minute: the first gets through.
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let chunks: Vec<_> = tokens
            .chunks(125)
            .map(|chunk| {
                let fleet = &fleet;
                scope.spawn(move || {
                    let mut statuses = Vec::new();
                    for _ in 0..3 {
                        for token in chunk {
                            statuses.push(call(fleet, token, "echo").status);
                        }
                    }
                    statuses
                })
            })
            .collect();
        chunks.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    let limited = statuses.iter().filter(|s| **s == 429).count();
    let allowed = statuses.len() - limited;
    assert_eq!((allowed, limited), (1000, 2000), "one call each");
    // Another tool is not limited.
    assert_ne!(call(&fleet, &tokens[0], "seen_headers").status, 429);
    let reached = wait_for_or(
        "the upstream's log",
        || fleet.upstream().process.log_text(),
        || {
            let n = upstream_calls(&fleet) - before;
            (n == allowed + 1).then_some(n)
        },
    );
    assert_eq!(reached, 1001, "no limited call reached the upstream");
}

#[test]
fn limits_that_cannot_work_are_refused_at_apply_and_change_nothing() {
    let fleet = Fleet::start(&[]);
    let version = fleet.cp.version();
    let gateway = fleet.url().trim_start_matches("http://").trim_end_matches("/mcp").to_string();
    let out = fleet.cp.apply(&format!(
        "apiVersion: warden.dev/v1\nkind: McpServer\nmetadata: {{name: notes}}\nspec:\n  resource: http://{gateway}/mcp\n  issuers: [test-idp]\n  upstream: {}\n  listen: {gateway}\n  rateLimits: [{{requests: 0, period: 1s}}]\n",
        fleet.upstream().url
    ));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.rateLimits[0].requests: must be at least 1"), "{stderr}");
    assert_eq!(fleet.cp.version(), version);
}

#[test]
fn a_caller_has_at_most_its_concurrency_limit_in_flight_and_a_finished_call_frees_its_place() {
    let fleet = Fleet::start(&[]);
    fleet.cp.apply_ok(
        "apiVersion: warden.dev/v1\nkind: Policy\nmetadata: {name: counting}\nspec:\n  servers: [notes]\n  cedar: |\n    permit(principal, action == Action::\"tools/call\", resource) when { resource.name == \"count\" };\n",
    );
    serve_with(&fleet, "concurrencyLimits: [{max: 2, tools: [count]}]");
    let alice = fleet.token("alice", "jti-concurrent", -10, 600);
    let url = fleet.url();
    let initialize = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    let session = post(&url, Some(&alice), &[], initialize).session.expect("a session");
    let headers = [("mcp-session-id", session.as_str()), ("mcp-protocol-version", "2025-11-25")];
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    assert_eq!(post(&url, Some(&alice), &headers, initialized).status, 202);
    // Each request its own id: the session answers by id.
    let count = |id: u32, to: u32| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"count","arguments":{{"to":{to}}},"_meta":{{"progressToken":{id}}}}}}}"#
        )
    };
    // Two calls whose answers stream for about two seconds each.
    let calls: Vec<_> = (2..4)
        .map(|id| {
            let (url, alice, session, body) = (url.clone(), alice.clone(), session.clone(), count(id, 40));
            std::thread::spawn(move || {
                let headers = [("mcp-session-id", session.as_str()), ("mcp-protocol-version", "2025-11-25")];
                post(&url, Some(&alice), &headers, &body)
            })
        })
        .collect();
    wait_for_or(
        "both calls at the upstream",
        || fleet.upstream().process.log_text(),
        || (fleet.upstream().process.log_text().matches("count to 40 started").count() == 2).then_some(()),
    );
    // A third at once is refused, and never reaches the upstream; a tool the limit does not
    // cover is not.
    let third = post(&url, Some(&alice), &headers, &count(4, 1));
    assert_eq!(third.status, 429, "{}", third.body);
    assert_eq!(third.retry_after.as_deref(), Some("1"));
    assert!(third.body.contains("rate_limited"), "{}", third.body);
    assert_ne!(call(&fleet, &alice, "echo").status, 429);
    for answer in calls.into_iter().map(|c| c.join().unwrap()) {
        assert_eq!(answer.status, 200);
        assert!(answer.body.contains("counted to 40"), "{}", answer.body);
    }
    assert!(!fleet.upstream().process.log_text().contains("count to 1 started"));
    // Their answers sent, their places are free.
    let after = post(&url, Some(&alice), &headers, &count(5, 1));
    assert_eq!(after.status, 200, "{}", after.body);
    assert!(after.body.contains("counted to 1"), "{}", after.body);
}
