//! Decision records end to end: the real gateway's allows and denies reach the control plane
//! with who, what and why, each exactly once, through a control-plane outage, an agent restart
//! in the middle of it, and a disk bound that is reached.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tests::otlp::{OtlpReceiver, Protocol};
use tests::{loopback_addr, post, wait_for_or};

/// One agent, `agent-d`, serving `notes` at `gateway` under policy `echo-only`.
pub(crate) struct Fleet {
    fleet: tests::Fleet,
    gateway: String,
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

impl Fleet {
    pub(crate) fn start(agent_flags: &[&str]) -> Fleet {
        Fleet::start_with(agent_flags, &[], &[], &[])
    }

    /// With `cp_flags` and `cp_env` for the control plane, `agent_env` for the agent.
    pub(crate) fn start_with(
        agent_flags: &[&str],
        cp_flags: &[&str],
        cp_env: &[(&str, &str)],
        agent_env: &[(&str, &str)],
    ) -> Fleet {
        let fleet = tests::Fleet::builder()
            .peers()
            .agent_ids(&["agent-d"])
            .cp_flags(cp_flags)
            .cp_env(cp_env)
            .agent_flags(agent_flags)
            .agent_env(agent_env)
            .start();
        let gateway = loopback_addr();
        fleet.cp.apply_ok(&format!(
            r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: test-idp}}
spec:
  issuer: {issuer}
  keys: {{discovery: true}}
  allowedAlgorithms: [ES256]
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: notes}}
spec:
  resource: http://{gateway}/mcp
  issuers: [test-idp]
  upstream: {upstream}
  listen: {gateway}
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {{name: echo-only}}
spec:
  servers: [notes]
  cedar: |
    permit(principal, action == Action::"tools/call", resource) when {{ ["echo", "seen_headers"].contains(resource.name) }};
    permit(principal, action == Action::"tools/list", resource);
"#,
            issuer = fleet.idp().issuer,
            upstream = fleet.upstream().url,
        ));
        fleet.wait_serving(&gateway);
        Fleet { fleet, gateway }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/mcp", self.gateway)
    }

    /// A token for `sub`, issued and expiring these many seconds from now.
    pub(crate) fn token(&self, sub: &str, jti: &str, issued: i64, expires: i64) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let claims = json!({
            "iss": self.idp().issuer, "sub": sub, "aud": self.url(), "iat": now + issued, "exp": now + expires,
            "jti": jti,
        });
        self.idp().mint(&json!({ "claims": claims }))
    }

    /// One request that makes exactly one decision: `tool` called by `token`.
    pub(crate) fn call(&self, token: Option<&str>, tool: &str) -> u16 {
        let body =
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}});
        post(&self.url(), token, &[], &body.to_string()).status
    }

    /// Every stored decision (JSON lines of `wardenctl decisions -o json`).
    pub(crate) fn decisions(&self) -> Vec<Value> {
        let out = self.cp.ctl_ok(&["decisions", "--limit", "100000", "-o", "json"]);
        out.lines().map(|l| serde_json::from_str(l).expect("a JSON object per line")).collect()
    }

    /// The agent's Prometheus text.
    fn agent_metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.agent().status_addr);
        ureq::get(&url).call().expect("the agent's /metrics").body_mut().read_to_string().unwrap()
    }

    pub(crate) fn summary(&self) -> Value {
        self.cp.ctl_json(&["decisions", "--summary"])
    }

    /// Waits until `n` decisions are stored.
    pub(crate) fn wait_for_decisions(&self, n: usize) -> Vec<Value> {
        wait_for_or(
            &format!("{n} decisions at the control plane"),
            || format!("{}\n{}", self.agent().log_text(), self.cp.ctl_ok(&["decisions", "--limit", "100000"])),
            || {
                let all = self.decisions();
                (all.len() >= n).then_some(all)
            },
        )
    }
}

