//! A connection of the agents' port once its TLS handshake is done, with the bounds tonic and
//! hyper do not set on a stream handed to them: hyper's HTTP/2 server waits for the client's
//! preface without a timer, its keepalive pings start only after it, and tonic counts no
//! connections. Client certificates are optional on this port (Join is the one call made
//! before an agent has one), so without these bounds anyone who can reach it could hold
//! connections open for as long as the process lives.
//!
//! - Every connection must send its first bytes (the HTTP/2 preface) within
//!   [`Limits::first_bytes`].
//! - One without a client certificate lives at most [`Limits::certless_life`], at most
//!   [`Limits::certless_at_once`] of them at once, may call only Join
//!   ([`OnlyJoinWithoutCertificate`]), at most [`JOINS_AT_ONCE`] Joins at once, and a Join's
//!   message is read up to [`JOIN_BYTES`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Ready;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use futures_util::future::{BoxFuture, Either};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;

/// The bounds of the agents' port: handshakes, then each connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Handshakes worked on at once (see [`super::HANDSHAKES`]).
    pub handshakes: usize,
    /// How long one handshake may take.
    pub handshake_timeout: Duration,
    /// How long a connection may wait, after its handshake, before sending anything.
    pub first_bytes: Duration,
    /// How long a connection without a client certificate lives.
    pub certless_life: Duration,
    /// Connections without a client certificate open at once; past that a new one is closed.
    pub certless_at_once: usize,
}

impl Limits {
    /// The agents' port's: a join is one call over one connection, made in well under a
    /// second; an agent sends its preface at once.
    pub const AGENTS_PORT: Limits = Limits {
        handshakes: super::HANDSHAKES,
        handshake_timeout: super::HANDSHAKE_TIMEOUT,
        first_bytes: Duration::from_secs(10),
        certless_life: Duration::from_secs(30),
        certless_at_once: 1024,
    };
}

/// The largest Join request read from a caller without a certificate: a CSR and a platform
/// token are a few KiB (a token is at most [`warden_core::token::MAX_TOKEN_BYTES`]).
pub const JOIN_BYTES: usize = 64 * 1024;

/// A connection handed to tonic, with its deadlines.
pub struct Connection {
    tls: TlsStream<TcpStream>,
    /// Until the client's first bytes arrive.
    first_bytes: Option<Pin<Box<Sleep>>>,
    /// For a connection without a client certificate: when it ends, and its place among the
    /// [`Limits::certless_at_once`].
    certless: Option<(Pin<Box<Sleep>>, OwnedSemaphorePermit)>,
}

impl Connection {
    /// `tls`, bounded by `limits`; `certless` holds the place of a connection without a client
    /// certificate (`None` when it presented one).
    pub fn new(tls: TlsStream<TcpStream>, limits: &Limits, certless: Option<OwnedSemaphorePermit>) -> Connection {
        Connection {
            tls,
            first_bytes: Some(Box::pin(tokio::time::sleep(limits.first_bytes))),
            certless: certless.map(|place| (Box::pin(tokio::time::sleep(limits.certless_life)), place)),
        }
    }

    /// The TLS stream.
    pub fn tls(&self) -> &TlsStream<TcpStream> {
        &self.tls
    }

    /// An error once a connection without a certificate has lived its life: hyper then closes
    /// the connection. Polling the timer here also has it wake the connection's task when it
    /// fires.
    fn life(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some((life, _)) = &mut self.certless
            && life.as_mut().poll(cx).is_ready()
        {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "a connection without a client certificate ended"));
        }
        Ok(())
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.life(cx)?;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.tls).poll_read(cx, buf);
        match &read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => this.first_bytes = None,
            // Only while nothing has come: bytes that arrived while the connection waited to be
            // served (a storm on busy cores) are read, however late.
            Poll::Pending => {
                if let Some(wait) = &mut this.first_bytes
                    && wait.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "nothing sent after the TLS handshake",
                    )));
                }
            }
            Poll::Ready(_) => {}
        }
        read
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.life(cx)?;
        Pin::new(&mut this.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.life(cx)?;
        Pin::new(&mut this.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.life(cx)?;
        Pin::new(&mut this.tls).poll_flush(cx)
    }

    // Bounded too: a close_notify written to a peer that reads nothing would wait for good.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.life(cx)?;
        Pin::new(&mut this.tls).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Connection {
    // The TLS stream's own: `Request::peer_certs` reads the client certificate from it.
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

/// The path of the one call a caller without a certificate may make.
fn join_path() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| format!("/{}/Join", proto::v1::agent_service_server::SERVICE_NAME))
}

