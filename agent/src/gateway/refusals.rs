//! Refusals before any token was accepted (no token, a malformed or forged one, a refused
//! Origin, a bad DPoP proof), aggregated: one decision record per server, reason, HTTP method
//! and source address each second, carrying how many it stands for (`count`) and the source.
//!
//! Every such refusal used to be a record of its own, so garbage traffic — which costs its
//! sender nothing — could roll the control plane's bounded decision log over in minutes and
//! push out the authenticated decisions an operator needs after an incident. Every decision made
//! for an authenticated caller is still a record of its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::decision_record::DecisionRecordRef;
use proto::v1 as pb;
use warden_tasks::Shutdown;

use crate::decisions::Outbox;

/// How often tallies become records.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Distinct (server, reason, method, source) tallies per window; past it, refusals from new
/// sources are tallied under the unspecified address, so a spray from many addresses is still
/// counted, in bounded memory.
const MAX_TALLIES: usize = 4_096;
/// Where refusals past [`MAX_TALLIES`] are tallied.
const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    server: Arc<str>,
    reason: String,
    method: String,
    source: IpAddr,
    via: &'static str,
    /// The server was in audit mode: the request was forwarded all the same.
    audit: bool,
}

struct Tally {
    count: u64,
    /// When the first refusal of the window arrived, and how long it took.
    first_unix_nanos: i64,
    latency_micros: u64,
    /// The first refusal's trace id, if it had one.
    trace_id: String,
}

/// The refusals of the current window.
#[derive(Default)]
pub struct Refusals {
    tallies: Mutex<HashMap<Key, Tally>>,
}

/// One refusal.
pub(crate) struct Refusal<'a> {
    pub server: &'a Arc<str>,
    pub method: &'a str,
    pub reason: &'a str,
    pub source: IpAddr,
    pub via: &'static str,
    pub latency_micros: u64,
    pub trace_id: &'a str,
    /// The server is in audit mode: the request is forwarded, and this is what Warden would do.
    pub audit: bool,
}

impl Refusals {
    /// Counts one refusal.
    pub(crate) fn add(&self, refusal: Refusal<'_>) {
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = Key {
            server: refusal.server.clone(),
            reason: refusal.reason.to_string(),
            // Method names are the caller's: keep a short prefix (HTTP methods are short).
            method: refusal.method[..refusal.method.floor_char_boundary(16)].to_string(),
            source: refusal.source,
            via: refusal.via,
            audit: refusal.audit,
        };
        if tallies.len() >= MAX_TALLIES && !tallies.contains_key(&key) {
            key.source = ELSEWHERE;
        }
        let tally = tallies.entry(key).or_insert_with(|| Tally {
            count: 0,
            first_unix_nanos: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64),
            latency_micros: refusal.latency_micros,
            trace_id: refusal.trace_id[..refusal.trace_id.floor_char_boundary(32)].to_string(),
        });
        tally.count += 1;
    }

    /// Turns the window's tallies into records, one each.
    pub fn flush(&self, outbox: &Outbox) {
        let tallies = std::mem::take(&mut *self.tallies.lock().unwrap_or_else(|e| e.into_inner()));
        for (key, tally) in tallies {
            let source = key.source.to_string();
            outbox.record(&DecisionRecordRef {
                time_unix_nanos: tally.first_unix_nanos,
                server: &key.server,
                method: &key.method,
                // In audit mode the requests went through: what Warden would do is `audit`.
                decision: if key.audit { pb::Decision::Allow } else { pb::Decision::Deny },
                audit: if key.audit { "would_deny" } else { "" },
                reason: &key.reason,
                latency_micros: tally.latency_micros,
                trace_id: &tally.trace_id,
                via: key.via,
                count: tally.count,
                source: &source,
                ..Default::default()
            });
        }
    }

    /// Flushes every [`WINDOW`] until `stop`, then once more.
    pub async fn run(self: Arc<Self>, outbox: Arc<Outbox>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(WINDOW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(&outbox),
                _ = stop.requested() => break,
            }
        }
        self.flush(&outbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal<'a>(server: &'a Arc<str>, reason: &'a str, source: &str) -> Refusal<'a> {
        Refusal {
            server,
            method: "POST",
            reason,
            source: source.parse().unwrap(),
            via: "gateway",
            latency_micros: 3,
            trace_id: "",
            audit: false,
        }
    }

    #[test]
    fn refusals_are_tallied_per_server_reason_and_source_in_bounded_memory() {
        let refusals = Refusals::default();
        let (notes, other): (Arc<str>, Arc<str>) = ("notes".into(), "other".into());
        for _ in 0..1000 {
            refusals.add(refusal(&notes, "missing_token", "10.0.0.1"));
        }
        refusals.add(refusal(&notes, "bad_signature", "10.0.0.1"));
        refusals.add(refusal(&other, "missing_token", "10.0.0.1"));
        refusals.add(refusal(&notes, "missing_token", "10.0.0.2"));
        let counts = |r: &Refusals| -> Vec<u64> {
            let mut c: Vec<u64> = r.tallies.lock().unwrap().values().map(|t| t.count).collect();
            c.sort();
            c
        };
        assert_eq!(counts(&refusals), [1, 1, 1, 1000]);
        // A spray from a million addresses stays within the bound, every refusal counted.
        let sprayed = Refusals::default();
        for i in 1..=10_000u32 {
            sprayed.add(refusal(&notes, "missing_token", &std::net::Ipv4Addr::from(i).to_string()));
        }
        let tallies = sprayed.tallies.lock().unwrap();
        assert_eq!(tallies.len(), MAX_TALLIES + 1);
        assert_eq!(tallies.values().map(|t| t.count).sum::<u64>(), 10_000);
    }
}
