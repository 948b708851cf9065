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
}

impl Apply {
    pub async fn run(self, target: &client::Target, format: Format) -> anyhow::Result<ExitCode> {
        let documents_json = documents::wire(&self.files)?;
        let mut admin = client::connect(target).await?;
        let response = admin
            .apply(pb::ApplyRequest { documents_json, dry_run: self.dry_run })
            .await
            .map_err(client::status)?
            .into_inner();
        output::apply(&response, self.dry_run, format)?;
        Ok(ExitCode::SUCCESS)
    }
}
