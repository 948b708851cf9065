//! `warden-cp`: parses flags, binds, and hands off to [`control_plane::run`].
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// Warden control plane.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Data directory: the embedded store, the generated fleet CA and the admin socket.
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = "/var/lib/warden-cp")]
    data_dir: PathBuf,
    /// `embedded` (a file in the data dir; one control plane) or `etcd://host:port[,host:port…]`
    /// (shared by several replicas).
    #[arg(long, env = "WARDEN_STORE", default_value = "embedded")]
    store: String,
    /// Key prefix of this fleet's data in etcd.
    #[arg(long, env = "WARDEN_ETCD_PREFIX", default_value = "/warden")]
    etcd_prefix: String,
    /// CA certificate (PEM) of etcd's members: connect to etcd over TLS.
    #[arg(long, env = "WARDEN_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) to present to etcd.
    #[arg(long, env = "WARDEN_ETCD_CERT", requires_all = ["etcd_key", "etcd_ca"])]
    etcd_cert: Option<PathBuf>,
    /// Client key (PEM) to present to etcd.
    #[arg(long, env = "WARDEN_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Lifetime of this replica's etcd lease: after a crash, its leadership and its agents'
    /// presence last this long.
    #[arg(long, default_value = "10s", value_parser = warden_core::duration::parse)]
    etcd_lease_ttl: Duration,
    /// Address of the agent/operator mTLS port.
    #[arg(long, env = "WARDEN_LISTEN", default_value = "0.0.0.0:7443")]
    listen: SocketAddr,
    /// Admin socket path [default: <data-dir>/admin.sock]. No environment variable: operators
    /// export WARDEN_ADMIN_SOCKET for wardenctl, and a control plane started from that shell
    /// must not take over another one's socket.
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// SPIFFE trust domain of fleet identities.
    #[arg(long, env = "WARDEN_TRUST_DOMAIN", default_value = "warden.local")]
    trust_domain: String,
    /// Names and addresses agents use to reach this control plane (repeatable; serving
    /// certificate SANs).
    #[arg(long = "server-name", env = "WARDEN_SERVER_NAMES", value_delimiter = ',', default_values = ["localhost", "127.0.0.1", "::1"])]
    server_names: Vec<String>,
    /// Operator-provided fleet CA certificate (PEM); share it between replicas.
    #[arg(long, env = "WARDEN_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Operator-provided fleet CA key (PEM).
    #[arg(long, env = "WARDEN_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Lifetime of agent client certificates.
    #[arg(long, env = "WARDEN_AGENT_CERT_TTL", default_value = "24h", value_parser = warden_core::duration::parse)]
    agent_cert_ttl: Duration,
    /// Lifetime of the serving certificates the fleet CA issues (the agents' port's, and the
    /// token service's and console's without files); each is issued again two thirds into it,
    /// while the control plane runs.
    #[arg(long, default_value = "90d", value_parser = warden_core::duration::parse)]
    serving_cert_ttl: Duration,
    /// Who may join with a platform's token in place of a join token: a YAML file of rules
    /// (Kubernetes projected service-account tokens; see deploy/kubernetes/README.md).
    #[arg(long, env = "WARDEN_JOIN_ATTESTATION")]
    join_attestation: Option<PathBuf>,
    /// Largest configuration, as one encoded snapshot, an apply may produce (bytes; at most
    /// what agents accept, 32 MiB). An apply past it is refused with the limit named.
    #[arg(long, default_value_t = proto::MAX_CONFIG_MESSAGE_BYTES)]
    max_config_bytes: usize,
    /// Heartbeat interval on agent streams.
    #[arg(long, default_value = "15s", value_parser = warden_core::duration::parse)]
    heartbeat_interval: Duration,
    /// Accept http:// issuer URLs. For local testing only.
    #[arg(long)]
    allow_http_issuers: bool,
    /// Issuer key refresh interval when the provider sends no Cache-Control max-age.
    #[arg(long, default_value = "1h", value_parser = warden_core::duration::parse)]
    key_refresh_default: Duration,
    /// Lower bound on the provider's max-age.
    #[arg(long, default_value = "5m", value_parser = warden_core::duration::parse)]
    key_refresh_min: Duration,
    /// Upper bound on the provider's max-age.
    #[arg(long, default_value = "24h", value_parser = warden_core::duration::parse)]
    key_refresh_max: Duration,
    /// How often an agent's request for a prompt key refresh (unknown kid) is honoured per issuer.
    #[arg(long, default_value = "30s", value_parser = warden_core::duration::parse)]
    key_refresh_request_interval: Duration,
    /// Decision records kept in the data directory; the oldest are deleted past this.
    #[arg(long, default_value_t = 5_000_000)]
    decision_retention: u64,
    /// Serve `/metrics` (Prometheus text), `/healthz` and `/readyz` on this address.
    #[arg(long, env = "WARDEN_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// How long a metric series reads 0 after its labels are first known (a server or agent
    /// added) or seen in a decision record (a tool's name), so that rate() and increase()
    /// count its first events: at least the longest scrape interval (with OTLP metrics on, the
    /// control plane makes it at least the export interval).
    #[arg(long, default_value = "60s", value_parser = warden_core::duration::parse)]
    metrics_new_series_delay: Duration,
    /// Serve the read-only console (fleet, resources, decisions, explanations) on this loopback
    /// address; it has no login of its own, so other addresses are refused unless
    /// --console-mtls.
    #[arg(long, env = "WARDEN_CONSOLE_LISTEN")]
    console_listen: Option<std::net::SocketAddr>,
    /// Serve the console over HTTPS to operators only: each request must come with an operator
    /// client certificate (`wardenctl operator-cert create`) the registry still lists. Allows
    /// any --console-listen address.
    #[arg(long, env = "WARDEN_CONSOLE_MTLS", requires = "console_listen", value_parser = clap::builder::FalseyValueParser::new())]
    console_mtls: bool,
    /// The console's certificate chain (PEM), from a CA browsers already trust (the
    /// organisation's) [default: one from the fleet CA for the --server-name values]. Client
    /// certificates stay the fleet CA's.
    #[arg(long, env = "WARDEN_CONSOLE_TLS_CERT", requires_all = ["console_tls_key", "console_mtls"])]
    console_tls_cert: Option<PathBuf>,
    /// The console's private key (PEM).
    #[arg(long, env = "WARDEN_CONSOLE_TLS_KEY", requires = "console_tls_cert")]
    console_tls_key: Option<PathBuf>,
    /// Serve the token service (RFC 8693 token exchange, RFC 7009 revocation, RFC 8414
    /// metadata, JWKS) over HTTPS on this address.
    #[arg(long, env = "WARDEN_TOKEN_LISTEN")]
    token_listen: Option<SocketAddr>,
    /// The token service's certificate chain (PEM) [default: one from the fleet CA for the
    /// --server-name values].
    #[arg(long, env = "WARDEN_TOKEN_TLS_CERT", requires = "token_tls_key")]
    token_tls_cert: Option<PathBuf>,
    /// The token service's private key (PEM).
    #[arg(long, env = "WARDEN_TOKEN_TLS_KEY", requires = "token_tls_cert")]
    token_tls_key: Option<PathBuf>,
    /// How long a signing key signs task tokens before the next replaces it.
    #[arg(long, default_value = "6h", value_parser = warden_core::duration::parse)]
    signing_key_rotation: Duration,
    /// A new signing key is published this long before it signs (and until the connected
    /// agents applied it, up to 30s).
    #[arg(long, default_value = "2s", value_parser = warden_core::duration::parse)]
    signing_key_publish_delay: Duration,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Creates a fleet CA (ca.crt, ca.key) in a directory, for replicas to share through
    /// --ca-cert and --ca-key.
    CreateCa {
        /// Where to write ca.crt and ca.key (existing files are kept).
        #[arg(long)]
        out: PathBuf,
    },
    /// Copies the embedded store in --data-dir into the etcd store named by --store (an empty
    /// prefix), keeping the store's identity and version so agents resume where they are.
    /// Stop the control plane first.
    Migrate,
}

