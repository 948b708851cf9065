//! Printing results: aligned tables for people, JSON or YAML for programs.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::v1 as pb;
use serde_json::{Value, json};
use warden_core::Document;

use crate::Format;

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn emit(value: &Value, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json | Format::Table => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_norway::to_string(value)?),
    }
    Ok(())
}

/// A stored resource as the operator sees it: the document with `metadata.resourceVersion`
/// and, for issuers whose keys are fetched, a `status` of the key resolution.
fn document(r: &pb::Resource, keys: Option<&pb::IssuerKeyStatus>) -> anyhow::Result<Value> {
    let mut value: Value = serde_json::from_slice(&r.document_json)?;
    value["metadata"]["resourceVersion"] = r.resource_version.into();
    if let Some(k) = keys {
        value["status"] = json!({
            "kids": k.kids,
            "fetchedAtUnix": k.fetched_at_unix,
            "sourceUri": k.source_uri,
            "lastError": k.last_error,
            "nextRefreshUnix": k.next_refresh_unix,
        });
    }
    Ok(value)
}

/// `get <kind>`.
pub fn resources(response: &pb::GetResponse, format: Format) -> anyhow::Result<()> {
    let resources = &response.resources;
    let keys_of =
        |r: &pb::Resource| response.issuer_keys.iter().find(|k| r.kind == "TrustedIssuer" && k.issuer == r.name);
    match format {
        Format::Table => {
            let rows = resources
                .iter()
                .map(|r| {
                    let doc: Value = serde_json::from_slice(&r.document_json).unwrap_or_default();
                    let spec = &doc["spec"];
                    let detail = match r.kind.as_str() {
                        "TrustedIssuer" => {
                            let mut detail = spec["issuer"].as_str().unwrap_or_default().to_string();
                            if let Some(k) = keys_of(r) {
                                detail.push_str(&format!(" keys: [{}]", k.kids.join(",")));
                                if !k.last_error.is_empty() {
                                    detail.push_str(&format!(" (refresh failing: {})", k.last_error));
                                }
                            }
                            detail
                        }
                        "McpServer" => format!(
                            "{} -> {}",
                            spec["resource"].as_str().unwrap_or_default(),
                            spec["upstream"].as_str().unwrap_or_default()
                        ),
                        "Policy" => match spec["servers"].as_array() {
                            Some(s) => {
                                format!("servers: {}", s.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                            }
                            None => "servers: all".to_string(),
                        },
                        "Revocation" if spec["keyDigest"].is_string() => {
                            format!(
                                "bridge {}: key {}",
                                spec["issuer"].as_str().unwrap_or_default(),
                                spec["keyDigest"].as_str().unwrap_or_default()
                            )
                        }
                        "Revocation" => match (spec["jti"].as_str(), spec["subject"].as_str()) {
                            (Some(jti), _) => format!("{}: jti {jti}", spec["issuer"].as_str().unwrap_or_default()),
                            (_, Some(subject)) => format!(
                                "{}: subject {subject} up to {}",
                                spec["issuer"].as_str().unwrap_or_default(),
                                spec["issuedBefore"].as_str().unwrap_or_default()
                            ),
                            _ => String::new(),
                        },
                        _ => String::new(),
                    };
                    vec![r.kind.clone(), r.name.clone(), r.resource_version.to_string(), detail]
                })
                .collect();
            print_table(&["KIND", "NAME", "VERSION", "DETAIL"], rows);
            Ok(())
        }
        Format::Json => {
            let docs = resources.iter().map(|r| document(r, keys_of(r))).collect::<Result<_, _>>()?;
            emit(&Value::Array(docs), format)
        }
        Format::Yaml => {
            for r in resources {
                println!("---");
                print!("{}", serde_norway::to_string(&document(r, keys_of(r))?)?);
            }
            Ok(())
        }
    }
}

/// `get bridges`: each bridge with its days left and state (`open`, `expiring` within 7 days,
/// `expired` or `revoked`), and whether its key goes upstream.
pub fn bridges(response: &pb::GetResponse, format: Format) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut rows = Vec::new();
    let mut values = Vec::new();
    for b in &response.bridges {
        // Whole days left, rounded up: 1 on the last day, 0 once it has closed.
        let days_left = ((b.expires_unix - now).max(0) + 86_399) / 86_400;
        rows.push(vec![
            b.name.clone(),
            b.server.clone(),
            format!("{}/{}", b.name, b.principal),
            b.owner.clone(),
            warden_core::revocation::format_time(b.expires_unix),
            days_left.to_string(),
            b.state.clone(),
            if b.forwards_key { "FORWARDED UPSTREAM".into() } else { "kept at gateway".into() },
        ]);
        if let Some(r) = response.resources.iter().find(|r| r.kind == "CredentialBridge" && r.name == b.name) {
            let mut value = document(r, None)?;
            value["status"] = json!({"state": b.state, "daysLeft": days_left});
            values.push(value);
        }
    }
    match format {
        Format::Table => {
            print_table(&["NAME", "SERVER", "PRINCIPAL", "OWNER", "EXPIRES", "DAYS LEFT", "STATE", "KEY"], rows);
            Ok(())
        }
        _ => emit(&Value::Array(values), format),
    }
}

