//! The MCP gateway: one listener per `McpServer` this agent fronts (its `spec.listen`), each
//! checking every request against the configuration in force and forwarding what is allowed
//! to the server's upstream without the caller's token.
//!
//! Data path (per request, see `handler`): route → Origin → bearer token → verify (signature,
//! claims, revocation, binding) → required scopes → JSON-RPC body within bounds → routing
//! headers → Cedar per message → forward → filter list results → stream the answer back.
//! Listeners follow the configuration: a server added, moved or removed gets its listener
//! started, moved or stopped without touching the others.
//!
//! Threading: like nginx's workers and Envoy's worker threads, the gateway runs one
//! single-threaded runtime per worker, each with its own `SO_REUSEPORT` listener per server and
//! its own upstream connection pool, so a request is read, decided, forwarded and answered on
//! one thread. (On a shared work-stealing runtime, waking the upstream connection's task on
//! another thread cost more than the decision itself.) Workers share only the configuration
//! (an `ArcSwap`) and the session bindings.

mod filter;
mod handler;
mod param_headers;
pub(crate) mod proxy;
mod record;
mod refusals;
mod reply;
mod sessions;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use warden_tasks::Shutdown;

use arc_swap::ArcSwapOption;

use warden_core::pinning::ServerPins;
use warden_core::rate_limit::{ConcurrencyLimit, InFlight, Limiter, RateLimit};

use crate::applied::{Applied, Current};
use crate::sync::{EndedTask, Requests};

pub use handler::Limits;
pub(crate) use handler::{Admitted, Caller, admit, check_body, in_audit};
pub use reply::Body;
pub use reply::Route;
pub use sessions::KEY_BYTES as SESSION_KEY_BYTES;
pub use tls::GatewayTls;

/// What every worker shares.
#[derive(Clone)]
pub struct Shared {
    /// The configuration in force.
    pub current: Current,
    /// Which workload opened which MCP session.
    sessions: Arc<sessions::Sessions>,
    /// Seals the session ids callers see to the workload that opened them.
    seal: Arc<sessions::Seal>,
    /// Refusals before any token was accepted, tallied into one record per second and source.
    refusals: Arc<refusals::Refusals>,
    /// Request bounds.
    limits: Limits,
    /// Asks the control plane to refetch an issuer's keys (a token named a `kid` we lack) and
    /// to revoke the task tokens whose sessions ended.
    requests: Requests,
    /// Task tokens whose sessions ended here, by `jti` hash, with their `exp`: refused by this
    /// agent at once, before the control plane's revocation comes back.
    ended_tasks: Arc<std::sync::Mutex<warden_core::bounded::BoundedMap<String, i64>>>,
    /// The gateway's TLS identity, for `https` servers.
    tls: Option<GatewayTls>,
    /// This agent's labels: it serves the servers whose `agents` selector matches them.
    labels: Arc<BTreeMap<String, String>>,
    /// Where decision records go.
    outbox: Arc<crate::decisions::Outbox>,
    /// Where spans go, when tracing is on.
    spans: Option<Arc<crate::spans::Spans>>,
    /// DPoP proofs seen (by key and `jti`), against replay, per server: one server's callers
    /// cannot fill another's.
    dpop_proofs_seen: Arc<std::sync::Mutex<HashMap<Arc<str>, warden_core::dpop::ReplayCache>>>,
    /// Connections open per server's listener, across workers.
    connections: Arc<std::sync::Mutex<HashMap<Arc<str>, Arc<tokio::sync::Semaphore>>>>,
    /// The `Mcp-Param-*` headers the tools of each server declare, as last listed.
    declarations: Arc<param_headers::Declarations>,
    /// The routes of the configuration in force (see [`Shared::route`]).
    routes: Arc<ArcSwapOption<RouteCache>>,
    /// The buckets of every server's rate limits, by server and limit: a new configuration
    /// version keeps the buckets of the limits it leaves as they were.
    limiters: Arc<std::sync::Mutex<Limiters>>,
}

