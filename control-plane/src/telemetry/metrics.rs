//! The control plane's metrics, kept from what it stores and sees, and its HTTP endpoint:
//! `/metrics` (Prometheus text), `/healthz`, `/readyz`.
//!
//! A counter a panel or an alert reads is present from zero before its first event, or
//! `increase()` never counts that event (Prometheus does not count a series' first value). Where
//! the label values are known ahead — the configured servers and issuers, every refusal code,
//! the registered agents — every series is there from the start. Every series, those and the
//! ones whose labels only records name (a tool's name, a server no longer configured), reads 0
//! for the new-series delay after its labels were first known or seen before it shows its
//! count: a scraper or OTLP export in that time sees the zero, later ones the count, so the
//! first events are late on a dashboard but never lost, even for a server added at runtime.

use std::collections::HashMap;
use std::hash::RandomState;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use hashbrown::Equivalent;
use proto::decision_record::DecisionRecordView;
use proto::v1 as pb;
use warden_core::metrics::{self, Descriptor, Family, Kind};
use warden_core::prometheus::{Histogram, LATENCY_BUCKETS, LIFETIME_BUCKETS};
use warden_core::refusal::Refusal;
use warden_core::resource::Spec;
use warden_otlp::Signal;

use crate::scorecard::How;
use warden_tasks::Shutdown;

use crate::configuration::Configuration;
use crate::fleet::Fleet;
use crate::fleet::replicas::Leadership;
use crate::tokens::issuer_keys::KeyStatuses;

/// Counts of the log export, for operators.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Records the receiver accepted.
    pub exported: std::sync::atomic::AtomicU64,
    /// Records the receiver refused for good (counted and skipped).
    pub rejected: std::sync::atomic::AtomicU64,
}

/// What the metrics are read from.
pub struct Sources {
    /// Counts of the stored decision records.
    pub counts: Counts,
    /// The OTLP log export's counts.
    pub export_stats: Arc<ExportStats>,
    /// The version in force, and the agent registry.
    pub configuration: Arc<Configuration>,
    /// Who is connected and what each applied.
    pub fleet: Arc<Fleet>,
    /// Whether this replica leads.
    pub leadership: Leadership,
    /// The static secrets agents found.
    pub inventory: Arc<crate::inventory::Inventory>,
    /// How fetching issuers' key refreshes went.
    pub key_statuses: Arc<KeyStatuses>,
    /// What is exported over OTLP, and how each export request went.
    pub otlp: (warden_otlp::Config, Arc<warden_otlp::Exports>),
    /// The serving certificates, by what they serve (`agents_port`, `token_service`, `console`).
    pub certificates: Vec<(&'static str, Arc<crate::serving::ServingCert>)>,
}

/// Label sets kept per family; past this, decisions are counted in an overflow counter only, so
/// hostile or runaway names cannot grow the control plane's memory.
const MAX_SERIES: usize = 10_000;

/// Distinct targets (tool, resource, prompt) labelled per server; further ones are counted
/// under [`OTHER_TARGET`]. Target names come from callers: one caller inventing names can then
/// use up only its own server's share of the label budget, never the fleet's.
const MAX_TARGETS_PER_SERVER: usize = 256;
/// The target label of decisions past [`MAX_TARGETS_PER_SERVER`].
const OTHER_TARGET: &str = "_other";

/// A series' value, and when the series was first seen (milliseconds since the epoch).
#[derive(Clone, Debug)]
struct Born<T> {
    value: T,
    born_ms: i64,
}

impl<T> Born<T> {
    fn now(value: T) -> Born<T> {
        Born { value, born_ms: crate::now_unix_ms() }
    }
}

/// Longest label value counted as is; longer ones (which no well-behaved agent sends: it bounds
/// names to 1 KiB) are counted as [`TOO_LONG`], so one series costs at most this much memory.
const MAX_LABEL_BYTES: usize = 1024;
/// The label value of what was longer than [`MAX_LABEL_BYTES`].
const TOO_LONG: &str = "_too_long";

fn bounded(value: &str) -> &str {
    if value.len() > MAX_LABEL_BYTES { TOO_LONG } else { value }
}

/// (server, decision, reason).
type ReasonKey = (String, &'static str, String);
/// (server, target, decision).
type TargetKey = (String, String, &'static str);

/// A [`ReasonKey`] borrowed from a record, to look a series up without allocating. It hashes
/// as the key does: a tuple and a tuple struct both hash their fields in order, and `String`
/// hashes as `str`.
#[derive(Hash)]
struct ReasonLabels<'a>(&'a str, &'static str, &'a str);

impl Equivalent<ReasonKey> for ReasonLabels<'_> {
    fn equivalent(&self, k: &ReasonKey) -> bool {
        self.0 == k.0 && self.1 == k.1 && self.2 == k.2
    }
}

/// A [`TargetKey`], borrowed likewise.
#[derive(Hash)]
struct TargetLabels<'a>(&'a str, &'a str, &'static str);

impl Equivalent<TargetKey> for TargetLabels<'_> {
    fn equivalent(&self, k: &TargetKey) -> bool {
        self.0 == k.0 && self.1 == k.1 && self.2 == k.2
    }
}

/// (a name, decision), borrowed likewise: the latency's (server, decision) and the per-agent
/// counts' (agent, decision).
#[derive(Hash)]
struct NameLabels<'a>(&'a str, &'static str);

