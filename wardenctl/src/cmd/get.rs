//! `wardenctl get`: shows stored resources (of one kind, one by name, or all), the agents the
//! control plane knows and what each has applied, or the static secrets agents found on their
//! hosts.

use std::process::ExitCode;

use anyhow::Context;
use proto::v1 as pb;
use warden_core::Kind;
use wardenctl::client;

use crate::{Format, output};

/// Show resources (`get issuers`, `get policy NAME`, `get all`), agents (`get agents`) or the
/// static secrets found on their hosts (`get findings`).
#[derive(clap::Args, Debug)]
pub struct Get {
    /// `issuers`, `servers`, `policies`, `bridges`, `toolapprovals`, `revocations`, `all`, `agents` or
    /// `findings`.
    what: String,
    /// One resource's name.
    name: Option<String>,
    /// Findings: only on this agent's host.
    #[arg(long, value_name = "AGENT")]
    host: Option<String>,
    /// Findings: only in this MCP server's entry.
    #[arg(long)]
    server: Option<String>,
    /// Findings: only of this kind (github_token, aws_secret_access_key, generic_secret, ...).
    #[arg(long)]
    kind: Option<String>,
    /// Findings: `open` (still on the host) or `gone`.
    #[arg(long, value_parser = ["open", "gone"])]
    state: Option<String>,
}

impl Get {
    pub async fn run(self, target: &client::Target, format: Format) -> anyhow::Result<ExitCode> {
        let Get { what, name, host, server, kind, state } = self;
        let findings_filter = host.is_some() || server.is_some() || kind.is_some() || state.is_some();
        if findings_filter && !matches!(what.as_str(), "findings" | "finding") {
            anyhow::bail!("--host, --server, --kind and --state filter `get findings` only");
        }
        let mut admin = client::connect(target).await?;
        if what == "findings" || what == "finding" {
            let filter = pb::ListFindingsRequest {
                agent: host.unwrap_or_default(),
                server: server.unwrap_or_default(),
                kind: kind.unwrap_or_default(),
                state: state.unwrap_or_default(),
            };
            let response = admin.list_findings(filter).await.map_err(client::status)?.into_inner();
            output::findings(&response, format)?;
            return Ok(ExitCode::SUCCESS);
        }
        if what == "agents" || what == "agent" {
            let response = admin.list_agents(pb::ListAgentsRequest {}).await.map_err(client::status)?.into_inner();
            output::agents(&response, name.as_deref(), format)?;
            return Ok(ExitCode::SUCCESS);
        }
        let kind = match what.as_str() {
            "all" => String::new(),
            other => Kind::parse_loose(other)
                .with_context(|| {
                    format!("unknown kind {other:?}: use issuers, servers, policies, bridges, toolapprovals, revocations, all, agents or findings")
                })?
                .as_str()
                .to_string(),
        };
        let by_name = name.is_some();
        let response = admin
            .get(pb::GetRequest { kind: kind.clone(), name: name.unwrap_or_default() })
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
        if kind == Kind::CredentialBridge.as_str() {
            output::bridges(&response, format)?;
            return Ok(ExitCode::SUCCESS);
        }
        output::resources(&response, format)?;
        Ok(ExitCode::SUCCESS)
    }
}