/// Joins without a certificate in progress at once; past it, `ResourceExhausted` (an agent
/// tries again later). With [`JOIN_BYTES`], what unauthenticated callers can make the control
/// plane hold: 4 MiB.
pub const JOINS_AT_ONCE: usize = 64;

/// A tower layer in front of the agents' port's services: a request on a connection without a
/// client certificate is refused before its body is read unless it is a Join, at most
/// [`JOINS_AT_ONCE`] such Joins are served at once, and a Join's body is read up to
/// [`JOIN_BYTES`]. Every other call checks the caller's certificate itself too; this keeps what
/// an unauthenticated caller can make the control plane read and hold small.
#[derive(Clone, Debug)]
pub struct OnlyJoinWithoutCertificateLayer {
    joins: Arc<Semaphore>,
}

impl OnlyJoinWithoutCertificateLayer {
    /// A layer serving at most `joins_at_once` Joins without a certificate at once.
    pub fn new(joins_at_once: usize) -> OnlyJoinWithoutCertificateLayer {
        OnlyJoinWithoutCertificateLayer { joins: Arc::new(Semaphore::new(joins_at_once)) }
    }
}

impl<S> tower::Layer<S> for OnlyJoinWithoutCertificateLayer {
    type Service = OnlyJoinWithoutCertificate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OnlyJoinWithoutCertificate { inner, joins: self.joins.clone() }
    }
}

/// See [`OnlyJoinWithoutCertificateLayer`].
#[derive(Clone, Debug)]
pub struct OnlyJoinWithoutCertificate<S> {
    inner: S,
    joins: Arc<Semaphore>,
}

type Body = tonic::body::Body;

/// A refusal answered at once, the inner service's answer, or a Join's holding its place.
type Answer<S> = Either<
    Ready<Result<http::Response<Body>, <S as tower::Service<http::Request<Body>>>::Error>>,
    Either<
        <S as tower::Service<http::Request<Body>>>::Future,
        BoxFuture<'static, Result<http::Response<Body>, <S as tower::Service<http::Request<Body>>>::Error>>,
    >,
>;

impl<S> tower::Service<http::Request<Body>> for OnlyJoinWithoutCertificate<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Answer<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let info = request.extensions().get::<<Connection as tonic::transport::server::Connected>::ConnectInfo>();
        let certified = info.is_some_and(|i| i.peer_certs().is_some_and(|certs| !certs.is_empty()));
        if certified {
            return Either::Right(Either::Left(self.inner.call(request)));
        }
        let refuse = |status: tonic::Status| Either::Left(std::future::ready(Ok(status.into_http())));
        if request.uri().path() != join_path() {
            return refuse(tonic::Status::unauthenticated(
                "this call needs the client certificate of an agent or operator",
            ));
        }
        let Ok(place) = self.joins.clone().try_acquire_owned() else {
            return refuse(tonic::Status::resource_exhausted("too many joins at once: try again shortly"));
        };
        let request = request.map(|body| Body::new(http_body_util::Limited::new(body, JOIN_BYTES)));
        let answer = self.inner.call(request);
        Either::Right(Either::Right(Box::pin(async move {
            let _place = place;
            answer.await
        })))
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    fn call(path: &str) -> http::Request<Body> {
        http::Request::post(path).body(Body::empty()).unwrap()
    }

    fn grpc_status(response: &http::Response<Body>) -> Option<tonic::Code> {
        tonic::Status::from_header_map(response.headers()).map(|s| s.code())
    }

    #[tokio::test]
    async fn without_a_certificate_only_joins_pass_and_only_so_many_at_once() {
        // Answers once told to: a join in progress holds its place until then.
        let (release, released) = tokio::sync::watch::channel(false);
        let inner = tower::service_fn(move |_: http::Request<Body>| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
            }
        });
        let mut service = OnlyJoinWithoutCertificateLayer::new(1).layer(inner);
        // No connection info, as for a caller without a certificate.
        let other = service.ready().await.unwrap().call(call("/warden.v1.AdminService/ListAgents")).await.unwrap();
        assert_eq!(grpc_status(&other), Some(tonic::Code::Unauthenticated));
        let first = service.ready().await.unwrap().call(call(join_path()));
        let first = tokio::spawn(first);
        tokio::task::yield_now().await;
        let second = service.ready().await.unwrap().call(call(join_path())).await.unwrap();
        assert_eq!(grpc_status(&second), Some(tonic::Code::ResourceExhausted));
        release.send_replace(true);
        let first = first.await.unwrap().unwrap();
        assert_eq!(grpc_status(&first), None, "the first join was served");
        // Its place is free again.
        let third = service.ready().await.unwrap().call(call(join_path())).await.unwrap();
        assert_eq!(grpc_status(&third), None);
    }
}
