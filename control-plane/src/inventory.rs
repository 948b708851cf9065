//! The inventory subsystem: the static secrets agents find in MCP configuration on their hosts
//! (`warden-scan`), kept per host with their history so operators see what is open, what is
//! gone, and the same secret on several hosts (by its keyed fingerprint). Never a secret's
//! value: agents send where a secret is, its kind and a fingerprint.
//!
//! Each report is a host's complete set: a finding reported again stays open (its "last seen"
//! moves), one no longer reported is marked gone, one reported again after that reopens. A
//! report is agent input: bounded, checked field by field, and written at most once per
//! [`WRITE_INTERVAL`] per agent (the session keeps only the newest until then), so an agent
//! cannot turn its stream into a store write storm.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proto::v1 as pb;

use crate::configuration::Configuration;
use crate::configuration::store::{FindingsRecord, StoreError, StoredFinding};

/// What the fingerprint key is derived for (from the fleet CA's key).
pub const FINGERPRINT_PURPOSE: &str = "warden/v1/finding-fingerprint";

/// The most findings kept per host; more are counted as dropped. A host with thousands of
/// distinct static secrets in its MCP configuration is a finding in itself, and the record must
/// stay within one etcd value.
pub const MAX_FINDINGS_PER_HOST: usize = 2_000;

/// The most unreadable files kept per host.
pub const MAX_UNREADABLE_PER_HOST: usize = 100;

/// How long a finding that is gone is kept (for "resolved over the window").
pub const GONE_RETENTION_SECS: i64 = 30 * 24 * 3600;

/// The shortest time between two stored reports of one agent.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(10);

/// Field bounds (bytes): a path, a location inside a file, a server name, the short codes.
const MAX_FILE: usize = 1024;
const MAX_LOCATION: usize = 512;
const MAX_SERVER: usize = 256;
const MAX_CODE: usize = 64;
const MAX_REASON: usize = 256;

/// A report the control plane refuses (the agent's previous report stays).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// More findings or unreadable files than an agent may send.
    #[error("{what}: {count} exceeds the limit of {limit}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// How many were sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A field that is empty, too long, or not of its form.
    #[error("finding {index}: {field} {why}")]
    Field {
        /// Which finding.
        index: usize,
        /// Which field.
        field: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a stored report changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Findings new (or reopened) in this report.
    pub opened: usize,
    /// Findings the report no longer has.
    pub gone: usize,
    /// Findings open now.
    pub open: usize,
}

/// One agent's reports on their way to the store: at most one write per `interval`; a report
/// that arrives sooner waits, and a newer one replaces it (each report is the complete set, so
/// only the newest matters).
pub struct Paced<T> {
    waiting: Option<T>,
    due: tokio::time::Instant,
    interval: Duration,
}

impl<T> Paced<T> {
    /// Nothing waiting; the first report may be written at once.
    pub fn new(interval: Duration, now: tokio::time::Instant) -> Paced<T> {
        Paced { waiting: None, due: now, interval }
    }

    /// Offers a report at `now`: returned when it may be written now (the next slot is then
    /// `interval` away), kept (replacing any waiting one) otherwise.
    pub fn offer(&mut self, report: T, now: tokio::time::Instant) -> Option<T> {
        self.waiting = Some(report);
        self.take(now)
    }

    /// The waiting report, if its slot has come.
    pub fn take(&mut self, now: tokio::time::Instant) -> Option<T> {
        if now < self.due {
            return None;
        }
        let report = self.waiting.take()?;
        self.due = now + self.interval;
        Some(report)
    }

    /// When the waiting report may be written, if one waits.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.waiting.as_ref().map(|_| self.due)
    }
}

