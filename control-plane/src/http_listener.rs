//! Serving an axum router over HTTP/1.1, with TLS or without, with every bound a port open to a
//! network needs (axum's own `serve` sets none): connections at once, TLS handshakes in progress
//! at once, the time a client may take over a handshake, over a request's headers, and over a
//! whole request, and over a write (a client that stops reading). The caller's address and
//! proven certificate reach handlers as `ConnectInfo<Peer>`. Used by the token service and the
//! console.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use warden_tasks::Shutdown;

/// The caller, as handlers extract it: its address, and the certificate whose key it proved
/// in the handshake, if it presented one.
#[derive(Clone, Debug)]
pub struct Peer {
    pub address: SocketAddr,
    pub certificate: Option<Arc<[u8]>>,
}

/// What a listener holds a client to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once (TLS handshakes included): past it, a new one is closed at once.
    pub connections: usize,
    /// TLS handshakes in progress at once: past it, a new connection is closed at once (a flood
    /// of silent clients costs a bounded number of tasks and descriptors).
    pub handshakes: usize,
    /// How long a client may take over its TLS handshake.
    pub handshake: Duration,
    /// How long a client may take to send a request's headers, the first or the next one on a
    /// kept-alive connection: an idle or dripping connection is closed after it.
    pub headers: Duration,
    /// How long one request may take, its body read included: past it, 408. Also how long a
    /// write may wait for the client to read: past it, the connection is closed.
    pub request: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: 1024,
            handshakes: 256,
            handshake: Duration::from_secs(10),
            headers: Duration::from_secs(10),
            request: Duration::from_secs(30),
        }
    }
}

/// Largest request head (and buffered body chunk) hyper holds for one connection.
const MAX_BUF_BYTES: usize = 64 * 1024;

/// Serves `router` on `listener` (over TLS with `tls`) until `stop`; then connections finish
/// the request they are in and close.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    mut stop: Shutdown,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let connections = Arc::new(Semaphore::new(limits.connections));
    let handshakes = Arc::new(Semaphore::new(limits.handshakes));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.requested() => return,
        };
        let (tcp, address) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Dropped (closed at once) past either bound.
        let Ok(open) = connections.clone().try_acquire_owned() else { continue };
        let _ = tcp.set_nodelay(true);
        let (router, stop) = (router.clone(), stop.clone());
        let Some(acceptor) = acceptor.clone() else {
            tokio::spawn(async move {
                let _open = open;
                let peer = Peer { address, certificate: None };
                connection(router, peer, TokioIo::new(WriteStall::new(tcp, limits.request)), limits, stop).await;
            });
            continue;
        };
        let Ok(handshaking) = handshakes.clone().try_acquire_owned() else { continue };
        tokio::spawn(async move {
            let _open = open;
            let stream = match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(%address, "TLS handshake: {e}"),
                Err(_) => return tracing::debug!(%address, "TLS handshake timed out"),
            };
            drop(handshaking);
            let certificate = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().into());
            let io = TokioIo::new(WriteStall::new(stream, limits.request));
            connection(router, Peer { address, certificate }, io, limits, stop).await;
        });
    }
}

/// A connection whose writes must make progress: one that waits longer than `limit` for the
/// client to read fails, and hyper closes the connection. hyper has no write timeout, and its
/// header timeout does not run while an answer waits to be written, so a client that sends
/// requests and never reads the answers would otherwise hold its connection for good.
struct WriteStall<T> {
    inner: T,
    limit: Duration,
    /// Since the write that is waiting began to wait.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteStall<T> {
    fn new(inner: T, limit: Duration) -> WriteStall<T> {
        WriteStall { inner, limit, stalled: None }
    }

    /// After a write: its result, the wait forgotten when it went through; a failure once it
    /// has waited `limit`.
    fn waited<R>(&mut self, cx: &mut Context<'_>, polled: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.waited(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.waited(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.waited(cx, polled)
    }

    // A close (TLS's close_notify included) waits for the client to read like any write.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.waited(cx, polled)
    }
}

