//! Every token exchange, granted or refused, recorded like an agent's decision: into the
//! decision store under the agent name `control-plane`, so it is listed by `wardenctl
//! decisions`, counted in the metrics and exported as an OTLP log. The record names the task
//! token by the same `jti` hash agents put on the decisions made with it.
//!
//! Recording never slows an exchange down: records go through a bounded queue to one task that
//! writes them in batches; past the bound they are counted as dropped, and the count is stored
//! with the next batch, as an agent's drops are.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::v1 as pb;
use tokio::sync::{mpsc, watch};

use crate::decisions::Decisions;

/// The name exchange records are stored under.
pub const AGENT: &str = "control-plane";
/// Records waiting to be stored, at most.
const QUEUE: usize = 65_536;
/// Records per stored batch, at most.
const BATCH: usize = 2_000;

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
pub struct ExchangeLog {
    queue: mpsc::Sender<pb::DecisionRecord>,
    dropped: Arc<AtomicU64>,
}

impl ExchangeLog {
    /// The log and the task that stores what it is given (run it with [`run`]).
    pub fn new() -> (ExchangeLog, Writer) {
        let (queue, records) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        (ExchangeLog { queue, dropped: dropped.clone() }, Writer { records, dropped })
    }

    /// Queues one exchange record; counts it as dropped when the queue is full.
    pub fn record(&self, exchange: Exchange) {
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
        };
        if self.queue.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The receiving end of an [`ExchangeLog`].
pub struct Writer {
    records: mpsc::Receiver<pb::DecisionRecord>,
    dropped: Arc<AtomicU64>,
}

/// Stores queued exchange records in batches until shutdown, then what is still queued.
pub async fn run(mut writer: Writer, decisions: Arc<Decisions>, mut stop: watch::Receiver<bool>) {
    // This run's records are told apart from the previous run's by a random boot id.
    let boot: u64 = rand::random();
    let mut sequence = 0u64;
    loop {
        let mut batch = Vec::new();
        let stopping = tokio::select! {
            received = writer.records.recv_many(&mut batch, BATCH) => received == 0,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            writer.records.close();
            while writer.records.recv_many(&mut batch, BATCH).await > 0 {
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
