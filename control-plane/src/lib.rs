//! `warden-cp`: the fleet's source of truth.
//!
//! It stores resources (embedded redb store), validates every write against the whole
//! configuration, runs the fleet CA, admits agents with one-time join tokens, and pushes each
//! new configuration version to every connected agent over its mTLS stream.
//!
//! [`run`] is the whole server: the binary's `main` only parses flags and binds.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agents;
pub mod decisions;
pub mod exchange_log;
pub mod issuer_keys;
pub mod metrics;
pub mod otlp;
pub mod peer;
pub mod pki;
pub mod presence;
pub mod replicas;
pub mod revocation_table;
pub mod revocations;
pub mod signing;
pub mod state;
pub mod store;
pub mod token_service;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::v1 as pb;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Mutex, watch};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use warden_core::{Admission, ResourceKey};

use crate::pki::{CaSource, FleetCa};
use crate::presence::Presence;
use crate::state::{FleetState, WriteError};
use crate::store::{AuditEntry, Change, Store};

/// Where the configuration is stored.
#[derive(Clone, Debug)]
pub enum StoreOptions {
    /// The embedded store in the data directory: one control plane.
    Embedded,
    /// etcd, shared by several control-plane replicas.
    Etcd(store::etcd::Options),
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
    /// Largest encoded configuration snapshot a write may produce (at most
    /// [`proto::MAX_CONFIG_MESSAGE_BYTES`], what agents decode).
    pub max_config_bytes: usize,
    /// How often each stream carries a heartbeat when nothing else moves.
    pub heartbeat_interval: Duration,
    /// Accept http:// issuer URLs (local testing only).
    pub allow_http_issuers: bool,
    /// When issuers' keys are refreshed.
    pub key_refresh: issuer_keys::RefreshPolicy,
    /// Decision records kept (the oldest are deleted past this).
    pub decision_retention: u64,
    /// OpenTelemetry export (from the `OTEL_*` variables).
    pub otlp: otlp::Config,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the token service (token exchange, revocation) is served over HTTPS, if anywhere.
    pub token_listen: Option<SocketAddr>,
    /// The token service's certificate chain and key (PEM files); without them it presents a
    /// certificate from the fleet CA for `server_names`.
    pub token_tls_files: Option<(PathBuf, PathBuf)>,
    /// Rotation and publication of the token service's signing keys.
    pub signing: signing::Timing,
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
    Store(#[from] store::StoreError),
    /// The decision store could not be opened.
    #[error(transparent)]
    Decisions(#[from] decisions::DecisionError),
    /// The CA could not be loaded or a certificate issued.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// A gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The options do not work together.
    #[error("{0}")]
    Config(String),
}

/// State shared by every service of one control plane.
pub struct ControlPlane {
    options: Options,
    admission: Admission,
    store: Arc<Store>,
    ca: FleetCa,
    /// The current configuration; every agent session watches it.
    state: Arc<watch::Sender<Arc<FleetState>>>,
    /// Serialises writes so each plans against the state it commits over.
    writer: Mutex<()>,
    presence: Presence,
    /// Decision records from the agents.
    decisions: Arc<decisions::Decisions>,
    /// Counts of the stored decision records, for `/metrics`.
    decision_counts: metrics::Counts,
    /// The OTLP log export's counts (zero when it is off).
    export_stats: Arc<otlp::ExportStats>,
    /// When this process started: the start of every cumulative metric.
    started: SystemTime,
    /// Issuer key resolution status, for operators.
    key_status: std::sync::Mutex<std::collections::HashMap<String, issuer_keys::KeyStatus>>,
    /// Agents' requests for a prompt key refresh, by issuer name.
    key_refresh: tokio::sync::mpsc::Sender<String>,
    /// The token service's signing key (in memory only).
    signing_keys: signing::SigningKeys,
    /// Token exchanges, on their way to the decision store.
    exchange_log: exchange_log::ExchangeLog,
    /// This process among the replicas sharing the store: `<server name>:<port>/<random>`.
    replica: String,
    /// Whether this replica does the singleton duties (scheduled key refresh, expiry of
    /// revocations, audit export): always on the embedded store, the elected one on etcd.
    leading: watch::Sender<bool>,
    /// Agents deleted from the registry (by this replica or, watched, another): each session
    /// ends its stream when its agent is named, or checks the registry on `None` (deletions
    /// may have been missed).
    deleted_agents: tokio::sync::broadcast::Sender<Option<String>>,
    /// Bounds the revocations token holders and agents may write.
    revocation_writes: revocations::WriteLimit,
    /// Revocation writes waiting to be committed together.
    revocation_queue: revocations::Queue,
    shutdown: watch::Receiver<bool>,
}

/// Milliseconds since the epoch.
pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Attempts of one write when other replicas keep writing first.
const WRITE_ATTEMPTS: usize = 5;

impl ControlPlane {
    /// The one write path: plans against the current state with `plan` (which also returns
    /// what the caller wants to know about the plan), commits, and publishes. Writes are
    /// serialised on this replica; when another replica sharing the store wrote first, waits
    /// until its write arrived here and plans again (optimistic concurrency). A no-op plan
    /// commits nothing and answers the current version.
    pub(crate) async fn write<T>(
        &self,
        actor: &str,
        operation: &str,
        mut plan: impl FnMut(&Arc<FleetState>) -> Result<(state::Plan, T), WriteError>,
    ) -> Result<(u64, T), WriteError> {
        let _writer = self.writer.lock().await;
        let mut attempt = 1;
        loop {
            let current = self.state.borrow().clone();
            let (planned, answer) = plan(&current)?;
            if planned.is_noop() {
                return Ok((current.version, answer));
            }
            match self.commit(&current, planned, actor, operation).await {
                Err(WriteError::Store(store::StoreError::VersionMoved { found, .. })) if attempt < WRITE_ATTEMPTS => {
                    tracing::info!(%operation, base = current.version, found, "another replica wrote first; planning again");
                    let mut states = self.state.subscribe();
                    let arrived = states.wait_for(|s| s.version >= found);
                    let _ = tokio::time::timeout(Duration::from_secs(5), arrived).await;
                    attempt += 1;
                }
                result => return result.map(|version| (version, answer)),
            }
        }
    }

    /// Publishes `next` to every agent session, unless this replica already holds that version
    /// or a newer one (its own write and the watch of it race to get here).
    pub(crate) fn publish(&self, next: FleetState) -> bool {
        publish_to(&self.state, next)
    }

    /// Writes a validated plan, records who did it, and publishes the new state to every agent
    /// session. The caller holds the writer lock.
    async fn commit(
        &self,
        current: &Arc<FleetState>,
        plan: state::Plan,
        actor: &str,
        operation: &str,
    ) -> Result<u64, WriteError> {
        let version = current.version + 1;
        let time_unix_ms = now_unix_ms();
        let audit = |key: &ResourceKey, previous: u64, by: Option<&(String, String)>| AuditEntry {
            version,
            time_unix_ms,
            actor: by.map_or(actor, |(a, _)| a.as_str()).to_string(),
            operation: by.map_or(operation, |(_, o)| o.as_str()).to_string(),
            kind: key.kind.as_str().to_string(),
            name: key.name.clone(),
            previous_resource_version: previous,
        };
        let mut entries: Vec<AuditEntry> = Vec::new();
        for (i, (key, action, previous)) in plan.results.iter().enumerate() {
            if *action != state::Action::Unchanged {
                entries.push(audit(key, *previous, plan.actors.get(i)));
            }
        }
        for (key, previous) in &plan.deletes {
            entries.push(audit(key, *previous, None));
        }
        for (issuer, _) in &plan.key_puts {
            entries.push(audit(&ResourceKey { kind: warden_core::Kind::TrustedIssuer, name: issuer.clone() }, 0, None));
        }
        let puts: Vec<(ResourceKey, Vec<u8>)> = plan.puts.iter().map(|(k, _, j)| (k.clone(), j.clone())).collect();
        let deletes: Vec<ResourceKey> = plan.deletes.iter().map(|(k, _)| k.clone()).collect();
        let key_puts = plan.key_puts.clone();
        let key_deletes = plan.key_deletes.clone();
        let entries_logged = entries.clone();
        let (store, states) = (self.store.clone(), self.state.clone());
        let base = current.version;
        let next = state::next_state(current, plan, version);
        // Refused here, naming the limit, rather than met by an agent that cannot load it.
        let size = next.snapshot_bytes();
        if size > self.options.max_config_bytes {
            return Err(WriteError::TooLarge { size, limit: self.options.max_config_bytes });
        }
        // Committed and published on the blocking pool: a caller that goes away mid-write (an
        // operator's Ctrl-C) cannot leave a committed version unpublished.
        let written = tokio::task::spawn_blocking(move || {
            let changes: Vec<Change<'_>> = puts
                .iter()
                .map(|(key, json)| Change::Put { key, json })
                .chain(deletes.iter().map(Change::Delete))
                .chain(key_puts.iter().map(|(issuer, record)| Change::PutKeys { issuer, record }))
                .chain(key_deletes.iter().map(|issuer| Change::DeleteKeys(issuer)))
                .collect();
            let written = store.commit(base, &changes, &entries)?;
            // Even if the watch of this write got here first: then this changes nothing.
            publish_to(&states, next);
            Ok::<_, crate::store::StoreError>(written)
        })
        .await
        .map_err(|e| {
            WriteError::Store(crate::store::StoreError::Corrupt { key: "commit".into(), message: e.to_string() })
        })??;
        debug_assert_eq!(written, version);
        for entry in &entries_logged {
            let (actor, operation) = (&entry.actor, &entry.operation);
            tracing::info!(%actor, resource = %format!("{}/{}", entry.kind, entry.name), version, "{operation}");
        }
        Ok(version)
    }
}

/// Publishes `next` unless `states` holds that version or a newer one already.
fn publish_to(states: &watch::Sender<Arc<FleetState>>, mut next: FleetState) -> bool {
    states.send_if_modified(move |held| {
        let newer = next.version > held.version || next.store_id != held.store_id;
        if newer {
            next.published(held);
            *held = Arc::new(next);
        }
        newer
    })
}

/// The token service's TLS configuration: the operator's certificate, or one from the fleet CA.
fn token_tls(options: &Options, ca: &FleetCa) -> Result<Arc<rustls::ServerConfig>, RunError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (chain_pem, key_pem) = match &options.token_tls_files {
        Some((cert, key)) => (
            std::fs::read(cert).map_err(io(format!("reading {}", cert.display())))?,
            std::fs::read(key).map_err(io(format!("reading {}", key.display())))?,
        ),
        None => {
            let (chain, key) = ca.issue_server(&options.server_names, Duration::from_secs(90 * 24 * 3600))?;
            (chain.into_bytes(), key.into_bytes())
        }
    };
    let invalid = |what: &str, e: &dyn std::fmt::Display| RunError::Io {
        context: format!("the token service's {what}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&chain_pem).collect::<Result<_, _>>().map_err(|e| invalid("certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| invalid("key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", &e))?
        // A client may prove a certificate's key: its task token is then bound to it (RFC 8705).
        .with_client_cert_verifier(warden_tls::ProofOfPossession::optional())
        .with_single_cert(chain, key)
        .map_err(|e| invalid("certificate", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let context = context.into();
    move |source| RunError::Io { context, source }
}

/// Runs the control plane until `shutdown` resolves: the agent/operator TLS port on `listener`
/// and the admin socket. On shutdown, agent streams are closed and both servers drain.
pub async fn run(
    options: Options,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
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
        StoreOptions::Etcd(etcd) => Store::Etcd(Box::new(store::etcd::Etcd::open(etcd).await?)),
    };
    let loaded = match &store {
        Store::Etcd(etcd) => etcd.read_all().await?,
        embedded => embedded.load()?,
    };
    let revision = loaded.revision;
    tracing::info!(store_id = %loaded.store_id, version = loaded.version, resources = loaded.resources.len(), revision, "store loaded");
    let state = FleetState::from_loaded(loaded);

    let ca_source = match &options.ca_files {
        Some((cert, key)) => CaSource::Files { cert, key },
        None => CaSource::DataDir(&options.data_dir),
    };
    let ca = FleetCa::load_or_create(ca_source, &options.trust_domain)?;
    // The serving certificate is reissued at every start; its key is never written down.
    let (chain_pem, key_pem) = ca.issue_server(&options.server_names, Duration::from_secs(90 * 24 * 3600))?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(chain_pem, key_pem))
        .client_ca_root(Certificate::from_pem(ca.cert_pem()))
        // Join is the one call made before the agent has a certificate; every other call checks
        // the caller's certificate identity itself.
        .client_auth_optional(true);

    let decision_counts = metrics::Counts::default();
    let decisions =
        Arc::new(decisions::Decisions::open(&options.data_dir, options.decision_retention, decision_counts.clone())?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (refresh_tx, refresh_rx) = tokio::sync::mpsc::channel(64);
    let (exchange_log, exchange_writer) = exchange_log::ExchangeLog::new();
    let token_tls = match &options.token_listen {
        Some(_) => Some(token_tls(&options, &ca)?),
        None => None,
    };
    let cp = Arc::new(ControlPlane {
        admission: Admission { allow_http_issuers: options.allow_http_issuers },
        store: Arc::new(store),
        ca,
        state: Arc::new(watch::Sender::new(Arc::new(state))),
        writer: Mutex::new(()),
        presence: Presence::default(),
        decisions,
        decision_counts,
        export_stats: Arc::default(),
        started: SystemTime::now(),
        key_status: Default::default(),
        key_refresh: refresh_tx,
        signing_keys: Default::default(),
        exchange_log,
        replica: format!(
            "{}:{}/{:06x}",
            options.server_names.first().map_or("localhost", String::as_str),
            listener.local_addr().map_or(0, |a| a.port()),
            rand::random::<u32>() & 0xff_ffff
        ),
        leading: watch::Sender::new(matches!(options.store, StoreOptions::Embedded)),
        deleted_agents: tokio::sync::broadcast::Sender::new(256),
        revocation_writes: Default::default(),
        revocation_queue: revocations::Queue::default(),
        shutdown: stop_rx.clone(),
        options,
    });

    let _ = std::fs::remove_file(&cp.options.admin_socket);
    let admin_listener = UnixListener::bind(&cp.options.admin_socket)
        .map_err(io(format!("binding {}", cp.options.admin_socket.display())))?;
    std::fs::set_permissions(&cp.options.admin_socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io("restricting the admin socket to its owner"))?;

    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, admin_socket = %cp.options.admin_socket.display(), "control plane listening");

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tls_server = Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(pb::agent_service_server::AgentServiceServer::new(agents::AgentService::new(cp.clone())))
        .add_service(pb::admin_service_server::AdminServiceServer::new(admin::AdminService::new(cp.clone())))
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stopped(stop_rx.clone()));
    let admin_server = Server::builder()
        .add_service(pb::admin_service_server::AdminServiceServer::new(admin::AdminService::new(cp.clone())))
        .serve_with_incoming_shutdown(UnixListenerStream::new(admin_listener), stopped(stop_rx.clone()));

    tokio::spawn(replicas::follow(cp.clone(), revision));
    let lease = tokio::spawn(replicas::hold_lease(cp.clone()));
    tokio::spawn(issuer_keys::run(cp.clone(), refresh_rx));
    tokio::spawn(signing::run(cp.clone()));
    tokio::spawn(revocations::expire(cp.clone()));
    tokio::spawn(revocations::coalesce(cp.clone()));
    let exchange_writer = tokio::spawn(exchange_log::run(exchange_writer, cp.decisions.clone(), stop_rx.clone()));
    let token_server = match (cp.options.token_listen, token_tls) {
        (Some(addr), Some(tls)) => {
            let listener = TcpListener::bind(addr).await.map_err(io(format!("binding the token service {addr}")))?;
            Some(tokio::spawn(token_service::serve(cp.clone(), listener, tls, stop_rx.clone())))
        }
        _ => None,
    };
    let exporters: Vec<_> = match cp.options.otlp.logs.clone() {
        Some(endpoint) => {
            let resource = cp.options.otlp.resource.clone();
            let (decisions, audit) = (
                cp.decisions.clone(),
                Arc::new(otlp::AuditTrail { store: cp.store.clone(), leading: cp.leading.subscribe() }),
            );
            vec![
                tokio::spawn(otlp::export_logs(
                    decisions,
                    endpoint.clone(),
                    resource.clone(),
                    cp.export_stats.clone(),
                    stop_rx.clone(),
                )),
                tokio::spawn(otlp::export_logs(audit, endpoint, resource, Arc::default(), stop_rx.clone())),
            ]
        }
        None => Vec::new(),
    };
    let metrics_exporter = cp.options.otlp.metrics.clone().map(|endpoint| {
        let (resource, interval) = (cp.options.otlp.resource.clone(), cp.options.otlp.metric_interval);
        tokio::spawn(otlp::export_metrics(cp.clone(), endpoint, resource, interval, stop_rx.clone()))
    });
    let metrics_server = match cp.options.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(io(format!("binding the metrics endpoint {addr}")))?;
            Some(tokio::spawn(metrics::serve(cp.clone(), listener, stop_rx.clone())))
        }
        None => None,
    };
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: closing agent streams");
        let _ = stop_tx.send(true);
    });
    let (a, b) = tokio::join!(tls_server, admin_server);
    for exporter in exporters {
        let _ = exporter.await;
    }
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    if let Some(exporter) = metrics_exporter {
        let _ = exporter.await;
    }
    if let Some(server) = token_server {
        let _ = server.await;
    }
    let _ = exchange_writer.await;
    // Gives up leadership and this replica's presence entries at once.
    let _ = lease.await;
    let _ = std::fs::remove_file(&cp.options.admin_socket);
    a?;
    b?;
    tracing::info!("control plane stopped");
    Ok(())
}