/// `apply`.
pub fn apply(response: &pb::ApplyResponse, dry_run: bool, format: Format) -> anyhow::Result<()> {
    if format != Format::Table {
        let results: Vec<Value> = response
            .results
            .iter()
            .map(|r| json!({"kind": r.kind, "name": r.name, "action": r.action, "resourceVersion": r.resource_version}))
            .collect();
        return emit(&json!({"version": response.version, "dryRun": dry_run, "results": results}), format);
    }
    let suffix = if dry_run { " (dry run)" } else { "" };
    for r in &response.results {
        println!("{}/{} {}{suffix}", r.kind, r.name, r.action);
    }
    println!("configuration version {}", response.version);
    Ok(())
}

fn ago(unix_ms: i64) -> String {
    if unix_ms == 0 {
        return "never".into();
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let secs = ((now - unix_ms) / 1000).max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

/// `get agents`.
pub fn agents(response: &pb::ListAgentsResponse, only: Option<&str>, format: Format) -> anyhow::Result<()> {
    let agents: Vec<&pb::AgentStatus> = response.agents.iter().filter(|a| only.is_none_or(|id| a.id == id)).collect();
    if let Some(id) = only
        && agents.is_empty()
    {
        anyhow::bail!("agent {id} not found");
    }
    let lag = |a: &pb::AgentStatus| response.version.saturating_sub(a.applied_version);
    if format != Format::Table {
        let values: Vec<Value> = agents
            .iter()
            .map(|a| {
                json!({
                    "id": a.id,
                    "labels": a.labels,
                    "connected": a.connected,
                    "appliedVersion": a.applied_version,
                    "lag": lag(a),
                    "lastSeenUnixMs": a.last_seen_unix_ms,
                    "lastError": a.last_error,
                    "certificateNotAfterUnix": a.certificate_not_after_unix,
                    "controlPlane": a.control_plane,
                })
            })
            .collect();
        return emit(&json!({"version": response.version, "agents": values}), format);
    }
    let rows = agents
        .iter()
        .map(|a| {
            let mut labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            vec![
                a.id.clone(),
                if labels.is_empty() { "-".into() } else { labels.join(",") },
                if a.connected { "yes".into() } else { "no".into() },
                a.applied_version.to_string(),
                lag(a).to_string(),
                ago(a.last_seen_unix_ms),
                if a.last_error.is_empty() { "-".into() } else { a.last_error.clone() },
            ]
        })
        .collect();
    print_table(&["ID", "LABELS", "CONNECTED", "APPLIED", "LAG", "LAST SEEN", "LAST ERROR"], rows);
    Ok(())
}

/// `get findings`: where static secrets are on the fleet's hosts (never their values).
pub fn findings(response: &pb::ListFindingsResponse, format: Format) -> anyhow::Result<()> {
    let state = |f: &pb::StoredFinding| if f.gone_unix == 0 { "open" } else { "gone" };
    if format != Format::Table {
        let findings: Vec<Value> = response
            .findings
            .iter()
            .map(|f| {
                let found = f.finding.clone().unwrap_or_default();
                json!({
                    "host": f.agent,
                    "file": found.file,
                    "location": found.location,
                    "server": found.server,
                    "client": found.client,
                    "kind": found.kind,
                    "fingerprint": found.fingerprint,
                    "state": state(f),
                    "firstSeenUnix": f.first_seen_unix,
                    "lastSeenUnix": f.last_seen_unix,
                    "goneUnix": (f.gone_unix != 0).then_some(f.gone_unix),
                })
            })
            .collect();
        let hosts: Vec<Value> = response
            .hosts
            .iter()
            .map(|h| {
                let unreadable: Vec<Value> =
                    h.unreadable.iter().map(|u| json!({"file": u.file, "reason": u.reason})).collect();
                json!({
                    "host": h.agent,
                    "scannedUnix": h.scanned_unix,
                    "filesScanned": h.files_scanned,
                    "truncated": h.truncated,
                    "dropped": h.dropped,
                    "unreadable": unreadable,
                })
            })
            .collect();
        return emit(&json!({"findings": findings, "hosts": hosts}), format);
    }
    let rows = response
        .findings
        .iter()
        .map(|f| {
            let found = f.finding.clone().unwrap_or_default();
            vec![
                f.agent.clone(),
                found.kind,
                if found.server.is_empty() { "-".into() } else { found.server },
                format!("{}  {}", found.file, found.location),
                found.fingerprint.chars().take(12).collect(),
                state(f).to_string(),
                ago(f.first_seen_unix.saturating_mul(1000)),
            ]
        })
        .collect();
    print_table(&["HOST", "KIND", "SERVER", "WHERE", "FINGERPRINT", "STATE", "FIRST SEEN"], rows);
    for h in &response.hosts {
        if h.truncated || h.dropped > 0 {
            eprintln!(
                "{}: the scan was cut short by a limit or findings were dropped ({} dropped)",
                h.agent, h.dropped
            );
        }
        for u in &h.unreadable {
            eprintln!("{}: could not read {}: {}", h.agent, u.file, u.reason);
        }
    }
    Ok(())
}

/// `scorecard`.
pub fn scorecard(card: &pb::ScorecardResponse, format: Format) -> anyhow::Result<()> {
    let share = |n: u64| if card.requests == 0 { 0.0 } else { 100.0 * n as f64 / card.requests as f64 };
    if format != Format::Table {
        let value = json!({
            "sinceUnixNanos": card.since_unix_nanos,
            "secrets": {
                "open": card.secrets_open, "new": card.secrets_new, "resolved": card.secrets_resolved,
                "openByKind": card.secrets_open_by_kind, "hostsScanned": card.hosts_scanned,
            },
            "tokenLifetimes": {
                "decisions": card.token_decisions, "p50Seconds": card.lifetime_p50_seconds,
                "p95Seconds": card.lifetime_p95_seconds, "maxSeconds": card.lifetime_max_seconds,
                "atMost15m": card.lifetime_at_most_15m,
            },
            "requests": {
                "total": card.requests, "validated": card.validated, "audited": card.audited,
                "bridged": card.bridged, "refused": card.refused,
            },
            "requestsByServer": card.requests_by_server.iter().map(|(server, r)| (server.clone(), json!({
                "total": r.requests, "validated": r.validated, "audited": r.audited,
                "bridged": r.bridged, "refused": r.refused,
            }))).collect::<serde_json::Map<_, _>>(),
            "tokenLifetimesByIssuer": card.lifetimes_by_issuer.iter().map(|(issuer, l)| (issuer.clone(), json!({
                "decisions": l.decisions, "p50Seconds": l.p50_seconds, "p95Seconds": l.p95_seconds,
                "maxSeconds": l.max_seconds, "atMost15m": l.at_most_15m,
            }))).collect::<serde_json::Map<_, _>>(),
            "revocations": {
                "bySource": card.revocations_by_source,
                "enforcement": {
                    "measured": card.enforcement_measured, "p50Ms": card.enforcement_p50_ms,
                    "p95Ms": card.enforcement_p95_ms, "maxMs": card.enforcement_max_ms,
                },
            },
            "serversInAudit": card.servers_in_audit,
            "bridges": card.bridges.iter().map(|b| json!({
                "name": b.name, "server": b.server, "principal": b.principal, "owner": b.owner,
                "expiresUnix": b.expires_unix, "state": b.state, "forwardsKey": b.forwards_key,
                "requests": b.requests,
            })).collect::<Vec<_>>(),
            "recordsRead": card.records_read,
            "truncated": card.truncated,
        });
        return emit(&value, format);
    }
    let window = if card.since_unix_nanos == 0 {
        "everything stored".to_string()
    } else {
        format!("since {}", rfc3339(card.since_unix_nanos))
    };
    println!("Secretless scorecard ({window})\n");
    let mut kinds: Vec<String> = card.secrets_open_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    kinds.sort();
    println!(
        "Stored secrets       {} open on {} {} scanned; {} new, {} resolved in the window",
        card.secrets_open,
        card.hosts_scanned,
        if card.hosts_scanned == 1 { "host" } else { "hosts" },
        card.secrets_new,
        card.secrets_resolved
    );
    if !kinds.is_empty() {
        println!("                     by kind: {}", kinds.join(", "));
    }
    let short = if card.token_decisions == 0 {
        0.0
    } else {
        100.0 * card.lifetime_at_most_15m as f64 / card.token_decisions as f64
    };
    println!(
        "Token lifetimes      p50 {}s, p95 {}s, max {}s over {} decisions; {short:.1}% at most 15 min",
        card.lifetime_p50_seconds, card.lifetime_p95_seconds, card.lifetime_max_seconds, card.token_decisions
    );
    println!(
        "Claim validation     {} requests: {:.1}% on a validated token, {:.1}% in audit mode, {:.1}% through a bridge, {:.1}% refused",
        card.requests,
        share(card.validated),
        share(card.audited),
        share(card.bridged),
        share(card.refused)
    );
    let mut servers: Vec<_> = card.requests_by_server.iter().collect();
    servers.sort_by(|a, b| a.0.cmp(b.0));
    for (server, r) in servers {
        let share = |n: u64| if r.requests == 0 { 0.0 } else { 100.0 * n as f64 / r.requests as f64 };
        println!(
            "  {server:<18} {} requests: {:.1}% validated, {:.1}% audit, {:.1}% bridge, {:.1}% refused",
            r.requests,
            share(r.validated),
            share(r.audited),
            share(r.bridged),
            share(r.refused)
        );
    }
    let mut issuers: Vec<_> = card.lifetimes_by_issuer.iter().collect();
    issuers.sort_by(|a, b| a.0.cmp(b.0));
    for (issuer, l) in issuers {
        println!(
            "  tokens of {issuer}: p50 {}s, p95 {}s, max {}s over {} decisions",
            l.p50_seconds, l.p95_seconds, l.max_seconds, l.decisions
        );
    }
    let mut sources: Vec<String> = card.revocations_by_source.iter().map(|(s, n)| format!("{s} {n}")).collect();
    sources.sort();
    let sources = if sources.is_empty() { "none".to_string() } else { sources.join(", ") };
    println!("Revocations          {sources}");
    if card.enforcement_measured > 0 {
        println!(
            "                     enforced by every connected agent in p50 {} ms, p95 {} ms, max {} ms ({} measured)",
            card.enforcement_p50_ms, card.enforcement_p95_ms, card.enforcement_max_ms, card.enforcement_measured
        );
    }
    let audit = if card.servers_in_audit.is_empty() { "none".to_string() } else { card.servers_in_audit.join(", ") };
    println!("Servers in audit     {audit}");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let open = card.bridges.iter().filter(|b| matches!(b.state.as_str(), "open" | "expiring")).count();
    println!("Bridges              {open} open of {}", card.bridges.len());
    for b in &card.bridges {
        let days = ((b.expires_unix - now).max(0) + 86_399) / 86_400;
        let forwarded = if b.forwards_key { "; THE STATIC KEY STILL GOES UPSTREAM" } else { "" };
        println!(
            "                     {} -> {}: {}, {days} days left, {} requests (owner {}){forwarded}",
            b.name, b.server, b.state, b.requests, b.owner
        );
    }
    if card.truncated {
        println!("\n(only the newest {} decision records were read)", card.records_read);
    }
    Ok(())
}

/// `join-token create`.
pub fn join_token(response: &pb::CreateJoinTokenResponse, format: Format) -> anyhow::Result<()> {
    if format == Format::Table {
        // The token alone on stdout, so it can be captured by a script.
        println!("{}", response.token);
        eprintln!("one-time join token; expires at unix time {}", response.expires_unix);
        return Ok(());
    }
    emit(&json!({"token": response.token, "expiresUnix": response.expires_unix}), format)
}

/// `history`.
pub fn history(response: &pb::HistoryResponse, format: Format) -> anyhow::Result<()> {
    if format != Format::Table {
        return emit(&Value::Array(response.records.iter().map(audit_json).collect()), format);
    }
    let rows = response
        .records
        .iter()
        .map(|r| {
            vec![
                r.version.to_string(),
                ago(r.time_unix_ms),
                r.actor.clone(),
                r.operation.clone(),
                format!("{}/{}", r.kind, r.name),
                r.resource_version.to_string(),
            ]
        })
        .collect();
    print_table(&["VERSION", "WHEN", "ACTOR", "OPERATION", "RESOURCE", "PREVIOUS"], rows);
    Ok(())
}

/// One audit entry as `history -o json` gives it.
fn audit_json(r: &pb::AuditRecord) -> Value {
    json!({"version": r.version, "timeUnixMs": r.time_unix_ms, "actor": r.actor, "operation": r.operation,
           "kind": r.kind, "name": r.name, "previousResourceVersion": r.resource_version})
}

/// `history --version`: each document the change wrote, its difference line by line.
pub fn history_changes(response: &pb::HistoryResponse, format: Format) -> anyhow::Result<()> {
    if format != Format::Table {
        let values: Vec<Value> = response
            .records
            .iter()
            .map(|r| {
                let mut value = audit_json(r);
                value["difference"] = json!(r.difference);
                value["differenceNote"] = json!(r.difference_note);
                value
            })
            .collect();
        return emit(&Value::Array(values), format);
    }
    for (i, r) in response.records.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!(
            "{} {}/{} at version {} by {} ({})",
            visible_line(&r.operation),
            visible_line(&r.kind),
            visible_line(&r.name),
            r.version,
            visible_line(&r.actor),
            rfc3339(r.time_unix_ms.saturating_mul(1_000_000)),
        );
        if !r.difference_note.is_empty() {
            println!("({})", visible_line(&r.difference_note));
        }
        for line in &r.difference {
            // A document's text is the applier's: nothing in it may move the terminal.
            println!("{}", visible_line(line));
        }
    }
    Ok(())
}

fn rfc3339(unix_nanos: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(unix_nanos as i128)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix_nanos.to_string())
}

