//! `wardenctl get`: shows stored resources (of one kind, one by name, or all), or the agents
//! the control plane knows and what each has applied.

use std::process::ExitCode;

use anyhow::Context;
use proto::v1 as pb;
use warden_core::Kind;
use wardenctl::client;

use crate::{Format, output};

/// Show resources (`get issuers`, `get policy NAME`, `get all`) or agents (`get agents`).
#[derive(clap::Args, Debug)]
pub struct Get {
    /// `issuers`, `servers`, `policies`, `all` or `agents`.
    what: String,
    /// One resource's name.
    name: Option<String>,
}

impl Get {
    pub async fn run(self, target: &client::Target, format: Format) -> anyhow::Result<ExitCode> {
        let Get { what, name } = self;
        let mut admin = client::connect(target).await?;
        if what == "agents" || what == "agent" {
            let response = admin.list_agents(pb::ListAgentsRequest {}).await.map_err(client::status)?.into_inner();
            output::agents(&response, name.as_deref(), format)?;
            return Ok(ExitCode::SUCCESS);
        }
        let kind = match what.as_str() {
            "all" => String::new(),
            other => Kind::parse_loose(other)
                .with_context(|| format!("unknown kind {other:?}: use issuers, servers, policies, all or agents"))?
                .as_str()
                .to_string(),
        };
        let by_name = name.is_some();
        let response = admin
            .get(pb::GetRequest { kind, name: name.unwrap_or_default() })
            .await
            .map_err(client::status)?
            .into_inner();
        let listed = response.resources.iter().filter(|r| r.kind == Kind::Revocation.as_str()).count() as u64;
        if !by_name && listed > 0 && response.revocations_total > listed {
            eprintln!(
                "showing {listed} of {} revocations, in name order; get one by name: wardenctl get revocation NAME",
                response.revocations_total
            );
        }
        output::resources(&response, format)?;
        Ok(ExitCode::SUCCESS)
    }
}
