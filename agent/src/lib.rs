//! `warden-agent`: joins the fleet once, then keeps a configuration stream to the control
//! plane, applies each version whole, persists the last good one and enforces it, online or
//! not.
//!
//! Start-up order matters: the last good snapshot is loaded *before* the control plane is
//! contacted, so a restarted agent enforces its last configuration at once; an agent that never
//! had one enforces nothing and denies everything.
// One audited exception, measured in BENCHMARKS.md: `allocator::trim` (glibc's `malloc_trim`).
#![deny(unsafe_code)]

pub mod allocator;
pub mod applied;
pub mod decisions;
pub mod definitions;
pub mod export;
pub mod ext_authz;
pub mod gateway;
pub mod identity;
pub mod inventory;
pub mod last_good;
pub mod spans;
pub mod status;
pub mod sync;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use warden_tasks::{Backoff, Shutdown, Tasks};

use crate::applied::Current;
use crate::identity::{Files, Identity, IdentityError};
use crate::last_good::LastGood;
use crate::sync::{Client, Link};

/// Everything `run` needs, parsed and validated by `main`.
#[derive(Clone)]
pub struct Options {
    /// This agent's id (its SPIFFE ID's last segment).
    pub agent_id: String,
    /// Labels McpServer selectors match on.
    pub labels: BTreeMap<String, String>,
    /// Identity files and the last good snapshot.
    pub data_dir: PathBuf,
    /// Control-plane addresses (`host:port`), tried in turn.
    pub control_planes: Vec<String>,
    /// How to join, needed only on the first start.
    pub join: Option<identity::Join>,
    /// The local status endpoint.
    pub status_listen: Option<SocketAddr>,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// Agent heartbeat interval.
    pub heartbeat_interval: Duration,
    /// A stream silent this long is dropped and reconnected.
    pub idle_timeout: Duration,
    /// Bounds on gateway requests.
    pub gateway_limits: gateway::Limits,
    /// Gateway worker threads.
    pub gateway_workers: usize,
    /// The gateway's TLS identity, for servers with an `https` resource.
    pub gateway_tls: Option<gateway::GatewayTls>,
    /// Where the local check API (Envoy ext_authz) listens: `unix:/path` or `host:port`.
    pub ext_authz_listen: Option<String>,
    /// The session-sealing key file (default `<data_dir>/session.key`).
    pub session_key: Option<PathBuf>,
    /// Bounds of the decision records' outbox.
    pub decisions: decisions::Limits,
    /// OpenTelemetry export (from the `OTEL_*` variables): spans of gateway requests and, with
    /// a logs endpoint, decision records straight from this agent.
    pub otlp: warden_otlp::Config,
    /// Scanning this host for static secrets in MCP configuration.
    pub scan: inventory::ScanOptions,
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No identity could be had.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The data directory or status port could not be prepared.
    #[error("{0}")]
    Io(String),
}

