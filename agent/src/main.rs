//! `warden-agent`: parses flags and hands off to [`agent::run`].
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Warden agent.
#[derive(Parser, Debug)]
#[command(version, about, subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// This agent's id [default: the host name].
    #[arg(long, env = "WARDEN_AGENT_ID")]
    id: Option<String>,
    /// Labels, `key=value` (repeatable or comma-separated).
    #[arg(long = "label", env = "WARDEN_AGENT_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// Data directory: identity and the last good configuration.
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = "/var/lib/warden-agent")]
    data_dir: PathBuf,
    /// Control-plane addresses `host:port` (repeatable or comma-separated).
    #[arg(long = "control-plane", env = "WARDEN_CONTROL_PLANES", value_delimiter = ',', required = true)]
    control_planes: Vec<String>,
    /// One-time join token, needed on the first start only.
    #[arg(long, env = "WARDEN_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// Join with the token in this file, issued by the platform to where the agent runs (a
    /// Kubernetes projected service-account token), in place of a join token; the control
    /// plane's --join-attestation rules decide. Needed on the first start only.
    #[arg(long, env = "WARDEN_JOIN_ATTESTATION_FILE", conflicts_with = "join_token", requires = "fleet_ca")]
    join_attestation_file: Option<PathBuf>,
    /// The fleet CA certificate (PEM) the control plane's certificate must chain to, for a join
    /// with --join-attestation-file (a join token carries its own pin).
    #[arg(long, env = "WARDEN_FLEET_CA", requires = "join_attestation_file")]
    fleet_ca: Option<PathBuf>,
    /// Local status endpoint (`/status`, `/healthz`, `/readyz`).
    #[arg(long, env = "WARDEN_STATUS_LISTEN", default_value = "127.0.0.1:7480")]
    status_listen: SocketAddr,
    /// First reconnect delay.
    #[arg(long, default_value = "200ms", value_parser = warden_core::duration::parse)]
    backoff_base: Duration,
    /// Largest reconnect delay.
    #[arg(long, default_value = "10s", value_parser = warden_core::duration::parse)]
    backoff_max: Duration,
    /// Heartbeat interval.
    #[arg(long, default_value = "15s", value_parser = warden_core::duration::parse)]
    heartbeat_interval: Duration,
    /// Largest MCP request body the gateway accepts, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_request_bytes: usize,
    /// Deepest JSON nesting the gateway accepts.
    #[arg(long, default_value_t = 64)]
    max_json_depth: usize,
    /// Most JSON-RPC messages in one batch.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Most arguments (top-level names) of one tools/call or prompts/get.
    #[arg(long, default_value_t = 256)]
    max_arguments: usize,
    /// How long an upstream MCP server may take to start answering a request.
    #[arg(long, default_value = "300s", value_parser = warden_core::duration::parse)]
    upstream_response_timeout: Duration,
    /// How long reading a whole body may take: a caller's request, an upstream's list answer.
    #[arg(long, default_value = "30s", value_parser = warden_core::duration::parse)]
    body_read_timeout: Duration,
    /// How long a caller may take to send a request's headers (and stay idle between requests).
    #[arg(long, default_value = "10s", value_parser = warden_core::duration::parse)]
    header_read_timeout: Duration,
    /// Connections each gateway listener serves at a time; past it, new ones are closed.
    #[arg(long, default_value_t = 4096)]
    max_connections_per_listener: usize,
    /// DPoP proofs each server remembers against replay (each for about a minute).
    #[arg(long, default_value_t = agent::gateway::DPOP_PROOFS_REMEMBERED)]
    dpop_proofs_per_server: usize,
    /// Of those, the most one DPoP key may hold.
    #[arg(long, default_value_t = agent::gateway::DPOP_PROOFS_PER_KEY)]
    dpop_proofs_per_key: usize,
    /// Gateway worker threads [default: one per CPU].
    #[arg(long)]
    gateway_workers: Option<usize>,
    /// The gateway's TLS certificate chain (PEM), for servers with an https resource.
    #[arg(long, requires = "gateway_tls_key")]
    gateway_tls_cert: Option<PathBuf>,
    /// The gateway's TLS private key (PEM).
    #[arg(long, requires = "gateway_tls_cert")]
    gateway_tls_key: Option<PathBuf>,
    /// Serve the local check API (Envoy ext_authz v3 gRPC) on `unix:/path` or a loopback `host:port`.
    #[arg(long, env = "WARDEN_EXT_AUTHZ_LISTEN")]
    ext_authz_listen: Option<String>,
    /// The key sealing MCP session ids to the workload that opened them (32 bytes; created,
    /// 0600, when missing). Agents in front of the same upstream may share one file to accept
    /// each other's sessions. [default: <data-dir>/session.key]
    #[arg(long)]
    session_key: Option<PathBuf>,
    /// Decision records held in memory on their way to the control plane.
    #[arg(long, default_value_t = 20_000)]
    decision_memory_records: usize,
    /// Decision records kept on disk (in the data directory) while the control plane is
    /// unreachable; past this, records are dropped and the drops counted and reported.
    #[arg(long, default_value_t = 1_000_000)]
    decision_spool_records: u64,
    /// Keep no decision records at all (nothing is sent to the control plane).
    #[arg(long)]
    no_decision_records: bool,
    /// Files or directories to scan for static secrets in MCP configuration, besides the
    /// default places in users' home directories (repeatable or comma-separated).
    #[arg(long = "scan-path", env = "WARDEN_SCAN_PATHS", value_delimiter = ',')]
    scan_paths: Vec<PathBuf>,
    /// Do not scan the default places in users' home directories (/root, /home/*).
    #[arg(long)]
    no_scan_homes: bool,
    /// How often to scan this host's MCP configuration for static secrets (0s: never).
    #[arg(long, default_value = "10m", value_parser = warden_core::duration::parse)]
    scan_interval: Duration,
    /// How often the files a scan read are checked for changes (a change is scanned at once).
    #[arg(long, default_value = "15s", value_parser = warden_core::duration::parse)]
    scan_watch_interval: Duration,
    /// The agent's own home directory, scanned with the others.
    #[arg(long, env = "HOME", hide = true)]
    home: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Scan files and directories for static secrets in MCP configuration, as the agent does,
    /// and exit with status 1 when anything is found (for a pre-commit hook or a CI step).
    /// Values are never printed: where each secret is, its kind and a fingerprint.
    Scan(ScanArgs),
}

