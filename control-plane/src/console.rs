//! The operators' console: read-only pages rendered here, on loopback (`--console-listen`).
//!
//! Server-rendered HTML with no script (a fresh machine needs no JavaScript build chain, and
//! a page that runs nothing has nothing to inject into): the fleet, the resources, the newest
//! decisions with filters, and each decision explained (`crate::replay::explain`). Every value
//! shown passes through [`escape`]: subjects, tool names and reasons come from callers.
//!
//! It has no login of its own: it listens on loopback only, so whoever can reach the host's
//! loopback can read it — every local user and process, and containers sharing the network
//! namespace (unlike the admin socket, which is 0600 and names its caller). It answers only
//! requests for a loopback host, so a page of another site cannot read it through DNS
//! rebinding. (Operator mTLS for a console on other addresses is not built yet; a non-loopback
//! address is refused at start.)

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::v1 as pb;
use warden_core::authorize::Authorizer;

use crate::configuration::Configuration;
use crate::fleet::Fleet;
use crate::telemetry::Telemetry;

/// Decisions one page shows at most.
const PAGE: u32 = 100;
/// The newest records the decisions page searches (bounded work per page view, whatever the
/// store holds).
const SEARCHED: u64 = 50_000;

#[derive(Clone)]
struct Console {
    configuration: Arc<Configuration>,
    fleet: Arc<Fleet>,
    telemetry: Arc<Telemetry>,
}

/// The console's routes.
pub fn router(configuration: Arc<Configuration>, fleet: Arc<Fleet>, telemetry: Arc<Telemetry>) -> Router {
    Router::new()
        .route("/", get(fleet_page))
        .route("/resources", get(resources_page))
        .route("/decisions", get(decisions_page))
        .route("/decisions/{id}", get(decision_page))
        .layer(axum::middleware::from_fn(loopback_hosts_only))
        .with_state(Console { configuration, fleet, telemetry })
}

/// Against DNS rebinding: a page from another site whose name resolves to 127.0.0.1 would have
/// the operator's browser read the console for it. Its requests name that site in `Host`.
async fn loopback_hosts_only(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let cross_site = request.headers().get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site");
    if !loopback_host(host) || cross_site {
        return error(
            StatusCode::FORBIDDEN,
            "the console answers only requests for a loopback host (localhost, 127.0.0.1, [::1])",
        );
    }
    next.run(request).await
}

/// Whether a `Host` value names this machine's loopback: `localhost` or a loopback address,
/// with or without a port.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Serves `router` on `listener` until `stop`.
pub async fn serve(router: Router, listener: tokio::net::TcpListener, mut stop: warden_tasks::Shutdown) {
    let _ = axum::serve(listener, router).with_graceful_shutdown(async move { stop.requested().await }).await;
}

