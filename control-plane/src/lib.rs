//! `warden-cp`: the fleet's source of truth.
//!
//! It stores resources (embedded redb store, or etcd shared by replicas), validates every write
//! against the whole configuration, runs the fleet CA, admits agents with one-time join tokens,
//! and pushes each new configuration version to every connected agent over its mTLS stream.
//!
//! Four subsystems own the state, each behind a narrow handle: [`configuration`] (store,
//! published states, the write path), [`fleet`] (CA, presence, replicas),
//! [`tokens`] (token service, signing keys, revocations, issuer keys) and [`telemetry`]
//! (decision records, metrics, OTLP export). Two services sit on them at the edge: [`agents`]
//! (join, renewal, one configuration stream per agent) and [`admin`] (the operators' view).
//! [`run`] only builds them, starts their tasks and serves: the binary's `main` only parses
//! flags and binds.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agents;
pub mod configuration;
pub mod console;
pub mod fleet;
pub mod http_listener;
pub mod inventory;
pub mod pinning;
pub mod replay;
pub mod scorecard;
pub mod serving;
pub mod telemetry;
pub mod tokens;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::v1 as pb;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use warden_core::Admission;
use warden_tasks::{Shutdown, Tasks, Trigger};

use crate::admin::AdminService;
use crate::agents::AgentService;
use crate::configuration::Configuration;
use crate::configuration::state::FleetState;
use crate::configuration::store::Store;
use crate::fleet::Fleet;
use crate::fleet::pki::{CaSource, FleetCa};
use crate::fleet::replicas::{self, Replica};
use crate::inventory::Inventory;
use crate::pinning::Pinning;
use crate::serving::ServingCert;
use crate::telemetry::Telemetry;
use crate::tokens::Tokens;
use crate::tokens::token_service::{self, TokenService};

/// Where the configuration is stored.
#[derive(Clone, Debug)]
pub enum StoreOptions {
    /// The embedded store in the data directory: one control plane.
    Embedded,
    /// etcd, shared by several control-plane replicas.
    Etcd(configuration::store::etcd::Options),
}

/// Everything `run` needs, parsed and validated by `main`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Holds the embedded store, the decision records, the generated CA and the admin socket.
    pub data_dir: PathBuf,
    /// Where the configuration is stored.
    pub store: StoreOptions,
    /// The admin socket (default `<data_dir>/admin.sock`).
    pub admin_socket: PathBuf,
    /// SPIFFE trust domain of fleet identities.
    pub trust_domain: String,
    /// DNS names and IP addresses agents use to reach this control plane (serving certificate
    /// SANs).
    pub server_names: Vec<String>,
    /// Operator-provided CA certificate and key; generated in the data dir when absent.
    pub ca_files: Option<(PathBuf, PathBuf)>,
    /// Lifetime of agent client certificates; agents renew at two thirds of it.
    pub agent_cert_ttl: Duration,
    /// Lifetime of the serving certificates the fleet CA issues (the agents' port's, and the
    /// token service's and console's when no files are given); each is issued again two thirds
    /// into it while the control plane runs.
    pub serving_cert_ttl: Duration,
    /// Who may join with a platform's token (`--join-attestation`); empty: nobody.
    pub join_attestation: warden_core::attestation::JoinAttestation,
    /// Largest encoded configuration snapshot a write may produce (at most
    /// [`proto::MAX_CONFIG_MESSAGE_BYTES`], what agents decode).
    pub max_config_bytes: usize,
    /// How often each stream carries a heartbeat when nothing else moves.
    pub heartbeat_interval: Duration,
    /// Accept http:// issuer URLs (local testing only).
    pub allow_http_issuers: bool,
    /// When issuers' keys are refreshed.
    pub key_refresh: tokens::issuer_keys::RefreshPolicy,
    /// Decision records kept (the oldest are deleted past this).
    pub decision_retention: u64,
    /// OpenTelemetry export (from the `OTEL_*` variables).
    pub otlp: telemetry::otlp::Config,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a metric series reads 0 after its labels are first known or seen in a record,
    /// so that `rate()` and `increase()` count its first events.
    pub metrics_new_series_delay: Duration,
    /// Where the read-only console is served, if anywhere: a loopback address, unless
    /// `console_operators`.
    pub console_listen: Option<SocketAddr>,
    /// Serve the console over HTTPS to operators' client certificates only (on any address).
    pub console_operators: bool,
    /// The console's certificate chain and key (PEM files), from a CA browsers already trust;
    /// without them it presents a certificate from the fleet CA for `server_names`. Either way
    /// the client certificates it asks for are the fleet CA's.
    pub console_tls_files: Option<(PathBuf, PathBuf)>,
    /// Where the token service (token exchange, revocation) is served over HTTPS, if anywhere.
    pub token_listen: Option<SocketAddr>,
    /// The token service's certificate chain and key (PEM files); without them it presents a
    /// certificate from the fleet CA for `server_names`.
    pub token_tls_files: Option<(PathBuf, PathBuf)>,
    /// Rotation and publication of the token service's signing keys.
    pub signing: tokens::signing::Timing,
    /// Lifetime of this replica's etcd lease: how long after a crash its leadership and the
    /// presence of its agents outlive it.
    pub lease_ttl: Duration,
}