/// The inventory of every host's findings.
pub struct Inventory {
    configuration: Arc<Configuration>,
    fingerprint_key: [u8; 32],
    /// Open findings by kind across every host, and when they were counted (for metrics,
    /// which must not read every host's findings at every scrape).
    open: tokio::sync::Mutex<Option<(tokio::time::Instant, BTreeMap<String, u64>)>>,
    /// Set when a report opened or closed a finding here (the findings' event export reads
    /// the store when it is set, or every half minute for other replicas' reports).
    changed: Arc<std::sync::atomic::AtomicBool>,
}

/// How long a count of open findings is reused.
const OPEN_COUNT_AGE: Duration = Duration::from_secs(60);

impl Inventory {
    /// The inventory, stored beside `configuration`, with the fleet's fingerprint key.
    pub fn new(configuration: Arc<Configuration>, fingerprint_key: [u8; 32]) -> Inventory {
        Inventory { configuration, fingerprint_key, open: tokio::sync::Mutex::new(None), changed: Arc::default() }
    }

    /// The key every agent fingerprints found secrets with.
    pub fn fingerprint_key(&self) -> &[u8; 32] {
        &self.fingerprint_key
    }

    /// Stores `report` as `agent`'s host's complete set of findings at `now_unix`.
    pub async fn record(&self, agent: &str, report: &pb::Findings, now_unix: i64) -> Result<Changes, ReportError> {
        check(report)?;
        let store = self.configuration.store();
        let previous = store.findings_of(agent).await?;
        let (record, changes) = merge(agent, previous, report, now_unix);
        store.put_findings(record).await?;
        if changes.opened + changes.gone > 0 {
            self.changed.store(true, std::sync::atomic::Ordering::Relaxed);
            // Counted again at the next scrape: a report here shows at once (another replica's
            // within the minute).
            *self.open.lock().await = None;
        }
        Ok(changes)
    }

    /// The flag set when a report here opened or closed a finding.
    pub fn changed(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.changed.clone()
    }

    /// Open findings by kind across every host, as of at most a minute ago (or this replica's
    /// last report that changed any).
    pub async fn open_by_kind(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut open = self.open.lock().await;
        let now = tokio::time::Instant::now();
        if let Some((at, counts)) = open.as_ref()
            && now.duration_since(*at) < OPEN_COUNT_AGE
        {
            return Ok(counts.clone());
        }
        let mut counts = BTreeMap::new();
        for record in self.configuration.store().findings().await? {
            for f in record.findings.iter().filter(|f| f.gone_unix == 0) {
                *counts.entry(f.kind.clone()).or_default() += 1;
            }
        }
        *open = Some((now, counts.clone()));
        Ok(counts)
    }

    /// Findings matching `filter` (each field ignored when empty), and every host's last scan.
    pub async fn list(&self, filter: &pb::ListFindingsRequest) -> Result<pb::ListFindingsResponse, StoreError> {
        let records = self.configuration.store().findings().await?;
        let mut response = pb::ListFindingsResponse::default();
        for record in records {
            if !filter.agent.is_empty() && record.agent != filter.agent {
                continue;
            }
            for f in &record.findings {
                let state = if f.gone_unix == 0 { "open" } else { "gone" };
                let matches = (filter.server.is_empty() || f.server == filter.server)
                    && (filter.kind.is_empty() || f.kind == filter.kind)
                    && (filter.state.is_empty() || filter.state == state);
                if matches {
                    response.findings.push(stored_to_pb(&record.agent, f));
                }
            }
            response.hosts.push(pb::HostScan {
                agent: record.agent.clone(),
                scanned_unix: record.scanned_unix,
                files_scanned: record.files_scanned,
                truncated: record.truncated,
                unreadable: record
                    .unreadable
                    .iter()
                    .map(|(file, reason)| pb::Unreadable { file: file.clone(), reason: reason.clone() })
                    .collect(),
                dropped: record.dropped,
            });
        }
        Ok(response)
    }
}

