//! The operators' console: read-only pages rendered here (`--console-listen`).
//!
//! Server-rendered HTML with no script (a fresh machine needs no JavaScript build chain, and
//! a page that runs nothing has nothing to inject into): the fleet (paged, the agents that need
//! looking at first), the resources and their change history, the decisions with filters
//! (newest first, older ones page by page), each decision explained (`crate::replay::explain`),
//! the stored secrets the agents found, and the secretless scorecard. Every value
//! shown passes through [`escape`]: subjects, tool names and reasons come from callers.
//!
//! Two ways to reach it ([`Access`]). By default it has no login of its own: it listens on
//! loopback only, so whoever can reach the host's loopback can read it — every local user and
//! process, and containers sharing the network namespace (unlike the admin socket, which is
//! 0600 and names its caller) — and it answers only requests for a loopback host, so a page of
//! another site cannot read it through DNS rebinding. With `--console-mtls` it serves HTTPS on
//! any address to operators' client certificates only, checked against the operator registry
//! on every request, as the admin API checks them.

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
use crate::configuration::history::{self, CHANGE_READ, Line};
use crate::fleet::Fleet;
use crate::inventory::Inventory;
use crate::telemetry::Telemetry;

/// Decisions (and agents) one page shows at most.
const PAGE: u32 = 100;
/// Audit entries the history page shows (the newest).
const HISTORY: usize = 500;
/// The newest records the decisions page searches (bounded work per page view, whatever the
/// store holds).
const SEARCHED: u64 = 50_000;

#[derive(Clone)]
struct Console {
    configuration: Arc<Configuration>,
    fleet: Arc<Fleet>,
    telemetry: Arc<Telemetry>,
    inventory: Arc<Inventory>,
    tallies: Arc<crate::scorecard::Tallies>,
}

/// Who may read the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Whoever reaches a loopback address (plain HTTP, requests for a loopback host only).
    Loopback,
    /// Operators, by their client certificate (HTTPS, served by [`serve_tls`]): one the fleet CA
    /// issued for `spiffe://<trust domain>/operator/<name>` and the operator registry still
    /// lists, read on every request so a revocation holds at once.
    Operators,
}

/// The console's routes.
pub fn router(
    configuration: Arc<Configuration>,
    fleet: Arc<Fleet>,
    telemetry: Arc<Telemetry>,
    inventory: Arc<Inventory>,
    tallies: Arc<crate::scorecard::Tallies>,
    access: Access,
) -> Router {
    let console = Console { configuration, fleet, telemetry, inventory, tallies };
    let routes = Router::new()
        .route("/", get(fleet_page))
        .route("/resources", get(resources_page))
        .route("/history", get(history_page))
        .route("/history/{version}/{kind}/{name}", get(change_page))
        .route("/decisions", get(decisions_page))
        .route("/decisions/{id}", get(decision_page))
        .route("/findings", get(findings_page))
        .route("/scorecard", get(scorecard_page));
    let routes = match access {
        Access::Loopback => routes.layer(axum::middleware::from_fn(loopback_hosts_only)),
        Access::Operators => routes.layer(axum::middleware::from_fn_with_state(console.clone(), operators_only)),
    };
    routes.with_state(console)
}

