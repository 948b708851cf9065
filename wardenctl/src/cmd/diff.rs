//! `wardenctl diff`: shows how the documents of the files given differ from what the control
//! plane stores, and exits 1 when they do.

use std::path::PathBuf;
use std::process::ExitCode;

use proto::v1 as pb;
use wardenctl::client;

use crate::{documents, output};

/// Show what `apply` would change. Exits 1 when there are differences.
#[derive(clap::Args, Debug)]
pub struct Diff {
    /// Files or directories.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
}

impl Diff {
    pub async fn run(self, target: &client::Target) -> anyhow::Result<ExitCode> {
        let documents = documents::read(&self.files)?;
        let mut admin = client::connect(target).await?;
        let stored = admin.get(pb::GetRequest::default()).await.map_err(client::status)?.into_inner().resources;
        let changed = output::diff(&documents, &stored)?;
        Ok(if changed { ExitCode::from(1) } else { ExitCode::SUCCESS })
    }
}