impl Equivalent<(String, &'static str)> for NameLabels<'_> {
    fn equivalent(&self, k: &(String, &'static str)) -> bool {
        self.0 == k.0 && self.1 == k.1
    }
}

/// Maps keyed by label sets that agents' and callers' strings make: SipHash with a per-process
/// key, as std's maps use.
type LabelMap<K, V> = hashbrown::HashMap<K, V, RandomState>;

/// Adds `n` to the series `labels` names, making it (born now) from `key` if there is room or
/// the series' labels are `known` (configured: bounded by the configuration, so an agent
/// sending invented names can never crowd them out); false when it was not counted.
fn bump<K: std::hash::Hash + Eq, Q: std::hash::Hash + Equivalent<K>>(
    map: &mut LabelMap<K, Born<u64>>,
    labels: Q,
    n: u64,
    known: bool,
    key: impl FnOnce() -> K,
) -> bool {
    if let Some(count) = map.get_mut(&labels) {
        count.value += n;
        true
    } else if known || map.len() < MAX_SERIES {
        map.insert(key(), Born::now(n));
        true
    } else {
        false
    }
}

/// How much of a series' labels the configuration named ahead.
#[derive(Clone, Copy)]
enum Labels {
    /// All of them, since this time (milliseconds since the epoch): the series has been shown
    /// at zero since then.
    Known(i64),
    /// Some (since this time) or none: the series exists since its first record.
    Partly(Option<i64>),
}

/// The label values the configuration names, each with when it was first shown in a
/// rendering (milliseconds since the epoch): its series are there from zero, and read zero for
/// the new-series delay from then, so that a server added at runtime counts its first events
/// too.
#[derive(Default)]
struct KnownSince {
    servers: HashMap<String, i64>,
    issuers: HashMap<String, i64>,
    agents: HashMap<String, i64>,
}

fn refresh(since: &mut HashMap<String, i64>, now: &[String], now_ms: i64) {
    since.retain(|name, _| now.contains(name));
    for name in now {
        since.entry(name.clone()).or_insert(now_ms);
    }
}

/// Decision counts from the records stored since the control plane started.
pub struct DecisionCounts {
    /// (server, decision, reason) → decisions.
    decisions: LabelMap<ReasonKey, Born<u64>>,
    /// (server, target, decision) → decisions.
    by_target: LabelMap<TargetKey, Born<u64>>,
    /// (agent, decision) → decisions.
    by_agent: LabelMap<(String, &'static str), Born<u64>>,
    /// (server, decision) → decision latency.
    latency: LabelMap<(String, &'static str), Born<Histogram>>,
    /// Issuer → lifetime (`exp - iat`) of the tokens decisions were made with.
    lifetimes: HashMap<String, Born<Histogram>>,
    /// Decisions some breakdown could not count: too many label sets.
    overflow: u64,
    /// Records agents reported dropping, all runs (cumulative).
    dropped: LabelMap<(String, &'static str), Born<u64>>,
    /// Server → the targets labelled.
    targets: HashMap<String, std::collections::HashSet<String>>,
    /// Server → requests by how they were decided (the scorecard's claim validation).
    requests: HashMap<String, Born<[u64; 4]>>,
    /// What the configuration names, as of the last rendering.
    known: KnownSince,
    /// How long a new series reads 0 (see the module's comment).
    new_series_delay_ms: i64,
}

/// How long a new series reads 0 unless the operator says otherwise: a scrape or export
/// interval of up to a minute sees its zero.
pub const NEW_SERIES_DELAY: std::time::Duration = std::time::Duration::from_secs(60);

impl Default for DecisionCounts {
    fn default() -> DecisionCounts {
        DecisionCounts::new(NEW_SERIES_DELAY)
    }
}

fn decision_name(d: i32) -> &'static str {
    if d == pb::Decision::Allow as i32 { "allow" } else { "deny" }
}

/// The drop counts' key: (agent, "") so that they share [`NameLabels`].
const DROPPED: &str = "";

impl DecisionCounts {
    /// No counts yet; a series not known ahead reads 0 for `new_series_delay`.
    pub fn new(new_series_delay: std::time::Duration) -> DecisionCounts {
        DecisionCounts {
            decisions: LabelMap::default(),
            by_target: LabelMap::default(),
            by_agent: LabelMap::default(),
            latency: LabelMap::default(),
            lifetimes: HashMap::new(),
            overflow: 0,
            dropped: LabelMap::default(),
            targets: HashMap::new(),
            requests: HashMap::new(),
            known: KnownSince::default(),
            new_series_delay_ms: new_series_delay.as_millis().min(i64::MAX as u128) as i64,
        }
    }

    /// Whether a series shows its value at `now_ms`, rather than 0: the delay has passed since
    /// its labels were known (`Labels::Known`, since then) or since it was first seen in a record
    /// (`born_ms`; when only some of its labels were known ahead, the later of the two).
    fn visible(&self, labels: Labels, born_ms: i64, now_ms: i64) -> bool {
        let since = match labels {
            Labels::Known(since) => since,
            Labels::Partly(Some(since)) => since.max(born_ms),
            Labels::Partly(None) => born_ms,
        };
        now_ms - since >= self.new_series_delay_ms
    }

    /// How long a new series reads 0, in milliseconds.
    pub fn new_series_delay_ms(&self) -> i64 {
        self.new_series_delay_ms
    }

    /// Counts one stored record of `agent` (allocating only for a series not seen before).
    pub fn observe(&mut self, agent: &str, r: &DecisionRecordView<'_>) {
        let decision = decision_name(r.decision);
        let n = r.decisions();
        let (server, reason) = (bounded(r.server), bounded(r.reason));
        let known_server = self.known.servers.contains_key(server);
        let mut counted = bump(&mut self.decisions, ReasonLabels(server, decision, reason), n, known_server, || {
            (server.into(), decision, reason.into())
        });
        let known_agent = self.known.agents.contains_key(agent);
        counted &= bump(&mut self.by_agent, NameLabels(agent, decision), n, known_agent, || (agent.into(), decision));
        let mut target = bounded(r.target);
        // A target not labelled yet for this server: past the share, counted as other.
        let labelled = self.targets.get(server);
        if !labelled.is_some_and(|t| t.contains(target)) {
            if labelled.is_some_and(|t| t.len() >= MAX_TARGETS_PER_SERVER) {
                target = OTHER_TARGET;
            } else if known_server || self.by_target.len() < MAX_SERIES {
                self.targets.entry(server.to_string()).or_default().insert(target.to_string());
            }
        }
        counted &= bump(&mut self.by_target, TargetLabels(server, target, decision), n, known_server, || {
            (server.into(), target.into(), decision)
        });
        if !counted {
            self.overflow += n;
        }
        self.observe_rest(decision, server, known_server, r);
    }

    /// The token-lifetime and latency histograms of one record, and how it was decided.
    fn observe_rest(&mut self, decision: &'static str, server: &str, known_server: bool, r: &DecisionRecordView<'_>) {
        if let Some(how) = How::of(r.decision, r.reason, r.via, r.audit, !r.target.is_empty()) {
            let index = How::ALL.iter().position(|h| *h == how).unwrap_or(0);
            if let Some(counts) = self.requests.get_mut(server) {
                counts.value[index] += r.decisions();
            } else if known_server || self.requests.len() < MAX_SERIES {
                // Every way from 0, so the first of each is an increase.
                let mut counts = [0; 4];
                counts[index] = r.decisions();
                self.requests.insert(server.to_string(), Born::now(counts));
            }
        }
        if r.token_lifetime_seconds > 0 {
            let (issuer, lifetime) = (bounded(r.issuer), r.token_lifetime_seconds as f64);
            if let Some(h) = self.lifetimes.get_mut(issuer) {
                h.value.observe(lifetime);
            } else if self.known.issuers.contains_key(issuer) || self.lifetimes.len() < MAX_SERIES {
                let mut h = Histogram::new(LIFETIME_BUCKETS);
                h.observe(lifetime);
                self.lifetimes.insert(issuer.to_string(), Born::now(h));
            }
        }
        let latency = r.latency_micros as f64 / 1e6;
        if let Some(h) = self.latency.get_mut(&NameLabels(server, decision)) {
            h.value.observe(latency);
        } else if known_server || self.latency.len() < MAX_SERIES {
            let mut h = Histogram::new(LATENCY_BUCKETS);
            h.observe(latency);
            self.latency.insert((server.to_string(), decision), Born::now(h));
        }
    }

    /// Decisions counted by server, decision and reason, and those no breakdown could count.
    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.decisions.values().map(|c| c.value).sum::<u64>() + self.overflow
    }

    /// An agent's cumulative drop count for one run moved from `before` to `now`.
    pub fn dropped(&mut self, agent: &str, before: u64, now: u64) {
        let n = now.saturating_sub(before);
        let known = self.known.agents.contains_key(agent);
        // Past the series bound a drop goes uncounted here; the agent's own counter has it.
        if n > 0 {
            bump(&mut self.dropped, NameLabels(agent, DROPPED), n, known, || (agent.into(), DROPPED));
        }
    }
}

/// Shared handle to the counts.
pub type Counts = Arc<Mutex<DecisionCounts>>;

const AGENT: &str = "warden.agent";
const SERVER: &str = "warden.server";
const TARGET: &str = "warden.target";
const DECISION: &str = "warden.decision";
const REASON: &str = "warden.reason";
const ISSUER: &str = "warden.issuer";
const OUTCOME: &str = "warden.outcome";

/// Every metric the control plane exports, described once; the Prometheus names follow from
/// these (`warden.decisions` → `warden_decisions_total`, `warden.server` → `warden_server`).
const DECISIONS: Descriptor = Descriptor {
    name: "warden.decisions",
    unit: "{decision}",
    help: "Decisions the agents made, stored by this control plane since it started, by server, decision and reason (every configured server and refusal code from zero).",
    kind: Kind::Counter,
    labels: &[SERVER, DECISION, REASON],
};
const TARGET_DECISIONS: Descriptor = Descriptor {
    name: "warden.target.decisions",
    unit: "{decision}",
    help: "Decisions by the tool, resource or prompt they were about (at most 256 targets per server; the rest as _other).",
    kind: Kind::Counter,
    labels: &[SERVER, TARGET, DECISION],
};
const AGENT_DECISIONS: Descriptor = Descriptor {
    name: "warden.fleet.agent.decisions",
    unit: "{decision}",
    help: "Decisions by the agent that made them (every registered agent from zero).",
    kind: Kind::Counter,
    labels: &[AGENT, DECISION],
};
const DECISIONS_OVERFLOW: Descriptor = Descriptor {
    name: "warden.decisions.overflow",
    unit: "{decision}",
    help: "Decisions some breakdown could not count: too many label sets.",
    kind: Kind::Counter,
    labels: &[],
};
const DECISION_DURATION: Descriptor = Descriptor {
    name: "warden.decision.duration",
    unit: "s",
    help: "Time from a request's arrival at the agent to its decision.",
    kind: Kind::Histogram,
    labels: &[SERVER, DECISION],
};
const TOKEN_LIFETIME: Descriptor = Descriptor {
    name: "warden.token.lifetime",
    unit: "s",
    help: "Lifetime (exp - iat) of the tokens decisions were made with.",
    kind: Kind::Histogram,
    labels: &[ISSUER],
};
const RECORDS_DROPPED: Descriptor = Descriptor {
    name: "warden.fleet.agent.decision_records.dropped",
    unit: "{record}",
    help: "Decision records agents dropped because their memory and disk bounds were reached (every registered agent from zero).",
    kind: Kind::Counter,
    labels: &[AGENT],
};
const AGENT_CONNECTED: Descriptor = Descriptor {
    name: "warden.fleet.agent.connected",
    unit: "{connection}",
    help: "1 for each registered agent with an open stream to this replica, 0 for the others (take the max across replicas).",
    kind: Kind::Gauge,
    labels: &[AGENT],
};
const CONFIG_LAG: Descriptor = Descriptor {
    name: "warden.fleet.agent.config_lag",
    unit: "{version}",
    help: "Versions between the configuration in force and what each agent connected to this replica applied.",
    kind: Kind::Gauge,
    labels: &[AGENT],
};
const AGENTS_CONNECTED: Descriptor = Descriptor {
    name: "warden.agents.connected",
    unit: "{agent}",
    help: "Agents with an open stream to this control plane.",
    kind: Kind::Gauge,
    labels: &[],
};
const CONFIG_VERSION: Descriptor = Descriptor {
    name: "warden.config.version",
    unit: "{version}",
    help: "The configuration version in force.",
    kind: Kind::Gauge,
    labels: &[],
};
const LEADER: Descriptor = Descriptor {
    name: "warden.control_plane.leader",
    unit: "{replica}",
    help: "1 on the replica doing the singleton duties (key refresh, revocation expiry, audit export).",
    kind: Kind::Gauge,
    labels: &[],
};
const LOG_RECORDS_EXPORTED: Descriptor = Descriptor {
    name: "warden.otlp.log_records.exported",
    unit: "{record}",
    help: "Decision records an OTLP receiver accepted.",
    kind: Kind::Counter,
    labels: &[],
};
const LOG_RECORDS_REJECTED: Descriptor = Descriptor {
    name: "warden.otlp.log_records.rejected",
    unit: "{record}",
    help: "Decision records an OTLP receiver refused for good.",
    kind: Kind::Counter,
    labels: &[],
};
const KEY_REFRESHES: Descriptor = Descriptor {
    name: "warden.issuer.key_refreshes",
    unit: "{refresh}",
    help: "Fetches of issuers' keys (JWKS) by this replica, by outcome: success or failure (every fetching issuer from zero).",
    kind: Kind::Counter,
    labels: &[ISSUER, OUTCOME],
};
const KEY_REFRESH_FAILING: Descriptor = Descriptor {
    name: "warden.issuer.key_refresh.consecutive_failures",
    unit: "{failure}",
    help: "Failed fetches of an issuer's keys since the last success, on the leading replica (which does the scheduled refreshes; the previous keys stay in force meanwhile).",
    kind: Kind::Gauge,
    labels: &[ISSUER],
};

const BRIDGE_EXPIRY: Descriptor = Descriptor {
    name: "warden.credential_bridge.expiry_timestamp",
    unit: "s",
    help: "When each credential bridge closes (unix time); its legacy key is refused as bridge_expired from then on.",
    kind: Kind::Gauge,
    labels: &["warden.credential_bridge", SERVER, "warden.credential_bridge.forwards_key"],
};
const CERTIFICATE_EXPIRY: Descriptor = Descriptor {
    name: "warden.certificate.expiry_timestamp",
    unit: "s",
    help: "When the fleet CA (fleet_ca) and each certificate the control plane serves with (agents_port, token_service, console) expire (unix time). Issued ones are renewed two thirds into their life; files are replaced by their operator.",
    kind: Kind::Gauge,
    labels: &["warden.certificate"],
};
const CERTIFICATE_START: Descriptor = Descriptor {
    name: "warden.certificate.start_timestamp",
    unit: "s",
    help: "When each of those certificates became valid (unix time): with the expiry, how much of its life is left.",
    kind: Kind::Gauge,
    labels: &["warden.certificate"],
};
const BRIDGES: Descriptor = Descriptor {
    name: "warden.credential_bridges",
    unit: "{bridge}",
    help: "Credential bridges by state: open, expiring (within 7 days: warn the owner), expired or revoked.",
    kind: Kind::Gauge,
    labels: &["warden.credential_bridge.state"],
};

const REQUESTS: Descriptor = Descriptor {
    name: "warden.requests",
    unit: "{request}",
    help: "Requests to MCP servers by how they were decided: validated (policy decided on a validated token), audited, bridged (a credential bridge's key), refused (before policy).",
    kind: Kind::Counter,
    labels: &[SERVER, "warden.request.decided"],
};
const SECRETS_OPEN: Descriptor = Descriptor {
    name: "warden.secrets.open",
    unit: "{secret}",
    help: "Static secrets the agents found on their hosts and still see, by kind (counted at most once a minute).",
    kind: Kind::Gauge,
    labels: &["warden.secret.kind"],
};
const REVOCATIONS: Descriptor = Descriptor {
    name: "warden.revocations",
    unit: "{revocation}",
    help: "Revocations this replica committed since it started, by source: session_end, rfc7009, operator.",
    kind: Kind::Counter,
    labels: &["warden.revocation.source"],
};
/// The sources of revocations, each counted from zero.
const REVOCATION_SOURCES: [&str; 3] = ["session_end", "rfc7009", "operator"];
const ENFORCEMENT: Descriptor = Descriptor {
    name: "warden.revocation.enforcement",
    unit: "s",
    help: "Time from a version carrying revocations to its application by every agent connected to this replica then.",
    kind: Kind::Histogram,
    labels: &[],
};
const SERVERS_IN_AUDIT: Descriptor = Descriptor {
    name: "warden.servers.audit_mode",
    unit: "{server}",
    help: "McpServers in audit mode now: forwarded unenforced, Warden's decisions only recorded.",
    kind: Kind::Gauge,
    labels: &[],
};

/// What the configuration names ahead of any record: the series counted from zero.
struct Known {
    servers: Vec<String>,
    issuers: Vec<String>,
    agents: Vec<String>,
}

/// The decision families from `counts`: the known series first (zero when nothing was
/// counted), then those first seen in records; each reads zero until the new-series delay has
/// passed since its labels were first known or seen.
fn decision_families(counts: &mut DecisionCounts, known: &Known, now_ms: i64) -> Vec<Family> {
    use std::collections::HashSet;
    refresh(&mut counts.known.servers, &known.servers, now_ms);
    refresh(&mut counts.known.issuers, &known.issuers, now_ms);
    refresh(&mut counts.known.agents, &known.agents, now_ms);
    let counts = &*counts;
    let k = &counts.known;
    let all = |since: &HashMap<String, i64>, value: &str| {
        since.get(value).map_or(Labels::Partly(None), |t| Labels::Known(*t))
    };
    let some = |since: &HashMap<String, i64>, value: &str| Labels::Partly(since.get(value).copied());
    let number = |labels: Labels, c: &Born<u64>| {
        if counts.visible(labels, c.born_ms, now_ms) { c.value as f64 } else { 0.0 }
    };
    let refusals: Vec<&'static str> = Refusal::all().map(Refusal::code).collect();

    let mut decisions = Family::new(&DECISIONS);
    let mut seen: HashSet<(&str, &str, &str)> = HashSet::new();
    for server in &known.servers {
        let keys = std::iter::once(("allow", "")).chain(refusals.iter().map(|r| ("deny", *r)));
        for (decision, reason) in keys {
            let n = counts
                .decisions
                .get(&ReasonLabels(server, decision, reason))
                .map_or(0.0, |c| number(all(&k.servers, server), c));
            decisions.add(&[server, decision, reason], n);
            seen.insert((server, decision, reason));
        }
    }
    for ((server, decision, reason), count) in &counts.decisions {
        if !seen.contains(&(server.as_str(), *decision, reason.as_str())) {
            decisions.add(&[server, decision, reason], number(some(&k.servers, server), count));
        }
    }

    let mut by_target = Family::new(&TARGET_DECISIONS);
    for ((server, target, decision), count) in &counts.by_target {
        by_target.add(&[server, target, decision], number(some(&k.servers, server), count));
    }

    let (mut by_agent, mut dropped) = (Family::new(&AGENT_DECISIONS), Family::new(&RECORDS_DROPPED));
    for agent in &known.agents {
        for decision in ["allow", "deny"] {
            let n = counts.by_agent.get(&NameLabels(agent, decision)).map_or(0.0, |c| number(all(&k.agents, agent), c));
            by_agent.add(&[agent, decision], n);
        }
        let n = counts.dropped.get(&NameLabels(agent, DROPPED)).map_or(0.0, |c| number(all(&k.agents, agent), c));
        dropped.add(&[agent], n);
    }
    for ((agent, decision), count) in counts.by_agent.iter().filter(|((a, _), _)| !k.agents.contains_key(a)) {
        by_agent.add(&[agent, decision], number(Labels::Partly(None), count));
    }
    for ((agent, _), count) in counts.dropped.iter().filter(|((a, _), _)| !k.agents.contains_key(a)) {
        dropped.add(&[agent], number(Labels::Partly(None), count));
    }

    // Histograms and the per-server request counts: empty until visible, likewise.
    let histogram = |labels: Labels, h: Option<&Born<Histogram>>, empty: &Histogram| match h {
        Some(h) if counts.visible(labels, h.born_ms, now_ms) => h.value.clone(),
        _ => empty.clone(),
    };
    let mut latency = Family::new(&DECISION_DURATION);
    let empty = Histogram::new(LATENCY_BUCKETS);
    for server in &known.servers {
        for decision in ["allow", "deny"] {
            let h = histogram(all(&k.servers, server), counts.latency.get(&NameLabels(server, decision)), &empty);
            latency.add_histogram(&[server, decision], &h);
        }
    }
    for ((server, decision), h) in counts.latency.iter().filter(|((s, _), _)| !k.servers.contains_key(s)) {
        latency.add_histogram(&[server, decision], &histogram(Labels::Partly(None), Some(h), &empty));
    }
    let mut lifetimes = Family::new(&TOKEN_LIFETIME);
    let empty = Histogram::new(LIFETIME_BUCKETS);
    for issuer in &known.issuers {
        lifetimes.add_histogram(&[issuer], &histogram(all(&k.issuers, issuer), counts.lifetimes.get(issuer), &empty));
    }
    for (issuer, h) in counts.lifetimes.iter().filter(|(i, _)| !k.issuers.contains_key(*i)) {
        lifetimes.add_histogram(&[issuer], &histogram(Labels::Partly(None), Some(h), &empty));
    }
    let mut requests = Family::new(&REQUESTS);
    let by_how = |labels: Labels, c: Option<&Born<[u64; 4]>>| match c {
        Some(c) if counts.visible(labels, c.born_ms, now_ms) => c.value,
        _ => [0; 4],
    };
    let servers = known.servers.iter().map(|s| (s, by_how(all(&k.servers, s), counts.requests.get(s))));
    let others = counts
        .requests
        .iter()
        .filter(|(s, _)| !k.servers.contains_key(*s))
        .map(|(s, c)| (s, by_how(Labels::Partly(None), Some(c))));
    for (server, counts) in servers.chain(others) {
        for (how, n) in How::ALL.iter().zip(counts) {
            requests.add(&[server, how.as_str()], n as f64);
        }
    }
    let overflow = Family::single(&DECISIONS_OVERFLOW, counts.overflow as f64);
    vec![decisions, by_target, by_agent, overflow, latency, lifetimes, dropped, requests]
}

/// Every family the control plane knows, now: what `/metrics` and the OTLP export both read.
pub async fn families(cp: &Sources) -> Vec<Family> {
    let registered = cp.configuration.store().agents().await.unwrap_or_default();
    let (state, now_ms) = (cp.configuration.current(), crate::now_unix_ms());
    let now = now_ms / 1000;
    let named = |kind: fn(&Spec) -> bool| -> Vec<String> {
        state.resources.iter().filter(|(_, e)| kind(&e.document.spec)).map(|(k, _)| k.name.clone()).collect()
    };
    let known = Known {
        servers: named(|s| matches!(s, Spec::McpServer(_))),
        issuers: named(|s| matches!(s, Spec::TrustedIssuer(_))),
        agents: registered.keys().cloned().collect(),
    };
    let (mut out, delay_ms) = {
        let mut counts = cp.counts.lock().unwrap_or_else(|p| p.into_inner());
        (decision_families(&mut counts, &known, now_ms), counts.new_series_delay_ms())
    };
    let version = cp.configuration.version();
    out.push(Family::single(&CONFIG_VERSION, version as f64));
    out.push(Family::single(&LEADER, if cp.leadership.is_leading() { 1.0 } else { 0.0 }));
    let agents = cp.fleet.presence().report(registered, &[]);
    let (mut connected, mut lag) = (Family::new(&AGENT_CONNECTED), Family::new(&CONFIG_LAG));
    for a in &agents {
        connected.add(&[&a.id], if a.connected { 1.0 } else { 0.0 });
        if a.connected {
            lag.add(&[&a.id], version.saturating_sub(a.applied_version) as f64);
        }
    }
    out.push(Family::single(&AGENTS_CONNECTED, agents.iter().filter(|a| a.connected).count() as f64));
    out.extend([connected, lag]);
    out.extend(bridges(&state, now));
    let in_audit =
        state.resources.values().filter(|e| matches!(&e.document.spec, Spec::McpServer(s) if s.in_audit(now)));
    out.push(Family::single(&SERVERS_IN_AUDIT, in_audit.count() as f64));
    let committed = cp.configuration.revocations_committed();
    let mut revocations = Family::new(&REVOCATIONS);
    for source in REVOCATION_SOURCES {
        let n = committed.iter().filter(|(s, _)| *s == source).map(|(_, n)| *n).sum::<u64>();
        revocations.add(&[source], n as f64);
    }
    for (source, n) in committed.iter().filter(|(s, _)| !REVOCATION_SOURCES.contains(s)) {
        revocations.add(&[source], *n as f64);
    }
    out.push(revocations);
    let mut enforcement = Family::new(&ENFORCEMENT);
    enforcement.add_histogram(&[], &cp.fleet.presence().enforcement_histogram());
    out.push(enforcement);
    // A store that cannot be read leaves the family out rather than report no secrets.
    if let Ok(open) = cp.inventory.open_by_kind().await {
        let mut secrets = Family::new(&SECRETS_OPEN);
        for (kind, n) in &open {
            secrets.add(&[kind], *n as f64);
        }
        out.push(secrets);
    }
    let (mut refreshes, mut failing) = (Family::new(&KEY_REFRESHES), Family::new(&KEY_REFRESH_FAILING));
    let mut statuses: Vec<_> = cp.key_statuses.snapshot().into_iter().collect();
    statuses.sort_by(|a, b| a.0.cmp(&b.0));
    let leading = cp.leadership.is_leading();
    for (issuer, status) in &statuses {
        // Zero until the delay has passed since the issuer was first tracked, as above.
        let shown = now_ms - status.tracked_since_ms >= delay_ms;
        let count = |n: u64| if shown { n as f64 } else { 0.0 };
        refreshes.add(&[issuer, "success"], count(status.succeeded));
        refreshes.add(&[issuer, "failure"], count(status.failed));
        // The leader's scheduled refreshes are the fleet's: a replica that does not lead (any
        // more) would keep a stale count of its own.
        if leading {
            failing.add(&[issuer], f64::from(status.consecutive_failures));
        }
    }
    out.extend([refreshes, failing]);
    out.push(Family::single(&LOG_RECORDS_EXPORTED, cp.export_stats.exported.load(Relaxed) as f64));
    out.push(Family::single(&LOG_RECORDS_REJECTED, cp.export_stats.rejected.load(Relaxed) as f64));
    let signals = [(Signal::Logs, cp.otlp.0.logs.is_some()), (Signal::Metrics, cp.otlp.0.metrics.is_some())];
    out.push(cp.otlp.1.family(signals.iter().filter(|(_, on)| *on).map(|(s, _)| *s)));
    out.extend(certificates(cp));
    out
}

/// When the fleet CA and each serving certificate became valid and expire.
fn certificates(cp: &Sources) -> [Family; 2] {
    let (mut start, mut expiry) = (Family::new(&CERTIFICATE_START), Family::new(&CERTIFICATE_EXPIRY));
    let served = cp.certificates.iter().map(|(what, cert)| (*what, cert.validity_unix()));
    for (what, validity) in std::iter::once(("fleet_ca", cp.fleet.ca().validity_unix())).chain(served) {
        if let Some((from, until)) = validity {
            start.add(&[what], from as f64);
            expiry.add(&[what], until as f64);
        }
    }
    [start, expiry]
}

/// The credential bridges of `state` at `now`: each one's close time, and how many are in each
/// state (every state present, so an alert on `expiring` sees its first one).
fn bridges(state: &crate::configuration::state::FleetState, now: i64) -> [Family; 2] {
    let mut expiry = Family::new(&BRIDGE_EXPIRY);
    let mut by_state = [("open", 0u32), ("expiring", 0), ("expired", 0), ("revoked", 0)];
    for bridge in state.bridges(now) {
        let forwards = if bridge.forwards_key { "true" } else { "false" };
        expiry.add(&[&bridge.name, &bridge.server, forwards], bridge.expires_unix as f64);
        by_state.iter_mut().filter(|(s, _)| *s == bridge.state).for_each(|(_, n)| *n += 1);
    }
    let mut states = Family::new(&BRIDGES);
    for (state, n) in by_state {
        states.add(&[state], f64::from(n));
    }
    [expiry, states]
}

/// The Prometheus text of everything the control plane knows.
pub async fn render(cp: &Sources) -> String {
    metrics::prometheus_text(&families(cp).await)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop`.
pub async fn serve(sources: Arc<Sources>, listener: tokio::net::TcpListener, mut stop: Shutdown) {
    use axum::routing::get;
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "metrics endpoint listening");
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|axum::extract::State(cp): axum::extract::State<Arc<Sources>>| async move {
                let text = render(&cp).await;
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        // Serving means the store was loaded and the CA is in place: nothing else gates it.
        .route("/readyz", get(|| async { "ready" }))
        .with_state(sources);
    let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.requested().await }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(family: &Family, labels: &[&str]) -> Option<f64> {
        family.points.iter().find(|p| p.labels == labels).map(|p| match p.value {
            metrics::Value::Number(n) => n,
            metrics::Value::Histogram(ref h) => h.count() as f64,
        })
    }

    #[test]
    fn a_series_is_found_again_by_its_borrowed_labels() {
        let mut counts = DecisionCounts::new(std::time::Duration::ZERO);
        let allowed = DecisionRecordView {
            server: "github",
            target: "search",
            issuer: "corp",
            decision: pb::Decision::Allow as i32,
            latency_micros: 40,
            token_lifetime_seconds: 300,
            ..Default::default()
        };
        let denied = DecisionRecordView { decision: pb::Decision::Deny as i32, reason: "policy_denied", ..allowed };
        for _ in 0..3 {
            counts.observe("agent-1", &allowed);
        }
        counts.observe("agent-1", &denied);
        counts.observe("agent-2", &allowed);
        assert_eq!(counts.decisions.len(), 2);
        assert_eq!(counts.decisions[&ReasonLabels("github", "allow", "")].value, 4);
        assert_eq!(counts.decisions[&ReasonLabels("github", "deny", "policy_denied")].value, 1);
        assert_eq!(counts.by_target[&TargetLabels("github", "search", "deny")].value, 1);
        assert_eq!(counts.by_agent[&NameLabels("agent-1", "allow")].value, 3);
        assert_eq!(counts.by_agent[&NameLabels("agent-2", "allow")].value, 1);
        assert_eq!(counts.latency.len(), 2, "one histogram per (server, decision)");
        assert_eq!(counts.lifetimes.len(), 1);
        // How each was decided: on a validated token, allowed or denied by policy.
        assert_eq!(counts.requests["github"].value, [5, 0, 0, 0]);
        counts.observe("agent-1", &DecisionRecordView { via: "bridge", ..allowed });
        counts.observe("agent-1", &DecisionRecordView { audit: "would_deny", ..denied });
        counts.observe("agent-1", &DecisionRecordView { reason: "expired", count: 3, ..denied });
        counts.observe("agent-1", &DecisionRecordView { via: "token-exchange", ..allowed });
        assert_eq!(counts.requests["github"].value, [5, 1, 1, 3], "validated, audited, bridged, refused");
        assert_eq!(counts.total(), 11);
    }

    #[test]
    fn every_series_reads_zero_for_the_delay_after_its_labels_are_first_known_or_seen() {
        let mut counts = DecisionCounts::new(std::time::Duration::from_secs(60));
        let known = Known { servers: vec!["notes".into()], issuers: vec!["corp".into()], agents: vec!["a1".into()] };
        let now = crate::now_unix_ms();
        let families = decision_families(&mut counts, &known, now);
        let by = |families: &[Family], name: &str| families.iter().find(|f| f.descriptor.name == name).unwrap().clone();
        // Before any record: every refusal code of the configured server, and the agent, at 0.
        let decisions = by(&families, "warden.decisions");
        assert_eq!(decisions.points.len(), 1 + warden_core::refusal::Refusal::all().count());
        assert_eq!(value(&decisions, &["notes", "deny", "expired"]), Some(0.0));
        assert_eq!(value(&decisions, &["notes", "deny", "tool_not_granted"]), Some(0.0));
        assert_eq!(value(&by(&families, "warden.fleet.agent.decision_records.dropped"), &["a1"]), Some(0.0));
        assert_eq!(value(&by(&families, "warden.fleet.agent.decisions"), &["a1", "deny"]), Some(0.0));
        assert_eq!(value(&by(&families, "warden.requests"), &["notes", "refused"]), Some(0.0));
        assert_eq!(value(&by(&families, "warden.token.lifetime"), &["corp"]), Some(0.0));

        // Records of the known server and of one first seen; drops of a known agent and of one
        // that is not registered (any more).
        let refused = DecisionRecordView {
            server: "notes",
            target: "delete",
            decision: pb::Decision::Deny as i32,
            reason: "expired",
            ..Default::default()
        };
        counts.observe("a1", &refused);
        counts.observe("a1", &DecisionRecordView { server: "gone", ..refused });
        counts.dropped("a1", 0, 1);
        counts.dropped("a9", 0, 2);
        // Within the delay, all read 0: a scraper sees the zero before the count.
        let soon = decision_families(&mut counts, &known, now + 1_000);
        for (family, labels) in [
            ("warden.decisions", &["notes", "deny", "expired"][..]),
            ("warden.decisions", &["gone", "deny", "expired"]),
            ("warden.target.decisions", &["notes", "delete", "deny"]),
            ("warden.fleet.agent.decisions", &["a1", "deny"]),
            ("warden.fleet.agent.decision_records.dropped", &["a1"]),
            ("warden.fleet.agent.decision_records.dropped", &["a9"]),
            ("warden.requests", &["gone", "refused"]),
        ] {
            assert_eq!(value(&by(&soon, family), labels), Some(0.0), "{family} {labels:?}");
        }
        let later = decision_families(&mut counts, &known, now + 61_000);
        for (family, labels, n) in [
            ("warden.decisions", &["notes", "deny", "expired"][..], 1.0),
            ("warden.decisions", &["gone", "deny", "expired"], 1.0),
            ("warden.target.decisions", &["notes", "delete", "deny"], 1.0),
            ("warden.target.decisions", &["gone", "delete", "deny"], 1.0),
            ("warden.fleet.agent.decisions", &["a1", "deny"], 2.0),
            ("warden.fleet.agent.decision_records.dropped", &["a1"], 1.0),
            ("warden.fleet.agent.decision_records.dropped", &["a9"], 2.0),
            ("warden.requests", &["gone", "refused"], 1.0),
        ] {
            assert_eq!(value(&by(&later, family), labels), Some(n), "{family} {labels:?}");
        }

        // Long after the server was first shown, a tool first seen now still reads 0 for the
        // delay (its label was not known ahead), while the server's own series count at once.
        counts.known.servers.insert("notes".into(), now - 600_000);
        counts.observe("a1", &DecisionRecordView { target: "fresh", ..refused });
        let t = crate::now_unix_ms() + 1_000;
        let families = decision_families(&mut counts, &known, t);
        assert_eq!(value(&by(&families, "warden.target.decisions"), &["notes", "fresh", "deny"]), Some(0.0));
        assert_eq!(value(&by(&families, "warden.decisions"), &["notes", "deny", "expired"]), Some(2.0));
        let families = decision_families(&mut counts, &known, t + 60_000);
        assert_eq!(value(&by(&families, "warden.target.decisions"), &["notes", "fresh", "deny"]), Some(1.0));
    }

    #[test]
    fn invented_names_cannot_crowd_out_the_configured_servers_nor_grow_without_bound() {
        let mut counts = DecisionCounts::new(std::time::Duration::ZERO);
        let known = Known { servers: vec!["notes".into()], issuers: Vec::new(), agents: vec!["a1".into()] };
        decision_families(&mut counts, &known, crate::now_unix_ms());
        let names: Vec<String> = (0..MAX_SERIES + 5).map(|i| format!("invented-{i}")).collect();
        let denied =
            DecisionRecordView { decision: pb::Decision::Deny as i32, reason: "policy_denied", ..Default::default() };
        for name in &names {
            counts.observe("a1", &DecisionRecordView { server: name, target: name, ..denied });
        }
        assert_eq!(counts.decisions.len(), MAX_SERIES);
        assert!(counts.by_target.len() <= MAX_SERIES);
        assert_eq!(counts.overflow, 5);
        // The configured server is counted all the same.
        counts.observe("a1", &DecisionRecordView { server: "notes", target: "echo", ..denied });
        assert_eq!(counts.decisions[&ReasonLabels("notes", "deny", "policy_denied")].value, 1);
        assert_eq!(counts.by_target[&TargetLabels("notes", "echo", "deny")].value, 1);
        assert_eq!(counts.overflow, 5);
        // A value longer than any agent sends is one series, whatever it says.
        let long = "x".repeat(MAX_LABEL_BYTES + 1);
        counts.observe("a1", &DecisionRecordView { server: "notes", target: &long, ..denied });
        assert_eq!(counts.by_target[&TargetLabels("notes", TOO_LONG, "deny")].value, 1);
    }
}