#[test]
fn decisions_arrive_with_who_what_and_why() {
    let fleet = Fleet::start(&[]);
    let alice = fleet.token("alice", "jti-alice-1", -10, 300);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "secret-argument"}}});
    let traced = [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")];
    post(&fleet.url(), Some(&alice), &traced, &body.to_string());
    fleet.call(Some(&alice), "delete_repository");
    assert_eq!(fleet.call(None, "echo"), 401);
    let expired = fleet.token("bob", "jti-bob-1", -600, -300);
    assert_eq!(fleet.call(Some(&expired), "echo"), 401);

    let all = fleet.wait_for_decisions(4);
    assert_eq!(all.len(), 4, "{all:#?}");
    let (allowed, denied) = (&all[0], &all[1]);
    // Refusals before a token was accepted are tallied per second and flushed in no set order.
    let refusal = |reason: &str| all.iter().find(|r| r["reason"] == reason).unwrap_or_else(|| panic!("{all:#?}"));
    let (anonymous, stale) = (refusal("missing_token"), refusal("expired"));
    for (field, want) in [
        ("agent", "agent-d"),
        ("server", "notes"),
        ("method", "tools/call"),
        ("targetKind", "tool"),
        ("target", "echo"),
        ("subject", "alice"),
        ("issuer", "test-idp"),
        ("decision", "allow"),
        ("reason", ""),
        ("traceId", trace),
        ("via", "gateway"),
    ] {
        assert_eq!(allowed[field], want, "{field} of {allowed:#}");
    }
    assert_eq!(allowed["policies"], json!(["echo-only.0"]));
    assert!(allowed["latencyMicros"].as_u64().unwrap() > 0);
    // The jti is linked, not revealed; no token or argument value is anywhere in a record.
    let jti_hash = allowed["jtiHash"].as_str().unwrap();
    assert_eq!(jti_hash.len(), 32);
    assert_eq!(denied["jtiHash"], jti_hash);
    let text = serde_json::to_string(&all).unwrap();
    for secret in ["jti-alice-1", "secret-argument", alice.as_str(), expired.as_str()] {
        assert!(!text.contains(secret), "a record reveals {secret:?}");
    }
    assert_eq!((denied["target"].as_str(), denied["decision"].as_str()), (Some("delete_repository"), Some("deny")));
    assert_eq!(denied["reason"], "policy_denied");
    assert_eq!((anonymous["reason"].as_str(), anonymous["subject"].as_str()), (Some("missing_token"), Some("")));
    assert_eq!((stale["reason"].as_str(), stale["decision"].as_str()), (Some("expired"), Some("deny")));

    // Filters, and the summary operators read.
    let denies = fleet.cp.ctl_ok(&["decisions", "--decision", "deny", "-o", "json"]);
    assert_eq!(denies.lines().count(), 3);
    let by_tool = fleet.cp.ctl_ok(&["decisions", "--tool", "delete_repository", "-o", "json"]);
    assert_eq!(by_tool.lines().count(), 1);
    let summary = fleet.summary();
    assert_eq!(summary["topDeniedTargets"][0], json!({"target": "notes/delete_repository", "denies": 1}));
    assert_eq!(summary["agents"][0]["denies"], 3);
    assert_eq!(summary["agents"][0]["dropped"], 0);
    // Rates per agent over the window asked for: `--since 10m` is 600 s.
    let recent = fleet.cp.ctl_json(&["decisions", "--summary", "--since", "10m"]);
    assert_eq!(recent["windowSeconds"], 600.0);
    let agent = &recent["agents"][0];
    let all = agent["allows"].as_u64().unwrap() + agent["denies"].as_u64().unwrap();
    assert_eq!(agent["perSecond"].as_f64().unwrap(), all as f64 / 600.0);
    assert_eq!(agent["deniesPerSecond"].as_f64().unwrap(), 3.0 / 600.0);

    // A caller names its tool: a 200 kB name is refused like any other, and its record keeps
    // only the first kilobyte, so records stay small whatever callers send.
    let long = "x".repeat(200_000);
    assert_eq!(fleet.call(Some(&alice), &long), 200, "a JSON-RPC error, as for any denied tool");
    let all = fleet.wait_for_decisions(5);
    let cut = all[4]["target"].as_str().unwrap();
    assert_eq!((cut.len(), all[4]["decision"].as_str()), (1024, Some("deny")));
    assert!(long.starts_with(cut));
}

#[test]
fn nothing_is_lost_through_a_control_plane_outage_and_an_agent_restart() {
    let mut fleet = Fleet::start(&[]);
    let alice = fleet.token("alice", "jti-a", -10, 600);
    let mut made = 0;
    for tool in ["echo", "delete_repository", "echo"] {
        fleet.call(Some(&alice), tool);
        made += 1;
    }
    fleet.wait_for_decisions(made);

    // The control plane goes away; the agent keeps deciding (and recording).
    fleet.cp.stop();
    for i in 0..20 {
        fleet.call(Some(&alice), if i % 2 == 0 { "echo" } else { "delete_repository" });
        made += 1;
    }
    // Waiting records are counted once, in memory or on disk (the spiller moves them to disk
    // while the control plane is away), never in both.
    let gauge = |text: &str, name: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).map(|v| v as u64)
    };
    let depths = wait_for_or(
        "the waiting records to be counted",
        || fleet.agent_metrics(),
        || {
            let m = fleet.agent_metrics();
            let (queued, spooled) =
                (gauge(&m, "warden_agent_decision_queue_records")?, gauge(&m, "warden_agent_decision_spool_records")?);
            (spooled > 0 && queued == 0).then_some((queued, spooled))
        },
    );
    assert_eq!(depths, (0, 20), "{}", fleet.agent_metrics());
    // Stopped while still cut off: what it holds must survive to its next run.
    fleet.agent_mut().stop();
    fleet.agent_mut().restart();
    let metadata = format!("http://{}/.well-known/oauth-protected-resource/mcp", fleet.gateway);
    wait_for_or("the gateway to serve again", || fleet.agent().log_text(), || ureq::get(&metadata).call().ok());
    for _ in 0..5 {
        fleet.call(Some(&alice), "echo");
        made += 1;
    }
    // (Counted twice, the figures would never settle on this.)
    wait_for_or(
        "the restarted agent's 25 waiting records, all on disk",
        || fleet.agent_metrics(),
        || {
            let m = fleet.agent_metrics();
            let depths =
                (gauge(&m, "warden_agent_decision_queue_records")?, gauge(&m, "warden_agent_decision_spool_records")?);
            (depths == (0, 25)).then_some(())
        },
    );
    fleet.cp.restart();

    let all = fleet.wait_for_decisions(made);
    assert_eq!(all.len(), made, "each decision stored once");
    let ids: HashSet<(String, u64)> =
        all.iter().map(|d| (d["agent"].to_string(), d["cursor"].as_u64().unwrap())).collect();
    assert_eq!(ids.len(), made);
    let summary = fleet.summary();
    assert_eq!(summary["agents"][0]["dropped"], 0, "nothing dropped below the disk bound");
    assert_eq!(summary["receivedTotal"], made);
    let denies = all.iter().filter(|d| d["decision"] == "deny").count();
    assert_eq!(denies, 1 + 10);
    // In the order they were made: the ones from before the outage first, the restarted
    // agent's last.
    let order: Vec<&str> = all.iter().map(|d| d["target"].as_str().unwrap()).collect();
    assert_eq!(order[..4], ["echo", "delete_repository", "echo", "echo"]);
    assert_eq!(order[order.len() - 5..], ["echo"; 5]);
}

