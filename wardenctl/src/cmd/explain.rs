//! `wardenctl explain`: why a stored decision was made.

use std::process::ExitCode;

use proto::v1 as pb;
use wardenctl::client;

use crate::{Format, output};

/// Why a decision was made: what policy saw of the request (the caller's attributes and scopes,
/// the target, the context; never a token or an argument's value), each policy of the server
/// read condition by condition against it under the current configuration, and for a refusal
/// the smallest changes that would allow it.
#[derive(clap::Args, Debug)]
pub struct Explain {
    /// The decision: its ID as `wardenctl decisions` shows it, or its id `agent/boot/sequence`.
    record: String,
}

impl Explain {
    pub async fn run(self, target: &client::Target, format: Format) -> anyhow::Result<ExitCode> {
        let mut admin = client::connect(target).await?;
        let response =
            admin.explain(pb::ExplainRequest { record: self.record }).await.map_err(client::status)?.into_inner();
        output::explain(&response, format)?;
        Ok(ExitCode::SUCCESS)
    }
}