fn decision_name(decision: i32) -> &'static str {
    match pb::Decision::try_from(decision) {
        Ok(pb::Decision::Allow) => "allow",
        Ok(pb::Decision::Deny) => "deny",
        _ => "unknown",
    }
}

fn decision_value(d: &pb::StoredDecision) -> Value {
    let r = d.record.clone().unwrap_or_default();
    json!({
        "cursor": d.cursor, "id": proto::decision_record::record_id(&d.agent, d.boot, r.sequence),
        "agent": d.agent, "time": rfc3339(r.time_unix_nanos), "server": r.server,
        "method": r.method, "targetKind": r.target_kind, "target": r.target, "subject": r.subject,
        "issuer": r.issuer, "decision": decision_name(r.decision), "reason": r.reason, "policies": r.policies,
        "latencyMicros": r.latency_micros, "traceId": r.trace_id, "jtiHash": r.jti_hash, "via": r.via,
        "tokenLifetimeSeconds": r.token_lifetime_seconds, "actor": r.actor, "binding": r.binding,
        "count": r.count.max(1), "source": r.source, "shadow": r.shadow, "shadowPolicies": r.shadow_policies, "audit": r.audit,
        "caller": hex(&r.caller), "arguments": r.arguments, "configVersion": r.config_version,
    })
}

