//! `wardenctl`: the operators' CLI. Declarative resources (`apply`, `get`, `delete`, `diff`),
//! fleet status, join tokens and the admin history, over the control plane's local admin socket
//! or with an operator certificate.
#![forbid(unsafe_code)]

// `println!`/`print!` that end the process quietly when standard output is closed
// (`wardenctl decisions | head -1`), as a Unix tool stopped by SIGPIPE does, where std's
// would panic. Defined before the modules so they use these too.
macro_rules! println {
    () => { $crate::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}
macro_rules! print {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*)) };
}

mod output;

use wardenctl::client;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use proto::v1 as pb;
use warden_core::{Admission, Document, Kind};

/// Warden operators' CLI.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The control plane's admin socket.
    #[arg(long, env = "WARDEN_ADMIN_SOCKET", default_value = "/var/lib/warden-cp/admin.sock", global = true)]
    socket: PathBuf,
    /// Use the control plane's TLS port (`host:port`) with an operator certificate instead of
    /// the socket. (Not `--server`: that filters by McpServer, as in `decisions --server`.)
    #[arg(long, env = "WARDEN_CONTROL_PLANE", global = true, requires_all = ["cert", "key", "ca"])]
    control_plane: Option<String>,
    /// Operator certificate (PEM), with --control-plane.
    #[arg(long, env = "WARDEN_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Operator key (PEM), with --control-plane.
    #[arg(long, env = "WARDEN_KEY", global = true)]
    key: Option<PathBuf>,
    /// Fleet CA certificate (PEM), with --control-plane.
    #[arg(long, env = "WARDEN_CA", global = true)]
    ca: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable table.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create or update resources from YAML files or directories (all documents in one
    /// transaction: all are accepted or none).
    Apply {
        /// Files or directories (*.yaml, *.yml, *.json).
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Validate on the control plane and report what would change, without changing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show resources (`get issuers`, `get policy NAME`, `get all`) or agents (`get agents`).
    Get {
        /// `issuers`, `servers`, `policies`, `all` or `agents`.
        what: String,
        /// One resource's name.
        name: Option<String>,
    },
    /// Delete a resource, or an agent (`delete agent ID`: its certificates are refused at once
    /// by every control plane, its stream ends; it may join again only with a new join token).
    Delete {
        /// Its kind, or `agent`.
        kind: String,
        /// Its name.
        name: String,
        /// Refuse unless the stored resource is at this version.
        #[arg(long)]
        resource_version: Option<u64>,
    },
    /// Show what `apply` would change. Exits 1 when there are differences.
    Diff {
        /// Files or directories.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Join tokens for new agents.
    JoinToken {
        #[command(subcommand)]
        command: JoinTokenCommand,
    },
    /// Operator client certificates, for `--control-plane` access from another machine.
    OperatorCert {
        #[command(subcommand)]
        command: OperatorCertCommand,
    },
    /// Decisions the agents made (oldest first), filtered; `--follow` keeps printing new ones.
    Decisions {
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        /// Only this McpServer's.
        #[arg(long)]
        server: Option<String>,
        /// Only about this tool, prompt or resource URI.
        #[arg(long)]
        tool: Option<String>,
        /// Only this subject's.
        #[arg(long)]
        subject: Option<String>,
        /// Only allows or only denies.
        #[arg(long, value_enum)]
        decision: Option<DecisionFilter>,
        /// Only with this reason code (e.g. policy_denied, expired).
        #[arg(long)]
        reason: Option<String>,
        /// Only made within this long before now (e.g. 10m, 2h).
        #[arg(long, value_parser = warden_core::duration::parse)]
        since: Option<Duration>,
        /// At most this many (the newest of those matching).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Keep printing new decisions as they arrive.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print a summary instead: top denied tools, top deny reasons, decisions and rates per
        /// agent (over --since, or since the oldest record).
        #[arg(long, conflicts_with = "follow")]
        summary: bool,
    },
    /// Revoke tokens across the fleet, now: one token by its `jti`, every token of a subject,
    /// or every token of an issuer issued up to now (task tokens exchanged for them included).
    /// The revocation is deleted by the control plane once every token it covers has expired.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["jti", "subject", "all"])))]
    Revoke {
        /// The TrustedIssuer (name) whose token(s) to revoke.
        #[arg(long)]
        issuer: String,
        /// One token, by its `jti`.
        #[arg(long)]
        jti: Option<String>,
        /// Every token of this subject issued up to now.
        #[arg(long)]
        subject: Option<String>,
        /// Every token of the issuer issued up to now.
        #[arg(long)]
        all: bool,
    },
    /// The record of admin changes.
    History {
        /// How many of the newest entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DecisionFilter {
    Allow,
    Deny,
}

#[derive(Subcommand, Debug)]
enum OperatorCertCommand {
    /// Generate a key here and have the control plane certify it (admin socket only). Writes
    /// operator.key (0600), operator.crt and ca.crt into --out.
    Create {
        /// The operator's name: spiffe://<trust-domain>/operator/<name>.
        #[arg(long)]
        name: String,
        /// Directory to write the files into.
        #[arg(long)]
        out: PathBuf,
        /// Certificate lifetime.
        #[arg(long, default_value = "24h", value_parser = warden_core::duration::parse)]
        ttl: Duration,
    },
    /// Revoke every certificate issued to an operator name: refused from the next call on, by
    /// every control plane.
    Revoke {
        /// The operator's name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum JoinTokenCommand {
    /// Create a one-time join token for one agent.
    Create {
        /// How long the token stays usable.
        #[arg(long, default_value = "1h", value_parser = warden_core::duration::parse)]
        ttl: Duration,
        /// The only agent id the token admits (`warden-agent --id`).
        #[arg(long)]
        agent: String,
    },
}

/// Writes to standard output; a closed pipe ends the process with the status a shell reports
/// for SIGPIPE (128 + 13), any other failure with an error.
fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: writing the output: {e}");
        std::process::exit(1);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let target = match &cli.control_plane {
        Some(server) => client::Target::Tls {
            address: server.clone(),
            cert: cli.cert.clone().unwrap_or_default(),
            key: cli.key.clone().unwrap_or_default(),
            ca: cli.ca.clone().unwrap_or_default(),
        },
        None => client::Target::Socket(cli.socket.clone()),
    };
    match cli.command {
        Command::Apply { files, dry_run } => {
            let documents = read_documents(&files)?;
            let mut admin = client::connect(&target).await?;
            let response = admin
                .apply(pb::ApplyRequest {
                    documents_json: documents.iter().map(|(_, d)| d.to_canonical_json_with_version()).collect(),
                    dry_run,
                })
                .await
                .map_err(client::status)?
                .into_inner();
            output::apply(&response, dry_run, cli.output)?;
        }
        Command::Get { what, name } => {
            let mut admin = client::connect(&target).await?;
            if what == "agents" || what == "agent" {
                let response = admin.list_agents(pb::ListAgentsRequest {}).await.map_err(client::status)?.into_inner();
                output::agents(&response, name.as_deref(), cli.output)?;
            } else {
                let kind = match what.as_str() {
                    "all" => String::new(),
                    other => Kind::parse_loose(other)
                        .with_context(|| {
                            format!("unknown kind {other:?}: use issuers, servers, policies, all or agents")
                        })?
                        .as_str()
                        .to_string(),
                };
                let by_name = name.is_some();
                let response = admin
                    .get(pb::GetRequest { kind, name: name.unwrap_or_default() })
                    .await
                    .map_err(client::status)?
                    .into_inner();
                let listed = response.resources.iter().filter(|r| r.kind == Kind::Revocation.as_str()).count() as u64;
                if !by_name && listed > 0 && response.revocations_total > listed {
                    eprintln!(
                        "showing {listed} of {} revocations, in name order; get one by name: wardenctl get revocation NAME",
                        response.revocations_total
                    );
                }
                output::resources(&response, cli.output)?;
            }
        }
        Command::Delete { kind, name, resource_version: _ } if matches!(kind.as_str(), "agent" | "agents") => {
            let mut admin = client::connect(&target).await?;
            admin.delete_agent(pb::DeleteAgentRequest { agent_id: name.clone() }).await.map_err(client::status)?;
            println!("agent {name} deleted: its certificates are refused from now on");
        }
        Command::Delete { kind, name, resource_version } => {
            let kind = Kind::parse_loose(&kind).with_context(|| format!("unknown kind {kind:?}"))?;
            let mut admin = client::connect(&target).await?;
            let response = admin
                .delete(pb::DeleteRequest {
                    kind: kind.as_str().into(),
                    name: name.clone(),
                    expected_resource_version: resource_version.unwrap_or(0),
                })
                .await
                .map_err(client::status)?
                .into_inner();
            println!("{kind}/{name} deleted (configuration version {})", response.version);
        }
        Command::Revoke { issuer, jti, subject, all: _ } => {
            let mut admin = client::connect(&target).await?;
            let stored = admin
                .get(pb::GetRequest { kind: Kind::TrustedIssuer.as_str().into(), name: issuer.clone() })
                .await
                .map_err(client::status)?
                .into_inner();
            let resource = stored.resources.first().with_context(|| format!("no TrustedIssuer {issuer:?}"))?;
            // Stored documents were admitted already: read back whatever URL rules applied then.
            let admission = Admission { allow_http_issuers: true };
            let spec = match Document::from_json_bytes(&resource.document_json, &admission)?.spec {
                warden_core::resource::Spec::TrustedIssuer(spec) => spec,
                _ => bail!("{issuer} is not a TrustedIssuer"),
            };
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
            // Every token issued up to now has expired by then.
            let expires = now + spec.max_token_lifetime.0.as_secs() as i64 + spec.clock_skew.0.as_secs() as i64;
            let document = revocation(&issuer, jti.as_deref(), subject.as_deref(), now, expires)?;
            let key = document.key();
            let response = admin
                .apply(pb::ApplyRequest { documents_json: vec![document.to_canonical_json()], dry_run: false })
                .await
                .map_err(client::status)?
                .into_inner();
            println!("{}/{} applied (configuration version {})", key.kind, key.name, response.version);
        }
        Command::Diff { files } => {
            let documents = read_documents(&files)?;
            let mut admin = client::connect(&target).await?;
            let stored = admin.get(pb::GetRequest::default()).await.map_err(client::status)?.into_inner().resources;
            let changed = output::diff(&documents, &stored)?;
            return Ok(if changed { ExitCode::from(1) } else { ExitCode::SUCCESS });
        }
        Command::JoinToken { command: JoinTokenCommand::Create { ttl, agent } } => {
            let mut admin = client::connect(&target).await?;
            let response = admin
                .create_join_token(pb::CreateJoinTokenRequest { ttl_seconds: ttl.as_secs().max(1), agent_id: agent })
                .await
                .map_err(client::status)?
                .into_inner();
            output::join_token(&response, cli.output)?;
        }
        Command::OperatorCert { command: OperatorCertCommand::Revoke { name } } => {
            let mut admin = client::connect(&target).await?;
            admin
                .revoke_operator_certificates(pb::RevokeOperatorCertificatesRequest { name: name.clone() })
                .await
                .map_err(client::status)?;
            println!("operator certificates of {name} revoked");
        }
        Command::OperatorCert { command: OperatorCertCommand::Create { name, out, ttl } } => {
            let key = rcgen::KeyPair::generate()?;
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(rcgen::DnType::CommonName, name.as_str());
            let csr_pem = params.serialize_request(&key)?.pem()?;
            let mut admin = client::connect(&target).await?;
            let response = admin
                .sign_operator_certificate(pb::SignOperatorCertificateRequest {
                    name: name.clone(),
                    csr_pem,
                    ttl_seconds: ttl.as_secs().max(1),
                })
                .await
                .map_err(client::status)?
                .into_inner();
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            write_private(&out.join("operator.key"), &key.serialize_pem())?;
            write_private(&out.join("operator.crt"), &response.certificate_pem)?;
            write_private(&out.join("ca.crt"), &response.ca_pem)?;
            println!("operator certificate for {name} written to {}", out.display());
        }
        Command::Decisions { agent, server, tool, subject, decision, reason, since, limit, follow, summary } => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let mut filter = pb::ListDecisionsRequest {
                agent: agent.unwrap_or_default(),
                server: server.unwrap_or_default(),
                target: tool.unwrap_or_default(),
                subject: subject.unwrap_or_default(),
                decision: match decision {
                    None => pb::Decision::Unspecified,
                    Some(DecisionFilter::Allow) => pb::Decision::Allow,
                    Some(DecisionFilter::Deny) => pb::Decision::Deny,
                } as i32,
                reason: reason.unwrap_or_default(),
                since_unix_nanos: since.map_or(0, |s| now.saturating_sub(s).as_nanos() as i64),
                ..Default::default()
            };
            let mut admin = client::connect(&target).await?;
            // Everything matching so far, keeping the newest `limit` (or all, for the summary).
            let mut kept = std::collections::VecDeque::new();
            let (dropped, received) = loop {
                let page = admin.list_decisions(filter.clone()).await.map_err(client::status)?.into_inner();
                let done = page.next == filter.after;
                filter.after = page.next;
                kept.extend(page.decisions);
                while !summary && kept.len() > limit {
                    kept.pop_front();
                }
                if done {
                    break (page.dropped, page.received);
                }
            };
            if summary {
                // Rates are over --since, or else since the oldest record shown.
                let oldest = kept.iter().filter_map(|d| d.record.as_ref()).map(|r| r.time_unix_nanos).min();
                let window = since.unwrap_or_else(|| {
                    oldest.map_or(Duration::ZERO, |t| now.saturating_sub(Duration::from_nanos(t.max(0) as u64)))
                });
                let window = window.max(Duration::from_secs(1));
                output::decision_summary(kept.make_contiguous(), &dropped, received, window, cli.output)?;
                return Ok(ExitCode::SUCCESS);
            }
            output::decisions(kept.make_contiguous(), cli.output, true)?;
            if !follow {
                return Ok(ExitCode::SUCCESS);
            }
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let page = admin.list_decisions(filter.clone()).await.map_err(client::status)?.into_inner();
                filter.after = page.next;
                output::decisions(&page.decisions, cli.output, false)?;
            }
        }
        Command::History { limit } => {
            let mut admin = client::connect(&target).await?;
            let response = admin.history(pb::HistoryRequest { limit }).await.map_err(client::status)?.into_inner();
            output::history(&response, cli.output)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Reads every YAML/JSON document under `paths`, validating each locally first so mistakes are
/// reported with their file; the control plane validates again, authoritatively.
fn read_documents(paths: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, Document)>> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    if files.is_empty() {
        bail!("no .yaml, .yml or .json files in {paths:?}");
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let values = warden_core::resource::yaml_documents(&text).with_context(|| file.display().to_string())?;
        for (i, value) in values.into_iter().enumerate() {
            // http issuers are an admission rule of the control plane: let it decide.
            let doc = Document::from_json(value, &Admission { allow_http_issuers: true })
                .with_context(|| format!("{} (document {})", file.display(), i + 1))?;
            out.push((file.clone(), doc));
        }
    }
    Ok(out)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            let is_doc =
                entry.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if entry.is_dir() || is_doc {
                collect_files(&entry, out)?;
            }
        }
    } else {
        if !path.exists() {
            bail!("{}: no such file or directory", path.display());
        }
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// The wire form of a document for apply: canonical JSON, keeping `metadata.resourceVersion`
/// when the operator set it (optimistic concurrency).
trait WithVersion {
    fn to_canonical_json_with_version(&self) -> Vec<u8>;
}

impl WithVersion for Document {
    fn to_canonical_json_with_version(&self) -> Vec<u8> {
        let json = self.to_canonical_json();
        let Some(version) = self.metadata.resource_version else { return json };
        let mut value: serde_json::Value = serde_json::from_slice(&json).expect("canonical JSON parses");
        value["metadata"]["resourceVersion"] = version.into();
        serde_json::to_vec(&value).expect("serializes")
    }
}

/// The `Revocation` document `wardenctl revoke` applies. A token's revocation is named after
/// the hash of (issuer, jti), as the token service names it, so revoking twice changes nothing.
fn revocation(
    issuer: &str,
    jti: Option<&str>,
    subject: Option<&str>,
    now: i64,
    expires: i64,
) -> anyhow::Result<Document> {
    use warden_core::revocation::format_time;
    let digest = |text: &str| warden_core::token::jti_hash(issuer, text)[..16].to_string();
    let (name, spec) = match (jti, subject) {
        (Some(jti), _) => {
            (warden_core::revocation::token_revocation_name(issuer, jti), serde_json::json!({"jti": jti}))
        }
        (None, Some(subject)) => (
            format!("subject-{}-{now}", digest(subject)),
            serde_json::json!({"subject": subject, "issuedBefore": format_time(now)}),
        ),
        (None, None) => (format!("issuer-{}-{now}", digest("")), serde_json::json!({"issuedBefore": format_time(now)})),
    };
    let mut spec = spec;
    spec["issuer"] = issuer.into();
    spec["expires"] = format_time(expires).into();
    let document = serde_json::json!({
        "apiVersion": warden_core::resource::API_VERSION,
        "kind": "Revocation",
        "metadata": {"name": name},
        "spec": spec,
    });
    Ok(Document::from_json(document, &Admission::default())?)
}