/// Why the control plane could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data directory or the admin socket could not be prepared.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] configuration::store::StoreError),
    /// The decision store could not be opened.
    #[error(transparent)]
    Decisions(#[from] telemetry::decisions::DecisionError),
    /// The CA could not be loaded or a certificate issued.
    #[error(transparent)]
    Pki(#[from] fleet::pki::PkiError),
    /// A gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The options do not work together.
    #[error("{0}")]
    Config(String),
}

/// Milliseconds since the epoch.
pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// How the TLS configurations below fail.
fn tls_invalid(what: &str, part: &str, e: &dyn std::fmt::Display) -> RunError {
    RunError::Io {
        context: format!("the {what}'s {part}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    }
}

/// The token service's TLS configuration: the operator's certificate, or one from the fleet CA.
fn token_tls(serving: Arc<ServingCert>) -> Result<Arc<rustls::ServerConfig>, RunError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_invalid("token service", "TLS versions", &e))?
        // A client may prove a certificate's key: its task token is then bound to it (RFC 8705).
        .with_client_cert_verifier(warden_tls::ProofOfPossession::optional())
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The fleet CA as the roots client certificates must chain to.
fn fleet_roots(ca: &FleetCa, what: &str) -> Result<Arc<rustls::RootCertStore>, RunError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca_cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        let ca_cert = ca_cert.map_err(|e| tls_invalid(what, "fleet CA", &e))?;
        roots.add(ca_cert).map_err(|e| tls_invalid(what, "fleet CA", &e))?;
    }
    Ok(Arc::new(roots))
}

/// A TLS configuration serving `serving` and verifying client certificates of the fleet CA:
/// required, or (`optional`) verified when one is given. `what` names the service in errors.
fn fleet_mtls(
    ca: &FleetCa,
    serving: Arc<ServingCert>,
    optional: bool,
    what: &str,
) -> Result<rustls::ServerConfig, RunError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut clients =
        rustls::server::WebPkiClientVerifier::builder_with_provider(fleet_roots(ca, what)?, provider.clone());
    if optional {
        clients = clients.allow_unauthenticated();
    }
    let clients = clients.build().map_err(|e| tls_invalid(what, "client verifier", &e))?;
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_invalid(what, "TLS versions", &e))?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(serving))
}