#[derive(clap::Args, Debug)]
struct ScanArgs {
    /// Files and directories [default: the default places in this user's home directory].
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, default_value = "table", value_parser = ["table", "json", "sarif"])]
    output: String,
    /// A file of 32 bytes to key fingerprints with, so runs can be compared [default: a
    /// random key for this run].
    #[arg(long)]
    fingerprint_key_file: Option<PathBuf>,
    /// The home directory whose default places are scanned when no path is given.
    #[arg(long, env = "HOME", hide = true)]
    home: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs that go to files stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(Command::Scan(scan_args)) = args.command {
        return scan(scan_args);
    }
    match start(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Printed whole, without a backtrace: this is what an operator reads.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `warden-agent scan`: 0 when nothing was found, 1 when something was, 2 when the scan could
/// not run.
fn scan(args: ScanArgs) -> std::process::ExitCode {
    let key = match &args.fingerprint_key_file {
        None => warden_scan::FingerprintKey::random(),
        Some(path) => match std::fs::read(path).map(<[u8; 32]>::try_from) {
            Ok(Ok(bytes)) => warden_scan::FingerprintKey::new(bytes),
            Ok(Err(_)) => {
                eprintln!("error: {} does not hold exactly 32 bytes", path.display());
                return std::process::ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("error: reading {}: {e}", path.display());
                return std::process::ExitCode::from(2);
            }
        },
    };
    let paths = if args.paths.is_empty() {
        match &args.home {
            Some(home) => warden_scan::default_roots(home),
            None => {
                eprintln!("error: no paths given and HOME is not set");
                return std::process::ExitCode::from(2);
            }
        }
    } else {
        args.paths
    };
    let scanner = warden_scan::Scanner::new(key, warden_scan::Limits::default());
    let report = scanner.scan_paths(&paths);
    let text = match args.output.as_str() {
        "json" => warden_scan::report::json(&report),
        "sarif" => warden_scan::report::sarif(&report),
        _ => warden_scan::report::table(&report),
    };
    print!("{text}");
    if report.findings.is_empty() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) }
}

