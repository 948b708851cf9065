//! Living with the other control-plane replicas that share an etcd store:
//!
//! * every configuration write any replica makes is watched and published here as the next
//!   state, exactly as if this replica had made it, so agents converge whichever replica they
//!   are connected to ([`follow`]); so is every deletion from the agent registry, which ends the
//!   deleted agent's stream wherever it is connected;
//! * a lease holds this replica's part: the leader key (one replica does the singleton duties)
//!   and the presence of the agents connected here, so a replica that crashes loses both within
//!   the lease's lifetime and another takes over ([`hold_lease`]). [`Leadership`] is how the
//!   tasks that do singleton duties know whether they should.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use warden_tasks::Shutdown;

use crate::configuration::Configuration;
use crate::configuration::state::{self, FleetState};
use crate::configuration::store::etcd::VersionsWrite;
use crate::configuration::store::etcd::{Followed, presence_shard};
use crate::configuration::store::{PresenceRecord, PresenceVersions, Store};
use crate::fleet::Fleet;

/// This process among the replicas sharing the store, and whether it leads.
pub struct Replica {
    /// `<server name>:<port>/<random>`.
    id: String,
    leading: watch::Sender<bool>,
}

impl Replica {
    /// Replica `id`; the one control plane of an embedded store leads from the start.
    pub fn new(id: String, alone: bool) -> Replica {
        Replica { id, leading: watch::Sender::new(alone) }
    }

    /// Whether this replica leads, watched.
    pub fn leadership(&self) -> Leadership {
        Leadership(self.leading.subscribe())
    }

    fn set_leading(&self, leading: bool) {
        let changed = self.leading.send_if_modified(|held| std::mem::replace(held, leading) != leading);
        if changed {
            if leading {
                tracing::info!(replica = %self.id, "this replica now leads the singleton duties");
            } else {
                tracing::info!(replica = %self.id, "this replica no longer leads");
            }
        }
    }
}

/// Whether this replica does the singleton duties (scheduled key refresh, expiry of
/// revocations, audit export): always on the embedded store, the elected one on etcd.
#[derive(Clone, Debug)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    /// Whether this replica leads now.
    pub fn is_leading(&self) -> bool {
        *self.0.borrow()
    }

    /// Whether it leads now, marking that seen for [`Leadership::changed`].
    pub fn observe(&mut self) -> bool {
        *self.0.borrow_and_update()
    }

    /// Resolves when leadership changes (never, once the replica is gone).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs until shutdown (nothing to do on the embedded store), following writes after etcd
/// revision `revision` (where this replica's configuration was read).
pub async fn follow(configuration: Arc<Configuration>, fleet: Arc<Fleet>, revision: i64, shutdown: Shutdown) {
    if !matches!(**configuration.store(), Store::Etcd(_)) {
        return;
    }
    let registry = {
        let (store, deletions, shutdown) =
            (configuration.store().clone(), fleet.registry_changes_sender(), shutdown.clone());
        async move {
            if let Store::Etcd(etcd) = &*store {
                etcd.follow_agent_registry(deletions, shutdown).await;
            }
        }
    };
    let (tx, mut rx) = mpsc::channel(64);
    let watcher = {
        let store = configuration.store().clone();
        async move {
            if let Store::Etcd(etcd) = &*store {
                etcd.follow(revision, tx, shutdown).await;
            }
        }
    };
    let publisher = async {
        while let Some(followed) = rx.recv().await {
            apply(&configuration, followed).await;
        }
    };
    tokio::join!(registry, watcher, publisher);
}

async fn apply(configuration: &Configuration, followed: Followed) {
    let current = configuration.current();
    match followed {
        // This replica's own write, or one it already has.
        Followed::Committed(c) if c.version <= current.version => {}
        Followed::Committed(c) if c.version == current.version + 1 => {
            let version = c.version;
            if configuration.publish(state::next_state(&current, state::plan_committed(c), version)) {
                tracing::info!(version, "configuration written by another replica");
            }
        }
        Followed::Committed(c) => {
            // A gap: versions this replica never saw. Read everything again.
            tracing::warn!(held = current.version, watched = c.version, "missed configuration versions; reading all");
            match configuration.store().load().await {
                Ok(loaded) => {
                    configuration.publish(FleetState::from_loaded(loaded));
                }
                Err(e) => tracing::error!("reading the configuration: {e}"),
            }
        }
        Followed::Reloaded(loaded) => {
            let version = loaded.version;
            if configuration.publish(FleetState::from_loaded(loaded)) {
                tracing::info!(version, "configuration read again after an etcd compaction");
            }
        }
    }
}