/// The console's TLS for operators: the operator's serving certificate, or one of the fleet CA
/// for the server's names; and a client certificate of the fleet CA required (whose identity
/// the console then checks is an operator's).
fn console_tls(ca: &FleetCa, serving: Arc<ServingCert>) -> Result<Arc<rustls::ServerConfig>, RunError> {
    let mut config = fleet_mtls(ca, serving, false, "console")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No resumption: a resumed session carries the client certificate of its first handshake,
    // unchecked again (the registry check on every request covers revocation and expiry, but a
    // fresh handshake is cheap for a console).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The agent/operator port's TLS: a serving certificate of the fleet CA (its key never written
/// down, issued again while the control plane runs), and client certificates of the fleet CA,
/// optional: Join is the one call made before the agent has a certificate; every other call
/// checks the caller's certificate identity itself.
fn agent_tls(ca: &FleetCa, serving: Arc<ServingCert>) -> Result<Arc<rustls::ServerConfig>, RunError> {
    let mut config = fleet_mtls(ca, serving, true, "agents' port")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let context = context.into();
    move |source| RunError::Io { context, source }
}

/// Runs the control plane until `shutdown` resolves: the agent/operator TLS port on `listener`,
/// the admin socket, and the optional token service and metrics endpoint. On shutdown, agent
/// streams are closed, the servers drain, and every background task finishes before this
/// returns.
pub async fn run(
    options: Options,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    // Refused before anything is opened or started.
    if let Some(addr) = options.console_listen.filter(|a| !a.ip().is_loopback() && !options.console_operators) {
        return Err(RunError::Config(format!(
            "--console-listen {addr} is not a loopback address: without --console-mtls the console has no login of \
             its own, so it serves loopback only (reach it over SSH port forwarding)"
        )));
    }
    // The subsystems, each on the ones below it.
    let (configuration, revision) = open_configuration(&options).await?;
    let configuration = Arc::new(configuration);
    let replica_name = replica_id(&options, &listener);
    let replica = Replica::new(replica_name.clone(), matches!(options.store, StoreOptions::Embedded));
    let leadership = replica.leadership();
    let ca = match &options.ca_files {
        Some((cert, key)) => FleetCa::load_or_create(CaSource::Files { cert, key }, &options.trust_domain)?,
        None => FleetCa::load_or_create(CaSource::DataDir(&options.data_dir), &options.trust_domain)?,
    };
    let fleet = Arc::new(
        Fleet::new(ca, options.agent_cert_ttl, options.heartbeat_interval)
            .with_join_attestation(options.join_attestation.clone()),
    );
    // Serving certificates, each renewed while the control plane runs.
    let (names, ttl) = (&options.server_names, options.serving_cert_ttl);
    let agent_cert = ServingCert::issued(&fleet, names, ttl, "agents' port")?;
    let agent_tls = agent_tls(fleet.ca(), agent_cert.clone())?;
    let token_cert = options
        .token_listen
        .map(|_| ServingCert::for_service(&fleet, options.token_tls_files.as_ref(), names, ttl, "token service"))
        .transpose()?;
    let token_tls = token_cert.clone().map(token_tls).transpose()?;
    let console_cert = options
        .console_operators
        .then(|| ServingCert::for_service(&fleet, options.console_tls_files.as_ref(), names, ttl, "console"))
        .transpose()?;
    let console_tls = console_cert.clone().map(|cert| console_tls(fleet.ca(), cert)).transpose()?;
    // The zero of a new series must reach the OTLP export too: it is held a full export
    // interval at least.
    let mut new_series_delay = options.metrics_new_series_delay;
    if options.otlp.metrics.is_some() {
        new_series_delay = new_series_delay.max(options.otlp.metric_interval + Duration::from_secs(1));
    }
    let (telemetry, telemetry_duties) =
        Telemetry::open(&options.data_dir, options.decision_retention, new_series_delay)?;
    let (tokens, token_duties) = Tokens::new(configuration.clone());
    let fingerprint_key = fleet.ca().derived_key(inventory::FINGERPRINT_PURPOSE);
    let inventory = Arc::new(Inventory::new(configuration.clone(), fingerprint_key));
    let pinning = Arc::new(Pinning::new(configuration.clone()));

    // Their background duties and the optional endpoints, in one task set.
    let (trigger, stop) = warden_tasks::channel();
    let mut tasks = Tasks::new();
    tasks.spawn("replica follower", replicas::follow(configuration.clone(), fleet.clone(), revision, stop.clone()));
    tasks.spawn(
        "departed agents",
        fleet::departed::forget(configuration.clone(), fleet.clone(), leadership.clone(), stop.clone()),
    );
    let certificates: Vec<(&'static str, Arc<ServingCert>)> =
        [("agents_port", Some(agent_cert)), ("token_service", token_cert), ("console", console_cert)]
            .into_iter()
            .filter_map(|(what, cert)| Some((what, cert?)))
            .collect();
    for (_, cert) in &certificates {
        tasks.spawn("serving certificate", cert.clone().keep_fresh(fleet.clone(), stop.clone()));
    }
    // Last to finish: gives up leadership and this replica's presence entries at once.
    let lease =
        replicas::hold_lease(replica, configuration.store().clone(), fleet.clone(), options.lease_ttl, stop.clone());
    tasks.spawn("replica lease", lease);
    tasks.spawn("revocation enforcement", fleet::watch_revocations(configuration.clone(), fleet.clone(), stop.clone()));
    let (refresh, signing) = (options.key_refresh, options.signing);
    tokens.spawn(token_duties, &configuration, &fleet, &leadership, refresh, signing, &mut tasks, &stop);
    let metrics = telemetry.spawn(
        telemetry_duties,
        &configuration,
        &fleet,
        &inventory,
        tokens.key_statuses(),
        &leadership,
        &otlp_config(&options, &replica_name),
        certificates,
        &mut tasks,
        &stop,
    );
    if let (Some(addr), Some(tls)) = (options.token_listen, token_tls) {
        let listener = TcpListener::bind(addr).await.map_err(io(format!("binding the token service {addr}")))?;
        let service = TokenService::new(configuration.clone(), tokens.clone(), telemetry.exchange_log().clone());
        tasks.spawn("token service", token_service::serve(service, listener, tls, stop.clone()));
    }
    if let Some(addr) = options.metrics_listen {
        let listener = TcpListener::bind(addr).await.map_err(io(format!("binding the metrics endpoint {addr}")))?;
        tasks.spawn("metrics endpoint", telemetry::metrics::serve(metrics, listener, stop.clone()));
    }
    // The scorecard's kept tallies, shared by the admin API and the console.
    let tallies = Arc::new(scorecard::Tallies::default());
    tasks.spawn("scorecard warm-up", scorecard::warm_up(tallies.clone(), telemetry.decisions().clone(), stop.clone()));
    if let Some(addr) = options.console_listen {
        let listener = TcpListener::bind(addr).await.map_err(io(format!("binding the console {addr}")))?;
        let router = |access| {
            let (telemetry, inventory, tallies) = (telemetry.clone(), inventory.clone(), tallies.clone());
            console::router(configuration.clone(), fleet.clone(), telemetry, inventory, tallies, access)
        };
        // The access checks go with the way the console is served: operators' certificates
        // with TLS, loopback hosts without.
        let access = if console_tls.is_some() { console::Access::Operators } else { console::Access::Loopback };
        tasks.spawn("console", console::serve(router(access), listener, console_tls, stop.clone()));
    }

    // The two edge services, until shutdown or until one of them fails.
    let agents = AgentService::new(
        configuration.clone(),
        fleet.clone(),
        telemetry.decisions().clone(),
        tokens.clone(),
        inventory.clone(),
        pinning.clone(),
        stop.clone(),
    );
    let admin = AdminService::new(configuration, fleet, tokens, telemetry, inventory, pinning, tallies);
    let served = serve(&options, listener, agent_tls, agents, admin, shutdown, &trigger, stop).await;
    trigger.fire();
    tasks.join().await;
    let _ = std::fs::remove_file(&options.admin_socket);
    served?;
    tracing::info!("control plane stopped");
    Ok(())
}

/// Serves agents and operators on the TLS `listener` and operators on the admin socket until
/// `shutdown` (then fires `trigger`, so agent streams close and the servers drain) or until
/// one server fails (which ends the other).
#[allow(clippy::too_many_arguments)] // each is one part the servers are made of
async fn serve(
    options: &Options,
    listener: TcpListener,
    agent_tls: Arc<rustls::ServerConfig>,
    agents: AgentService,
    admin: AdminService,
    shutdown: impl Future<Output = ()>,
    trigger: &Trigger,
    stop: Shutdown,
) -> Result<(), RunError> {
    let _ = std::fs::remove_file(&options.admin_socket);
    let admin_listener = std::os::unix::net::UnixListener::bind(&options.admin_socket)
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .map_err(io(format!("binding {}", options.admin_socket.display())))?;
    std::fs::set_permissions(&options.admin_socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io("restricting the admin socket to its owner"))?;
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, admin_socket = %options.admin_socket.display(), "control plane listening");
    let (mut tls_stop, admin_stop) = (stop.clone(), stop);
    let incoming = serving::incoming(listener, agent_tls, serving::Limits::AGENTS_PORT, tls_stop.clone());
    let tls_server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // An agent holds one stream and renews now and then; an operator's command is one call.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .layer(serving::OnlyJoinWithoutCertificateLayer::new(serving::JOINS_AT_ONCE))
        .add_service(pb::agent_service_server::AgentServiceServer::new(agents))
        .add_service(pb::admin_service_server::AdminServiceServer::new(admin.clone()))
        .serve_with_incoming_shutdown(incoming, async move { tls_stop.requested().await });
    let tls_server = async { tls_server.await.map_err(RunError::from) };
    let admin_server = serve_admin_apart(admin_listener, admin, admin_stop);
    let serving = async { tokio::try_join!(tls_server, admin_server) };
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => served?,
        () = shutdown => {
            tracing::info!("shutting down: closing agent streams");
            trigger.fire();
            // tonic waits for every connection to close, and a client can keep one open (a
            // call whose body never ends): the drain has a deadline.
            match tokio::time::timeout(DRAIN, &mut serving).await {
                Ok(served) => served?,
                Err(_) => {
                    tracing::warn!(seconds = DRAIN.as_secs(), "connections still open after the drain: no longer waited for (they end with the process)");
                    Default::default()
                }
            }
        }
    };
    Ok(())
}