/// `text` safe inside HTML text and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as a URL query value.
fn query_value(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A whole page: the same header and navigation on each, `refresh` seconds between reloads.
fn page(title: &str, refresh: Option<u32>, body: &str) -> Response {
    let refresh = refresh.map(|s| format!(r#"<meta http-equiv="refresh" content="{s}">"#)).unwrap_or_default();
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · Warden</title>{refresh}
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;margin:0;color:#1b1f24;background:#fff}}
header{{background:#1b1f24;color:#fff;padding:.6rem 1rem}} header a{{color:#fff;margin-right:1.2rem}}
main{{padding:1rem}} table{{border-collapse:collapse;width:100%;font-size:.9rem}}
th,td{{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #d0d7de;vertical-align:top}}
th{{background:#f6f8fa}} .deny{{color:#a40e26;font-weight:600}} .allow{{color:#116329}}
code{{font-size:.85rem}} form label{{margin-right:.8rem}} .held{{color:#116329}} .failed,.error{{color:#a40e26}}
</style></head>
<body><header><nav aria-label="Console"><strong>Warden</strong> &nbsp;
<a href="/">Fleet</a><a href="/resources">Resources</a><a href="/decisions">Decisions</a></nav></header>
<main><h1>{title}</h1>
{body}</main></body></html>"#,
        title = escape(title),
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // No script runs, nothing loads from elsewhere, no other site frames it.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    let mut response = page("Error", None, &format!("<p role=\"alert\">{}</p>", escape(message)));
    *response.status_mut() = status;
    response
}

fn ago(unix_ms: i64) -> String {
    if unix_ms == 0 {
        return "never".into();
    }
    let secs = ((crate::now_unix_ms() - unix_ms) / 1000).max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

fn rfc3339(unix_nanos: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(unix_nanos as i128)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix_nanos.to_string())
}

async fn fleet_page(State(c): State<Console>) -> Response {
    let store = c.configuration.store();
    let mut body = String::new();
    let (registered, elsewhere) = match (store.agents().await, store.presence().await) {
        (Ok(agents), Ok(presence)) => (agents, presence),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("console: listing agents from what this replica sees: the store cannot be read: {e}");
            body.push_str(
                "<p role=\"alert\">The store cannot be read: only the agents connected to this replica are shown.</p>\n",
            );
            (c.fleet.presence().seen_here(), Vec::new())
        }
    };
    let mut agents = c.fleet.presence().report(registered, &elsewhere);
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    let version = c.configuration.version();
    let connected = agents.iter().filter(|a| a.connected).count();
    let current = agents.iter().filter(|a| a.connected && a.applied_version == version).count();
    let _ = write!(
        body,
        "<p>Configuration version <strong>{version}</strong>. {} agents, {connected} connected, {current} on the \
         current version.</p>\n<table><caption>Agents</caption><thead><tr><th scope=\"col\">Agent</th>\
         <th scope=\"col\">Labels</th><th scope=\"col\">Connected</th><th scope=\"col\">Applied</th>\
         <th scope=\"col\">Lag</th><th scope=\"col\">Last seen</th><th scope=\"col\">Last error</th></tr></thead><tbody>\n",
        agents.len()
    );
    for a in &agents {
        let labels: BTreeMap<&String, &String> = a.labels.iter().collect();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/decisions?agent={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td></tr>",
            query_value(&a.id),
            escape(&a.id),
            escape(&labels.join(", ")),
            if a.connected { "yes" } else { "no" },
            a.applied_version,
            version.saturating_sub(a.applied_version),
            ago(a.last_seen_unix_ms),
            escape(if a.last_error.is_empty() { "-" } else { &a.last_error }),
        );
    }
    body.push_str("</tbody></table>");
    page("Fleet", Some(10), &body)
}

async fn resources_page(State(c): State<Console>) -> Response {
    let state = c.configuration.current();
    let mut body = format!(
        "<p>Configuration version <strong>{}</strong>.</p>\n<table><caption>Resources</caption><thead><tr>\
         <th scope=\"col\">Kind</th><th scope=\"col\">Name</th><th scope=\"col\">Version</th>\
         <th scope=\"col\">Document</th></tr></thead><tbody>\n",
        state.version
    );
    for r in state.documents(None, None) {
        let json = serde_json::from_slice::<serde_json::Value>(&r.document_json)
            .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
            .unwrap_or_default();
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><details><summary>spec</summary><pre><code>{}</code></pre>\
             </details></td></tr>",
            escape(&r.kind),
            escape(&r.name),
            r.resource_version,
            escape(&json)
        );
    }
    body.push_str("</tbody></table>");
    page("Resources", None, &body)
}

/// The filters of the decisions page, as query parameters.
#[derive(serde::Deserialize, Default)]
struct Filters {
    #[serde(default)]
    agent: String,
    #[serde(default)]
    server: String,
    #[serde(default)]
    tool: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    reason: String,
}

async fn decisions_page(State(c): State<Console>, Query(f): Query<Filters>) -> Response {
    let decision = match f.decision.as_str() {
        "" => 0,
        "allow" => pb::Decision::Allow as i32,
        "deny" => pb::Decision::Deny as i32,
        _ => return error(StatusCode::BAD_REQUEST, "decision is allow or deny"),
    };
    let decisions = c.telemetry.decisions().clone();
    let mut request = pb::ListDecisionsRequest {
        agent: f.agent.clone(),
        server: f.server.clone(),
        target: f.tool.clone(),
        subject: f.subject.clone(),
        reason: f.reason.clone(),
        decision,
        limit: crate::telemetry::decisions::LIST_LIMIT,
        ..Default::default()
    };
    let listed = tokio::task::spawn_blocking(move || {
        // The newest matches within the last `SEARCHED` records stored when the view began:
        // bounded work per view, however fast records keep arriving.
        let end = decisions.last_cursor()?;
        request.after = end.saturating_sub(SEARCHED);
        let mut newest: Vec<pb::StoredDecision> = Vec::new();
        loop {
            let page = decisions.list(&request)?;
            let done = page.next == request.after || page.next >= end;
            newest.extend(page.decisions.into_iter().filter(|d| d.cursor <= end));
            let excess = newest.len().saturating_sub(PAGE as usize);
            newest.drain(..excess);
            if done {
                break;
            }
            request.after = page.next;
        }
        Ok::<_, crate::telemetry::decisions::DecisionError>(newest)
    })
    .await;
    let mut listed = match listed {
        Ok(Ok(listed)) => listed,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    listed.truncate(PAGE as usize);
    listed.reverse();
    let field = |name: &str, label: &str, value: &str| {
        format!(r#"<label>{label} <input name="{name}" value="{}" size="14"></label>"#, escape(value))
    };
    let chosen = |v: &str| if f.decision == v { " selected" } else { "" };
    let mut body = format!(
        r#"<form method="get" action="/decisions" role="search">{}{}{}{}{}<label>Decision <select name="decision">
<option value=""{}>any</option><option value="allow"{}>allow</option><option value="deny"{}>deny</option></select></label>
<button type="submit">Filter</button></form>
<p>{}</p>
<table><caption>Decisions, newest first</caption><thead><tr><th scope="col">ID</th><th scope="col">Time</th>
<th scope="col">Agent</th><th scope="col">Server</th><th scope="col">Method</th><th scope="col">Target</th>
<th scope="col">Subject</th><th scope="col">Decision</th><th scope="col">Reason</th><th scope="col">Latency</th></tr></thead><tbody>
"#,
        field("agent", "Agent", &f.agent),
        field("server", "Server", &f.server),
        field("tool", "Tool", &f.tool),
        field("subject", "Subject", &f.subject),
        field("reason", "Reason", &f.reason),
        chosen(""),
        chosen("allow"),
        chosen("deny"),
        "The newest matching decisions (exact matches) among the last 50,000 stored, reloaded every 5 seconds.",
    );
    for d in &listed {
        let r = d.record.clone().unwrap_or_default();
        let name = if r.decision == pb::Decision::Allow as i32 { "allow" } else { "deny" };
        let shown = match r.audit.strip_prefix("would_") {
            Some(would) => format!("{name} (audit: would {would})"),
            None => name.to_string(),
        };
        let reason = match (r.reason.is_empty(), r.count) {
            (true, _) => "-".to_string(),
            (false, 0 | 1) => r.reason.clone(),
            (false, n) => format!("{} ×{n}", r.reason),
        };
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/decisions/{cursor}\" aria-label=\"explain decision {cursor}\">{cursor}</a></td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{name}\">{}</td><td>{}</td>\
             <td>{}µs</td></tr>",
            rfc3339(r.time_unix_nanos),
            escape(&d.agent),
            escape(&r.server),
            escape(&r.method),
            escape(if r.target.is_empty() { "-" } else { &r.target }),
            escape(if r.subject.is_empty() { "-" } else { &r.subject }),
            escape(&shown),
            escape(&reason),
            r.latency_micros,
            cursor = d.cursor,
        );
    }
    body.push_str("</tbody></table>");
    if listed.is_empty() {
        body.push_str("<p>No decision matches.</p>");
    }
    page("Decisions", Some(5), &body)
}

async fn decision_page(State(c): State<Console>, Path(id): Path<String>) -> Response {
    let state = c.configuration.current();
    let decisions = c.telemetry.decisions().clone();
    let explained = tokio::task::spawn_blocking(move || {
        let config = warden_core::Config::build(state.resources.values().map(|e| &e.document))
            .map_err(|e| tonic::Status::internal(format!("the configuration does not compile: {e}")))?;
        crate::replay::explain(&decisions, &Authorizer::new(&config), state.version, &id)
    })
    .await;
    let e = match explained {
        Ok(Ok(e)) => e,
        Ok(Err(status)) => {
            let code = match status.code() {
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return error(code, status.message());
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let stored = e.decision.clone().unwrap_or_default();
    let r = stored.record.clone().unwrap_or_default();
    let name = if r.decision == pb::Decision::Allow as i32 { "allow" } else { "deny" };
    let mut body = format!(
        "<dl><dt>Record</dt><dd><code>{}</code></dd><dt>Time</dt><dd>{}</dd><dt>Request</dt><dd>{} {} {} on {} via {}</dd>\
         <dt>Decision</dt><dd class=\"{name}\">{name}{}</dd><dt>Decided by</dt><dd>{}</dd><dt>Configuration version</dt><dd>{}</dd></dl>\n",
        escape(&proto::decision_record::record_id(&stored.agent, stored.boot, r.sequence)),
        rfc3339(r.time_unix_nanos),
        escape(&r.method),
        escape(&r.target_kind),
        escape(&r.target),
        escape(&r.server),
        escape(&r.via),
        if r.reason.is_empty() { String::new() } else { format!(" ({})", escape(&r.reason)) },
        if r.policies.is_empty() {
            "no policy (none permitted it)".to_string()
        } else {
            escape(&r.policies.join(", "))
        },
        r.config_version,
    );
    if let Some(caller) = &e.caller {
        let _ = write!(
            body,
            "<h2>What policy saw</h2><dl><dt>Principal</dt><dd><code>Workload::\"{}/{}\"</code></dd><dt>Scopes</dt><dd>{}</dd>",
            escape(&caller.issuer),
            escape(&caller.subject),
            if caller.scopes.is_empty() { "none".to_string() } else { escape(&caller.scopes.join(", ")) }
        );
        for (label, value) in [("Tenant", &caller.tenant), ("Email", &caller.email)] {
            if let Some(v) = value {
                let _ = write!(body, "<dt>{label}</dt><dd>{}</dd>", escape(v));
            }
        }
        if caller.has_groups {
            let _ = write!(body, "<dt>Groups</dt><dd>{}</dd>", escape(&caller.groups.join(", ")));
        }
        if caller.task {
            let _ = write!(body, "<dt>Task grants</dt><dd>{}</dd>", escape(&caller.granted_tools.join(", ")));
        }
        let _ = write!(
            body,
            "<dt>Source address</dt><dd>{}</dd><dt>Time</dt><dd>{}</dd><dt>Arguments</dt><dd>{}</dd></dl>",
            escape(&e.source_ip),
            rfc3339(e.policy_time_unix.saturating_mul(1_000_000_000)),
            if r.arguments { "present (values are never recorded)" } else { "none" }
        );
    }
    if !e.not_replayed.is_empty() {
        let _ = writeln!(body, "<p role=\"note\">{}</p>", escape(&e.not_replayed));
    }
    if !e.replayed.is_empty() {
        let _ = writeln!(
            body,
            "<h2>Under the current configuration (version {})</h2><p>{}{}</p>",
            e.version,
            escape(&e.replayed),
            if e.decided_by.is_empty() {
                String::new()
            } else {
                format!(", decided by {}", escape(&e.decided_by.join(", ")))
            }
        );
        body.push_str("<table><caption>Policies of the server, part by part</caption><thead><tr><th scope=\"col\">Policy</th>\
             <th scope=\"col\">Part</th><th scope=\"col\">Check</th><th scope=\"col\">Would need</th></tr></thead><tbody>\n");
        for p in &e.policies {
            let policy = format!(
                "{} {}{}{}",
                escape(&p.id),
                escape(&p.effect),
                if p.shadow { " (shadow)" } else { "" },
                if p.matched { " — matched" } else { "" }
            );
            let _ = writeln!(
                body,
                "<tr><th scope=\"row\">{policy}</th><td><code>{}</code></td><td class=\"{}\">{}</td><td></td></tr>",
                escape(&p.scope),
                escape(&p.scope_check),
                escape(&p.scope_check)
            );
            for clause in &p.clauses {
                let check = if clause.error.is_empty() {
                    escape(&clause.check)
                } else {
                    format!("{}: {}", escape(&clause.check), escape(&clause.error))
                };
                let _ = writeln!(
                    body,
                    "<tr><td></td><td><code>{}</code></td><td class=\"{}\">{check}</td><td>{}</td></tr>",
                    escape(&clause.text),
                    escape(&clause.check),
                    escape(&clause.fix)
                );
            }
        }
        body.push_str("</tbody></table>");
        if !e.changes.is_empty() {
            body.push_str("<h2>What would allow it</h2><ul>");
            for change in &e.changes {
                let _ = write!(body, "<li>{}</li>", escape(change));
            }
            body.push_str("</ul>");
        }
    }
    page(&format!("Decision {}", stored.cursor), None, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_answered() {
        for host in ["localhost", "localhost:7491", "LOCALHOST:1", "127.0.0.1:7491", "127.1.2.3", "[::1]:7491", "[::1]"]
        {
            assert!(loopback_host(host), "{host}");
        }
        for host in ["", "evil.example:7491", "localhost.evil.example", "10.0.0.1:7491", "[::2]:1", "127.0.0.1.evil:80"]
        {
            assert!(!loopback_host(host), "{host}");
        }
    }

    #[test]
    fn what_callers_chose_cannot_become_markup() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(query_value("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }
}
