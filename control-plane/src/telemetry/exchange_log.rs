//! Every token exchange, granted or refused, recorded like an agent's decision: into the
//! decision store under the agent name `control-plane`, so it is listed by `wardenctl
//! decisions`, counted in the metrics and exported as an OTLP log. The record names the task
//! token by the same `jti` hash agents put on the decisions made with it.
//!
//! Recording never slows an exchange down: records go through a bounded queue to one task that
//! writes them in batches; past the bound they are counted as dropped, and the count is stored
//! with the next batch, as an agent's drops are.
//!
//! Refusals before the subject token verified (no such server, a forged, expired or garbage
//! token, a bad DPoP proof) cost their sender nothing, so they are tallied as the gateway
//! tallies its own: one record per server, reason and source address each second, carrying how
//! many it stands for (`count`) and the source. Every exchange of a verified workload is a
//! record of its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::v1 as pb;
use tokio::sync::mpsc;
use warden_tasks::Shutdown;

use crate::telemetry::decisions::Decisions;

/// The name exchange records are stored under.
pub const AGENT: &str = "control-plane";
/// Records waiting to be stored, at most.
const QUEUE: usize = 65_536;
/// Records per stored batch, at most.
const BATCH: usize = 2_000;
/// How often tallied refusals become records.
const WINDOW: Duration = Duration::from_secs(1);
/// Distinct (server, reason, source) tallies per window; past it, refusals from new sources are
/// tallied under the unspecified address (still counted, in bounded memory).
const MAX_TALLIES: usize = 4_096;
/// Where refusals past [`MAX_TALLIES`] are tallied.
const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// Refusals of the current window: (server, reason, source) → (count, first record).
type Tallies = Mutex<HashMap<(String, String, IpAddr), (u64, pb::DecisionRecord)>>;

/// One exchange, as the token service decided it.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    /// The subject token's subject.
    pub subject: String,
    /// Its TrustedIssuer.
    pub issuer: String,
    /// The actor, `<issuer>/<subject>`, for delegation.
    pub actor: String,
    /// The McpServer.
    pub server: String,
    /// Tools asked for.
    pub tools: Vec<String>,
    /// Granted.
    pub allowed: bool,
    /// Why not, as a stable code.
    pub reason: String,
    /// The task token's lifetime.
    pub lifetime_seconds: i64,
    /// The task token's `jti` hash.
    pub jti_hash: String,
    /// `bearer`, `dpop` or `mtls`.
    pub binding: &'static str,
    /// How long the exchange took.
    pub latency: Duration,
}

/// The queue in front of the decision store.
#[derive(Clone)]
pub struct ExchangeLog {
    queue: mpsc::Sender<pb::DecisionRecord>,
    dropped: Arc<AtomicU64>,
    tallies: Arc<Tallies>,
}

impl ExchangeLog {
    /// The log and the task that stores what it is given (run it with [`run`]).
    pub fn new() -> (ExchangeLog, Writer) {
        let (queue, records) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let tallies = Arc::new(Tallies::default());
        let log = ExchangeLog { queue: queue.clone(), dropped: dropped.clone(), tallies: tallies.clone() };
        (log, Writer { records, dropped, tallies, queue })
    }

