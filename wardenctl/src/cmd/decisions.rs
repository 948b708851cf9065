//! `wardenctl decisions`: the allow/deny decisions the agents made, filtered, oldest first;
//! `--follow` keeps printing new ones, `--summary` prints tallies instead.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use proto::v1 as pb;
use wardenctl::client;

use crate::{Format, output};

/// Decisions the agents made (oldest first), filtered; `--follow` keeps printing new ones.
#[derive(clap::Args, Debug)]
pub struct Decisions {
    /// Only this agent's.
    #[arg(long)]
    agent: Option<String>,
    /// Only this McpServer's.
    #[arg(long)]
    server: Option<String>,
    /// Only about this tool, prompt or resource URI.
    #[arg(long)]
    tool: Option<String>,
    /// Only this subject's.
    #[arg(long)]
    subject: Option<String>,
    /// Only allows or only denies.
    #[arg(long, value_enum)]
    decision: Option<DecisionFilter>,
    /// Only with this reason code (e.g. policy_denied, expired).
    #[arg(long)]
    reason: Option<String>,
    /// Only made within this long before now (e.g. 10m, 2h).
    #[arg(long, value_parser = warden_core::duration::parse)]
    since: Option<Duration>,
    /// At most this many (the newest of those matching).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Keep printing new decisions as they arrive.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Print a summary instead: top denied tools, top deny reasons, decisions and rates per
    /// agent (over --since, or since the oldest record).
    #[arg(long, conflicts_with = "follow")]
    summary: bool,
    /// Only the decisions the servers' shadow policies (`mode: shadow`) would have made
    /// otherwise, with how many flip each way: what switching them to `enforce` would change.
    #[arg(long)]
    shadow_diff: bool,
}

// Its variants' names are the values of `--decision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DecisionFilter {
    Allow,
    Deny,
}

impl Decisions {
    pub async fn run(self, target: &client::Target, format: Format) -> anyhow::Result<ExitCode> {
        let Decisions { agent, server, tool, subject, decision, reason, since, limit, follow, summary, shadow_diff } =
            self;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut filter = pb::ListDecisionsRequest {
            agent: agent.unwrap_or_default(),
            server: server.unwrap_or_default(),
            target: tool.unwrap_or_default(),
            subject: subject.unwrap_or_default(),
            decision: match decision {
                None => pb::Decision::Unspecified,
                Some(DecisionFilter::Allow) => pb::Decision::Allow,
                Some(DecisionFilter::Deny) => pb::Decision::Deny,
            } as i32,
            reason: reason.unwrap_or_default(),
            since_unix_nanos: since.map_or(0, |s| now.saturating_sub(s).as_nanos() as i64),
            shadow_diff,
            ..Default::default()
        };
        let mut admin = client::connect(target).await?;
        // Everything matching so far, keeping the newest `limit` (or all, for the summary).
        let mut kept = VecDeque::new();
        let (dropped, received) = loop {
            let page = admin.list_decisions(filter.clone()).await.map_err(client::status)?.into_inner();
            let done = page.next == filter.after;
            filter.after = page.next;
            kept.extend(page.decisions);
            while !summary && kept.len() > limit {
                kept.pop_front();
            }
            if done {
                break (page.dropped, page.received);
            }
        };
        if summary {
            // Rates are over --since, or else since the oldest record shown.
            let oldest = kept.iter().filter_map(|d| d.record.as_ref()).map(|r| r.time_unix_nanos).min();
            let window = since.unwrap_or_else(|| {
                oldest.map_or(Duration::ZERO, |t| now.saturating_sub(Duration::from_nanos(t.max(0) as u64)))
            });
            let window = window.max(Duration::from_secs(1));
            output::decision_summary(kept.make_contiguous(), &dropped, received, window, format)?;
            return Ok(ExitCode::SUCCESS);
        }
        output::decisions(kept.make_contiguous(), format, true)?;
        if shadow_diff && format == Format::Table {
            output::shadow_flips(kept.make_contiguous());
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let page = admin.list_decisions(filter.clone()).await.map_err(client::status)?.into_inner();
            filter.after = page.next;
            output::decisions(&page.decisions, format, false)?;
        }
    }
}
