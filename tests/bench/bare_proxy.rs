//! A bare reverse proxy built the way the agent's gateway is, for `gateway-bench`: one
//! current-thread runtime per worker thread, `SO_REUSEPORT` listeners, hyper's HTTP/1 server,
//! hyper-util's pooled client, the request body read whole before it is forwarded and the
//! answer streamed back — and nothing else: no token, no JSON, no policy, no records. Its
//! throughput is what this HTTP stack reaches on this machine before Warden does any work,
//! measured next to nginx in the same run.
//!
//! Usage: `bare-proxy LISTEN UPSTREAM_URL [WORKERS]` (workers: one per CPU by default). With
//! `BARE_PROXY_POOL=conn` it forwards over its own per-worker pool of hyper's connection-level
//! senders instead of hyper-util's pooled client (an experiment: what that client costs).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

type Upstream = Client<HttpConnector, Full<Bytes>>;
type Answer = Response<Either<Incoming, Full<Bytes>>>;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare-proxy LISTEN UPSTREAM_URL [WORKERS]");
        std::process::exit(2)
    };
    let listen: SocketAddr = listen.parse().unwrap_or_else(|e| fail(&format!("LISTEN {listen:?}: {e}")));
    let upstream: Uri = upstream.parse().unwrap_or_else(|e| fail(&format!("UPSTREAM_URL {upstream:?}: {e}")));
    let workers = match args.next() {
        Some(n) => n.parse().unwrap_or_else(|e| fail(&format!("WORKERS {n:?}: {e}"))),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                let runtime = runtime.unwrap_or_else(|e| fail(&format!("runtime: {e}")));
                runtime.block_on(serve(listen, upstream));
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

fn fail(message: &str) -> ! {
    eprintln!("bare-proxy: {message}");
    std::process::exit(2)
}

async fn serve(listen: SocketAddr, upstream: Uri) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| fail(&format!("socket: {e}")));
    let bound = socket
        .set_reuseaddr(true)
        .and_then(|()| socket.set_reuseport(true))
        .and_then(|()| socket.set_nodelay(true))
        .and_then(|()| socket.bind(listen));
    bound.unwrap_or_else(|e| fail(&format!("bind {listen}: {e}")));
    let listener = socket.listen(1024).unwrap_or_else(|e| fail(&format!("listen {listen}: {e}")));
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream =
        Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(connector);
    let pool = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    #[allow(clippy::disallowed_methods, reason = "a benchmark harness's switch, read once at start")]
    let conn_pool = std::env::var("BARE_PROXY_POOL").as_deref() == Ok("conn");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let (client, upstream, pool) = (client.clone(), upstream.clone(), pool.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (client, upstream, pool) = (client.clone(), upstream.clone(), pool.clone());
                async move {
                    if conn_pool {
                        forward_conn(pool, upstream, request).await
                    } else {
                        forward(client, upstream, request).await
                    }
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            let _ = connection.await;
        });
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Experiment: a per-worker pool of HTTP/1 connections instead of hyper-util's client.
async fn forward_conn(
    pool: std::sync::Arc<std::sync::Mutex<Vec<Sender>>>,
    upstream: Uri,
    request: Request<Incoming>,
) -> Result<Answer, Infallible> {
    let Some(out) = outgoing(request, Uri::from_static("/mcp")).await else {
        return Ok(plain(StatusCode::BAD_REQUEST));
    };
    let mut pooled = pool.lock().unwrap().pop();
    let ready = match pooled.as_mut() {
        Some(s) => s.ready().await.is_ok(),
        None => false,
    };
    let mut sender = match pooled {
        Some(s) if ready => s,
        _ => {
            let authority = upstream.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
            let Ok(stream) = tokio::net::TcpStream::connect(authority).await else {
                return Ok(plain(StatusCode::BAD_GATEWAY));
            };
            let _ = stream.set_nodelay(true);
            let Ok((sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
                return Ok(plain(StatusCode::BAD_GATEWAY));
            };
            tokio::spawn(connection);
            sender
        }
    };
    let answer = sender.send_request(out).await;
    pool.lock().unwrap().push(sender);
    Ok(match answer {
        Ok(answer) => answer.map(Either::Left),
        Err(_) => plain(StatusCode::BAD_GATEWAY),
    })
}

async fn forward(client: Upstream, upstream: Uri, request: Request<Incoming>) -> Result<Answer, Infallible> {
    let Some(out) = outgoing(request, upstream).await else {
        return Ok(plain(StatusCode::BAD_REQUEST));
    };
    Ok(match client.request(out).await {
        Ok(answer) => answer.map(Either::Left),
        Err(_) => plain(StatusCode::BAD_GATEWAY),
    })
}

/// The request to send upstream to `uri`: the body read whole (as the gateway reads it, up to
/// 1 MiB), the caller's headers but `Connection` (its `Host` too: HTTP/1.1 needs one).
async fn outgoing(request: Request<Incoming>, uri: Uri) -> Option<Request<Full<Bytes>>> {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, 1024 * 1024).collect().await.ok()?.to_bytes();
    let mut headers = parts.headers;
    headers.remove(header::CONNECTION);
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;
    Some(out)
}

fn plain(status: StatusCode) -> Answer {
    let mut answer = Response::new(Either::Right(Full::new(Bytes::new())));
    *answer.status_mut() = status;
    answer
}