/// The buckets of each server's rate limits and the counts of its concurrency limits, by
/// server name and limit.
#[derive(Default)]
struct Limiters {
    rate: HashMap<(String, RateLimit), Arc<Limiter>>,
    concurrency: HashMap<(String, ConcurrencyLimit), Arc<InFlight>>,
}

/// Buckets kept per rate limit at most: about 32 MB of them (see `warden_core::rate_limit`).
const RATE_LIMIT_KEYS: usize = 1_000_000;

/// The routes of one compiled configuration: they depend on its servers only, so a version
/// that changes revocations alone keeps them.
struct RouteCache {
    config: Arc<warden_core::Config>,
    /// The version `config` was compiled for.
    version: u64,
    routes: HashMap<String, Arc<Route>>,
}

impl Shared {
    /// State for the gateway's workers.
    #[allow(clippy::too_many_arguments, reason = "each is a separate part the agent owns; built once at start")]
    pub fn new(
        current: Current,
        limits: Limits,
        requests: Requests,
        tls: Option<GatewayTls>,
        labels: BTreeMap<String, String>,
        outbox: Arc<crate::decisions::Outbox>,
        spans: Option<Arc<crate::spans::Spans>>,
        session_key: &[u8; sessions::KEY_BYTES],
    ) -> Shared {
        Shared {
            current,
            sessions: Arc::default(),
            seal: Arc::new(sessions::Seal::new(session_key)),
            refusals: Arc::default(),
            limits,
            requests,
            ended_tasks: Arc::new(std::sync::Mutex::new(warden_core::bounded::BoundedMap::new(ENDED_TASKS_REMEMBERED))),
            tls,
            labels: Arc::new(labels),
            outbox,
            spans,
            dpop_proofs_seen: Arc::default(),
            connections: Arc::default(),
            declarations: Arc::default(),
            routes: Arc::default(),
            limiters: Arc::default(),
        }
    }

    /// `server`'s routes in `applied` (`None`: its resource is not a URL), derived once per
    /// compiled configuration.
    fn route(&self, applied: &Applied, server: &str) -> Option<Arc<Route>> {
        if let Some(cached) = self.routes.load().as_ref()
            && Arc::ptr_eq(&cached.config, &applied.config)
        {
            return cached.routes.get(server).cloned();
        }
        let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        // A request still on an older version than the cache (it read the configuration just
        // before a new one came) gets its routes without replacing the newer ones, whose
        // buckets it would otherwise reset.
        let newer = self.routes.load().as_ref().is_some_and(|cached| cached.version > applied.version);
        let mut kept = Limiters::default();
        let mut limits_of = |name: &String, spec: &warden_core::server::McpServerSpec| {
            let rate = spec.rate_limits.iter().map(|limit| {
                let key = (name.clone(), limit.clone());
                let existing = if newer { limiters.rate.get(&key).cloned() } else { limiters.rate.remove(&key) };
                let limiter = existing.unwrap_or_else(|| Arc::new(Limiter::new(limit, RATE_LIMIT_KEYS)));
                kept.rate.insert(key, limiter.clone());
                reply::ServerLimit { limit: limit.clone(), limiter }
            });
            let rate = rate.collect();
            let concurrency = spec.concurrency_limits.iter().map(|limit| {
                let key = (name.clone(), limit.clone());
                let existing =
                    if newer { limiters.concurrency.get(&key).cloned() } else { limiters.concurrency.remove(&key) };
                let in_flight = existing.unwrap_or_else(|| Arc::new(InFlight::new(limit)));
                kept.concurrency.insert(key, in_flight.clone());
                reply::ServerConcurrency { limit: limit.clone(), in_flight }
            });
            (rate, concurrency.collect())
        };
        let routes = applied.config.servers.iter().filter_map(|(n, s)| {
            let (rate, concurrency) = limits_of(n, s);
            let pins = ServerPins::new(n, s.tool_pinning.as_ref(), &applied.config.tool_approvals);
            let pins = pins.records().then(|| {
                Arc::new(filter::Pinned {
                    server: Arc::from(n.as_str()),
                    pins,
                    observed: self.requests.definitions.clone(),
                })
            });
            Some((n.clone(), Arc::new(Route::new(s)?.with_limits(rate, concurrency).with_pins(pins))))
        });
        let fresh = RouteCache { config: applied.config.clone(), version: applied.version, routes: routes.collect() };
        let route = fresh.routes.get(server).cloned();
        if !newer {
            // The limits no server has any more are forgotten with their buckets, and the
            // definitions of servers no longer pinned with them.
            *limiters = kept;
            self.requests.definitions.retain(|name| fresh.routes.get(name).is_some_and(|r| r.pins.is_some()));
            self.declarations.retain(|name| fresh.routes.contains_key(name));
            self.routes.store(Some(Arc::new(fresh)));
        }
        route
    }

