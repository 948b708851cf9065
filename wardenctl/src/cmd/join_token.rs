//! `wardenctl join-token create`: a one-time token that lets one named agent join the fleet.

use std::process::ExitCode;
use std::time::Duration;

use proto::v1 as pb;
use wardenctl::client;

use crate::{Format, output};

/// Join tokens for new agents.
#[derive(clap::Args, Debug)]
pub struct JoinToken {
    #[command(subcommand)]
    command: JoinTokenCommand,
}

#[derive(clap::Subcommand, Debug)]
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

impl JoinToken {
    pub async fn run(self, target: &client::Target, format: Format) -> anyhow::Result<ExitCode> {
        let JoinTokenCommand::Create { ttl, agent } = self.command;
        let mut admin = client::connect(target).await?;
        let response = admin
            .create_join_token(pb::CreateJoinTokenRequest { ttl_seconds: ttl.as_secs().max(1), agent_id: agent })
            .await
            .map_err(client::status)?
            .into_inner();
        output::join_token(&response, format)?;
        Ok(ExitCode::SUCCESS)
    }
}