/// Runs the agent until `shutdown` resolves. On shutdown the gateway drains, every background
/// task finishes (telemetry flushed), and what the outbox still holds goes to disk before this
/// returns.
pub async fn run(options: Options, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), RunError> {
    if let Some(listen) = &options.ext_authz_listen {
        ext_authz::check_listen(listen).map_err(|e| RunError::Io(format!("--ext-authz-listen: {e}")))?;
    }
    std::fs::create_dir_all(&options.data_dir)
        .map_err(|e| RunError::Io(format!("creating {}: {e}", options.data_dir.display())))?;
    let last_good = Arc::new(LastGood::new(&options.data_dir));
    let current = enforce_last_good(&last_good);
    let outbox = decisions::Outbox::open(&options.data_dir, options.decisions)
        .map_err(|e| RunError::Io(format!("opening the decision spool: {e}")))?;

    let (trigger, stop) = warden_tasks::channel();
    let mut tasks = Tasks::new();
    tasks.spawn("shutdown signal", async move {
        shutdown.await;
        tracing::info!("shutting down");
        trigger.fire();
    });
    let (link_tx, link_rx) = watch::channel(Link::default());
    let (not_after_tx, not_after_rx) = watch::channel(0i64);
    let link = link_rx.clone();
    let connected = move || link.borrow().connected;
    tasks.spawn("decision spiller", outbox.clone().run_spiller(connected, stop.clone()));
    tasks.spawn("allocator trim", allocator::trim_periodically(stop.clone()));
    let exports = start_exports(&options, &outbox, &stop, &mut tasks);
    let (fleet_key, key_rx) = watch::channel(None);
    let (findings_tx, findings) = watch::channel(None);
    tasks.spawn("secret inventory", inventory::run(options.scan.clone(), key_rx, findings_tx, stop.clone()));
    let shared = status::Shared::new(
        options.agent_id.clone(),
        current.clone(),
        link_rx,
        not_after_rx,
        outbox.clone(),
        exports.spans.clone(),
        (options.otlp.clone(), exports.counts.clone()),
    );
    start_metrics_export(&options, &exports, &shared, &stop, &mut tasks);
    if let Some(addr) = options.status_listen {
        let status = status::router(shared);
        tasks.spawn("status endpoint", status::serve(status, bind(addr, "status endpoint").await?, stop.clone()));
    }

    // The gateway serves from the last good configuration even before the control plane answers.
    let (requests, request_queues) = sync::requests();
    let gateway_workers = start_gateway(&options, &current, &outbox, exports.spans, requests, &stop, &mut tasks)?;
    let agent_outbox = outbox.clone();
    let client = |identity| Client {
        agent_id: options.agent_id.clone(),
        labels: options.labels.clone(),
        addresses: options.control_planes.clone(),
        identity,
        current,
        last_good,
        backoff: options.backoff,
        idle_timeout: options.idle_timeout,
        heartbeat_interval: options.heartbeat_interval,
        link: link_tx,
        requests: tokio::sync::Mutex::new(request_queues),
        outbox: Some(agent_outbox),
        fleet_key,
        findings,
    };
    follow_control_plane(&options, client, not_after_tx, &stop, &mut tasks).await?;
    let _ = tokio::task::spawn_blocking(move || gateway_workers.into_iter().for_each(|w| drop(w.join()))).await;
    // The gateway has stopped: no record can be added after the tallies' last flush.
    tasks.join().await;
    outbox.persist().await;
    tracing::info!("agent stopped");
    Ok(())
}

/// Starts the gateway (its worker threads, the refusal tallies and the optional local check
/// API) on `current`; returns the workers, to be joined once `stop` fires.
fn start_gateway(
    options: &Options,
    current: &Current,
    outbox: &Arc<decisions::Outbox>,
    spans: Option<Arc<spans::Spans>>,
    requests: sync::Requests,
    stop: &Shutdown,
    tasks: &mut Tasks,
) -> Result<Vec<std::thread::JoinHandle<()>>, RunError> {
    let session_key_file = options.session_key.clone().unwrap_or_else(|| options.data_dir.join("session.key"));
    let session_key = load_or_create_key(&session_key_file)
        .map_err(|e| RunError::Io(format!("session key {}: {e}", session_key_file.display())))?;
    let shared = gateway::Shared::new(
        current.clone(),
        options.gateway_limits,
        requests,
        options.gateway_tls.clone(),
        options.labels.clone(),
        outbox.clone(),
        spans,
        &session_key,
    );
    tasks.spawn("refusal tallies", shared.record_refusals(stop.clone()));
    if let Some(listen) = options.ext_authz_listen.clone() {
        tasks.spawn("local check API", ext_authz::serve_logged(shared.clone(), listen, stop.clone()));
    }
    gateway::start(shared, options.gateway_workers, stop.clone())
        .map_err(|e| RunError::Io(format!("starting gateway workers: {e}")))
}

/// Obtains this agent's identity (joining the fleet the first time), keeps its certificate
/// renewed, and follows the control plane with the client made for it until `stop`.
async fn follow_control_plane(
    options: &Options,
    client: impl FnOnce(watch::Receiver<Identity>) -> Client,
    not_after: watch::Sender<i64>,
    stop: &Shutdown,
    tasks: &mut Tasks,
) -> Result<(), RunError> {
    let files = Files::new(&options.data_dir);
    let mut waiting = stop.clone();
    let identity = tokio::select! {
        id = obtain_identity(options, &files) => id?,
        () = waiting.requested() => return Ok(()),
    };
    not_after.send_replace(identity.not_after);
    let (identity_tx, identity_rx) = watch::channel(identity);
    tasks.spawn("certificate renewal", renew_forever(options.clone(), identity_tx, not_after, stop.clone()));
    client(identity_rx).run(stop.clone()).await;
    Ok(())
}