/// Serves HTTP/1.1 on one connection until it closes, a bound cuts it, or `stop`.
async fn connection<IO>(router: Router, peer: Peer, io: IO, limits: Limits, mut stop: Shutdown)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer.clone()));
        let answer = router.clone().oneshot(request.map(axum::body::Body::new));
        async move {
            match tokio::time::timeout(limits.request, answer).await {
                Ok(Ok(response)) => Ok::<_, std::convert::Infallible>(response),
                Ok(Err(never)) => match never {},
                Err(_) => Ok((http::StatusCode::REQUEST_TIMEOUT, "request took too long\n").into_response()),
            }
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .max_buf_size(MAX_BUF_BYTES)
        .header_read_timeout(limits.headers)
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// A listener on loopback serving a router that names the caller's address and reads the
    /// body whole, with `limits`; its address, and the trigger that stops it.
    async fn start(limits: Limits, tls: Option<Arc<rustls::ServerConfig>>) -> (SocketAddr, warden_tasks::Trigger) {
        let router = Router::new()
            .route(
                "/",
                axum::routing::post(|ConnectInfo(peer): ConnectInfo<Peer>, body: String| async move {
                    format!("{} sent {} bytes", peer.address.ip(), body.len())
                }),
            )
            .route("/big", axum::routing::get(|| async { "x".repeat(256 * 1024) }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (trigger, stop) = warden_tasks::channel();
        tokio::spawn(serve(router, listener, tls, limits, stop));
        (address, trigger)
    }

    fn quick() -> Limits {
        Limits {
            connections: 4,
            handshakes: 2,
            handshake: Duration::from_millis(300),
            headers: Duration::from_millis(300),
            request: Duration::from_millis(600),
        }
    }

    /// Reads until the server closes the connection (bounded: 5 s); what it sent.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server kept the connection open");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_request_is_served_with_the_callers_address() {
        let (address, _stop) = start(quick(), None).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        client
            .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
            .await
            .unwrap();
        let answer = read_to_close(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("127.0.0.1 sent 5 bytes"), "{answer}");
    }

    #[tokio::test]
    async fn a_client_that_sends_no_headers_or_drips_them_is_cut_off() {
        let (address, _stop) = start(quick(), None).await;
        let started = Instant::now();
        let mut silent = TcpStream::connect(address).await.unwrap();
        let mut dripping = TcpStream::connect(address).await.unwrap();
        dripping.write_all(b"POST / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        assert_eq!(read_to_close(&mut silent).await, "");
        let answer = read_to_close(&mut dripping).await;
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(started.elapsed() >= Duration::from_millis(300), "not before the header timeout");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_that_sends_no_next_request_is_closed() {
        let (address, _stop) = start(quick(), None).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        client.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        let started = Instant::now();
        let answer = read_to_close(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(started.elapsed() >= Duration::from_millis(300), "kept alive until the header timeout");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_its_answers_is_cut_off() {
        let (address, _stop) = start(quick(), None).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        // 200 answers of 256 KiB asked for at once, far more than the sockets' buffers hold.
        let requests = "GET /big HTTP/1.1\r\nhost: x\r\n\r\n".repeat(200);
        client.write_all(requests.as_bytes()).await.unwrap();
        // Not read for longer than a write may wait (the request limit, 600 ms here).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server kept the connection open");
        let answers = String::from_utf8_lossy(&out).matches("HTTP/1.1 200").count();
        assert!(answers < 200, "every answer was written: the connection was not cut off");
    }

    #[tokio::test]
    async fn a_body_slower_than_the_request_limit_gets_408() {
        let (address, _stop) = start(quick(), None).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        client.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nsome").await.unwrap();
        let answer = read_to_close(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }

    #[tokio::test]
    async fn connections_past_the_bound_are_closed_at_once_and_served_again_when_one_closes() {
        let (address, _stop) = start(Limits { headers: Duration::from_secs(30), ..quick() }, None).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(TcpStream::connect(address).await.unwrap());
        }
        // Give the accept loop time to take the four.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut refused = TcpStream::connect(address).await.unwrap();
        let started = Instant::now();
        assert_eq!(read_to_close(&mut refused).await, "");
        assert!(started.elapsed() < Duration::from_secs(2), "closed at once, not after a timeout");
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        client
            .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(read_to_close(&mut client).await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn a_tls_client_that_never_finishes_its_handshake_is_cut_off_and_others_past_the_bound_at_once() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let limits = Limits { handshake: Duration::from_millis(1500), ..quick() };
        let (address, _stop) = start(limits, Some(Arc::new(tls))).await;
        // Two silent clients hold both handshake slots; a third is closed at once.
        let started = Instant::now();
        let (mut first, mut second) =
            (TcpStream::connect(address).await.unwrap(), TcpStream::connect(address).await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = TcpStream::connect(address).await.unwrap();
        assert_eq!(read_to_close(&mut third).await, "");
        assert!(started.elapsed() < Duration::from_millis(1500), "the third was closed before any handshake timed out");
        assert_eq!(read_to_close(&mut first).await, "");
        assert_eq!(read_to_close(&mut second).await, "");
        assert!(started.elapsed() >= Duration::from_millis(1500), "the silent ones after the handshake timeout");
    }
}
