//! Which agents are connected, what they applied and when they were last heard from. Kept in
//! memory: after a restart every agent reconnects and reports again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use proto::v1 as pb;

use crate::configuration::store::{AgentRecord, PresenceRecord};

#[derive(Default)]
struct Live {
    connected: bool,
    /// Bumped on every connection, so a stale session's goodbye does not mark a newer one gone.
    generation: u64,
    labels: BTreeMap<String, String>,
    applied_version: u64,
    last_seen_unix_ms: i64,
    last_error: String,
    /// The current generation, watched by every session of the agent: one stream per agent,
    /// the newest; an older one ends when it sees a newer generation.
    current: Option<tokio::sync::watch::Sender<u64>>,
}

/// The longest NACK reason kept and shown, in bytes: an agent's message, whatever it sends.
const MAX_ERROR_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes on a character boundary.
pub(crate) fn bounded(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Live status of every agent that connected since the control plane started.
#[derive(Default)]
pub struct Presence {
    agents: Mutex<HashMap<String, Live>>,
    /// Revocation versions not yet applied by every agent connected when they were published.
    waiting: Mutex<std::collections::VecDeque<Waiting>>,
    /// How long the last revocation versions took to be enforced: (published, milliseconds).
    enforced: Mutex<std::collections::VecDeque<(i64, u64)>>,
    /// The same, every one since this process started, as seconds.
    enforcement: Mutex<Option<warden_core::prometheus::Histogram>>,
}

/// A version carrying revocations, and the connected agents that had not applied it yet.
struct Waiting {
    version: u64,
    published_unix_ms: i64,
    behind: HashSet<String>,
}

/// Revocation versions waited on at once; past it the oldest is given up (not measured).
const MAX_WAITING: usize = 64;
/// Buckets of the enforcement-time histogram, in seconds (a fleet takes a quarter of a second;
/// an agent that stalls, seconds).
pub const ENFORCEMENT_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Enforcement times kept (the oldest go first).
const MAX_ENFORCED: usize = 10_000;

impl Presence {
    fn with<R>(&self, id: &str, f: impl FnOnce(&mut Live) -> R) -> R {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        let live = agents.entry(id.to_string()).or_default();
        live.last_seen_unix_ms = crate::now_unix_ms();
        f(live)
    }

    /// An agent opened its stream; returns the connection's generation, and a watch that
    /// moves when a newer stream of the same agent replaces this one.
    pub fn connected(
        &self,
        id: &str,
        labels: BTreeMap<String, String>,
        applied_version: u64,
    ) -> (u64, tokio::sync::watch::Receiver<u64>) {
        self.with(id, |live| {
            live.connected = true;
            live.generation += 1;
            live.labels = labels;
            live.applied_version = applied_version;
            let current = live.current.get_or_insert_with(|| tokio::sync::watch::Sender::new(0));
            current.send_replace(live.generation);
            let mut watching = current.subscribe();
            watching.mark_unchanged();
            (live.generation, watching)
        })
    }

    /// The agent applied `version`.
    pub fn acked(&self, id: &str, version: u64) {
        let before = self.with(id, |live| {
            live.last_error.clear();
            std::mem::replace(&mut live.applied_version, version)
        });
        if version > before {
            self.caught_up(id, |v| v <= version);
        }
    }

    /// A version carrying revocations was published at `published_unix_ms`: it is enforced
    /// once every agent connected now has applied it (see [`Presence::enforcement_times`]).
    pub fn revocations_published(&self, version: u64, published_unix_ms: i64) {
        let behind: HashSet<String> = {
            let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
            agents
                .iter()
                .filter(|(_, live)| live.connected && live.applied_version < version)
                .map(|(id, _)| id.clone())
                .collect()
        };
        // With no agent behind there is nothing to measure.
        if behind.is_empty() {
            return;
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.len() == MAX_WAITING {
            waiting.pop_front();
        }
        waiting.push_back(Waiting { version, published_unix_ms, behind });
    }

    /// Agent `id` no longer holds up the versions `done` says it has (applied, or left).
    fn caught_up(&self, id: &str, done: impl Fn(u64) -> bool) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.is_empty() {
            return;
        }
        let now = crate::now_unix_ms();
        let mut enforced = Vec::new();
        waiting.retain_mut(|w| {
            if done(w.version) {
                w.behind.remove(id);
            }
            let all = w.behind.is_empty();
            if all {
                enforced.push((w.published_unix_ms, (now - w.published_unix_ms).max(0) as u64));
            }
            !all
        });
        drop(waiting);
        if !enforced.is_empty() {
            let mut histogram = self.enforcement.lock().unwrap_or_else(|e| e.into_inner());
            let histogram =
                histogram.get_or_insert_with(|| warden_core::prometheus::Histogram::new(ENFORCEMENT_BUCKETS));
            for (_, ms) in &enforced {
                histogram.observe(*ms as f64 / 1000.0);
            }
            let mut times = self.enforced.lock().unwrap_or_else(|e| e.into_inner());
            for time in enforced {
                if times.len() == MAX_ENFORCED {
                    times.pop_front();
                }
                times.push_back(time);
            }
        }
    }

    /// Every enforcement time measured since this process started, in seconds.
    pub fn enforcement_histogram(&self) -> warden_core::prometheus::Histogram {
        let histogram = self.enforcement.lock().unwrap_or_else(|e| e.into_inner());
        histogram.clone().unwrap_or_else(|| warden_core::prometheus::Histogram::new(ENFORCEMENT_BUCKETS))
    }

    /// How long revocation versions published at or after `since_unix_ms` took until every
    /// agent connected at their publication had applied them (or left), in milliseconds: the
    /// last [`MAX_ENFORCED`] measured since this process started.
    pub fn enforcement_times(&self, since_unix_ms: i64) -> Vec<u64> {
        let times = self.enforced.lock().unwrap_or_else(|e| e.into_inner());
        times.iter().filter(|(at, _)| *at >= since_unix_ms).map(|(_, ms)| *ms).collect()
    }

    /// The agent refused `version`.
    pub fn nacked(&self, id: &str, error: &str) {
        self.with(id, |live| live.last_error = bounded(error, MAX_ERROR_BYTES).to_string());
    }

    /// The agent was heard from.
    pub fn seen(&self, id: &str) {
        self.with(id, |_| ());
    }

    /// How many connected agents have not applied `version` yet.
    pub fn behind(&self, version: u64) -> usize {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents.values().filter(|live| live.connected && live.applied_version < version).count()
    }

    /// The stream of connection `generation` ended.
    pub fn disconnected(&self, id: &str, generation: u64) {
        let gone = self.with(id, |live| {
            let gone = live.generation == generation;
            if gone {
                live.connected = false;
            }
            gone
        });
        // A disconnected agent is not part of the fleet a revocation must reach.
        if gone {
            self.caught_up(id, |_| true);
        }
    }

    /// The agents seen since this process started, as registry records (when the registry
    /// itself cannot be read).
    pub fn seen_here(&self) -> BTreeMap<String, AgentRecord> {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents
            .iter()
            .map(|(id, live)| {
                let record = AgentRecord {
                    id: id.clone(),
                    labels: live.labels.clone(),
                    joined_unix: 0,
                    certificate_not_after_unix: 0,
                    certificates: Vec::new(),
                    attested: None,
                };
                (id.clone(), record)
            })
            .collect()
    }

    /// The agents connected here, as published for the other replicas.
    pub fn records(&self, replica: &str) -> HashMap<String, PresenceRecord> {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents
            .iter()
            .filter(|(_, live)| live.connected)
            .map(|(id, live)| {
                let record = PresenceRecord {
                    agent: id.clone(),
                    replica: replica.to_string(),
                    labels: live.labels.clone(),
                    applied_version: live.applied_version,
                    last_error: live.last_error.clone(),
                };
                (id.clone(), record)
            })
            .collect()
    }

    /// Registered agents with their live status, by id: as seen here, or, for an agent not
    /// connected here, as another replica published it (`elsewhere`).
    pub fn report(
        &self,
        registered: BTreeMap<String, AgentRecord>,
        elsewhere: &[PresenceRecord],
    ) -> Vec<pb::AgentStatus> {
        // Each agent's furthest stream elsewhere, found once: looked up per registered agent, a
        // scan of `elsewhere` each time was 10^8 comparisons at 10,000 agents.
        let mut furthest: HashMap<&str, &PresenceRecord> = HashMap::with_capacity(elsewhere.len());
        for remote in elsewhere {
            furthest
                .entry(&remote.agent)
                .and_modify(|held| {
                    if remote.applied_version > held.applied_version {
                        *held = remote;
                    }
                })
                .or_insert(remote);
        }
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        registered
            .into_values()
            .map(|record| {
                let live = agents.get(&record.id);
                let remote = furthest.get(record.id.as_str()).copied().filter(|_| !live.is_some_and(|l| l.connected));
                if let Some(remote) = remote {
                    return pb::AgentStatus {
                        labels: remote.labels.clone().into_iter().collect(),
                        connected: true,
                        applied_version: remote.applied_version,
                        last_seen_unix_ms: live.map_or(0, |l| l.last_seen_unix_ms),
                        last_error: remote.last_error.clone(),
                        certificate_not_after_unix: record.certificate_not_after_unix,
                        id: record.id,
                        control_plane: remote.replica.clone(),
                    };
                }
                pb::AgentStatus {
                    control_plane: String::new(),
                    labels: live
                        .filter(|l| l.generation > 0)
                        .map_or(record.labels.clone(), |l| l.labels.clone())
                        .into_iter()
                        .collect(),
                    connected: live.is_some_and(|l| l.connected),
                    applied_version: live.map_or(0, |l| l.applied_version),
                    last_seen_unix_ms: live.map_or(0, |l| l.last_seen_unix_ms),
                    last_error: live.map_or(String::new(), |l| l.last_error.clone()),
                    certificate_not_after_unix: record.certificate_not_after_unix,
                    id: record.id,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_is_enforced_when_every_agent_connected_at_its_publication_applied_it_or_left() {
        let presence = Presence::default();
        let (_, _) = presence.connected("a", BTreeMap::new(), 4);
        let (b, _) = presence.connected("b", BTreeMap::new(), 4);
        let (_, _) = presence.connected("c", BTreeMap::new(), 5);
        let published = crate::now_unix_ms();
        presence.revocations_published(5, published);
        presence.revocations_published(6, published);
        presence.acked("a", 5);
        assert!(presence.enforcement_times(0).is_empty(), "b has applied neither");
        presence.disconnected("b", b);
        assert_eq!(presence.enforcement_times(0).len(), 1, "version 5: a applied it, b left, c had it");
        presence.acked("c", 6);
        presence.acked("a", 7);
        assert_eq!(presence.enforcement_times(0).len(), 2, "a skipped to 7, which holds 6");
        assert!(presence.enforcement_times(published + 60_000).is_empty(), "the window is by publication");
        // Nobody behind: nothing to measure.
        presence.revocations_published(7, published);
        assert_eq!(presence.enforcement_times(0).len(), 2);
    }
}