/// How often leadership is checked and presence changes are published.
const LEASE_TICK: Duration = Duration::from_secs(1);

/// Runs until shutdown (on etcd; the embedded store's one control plane always leads): holds
/// this replica's lease, campaigns for leadership, publishes the agents connected here, and
/// revokes the lease on the way out so the others take over at once.
pub async fn hold_lease(replica: Replica, store: Arc<Store>, fleet: Arc<Fleet>, ttl: Duration, mut shutdown: Shutdown) {
    let Store::Etcd(etcd) = &*store else { return };
    loop {
        let (lease, ttl) = match etcd.grant(ttl).await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!("etcd lease: {e}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(LEASE_TICK) => continue,
                    _ = shutdown.requested() => return,
                }
            }
        };
        // What etcd holds under this lease for the agents connected here.
        let mut published = Published::default();
        // Refreshed on a task of its own, so slow elections or presence writes never delay it.
        let mut alive = {
            let store = store.clone();
            tokio::spawn(async move {
                if let Store::Etcd(etcd) = &*store {
                    etcd.keep_alive(lease, ttl).await;
                }
            })
        };
        let _stop_refreshing = AbortOnDrop(alive.abort_handle());
        let mut tick = tokio::time::interval(LEASE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut alive => {
                    tracing::warn!("this replica's etcd lease was lost; no longer leading");
                    replica.set_leading(false);
                    break;
                }
                _ = tick.tick() => {
                    match etcd.lead(lease, &replica.id).await {
                        Ok(leading) => replica.set_leading(leading),
                        Err(e) => tracing::warn!("etcd leader election: {e}"),
                    }
                    let now = fleet.presence().records(&replica.id);
                    let (changes, versions) = published.plan(&now);
                    if !changes.is_empty() || !matches!(versions, VersionsWrite::Unchanged) {
                        let written = etcd.put_presence(lease, &replica.id, &changes, &versions).await;
                        if let Err(e) = &written {
                            tracing::warn!("publishing agent presence: {e}");
                        }
                        published.wrote(now, &changes, versions, written.is_ok());
                    }
                }
                _ = shutdown.requested() => {
                    replica.set_leading(false);
                    etcd.revoke(lease).await;
                    return;
                }
            }
        }
    }
}

/// Presence shards to write whole (`Some`) or remove (`None`).
type ShardWrites = Vec<(u32, Option<Vec<PresenceRecord>>)>;

/// The largest versions record written: past it (many agents on other versions than most, on
/// one replica), the versions go back into the shards, and the record is removed.
const MAX_VERSIONS_BYTES: usize = 256 * 1024;

/// What a replica last published of its agents' presence, and how.
#[derive(Default)]
struct Published {
    records: HashMap<String, PresenceRecord>,
    versions: Versions,
    /// Shards whose last write may not have landed (a write of several transactions failed
    /// part way): written again, from the records of the moment, at the next tick.
    dirty: BTreeSet<u32>,
}

/// The replica's versions record as etcd holds it.
#[derive(Default, PartialEq)]
enum Versions {
    /// None (a new lease holds none): the shards carry the versions.
    #[default]
    Absent,
    /// This one: the shards need not carry versions.
    Held(PresenceVersions),
    /// Unknown after a failed write.
    Unknown,
}

impl Published {
    /// The shards to write and what to do with the versions record to go to `now`.
    fn plan(&self, now: &HashMap<String, PresenceRecord>) -> (ShardWrites, VersionsWrite) {
        let versions = PresenceVersions::of(now.values());
        let fits = serde_json::to_vec(&versions).map_or(0, |v| v.len()) <= MAX_VERSIONS_BYTES;
        let (write, in_shards, mut dirty) = match (&self.versions, fits) {
            (Versions::Held(held), true) if *held == versions => (VersionsWrite::Unchanged, false, BTreeSet::new()),
            (_, true) => (VersionsWrite::Put(versions), false, BTreeSet::new()),
            (Versions::Absent, false) => (VersionsWrite::Unchanged, true, BTreeSet::new()),
            // Back into the shards: every one is written with its versions.
            (_, false) => (VersionsWrite::Delete, true, now.keys().map(|a| presence_shard(a)).collect()),
        };
        dirty.extend(&self.dirty);
        (presence_changes(&self.records, now, in_shards, &dirty), write)
    }

