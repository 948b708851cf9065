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
//!   ([`OnlyJoinWithoutCertificate`]), and a Join's message is read up to [`JOIN_BYTES`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
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

    /// An error once a deadline passed: hyper then closes the connection. Polling the timers
    /// here also has them wake the connection's task when they fire.
    fn deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(wait) = &mut self.first_bytes
            && wait.as_mut().poll(cx).is_ready()
        {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "nothing sent after the TLS handshake"));
        }
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
        this.deadline(cx)?;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.tls).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.first_bytes = None;
        }
        read
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.deadline(cx)?;
        Pin::new(&mut this.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.deadline(cx)?;
        Pin::new(&mut this.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.deadline(cx)?;
        Pin::new(&mut this.tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
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

/// A tower layer in front of the agents' port's services: a request on a connection without a
/// client certificate is refused before its body is read unless it is a Join, and a Join's body
/// is read up to [`JOIN_BYTES`]. Every other call checks the caller's certificate itself too;
/// this keeps what an unauthenticated caller can make the control plane read small.
#[derive(Clone, Copy, Debug, Default)]
pub struct OnlyJoinWithoutCertificateLayer;

impl<S> tower::Layer<S> for OnlyJoinWithoutCertificateLayer {
    type Service = OnlyJoinWithoutCertificate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OnlyJoinWithoutCertificate(inner)
    }
}

/// See [`OnlyJoinWithoutCertificateLayer`].
#[derive(Clone, Debug)]
pub struct OnlyJoinWithoutCertificate<S>(S);

type Body = tonic::body::Body;

impl<S> tower::Service<http::Request<Body>> for OnlyJoinWithoutCertificate<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<std::future::Ready<Result<http::Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let info = request.extensions().get::<<Connection as tonic::transport::server::Connected>::ConnectInfo>();
        let certified = info.is_some_and(|i| i.peer_certs().is_some_and(|certs| !certs.is_empty()));
        if certified {
            return futures_util::future::Either::Right(self.0.call(request));
        }
        if request.uri().path() != join_path() {
            let refused =
                tonic::Status::unauthenticated("this call needs the client certificate of an agent or operator");
            return futures_util::future::Either::Left(std::future::ready(Ok(refused.into_http())));
        }
        let request = request.map(|body| Body::new(http_body_util::Limited::new(body, JOIN_BYTES)));
        futures_util::future::Either::Right(self.0.call(request))
    }
}