/// The last good configuration from disk, enforced at once; without one, everything is denied
/// until the control plane answers.
fn enforce_last_good(last_good: &LastGood) -> Current {
    let current = Current::default();
    match last_good.load() {
        Ok(Some(applied)) => {
            tracing::info!(version = applied.version, "enforcing the last good configuration from disk");
            current.set(applied);
        }
        Ok(None) => tracing::warn!("no configuration yet: denying everything until the control plane answers"),
        Err(e) => tracing::error!(
            "the stored configuration is unreadable or does not apply ({e}); denying everything until the control plane answers"
        ),
    }
    current
}

/// The OTLP exporters the options name: gateway spans, decision records straight from this
/// agent, and (once [`start_metrics_export`] runs) its metrics.
struct Exports {
    spans: Option<Arc<spans::Spans>>,
    /// Every export request, counted by signal and outcome.
    counts: Arc<warden_otlp::Exports>,
    /// The resource every export names: the options', with this agent's id as
    /// `service.instance.id` unless the operator set one (the Collector makes it `instance`).
    resource: Vec<(String, String)>,
}

/// Starts the span and decision-log exporters the options name.
fn start_exports(options: &Options, outbox: &Arc<decisions::Outbox>, stop: &Shutdown, tasks: &mut Tasks) -> Exports {
    let counts = Arc::new(warden_otlp::Exports::default());
    let mut resource = options.otlp.resource.clone();
    if !resource.iter().any(|(k, _)| k == "service.instance.id") {
        resource.push(("service.instance.id".into(), options.agent_id.clone()));
    }
    let sender = |endpoint: &warden_otlp::Endpoint, what: &str| {
        warden_otlp::Sender::new(endpoint, counts.clone())
            .inspect(|_| tracing::info!(endpoint = %endpoint.url, "exporting {what} over OTLP"))
            .inspect_err(|e| tracing::error!("OTLP {what} exporter: {e}"))
            .ok()
    };
    let spans = options
        .otlp
        .traces
        .as_ref()
        .and_then(|endpoint| sender(endpoint, "gateway spans"))
        .map(|sender| spans::Spans::start(sender, resource.clone(), stop.clone(), tasks));
    if let Some(sender) = options.otlp.logs.as_ref().and_then(|endpoint| sender(endpoint, "decision records")) {
        let agent = options.agent_id.clone();
        let direct = decisions::direct::start(sender, resource.clone(), agent, outbox.boot(), stop.clone(), tasks);
        outbox.export_directly(direct);
    }
    Exports { spans, counts, resource }
}

/// Exports what `/metrics` shows over OTLP too, when the options name a metrics endpoint.
fn start_metrics_export(
    options: &Options,
    exports: &Exports,
    shared: &status::Shared,
    stop: &Shutdown,
    tasks: &mut Tasks,
) {
    let Some(endpoint) = &options.otlp.metrics else { return };
    let sender = match warden_otlp::Sender::new(endpoint, exports.counts.clone()) {
        Ok(sender) => sender,
        Err(e) => return tracing::error!("OTLP metrics exporter: {e}"),
    };
    tracing::info!(endpoint = %endpoint.url, interval = ?options.otlp.metric_interval, "exporting metrics over OTLP");
    let (shared, mut stop) = (shared.clone(), stop.clone());
    let export = warden_otlp::metrics::export_periodically(
        sender,
        exports.resource.clone(),
        "warden.agent",
        options.otlp.metric_interval,
        std::time::SystemTime::now(),
        move || std::future::ready(status::families(&shared)),
        async move { stop.requested().await },
    );
    tasks.spawn("metrics export", export);
}

async fn bind(addr: SocketAddr, what: &str) -> Result<tokio::net::TcpListener, RunError> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| RunError::Io(format!("binding {what} {addr}: {e}")))?;
    tracing::info!(%addr, "{what} listening");
    Ok(listener)
}