    /// Turns tallied refusals into decision records every second until `stop`, then once more
    /// (await it before the outbox is persisted).
    pub fn record_refusals(&self, stop: Shutdown) -> impl Future<Output = ()> + use<> {
        self.refusals.clone().run(self.outbox.clone(), stop)
    }

    /// Records a DPoP proof made for `server` (see
    /// [`warden_core::dpop::ReplayCache::record`]); `Err` for a replay, when its key used its
    /// quota, or when there is no room to remember it.
    fn record_proof(
        &self,
        server: &Arc<str>,
        proven: &warden_core::dpop::Proven,
        now: i64,
        fresh_for: i64,
    ) -> Result<(), warden_core::dpop::ProofError> {
        let mut caches = self.dpop_proofs_seen.lock().unwrap_or_else(|e| e.into_inner());
        if !caches.contains_key(server)
            && let Some(applied) = self.current.get()
        {
            // The caches of servers no longer configured go when another one is made.
            caches.retain(|name, _| applied.config.servers.contains_key(&**name));
        }
        let (capacity, per_key) = (self.limits.dpop_proofs_per_server, self.limits.dpop_proofs_per_key);
        caches
            .entry(server.clone())
            .or_insert_with(|| warden_core::dpop::ReplayCache::with_key_quota(capacity, per_key))
            .record(proven, now, fresh_for)
    }

    /// The connection slots of `server`'s listener (shared by every worker's listener).
    fn connection_slots(&self, server: &Arc<str>) -> Arc<tokio::sync::Semaphore> {
        let mut slots = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry(server.clone())
            .or_insert_with(|| {
                let cap = self.limits.max_connections_per_listener.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
                Arc::new(tokio::sync::Semaphore::new(cap))
            })
            .clone()
    }

    /// A task token's session ended: refuse the token here from now on and have the control
    /// plane revoke it everywhere.
    fn end_task(&self, task: EndedTask) {
        let hash = warden_core::token::jti_hash(&task.issuer, &task.jti);
        self.ended_tasks.lock().unwrap_or_else(|e| e.into_inner()).insert(hash, task.expires_unix);
        if self.requests.ended_tasks.try_send(task).is_err() {
            tracing::warn!("too many ended tasks queued for the control plane; this one is refused here only");
        }
    }

    /// Whether `verified` is a task token whose session ended on this agent.
    fn task_ended(&self, verified: &warden_core::token::Verified, now: i64) -> bool {
        let (Some(_), Some(hash)) = (&verified.task, &verified.jti_hash) else { return false };
        let ended = self.ended_tasks.lock().unwrap_or_else(|e| e.into_inner());
        ended.get(hash).is_some_and(|expires| *expires + 300 >= now)
    }

    /// Whether this agent serves `spec`.
    fn serves(&self, spec: &warden_core::server::McpServerSpec) -> bool {
        spec.agents.matches(&self.labels)
    }
}

