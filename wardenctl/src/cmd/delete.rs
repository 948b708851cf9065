//! `wardenctl delete`: deletes a resource (optionally only at an expected version), or an
//! agent, whose certificates every control plane refuses from then on.

use std::process::ExitCode;

use anyhow::Context;
use proto::v1 as pb;
use warden_core::Kind;
use wardenctl::client;

/// Delete a resource, or an agent (`delete agent ID`: its certificates are refused at once
/// by every control plane, its stream ends; it may join again only with a new join token).
#[derive(clap::Args, Debug)]
pub struct Delete {
    /// Its kind, or `agent`.
    kind: String,
    /// Its name.
    name: String,
    /// Refuse unless the stored resource is at this version.
    #[arg(long)]
    resource_version: Option<u64>,
}

impl Delete {
    pub async fn run(self, target: &client::Target) -> anyhow::Result<ExitCode> {
        let Delete { kind, name, resource_version } = self;
        if matches!(kind.as_str(), "agent" | "agents") {
            // An agent has no stored version: --resource-version does not apply.
            let mut admin = client::connect(target).await?;
            admin.delete_agent(pb::DeleteAgentRequest { agent_id: name.clone() }).await.map_err(client::status)?;
            println!("agent {name} deleted: its certificates are refused from now on");
            return Ok(ExitCode::SUCCESS);
        }
        let kind = Kind::parse_loose(&kind).with_context(|| format!("unknown kind {kind:?}"))?;
        let mut admin = client::connect(target).await?;
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
        Ok(ExitCode::SUCCESS)
    }
}
