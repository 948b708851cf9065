//! The control plane's serving certificates, kept fresh while it runs: one the fleet CA issues
//! (its key in memory only) is issued again two thirds into its life, and one from the
//! operator's files is read again when the files change (cert-manager and the like replace
//! them in place). Each is a rustls certificate resolver, so new handshakes get the new
//! certificate at once and open connections carry on. Before, a control plane that ran for 90
//! days served an expired certificate, and a renewed file waited for a restart.
//!
//! The agents' port is served through [`incoming`]: its own TLS handshakes (bounded in number
//! and time) in front of tonic, which takes the finished streams as [`Connection`]s, bounded
//! again after the handshake.

mod connection;

pub use connection::{Connection, JOIN_BYTES, JOINS_AT_ONCE, Limits, OnlyJoinWithoutCertificateLayer};

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use warden_tasks::Shutdown;

use crate::RunError;
use crate::fleet::Fleet;

/// The `errno` values of running out of descriptors or memory (Linux).
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

/// How often a certificate is looked at (issued ones are reissued two thirds into their life;
/// files are read again when changed), at most.
const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Handshakes on the agents' port worked on at once, and how long one may take. Every
/// connection is accepted at once (one left in the listen backlog, past its 1,024 places, is
/// dropped and tried again by the kernel a second or more later, which made a reconnect storm
/// of 10,000 agents take 3 s longer) and waits for a turn, up to [`TURN_WAIT`] (agents give up
/// connecting after 5 s); at most [`WAITING`] wait at once, and past that a new connection is
/// closed at once, so silent connections cannot take every descriptor of the process.
pub const HANDSHAKES: usize = 4096;
/// See [`HANDSHAKES`].
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// See [`HANDSHAKES`].
pub const TURN_WAIT: Duration = Duration::from_secs(5);
/// Connections accepted and not yet handed to tonic (waiting for a turn or in a handshake), at
/// most; see [`HANDSHAKES`].
pub const WAITING: usize = 16_384;

/// The longest `--serving-cert-ttl`: the fleet CA's own life (ten years).
pub const MAX_TTL: Duration = Duration::from_secs(3650 * 86_400);

/// Where a serving certificate comes from.
enum Source {
    /// Issued by the fleet CA for the server's names, for `ttl`.
    Issued { names: Vec<String>, ttl: Duration },
    /// The operator's PEM files, and a digest of what was last loaded from them.
    Files { cert: PathBuf, key: PathBuf, loaded: Mutex<[u8; 32]> },
}

/// A serving certificate that renews itself ([`ServingCert::keep_fresh`]).
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
    /// When the current one was issued or read.
    since: Mutex<SystemTime>,
    source: Source,
    /// How often it is looked at.
    check: Duration,
    /// Woken by a handshake that finds an issued certificate due: after a suspend, the wall
    /// clock is past the renewal while the monotonic timer of `keep_fresh` still waits.
    due: tokio::sync::Notify,
    /// The service, for errors and logs.
    what: &'static str,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert").field("what", &self.what).finish_non_exhaustive()
    }
}