fn stored_to_pb(agent: &str, f: &StoredFinding) -> pb::StoredFinding {
    pb::StoredFinding {
        agent: agent.to_string(),
        finding: Some(pb::Finding {
            file: f.file.clone(),
            location: f.location.clone(),
            server: f.server.clone(),
            client: f.client.clone(),
            kind: f.kind.clone(),
            fingerprint: f.fingerprint.clone(),
        }),
        first_seen_unix: f.first_seen_unix,
        last_seen_unix: f.last_seen_unix,
        gone_unix: f.gone_unix,
    }
}

/// Refuses a report out of bounds or with a field that is not of its form.
fn check(report: &pb::Findings) -> Result<(), ReportError> {
    // An agent keeps what it sends within these; more is not a scan's result.
    let sent_limit = MAX_FINDINGS_PER_HOST * 5;
    if report.findings.len() > sent_limit {
        return Err(ReportError::TooMany { what: "findings", count: report.findings.len(), limit: sent_limit });
    }
    if report.unreadable.len() > MAX_UNREADABLE_PER_HOST {
        let (what, count, limit) = ("unreadable files", report.unreadable.len(), MAX_UNREADABLE_PER_HOST);
        return Err(ReportError::TooMany { what, count, limit });
    }
    for (index, f) in report.findings.iter().enumerate() {
        let field = |field, why| ReportError::Field { index, field, why };
        let text = |value: &str, max: usize, name: &'static str, required: bool| {
            if required && value.is_empty() {
                return Err(field(name, "is empty"));
            }
            if value.len() > max {
                return Err(field(name, "is too long"));
            }
            if value.chars().any(char::is_control) {
                return Err(field(name, "holds control characters"));
            }
            Ok(())
        };
        text(&f.file, MAX_FILE, "file", true)?;
        text(&f.location, MAX_LOCATION, "location", true)?;
        text(&f.server, MAX_SERVER, "server", false)?;
        let code = |value: &str, name: &'static str| {
            let ok = !value.is_empty()
                && value.len() <= MAX_CODE
                && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if ok { Ok(()) } else { Err(field(name, "is not a lower_snake_case code")) }
        };
        code(&f.client, "client")?;
        code(&f.kind, "kind")?;
        if f.fingerprint.len() != 32 || !f.fingerprint.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(field("fingerprint", "is not 32 lower-case hex digits"));
        }
    }
    Ok(())
}

/// The identity of a finding across reports: where it is and which secret it is.
fn identity(file: &str, location: &str, kind: &str, fingerprint: &str) -> (String, String, String, String) {
    (file.to_string(), location.to_string(), kind.to_string(), fingerprint.to_string())
}