/// `decisions --shadow-diff`, after the list: how many decisions the shadow policies would flip,
/// each way, and which policies would decide them.
pub fn shadow_flips(decisions: &[pb::StoredDecision]) {
    let records: Vec<&pb::DecisionRecord> =
        decisions.iter().filter_map(|d| d.record.as_ref()).filter(|r| !r.shadow.is_empty()).collect();
    let to_deny = records.iter().filter(|r| r.shadow == "shadow_deny").count();
    let to_allow = records.iter().filter(|r| r.shadow == "shadow_allow").count();
    let mut by_policy: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for policy in records.iter().flat_map(|r| &r.shadow_policies) {
        *by_policy.entry(policy).or_default() += 1;
    }
    let policies: Vec<String> = by_policy.iter().map(|(p, n)| format!("{p} ×{n}")).collect();
    let n = records.len();
    println!(
        "\n{n} {} would flip under the shadow policies: {to_deny} allow → deny, {to_allow} deny → allow{}",
        if n == 1 { "decision" } else { "decisions" },
        if policies.is_empty() { String::new() } else { format!(" (deciding: {})", policies.join(", ")) }
    );
}

/// `decisions`: a table (with its header when `header`), or one JSON object per line (so
/// `--follow` output can be piped), or YAML documents.
pub fn decisions(decisions: &[pb::StoredDecision], format: Format, header: bool) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            for d in decisions {
                println!("{}", serde_json::to_string(&decision_value(d))?);
            }
        }
        Format::Yaml => {
            for d in decisions {
                print!("---\n{}", serde_norway::to_string(&decision_value(d))?);
            }
        }
        Format::Table => {
            if decisions.is_empty() && !header {
                return Ok(());
            }
            let rows = decisions
                .iter()
                .map(|d| {
                    let r = d.record.clone().unwrap_or_default();
                    let target = if r.target.is_empty() { "-".to_string() } else { r.target };
                    vec![
                        d.cursor.to_string(),
                        rfc3339(r.time_unix_nanos),
                        d.agent.clone(),
                        r.server,
                        r.method,
                        target,
                        if r.subject.is_empty() { "-".into() } else { r.subject },
                        match (r.audit.strip_prefix("would_"), r.shadow.strip_prefix("shadow_")) {
                            (Some(would), _) => format!("{} (audit: would {would})", decision_name(r.decision)),
                            (None, Some(shadow)) => format!("{} (shadow: {shadow})", decision_name(r.decision)),
                            (None, None) => decision_name(r.decision).into(),
                        },
                        // An aggregated refusal says how many it stands for.
                        match (r.reason.is_empty(), r.count) {
                            (true, _) => "-".into(),
                            (false, 0 | 1) => r.reason,
                            (false, n) => format!("{} ×{n}", r.reason),
                        },
                        format!("{}µs", r.latency_micros),
                    ]
                })
                .collect();
            let names =
                ["ID", "TIME", "AGENT", "SERVER", "METHOD", "TARGET", "SUBJECT", "DECISION", "REASON", "LATENCY"];
            if header {
                print_table(&names, rows);
            } else {
                print_rows(&names, rows);
            }
        }
    }
    Ok(())
}