    /// Records a write of `changes` and `versions`, which landed or not.
    fn wrote(
        &mut self,
        now: HashMap<String, PresenceRecord>,
        changes: &[(u32, Option<Vec<PresenceRecord>>)],
        versions: VersionsWrite,
        landed: bool,
    ) {
        self.records = now;
        if landed {
            self.dirty.clear();
            match versions {
                VersionsWrite::Unchanged => {}
                VersionsWrite::Put(v) => self.versions = Versions::Held(v),
                VersionsWrite::Delete => self.versions = Versions::Absent,
            }
        } else {
            self.dirty.extend(changes.iter().map(|(shard, _)| *shard));
            self.versions = Versions::Unknown;
        }
    }
}

/// The presence shards to write (whole: `Some`) or remove (`None`) to go from `published` to
/// `now`: those holding an agent that came, went or changed other than in the version it
/// applied (which [`PresenceVersions`] carries, one record per replica; in the version too
/// when `with_versions`, the shards then carrying it), and those in `dirty`.
fn presence_changes(
    published: &HashMap<String, PresenceRecord>,
    now: &HashMap<String, PresenceRecord>,
    with_versions: bool,
    dirty: &BTreeSet<u32>,
) -> ShardWrites {
    let same = |a: &PresenceRecord, b: &PresenceRecord| {
        (&a.agent, &a.replica, &a.labels, &a.last_error) == (&b.agent, &b.replica, &b.labels, &b.last_error)
            && (!with_versions || a.applied_version == b.applied_version)
    };
    let changed =
        now.iter().filter(|(agent, record)| !published.get(*agent).is_some_and(|p| same(p, record))).map(|(a, _)| a);
    let gone = published.keys().filter(|a| !now.contains_key(*a));
    let mut shards: BTreeMap<u32, Vec<PresenceRecord>> =
        changed.chain(gone).map(|agent| (presence_shard(agent), Vec::new())).collect();
    shards.extend(dirty.iter().map(|shard| (*shard, Vec::new())));
    for (agent, record) in now {
        if let Some(records) = shards.get_mut(&presence_shard(agent)) {
            records.push(record.clone());
        }
    }
    shards
        .into_iter()
        .map(|(shard, mut records)| {
            records.sort_by(|a, b| a.agent.cmp(&b.agent));
            (shard, (!records.is_empty()).then_some(records))
        })
        .collect()
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::store::etcd::PRESENCE_SHARDS;

    fn record(agent: &str, applied_version: u64) -> (String, PresenceRecord) {
        let record = PresenceRecord {
            agent: agent.into(),
            replica: "cp-a".into(),
            labels: Default::default(),
            applied_version,
            last_error: String::new(),
        };
        (agent.to_string(), record)
    }

    #[test]
    fn a_change_rewrites_one_versions_record_and_shards_only_for_what_else_moved() {
        let published: HashMap<_, _> = (0..10_000).map(|i| record(&format!("agent-{i}"), 7)).collect();
        assert!(
            presence_changes(&published, &published, false, &BTreeSet::new()).is_empty(),
            "nothing moved, nothing written"
        );

        // One agent applies a new version: no shard is written (the replica's versions record
        // says it); one NACKs: its shard is written whole, and only it.
        let mut now = published.clone();
        now.insert("agent-42".into(), record("agent-42", 8).1);
        assert!(presence_changes(&published, &now, false, &BTreeSet::new()).is_empty());
        let versions = PresenceVersions::of(now.values());
        assert_eq!((versions.version, versions.of_agent("agent-42"), versions.of_agent("agent-1")), (7, 8, 7));
        assert_eq!(versions.others.len(), 1);
        now.get_mut("agent-42").unwrap().last_error = "refused".into();
        let changes = presence_changes(&published, &now, false, &BTreeSet::new());
        assert_eq!(changes.len(), 1);
        let (shard, Some(records)) = &changes[0] else { panic!("a shard written: {changes:?}") };
        assert_eq!(*shard, presence_shard("agent-42"));
        let expected = now.keys().filter(|a| presence_shard(a) == *shard).count();
        assert_eq!(records.len(), expected, "the shard holds every agent in it");
        assert!(records.iter().any(|r| r.agent == "agent-42" && r.applied_version == 8));
        assert!(records.windows(2).all(|w| w[0].agent < w[1].agent), "in a stable order");

        // Every agent moves (a configuration change): no shard, one small versions record.
        let moved: HashMap<_, _> = (0..10_000).map(|i| record(&format!("agent-{i}"), 9)).collect();
        assert!(presence_changes(&published, &moved, false, &BTreeSet::new()).is_empty());
        let versions = PresenceVersions::of(moved.values());
        assert_eq!((versions.version, versions.others.len()), (9, 0));
        assert!(serde_json::to_vec(&versions).unwrap().len() < 32);
        // New agents: every shard they fall in, whole.
        let changes = presence_changes(&HashMap::new(), &moved, false, &BTreeSet::new());
        assert!(changes.len() <= PRESENCE_SHARDS as usize && changes.len() > 200, "{} writes", changes.len());
        let written: usize = changes.iter().map(|(_, r)| r.as_ref().map_or(0, Vec::len)).sum();
        assert_eq!(written, 10_000);
    }

    #[test]
    fn a_shard_whose_agents_all_went_is_removed() {
        let published: HashMap<_, _> = [record("only", 3)].into_iter().collect();
        let changes = presence_changes(&published, &HashMap::new(), false, &BTreeSet::new());
        assert_eq!(changes, vec![(presence_shard("only"), None)]);
    }

    #[test]
    fn a_write_that_failed_is_made_again_and_too_many_versions_go_back_into_the_shards() {
        let agents =
            |version: u64| -> HashMap<_, _> { (0..1_000).map(|i| record(&format!("agent-{i}"), version)).collect() };
        let mut published = Published::default();
        let (changes, versions) = published.plan(&agents(1));
        assert!(changes.len() > 200 && matches!(versions, VersionsWrite::Put(ref v) if v.version == 1));
        published.wrote(agents(1), &changes, versions, true);
        assert_eq!(published.plan(&agents(1)), (vec![], VersionsWrite::Unchanged), "nothing moved, nothing written");

        // An agent leaves, and the write fails part way: its shard is written again next time,
        // even though it came back unchanged in between, and the versions record too.
        let mut without = agents(1);
        without.remove("agent-7");
        let (changes, versions) = published.plan(&without);
        assert_eq!(changes.len(), 1);
        published.wrote(without, &changes, versions, false);
        let (changes, versions) = published.plan(&agents(1));
        assert_eq!(changes.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [presence_shard("agent-7")]);
        assert!(changes[0].1.as_ref().unwrap().iter().any(|r| r.agent == "agent-7"));
        assert!(matches!(versions, VersionsWrite::Put(_)));
        published.wrote(agents(1), &changes, versions, true);

        // Half the agents on another version, with long ids: past the record's bound, the
        // record goes and every shard carries its versions again; then versions moving
        // rewrite shards.
        let long = |i: usize, v: u64| record(&format!("{}-{i}", "a".repeat(60)), v);
        let mixed: HashMap<_, _> = (0..8_000).map(|i| long(i, 1 + (i % 2) as u64)).collect();
        let (changes, versions) = published.plan(&mixed);
        assert_eq!(versions, VersionsWrite::Delete);
        let written: usize = changes.iter().map(|(_, r)| r.as_ref().map_or(0, Vec::len)).sum();
        assert_eq!(written, 8_000);
        published.wrote(mixed.clone(), &changes, versions, true);
        let mut one_moved = mixed.clone();
        one_moved.insert(long(0, 5).0, long(0, 5).1);
        let (changes, versions) = published.plan(&one_moved);
        assert_eq!((changes.len(), versions), (1, VersionsWrite::Unchanged));
    }
}
