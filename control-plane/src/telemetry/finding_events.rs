//! The secret inventory's events as OTLP logs: a finding opened (first found, or found again
//! after it was gone) or gone, one `warden.finding` record each — where the secret is and its
//! kind and fingerprint, never its value (the control plane never has it).
//!
//! Events are read from the stored findings (each keeps when it last opened and when it went),
//! in time order, from a cursor of whole seconds persisted in the configuration store; only the
//! leading replica exports. An event is exported once it is [`SETTLE_SECS`] old, so that
//! reports stored in the same second by this replica are all in; a report stored later with
//! an older time (another replica's clock behind this one's by more than that) is not exported.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use warden_otlp::{attribute, string};

use super::otlp::{LogSource, SourceError};
use crate::configuration::store::{FindingsRecord, Store, StoredFinding};
use crate::fleet::replicas::Leadership;

/// How old an event must be to be exported.
const SETTLE_SECS: i64 = 5;
/// How often the store is read when no report here changed anything (reports stored by other
/// replicas).
const POLL: Duration = Duration::from_secs(30);

/// The findings' events, from the configuration store.
pub struct FindingEvents {
    store: Arc<Store>,
    leadership: Leadership,
    /// Set by the inventory when a report here opened or closed a finding.
    changed: Arc<AtomicBool>,
    /// When the store was last read.
    read_at: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl FindingEvents {
    /// Events of the findings in `store`; `changed` is the inventory's flag.
    pub fn new(store: Arc<Store>, leadership: Leadership, changed: Arc<AtomicBool>) -> FindingEvents {
        FindingEvents { store, leadership, changed, read_at: tokio::sync::Mutex::new(None) }
    }
}

/// One event: when, which host, the finding, and whether it opened.
struct Event<'a> {
    at: i64,
    agent: &'a str,
    finding: &'a StoredFinding,
    opened: bool,
}

/// The events of `records` after `cursor` and at most at `until`, in time order, as many whole
/// seconds of them as fit in `max` (at least one second's, however many that is), with the
/// cursor after them.
fn events_after(records: &[FindingsRecord], cursor: i64, until: i64, max: usize) -> (i64, Vec<Event<'_>>) {
    let mut events: Vec<Event<'_>> = Vec::new();
    for record in records {
        for finding in &record.findings {
            let opened = if finding.opened_unix != 0 { finding.opened_unix } else { finding.first_seen_unix };
            let gone = finding.gone_unix;
            // A finding gone before it was last opened had its gone event already (its
            // history keeps only the latest of each).
            for (at, is_open) in [(opened, true), (gone, false)] {
                if at != 0 && at > cursor && at <= until && (is_open || gone >= opened) {
                    events.push(Event { at, agent: &record.agent, finding, opened: is_open });
                }
            }
        }
    }
    events.sort_by(|a, b| {
        (a.at, a.agent, &a.finding.file, &a.finding.location).cmp(&(
            b.at,
            b.agent,
            &b.finding.file,
            &b.finding.location,
        ))
    });
    if events.len() > max {
        let last = events[max - 1].at;
        // Whole seconds only: the cursor cannot fall inside one.
        let keep = events.iter().position(|e| e.at > last).unwrap_or(events.len());
        let keep = if events[..keep].iter().all(|e| e.at == last) {
            keep
        } else {
            events.iter().position(|e| e.at == last).unwrap_or(keep)
        };
        events.truncate(keep);
    }
    let next = events.last().map_or(cursor, |e| e.at);
    (next, events)
}