/// Table rows without the header (for `--follow`), aligned to the header's widths at least.
fn print_rows(header: &[&str], rows: Vec<Vec<String>>) {
    for row in rows {
        let cells: Vec<String> = row.iter().zip(header).map(|(cell, h)| format!("{cell:<w$}", w = h.len())).collect();
        println!("{}", cells.join("   ").trim_end());
    }
}

/// `decisions --summary`.
pub fn decision_summary(
    decisions: &[pb::StoredDecision],
    dropped: &std::collections::HashMap<String, u64>,
    received: u64,
    window: std::time::Duration,
    format: Format,
) -> anyhow::Result<()> {
    let seconds = window.as_secs_f64();
    let rate = |n: u64| n as f64 / seconds;
    use std::collections::BTreeMap;
    let mut denied_targets: BTreeMap<String, u64> = BTreeMap::new();
    let mut deny_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_agent: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut total = 0;
    for d in decisions {
        let Some(r) = &d.record else { continue };
        // An aggregated refusal (before any token was accepted) stands for `count` decisions.
        let n = r.count.max(1);
        total += n;
        let deny = r.decision == pb::Decision::Deny as i32;
        let entry = per_agent.entry(d.agent.clone()).or_default();
        if deny {
            entry.1 += n;
            *deny_reasons.entry(r.reason.clone()).or_default() += n;
            if !r.target.is_empty() {
                *denied_targets.entry(format!("{}/{}", r.server, r.target)).or_default() += n;
            }
        } else {
            entry.0 += n;
        }
    }
    let top = |counts: BTreeMap<String, u64>| {
        let mut v: Vec<(String, u64)> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(10);
        v
    };
    let (targets, reasons) = (top(denied_targets), top(deny_reasons));
    if format != Format::Table {
        let value = json!({
            "decisions": total, "records": decisions.len(), "receivedTotal": received, "dropped": dropped, "windowSeconds": seconds,
            "topDeniedTargets": targets.iter().map(|(t, n)| json!({"target": t, "denies": n})).collect::<Vec<_>>(),
            "topDenyReasons": reasons.iter().map(|(r, n)| json!({"reason": r, "denies": n})).collect::<Vec<_>>(),
            "agents": per_agent.iter().map(|(a, (allow, deny))| json!({"agent": a, "allows": allow, "denies": deny,
                "perSecond": rate(allow + deny), "deniesPerSecond": rate(*deny),
                "dropped": dropped.get(a).copied().unwrap_or(0)})).collect::<Vec<_>>(),
        });
        return emit(&value, format);
    }
    println!("{total} decisions over {seconds:.0}s ({} records received in all)\n", received);
    print_table(&["DENIED TARGET", "DENIES"], targets.into_iter().map(|(t, n)| vec![t, n.to_string()]).collect());
    println!();
    print_table(&["DENY REASON", "DENIES"], reasons.into_iter().map(|(r, n)| vec![r, n.to_string()]).collect());
    println!();
    let rows = per_agent
        .into_iter()
        .map(|(a, (allow, deny))| {
            let lost = dropped.get(&a).copied().unwrap_or(0);
            let per_second = format!("{:.2}", rate(allow + deny));
            vec![a, allow.to_string(), deny.to_string(), per_second, format!("{:.2}", rate(deny)), lost.to_string()]
        })
        .collect();
    print_table(&["AGENT", "ALLOWS", "DENIES", "PER SECOND", "DENIES/S", "DROPPED"], rows);
    Ok(())
}

