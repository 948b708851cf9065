//! `wardenctl history`: the newest entries of the control plane's record of admin changes, or
//! (`--version N`) what one change did to each document it wrote.

use std::process::ExitCode;

use proto::v1 as pb;
use wardenctl::client;

use crate::{Format, output};

/// The record of admin changes.
#[derive(clap::Args, Debug)]
pub struct History {
    /// How many of the newest entries.
    #[arg(long, default_value_t = 50, conflicts_with = "version")]
    limit: u32,
    /// Show what the change of this configuration version did: each document it wrote, before
    /// and after, line by line.
    #[arg(long)]
    version: Option<u64>,
}

impl History {
    pub async fn run(self, target: &client::Target, format: Format) -> anyhow::Result<ExitCode> {
        let mut admin = client::connect(target).await?;
        let request = pb::HistoryRequest { limit: self.limit, version: self.version.unwrap_or(0) };
        let response = admin.history(request).await.map_err(client::status)?.into_inner();
        match self.version {
            Some(_) => output::history_changes(&response, format)?,
            None => output::history(&response, format)?,
        }
        Ok(ExitCode::SUCCESS)
    }
}
