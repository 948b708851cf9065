//! `wardenctl scorecard`: the secretless scorecard over a window — stored secrets, token
//! lifetimes, how requests were decided, servers in audit mode — as the control plane computes
//! it from what it stored.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::v1 as pb;
use wardenctl::client;

use crate::{Format, output};

/// The secretless scorecard: fewer stored secrets, shorter token lifetimes, explicit claim
/// validation on every request.
#[derive(clap::Args, Debug)]
pub struct Scorecard {
    /// The window (e.g. 24h, 7d); everything stored when not given.
    #[arg(long, value_parser = warden_core::duration::parse)]
    since: Option<Duration>,
}

impl Scorecard {
    pub async fn run(self, target: &client::Target, format: Format) -> anyhow::Result<ExitCode> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let since_unix_nanos = self.since.map_or(0, |s| now.saturating_sub(s).as_nanos() as i64);
        let mut admin = client::connect(target).await?;
        let card =
            admin.scorecard(pb::ScorecardRequest { since_unix_nanos }).await.map_err(client::status)?.into_inner();
        output::scorecard(&card, format)?;
        Ok(ExitCode::SUCCESS)
    }
}