/// Only operators, by a client certificate the registry still lists; and, as for loopback,
/// no cross-site request (a browser sends its client certificate with those too).
async fn operators_only(
    State(console): State<Console>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = request.extensions().get::<axum::extract::ConnectInfo<crate::http_listener::Peer>>();
    let trust_domain = console.fleet.ca().trust_domain();
    let operator =
        peer.and_then(|p| p.0.certificate.as_deref()).and_then(|der| crate::fleet::peer::identity(der, trust_domain));
    let Some((warden_core::identity::FleetIdentity::Operator(name), serial)) = operator else {
        return error(StatusCode::FORBIDDEN, "the console answers only operators' client certificates");
    };
    // A browser sends its client certificate with any site's requests: only the console's own
    // pages, and addresses typed or bookmarked, are answered.
    let site = request.headers().get("sec-fetch-site").map(|v| v.as_bytes());
    if !matches!(site, None | Some(b"same-origin" | b"none")) {
        return error(StatusCode::FORBIDDEN, "the console answers only its own pages and addresses typed in");
    }
    match console.configuration.store().operator(&name).await {
        Ok(Some(record)) if record.accepts(&serial, crate::now_unix_ms() / 1000) => {}
        Ok(_) => {
            tracing::warn!(operator = %name, serial, "console: refused a revoked, expired or unregistered operator certificate");
            return error(
                StatusCode::FORBIDDEN,
                "this operator certificate was revoked or has expired (or predates the operator registry): have a new \
                 one issued",
            );
        }
        Err(e) => {
            tracing::error!("console: the operator registry cannot be read: {e}");
            return error(StatusCode::SERVICE_UNAVAILABLE, "the operator registry cannot be read: try again");
        }
    }
    next.run(request).await
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

/// Serves `router` on `listener` until `stop`: over HTTPS with `tls` (which requires a client
/// certificate of the fleet CA), else plain HTTP (loopback).
pub async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: warden_tasks::Shutdown,
) {
    crate::http_listener::serve(router, listener, tls, crate::http_listener::Limits::default(), stop).await;
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
code{{font-size:.85rem}} pre{{font-size:.85rem;background:#f6f8fa;padding:.5rem}}
pre span,pre ins,pre del{{display:block;text-decoration:none}} ins{{background:#dafbe1}} del{{background:#ffebe9}}
form label{{margin-right:.8rem}} .held{{color:#116329}} .failed,.error{{color:#a40e26}}
</style></head>
<body><header><nav aria-label="Console"><strong>Warden</strong> &nbsp;
<a href="/">Fleet</a><a href="/resources">Resources</a><a href="/history">History</a>
<a href="/decisions">Decisions</a><a href="/findings">Findings</a><a href="/scorecard">Scorecard</a></nav></header>
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

/// Which page of a long table.
#[derive(serde::Deserialize, Default)]
struct Paged {
    #[serde(default)]
    page: usize,
}

/// Links to the pages before and after `page` of `pages`, at `path` (which ends in `?` or `&`).
fn pager(path: &str, page: usize, pages: usize) -> String {
    let mut links = Vec::new();
    if page > 0 {
        links.push(format!("<a href=\"{path}page={}\" rel=\"prev\">← Previous</a>", page - 1));
    }
    if page + 1 < pages {
        links.push(format!("<a href=\"{path}page={}\" rel=\"next\">Next →</a>", page + 1));
    }
    if links.is_empty() {
        return String::new();
    }
    format!("<nav aria-label=\"Pages\"><p>Page {} of {pages}. {}</p></nav>\n", page + 1, links.join(" "))
}

async fn fleet_page(State(c): State<Console>, Query(paged): Query<Paged>) -> Response {
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
    let version = c.configuration.version();
    let connected = agents.iter().filter(|a| a.connected).count();
    let current = agents.iter().filter(|a| a.connected && a.applied_version == version).count();
    // Agents that need looking at first (not connected, behind, failing), then by name; a page
    // at a time, so a fleet of thousands is not one page.
    agents.sort_by_key(|a| (a.connected && a.applied_version == version && a.last_error.is_empty(), a.id.clone()));
    let pages = agents.len().div_ceil(PAGE as usize).max(1);
    let shown = paged.page.min(pages - 1);
    let _ = write!(
        body,
        "<p>Configuration version <strong>{version}</strong>. {} agents, {connected} connected, {current} on the \
         current version. Agents that are not connected, behind or failing come first.</p>\n{}\
         <table><caption>Agents</caption><thead><tr><th scope=\"col\">Agent</th>\
         <th scope=\"col\">Labels</th><th scope=\"col\">Connected</th><th scope=\"col\">Applied</th>\
         <th scope=\"col\">Lag</th><th scope=\"col\">Last seen</th><th scope=\"col\">Last error</th></tr></thead><tbody>\n",
        agents.len(),
        pager("/?", shown, pages),
    );
    for a in agents.iter().skip(shown * PAGE as usize).take(PAGE as usize) {
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
    /// Only records stored before this cursor (the next page of older ones).
    #[serde(default)]
    before: Option<u64>,
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
    let before = f.before;
    let listed = tokio::task::spawn_blocking(move || {
        // The newest matches within the last `SEARCHED` records stored when the view began:
        // bounded work per view, however fast records keep arriving.
        let last = decisions.last_cursor()?;
        let end = before.map_or(last, |b| b.saturating_sub(1).min(last));
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
        Ok::<_, crate::telemetry::decisions::DecisionError>((newest, end.saturating_sub(SEARCHED)))
    })
    .await;
    let (mut listed, searched_from) = match listed {
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
        if before.is_some() {
            "Older matching decisions (exact matches), among the 50,000 stored before the ones on the page before."
        } else {
            "The newest matching decisions (exact matches) among the last 50,000 stored, reloaded every 5 seconds."
        },
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
    // Older matches: the same filters, searched from before the oldest one shown (a full page),
    // or from before the records searched (fewer matches among them than a page holds).
    let older = match listed.last() {
        Some(oldest) if listed.len() == PAGE as usize => Some(oldest.cursor),
        _ if searched_from > 0 => Some(searched_from + 1),
        _ => None,
    };
    if let Some(before) = older {
        let mut query: Vec<String> = [
            ("agent", &f.agent),
            ("server", &f.server),
            ("tool", &f.tool),
            ("subject", &f.subject),
            ("decision", &f.decision),
            ("reason", &f.reason),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", query_value(v)))
        .collect();
        query.push(format!("before={before}"));
        let _ = write!(
            body,
            "<nav aria-label=\"Pages\"><p><a href=\"/decisions?{}\" rel=\"next\">Older decisions →</a></p></nav>",
            escape(&query.join("&"))
        );
    }
    // A page of older decisions stays as it is; the newest reload to show what arrives.
    page("Decisions", before.is_none().then_some(5), &body)
}

async fn history_page(State(c): State<Console>) -> Response {
    let entries = match c.configuration.store().audit(HISTORY).await {
        Ok(entries) => entries,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &format!("the audit trail cannot be read: {e}")),
    };
    let mut body = format!(
        "<p>Every change to the configuration, newest first (the newest {HISTORY}; <code>wardenctl history</code> \
         reads further).</p>\n<table><caption>Changes</caption><thead><tr><th scope=\"col\">Version</th>\
         <th scope=\"col\">Time</th><th scope=\"col\">Who</th><th scope=\"col\">Change</th><th scope=\"col\">Kind</th>\
         <th scope=\"col\">Name</th><th scope=\"col\">Resource version before</th><th scope=\"col\">What changed</th>\
         </tr></thead><tbody>\n"
    );
    for e in entries.iter().rev() {
        let changed = if !history::writes_document(e) {
            "-".to_string()
        } else {
            let link = format!("/history/{}/{}/{}", e.version, query_value(&e.kind), query_value(&e.name));
            format!(
                "<a href=\"{}\" aria-label=\"what changed in {} at version {}\">diff</a>",
                escape(&link),
                escape(&format!("{}/{}", e.kind, e.name)),
                e.version
            )
        };
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.version,
            rfc3339(e.time_unix_ms.saturating_mul(1_000_000)),
            escape(&e.actor),
            escape(&e.operation),
            escape(&e.kind),
            escape(&e.name),
            match (e.previous_resource_version, e.operation.as_str()) {
                (0, "apply") => "new".to_string(),
                (0, _) => "-".to_string(),
                (v, _) => v.to_string(),
            },
            changed,
        );
    }
    body.push_str("</tbody></table>");
    page("History", None, &body)
}

/// One change to one resource: the document before and after it, line by line.
async fn change_page(State(c): State<Console>, Path((version, kind, name)): Path<(u64, String, String)>) -> Response {
    let entries = match c.configuration.store().audit(CHANGE_READ).await {
        Ok(entries) => entries,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &format!("the audit trail cannot be read: {e}")),
    };
    let Some(this) = history::change(&entries, version, &kind, &name) else {
        let message = format!("no change to {kind}/{name} at version {version} among the newest {CHANGE_READ}");
        return error(StatusCode::NOT_FOUND, &message);
    };
    let mut body = format!(
        "<p>Version {} · {} · by {} · {}</p>\n",
        this.entry.version,
        rfc3339(this.entry.time_unix_ms.saturating_mul(1_000_000)),
        escape(&this.entry.actor),
        escape(&this.entry.operation),
    );
    let (before, after) = (this.before, this.after);
    // Off the runtime's workers: a long document's difference is work (bounded in time).
    let change = move || differences(&history::difference(&before, &after));
    match tokio::task::spawn_blocking(change).await {
        Ok(shown) => body.push_str(&shown),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
    page(&format!("{kind}/{name} at version {version}"), None, &body)
}

/// The HTML of a difference: its note, and the document line by line, removed lines `del`,
/// added `ins`.
fn differences(difference: &history::Difference) -> String {
    let mut out = String::new();
    if let Some(note) = difference.note {
        let _ = write!(out, "<p>{}</p>", escape(note));
    }
    if difference.lines.is_empty() {
        return out;
    }
    // Each line its own element (`pre span`, `del`, `ins` are blocks): no text between them.
    let lines: String = difference
        .lines
        .iter()
        .map(|(tag, text)| {
            let (tag, sign) = match tag {
                Line::Same => ("span", " "),
                Line::Removed => ("del", "-"),
                Line::Added => ("ins", "+"),
            };
            format!("<{tag}>{sign} {}</{tag}>", escape(text))
        })
        .collect();
    let _ = write!(out, "<pre aria-label=\"differences\">{lines}</pre>");
    out
}

async fn findings_page(State(c): State<Console>, Query(paged): Query<Paged>) -> Response {
    let listed = match c.inventory.list(&pb::ListFindingsRequest::default()).await {
        Ok(listed) => listed,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &format!("the findings cannot be read: {e}")),
    };
    let mut findings = listed.findings;
    // Open ones first, newest first within each.
    findings.sort_by_key(|f| (f.gone_unix != 0, std::cmp::Reverse(f.first_seen_unix)));
    let open = findings.iter().filter(|f| f.gone_unix == 0).count();
    let pages = findings.len().div_ceil(PAGE as usize).max(1);
    let shown = paged.page.min(pages - 1);
    let mut body = format!(
        "<p>Static secrets the agents found on their hosts: <strong>{open}</strong> open, {} gone, on {} \
         scanned. Values are never sent: a fingerprint names the same secret on several hosts.</p>\n{}\
         <table><caption>Stored secrets</caption><thead><tr><th scope=\"col\">Host</th><th scope=\"col\">Kind</th>\
         <th scope=\"col\">Client</th><th scope=\"col\">MCP server</th><th scope=\"col\">File</th>\
         <th scope=\"col\">Where</th><th scope=\"col\">Fingerprint</th><th scope=\"col\">First seen</th>\
         <th scope=\"col\">State</th></tr></thead><tbody>\n",
        findings.len() - open,
        if listed.hosts.len() == 1 { "1 host".to_string() } else { format!("{} hosts", listed.hosts.len()) },
        pager("/findings?", shown, pages),
    );
    for f in findings.iter().skip(shown * PAGE as usize).take(PAGE as usize) {
        let finding = f.finding.clone().unwrap_or_default();
        let state = if f.gone_unix == 0 {
            "<span class=\"deny\">open</span>".to_string()
        } else {
            format!("gone {}", rfc3339(f.gone_unix.saturating_mul(1_000_000_000)))
        };
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td>\
             <td><code>{}</code></td><td>{}</td><td>{state}</td></tr>",
            escape(&f.agent),
            escape(&finding.kind),
            escape(&finding.client),
            escape(if finding.server.is_empty() { "-" } else { &finding.server }),
            escape(&finding.file),
            escape(&finding.location),
            escape(&finding.fingerprint),
            rfc3339(f.first_seen_unix.saturating_mul(1_000_000_000)),
        );
    }
    body.push_str("</tbody></table>");
    if findings.is_empty() {
        body.push_str("<p>No agent has reported a stored secret.</p>");
    }
    page("Findings", None, &body)
}

async fn scorecard_page(State(c): State<Console>) -> Response {
    let card = match crate::scorecard::compute(&c.configuration, &c.fleet, &c.telemetry, &c.tallies, 0).await {
        Ok(card) => card,
        Err(status) => return error(StatusCode::SERVICE_UNAVAILABLE, status.message()),
    };
    let share = |n: u64, of: u64| if of == 0 { 0.0 } else { 100.0 * n as f64 / of as f64 };
    let mut kinds: Vec<String> = card.secrets_open_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    kinds.sort();
    let mut sources: Vec<String> = card.revocations_by_source.iter().map(|(s, n)| format!("{s} {n}")).collect();
    sources.sort();
    let mut body = format!(
        "<p>The secretless scorecard over everything stored (<code>wardenctl scorecard --since</code> takes a window).</p>\n\
         <table><caption>Outcomes</caption><tbody>\n\
         <tr><th scope=\"row\">Stored secrets</th><td>{} open on {} scanned; {} resolved{}</td></tr>\n\
         <tr><th scope=\"row\">Token lifetimes</th><td>p50 {}s, p95 {}s, max {}s over {} decisions; {:.1}% at most 15 min</td></tr>\n\
         <tr><th scope=\"row\">Claim validation</th><td>{} requests: {:.1}% on a validated token, {:.1}% in audit mode, \
         {:.1}% through a bridge, {:.1}% refused</td></tr>\n\
         <tr><th scope=\"row\">Revocations</th><td>{}{}</td></tr>\n\
         <tr><th scope=\"row\">Servers in audit</th><td>{}</td></tr>\n</tbody></table>\n",
        card.secrets_open,
        if card.hosts_scanned == 1 { "1 host".to_string() } else { format!("{} hosts", card.hosts_scanned) },
        card.secrets_resolved,
        if kinds.is_empty() { String::new() } else { format!(" (open by kind: {})", escape(&kinds.join(", "))) },
        card.lifetime_p50_seconds,
        card.lifetime_p95_seconds,
        card.lifetime_max_seconds,
        card.token_decisions,
        share(card.lifetime_at_most_15m, card.token_decisions),
        card.requests,
        share(card.validated, card.requests),
        share(card.audited, card.requests),
        share(card.bridged, card.requests),
        share(card.refused, card.requests),
        if sources.is_empty() { "none".to_string() } else { escape(&sources.join(", ")) },
        if card.enforcement_measured == 0 {
            String::new()
        } else {
            format!(
                "; enforced by every connected agent in p50 {} ms, p95 {} ms ({} measured)",
                card.enforcement_p50_ms, card.enforcement_p95_ms, card.enforcement_measured
            )
        },
        if card.servers_in_audit.is_empty() { "none".to_string() } else { escape(&card.servers_in_audit.join(", ")) },
    );
    let mut servers: Vec<_> = card.requests_by_server.iter().collect();
    servers.sort_by(|a, b| a.0.cmp(b.0));
    body.push_str(
        "<table><caption>Requests by server</caption><thead><tr><th scope=\"col\">Server</th><th scope=\"col\">Requests</th>\
         <th scope=\"col\">Validated</th><th scope=\"col\">Audit</th><th scope=\"col\">Bridge</th>\
         <th scope=\"col\">Refused</th></tr></thead><tbody>\n",
    );
    for (server, r) in servers {
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{:.1}%</td><td>{:.1}%</td><td>{:.1}%</td><td>{:.1}%</td></tr>",
            escape(server),
            r.requests,
            share(r.validated, r.requests),
            share(r.audited, r.requests),
            share(r.bridged, r.requests),
            share(r.refused, r.requests),
        );
    }
    body.push_str("</tbody></table>\n");
    if !card.bridges.is_empty() {
        body.push_str(
            "<table><caption>Credential bridges</caption><thead><tr><th scope=\"col\">Bridge</th><th scope=\"col\">Server</th>\
             <th scope=\"col\">State</th><th scope=\"col\">Expires</th><th scope=\"col\">Requests</th>\
             <th scope=\"col\">Owner</th><th scope=\"col\">Static key upstream</th></tr></thead><tbody>\n",
        );
        for b in &card.bridges {
            let _ = writeln!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&b.name),
                escape(&b.server),
                escape(&b.state),
                rfc3339(b.expires_unix.saturating_mul(1_000_000_000)),
                b.requests,
                escape(&b.owner),
                if b.forwards_key { "<span class=\"deny\">yes</span>" } else { "no" },
            );
        }
        body.push_str("</tbody></table>\n");
    }
    if card.truncated {
        let _ = write!(body, "<p role=\"note\">Only the newest {} decision records were read.</p>", card.records_read);
    }
    page("Scorecard", None, &body)
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
    fn long_tables_link_their_neighbouring_pages() {
        assert_eq!(pager("/?", 0, 1), "");
        let first = pager("/?", 0, 3);
        assert!(first.contains("Page 1 of 3") && first.contains(r#"href="/?page=1""#) && !first.contains("prev"));
        let middle = pager("/findings?", 1, 3);
        assert!(middle.contains(r#"href="/findings?page=0""#) && middle.contains(r#"href="/findings?page=2""#));
        let last = pager("/?", 2, 3);
        assert!(last.contains(r#"rel="prev""#) && !last.contains(r#"rel="next""#));
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