    /// Queues one exchange record (counted as dropped when the queue is full), or tallies it
    /// when it is a refusal before the subject token verified.
    pub fn record(&self, exchange: Exchange, source: IpAddr) {
        let unverified = !exchange.allowed && exchange.subject.is_empty();
        let time_unix_nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
        let record = pb::DecisionRecord {
            sequence: 0,
            time_unix_nanos,
            server: exchange.server,
            method: warden_core::authorize::EXCHANGE_ACTION.to_string(),
            target_kind: "tool".into(),
            target: exchange.tools.join(","),
            subject: exchange.subject,
            issuer: exchange.issuer,
            decision: if exchange.allowed { pb::Decision::Allow } else { pb::Decision::Deny } as i32,
            reason: exchange.reason,
            policies: Vec::new(),
            latency_micros: exchange.latency.as_micros() as u64,
            trace_id: String::new(),
            jti_hash: exchange.jti_hash,
            via: "token-exchange".into(),
            token_lifetime_seconds: exchange.lifetime_seconds.max(0) as u64,
            actor: exchange.actor,
            binding: exchange.binding.into(),
            count: 0,
            source: String::new(),
            // Exchanges are put to the enforced policies only.
            shadow: String::new(),
            shadow_policies: Vec::new(),
            audit: String::new(),
            // An exchange is put to policy per tool; `explain` and replays read the gateways'.
            caller: Vec::new(),
            caller_facts: None,
            arguments: false,
            config_version: 0,
            policy_time_lag_seconds: 0,
        };
        if unverified {
            let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
            let mut key = (record.server.clone(), record.reason.clone(), source);
            if tallies.len() >= MAX_TALLIES && !tallies.contains_key(&key) {
                key.2 = ELSEWHERE;
            }
            tallies.entry(key).or_insert((0, record)).0 += 1;
            return;
        }
        if self.queue.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The tallied refusals as records (each with its count and source), the tallies emptied.
fn drain(tallies: &Tallies) -> Vec<pb::DecisionRecord> {
    let taken = std::mem::take(&mut *tallies.lock().unwrap_or_else(|e| e.into_inner()));
    taken
        .into_iter()
        .map(|((_, _, source), (count, record))| pb::DecisionRecord {
            count,
            source: source.to_string(),
            // The tools asked for differ between the refusals a record stands for.
            target: String::new(),
            ..record
        })
        .collect()
}

/// The receiving end of an [`ExchangeLog`].
pub struct Writer {
    records: mpsc::Receiver<pb::DecisionRecord>,
    dropped: Arc<AtomicU64>,
    tallies: Arc<Tallies>,
    /// Where tallies go each window (the same queue).
    queue: mpsc::Sender<pb::DecisionRecord>,
}

/// Stores queued exchange records in batches until shutdown, then what is still queued.
pub async fn run(mut writer: Writer, decisions: Arc<Decisions>, mut stop: Shutdown) {
    // This run's records are told apart from the previous run's by a random boot id.
    let boot: u64 = rand::random();
    let mut sequence = 0u64;
    let mut window = tokio::time::interval(WINDOW);
    window.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = Vec::new();
        let stopping = tokio::select! {
            received = writer.records.recv_many(&mut batch, BATCH) => received == 0,
            _ = window.tick() => {
                for record in drain(&writer.tallies) {
                    if writer.queue.try_send(record).is_err() {
                        writer.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
            _ = stop.requested() => true,
        };
        if stopping {
            batch.extend(drain(&writer.tallies));
            writer.records.close();
            while writer.records.recv_many(&mut batch, BATCH).await > 0 {
                store(&decisions, &mut batch, boot, &mut sequence, &writer.dropped).await;
            }
            if !batch.is_empty() {
                store(&decisions, &mut batch, boot, &mut sequence, &writer.dropped).await;
            }
            return;
        }
        store(&decisions, &mut batch, boot, &mut sequence, &writer.dropped).await;
    }
}

async fn store(
    decisions: &Decisions,
    batch: &mut Vec<pb::DecisionRecord>,
    boot: u64,
    sequence: &mut u64,
    dropped: &AtomicU64,
) {
    for record in batch.iter_mut() {
        *sequence += 1;
        record.sequence = *sequence;
    }
    let records: Vec<_> = batch.drain(..).map(|r| prost::Message::encode_to_vec(&r).into()).collect();
    let count = records.len();
    let dropped = dropped.load(Ordering::Relaxed);
    if let Err(e) = decisions.ingest(AGENT, pb::DecisionBatch { boot, records, dropped }).await {
        tracing::error!(count, "storing exchange records failed: {e}");
    }
}