/// Streams a connection to the agents' port may open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// How long shutdown waits for the agents' port's connections to close.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves the admin socket on a thread and runtime of its own, so an operator's call is answered
/// promptly however busy the agents' port keeps the main runtime: ten thousand agents
/// reconnecting after a restart keep both workers of a small machine busy for seconds, and a
/// call queued behind their handshakes waited 3.5 s (BENCHMARKS.md, "Reconnect storms").
/// Everything the admin service touches is shared through handles, whichever runtime polls it.
async fn serve_admin_apart(
    listener: std::os::unix::net::UnixListener,
    admin: AdminService,
    mut stop: Shutdown,
) -> Result<(), RunError> {
    let (done, served) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("admin-socket".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io("starting the admin socket's runtime"))
                .and_then(|runtime| {
                    runtime.block_on(async move {
                        // Registered with this runtime's reactor, not the busy one's.
                        let listener = UnixListener::from_std(listener).map_err(io("serving the admin socket"))?;
                        Server::builder()
                            .add_service(pb::admin_service_server::AdminServiceServer::new(admin))
                            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                                stop.requested().await
                            })
                            .await
                            .map_err(RunError::from)
                    })
                });
            let _ = done.send(result);
        })
        .map_err(io("starting the admin socket's thread"))?;
    served.await.unwrap_or_else(|_| Err(RunError::Config("the admin socket's thread ended without an answer".into())))
}

