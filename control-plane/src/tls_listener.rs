//! An HTTPS listener for axum: TLS handshakes made concurrently, off the accept loop (a slow
//! or silent client delays only itself), and the caller's address and proven certificate as
//! the connection's info. Used by the token service and the console.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use warden_tasks::Shutdown;

/// TLS connections, handshaken concurrently off the accept loop, as axum's listener.
pub struct TlsListener {
    incoming: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The accept loop ended (shutdown): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The caller, as handlers extract it: its address, and the certificate whose key it proved
/// in the handshake, if it presented one.
#[derive(Clone, Debug)]
pub struct Peer {
    pub address: SocketAddr,
    pub certificate: Option<Arc<[u8]>>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Peer {
        let certificate =
            stream.io().get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().into());
        Peer { address: *stream.remote_addr(), certificate }
    }
}

/// TLS handshakes in progress at once: past this, new connections are closed at once (a flood of
/// silent clients costs a bounded number of tasks and descriptors, not one per connection).
const MAX_HANDSHAKES: usize = 256;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The accept loop runs until `shutdown`, when it closes the listening socket.
pub fn tls_listener(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut shutdown: Shutdown,
) -> std::io::Result<TlsListener> {
    let local = listener.local_addr()?;
    let (tx, incoming) = tokio::sync::mpsc::channel(256);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.requested() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off rather than spin.
                    tracing::warn!("accepting a TLS connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                // Dropped: closed at once.
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, handshaken) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    let _ = handshaken.send((stream, peer)).await;
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(TlsListener { incoming, local })
}