#[test]
fn past_the_disk_bound_records_are_dropped_and_counted() {
    let mut fleet = Fleet::start(&["--decision-memory-records", "4", "--decision-spool-records", "3"]);
    let alice = fleet.token("alice", "jti-b", -10, 600);
    fleet.cp.stop();
    let made = 20;
    for _ in 0..made {
        fleet.call(Some(&alice), "echo");
    }
    fleet.cp.restart();
    let summary = wait_for_or(
        "every record stored or reported dropped",
        || fleet.agent().log_text(),
        || {
            let s = fleet.summary();
            let dropped = s["agents"][0]["dropped"].as_u64().unwrap_or(0);
            (s["receivedTotal"].as_u64()? + dropped == made).then_some(s)
        },
    );
    let dropped = summary["agents"][0]["dropped"].as_u64().unwrap();
    assert!(dropped > 0 && summary["receivedTotal"].as_u64().unwrap() >= 3, "{summary:#}");
}

/// Decision records reach an OTLP receiver (built from the official protobufs) as log records
/// with their attributes, none lost while the receiver is down or the control plane restarts.
/// With `tls`, the receiver is an `https://` endpoint whose CA the control plane is given.
fn exported_as_otlp_logs(protocol: Protocol, tls: bool) {
    let certs = tempfile::tempdir().unwrap();
    let mut receiver = match tls {
        true => OtlpReceiver::start_tls(protocol, certs.path()),
        false => OtlpReceiver::start(protocol),
    };
    let endpoint = receiver.endpoint();
    let protocol_name = if protocol == Protocol::Grpc { "grpc" } else { "http/protobuf" };
    let ca = receiver.tls.as_ref().map(|(file, _, _)| file.to_str().unwrap().to_string());
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol_name),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=e2e"),
    ];
    if let Some(ca) = &ca {
        env.push(("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str()));
    }
    let mut fleet = Fleet::start_with(&[], &[], &env, &[]);
    let alice = fleet.token("alice", "jti-otlp", -10, 600);
    let mut made = 0;
    for tool in ["echo", "delete_repository"] {
        fleet.call(Some(&alice), tool);
        made += 1;
    }
    let decisions_of = |logs: Vec<tests::otlp::ReceivedLog>| -> Vec<tests::otlp::ReceivedLog> {
        logs.into_iter().filter(|l| l.record.event_name == "warden.decision").collect()
    };
    let logs = wait_for_or(
        "the first records at the receiver",
        || fleet.cp.process.as_ref().unwrap().log_text(),
        || {
            let logs = decisions_of(receiver.logs());
            (logs.len() >= made).then_some(logs)
        },
    );
    let denied = logs.iter().find(|l| l.attribute("warden.decision").as_deref() == Some("deny")).expect("a deny");
    assert_eq!(denied.attribute("gen_ai.tool.name").as_deref(), Some("delete_repository"));
    assert_eq!(denied.attribute("mcp.method.name").as_deref(), Some("tools/call"));
    assert_eq!(denied.attribute("warden.reason").as_deref(), Some("policy_denied"));
    assert_eq!(denied.attribute("warden.agent").as_deref(), Some("agent-d"));
    assert_eq!(denied.attribute("warden.subject").as_deref(), Some("alice"));
    assert_eq!(denied.record.event_name, "warden.decision");
    assert_eq!(denied.resource.get("service.name").map(String::as_str), Some("warden-cp"));
    assert_eq!(denied.resource.get("deployment.environment").map(String::as_str), Some("e2e"));
    let allowed = logs.iter().find(|l| l.attribute("warden.decision").as_deref() == Some("allow")).unwrap();
    assert_eq!(allowed.attribute("warden.policies").as_deref(), Some("echo-only.0"));

    // The backend goes away, decisions keep coming, the control plane restarts; then the
    // backend is back and gets everything, each record once.
    receiver.stop();
    for _ in 0..10 {
        fleet.call(Some(&alice), "echo");
        made += 1;
    }
    fleet.wait_for_decisions(made);
    fleet.cp.stop();
    fleet.cp.restart();
    receiver.restart();
    let logs = wait_for_or(
        "every record at the receiver",
        || fleet.cp.process.as_ref().unwrap().log_text(),
        || {
            let logs = decisions_of(receiver.logs());
            let ids: HashSet<String> = logs.iter().filter_map(|l| l.attribute("warden.record.id")).collect();
            (ids.len() >= made).then_some(logs)
        },
    );
    let ids: HashSet<String> = logs.iter().filter_map(|l| l.attribute("warden.record.id")).collect();
    assert_eq!(ids.len(), made, "every decision exported");

    // The audit trail goes the same way, by its own exporter (so it may arrive after the
    // decisions): the three resources the operator applied (and the control plane's own key
    // refreshes), who did what.
    let applied_in = |audit: &[tests::otlp::ReceivedLog]| -> Vec<(String, String)> {
        let mut applied: Vec<(String, String)> = audit
            .iter()
            .filter(|l| l.attribute("warden.audit.operation").as_deref() == Some("apply"))
            .map(|l| (l.attribute("warden.resource.kind").unwrap(), l.attribute("warden.resource.name").unwrap()))
            .collect();
        applied.sort();
        applied.dedup();
        applied
    };
    let audit = wait_for_or(
        "the audit trail at the receiver",
        || fleet.cp.process.as_ref().unwrap().log_text(),
        || {
            let audit: Vec<_> = receiver.logs().into_iter().filter(|l| l.record.event_name == "warden.audit").collect();
            (applied_in(&audit).len() >= 3).then_some(audit)
        },
    );
    let expected = [("McpServer", "notes"), ("Policy", "echo-only"), ("TrustedIssuer", "test-idp")];
    assert_eq!(applied_in(&audit), expected.map(|(k, n)| (k.to_string(), n.to_string())));
    for entry in &audit {
        let (operation, actor) = (entry.attribute("warden.audit.operation"), entry.attribute("warden.audit.actor"));
        match operation.as_deref() {
            Some("apply") => assert!(actor.is_some_and(|a| a.starts_with("uid:")), "{entry:?}"),
            Some("refresh-keys") => assert_eq!(actor.as_deref(), Some("control-plane")),
            other => panic!("unexpected audit operation {other:?}"),
        }
    }
}

#[test]
fn decision_records_are_exported_as_otlp_logs_over_grpc_with_tls() {
    exported_as_otlp_logs(Protocol::Grpc, true);
}

#[test]
fn decision_records_are_exported_as_otlp_logs_over_http() {
    exported_as_otlp_logs(Protocol::HttpProtobuf, false);
}

/// The counts operators scrape: the control plane's per-decision counters and latency
/// histograms, and each agent's outbox.
#[test]
fn decisions_are_counted_on_the_metrics_endpoints() {
    let metrics_addr = loopback_addr();
    let cp_flags = ["--metrics-listen", &metrics_addr, "--metrics-new-series-delay", "0s"];
    let fleet = Fleet::start_with(&[], &cp_flags, &[], &[]);
    let alice = fleet.token("alice", "jti-metrics", -10, 600);
    for tool in ["echo", "delete_repository", "delete_repository"] {
        fleet.call(Some(&alice), tool);
    }
    fleet.wait_for_decisions(3);
    let get = |url: &str| ureq::get(url).call().ok().and_then(|mut r| r.body_mut().read_to_string().ok());
    let cp = get(&format!("http://{metrics_addr}/metrics")).expect("the control plane's /metrics");
    let has = |line: &str| assert!(cp.contains(line), "{line} in:\n{cp}");
    has(r#"warden_decisions_total{warden_server="notes",warden_decision="deny",warden_reason="policy_denied"} 2"#);
    has(r#"warden_decisions_total{warden_server="notes",warden_decision="allow",warden_reason=""} 1"#);
    // Every refusal code of a configured server is there from zero.
    has(r#"warden_decisions_total{warden_server="notes",warden_decision="deny",warden_reason="expired"} 0"#);
    has(
        r#"warden_target_decisions_total{warden_server="notes",warden_target="delete_repository",warden_decision="deny"} 2"#,
    );
    has(r#"warden_target_decisions_total{warden_server="notes",warden_target="echo",warden_decision="allow"} 1"#);
    has(r#"warden_fleet_agent_decisions_total{warden_agent="agent-d",warden_decision="deny"} 2"#);
    has(r#"warden_fleet_agent_decision_records_dropped_total{warden_agent="agent-d"} 0"#);
    has(r#"warden_decision_duration_seconds_count{warden_server="notes",warden_decision="deny"} 2"#);
    has("warden_agents_connected 1\n");
    has(r#"warden_fleet_agent_connected{warden_agent="agent-d"} 1"#);
    has(r#"warden_fleet_agent_config_lag{warden_agent="agent-d"} 0"#);
    // Three decisions with one 610 s token: all in the 900 s bucket, none in the 300 s one.
    has(r#"warden_token_lifetime_seconds_bucket{warden_issuer="test-idp",le="300"} 0"#);
    has(r#"warden_token_lifetime_seconds_bucket{warden_issuer="test-idp",le="900"} 3"#);
    assert_eq!(get(&format!("http://{metrics_addr}/readyz")).as_deref(), Some("ready"));
    let agent = get(&format!("http://{}/metrics", fleet.agent().status_addr)).expect("the agent's /metrics");
    assert!(agent.contains("warden_agent_decision_records_total 3\n"), "{agent}");
    assert!(agent.contains("warden_agent_decision_records_dropped_total 0\n"), "{agent}");
    assert!(agent.contains("warden_agent_connected 1\n"), "{agent}");
}

/// The same counts reach an OTLP receiver as metrics (cumulative sums, histograms, gauges).
#[test]
fn decisions_are_exported_as_otlp_metrics_over_https() {
    let certs = tempfile::tempdir().unwrap();
    let receiver = OtlpReceiver::start_tls(Protocol::HttpProtobuf, certs.path());
    let endpoint = format!("{}/v1/metrics", receiver.endpoint());
    let ca = receiver.tls.as_ref().unwrap().0.to_str().unwrap().to_string();
    let env = [
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", ca.as_str()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
    ];
    let fleet = Fleet::start_with(&[], &["--metrics-new-series-delay", "0s"], &env, &[]);
    let alice = fleet.token("alice", "jti-otlp-metrics", -10, 600);
    for tool in ["echo", "delete_repository", "delete_repository"] {
        fleet.call(Some(&alice), tool);
    }
    fleet.wait_for_decisions(3);
    let denied = |points: &[tests::otlp::ReceivedPoint]| {
        points
            .iter()
            .find(|p| {
                p.metric == "warden.target.decisions"
                    && p.attributes.get("warden.target").map(String::as_str) == Some("delete_repository")
            })
            .map(|p| (p.value, p.attributes.clone()))
    };
    let (value, attributes) = wait_for_or(
        "the counts at the receiver",
        || fleet.cp.process.as_ref().unwrap().log_text(),
        || denied(&receiver.latest_metrics()).filter(|(v, _)| *v >= 2.0),
    );
    assert_eq!(value, 2.0);
    assert_eq!(attributes.get("warden.decision").map(String::as_str), Some("deny"));
    assert_eq!(attributes.get("warden.server").map(String::as_str), Some("notes"));
    let points = receiver.latest_metrics();
    let by_agent = points.iter().find(|p| {
        p.metric == "warden.fleet.agent.decisions"
            && p.attributes.get("warden.agent").map(String::as_str) == Some("agent-d")
            && p.attributes.get("warden.decision").map(String::as_str) == Some("deny")
    });
    assert_eq!(by_agent.map(|p| p.value), Some(2.0));
    let connected = points.iter().find(|p| p.metric == "warden.agents.connected").map(|p| p.value);
    assert_eq!(connected, Some(1.0));
    let latency: f64 = points.iter().filter(|p| p.metric == "warden.decision.duration").map(|p| p.value).sum();
    assert_eq!(latency, 3.0, "every decision's latency counted");
    // No log endpoint configured: none exported.
    assert!(receiver.logs().is_empty());
}

/// With tracing on, each gateway request is a span (MCP semantic conventions) in the caller's
/// trace, and the upstream MCP server gets this span as its parent.
#[test]
fn gateway_requests_are_spans_whose_context_reaches_the_upstream() {
    let receiver = OtlpReceiver::start(Protocol::Grpc);
    let endpoint = receiver.endpoint();
    // The general endpoint: the agent exports spans to it, and no decision logs (the control
    // plane's job) unless asked by `OTEL_LOGS_EXPORTER=otlp`.
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
    let fleet = Fleet::start_with(&[], &[], &[], &env);
    let alice = fleet.token("alice", "jti-traces", -10, 600);
    let call: &[&str] = &["call", "seen_headers", "{}"];
    let results = tests::mcp_client(&fleet.url(), "legacy", &[(alice.as_str(), call)]);
    let seen = results[0]["result"]["text"][0].as_str().unwrap_or_else(|| panic!("{results:?}")).to_string();
    let traceparent = seen.lines().find_map(|l| l.strip_prefix("traceparent=")).expect("a traceparent upstream");
    let parts: Vec<&str> = traceparent.split('-').collect();
    let (trace_id, parent) = (parts[1].to_string(), parts[2].to_string());
    let span = wait_for_or(
        "the span at the receiver",
        || fleet.agent().log_text(),
        || receiver.spans().into_iter().find(|s| s.name == "tools/call seen_headers"),
    );
    assert_eq!((span.trace_id.as_str(), span.span_id.as_str()), (trace_id.as_str(), parent.as_str()));
    // The gateway started this trace (the client sent none); its decision record links to it.
    let record = wait_for_or(
        "the call's decision record",
        || fleet.agent().log_text(),
        || fleet.decisions().into_iter().find(|d| d["target"] == "seen_headers"),
    );
    assert_eq!(record["traceId"], trace_id.as_str());
    for (key, value) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "seen_headers"),
        ("warden.decision", "allow"),
        ("http.request.method", "POST"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(span.attributes.get(key).map(String::as_str), Some(value), "{key} of {span:?}");
    }
    // A denied call is a span too, with its reason; a caller's own trace is continued.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let headers = [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")];
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_repository"}});
    post(&fleet.url(), Some(&alice), &headers, &body.to_string());
    let denied = wait_for_or(
        "the denied call's span",
        || fleet.agent().log_text(),
        || receiver.spans().into_iter().find(|s| s.name == "tools/call delete_repository"),
    );
    assert_eq!((denied.trace_id.as_str(), denied.parent_span_id.as_str()), (caller_trace, "00f067aa0ba902b7"));
    assert_eq!(denied.attributes.get("warden.reason").map(String::as_str), Some("policy_denied"));
    let metrics = fleet.agent_metrics();
    assert!(metrics.contains("warden_agent_spans_dropped_total 0\n"), "{metrics}");
    assert!(!metrics.contains("warden_agent_decision_logs_dropped_total"), "{metrics}");
    assert!(receiver.logs().is_empty(), "the agent exported decision logs unasked");
}

/// Asked to (`OTEL_LOGS_EXPORTER=otlp`), an agent exports its decision records as OTLP logs
/// itself, with the attributes and record ids the control plane's export gives them, and still
/// sends every record to the control plane.
#[test]
fn an_agent_asked_to_exports_its_decision_records_itself() {
    let receiver = OtlpReceiver::start(Protocol::HttpProtobuf);
    let endpoint = receiver.endpoint();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_LOGS_EXPORTER", "otlp"),
        ("OTEL_TRACES_EXPORTER", "none"),
        ("OTEL_RESOURCE_ATTRIBUTES", "host.name=mcp-host-1"),
    ];
    let fleet = Fleet::start_with(&[], &[], &[], &env);
    let alice = fleet.token("alice", "jti-direct", -10, 600);
    for tool in ["echo", "delete_repository", "echo"] {
        fleet.call(Some(&alice), tool);
    }
    let stored = fleet.wait_for_decisions(3);
    let logs = wait_for_or(
        "the agent's decision logs",
        || fleet.agent().log_text(),
        || {
            let logs: Vec<_> =
                receiver.logs().into_iter().filter(|l| l.record.event_name == "warden.decision").collect();
            (logs.len() >= 3).then_some(logs)
        },
    );
    let exported: HashSet<String> = logs.iter().filter_map(|l| l.attribute("warden.record.id")).collect();
    let at_cp: HashSet<String> = stored.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert_eq!((exported.len(), &exported), (3, &at_cp), "the same three records, by the same ids");
    let denied = logs.iter().find(|l| l.attribute("warden.decision").as_deref() == Some("deny")).expect("a deny");
    assert_eq!(denied.attribute("gen_ai.tool.name").as_deref(), Some("delete_repository"));
    assert_eq!(denied.attribute("warden.reason").as_deref(), Some("policy_denied"));
    assert_eq!(denied.attribute("warden.agent").as_deref(), Some("agent-d"));
    assert_eq!(denied.attribute("warden.subject").as_deref(), Some("alice"));
    assert_eq!(denied.resource.get("service.name").map(String::as_str), Some("warden-agent"));
    assert_eq!(denied.resource.get("host.name").map(String::as_str), Some("mcp-host-1"));
    assert!(receiver.spans().is_empty(), "OTEL_TRACES_EXPORTER=none");
    let metrics = fleet.agent_metrics();
    assert!(metrics.contains("warden_agent_decision_logs_dropped_total 0\n"), "{metrics}");
}

/// Garbage costs its sender nothing: refusals before any token was accepted are tallied into one
/// record per second, server, reason and source, so they cannot roll the decision log over;
/// and invented tool names cannot use up the metrics' label budget.
#[test]
fn unauthenticated_floods_are_counted_not_stored_one_by_one_and_invented_names_stay_bounded() {
    let metrics_addr = loopback_addr();
    let fleet =
        Fleet::start_with(&[], &["--metrics-listen", &metrics_addr, "--metrics-new-series-delay", "0s"], &[], &[]);
    let alice = fleet.token("alice", "jti-flood", -10, 600);
    for _ in 0..300 {
        assert_eq!(fleet.call(None, "echo"), 401);
    }
    for _ in 0..100 {
        assert_eq!(fleet.call(Some("not.a.token"), "echo"), 401);
    }
    fleet.call(Some(&alice), "echo");
    let summary = wait_for_or(
        "the refusals to be counted",
        || fleet.summary().to_string(),
        || {
            let s = fleet.summary();
            (s["decisions"] == 401).then_some(s)
        },
    );
    // A handful of records (one per reason per second), standing for 400 refusals, and the
    // authenticated call as a record of its own.
    let records = summary["receivedTotal"].as_u64().unwrap();
    assert!(records <= 1 + 2 * 10, "{summary}");
    let all = fleet.decisions();
    let missing: u64 =
        all.iter().filter(|d| d["reason"] == "missing_token").map(|d| d["count"].as_u64().unwrap()).sum();
    assert_eq!(missing, 300, "{all:#?}");
    let anonymous = all.iter().find(|d| d["reason"] == "missing_token").unwrap();
    assert_eq!((anonymous["source"].as_str(), anonymous["subject"].as_str()), (Some("127.0.0.1"), Some("")));
    let get = |url: &str| ureq::get(url).call().ok().and_then(|mut r| r.body_mut().read_to_string().ok());
    let cp = get(&format!("http://{metrics_addr}/metrics")).expect("the control plane's /metrics");
    assert!(
        cp.contains(
            r#"warden_decisions_total{warden_server="notes",warden_decision="deny",warden_reason="missing_token"} 300"#
        ),
        "{cp}"
    );

    // An authenticated caller inventing tool names labels at most 256 of them for its server;
    // the rest are counted as "_other".
    for i in 0..300 {
        fleet.call(Some(&alice), &format!("invented-{i}"));
    }
    fleet.wait_for_decisions(records as usize + 300);
    let cp = get(&format!("http://{metrics_addr}/metrics")).expect("the control plane's /metrics");
    let labelled =
        cp.lines().filter(|l| l.starts_with("warden_target_decisions_total{") && l.contains("invented-")).count();
    assert!((250..=256).contains(&labelled), "{labelled} invented names labelled");
    assert!(cp.contains(r#"warden_target="_other",warden_decision="deny"}"#), "{cp}");
}

#[test]
fn a_shadow_policy_records_exactly_the_calls_it_would_flip_and_changes_none() {
    let fleet = Fleet::start(&[]);
    // Tried on live traffic: `echo` closed to bob, `add` opened to everyone (the upstream has
    // it; the enforced `echo-only` policy does not permit it).
    fleet.cp.apply_ok(
        r#"
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: next-rules}
spec:
  servers: [notes]
  mode: shadow
  cedar: |
    forbid(principal, action == Action::"tools/call", resource) when { resource.name == "echo" && principal.subject == "bob" };
    permit(principal, action == Action::"tools/call", resource) when { resource.name == "add" };
"#,
    );
    fleet.cp.wait_converged(&["agent-d"], fleet.cp.version());
    let (alice, bob) = (fleet.token("alice", "ja", -5, 300), fleet.token("bob", "jb", -5, 300));
    let before = fleet.decisions().len();
    // The scripted run (what policy decided is in the records; the answers are the upstream's
    // or a JSON-RPC error).
    let script = [(&alice, "echo"), (&bob, "echo"), (&bob, "echo"), (&alice, "add"), (&alice, "delete")];
    for (token, tool) in script {
        fleet.call(Some(token), tool);
    }
    let all = wait_for_or(
        "the scripted decisions at the control plane",
        || fleet.agent().log_text(),
        || {
            let all = fleet.decisions();
            (all.len() >= before + script.len()).then_some(all)
        },
    );
    let run = &all[before..];
    let outcomes: Vec<(&str, &str, &str, &str)> = run
        .iter()
        .map(|d| {
            let text = |k: &str| d[k].as_str().unwrap_or_default();
            (text("subject"), text("target"), text("decision"), text("shadow"))
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("alice", "echo", "allow", ""),
            ("bob", "echo", "allow", "shadow_deny"),
            ("bob", "echo", "allow", "shadow_deny"),
            ("alice", "add", "deny", "shadow_allow"),
            ("alice", "delete", "deny", ""),
        ],
        "enforced outcomes unchanged; exactly the flips recorded"
    );
    assert_eq!(run[1]["shadowPolicies"], json!(["next-rules.0"]));
    assert_eq!(run[3]["shadowPolicies"], json!(["next-rules.1"]));
    // What switching it to enforce would change, counted.
    let table = fleet.cp.ctl_ok(&["decisions", "--shadow-diff", "--subject", "bob"]);
    assert!(table.contains("allow (shadow: deny)"), "{table}");
    let flips = fleet.cp.ctl_ok(&["decisions", "--shadow-diff"]);
    assert!(
        flips.contains(
            "3 decisions would flip under the shadow policies: 2 allow → deny, 1 deny → allow (deciding: next-rules.0 ×2, next-rules.1 ×1)"
        ),
        "{flips}"
    );
}

#[test]
fn a_server_in_audit_mode_forwards_every_request_as_it_came_and_records_what_would_be_denied() {
    let fleet = Fleet::start(&[]);
    // Audit mode for a while: long enough for the calls below, short enough to see it end.
    let until = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + 12;
    let until_text = time::OffsetDateTime::from_unix_timestamp(until)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    fleet.cp.apply_ok(&format!(
        r#"
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: notes}}
spec:
  resource: http://{gateway}/mcp
  issuers: [test-idp]
  upstream: {upstream}
  listen: {gateway}
  enforcement: audit
  auditUntil: "{until_text}"
"#,
        gateway = fleet.gateway,
        upstream = fleet.upstream().url,
    ));
    fleet.cp.wait_converged(&["agent-d"], fleet.cp.version());
    assert_eq!(fleet.agent().status()["auditServers"]["notes"], until_text.as_str(), "the status says audit is on");
    let before = fleet.decisions().len();
    // An MCP session, opened through the gateway: in audit mode the upstream's own session id
    // comes back as it is.
    let alice = fleet.token("alice", "jti-audit-1", -5, 300);
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "audit-test", "version": "1"}}});
    let opened = post(&fleet.url(), Some(&alice), &[], &init.to_string());
    let session = opened.session.clone().unwrap_or_else(|| panic!("a session: {} {}", opened.status, opened.body));
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    post(&fleet.url(), Some(&alice), &[("mcp-session-id", &session)], &initialized.to_string());
    let call = |token: &str, tool: &str, arguments: Value| {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}});
        post(&fleet.url(), Some(token), &[("mcp-session-id", &session)], &body.to_string())
    };
    // A legacy client with the server's own static key: not a token Warden accepts, and the
    // upstream gets it as sent.
    let legacy = call("legacy-static-key-0123456789", "seen_headers", json!({}));
    assert_eq!(legacy.status, 200, "{}", legacy.body);
    assert!(legacy.body.contains("authorization=Bearer legacy-static-key-0123456789"), "{}", legacy.body);
    // A valid token calling a tool the policy denies: forwarded, answered by the upstream.
    let denied = call(&alice, "delete_repository", json!({"name": "x"}));
    assert!(denied.body.contains("deleted x"), "forwarded although policy denies it: {}", denied.body);
    let allowed = call(&alice, "echo", json!({"text": "hello"}));
    assert!(allowed.body.contains("hello"), "{}", allowed.body);
    let fields = |d: &Value| {
        let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
        (text("target"), text("decision"), text("audit"), text("reason"))
    };
    let run = wait_for_or(
        "the audit decisions at the control plane",
        || fleet.agent().log_text(),
        || {
            let run: Vec<_> = fleet.decisions()[before..].iter().map(fields).collect();
            (run.iter().filter(|r| r.2 == "would_deny").count() >= 2 && run.iter().any(|r| r.0 == "echo"))
                .then_some(run)
        },
    );
    assert!(run.iter().all(|r| r.1 == "allow" && !r.2.is_empty()), "every request forwarded, each audited: {run:?}");
    let mut would_deny: Vec<_> = run.iter().filter(|r| r.2 == "would_deny").cloned().collect();
    would_deny.sort();
    assert_eq!(
        would_deny,
        [
            (String::new(), "allow".into(), "would_deny".into(), "malformed".into()),
            ("delete_repository".into(), "allow".into(), "would_deny".into(), "policy_denied".into()),
        ],
        "exactly the two requests Warden would have refused, each with its reason"
    );
    assert!(run.contains(&("echo".into(), "allow".into(), "would_allow".into(), String::new())), "{run:?}");
    let table = fleet.cp.ctl_ok(&["decisions", "--tool", "delete_repository"]);
    assert!(table.contains("allow (audit: would deny)"), "{table}");
    // An audit never outlives its date: then the server is enforced.
    wait_for_or(
        "audit mode to end at auditUntil",
        || fleet.agent().log_text(),
        || (call("legacy-static-key-0123456789", "seen_headers", json!({})).status == 401).then_some(()),
    );
    assert!(fleet.agent().status()["auditServers"].as_object().is_some_and(|o| o.is_empty()));
}

#[test]
fn the_scorecard_counts_exactly_what_the_fleet_did() {
    let fleet = Fleet::start(&[]);
    let alice = fleet.token("alice", "jti-card-1", -5, 300); // lives 305 s
    let bob = fleet.token("bob", "jti-card-2", -5, 3_595); // lives an hour
    let expired = fleet.token("carol", "jti-card-3", -600, -300);
    fleet.call(Some(&alice), "echo");
    fleet.call(Some(&alice), "echo");
    fleet.call(Some(&alice), "delete_repository"); // denied by policy, on a validated token
    fleet.call(Some(&bob), "echo");
    assert_eq!(fleet.call(None, "echo"), 401);
    assert_eq!(fleet.call(Some(&expired), "echo"), 401);
    fleet.wait_for_decisions(6);
    let card = fleet.cp.ctl_json(&["scorecard", "--since", "1h"]);
    assert_eq!(
        card["requests"],
        json!({"total": 6, "validated": 4, "audited": 0, "bridged": 0, "refused": 2}),
        "{card}"
    );
    assert_eq!(
        card["tokenLifetimes"],
        json!({"decisions": 4, "p50Seconds": 305, "p95Seconds": 3600, "maxSeconds": 3600, "atMost15m": 3}),
        "{card}"
    );
    // The same per server and per issuer.
    assert_eq!(card["requestsByServer"]["notes"]["total"], 6, "{card}");
    assert_eq!(card["tokenLifetimesByIssuer"]["test-idp"]["decisions"], 4, "{card}");
    // An operator's revocation: counted by source, and timed until the agent applied it.
    assert_eq!(card["revocations"]["bySource"], json!({}), "{card}");
    fleet.cp.ctl_ok(&["revoke", "--issuer", "test-idp", "--jti", "jti-card-2"]);
    let card = wait_for_or(
        "the revocation's enforcement to be measured",
        || fleet.agent().log_text(),
        || {
            let card = fleet.cp.ctl_json(&["scorecard", "--since", "1h"]);
            (card["revocations"]["enforcement"]["measured"] == 1).then_some(card)
        },
    );
    assert_eq!(card["revocations"]["bySource"], json!({"operator": 1}), "{card}");
    // The agent scanned nothing (the harness keeps it off the machine's homes) and said so.
    assert_eq!(card["secrets"]["open"], 0);
    wait_for_or(
        "the agent's (empty) scan report",
        || fleet.agent().log_text(),
        || (fleet.cp.ctl_json(&["scorecard"])["secrets"]["hostsScanned"] == 1).then_some(()),
    );
    let table = fleet.cp.ctl_ok(&["scorecard", "--since", "1h"]);
    assert!(table.contains("6 requests: 66.7% on a validated token"), "{table}");
}
