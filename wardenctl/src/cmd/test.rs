//! `wardenctl test`: runs `PolicyTest` documents against the configuration in the same files,
//! locally (no control plane), as a team's CI would.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use warden_core::Config;
use warden_core::authorize::Authorizer;

use crate::documents;

/// Run PolicyTest documents (requests and the decisions expected) against the resources in
/// the same files, locally: every case is decided exactly as an agent would decide it. Exits
/// 1 when a case fails.
#[derive(clap::Args, Debug)]
pub struct Test {
    /// Files or directories holding the resources (McpServers, TrustedIssuers, Policies) and
    /// the PolicyTests.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
}

impl Test {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let (resources, tests) = documents::read_with_tests(&self.files)?;
        if tests.is_empty() {
            anyhow::bail!("no PolicyTest documents in {:?}", self.files);
        }
        let config = Config::build(&resources).context("the resources given do not make a configuration")?;
        let authorizer = Authorizer::new(&config);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let (mut passed, mut failed) = (0, 0);
        for (file, test) in &tests {
            for case in &test.cases {
                let result = case.run(&authorizer, now);
                if result.passed {
                    passed += 1;
                    println!("ok     {}: {}", test.name, result.name);
                    continue;
                }
                failed += 1;
                println!("FAILED {}: {} ({})", test.name, result.name, file.display());
                println!("       {}", result.failure.unwrap_or_default());
                if let Some(e) = &result.explanation {
                    if !e.outcome.policies.is_empty() {
                        println!("       decided by {}", e.outcome.policies.join(", "));
                    }
                    for change in &e.changes {
                        println!("       would allow it: {change}");
                    }
                }
            }
        }
        println!("\n{passed} passed, {failed} failed");
        Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    }
}