/// DPoP proofs remembered against replay per server, each for the proof freshness window
/// (65 s): a sustained ~2,000 DPoP requests/s per server, ~9 MiB when full. Beyond it proofs
/// are refused.
pub const DPOP_PROOFS_REMEMBERED: usize = 131_072;

/// Of those, the most one key may hold: a sustained ~125 DPoP requests/s per key and server.
pub const DPOP_PROOFS_PER_KEY: usize = 8_192;

/// Task tokens whose sessions ended remembered by the agent itself; past it the oldest is
/// forgotten (the control plane's revocation covers it).
pub const ENDED_TASKS_REMEMBERED: usize = 65_536;

/// How a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Plain,
    Tls,
    MutualTls,
}

impl Transport {
    fn of(spec: &warden_core::server::McpServerSpec) -> Transport {
        match (spec.resource.starts_with("https:"), spec.binding) {
            (_, warden_core::server::Binding::Mtls) => Transport::MutualTls,
            (true, _) => Transport::Tls,
            (false, _) => Transport::Plain,
        }
    }
}

/// One worker's state: the shared part and its own upstream pool.
struct Worker {
    shared: Shared,
    /// Connections to upstreams, pooled per worker (its connections' tasks run on its thread).
    client: proxy::Client,
    /// Client connections open on this worker, for draining at shutdown.
    open: Arc<std::sync::atomic::AtomicUsize>,
}

/// How long a stopping worker lets open connections finish their requests (SSE streams that
/// never end are cut after this).
pub const DRAIN: Duration = Duration::from_secs(5);

/// Counts an open connection while it lives.
struct Open(Arc<std::sync::atomic::AtomicUsize>);

impl Open {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Open {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Starts `workers` gateway threads; they stop when `stop` turns true.
pub fn start(shared: Shared, workers: usize, stop: Shutdown) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..workers.max(1))
        .map(|i| {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new().name(format!("gateway-{i}")).spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("gateway worker {i} has no runtime: {e}");
                        return;
                    }
                };
                let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let worker = Arc::new(Worker { shared, client: proxy::client(), open: open.clone() });
                runtime.block_on(async move {
                    run(worker, stop).await;
                    // Listeners are closed; connections were told to finish what they serve.
                    let deadline = tokio::time::Instant::now() + DRAIN;
                    while open.load(std::sync::atomic::Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
            })
        })
        .collect()
}

/// A listener other workers can share: the kernel spreads connections over them.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

struct Listening {
    addr: SocketAddr,
    transport: Transport,
    /// Stops this listener (also when dropped).
    stop: warden_tasks::Trigger,
}