/// One event as an OTLP log record.
fn log_record(event: &Event<'_>) -> LogRecord {
    let f = event.finding;
    let state = if event.opened { "open" } else { "gone" };
    let body = format!(
        "{} {} in {} at {} (host {})",
        f.kind,
        if event.opened { "found" } else { "gone" },
        f.file,
        f.location,
        event.agent
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let (severity, text) = if event.opened { (SeverityNumber::Warn, "WARN") } else { (SeverityNumber::Info, "INFO") };
    LogRecord {
        time_unix_nano: (event.at.max(0) as u64).saturating_mul(1_000_000_000),
        observed_time_unix_nano: now,
        severity_number: severity as i32,
        severity_text: text.into(),
        body: string(body),
        attributes: vec![
            attribute("warden.agent", event.agent),
            attribute("warden.finding.state", state),
            attribute("warden.finding.kind", &f.kind),
            attribute("warden.finding.file", &f.file),
            attribute("warden.finding.location", &f.location),
            attribute("warden.finding.server", &f.server),
            attribute("warden.finding.client", &f.client),
            attribute("warden.finding.fingerprint", &f.fingerprint),
        ],
        event_name: "warden.finding".into(),
        ..Default::default()
    }
}

impl LogSource for FindingEvents {
    fn scope(&self) -> &'static str {
        "warden.findings"
    }

    async fn after_cursor(self: Arc<Self>, max: usize) -> Result<(u64, Vec<LogRecord>), SourceError> {
        if !self.leadership.is_leading() {
            return Ok((0, Vec::new()));
        }
        let mut read_at = self.read_at.lock().await;
        let now = tokio::time::Instant::now();
        let due = read_at.is_none_or(|at| now.duration_since(at) >= POLL);
        if !self.changed.swap(false, Relaxed) && !due {
            return Ok((0, Vec::new()));
        }
        *read_at = Some(now);
        let cursor = self.store.findings_exported().await? as i64;
        let records = self.store.findings().await?;
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let (next, events) = events_after(&records, cursor, unix - SETTLE_SECS, max);
        // Events not settled yet, or more than one batch: read again at the next poll.
        let (_, later) = events_after(&records, next, i64::MAX, 1);
        if !later.is_empty() {
            self.changed.store(true, Relaxed);
        }
        Ok((next.max(0) as u64, events.iter().map(log_record).collect()))
    }

    async fn delivered(self: Arc<Self>, cursor: u64) -> Result<(), SourceError> {
        Ok(self.store.set_findings_exported(cursor).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(file: &str, opened: i64, gone: i64) -> StoredFinding {
        StoredFinding {
            file: file.into(),
            location: "mcpServers.github.env.GITHUB_TOKEN".into(),
            kind: "github_token".into(),
            first_seen_unix: 100,
            opened_unix: opened,
            gone_unix: gone,
            ..Default::default()
        }
    }

    #[test]
    fn each_opening_and_going_is_one_event_in_time_order_cut_on_whole_seconds() {
        let records = [
            FindingsRecord {
                agent: "a".into(),
                findings: vec![finding("one", 100, 200), finding("two", 150, 0), finding("three", 300, 250)],
                ..Default::default()
            },
            FindingsRecord { agent: "b".into(), findings: vec![finding("four", 150, 0)], ..Default::default() },
        ];
        let seen = |cursor, until, max| {
            let (next, events) = events_after(&records, cursor, until, max);
            let events: Vec<(i64, String, bool)> =
                events.iter().map(|e| (e.at, e.finding.file.clone(), e.opened)).collect();
            (next, events)
        };
        let (next, all) = seen(0, 1_000, 100);
        assert_eq!(
            all,
            [
                (100, "one".into(), true),
                (150, "two".into(), true),
                (150, "four".into(), true),
                (200, "one".into(), false),
                (300, "three".into(), true),
            ],
            "three reopened at 300 after going at 250: its old going is not an event now"
        );
        assert_eq!(next, 300);
        // Not past `until`, nothing at or before the cursor.
        assert_eq!(seen(150, 250, 100), (200, vec![(200, "one".into(), false)]));
        // Three fit, but 150 has two: the batch ends before that second rather than inside it.
        assert_eq!(seen(0, 1_000, 2).1.len(), 1);
        // One second larger than a batch goes whole.
        assert_eq!(seen(100, 1_000, 1), (150, vec![(150, "two".into(), true), (150, "four".into(), true)]));
        assert_eq!(seen(300, 1_000, 100), (300, vec![]));
    }
}
