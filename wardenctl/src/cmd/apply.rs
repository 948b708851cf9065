//! `wardenctl apply`: sends the documents of the files given to the control plane in one
//! transaction (all accepted or none), or with `--dry-run` asks it what would change.

use std::path::PathBuf;
use std::process::ExitCode;

use proto::v1 as pb;
use warden_core::Document;
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
        let documents = documents::read(&self.files)?;
        let mut admin = client::connect(target).await?;
        let response = admin
            .apply(pb::ApplyRequest {
                documents_json: documents.iter().map(|(_, d)| d.to_canonical_json_with_version()).collect(),
                dry_run: self.dry_run,
            })
            .await
            .map_err(client::status)?
            .into_inner();
        output::apply(&response, self.dry_run, format)?;
        Ok(ExitCode::SUCCESS)
    }
}

/// The wire form of a document for apply: canonical JSON, keeping `metadata.resourceVersion`
/// when the operator set it (optimistic concurrency).
trait WithVersion {
    fn to_canonical_json_with_version(&self) -> Vec<u8>;
}

impl WithVersion for Document {
    fn to_canonical_json_with_version(&self) -> Vec<u8> {
        let json = self.to_canonical_json();
        let Some(version) = self.metadata.resource_version else { return json };
        let mut value: serde_json::Value = serde_json::from_slice(&json).expect("canonical JSON parses");
        value["metadata"]["resourceVersion"] = version.into();
        serde_json::to_vec(&value).expect("serializes")
    }
}