/// `previous` moved on by `report` (pure).
fn merge(agent: &str, previous: Option<FindingsRecord>, report: &pb::Findings, now: i64) -> (FindingsRecord, Changes) {
    let previous = previous.unwrap_or_default();
    let mut known: BTreeMap<_, StoredFinding> =
        previous.findings.into_iter().map(|f| (identity(&f.file, &f.location, &f.kind, &f.fingerprint), f)).collect();
    let mut changes = Changes::default();
    let mut dropped = 0u32;
    let mut reported = BTreeMap::new();
    for f in &report.findings {
        let key = identity(&f.file, &f.location, &f.kind, &f.fingerprint);
        if reported.contains_key(&key) {
            continue;
        }
        let stored = match known.remove(&key) {
            Some(mut stored) => {
                if stored.gone_unix != 0 {
                    changes.opened += 1;
                    stored.gone_unix = 0;
                    stored.opened_unix = now;
                }
                stored.last_seen_unix = now;
                stored.server.clone_from(&f.server);
                stored.client.clone_from(&f.client);
                stored
            }
            None => {
                changes.opened += 1;
                StoredFinding {
                    file: f.file.clone(),
                    location: f.location.clone(),
                    server: f.server.clone(),
                    client: f.client.clone(),
                    kind: f.kind.clone(),
                    fingerprint: f.fingerprint.clone(),
                    first_seen_unix: now,
                    last_seen_unix: now,
                    gone_unix: 0,
                    opened_unix: now,
                }
            }
        };
        reported.insert(key, stored);
    }
    // What this report no longer has is gone, unless the scan was cut short (then what is
    // missing is unknown, and stays as it was).
    for (key, mut stored) in known {
        if stored.gone_unix == 0 && !report.truncated {
            stored.gone_unix = now;
            changes.gone += 1;
        }
        if stored.gone_unix == 0 || now - stored.gone_unix <= GONE_RETENTION_SECS {
            reported.insert(key, stored);
        }
    }
    let mut findings: Vec<StoredFinding> = reported.into_values().collect();
    // Open ones first, so the cap drops history before anything open.
    findings.sort_by_key(|f| (f.gone_unix != 0, std::cmp::Reverse(f.last_seen_unix)));
    if findings.len() > MAX_FINDINGS_PER_HOST {
        dropped = (findings.len() - MAX_FINDINGS_PER_HOST) as u32;
        findings.truncate(MAX_FINDINGS_PER_HOST);
    }
    findings.sort_by(|a, b| (&a.file, &a.location).cmp(&(&b.file, &b.location)));
    changes.open = findings.iter().filter(|f| f.gone_unix == 0).count();
    let record = FindingsRecord {
        agent: agent.to_string(),
        scanned_unix: report.scanned_unix,
        files_scanned: report.files_scanned,
        truncated: report.truncated,
        unreadable: report
            .unreadable
            .iter()
            .map(|u| (bounded(&u.file, MAX_FILE), bounded(&u.reason, MAX_REASON)))
            .collect(),
        dropped,
        findings,
    };
    (record, changes)
}