/// The stored identity, or a new one from the join token. A refused join token is final (the
/// operator must create another); an unreachable control plane is retried.
async fn obtain_identity(options: &Options, files: &Files) -> Result<Identity, RunError> {
    if let Some(id) = files.load()? {
        // An agent the platform vouches for joins again once its certificate expired (it could
        // not renew in time); one with a join token needs a new token from an operator.
        let attested = matches!(options.join, Some(identity::Join::Attestation { .. }));
        if !(attested && id.not_after <= identity::now_unix()) {
            return Ok(id);
        }
        tracing::warn!("the stored certificate has expired: joining again with the platform's token");
    }
    let join = options.join.as_ref().ok_or(IdentityError::NotJoined)?;
    let mut attempt = 0;
    loop {
        for address in &options.control_planes {
            match identity::join(files, address, join, &options.agent_id, &options.labels).await {
                Ok(id) => return Ok(id),
                Err(e @ (IdentityError::Refused(_) | IdentityError::BadToken(_))) => return Err(e.into()),
                // Busy, unreachable, not authenticated: tried again after a while.
                Err(e) => tracing::warn!(control_plane = %address, "join: {e}"),
            }
        }
        tokio::time::sleep(options.backoff.delay(attempt)).await;
        attempt += 1;
    }
}

/// Renews the certificate two thirds into its life, retrying with backoff until it expires.
async fn renew_forever(
    options: Options,
    identity_tx: watch::Sender<Identity>,
    not_after_tx: watch::Sender<i64>,
    mut stop: Shutdown,
) {
    let files = Files::new(&options.data_dir);
    let mut attempt = 0;
    let mut next_address = 0usize;
    loop {
        let current = identity_tx.borrow().clone();
        let wait_secs = (current.renew_at() - identity::now_unix()).max(0) as u64;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(wait_secs)) => {}
            () = stop.requested() => return,
        }
        let address = &options.control_planes[next_address % options.control_planes.len()];
        next_address += 1;
        // Past its certificate's end, an agent its platform vouches for joins again with the
        // platform's current token (the kubelet's, rotated); one with a join token cannot.
        // Before, it renews with its certificate and the platform's current token together.
        let attested = options.join.as_ref().filter(|j| matches!(j, identity::Join::Attestation { .. }));
        let token_file = match attested {
            Some(identity::Join::Attestation { token_file, .. }) => Some(token_file.as_path()),
            _ => None,
        };
        let expired = identity::now_unix() >= current.not_after;
        let renewed = tokio::select! {
            renewed = async {
                match attested {
                    Some(join) if expired => {
                        identity::join(&files, address, join, &options.agent_id, &options.labels).await
                    }
                    _ => identity::renew(&files, address, &options.agent_id, &current, token_file).await,
                }
            } => renewed,
            () = stop.requested() => return,
        };
        match renewed {
            Ok(id) => {
                attempt = 0;
                not_after_tx.send_replace(id.not_after);
                identity_tx.send_replace(id);
            }
            Err(e) => {
                if expired && attested.is_some() {
                    tracing::error!("certificate expired; joining again with the platform's token failed: {e}");
                } else if expired {
                    tracing::error!(
                        "certificate expired and could not be renewed ({e}); the agent must join again with a new join token"
                    );
                } else {
                    tracing::warn!(control_plane = %address, "certificate renewal failed: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(options.backoff.delay(attempt).max(Duration::from_secs(1))) => {}
                    () = stop.requested() => return,
                }
                attempt += 1;
            }
        }
    }
}

/// The session-sealing key in `path`, made (random, owner-only) when the file does not exist.
/// A file of another size is an error, never silently replaced: that would log out every
/// session the agents sharing it vouch for.
fn load_or_create_key(path: &std::path::Path) -> std::io::Result<[u8; gateway::SESSION_KEY_BYTES]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(bytes) => bytes.try_into().map_err(|b: Vec<u8>| {
            std::io::Error::other(format!("holds {} bytes; a session key is {}", b.len(), gateway::SESSION_KEY_BYTES))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; gateway::SESSION_KEY_BYTES] = rand::random();
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            file.write_all(&key)?;
            file.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}
