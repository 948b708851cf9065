//! Credential bridges end to end: a legacy client (the official MCP Python SDK's client, sending
//! a static key header and no token) reaches a server through a bridge, is held by policy to
//! the tools its principal may use, is refused once the bridge expires or is revoked, and its
//! key is never stored, logged or shown.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tests::{Fleet, files_containing, loopback_addr, mcp_client_with, post, wait_for_or};

/// The legacy client's key (random, as `openssl rand -hex 32` makes one).
fn strong_key() -> String {
    (0..4).map(|_| format!("{:016x}", rand::random::<u64>())).collect()
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn rfc3339(unix: i64) -> String {
    warden_core::revocation::format_time(unix)
}

/// A CredentialBridge document for server `legacy-notes`.
fn bridge(name: &str, header: &str, key_line: &str, expires: i64, extra: &str) -> String {
    format!(
        r#"
apiVersion: warden.dev/v1
kind: CredentialBridge
metadata: {{name: {name}}}
spec:
  server: legacy-notes
  header: {header}
  {key_line}
  principal: ci-runner
  owner: team-ci
  exitPlan: the CI job moves to token exchange in January
  expires: "{expires}"{extra}
"#,
        expires = rfc3339(expires)
    )
}

const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

#[test]
fn a_legacy_client_works_through_a_bridge_within_its_policy_until_the_bridge_expires_or_is_revoked() {
    let metrics_addr = loopback_addr();
    let fleet = Fleet::builder()
        .peers()
        .agent_ids(&["agent-b"])
        .cp_flags(&["--metrics-listen", &metrics_addr, "--metrics-new-series-delay", "0s"])
        .start();
    // Outside the fleet's directory, so the search for the keys below covers only what Warden
    // wrote.
    let keys = tempfile::tempdir().expect("key dir");
    let (key, other_key) = (strong_key(), strong_key());
    let key_file = keys.path().join("ci.key");
    std::fs::write(&key_file, format!("{key}\n")).expect("write key");
    let key_line = format!("keyFile: {}", key_file.display());
    let gateway = loopback_addr();
    let url = format!("http://{gateway}/mcp");
    let first_bridge = bridge("ci-bridge", "X-Api-Key", &key_line, now() + 30 * 86_400, "");
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
metadata: {{name: legacy-notes}}
spec:
  resource: {url}
  issuers: [test-idp]
  upstream: {upstream}
  listen: {gateway}
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {{name: legacy-access}}
spec:
  servers: [legacy-notes]
  cedar: |
    permit(principal in Issuer::"ci-bridge", action == Action::"tools/list", resource);
    permit(principal == Workload::"ci-bridge/ci-runner", action == Action::"tools/call", resource)
      when {{ resource.name == "seen_headers" }};
    permit(principal in Issuer::"ops-bridge", action == Action::"tools/list", resource);
    permit(principal in Issuer::"test-idp", action == Action::"tools/call", resource);
---{first_bridge}"#,
        issuer = fleet.idp().issuer,
        upstream = fleet.upstream().url,
    ));
    fleet.wait_serving(&gateway);

    // What a bridge refuses to keep: a weak key, a long life, a digest whose key was never seen.
    let refused = |yaml: &str| {
        let out = fleet.cp.apply(yaml);
        assert!(!out.status.success(), "accepted: {yaml}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let weak = refused(&bridge("weak", "X-Api-Key", "key: changeme-changeme", now() + 86_400, ""));
    assert!(weak.contains("too weak") && !weak.contains("changeme"), "{weak}");
    // (A key of its own: the test's manifests hold what they apply, unlike Warden.)
    let long = refused(&bridge("long", "X-Api-Key", &format!("key: {}", strong_key()), now() + 91 * 86_400, ""));
    assert!(long.contains("at most 90 days"), "{long}");
    let digest_only = format!("keyDigest: sha256:{}", "ab".repeat(32));
    let unseen = refused(&bridge("unseen", "X-Api-Key", &digest_only, now() + 86_400, ""));
    assert!(unseen.contains("give the key itself"), "{unseen}");

    // The legacy client: its key in a header, no token. Policy lets its principal list tools
    // and call one of them; the upstream never sees the key, and learns who called.
    let legacy = json!({"headers": {"X-Api-Key": key}});
    let steps: [(&str, &[&str]); 3] =
        [("-", &["list-tools"]), ("-", &["call", "seen_headers", "{}"]), ("-", &["call", "echo", r#"{"text":"x"}"#])];
    let out = mcp_client_with(&url, "legacy", &legacy, &steps);
    assert_eq!(out[0]["result"], json!(["seen_headers"]), "only the tools its policy allows: {out:?}");
    let seen = out[1]["result"]["text"][0].as_str().unwrap_or_default();
    assert!(seen.contains("x-warden-issuer=ci-bridge") && seen.contains("x-warden-subject=ci-runner"), "{seen}");
    assert!(!seen.contains("x-api-key"), "the key stopped at the gateway: {seen}");
    assert_eq!(out[2]["error"], json!({"code": -32001, "message": "denied by policy"}), "{out:?}");

    // The upstream still checks the key itself: the bridge says so, and everyone is told.
    // Re-applied from the same key file; now closing in seconds.
    let closes = now() + 20;
    fleet.cp.apply_ok(&bridge("ci-bridge", "X-Api-Key", &key_line, closes, "\n  forwardKey: true"));
    fleet.cp.wait_converged(&["agent-b"], fleet.cp.version());
    let table = fleet.cp.ctl_ok(&["get", "bridges"]);
    let row = table.lines().find(|l| l.starts_with("ci-bridge")).unwrap_or_default();
    for shown in ["legacy-notes", "ci-bridge/ci-runner", "team-ci", "expiring", "FORWARDED UPSTREAM"] {
        assert!(row.contains(shown), "{shown} in:\n{table}");
    }
    assert_eq!(fleet.cp.ctl_json(&["get", "bridges"])[0]["status"], json!({"state": "expiring", "daysLeft": 1}));
    let out = mcp_client_with(&url, "legacy", &legacy, &[("-", &["call", "seen_headers", "{}"])]);
    assert!(out[0]["result"]["text"][0].as_str().unwrap_or_default().contains("x-api-key"), "{out:?}");
    let metrics_url = format!("http://{metrics_addr}/metrics");
    let metrics = ureq::get(&metrics_url).call().expect("/metrics").body_mut().read_to_string().unwrap();
    assert!(metrics.contains(r#"warden_credential_bridges{warden_credential_bridge_state="expiring"} 1"#), "{metrics}");
    assert!(
        metrics.contains(&format!(
            r#"warden_credential_bridge_expiry_timestamp_seconds{{warden_credential_bridge="ci-bridge",warden_server="legacy-notes",warden_credential_bridge_forwards_key="true"}} {closes}"#
        )),
        "{metrics}"
    );

    // A second bridge, in the Authorization header, revoked like a token.
    let other_file = keys.path().join("ops.key");
    std::fs::write(&other_file, &other_key).expect("write key");
    let ops = bridge("ops-bridge", "Authorization", &format!("keyFile: {}", other_file.display()), now() + 86_400, "");
    fleet.cp.apply_ok(&ops);
    fleet.cp.wait_converged(&["agent-b"], fleet.cp.version());
    let opened = post(&url, Some(&other_key), &[], INITIALIZE);
    assert_eq!(opened.status, 200, "{}", opened.body);
    fleet.cp.ctl_ok(&["revoke", "--bridge", "ops-bridge"]);
    fleet.cp.wait_converged(&["agent-b"], fleet.cp.version());
    let revoked = post(&url, Some(&other_key), &[], INITIALIZE);
    assert_eq!(revoked.status, 401);
    assert!(revoked.challenge.contains(r#"error_description="revoked""#), "{}", revoked.challenge);
    // On /metrics: the revocation by its source, and its time until the agent applied it.
    wait_for_or(
        "the revocation on /metrics",
        || ureq::get(&metrics_url).call().ok().and_then(|mut r| r.body_mut().read_to_string().ok()).unwrap_or_default(),
        || {
            let text = ureq::get(&metrics_url).call().ok()?.body_mut().read_to_string().ok()?;
            (text.contains(r#"warden_revocations_total{warden_revocation_source="operator"} 1"#)
                && text.contains(r#"warden_revocations_total{warden_revocation_source="rfc7009"} 0"#)
                && text.contains("warden_revocation_enforcement_seconds_count 1")
                && text.contains("warden_servers_audit_mode 0")
                && text.contains(r#"warden_credential_bridges{warden_credential_bridge_state="revoked"} 1"#))
            .then_some(())
        },
    );
    // A revoked key stays revoked, whichever bridge would present it.
    let again = bridge("ops-again", "Authorization", &format!("keyFile: {}", other_file.display()), now() + 86_400, "");
    let reused = refused(&again);
    assert!(reused.contains("was revoked"), "{reused}");
    let states: Vec<(String, String)> = fleet
        .cp
        .ctl_json(&["get", "bridges"])
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (b["metadata"]["name"].as_str().unwrap().to_string(), b["status"]["state"].as_str().unwrap().to_string())
        })
        .collect();
    assert!(states.contains(&("ops-bridge".into(), "revoked".into())), "{states:?}");

    // A client that sends a token besides its key is decided on the token (here: not one).
    let both = post(&url, Some("not-a-token"), &[("x-api-key", &key)], INITIALIZE);
    assert!(both.status == 401 && both.challenge.contains("malformed"), "{} {}", both.status, both.challenge);
    // After its expiry the key is refused as bridge_expired, by the real client too.
    wait_for_or(
        "the bridge to expire",
        || fleet.agent().log_text(),
        || (post(&url, None, &[("x-api-key", &key)], LIST).status == 401).then_some(()),
    );
    let expired = post(&url, None, &[("x-api-key", &key)], LIST);
    assert!(expired.challenge.contains(r#"error_description="bridge_expired""#), "{}", expired.challenge);
    let out = mcp_client_with(&url, "legacy", &legacy, &[("-", &["list-tools"])]);
    assert_eq!(out[0]["ok"], false, "{out:?}");

    // On record: every bridged request as via=bridge under the bridge's principal, and the
    // scorecard's figures are exactly those records.
    let decisions = || -> Vec<Value> {
        let out = fleet.cp.ctl_ok(&["decisions", "--limit", "100000", "-o", "json"]);
        out.lines().map(|l| serde_json::from_str(l).expect("a JSON object per line")).collect()
    };
    let bridged = wait_for_or(
        "the bridged decisions at the control plane",
        || fleet.agent().log_text(),
        || {
            let all = decisions();
            // Refusals of a key are tallied like a refused token's: one record per second
            // with its count.
            let count = |reason: &str| -> u64 {
                all.iter().filter(|d| d["reason"] == reason).map(|d| d["count"].as_u64().unwrap_or(1).max(1)).sum()
            };
            let (expired, revoked) = (count("bridge_expired"), count("revoked"));
            (expired >= 3 && revoked >= 1)
                .then_some(all.into_iter().filter(|d| d["via"] == "bridge").collect::<Vec<_>>())
        },
    );
    assert!(
        bridged.iter().all(|d| ["ci-bridge", "ops-bridge"].contains(&d["issuer"].as_str().unwrap_or_default())
            && d["subject"] == "ci-runner"),
        "{bridged:?}"
    );
    let denied: Vec<&Value> = bridged.iter().filter(|d| d["reason"] == "policy_denied").collect();
    assert_eq!(denied.len(), 1, "the one call policy refused: {bridged:?}");
    assert_eq!(denied[0]["target"], "echo");
    let card = fleet.cp.ctl_json(&["scorecard"]);
    assert_eq!(card["requests"]["bridged"], bridged.len(), "{card}");
    let per_bridge = |name: &str| bridged.iter().filter(|d| d["issuer"] == name).count();
    let listed: Vec<(String, u64, String, bool)> = card["bridges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let text = |k: &str| b[k].as_str().unwrap_or_default().to_string();
            (text("name"), b["requests"].as_u64().unwrap_or(0), text("state"), b["forwardsKey"] == true)
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("ci-bridge".to_string(), per_bridge("ci-bridge") as u64, "expired".to_string(), true),
            ("ops-bridge".to_string(), per_bridge("ops-bridge") as u64, "revoked".to_string(), false),
        ]
    );
    // /metrics counts the same requests the same way (per server, every way from 0).
    let metrics = ureq::get(&metrics_url).call().expect("/metrics").body_mut().read_to_string().unwrap();
    let series = |decided: &str| {
        format!("warden_requests_total{{warden_server=\"legacy-notes\",warden_request_decided=\"{decided}\"}}")
    };
    for (decided, key) in
        [("bridged", "bridged"), ("refused", "refused"), ("validated", "validated"), ("audited", "audited")]
    {
        let line = format!("{} {}\n", series(decided), card["requestsByServer"]["legacy-notes"][key]);
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    let card_text = fleet.cp.ctl_ok(&["scorecard"]);
    assert!(card_text.contains("THE STATIC KEY STILL GOES UPSTREAM"), "{card_text}");

    // Neither key anywhere Warden wrote: stores, snapshots, logs, outputs.
    let outputs = [
        fleet.cp.ctl_ok(&["get", "bridges", "-o", "yaml"]),
        fleet.cp.ctl_ok(&["get", "all", "-o", "json"]),
        fleet.cp.ctl_ok(&["history", "-o", "json"]),
        card_text,
    ];
    for secret in [&key, &other_key] {
        let found = files_containing(fleet.dir.path(), secret.as_bytes());
        assert!(found.is_empty(), "a bridged key was written to {found:?}");
        assert!(outputs.iter().all(|o| !o.contains(secret.as_str())), "a bridged key in an output");
    }
}