fn bounded(text: &str, max: usize) -> String {
    crate::fleet::presence::bounded(text, max).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(file: &str, location: &str, fingerprint: char) -> pb::Finding {
        pb::Finding {
            file: file.into(),
            location: location.into(),
            server: "github".into(),
            client: "cursor".into(),
            kind: "github_token".into(),
            fingerprint: fingerprint.to_string().repeat(32),
        }
    }

    fn report(findings: Vec<pb::Finding>, truncated: bool) -> pb::Findings {
        pb::Findings { scanned_unix: 1, files_scanned: 3, truncated, findings, unreadable: Vec::new() }
    }

    #[test]
    fn findings_open_stay_open_go_and_reopen_by_report() {
        let a = finding("/h/.cursor/mcp.json", "mcpServers.github.env.GITHUB_TOKEN", 'a');
        let b = finding("/h/.vscode/mcp.json", "servers.x.headers.Authorization", 'b');
        let (first, changes) = merge("h1", None, &report(vec![a.clone(), b.clone()], false), 100);
        assert_eq!(changes, Changes { opened: 2, gone: 0, open: 2 });
        // The same set again: nothing opens, last seen moves, first seen stays.
        let (second, changes) = merge("h1", Some(first), &report(vec![b.clone(), a.clone()], false), 200);
        assert_eq!(changes, Changes { opened: 0, gone: 0, open: 2 });
        assert!(second.findings.iter().all(|f| f.first_seen_unix == 100 && f.last_seen_unix == 200));
        // `a` removed from its file: gone, kept as history.
        let (third, changes) = merge("h1", Some(second), &report(vec![b.clone()], false), 300);
        assert_eq!(changes, Changes { opened: 0, gone: 1, open: 1 });
        let gone: Vec<_> = third.findings.iter().filter(|f| f.gone_unix == 300).map(|f| &f.location).collect();
        assert_eq!(gone, [&a.location]);
        // Back again: reopened, with its first sighting kept.
        let (fourth, changes) = merge("h1", Some(third), &report(vec![a.clone(), b], false), 400);
        assert_eq!(changes, Changes { opened: 1, gone: 0, open: 2 });
        assert!(fourth.findings.iter().all(|f| f.gone_unix == 0 && f.first_seen_unix == 100));
        // A rotated secret at the same place is a new finding; the old one is gone.
        let rotated = finding(&a.file, &a.location, 'c');
        let (_, changes) = merge("h1", Some(fourth), &report(vec![rotated], false), 500);
        assert_eq!(changes, Changes { opened: 1, gone: 2, open: 1 });
    }

    #[test]
    fn a_truncated_scan_marks_nothing_gone_and_history_expires() {
        let a = finding("/h/mcp.json", "mcpServers.a.env.TOKEN", 'a');
        let (first, _) = merge("h1", None, &report(vec![a], false), 100);
        let (second, changes) = merge("h1", Some(first), &report(vec![], true), 200);
        assert_eq!(changes, Changes { opened: 0, gone: 0, open: 1 }, "missing from a cut-short scan is unknown");
        let (third, _) = merge("h1", Some(second), &report(vec![], false), 300);
        assert_eq!(third.findings.len(), 1);
        let (fourth, _) = merge("h1", Some(third), &report(vec![], false), 301 + GONE_RETENTION_SECS);
        assert!(fourth.findings.is_empty(), "history past the retention is forgotten");
    }

    #[test]
    fn reports_out_of_bounds_or_form_are_refused() {
        let ok = finding("/h/mcp.json", "mcpServers.a.env.TOKEN", 'a');
        assert!(check(&report(vec![ok.clone()], false)).is_ok());
        let bad = [
            pb::Finding { file: String::new(), ..ok.clone() },
            pb::Finding { location: "x".repeat(MAX_LOCATION + 1), ..ok.clone() },
            pb::Finding { kind: "Github Token".into(), ..ok.clone() },
            pb::Finding { client: String::new(), ..ok.clone() },
            pb::Finding { fingerprint: "ABCDEF".repeat(6)[..32].to_string(), ..ok.clone() },
            pb::Finding { fingerprint: "ghp_notafingerprint".into(), ..ok.clone() },
            pb::Finding { file: "/h/mcp.json\n[fake log line]".into(), ..ok.clone() },
        ];
        for f in bad {
            assert!(matches!(check(&report(vec![f.clone()], false)), Err(ReportError::Field { .. })), "{f:?}");
        }
        let many = vec![ok; MAX_FINDINGS_PER_HOST * 5 + 1];
        assert!(matches!(check(&report(many, false)), Err(ReportError::TooMany { .. })));
    }

    #[test]
    fn reports_are_written_at_most_once_per_interval_the_newest_kept() {
        let start = tokio::time::Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut paced = Paced::new(WRITE_INTERVAL, start);
        assert_eq!(paced.offer(1, at(0)), Some(1), "the first goes at once");
        // A burst within the interval: nothing written, only the newest waits.
        for (i, ms) in [(2, 10), (3, 2_000), (4, 9_999)] {
            assert_eq!(paced.offer(i, at(ms)), None);
        }
        assert_eq!(paced.deadline(), Some(at(10_000)));
        assert_eq!(paced.take(at(9_999)), None);
        assert_eq!(paced.take(at(10_000)), Some(4), "the newest, when its slot comes");
        assert_eq!(paced.deadline(), None);
        assert_eq!(paced.offer(5, at(15_000)), None, "the next slot is an interval after the last write");
        assert_eq!(paced.take(at(20_000)), Some(5));
    }

    #[test]
    fn a_host_keeps_at_most_the_cap_open_ones_first() {
        let many: Vec<_> = (0..MAX_FINDINGS_PER_HOST + 10)
            .map(|i| pb::Finding { location: format!("a.b[{i}]"), ..finding("/h/mcp.json", "", 'a') })
            .collect();
        let (record, changes) = merge("h1", None, &report(many, false), 100);
        assert_eq!(record.findings.len(), MAX_FINDINGS_PER_HOST);
        assert_eq!(record.dropped, 10);
        assert_eq!(changes.open, MAX_FINDINGS_PER_HOST);
    }
}
