//! This host's inventory of static secrets: the MCP client and server configuration on it,
//! scanned with `warden-scan` at start, on a schedule, and when a file it read changes, and
//! reported to the control plane as one complete set (never a value: where, which kind, and a
//! fingerprint keyed with the fleet's key, so one secret is recognised across hosts).
//!
//! Scans wait for the fleet's fingerprint key (sent by the control plane on every stream):
//! a fingerprint under a key of this agent's own could not be compared with other hosts'.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proto::v1 as pb;
use tokio::sync::watch;
use warden_scan::{FingerprintKey, Limits, Report, Scanner};
use warden_tasks::Shutdown;

/// What to scan and how often.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    /// Files and directories to scan besides the users' default places.
    pub paths: Vec<PathBuf>,
    /// Home directories whose default places are scanned ([`home_directories`]).
    pub homes: Vec<PathBuf>,
    /// Full scans this often (zero: no scanning at all).
    pub interval: Duration,
    /// The files a scan read (and the explicit files) are checked for changes this often; a
    /// change triggers a scan at once.
    pub watch_interval: Duration,
}

/// Every user's home directory on this host: `/root`, each directory in `/home`, and `home`
/// (the agent's own `$HOME`), once each.
pub fn home_directories(home: Option<PathBuf>) -> Vec<PathBuf> {
    let mut homes = vec![PathBuf::from("/root")];
    if let Ok(entries) = std::fs::read_dir("/home") {
        homes.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()));
    }
    homes.extend(home);
    homes.sort();
    homes.dedup();
    homes
}

/// The places a scan covers: the explicit paths, and the default places of every home.
pub fn roots(options: &ScanOptions) -> Vec<PathBuf> {
    let mut roots = options.paths.clone();
    for home in &options.homes {
        roots.extend(warden_scan::default_roots(home));
    }
    roots
}

/// A report as sent on the stream.
pub fn to_pb(report: &Report, scanned_unix: i64) -> pb::Findings {
    pb::Findings {
        scanned_unix,
        files_scanned: u32::try_from(report.files_scanned).unwrap_or(u32::MAX),
        truncated: report.truncated,
        findings: report
            .findings
            .iter()
            .map(|f| pb::Finding {
                file: f.file.display().to_string(),
                location: f.location.clone(),
                server: f.server.clone().unwrap_or_default(),
                client: f.client.as_str().to_string(),
                kind: f.kind.as_str().to_string(),
                fingerprint: f.fingerprint.clone(),
            })
            .collect(),
        unreadable: report
            .unreadable
            .iter()
            .map(|u| pb::Unreadable { file: u.file.display().to_string(), reason: u.reason.clone() })
            .collect(),
    }
}

/// What a file looked like: its modification time and length, or `None` when it is missing.
type Seen = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

fn look(files: &[PathBuf]) -> Seen {
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
            (f.clone(), meta)
        })
        .collect()
}

/// The files whose change should trigger a scan: every root that is (or names) a file, and
/// every file a finding or a read failure was in.
fn watched(roots: &[PathBuf], report: &Report) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = roots.iter().filter(|r| !r.is_dir()).cloned().collect();
    files.extend(report.findings.iter().map(|f| f.file.clone()));
    files.extend(report.unreadable.iter().map(|u| u.file.clone()));
    files.sort();
    files.dedup();
    files
}

/// Scans until `stop`, publishing each report that differs from the last in `out`, once the
/// fleet's fingerprint key is in `key`.
pub async fn run(
    options: ScanOptions,
    mut key: watch::Receiver<Option<[u8; 32]>>,
    out: watch::Sender<Option<Arc<pb::Findings>>>,
    mut stop: Shutdown,
) {
    if options.interval.is_zero() {
        return;
    }
    let roots = roots(&options);
    tracing::info!(places = roots.len(), every = ?options.interval, "scanning this host's MCP configuration for static secrets");
    loop {
        // A scan needs the fleet's key; a new key (another fleet CA) means scanning again.
        let current = loop {
            if let Some(k) = *key.borrow_and_update() {
                break k;
            }
            tokio::select! {
                changed = key.changed() => if changed.is_err() { return },
                _ = stop.requested() => return,
            }
        };
        let scanner = Arc::new(Scanner::new(FingerprintKey::new(current), Limits::default()));
        loop {
            let (scanner, scanned) = (scanner.clone(), roots.clone());
            let Ok(report) = tokio::task::spawn_blocking(move || scanner.scan_paths(&scanned)).await else {
                return;
            };
            publish(&out, &report);
            let files = watched(&roots, &report);
            let mut before = look(&files);
            let next_scan = tokio::time::Instant::now() + options.interval;
            let mut tick = tokio::time::interval(options.watch_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next_scan) => break,
                    _ = tick.tick() => {
                        let files = files.clone();
                        let Ok(now) = tokio::task::spawn_blocking(move || look(&files)).await else { return };
                        if now != before {
                            tracing::info!("an MCP configuration file changed: scanning again");
                            break;
                        }
                        before = now;
                    }
                    changed = key.changed() => {
                        if changed.is_err() { return }
                        if *key.borrow() != Some(current) {
                            break;
                        }
                    }
                    _ = stop.requested() => return,
                }
            }
            if *key.borrow() != Some(current) {
                break;
            }
        }
    }
}

/// Publishes `report` unless it says what the last one said (only its time differs).
fn publish(out: &watch::Sender<Option<Arc<pb::Findings>>>, report: &Report) {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let next = to_pb(report, now);
    out.send_if_modified(|held| {
        let same = held.as_ref().is_some_and(|h| pb::Findings { scanned_unix: now, ..(**h).clone() } == next);
        if !same {
            let (open, unreadable) = (next.findings.len(), next.unreadable.len());
            if open > 0 {
                tracing::warn!(findings = open, unreadable, "static secrets in MCP configuration on this host");
            }
            *held = Some(Arc::new(next));
        }
        !same
    });
}
