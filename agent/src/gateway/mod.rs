//! The MCP gateway: one listener per `McpServer` this agent fronts (its `spec.listen`), each
//! checking every request against the configuration in force and forwarding what is allowed
//! to the server's upstream without the caller's token.
//!
//! Data path (per request, see `handler`): route → Origin → bearer token → verify (signature,
//! claims, revocation, binding) → required scopes → JSON-RPC body within bounds → routing
//! headers → Cedar per message → forward → filter list results → stream the answer back.
//! Listeners follow the configuration: a server added, moved or removed gets its listener
//! started, moved or stopped without touching the others.

mod filter;
mod handler;
mod proxy;
mod reply;
mod sessions;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};

use crate::applied::Current;
use crate::sync::KeyRefresh;

pub use handler::Limits;

/// Everything the request handlers share.
pub struct Shared {
    /// The configuration in force.
    pub current: Current,
    /// Connections to upstreams, pooled.
    client: proxy::Client,
    /// Which workload opened which MCP session.
    sessions: sessions::Sessions,
    /// Request bounds.
    limits: Limits,
    /// Asks the control plane to refetch an issuer's keys (a token named a `kid` we lack).
    key_refresh: mpsc::Sender<KeyRefresh>,
}

impl Shared {
    /// State for the gateway's handlers.
    pub fn new(current: Current, limits: Limits, key_refresh: mpsc::Sender<KeyRefresh>) -> Shared {
        Shared { current, client: proxy::client(), sessions: sessions::Sessions::default(), limits, key_refresh }
    }
}

struct Listening {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

/// Keeps one listener per served server until `stop` turns true.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut version = shared.current.watch_version();
    let mut listening: HashMap<String, Listening> = HashMap::new();
    loop {
        let desired: BTreeMap<String, SocketAddr> = match shared.current.get() {
            Some(applied) => applied
                .config
                .servers
                .iter()
                .filter_map(|(name, s)| Some((name.clone(), s.listen.as_deref()?.parse().ok()?)))
                .collect(),
            None => BTreeMap::new(),
        };
        listening.retain(|name, l| {
            let keep = desired.get(name) == Some(&l.addr);
            if !keep {
                tracing::info!(server = %name, addr = %l.addr, "gateway listener stopped");
                l.stop.send_replace(true);
            }
            keep
        });
        let mut failed = false;
        for (name, addr) in desired {
            if listening.contains_key(&name) {
                continue;
            }
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    tracing::info!(server = %name, %addr, "gateway listening");
                    let (stop_tx, stop_rx) = watch::channel(false);
                    tokio::spawn(serve(shared.clone(), Arc::from(name.as_str()), listener, stop_rx));
                    listening.insert(name, Listening { addr, stop: stop_tx });
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
            _ = stop.wait_for(|s| *s) => break,
            _ = retry => {}
        }
    }
    for l in listening.values() {
        l.stop.send_replace(true);
    }
}

async fn serve(
    shared: Arc<Shared>,
    server: Arc<str>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
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
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let _ = stream.set_nodelay(true);
        let (shared, server, mut stop) = (shared.clone(), server.clone(), stop.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (shared, server) = (shared.clone(), server.clone());
                async move { Ok::<_, std::convert::Infallible>(handler::handle(&shared, &server, peer, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .max_buf_size(64 * 1024)
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