async fn start(args: Args) -> anyhow::Result<()> {
    let agent_id = match args.id {
        Some(id) => id,
        None => std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_lowercase()).unwrap_or_default(),
    };
    warden_core::resource::validate_name(&agent_id).map_err(|m| anyhow::anyhow!("agent id: {m}"))?;
    let mut labels = BTreeMap::new();
    for label in args.labels.iter().filter(|l| !l.is_empty()) {
        let (k, v) = label.split_once('=').ok_or_else(|| anyhow::anyhow!("label {label:?} is not key=value"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let gateway_tls = match (&args.gateway_tls_cert, &args.gateway_tls_key) {
        (Some(cert), Some(key)) => {
            let read =
                |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()));
            Some(agent::gateway::GatewayTls::from_pem(&read(cert)?, &read(key)?)?)
        }
        _ => None,
    };
    let options = agent::Options {
        gateway_tls,
        ext_authz_listen: args.ext_authz_listen,
        session_key: args.session_key,
        agent_id,
        labels,
        data_dir: args.data_dir,
        control_planes: args.control_planes,
        join: match (args.join_token, args.join_attestation_file, args.fleet_ca) {
            (Some(token), _, _) => Some(agent::identity::Join::Token(token)),
            (None, Some(token_file), Some(fleet_ca)) => {
                Some(agent::identity::Join::Attestation { token_file, fleet_ca })
            }
            _ => None,
        },
        status_listen: Some(args.status_listen),
        backoff: warden_tasks::Backoff::new(args.backoff_base, args.backoff_max),
        heartbeat_interval: args.heartbeat_interval,
        idle_timeout: args.heartbeat_interval * 3 + Duration::from_secs(15),
        gateway_workers: args
            .gateway_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        otlp: otlp_config()?,
        scan: agent::inventory::ScanOptions {
            paths: args.scan_paths,
            homes: if args.no_scan_homes { Vec::new() } else { agent::inventory::home_directories(args.home) },
            interval: args.scan_interval,
            watch_interval: args.scan_watch_interval.max(Duration::from_secs(1)),
        },
        decisions: agent::decisions::Limits {
            memory_records: args.decision_memory_records.max(2),
            spool_records: args.decision_spool_records,
            enabled: !args.no_decision_records,
            ..agent::decisions::Limits::default()
        },
        gateway_limits: agent::gateway::Limits {
            max_body_bytes: args.max_request_bytes,
            json: warden_core::mcp::Limits {
                max_depth: args.max_json_depth,
                max_batch: args.max_batch,
                max_arguments: args.max_arguments,
            },
            upstream_response_timeout: args.upstream_response_timeout,
            body_read_timeout: args.body_read_timeout,
            header_read_timeout: args.header_read_timeout,
            max_connections_per_listener: args.max_connections_per_listener.max(1),
            dpop_proofs_per_server: args.dpop_proofs_per_server.max(1),
            dpop_proofs_per_key: args.dpop_proofs_per_key.max(1),
        },
    };
    agent::run(options, shutdown_signal()).await?;
    Ok(())
}

/// The `OTEL_*` configuration. Decision records reach the backend through the control plane;
/// the agent exports them itself only when asked by name (`OTEL_LOGS_EXPORTER=otlp`), since an
/// endpoint set for its spans would otherwise have every decision recorded twice.
fn otlp_config() -> Result<warden_otlp::Config, warden_otlp::ConfigError> {
    warden_otlp::Config::from_env_opting_in("warden-agent", &["LOGS"], warden_otlp::process_env)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