fn invalid(what: &str, part: &str, e: &dyn std::fmt::Display) -> RunError {
    RunError::Io {
        context: format!("the {what}'s {part}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    }
}

/// A chain and key, PEM, as rustls serves them; refused when the key is not the certificate's.
fn certified(what: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, RunError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(what, "certificate", &e))?;
    if chain.is_empty() {
        return Err(invalid(what, "certificate", &"no PEM certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid(what, "key", &e))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| invalid(what, "key", &e))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| invalid(what, "key", &e))?;
    Ok(certified)
}

/// A digest of a certificate file and its key file as read together.
fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update((cert.len() as u64).to_be_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

impl ServingCert {
    /// A certificate the fleet CA of `fleet` issues for `names`, valid for `ttl`.
    pub fn issued(
        fleet: &Fleet,
        names: &[String],
        ttl: Duration,
        what: &'static str,
    ) -> Result<Arc<ServingCert>, RunError> {
        let (chain, key) = fleet.ca().issue_server(names, ttl)?;
        Ok(Arc::new(ServingCert {
            current: RwLock::new(Arc::new(certified(what, chain.as_bytes(), key.as_bytes())?)),
            since: Mutex::new(SystemTime::now()),
            source: Source::Issued { names: names.to_vec(), ttl },
            check: (ttl / 6).clamp(Duration::from_secs(1), CHECK_EVERY),
            due: tokio::sync::Notify::new(),
            what,
        }))
    }

    /// The operator's certificate chain and key (PEM files), looked at for changes every
    /// minute (or a sixth of `ttl`, the issued certificates' lifetime, when shorter).
    pub fn from_files(
        cert: PathBuf,
        key: PathBuf,
        ttl: Duration,
        what: &'static str,
    ) -> Result<Arc<ServingCert>, RunError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| RunError::Io { context: format!("reading {}", p.display()), source })
        };
        let (cert_pem, key_pem) = (read(&cert)?, read(&key)?);
        let current = certified(what, &cert_pem, &key_pem)?;
        Ok(Arc::new(ServingCert {
            current: RwLock::new(Arc::new(current)),
            since: Mutex::new(SystemTime::now()),
            source: Source::Files { cert, key, loaded: Mutex::new(digest(&cert_pem, &key_pem)) },
            check: (ttl / 6).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            due: tokio::sync::Notify::new(),
            what,
        }))
    }

    /// The one given (issued, or from `files`) for the service `what`.
    pub fn for_service(
        fleet: &Fleet,
        files: Option<&(PathBuf, PathBuf)>,
        names: &[String],
        ttl: Duration,
        what: &'static str,
    ) -> Result<Arc<ServingCert>, RunError> {
        match files {
            Some((cert, key)) => ServingCert::from_files(cert.clone(), key.clone(), ttl, what),
            None => ServingCert::issued(fleet, names, ttl, what),
        }
    }

    /// When the certificate served now became valid and when it expires (Unix seconds).
    pub fn validity_unix(&self) -> Option<(i64, i64)> {
        validity(&self.current())
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Renews the certificate when due, once; whether it changed. A file that cannot be read
    /// or does not hold a certificate and its key keeps the one served (and says why).
    pub fn renew_if_due(&self, fleet: &Fleet, now: SystemTime) -> bool {
        let fresh = match &self.source {
            Source::Issued { names, ttl } => {
                if !self.issued_due(now) {
                    return false;
                }
                fleet
                    .ca()
                    .issue_server(names, *ttl)
                    .map_err(RunError::from)
                    .and_then(|(chain, key)| certified(self.what, chain.as_bytes(), key.as_bytes()))
            }
            Source::Files { cert, key, loaded } => {
                let (cert_pem, key_pem) = match (std::fs::read(cert), std::fs::read(key)) {
                    (Ok(c), Ok(k)) => (c, k),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::error!(
                            service = self.what,
                            "serving certificate files unreadable, the current one stays: {e}"
                        );
                        return false;
                    }
                };
                // What the files hold, not their times: a copy that keeps times, or two writes
                // within one tick, is still a change.
                let read = digest(&cert_pem, &key_pem);
                let mut loaded = loaded.lock().unwrap_or_else(|e| e.into_inner());
                if read == *loaded {
                    return false;
                }
                // A pair that does not match (a certificate written before its key) is read
                // again at the next look, until it does.
                let fresh = certified(self.what, &cert_pem, &key_pem).and_then(|fresh| {
                    // A replacement outside its dates (a file copied from a backup, a clock
                    // wrong where it was made) does not take the place of one that is valid.
                    let now_unix = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
                    match (validity(&fresh), validity(&self.current())) {
                        (Some((from, until)), Some((old_from, old_until)))
                            if !(from..until).contains(&now_unix) && (old_from..old_until).contains(&now_unix) =>
                        {
                            Err(invalid(self.what, "certificate", &format!(
                                "the new file's certificate is not valid now (valid from {from} to {until}, Unix seconds), and the current one is"
                            )))
                        }
                        _ => Ok(fresh),
                    }
                });
                if fresh.is_ok() {
                    *loaded = read;
                }
                fresh
            }
        };
        match fresh {
            Ok(fresh) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
                *self.since.lock().unwrap_or_else(|e| e.into_inner()) = now;
                tracing::info!(service = self.what, "serving certificate renewed");
                true
            }
            Err(e) => {
                tracing::error!(service = self.what, "serving certificate not renewed, the current one stays: {e}");
                false
            }
        }
    }

    /// Whether an issued certificate is due at `now`: two thirds into its life, or at once if
    /// the clock went back past its issue (it may then not be valid yet for clients whose
    /// clocks are right). One read from files never is (they are looked at for changes).
    fn issued_due(&self, now: SystemTime) -> bool {
        let Source::Issued { ttl, .. } = &self.source else { return false };
        let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
        !matches!(now.duration_since(since), Ok(age) if age < *ttl - *ttl / 3)
    }

    /// Renews the certificate when due until `stop`: looked at every `check`, and at once when
    /// a handshake finds it due.
    pub async fn keep_fresh(self: Arc<Self>, fleet: Arc<Fleet>, mut stop: Shutdown) {
        loop {
            let woken = tokio::select! {
                () = tokio::time::sleep(self.check) => false,
                () = self.due.notified() => true,
                () = stop.requested() => return,
            };
            if !self.renew_if_due(&fleet, SystemTime::now()) && woken {
                // Handshakes keep waking it while the renewal fails: one try a second.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.requested() => return,
                }
            }
        }
    }

    /// Wakes [`ServingCert::keep_fresh`] if the certificate is due now by the wall clock.
    fn wake_if_due(&self) {
        if self.issued_due(SystemTime::now()) {
            self.due.notify_one();
        }
    }
}

