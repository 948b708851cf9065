//! `wardenctl tools`: the definitions servers with tool pinning listed, and approving or
//! rejecting them.

use std::process::ExitCode;

use proto::v1 as pb;
use wardenctl::client;

use crate::{Format, output};

/// The tools, prompts and resource templates servers with `toolPinning` listed: how each
/// stands against its approval (approved, changed, new, flagged, rejected), what changed, and
/// approving or rejecting a definition (a `ToolApproval`, audited and pushed to the fleet).
#[derive(clap::Args, Debug)]
pub struct Tools {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Every name seen (of SERVER, or of all), with its state, its digests and signs of
    /// poisoning.
    List {
        /// Only this server.
        server: Option<String>,
        /// Only this kind: tool, prompt or resourceTemplate.
        #[arg(long)]
        kind: Option<String>,
    },
    /// What changed: the approved definition of NAME against the one SERVER listed last (or
    /// `--digest`), line by line, with the new one's signs of poisoning.
    Diff(Named),
    /// Approves the definition of NAME SERVER listed last (or `--digest`): under `enforce` it
    /// is listed and callable again once agents have the new version.
    Approve(Named),
    /// Rejects the definition of NAME SERVER listed last (or `--digest`): withheld under
    /// `enforce`, whatever `newDefinitions` says.
    Reject(Named),
}

#[derive(clap::Args, Debug)]
struct Named {
    /// The McpServer.
    server: String,
    /// The tool's (prompt's, template's) name as the server lists it.
    name: String,
    /// tool, prompt or resourceTemplate.
    #[arg(long, default_value = "tool")]
    kind: String,
    /// A definition's digest as `list` shows it (default: the one listed last).
    #[arg(long)]
    digest: Option<String>,
}

impl Tools {
    pub async fn run(self, target: &client::Target, format: Format) -> anyhow::Result<ExitCode> {
        let mut admin = client::connect(target).await?;
        match self.action {
            Action::List { server, kind } => {
                let request = pb::ListToolDefinitionsRequest {
                    server: server.unwrap_or_default(),
                    kind: kind.unwrap_or_default(),
                    name: String::new(),
                };
                let response = admin.list_tool_definitions(request).await.map_err(client::status)?.into_inner();
                output::tool_definitions(&response, format)?;
            }
            Action::Diff(named) => {
                let request = pb::ListToolDefinitionsRequest {
                    server: named.server.clone(),
                    kind: named.kind.clone(),
                    name: named.name.clone(),
                };
                let response = admin.list_tool_definitions(request).await.map_err(client::status)?.into_inner();
                let Some(status) = response.definitions.first() else {
                    anyhow::bail!("no definition of {:?} was seen for server {:?}", named.name, named.server)
                };
                output::tool_diff(status, named.digest.as_deref())?;
            }
            Action::Approve(named) => return decide(&mut admin, named, true).await,
            Action::Reject(named) => return decide(&mut admin, named, false).await,
        }
        Ok(ExitCode::SUCCESS)
    }
}

async fn decide(
    admin: &mut proto::v1::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    named: Named,
    approve: bool,
) -> anyhow::Result<ExitCode> {
    let request = pb::DecideToolDefinitionRequest {
        server: named.server.clone(),
        kind: named.kind.clone(),
        name: named.name.clone(),
        digest: named.digest.unwrap_or_default(),
        approve,
    };
    let response = admin.decide_tool_definition(request).await.map_err(client::status)?.into_inner();
    let verb = if approve { "approved" } else { "rejected" };
    println!(
        "{} {:?} of server {}: {verb} {} (ToolApproval/{}, version {})",
        named.kind, named.name, named.server, response.digest, response.approval, response.version
    );
    Ok(ExitCode::SUCCESS)
}