/// Prepares the data directory and loads the configuration from the store it names; with the
/// etcd revision it was read at (where following other replicas' writes starts).
async fn open_configuration(options: &Options) -> Result<(Configuration, i64), RunError> {
    std::fs::create_dir_all(&options.data_dir).map_err(io(format!("creating {}", options.data_dir.display())))?;
    std::fs::set_permissions(&options.data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("restricting the data dir to its owner"))?;
    let store = match &options.store {
        StoreOptions::Embedded => Store::open(&options.data_dir)?,
        StoreOptions::Etcd(_) if options.ca_files.is_none() => {
            return Err(RunError::Config(
                "--store etcd://… needs the fleet CA every replica shares: give --ca-cert and --ca-key (create them \
                 once with `warden-cp create-ca`)"
                    .into(),
            ));
        }
        StoreOptions::Etcd(etcd) => Store::Etcd(Box::new(configuration::store::etcd::Etcd::open(etcd).await?)),
    };
    let loaded = store.load().await?;
    tracing::info!(store_id = %loaded.store_id, version = loaded.version, resources = loaded.resources.len(), revision = loaded.revision, "store loaded");
    let admission = Admission { allow_http_issuers: options.allow_http_issuers };
    let revision = loaded.revision;
    Ok((Configuration::new(store, FleetState::from_loaded(loaded), admission, options.max_config_bytes), revision))
}

/// This process among the replicas sharing the store: `<server name>:<port>/<random>`.
/// The OTLP configuration, with this replica's id as `service.instance.id` unless the operator
/// set one: the Collector makes it the `instance` label, and replicas sharing one (behind one
/// service name and port) would overwrite each other's series there.
fn otlp_config(options: &Options, replica: &str) -> telemetry::otlp::Config {
    let mut otlp = options.otlp.clone();
    if !otlp.resource.iter().any(|(k, _)| k == "service.instance.id") {
        otlp.resource.push(("service.instance.id".into(), replica.to_string()));
    }
    otlp
}

/// This process among the replicas sharing the store: `<server name>:<port>/<random>`.
fn replica_id(options: &Options, listener: &TcpListener) -> String {
    format!(
        "{}:{}/{:06x}",
        options.server_names.first().map_or("localhost", String::as_str),
        listener.local_addr().map_or(0, |a| a.port()),
        rand::random::<u32>() & 0xff_ffff
    )
}