/// The validity of a certificate's leaf, Unix seconds (from, until); `None` if it does not
/// parse (it was parsed once already, by rustls's key check).
fn validity(certified: &CertifiedKey) -> Option<(i64, i64)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, leaf) = X509Certificate::from_der(certified.cert.first()?.as_ref()).ok()?;
    Some((leaf.validity().not_before.timestamp(), leaf.validity().not_after.timestamp()))
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // This handshake gets the one there is; the next ones, a renewed one if it was due.
        self.wake_if_due();
        Some(self.current())
    }
}

/// The agents' port: TCP connections accepted on `listener`, their TLS handshakes under
/// `config` done concurrently (at most `limits.handshakes` at once, each within
/// `limits.handshake_timeout`: the port uses [`Limits::AGENTS_PORT`]; see [`HANDSHAKES`] for
/// the waiting), the finished streams handed to tonic with the rest of `limits` on them, until
/// `stop`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: Limits,
    mut stop: Shutdown,
) -> tokio_stream::wrappers::ReceiverStream<Result<Connection, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(limits.handshakes));
    let waiting = Arc::new(tokio::sync::Semaphore::new(WAITING));
    let certless = Arc::new(tokio::sync::Semaphore::new(limits.certless_at_once));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    // Out of descriptors or memory: pause rather than spin.
                    Err(e) if matches!(e.raw_os_error(), Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)) => {
                        tracing::warn!("accepting agent connections paused 50 ms: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    // One connection's trouble (reset before accepted, and the like).
                    Err(_) => continue,
                },
                () = stop.requested() => return,
            };
            let Ok(held) = waiting.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "too many connections waiting for a TLS handshake on the agents' port: closed");
                continue;
            };
            // gRPC's small frames (acknowledgements, pings) go out at once, not after the
            // peer's delayed acknowledgement of the previous ones.
            let _ = stream.set_nodelay(true);
            let (acceptor, tx, handshakes, mut stop) = (acceptor.clone(), tx.clone(), handshakes.clone(), stop.clone());
            let certless = certless.clone();
            tokio::spawn(async move {
                let _held = held;
                let handshake = async {
                    let Ok(Ok(turn)) = tokio::time::timeout(TURN_WAIT, handshakes.acquire()).await else {
                        tracing::debug!(%peer, "no TLS handshake turn on the agents' port in time");
                        return None;
                    };
                    let done = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await;
                    drop(turn);
                    match done {
                        Ok(Ok(tls)) => Some(tls),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake on the agents' port failed: {e}");
                            None
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake on the agents' port timed out");
                            None
                        }
                    }
                };
                // At shutdown, no handshake is begun or finished for a server that is going.
                let tls = tokio::select! {
                    tls = handshake => tls,
                    () = stop.requested() => None,
                };
                let Some(tls) = tls else { return };
                let place = if tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty()) {
                    None
                } else {
                    let Ok(place) = certless.try_acquire_owned() else {
                        tracing::debug!(%peer, "too many connections without a client certificate on the agents' port: closed");
                        return;
                    };
                    Some(place)
                };
                // The server is gone when the channel is: nothing to hand it to.
                let _ = tx.send(Ok(Connection::new(tls, &limits, place))).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_stream::StreamExt;

    use super::*;

    fn server_config() -> (Arc<rustls::ServerConfig>, rustls::pki_types::CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
            .unwrap();
        (Arc::new(config), cert.der().clone())
    }

    /// A TLS client trusting `cert` only, without a certificate of its own.
    fn connector_trusting(cert: rustls::pki_types::CertificateDer<'static>) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(client))
    }

    #[tokio::test]
    async fn a_silent_client_holds_a_handshake_slot_only_until_the_timeout() {
        let (config, cert) = server_config();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (_trigger, stop) = warden_tasks::channel();
        let limits = Limits { handshakes: 1, handshake_timeout: Duration::from_millis(800), ..Limits::AGENTS_PORT };
        let mut incoming = incoming(listener, config, limits, stop);
        // A client that never speaks takes the one slot; a real client waits behind it.
        let started = Instant::now();
        let mut silent = TcpStream::connect(address).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let connector = connector_trusting(cert);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let real =
            tokio::spawn(async move { connector.connect(name, TcpStream::connect(address).await.unwrap()).await });
        // Not before the silent one is let go (past the bound, a connection waits its turn).
        assert!(tokio::time::timeout(Duration::from_millis(500), incoming.next()).await.is_err());
        // The silent one is closed at the timeout; the real one then completes its handshake.
        let mut buffer = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buffer)).await;
        assert_eq!(closed.expect("closed within the test").unwrap(), 0);
        assert!(started.elapsed() >= Duration::from_millis(800), "closed at the timeout, not before");
        let served = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await.unwrap().unwrap().unwrap();
        assert!(served.tls().get_ref().1.alpn_protocol().is_none());
        real.await.unwrap().expect("the real client's handshake");
    }

    #[tokio::test]
    async fn after_the_handshake_a_silent_connection_ends_and_one_without_a_certificate_lives_briefly() {
        let (config, cert) = server_config();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (_trigger, stop) = warden_tasks::channel();
        let limits = Limits {
            first_bytes: Duration::from_millis(300),
            certless_life: Duration::from_millis(1200),
            certless_at_once: 1,
            ..Limits::AGENTS_PORT
        };
        let mut incoming = incoming(listener, config, limits, stop);
        let connector = connector_trusting(cert);
        let connect = || {
            let connector = connector.clone();
            async move {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                connector.connect(name, tokio::net::TcpStream::connect(address).await.unwrap()).await.unwrap()
            }
        };
        let mut buffer = [0u8; 64];

        // Silent after its handshake: its first read fails at the deadline (which starts after
        // the handshake, so after `started`).
        let started = Instant::now();
        let _silent = connect().await;
        let mut served = incoming.next().await.unwrap().unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), served.read(&mut buffer)).await.unwrap();
        assert_eq!(read.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());

        // The one place for a connection without a certificate is taken while `served` lives:
        // another is closed after its handshake and never reaches the server.
        let mut refused = connect().await;
        let closed = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut buffer)).await.unwrap();
        assert!(
            matches!(&closed, Ok(0)) || closed.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{closed:?}"
        );
        drop(served);

        // One that talks is read until its life is over, then ends.
        let started = Instant::now();
        let mut talking = connect().await;
        let mut served = incoming.next().await.unwrap().unwrap();
        let ended = loop {
            talking.write_all(b"ping").await.unwrap();
            talking.flush().await.unwrap();
            match tokio::time::timeout(Duration::from_secs(5), served.read(&mut buffer)).await.unwrap() {
                Ok(n) => assert!(n > 0),
                Err(e) => break e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(ended.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(1200), "{:?}", started.elapsed());
    }

    #[test]
    fn a_replaced_certificate_file_is_served_once_it_reads_whole_and_a_broken_pair_never() {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            crate::fleet::pki::FleetCa::load_or_create(crate::fleet::pki::CaSource::DataDir(dir.path()), "warden.test")
                .unwrap();
        let fleet = Fleet::new(ca, Duration::from_secs(60), Duration::from_secs(15));
        let pair = || {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
            (cert.pem(), key.serialize_pem(), cert.der().to_vec())
        };
        let (cert, key) = (dir.path().join("serving.crt"), dir.path().join("serving.key"));
        let (first_cert, first_key, first_der) = pair();
        std::fs::write(&cert, &first_cert).unwrap();
        std::fs::write(&key, &first_key).unwrap();
        let serving = ServingCert::from_files(cert.clone(), key.clone(), Duration::from_secs(60), "test").unwrap();
        let served = |s: &ServingCert| s.current().cert[0].to_vec();
        assert_eq!(served(&serving), first_der);
        assert!(!serving.renew_if_due(&fleet, SystemTime::now()), "nothing changed");
        // The new certificate written, its key not yet: the pair does not match, the old stays.
        let (second_cert, second_key, second_der) = pair();
        std::fs::write(&cert, &second_cert).unwrap();
        assert!(!serving.renew_if_due(&fleet, SystemTime::now()));
        assert_eq!(served(&serving), first_der);
        // Then the key: served from this look on.
        std::fs::write(&key, &second_key).unwrap();
        assert!(serving.renew_if_due(&fleet, SystemTime::now()));
        assert_eq!(served(&serving), second_der);
        // Garbage in the file, or a file gone: the one served stays.
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(!serving.renew_if_due(&fleet, SystemTime::now()));
        std::fs::remove_file(&key).unwrap();
        assert!(!serving.renew_if_due(&fleet, SystemTime::now()));
        assert_eq!(served(&serving), second_der);
    }

    #[tokio::test]
    async fn a_handshake_that_finds_the_certificate_due_by_the_wall_clock_has_it_renewed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            crate::fleet::pki::FleetCa::load_or_create(crate::fleet::pki::CaSource::DataDir(dir.path()), "warden.test")
                .unwrap();
        let fleet = Arc::new(Fleet::new(ca, Duration::from_secs(60), Duration::from_secs(15)));
        // Looked at every 10 minutes by the timer.
        let serving = ServingCert::issued(&fleet, &["localhost".into()], Duration::from_secs(3600), "test").unwrap();
        let (_trigger, stop) = warden_tasks::channel();
        tokio::spawn(serving.clone().keep_fresh(fleet.clone(), stop));
        let first = serving.current();
        // Not due: nothing happens.
        serving.wake_if_due();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(Arc::ptr_eq(&first, &serving.current()));
        // As after a suspend of 50 minutes, which the timer does not count: renewed at once.
        *serving.since.lock().unwrap() -= Duration::from_secs(3000);
        serving.wake_if_due();
        let renewed = async {
            while Arc::ptr_eq(&first, &serving.current()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), renewed).await.expect("renewed without waiting for the timer");
    }

    #[test]
    fn a_replacement_file_outside_its_dates_does_not_replace_a_valid_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            crate::fleet::pki::FleetCa::load_or_create(crate::fleet::pki::CaSource::DataDir(dir.path()), "warden.test")
                .unwrap();
        let fleet = Fleet::new(ca, Duration::from_secs(60), Duration::from_secs(15));
        let pair = |expired: bool| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), key.serialize_pem(), cert.der().to_vec())
        };
        let (cert, key) = (dir.path().join("serving.crt"), dir.path().join("serving.key"));
        let (valid_cert, valid_key, valid_der) = pair(false);
        std::fs::write(&cert, &valid_cert).unwrap();
        std::fs::write(&key, &valid_key).unwrap();
        let serving = ServingCert::from_files(cert.clone(), key.clone(), Duration::from_secs(60), "test").unwrap();
        let (old_cert, old_key, _) = pair(true);
        std::fs::write(&cert, &old_cert).unwrap();
        std::fs::write(&key, &old_key).unwrap();
        assert!(!serving.renew_if_due(&fleet, SystemTime::now()));
        assert_eq!(serving.current().cert[0].to_vec(), valid_der);
        // A valid one after it is taken.
        let (new_cert, new_key, new_der) = pair(false);
        std::fs::write(&cert, &new_cert).unwrap();
        std::fs::write(&key, &new_key).unwrap();
        assert!(serving.renew_if_due(&fleet, SystemTime::now()));
        assert_eq!(serving.current().cert[0].to_vec(), new_der);
    }

    #[test]
    fn an_issued_certificate_is_issued_again_two_thirds_into_its_life_or_when_the_clock_went_back() {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            crate::fleet::pki::FleetCa::load_or_create(crate::fleet::pki::CaSource::DataDir(dir.path()), "warden.test")
                .unwrap();
        let fleet = Fleet::new(ca, Duration::from_secs(60), Duration::from_secs(15));
        let ttl = Duration::from_secs(90);
        let serving = ServingCert::issued(&fleet, &["localhost".into()], ttl, "test").unwrap();
        let start = *serving.since.lock().unwrap();
        let first = serving.current();
        assert!(!serving.renew_if_due(&fleet, start + Duration::from_secs(59)));
        assert!(Arc::ptr_eq(&first, &serving.current()));
        assert!(serving.renew_if_due(&fleet, start + Duration::from_secs(60)));
        let second = serving.current();
        assert!(!Arc::ptr_eq(&first, &second));
        // A clock set back past the issue: issued again at once.
        assert!(serving.renew_if_due(&fleet, start + Duration::from_secs(30)));
        assert!(!Arc::ptr_eq(&second, &serving.current()));
    }
}