/// `warden-cp migrate`: the embedded store in `data_dir` into etcd.
async fn migrate(
    data_dir: &std::path::Path,
    etcd: &control_plane::configuration::store::etcd::Options,
) -> anyhow::Result<()> {
    use control_plane::configuration::store::{embedded::Embedded, etcd::Etcd};
    if !data_dir.join("warden.redb").exists() {
        anyhow::bail!("no embedded store in {}", data_dir.display());
    }
    // Opening takes the file's lock: a control plane still running on it is refused here.
    let dump = Embedded::open(data_dir).and_then(|s| s.dump()).with_context(|| {
        format!("reading {} (stop its control plane first)", data_dir.join("warden.redb").display())
    })?;
    let summary = format!(
        "store {} at version {}: {} resources, {} key sets, {} audit entries, {} join tokens, {} agents, {} \
         operators, {} recent agent deletions",
        dump.store_id,
        dump.version,
        dump.resources.len(),
        dump.keys.len(),
        dump.audit.len(),
        dump.join_tokens.len(),
        dump.agents.len(),
        dump.operators.len(),
        dump.attestation_floors.len(),
    );
    let target = Etcd::connect(etcd).await?;
    // Within etcd's default --max-txn-ops (128).
    target.import(dump, 100).await?;
    println!("migrated {summary} into {}/", etcd.prefix);
    if data_dir.join("ca.key").exists() {
        println!(
            "the fleet CA stays {0}/ca.crt and {0}/ca.key: give both to every replica (--ca-cert, --ca-key)",
            data_dir.display()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs that go to files stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match start().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Printed whole, without a backtrace: this is what an operator reads.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn start() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::CreateCa { out }) = &args.command {
        if out.join("ca.key").exists() {
            anyhow::bail!("{} already holds a CA; nothing written", out.display());
        }
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let ca = control_plane::fleet::pki::FleetCa::load_or_create(
            control_plane::fleet::pki::CaSource::DataDir(out),
            &args.trust_domain,
        )?;
        println!("{}/ca.crt and ca.key created (trust domain {}, pin {})", out.display(), args.trust_domain, ca.pin());
        return Ok(());
    }
    let store = match args.store.as_str() {
        "embedded" => control_plane::StoreOptions::Embedded,
        url => {
            let mut etcd = control_plane::configuration::store::etcd::Options::parse(url, &args.etcd_prefix)
                .map_err(|e| anyhow::anyhow!("--store: {e}"))?;
            etcd.tls = args.etcd_ca.clone().map(|ca| control_plane::configuration::store::etcd::Tls {
                ca,
                identity: args.etcd_cert.clone().zip(args.etcd_key.clone()),
            });
            control_plane::StoreOptions::Etcd(etcd)
        }
    };
    if let Some(Command::Migrate) = &args.command {
        let control_plane::StoreOptions::Etcd(etcd) = &store else {
            anyhow::bail!("migrate: --store must name the etcd store to copy into (etcd://host:port[,…])");
        };
        return migrate(&args.data_dir, etcd).await;
    }
    if args.agent_cert_ttl < Duration::from_secs(10) {
        anyhow::bail!("--agent-cert-ttl must be at least 10s");
    }
    if args.serving_cert_ttl < Duration::from_secs(10) || args.serving_cert_ttl > control_plane::serving::MAX_TTL {
        anyhow::bail!("--serving-cert-ttl must be at least 10s and at most 3650d (the fleet CA's own life)");
    }
    let join_attestation = match &args.join_attestation {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            warden_core::attestation::JoinAttestation::parse(&text)
                .with_context(|| format!("--join-attestation {}", path.display()))?
        }
        None => Default::default(),
    };
    if args.max_config_bytes == 0 || args.max_config_bytes > proto::MAX_CONFIG_MESSAGE_BYTES {
        anyhow::bail!(
            "--max-config-bytes must be between 1 and {} (what agents accept in one message)",
            proto::MAX_CONFIG_MESSAGE_BYTES
        );
    }
    if args.signing_key_rotation < Duration::from_secs(1) {
        anyhow::bail!("--signing-key-rotation must be at least 1s");
    }
    if args.key_refresh_min.is_zero() || args.key_refresh_min > args.key_refresh_max {
        anyhow::bail!("--key-refresh-min must be more than 0s and at most --key-refresh-max");
    }
    let options = control_plane::Options {
        admin_socket: args.admin_socket.unwrap_or_else(|| args.data_dir.join("admin.sock")),
        data_dir: args.data_dir,
        store,
        trust_domain: args.trust_domain,
        server_names: args.server_names,
        ca_files: args.ca_cert.zip(args.ca_key),
        agent_cert_ttl: args.agent_cert_ttl,
        serving_cert_ttl: args.serving_cert_ttl,
        join_attestation,
        max_config_bytes: args.max_config_bytes,
        heartbeat_interval: args.heartbeat_interval,
        allow_http_issuers: args.allow_http_issuers,
        key_refresh: control_plane::tokens::issuer_keys::RefreshPolicy {
            default_interval: args.key_refresh_default,
            min_interval: args.key_refresh_min,
            max_interval: args.key_refresh_max,
            request_interval: args.key_refresh_request_interval,
        },
        decision_retention: args.decision_retention,
        metrics_listen: args.metrics_listen,
        metrics_new_series_delay: args.metrics_new_series_delay,
        console_listen: args.console_listen,
        console_operators: args.console_mtls,
        console_tls_files: args.console_tls_cert.zip(args.console_tls_key),
        token_listen: args.token_listen,
        token_tls_files: args.token_tls_cert.zip(args.token_tls_key),
        lease_ttl: args.etcd_lease_ttl,
        signing: control_plane::tokens::signing::Timing {
            rotation: args.signing_key_rotation,
            publish_delay: args.signing_key_publish_delay,
            ..Default::default()
        },
        otlp: warden_otlp::Config::from_env("warden-cp", warden_otlp::process_env)?,
    };
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    control_plane::run(options, listener, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
