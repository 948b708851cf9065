//! `wardenctl apply`: sends the documents of the files given to the control plane in one
//! transaction (all accepted or none), or with `--dry-run` asks it what would change.

use std::path::PathBuf;
use std::process::ExitCode;

use proto::v1 as pb;
use wardenctl::client;

use crate::{Format, documents, output};

/// Create or update resources from YAML files or directories (all documents in one
/// transaction: all are accepted or none).
#[derive(clap::Args, Debug)]
pub struct Apply {
    /// Files or directories (*.yaml, *.yml, *.json).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Validate on the control plane and report what would change, without changing it.
    #[arg(long)]
    dry_run: bool,
    /// Change nothing: replay the decisions stored over --since against the configuration this
    /// apply would make, and report every decision that would flip (allow → deny, deny →
    /// allow) with counts, examples and the policies responsible.
    #[arg(long, conflicts_with = "dry_run")]
    test: bool,
    /// With --test: the window of decisions replayed (e.g. 24h, 30m).
    #[arg(long, requires = "test", default_value = "24h", value_parser = warden_core::duration::parse)]
    since: std::time::Duration,
}

impl Apply {
    pub async fn run(self, target: &client::Target, format: Format) -> anyhow::Result<ExitCode> {
        let documents_json = documents::wire(&self.files)?;
        let mut admin = client::connect(target).await?;
        if self.test {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let since_unix_nanos = now.saturating_sub(self.since).as_nanos() as i64;
            let response = admin
                .test_apply(pb::TestApplyRequest { documents_json, since_unix_nanos, examples: 3 })
                .await
                .map_err(client::status)?
                .into_inner();
            output::test_apply(&response, format)?;
            return Ok(ExitCode::SUCCESS);
        }
        let response = admin
            .apply(pb::ApplyRequest { documents_json, dry_run: self.dry_run })
            .await
            .map_err(client::status)?
            .into_inner();
        output::apply(&response, self.dry_run, format)?;
        Ok(ExitCode::SUCCESS)
    }
}