/// Keeps one listener per served server until `stop` turns true.
async fn run(worker: Arc<Worker>, mut stop: Shutdown) {
    let mut version = worker.shared.current.watch_version();
    let mut listening: HashMap<String, Listening> = HashMap::new();
    loop {
        let desired: BTreeMap<String, (SocketAddr, Transport)> = match worker.shared.current.get() {
            Some(applied) => applied
                .config
                .servers
                .iter()
                .filter(|(_, s)| worker.shared.serves(s))
                .filter_map(|(name, s)| Some((name.clone(), (s.listen.as_deref()?.parse().ok()?, Transport::of(s)))))
                .collect(),
            None => BTreeMap::new(),
        };
        listening.retain(|name, l| {
            let keep = desired.get(name) == Some(&(l.addr, l.transport));
            if !keep {
                tracing::info!(server = %name, addr = %l.addr, "gateway listener stopped");
                l.stop.fire();
            }
            keep
        });
        let mut failed = false;
        for (name, (addr, transport)) in desired {
            if listening.contains_key(&name) {
                continue;
            }
            let tls = match (transport, &worker.shared.tls) {
                (Transport::Plain, _) => None,
                (Transport::Tls, Some(t)) => Some(t.server_only.clone()),
                (Transport::MutualTls, Some(t)) => Some(t.mutual.clone()),
                (_, None) => {
                    // Not retried: only a restart with --gateway-tls-cert/--gateway-tls-key helps.
                    tracing::error!(server = %name, "the server needs TLS but the agent has no gateway certificate");
                    continue;
                }
            };
            match bind(addr) {
                Ok(listener) => {
                    tracing::debug!(server = %name, %addr, "gateway worker listening");
                    let (stop_tx, stop_rx) = warden_tasks::channel();
                    tokio::spawn(serve(worker.clone(), Arc::from(name.as_str()), listener, tls, stop_rx));
                    listening.insert(name, Listening { addr, transport, stop: stop_tx });
                }
                Err(e) => {
                    // Retried below: the port may be freed by a listener this update moved.
                    tracing::error!(server = %name, %addr, "gateway cannot listen: {e}");
                    failed = true;
                }
            }
        }
        let retry = async {
            if failed {
                tokio::time::sleep(Duration::from_secs(2)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            changed = version.changed() => if changed.is_err() { break },
            _ = stop.requested() => break,
            _ = retry => {}
        }
    }
    for l in listening.values() {
        l.stop.fire();
    }
}

async fn serve(
    worker: Arc<Worker>,
    server: Arc<str>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: Shutdown,
) {
    let slots = worker.shared.connection_slots(&server);
    let mut last_warned: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(server = %server, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.requested() => return,
        };
        // Past the cap a connection is closed at once: left in the backlog it would only wait,
        // and served it would take memory the open ones need.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                last_warned = Some(std::time::Instant::now());
                tracing::warn!(server = %server, "connection cap reached; new connections are closed");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (worker, server, stop, tls) = (worker.clone(), server.clone(), stop.clone(), tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Some(config) = tls else {
                return connection(worker, server, peer, None, TokioIo::new(stream), stop).await;
            };
            let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
            let stream = match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(server = %server, %peer, "TLS handshake: {e}"),
                Err(_) => return tracing::debug!(server = %server, %peer, "TLS handshake timed out"),
            };
            let certificate: Option<Arc<[u8]>> =
                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::from(c.as_ref()));
            connection(worker, server, peer, certificate, TokioIo::new(stream), stop).await;
        });
    }
}

/// Serves HTTP/1.1 on one accepted connection (after TLS, if any) until it closes or the
/// listener stops.
async fn connection<IO>(
    worker: Arc<Worker>,
    server: Arc<str>,
    peer: SocketAddr,
    certificate: Option<Arc<[u8]>>,
    io: IO,
    mut stop: Shutdown,
) where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let _open = Open::new(&worker.open);
    let header_read_timeout = worker.shared.limits.header_read_timeout;
    let service = hyper::service::service_fn(move |req| {
        let (worker, server, certificate) = (worker.clone(), server.clone(), certificate.clone());
        async move {
            let arrived = std::time::Instant::now();
            let Some(spans) = worker.shared.spans.clone() else {
                let caller = handler::Caller::new(peer, certificate.as_deref(), arrived, handler::VIA_GATEWAY);
                return Ok::<_, std::convert::Infallible>(handler::handle(&worker, &server, caller, req).await);
            };
            let (context, started) = (crate::spans::TraceContext::from_headers(req.headers()), crate::spans::started());
            let facts = Arc::new(std::sync::Mutex::new(crate::spans::Facts {
                server: server.to_string(),
                ..Default::default()
            }));
            let http_method = req.method().clone();
            let mut caller = handler::Caller::new(peer, certificate.as_deref(), arrived, handler::VIA_GATEWAY);
            caller.trace = Some((context, facts.clone()));
            let response = handler::handle(&worker, &server, caller, req).await;
            // The trace a message named in `_meta`, if the headers named none.
            let context = facts.lock().unwrap_or_else(|p| p.into_inner()).adopted.unwrap_or(context);
            spans.finish(&context, started, &facts, http_method.as_str(), response.status().as_u16());
            Ok(response)
        }
    });
    let conn = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_buf_size(64 * 1024)
        .header_read_timeout(header_read_timeout)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.requested() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