/// `diff`: prints each document's difference from the stored one; returns whether any differs.
pub fn diff(documents: &[(PathBuf, Document)], stored: &[pb::Resource]) -> anyhow::Result<bool> {
    let mut changed = false;
    for (_, doc) in documents {
        let key = doc.key();
        let ours: Value = serde_json::from_slice(&doc.to_canonical_json())?;
        let theirs = stored
            .iter()
            .find(|r| r.kind == key.kind.as_str() && r.name == key.name)
            .map(|r| serde_json::from_slice::<Value>(&r.document_json))
            .transpose()?;
        match theirs {
            None => {
                changed = true;
                println!("+ {key} (new)");
                for line in serde_norway::to_string(&ours)?.lines() {
                    println!("+   {line}");
                }
            }
            Some(theirs) if theirs == ours => println!("= {key} (unchanged)"),
            Some(theirs) => {
                changed = true;
                println!("~ {key}");
                let (old, new) = (serde_norway::to_string(&theirs)?, serde_norway::to_string(&ours)?);
                for change in similar::TextDiff::from_lines(&old, &new).iter_all_changes() {
                    let sign = match change.tag() {
                        similar::ChangeTag::Delete => "-",
                        similar::ChangeTag::Insert => "+",
                        similar::ChangeTag::Equal => " ",
                    };
                    print!("{sign}   {change}");
                }
            }
        }
    }
    Ok(changed)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn caller_value(c: &pb::Caller) -> Value {
    json!({
        "issuer": c.issuer, "subject": c.subject, "scopes": c.scopes, "tenant": c.tenant, "email": c.email,
        "groups": c.has_groups.then_some(&c.groups), "grantedTools": c.task.then_some(&c.granted_tools),
    })
}

/// `explain`: the decision, what policy saw, each policy part by part, what would allow it.
pub fn explain(e: &pb::ExplainResponse, format: Format) -> anyhow::Result<()> {
    let stored = e.decision.clone().unwrap_or_default();
    let r = stored.record.clone().unwrap_or_default();
    if format != Format::Table {
        let policies: Vec<Value> = e
            .policies
            .iter()
            .map(|p| {
                let clauses: Vec<Value> = p
                    .clauses
                    .iter()
                    .map(|c| json!({"text": c.text, "check": c.check, "error": c.error, "fix": c.fix}))
                    .collect();
                json!({"id": p.id, "effect": p.effect, "shadow": p.shadow, "scope": p.scope,
                    "scopeCheck": p.scope_check, "matched": p.matched, "clauses": clauses})
            })
            .collect();
        return emit(
            &json!({"decision": decision_value(&stored), "caller": e.caller.as_ref().map(caller_value),
                "sourceIp": e.source_ip, "version": e.version, "replayed": e.replayed,
                "notReplayed": e.not_replayed, "decidedBy": e.decided_by, "policies": policies,
                "changes": e.changes}),
            format,
        );
    }
    let target = if r.target.is_empty() { r.target_kind.clone() } else { format!("{} {}", r.target_kind, r.target) };
    let recorded = match r.audit.strip_prefix("would_") {
        Some(would) => format!("{} (audit: would {would})", decision_name(r.decision)),
        None => decision_name(r.decision).to_string(),
    };
    let reason = if r.reason.is_empty() { String::new() } else { format!(" ({})", r.reason) };
    println!(
        "decision {} ({}) at {}",
        stored.cursor,
        proto::decision_record::record_id(&stored.agent, stored.boot, r.sequence),
        rfc3339(r.time_unix_nanos)
    );
    println!("  {} {target} on {} via {}: {recorded}{reason}", r.method, r.server, r.via);
    if !r.policies.is_empty() {
        println!("  decided by {}", r.policies.join(", "));
    }
    if r.config_version != 0 {
        println!("  under configuration version {}", r.config_version);
    }
    if let Some(c) = &e.caller {
        println!("\nwhat policy saw:");
        println!("  principal  Workload::\"{}/{}\" in Issuer::\"{}\"", c.issuer, c.subject, c.issuer);
        println!("  scopes     [{}]", c.scopes.join(", "));
        for (name, value) in [("tenant", &c.tenant), ("email", &c.email)] {
            if let Some(v) = value {
                println!("  {name:<10} {v}");
            }
        }
        if c.has_groups {
            println!("  groups     [{}]", c.groups.join(", "));
        }
        if c.task {
            println!("  task token granting [{}]", c.granted_tools.join(", "));
        }
        println!("  source_ip  {}", e.source_ip);
        println!("  time       {}", rfc3339(e.policy_time_unix.saturating_mul(1_000_000_000)));
        println!("  arguments  {}", if r.arguments { "present (values are never recorded)" } else { "none" });
    }
    if !e.not_replayed.is_empty() {
        println!("\n{}", e.not_replayed);
    }
    if e.replayed.is_empty() {
        return Ok(());
    }
    let then = if r.audit.is_empty() {
        decision_name(r.decision)
    } else if r.audit == "would_allow" {
        "allow"
    } else {
        "deny"
    };
    let same = match (then == e.replayed, r.config_version) {
        (true, _) => "the same as recorded".to_string(),
        (false, v) if v != 0 && v != e.version => {
            format!("NOT what was recorded: the configuration changed since (decided under version {v})")
        }
        (false, _) => "NOT what was recorded: the same configuration decides otherwise now (a condition on the time, \
                       or on arguments the record does not keep)"
            .to_string(),
    };
    println!("\nunder the current configuration (version {}): {}, {same}", e.version, e.replayed);
    if !e.decided_by.is_empty() {
        println!("  decided by {}", e.decided_by.join(", "));
    }
    println!("\npolicies of {}:", r.server);
    for p in &e.policies {
        let mark = if p.matched { "MATCHED" } else { "did not match" };
        let shadow = if p.shadow { " (shadow)" } else { "" };
        println!("  {} {}{shadow}: {mark}", p.id, p.effect);
        println!("    {:<7} {}", p.scope_check, p.scope);
        for c in &p.clauses {
            let fix = if c.fix.is_empty() { String::new() } else { format!("   → needs {}", c.fix) };
            let error = if c.error.is_empty() { String::new() } else { format!(" ({})", c.error) };
            println!("    {:<7} {}{error}{fix}", c.check, c.text);
        }
    }
    if !e.changes.is_empty() {
        println!("\nwhat would allow it:");
        for c in &e.changes {
            println!("  - {c}");
        }
    }
    Ok(())
}

/// `apply --test`: what the apply would change, then every decision it would flip.
pub fn test_apply(t: &pb::TestApplyResponse, format: Format) -> anyhow::Result<()> {
    let flips = |direction: &str| t.flips.iter().filter(|f| f.direction == direction).map(|f| f.count).sum::<u64>();
    if format != Format::Table {
        let results: Vec<Value> =
            t.results.iter().map(|r| json!({"kind": r.kind, "name": r.name, "action": r.action})).collect();
        let groups: Vec<Value> = t
            .flips
            .iter()
            .map(|f| {
                json!({"direction": f.direction, "server": f.server, "method": f.method, "target": f.target,
                "policies": f.policies, "wasAllowedBy": f.was_allowed_by, "count": f.count,
                "callers": f.callers, "examples": f.examples})
            })
            .collect();
        return emit(
            &json!({"version": t.version, "results": results, "records": t.records, "replayed": t.replayed,
                "unchanged": t.unchanged, "notPolicy": t.not_policy, "cannotJudge": t.cannot_judge,
                "differsFromRecorded": t.differs_from_recorded,
                "allowToDeny": flips("allow_to_deny"), "denyToAllow": flips("deny_to_allow"),
                "flips": groups, "truncated": t.truncated}),
            format,
        );
    }
    for r in &t.results {
        println!("{}/{} {} (test)", r.kind, r.name, r.action);
    }
    let since = if t.first_unix_nanos == 0 {
        "the window".to_string()
    } else {
        format!("since {}", rfc3339(t.first_unix_nanos))
    };
    println!(
        "\nreplayed {} of {} decisions {since} against the proposed configuration (based on version {})",
        t.replayed, t.records, t.version
    );
    println!("  unchanged        {}", t.unchanged);
    if t.differs_from_recorded > 0 {
        println!(
            "  (of those replayed, {} the current configuration already decides otherwise than recorded: \
             flips are counted against the current configuration)",
            t.differs_from_recorded
        );
    }
    println!("  allow → deny     {}", flips("allow_to_deny"));
    println!("  deny → allow     {}", flips("deny_to_allow"));
    println!("  not by policy    {} (token refusals and methods that pass on the token)", t.not_policy);
    let cannot: u64 = t.cannot_judge.values().sum();
    if cannot > 0 {
        let why: Vec<String> = t.cannot_judge.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        println!("  cannot judge     {cannot} ({})", why.join(", "));
    }
    if t.truncated {
        println!("  (stopped at the control plane's bound: later decisions were not read)");
    }
    for f in &t.flips {
        let arrow = if f.direction == "allow_to_deny" { "allow → deny" } else { "deny → allow" };
        let target = if f.target.is_empty() { String::new() } else { format!(" {}", f.target) };
        let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        println!(
            "\n{arrow}: {}{target} on {} — {}, {}",
            f.method,
            f.server,
            plural(f.count, "decision", "decisions"),
            if f.callers >= 10_000 { "10,000+ callers".to_string() } else { plural(f.callers, "caller", "callers") }
        );
        let why = match (f.direction.as_str(), f.policies.is_empty()) {
            ("allow_to_deny", true) => format!("no permit would match (allowed by {})", f.was_allowed_by.join(", ")),
            ("allow_to_deny", false) => format!("forbidden by {}", f.policies.join(", ")),
            _ => format!("permitted by {}", f.policies.join(", ")),
        };
        println!("  {why}");
        println!("  e.g. {}", f.examples.join(", "));
    }
    Ok(())
}

/// `text` with what a terminal would act on or not show — control characters (ESC among them),
/// direction overrides, zero-width and other invisible characters — written as `\u{…}`: tool
/// names and definitions come from MCP servers, the party pinning guards against.
fn visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if warden_core::pinning::invisible(c) || (c.is_control() && c != '\n') {
            out.push_str(&format!("\\u{{{:04X}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// [`visible`] for one line (a table cell, a path): line ends escaped too, so a name cannot
/// make rows of its own.
fn visible_line(text: &str) -> String {
    visible(text).replace('\n', "\\u{000A}").replace('\u{2028}', "\\u{2028}").replace('\u{2029}', "\\u{2029}")
}

/// `word` as one shell word that means exactly it: as is when plain, else `$'…'` with every
/// other byte escaped.
fn shell_word(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b)) {
        return word.to_string();
    }
    let mut out = String::from("$'");
    for b in word.bytes() {
        if b.is_ascii_alphanumeric() || b" _-.:/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('\'');
    out
}

/// The first 12 hex digits of a `sha256:` digest, as tables show it.
fn short_digest(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.chars().take(12).collect()
}

fn definition_flags(flags: &[pb::DefinitionFlag]) -> Vec<Value> {
    flags.iter().map(|f| json!({"sign": f.sign, "at": f.at, "detail": f.detail})).collect()
}

/// `wardenctl tools list`.
pub fn tool_definitions(response: &pb::ListToolDefinitionsResponse, format: Format) -> anyhow::Result<()> {
    if format != Format::Table {
        let definitions: Vec<Value> = response
            .definitions
            .iter()
            .map(|d| {
                let seen: Vec<Value> = d
                    .seen
                    .iter()
                    .map(|s| {
                        json!({
                            "digest": s.digest,
                            "definition": serde_json::from_str::<Value>(&s.definition).ok(),
                            "firstSeenUnix": s.first_seen_unix,
                            "lastSeenUnix": s.last_seen_unix,
                            "firstAgent": s.first_agent,
                            "flags": definition_flags(&s.flags),
                        })
                    })
                    .collect();
                json!({
                    "server": d.server, "kind": d.kind, "name": d.name, "state": d.state, "pinning": d.pinning,
                    "approval": (!d.approval.is_empty()).then_some(&d.approval),
                    "approvedDigest": (!d.approved_digest.is_empty()).then_some(&d.approved_digest),
                    "rejectedDigests": d.rejected_digests, "seen": seen,
                })
            })
            .collect();
        return emit(&json!({"definitions": definitions}), format);
    }
    let rows = response
        .definitions
        .iter()
        .map(|d| {
            let listed = d.seen.first();
            let flags: Vec<String> = listed
                .map(|s| {
                    let mut signs: Vec<String> = s.flags.iter().map(|f| f.sign.clone()).collect();
                    signs.sort();
                    signs.dedup();
                    signs
                })
                .unwrap_or_default();
            vec![
                d.server.clone(),
                d.kind.clone(),
                visible_line(&d.name),
                d.state.clone(),
                d.pinning.clone(),
                listed.map_or("-".into(), |s| short_digest(&s.digest)),
                if d.approved_digest.is_empty() { "-".into() } else { short_digest(&d.approved_digest) },
                if flags.is_empty() { "-".into() } else { flags.join(",") },
                listed.map_or("-".into(), |s| ago(s.last_seen_unix * 1000)),
            ]
        })
        .collect();
    print_table(&["SERVER", "KIND", "NAME", "STATE", "PINNING", "LISTED", "APPROVED", "FLAGS", "LISTED-AT"], rows);
    Ok(())
}

/// A definition as people read it: canonical JSON indented, one member per line.
fn readable_definition(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_default() + "\n",
        Err(_) if text.is_empty() => "(not kept: larger than the control plane keeps)\n".into(),
        Err(_) => text.to_string() + "\n",
    }
}

/// `wardenctl tools diff`: the approved definition (or, with none, the one seen before) against
/// the one listed last (or `digest`).
pub fn tool_diff(status: &pb::ToolDefinitionStatus, digest: Option<&str>) -> anyhow::Result<()> {
    let new = match digest {
        Some(d) => status.seen.iter().find(|s| s.digest == d),
        None => status.seen.first(),
    };
    let Some(new) = new else {
        anyhow::bail!("{} is not a definition seen for {:?}", digest.unwrap_or("-"), status.name)
    };
    let old = if status.approved_digest.is_empty() {
        status.seen.iter().find(|s| s.digest != new.digest)
    } else {
        status.seen.iter().find(|s| s.digest == status.approved_digest)
    };
    println!(
        "{} {} of server {} ({}, pinning: {})",
        status.kind,
        visible_line(&format!("{:?}", status.name)),
        status.server,
        status.state,
        status.pinning
    );
    let old_text = match old {
        Some(old) => {
            let what = if old.digest == status.approved_digest { "approved" } else { "seen before" };
            println!("--- {} ({what})", old.digest);
            readable_definition(&old.definition)
        }
        None if !status.approved_digest.is_empty() => {
            println!("--- {} (approved; its text is no longer kept)", status.approved_digest);
            String::new()
        }
        None => {
            println!("--- (nothing approved or seen before)");
            String::new()
        }
    };
    println!("+++ {} (first seen {} from {})", new.digest, ago(new.first_seen_unix * 1000), new.first_agent);
    if old.is_some_and(|o| o.digest == new.digest) {
        println!("(no change: this is the approved definition)");
        for line in readable_definition(&new.definition).lines() {
            println!(" {}", visible(line));
        }
    } else {
        let new_text = readable_definition(&new.definition);
        for change in similar::TextDiff::from_lines(&old_text, &new_text).iter_all_changes() {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => "-",
                similar::ChangeTag::Insert => "+",
                similar::ChangeTag::Equal => " ",
            };
            print!("{sign}{}", visible(&change.to_string()));
        }
    }
    if new.flags.is_empty() {
        println!("signs of poisoning: none found");
    } else {
        println!("signs of poisoning:");
        for f in &new.flags {
            println!("  {}  at {}: {}", f.sign, visible_line(&f.at), visible_line(&f.detail));
        }
    }
    // What the operator read is what they approve, whatever the server lists meanwhile.
    println!(
        "to approve it: wardenctl tools approve {} {} --kind {} --digest {}",
        status.server,
        shell_word(&status.name),
        status.kind,
        new.digest
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_chosen_text_cannot_move_the_terminal_or_make_rows() {
        let name = "read\u{1b}[2J\u{202e}elif\nrow";
        let shown = visible_line(name);
        assert_eq!(shown, "read\\u{001B}[2J\\u{202E}elif\\u{000A}row");
        assert!(!shown.chars().any(|c| c.is_control()));
        // The approve command names the very tool, bytes and all.
        assert_eq!(shell_word("read_file"), "read_file");
        assert_eq!(shell_word("it's"), "$'it\\x27s'");
        assert_eq!(shell_word("a\u{200b}b"), "$'a\\xe2\\x80\\x8bb'");
    }
}
