//! `wardenctl history`: the newest entries of the control plane's record of admin changes.

use std::process::ExitCode;

use proto::v1 as pb;
use wardenctl::client;

use crate::{Format, output};

/// The record of admin changes.
#[derive(clap::Args, Debug)]
pub struct History {
    /// How many of the newest entries.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

impl History {
    pub async fn run(self, target: &client::Target, format: Format) -> anyhow::Result<ExitCode> {
        let mut admin = client::connect(target).await?;
        let response =
            admin.history(pb::HistoryRequest { limit: self.limit }).await.map_err(client::status)?.into_inner();
        output::history(&response, format)?;
        Ok(ExitCode::SUCCESS)
    }
}
