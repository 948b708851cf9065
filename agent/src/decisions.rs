//! Decision records on their way to the control plane: nothing lost silently.
//!
//! The gateway hands each record to the [`Outbox`] (a bounded queue in memory). The sync stream
//! sends them up in batches, one batch in flight at a time, and forgets a record only when the
//! control plane acknowledges having stored it (at least once; the control plane drops
//! duplicates by `(agent, boot, sequence)`). While the control plane is unreachable, or the
//! memory queue fills, records move to the on-disk [`spool::Spool`] in the data directory, which
//! is sent first on reconnect, so order is kept. Records are dropped only when both are full;
//! the drops are counted and reported with the next batch. On SIGTERM whatever is still in
//! memory goes to the spool. When the agent also exports records itself ([`direct`]), each
//! queued record is offered to that best-effort exporter as well.
//!
//! Ordering invariant: every record in the spool is older than every record in memory. The
//! spool's lock is held from "take what memory holds" to "appended to the spool", and by the
//! sender from "the spool is empty" to "took a batch from memory", so no batch ever overtakes
//! older records (the control plane would take the older ones for duplicates).

pub mod direct;
pub mod spool;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proto::decision_record::DecisionRecordRef;
use proto::v1 as pb;
use tokio::sync::Notify;
use warden_tasks::Shutdown;

use spool::{Front, Spool, SpoolError};

/// Bounds of the outbox.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Records held in memory; past three quarters of it they move to the spool (the control
    /// plane is not keeping up).
    pub memory_records: usize,
    /// Records held on disk; past it new records are dropped (and counted).
    pub spool_records: u64,
    /// Records per batch sent.
    pub batch_records: usize,
    /// Bytes of records per batch sent (a batch has at least one record): the control plane
    /// takes messages of up to 4 MiB.
    pub batch_bytes: usize,
    /// Whether records are kept at all (off: for benchmarks, or hosts whose decisions need no
    /// record).
    pub enabled: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        // A batch of 4,000 records is about 650 kB on the wire; one in flight per round trip
        // (the control plane's fsync included) keeps up with a busy gateway, and each batch
        // is one transaction at the control plane, whose fixed cost (about 0.8 ms of CPU,
        // mostly the commit) larger batches share out: 2.0 µs of control-plane CPU per record
        // with batches of 4,000 against 2.8 µs with 1,000 (BENCHMARKS.md). The stream's
        // buffers (tonic's, HTTP/2's, TLS's) grow to the largest batch sent.
        Limits {
            memory_records: 20_000,
            spool_records: 1_000_000,
            batch_records: 4_000,
            batch_bytes: 1024 * 1024,
            enabled: true,
        }
    }
}

/// A batch on its way, to be matched with its acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    boot: u64,
    /// Its last record's sequence (0 for a batch carrying only a drop count).
    last: u64,
    dropped: u64,
}

impl InFlight {
    /// The run of the agent its records come from.
    pub fn boot(&self) -> u64 {
        self.boot
    }
}

/// How long a batch smaller than `batch_records` waits for more records before it goes: fewer,
/// larger batches cost the gateway host less per record (measured in BENCHMARKS.md), and a
/// decision reaches the control plane at most this much later.
const LINGER: Duration = Duration::from_millis(50);

/// A queued record, encoded: a slice of a [`CHUNK`] shared by the records queued around it,
/// instead of a dozen strings or an allocation of its own (cross-thread frees of many small
/// allocations grew the allocator's per-thread arenas under load and cost the gateway threads
/// allocator locks; see BENCHMARKS.md). The batch that carries it refers to it, not a copy.
struct Queued {
    sequence: u64,
    encoded: Bytes,
}

/// Records are written one after another into buffers of this size; a buffer is freed when
/// the last record in it is (acknowledged, or spilled to disk).
const CHUNK: usize = 64 * 1024;

thread_local! {
    /// Where a gateway thread encodes a record before it is queued.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct Memory {
    next_sequence: u64,
    records: VecDeque<Queued>,
    /// The unused end of the chunk records are being written to.
    chunk: BytesMut,
    /// When the oldest unsent record was queued (for [`LINGER`]).
    oldest_at: Option<tokio::time::Instant>,
    /// Records of this run dropped: memory full while the spool could not take them, or the
    /// spool full.
    dropped: u64,
    /// The drop count the control plane acknowledged.
    dropped_acknowledged: u64,
}

/// The queue between the gateway and the control plane.
pub struct Outbox {
    /// This run of the agent.
    boot: u64,
    memory: Mutex<Memory>,
    spool: Arc<tokio::sync::Mutex<Spool>>,
    /// Records arrived (for the sender).
    arrived: Notify,
    /// Memory is filling (for the spiller).
    pressure: Notify,
    limits: Limits,
    /// Where records also go when the agent exports them itself.
    direct: std::sync::OnceLock<Arc<direct::Direct>>,
    /// `Memory::dropped`, readable without the lock (see [`Outbox::drop_count`]).
    drops: std::sync::atomic::AtomicU64,
}

impl Outbox {
    /// Opens the spool in `data_dir` (records of earlier runs in it are sent first).
    pub fn open(data_dir: &std::path::Path, limits: Limits) -> Result<Arc<Outbox>, SpoolError> {
        let spool = Spool::open(&data_dir.join("decisions.redb"), limits.spool_records)?;
        if !spool.is_empty() {
            tracing::info!(records = spool.len(), "decision records of an earlier run are waiting to be sent");
        }
        Ok(Arc::new(Outbox {
            boot: rand::random(),
            memory: Mutex::new(Memory {
                next_sequence: 0,
                records: VecDeque::new(),
                chunk: BytesMut::new(),
                oldest_at: None,
                dropped: 0,
                dropped_acknowledged: 0,
            }),
            spool: Arc::new(tokio::sync::Mutex::new(spool)),
            arrived: Notify::new(),
            pressure: Notify::new(),
            limits,
            direct: std::sync::OnceLock::new(),
            drops: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This run of the agent, as records identify it.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Sends every record from now on to `direct` as well (once; later calls change nothing).
    pub fn export_directly(&self, direct: Arc<direct::Direct>) {
        let _ = self.direct.set(direct);
    }

    /// The direct exporter, if any.
    pub fn direct(&self) -> Option<&direct::Direct> {
        self.direct.get().map(|d| &**d)
    }

    /// Whether records are kept (the gateway skips building them otherwise).
    pub fn enabled(&self) -> bool {
        self.limits.enabled
    }

    /// Queues one record (its sequence is assigned here). Never blocks on I/O: with memory full
    /// (the spool writer behind), the record is dropped and counted.
    pub fn record(&self, record: &DecisionRecordRef<'_>) {
        SCRATCH.with_borrow_mut(|scratch| {
            // Encoded before taking the lock, which the other gateway threads wait for.
            scratch.clear();
            scratch.reserve(record.encoded_len() + DecisionRecordRef::MAX_SEQUENCE_LEN);
            record.encode_into(scratch);
            let mut memory = self.memory();
            if memory.records.len() >= self.limits.memory_records {
                memory.dropped += 1;
                self.drops.store(memory.dropped, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            memory.next_sequence += 1;
            let sequence = memory.next_sequence;
            DecisionRecordRef::append_sequence(scratch, sequence);
            if memory.chunk.capacity() < scratch.len() {
                memory.chunk = BytesMut::with_capacity(CHUNK.max(scratch.len()));
            }
            memory.chunk.extend_from_slice(scratch);
            let encoded = memory.chunk.split().freeze();
            let direct = self.direct.get().map(|direct| (direct, encoded.clone()));
            memory.records.push_back(Queued { sequence, encoded });
            self.queued(memory);
            if let Some((direct, encoded)) = direct {
                direct.offer(encoded);
            }
        });
    }

    /// Wakes the sender and the spiller as the queue grows (`memory` just took a record).
    fn queued(&self, mut memory: std::sync::MutexGuard<'_, Memory>) {
        let queued = memory.records.len();
        if queued == 1 {
            memory.oldest_at = Some(tokio::time::Instant::now());
        }
        drop(memory);
        // The sender waits for the first record and for a full batch; waking it for every
        // record would cost a cross-thread wake-up per request.
        if queued == 1 || queued == self.limits.batch_records {
            self.arrived.notify_one();
        }
        if queued >= self.limits.memory_records / 4 * 3 {
            self.pressure.notify_one();
        }
    }

    /// Records queued in memory and on disk (the disk figure is the last known one while the
    /// spool is busy).
    pub fn depths(&self) -> (usize, Option<u64>) {
        let queued = self.memory().records.len();
        (queued, self.spool.try_lock().ok().map(|s| s.len()))
    }

    /// Records of this run dropped so far, without waiting for the queue's lock: a record that
    /// carried a caller's facts may be among them, so a change means sending facts again.
    pub fn drop_count(&self) -> u64 {
        self.drops.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records made so far by this run: sent, queued or dropped.
    pub fn made(&self) -> (u64, u64) {
        let memory = self.memory();
        (memory.next_sequence, memory.dropped)
    }

    /// The next batch to send, waiting until there is one: the spool's oldest records first
    /// (or an earlier run's drop count), then memory's, then this run's drop count.
    pub async fn next_batch(&self) -> Result<(pb::DecisionBatch, InFlight), SpoolError> {
        let (max, max_bytes) = (self.limits.batch_records, self.limits.batch_bytes);
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            // Held until memory is read, so a spill cannot slip older records past us.
            let guard = self.spool.clone().lock_owned().await;
            let (guard, spooled) = if guard.is_empty() && guard.pending_drops() == 0 {
                (guard, Ok(None))
            } else {
                tokio::task::spawn_blocking(move || {
                    let front = guard.front(max, max_bytes);
                    (guard, front)
                })
                .await
                .map_err(|e| SpoolError::Db(format!("spool task: {e}")))?
            };
            let batch = match spooled? {
                Some(Front { boot, records, last, dropped }) => {
                    Some((pb::DecisionBatch { boot, records, dropped }, InFlight { boot, last, dropped }))
                }
                None => match self.memory_front(max, max_bytes) {
                    Ok(front) => front,
                    Err(linger) => {
                        drop(guard);
                        tokio::select! {
                            _ = tokio::time::sleep(linger) => {}
                            _ = arrived => {}
                        }
                        continue;
                    }
                },
            };
            drop(guard);
            if let Some(batch) = batch {
                return Ok(batch);
            }
            arrived.await;
        }
    }

    /// The next batch from memory; `Err(wait)` while a partial batch is still lingering.
    fn memory_front(&self, max: usize, max_bytes: usize) -> Result<Option<(pb::DecisionBatch, InFlight)>, Duration> {
        let memory = self.memory();
        if memory.records.is_empty() && memory.dropped == memory.dropped_acknowledged {
            return Ok(None);
        }
        // What fits: `max` records, within `max_bytes` unless the first alone is larger.
        let (mut taken, mut bytes) = (0, 0);
        for queued in memory.records.iter().take(max) {
            if taken > 0 && bytes + queued.encoded.len() > max_bytes {
                break;
            }
            (taken, bytes) = (taken + 1, bytes + queued.encoded.len());
        }
        let full = taken == max || taken < memory.records.len();
        if !full && let Some(at) = memory.oldest_at {
            let waited = at.elapsed();
            if waited < LINGER {
                return Err(LINGER - waited);
            }
        }
        // Shared as they are (no decoding, no copy): the lock is held for a count per record.
        let last = taken.checked_sub(1).map_or(0, |i| memory.records[i].sequence);
        let records = memory.records.iter().take(taken).map(|q| q.encoded.clone()).collect();
        let dropped = memory.dropped;
        drop(memory);
        let batch = pb::DecisionBatch { boot: self.boot, records, dropped };
        Ok(Some((batch, InFlight { boot: self.boot, last, dropped })))
    }

    /// The control plane stored `batch` (acknowledged up to `sequence`): forget it.
    pub async fn acknowledge(&self, batch: InFlight, sequence: u64) -> Result<(), SpoolError> {
        let mut guard = self.spool.clone().lock_owned().await;
        // Whatever of it is in the spool (it may have been spilled while in flight).
        if !guard.is_empty() || guard.pending_drops() > 0 {
            let (boot, dropped) = (batch.boot, batch.dropped);
            guard = tokio::task::spawn_blocking(move || guard.acknowledge(boot, sequence, dropped).map(|()| guard))
                .await
                .map_err(|e| SpoolError::Db(format!("spool task: {e}")))??;
        }
        if batch.boot == self.boot {
            let mut memory = self.memory();
            while memory.records.front().is_some_and(|r| r.sequence <= sequence) {
                memory.records.pop_front();
            }
            // What is left came after the batch: it has waited at least since now.
            memory.oldest_at = (!memory.records.is_empty()).then(tokio::time::Instant::now);
            memory.dropped_acknowledged = memory.dropped_acknowledged.max(batch.dropped);
        }
        drop(guard);
        Ok(())
    }

    /// Moves what memory holds to the spool, oldest first, as much as fits; the rest stays in
    /// memory (where a full queue drops new records one by one, each counted), so a full spool
    /// does not cost the records already queued.
    pub async fn spill(&self) -> Result<(), SpoolError> {
        self.move_to_spool(false).await
    }

    /// Moves memory to the spool; with `final_`, what does not fit is dropped and counted (the
    /// process is ending), and the drop count is written even with no record to move.
    async fn move_to_spool(&self, final_: bool) -> Result<(), SpoolError> {
        let mut guard = self.spool.clone().lock_owned().await;
        let (records, dropped, lost) = {
            let mut memory = self.memory();
            let room = guard.room().min(memory.records.len() as u64) as usize;
            let lost = if final_ { memory.records.len() - room } else { 0 };
            memory.dropped += lost as u64;
            self.drops.store(memory.dropped, std::sync::atomic::Ordering::Relaxed);
            let records: Vec<Bytes> = memory.records.drain(..room).map(|q| q.encoded).collect();
            if final_ {
                memory.records.clear();
            }
            (records, memory.dropped, lost)
        };
        if records.is_empty() && (lost == 0 && (!final_ || dropped == 0)) {
            return Ok(());
        }
        let boot = self.boot;
        tokio::task::spawn_blocking(move || guard.append(boot, &records, dropped))
            .await
            .map_err(|e| SpoolError::Db(format!("spool task: {e}")))?
    }

    /// Spills when memory fills, and every second while the control plane is unreachable,
    /// until `stop`; then spills what is left.
    pub async fn run_spiller(self: Arc<Self>, connected: impl Fn() -> bool, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let due = tokio::select! {
                _ = self.pressure.notified() => true,
                _ = tick.tick() => !connected() && !self.memory().records.is_empty(),
                _ = stop.requested() => break,
            };
            if due && let Err(e) = self.spill().await {
                tracing::error!("{e}");
            }
        }
    }

    /// At shutdown, after the gateway stopped: everything still in memory goes to disk.
    pub async fn persist(&self) {
        let (made, dropped) = self.made();
        match self.move_to_spool(true).await {
            Ok(()) => tracing::info!(made, dropped, "decision records persisted for the next run"),
            Err(e) => tracing::error!("decision records could not be persisted: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn record() -> DecisionRecordRef<'static> {
        DecisionRecordRef { server: "s", ..Default::default() }
    }

    /// The next batch, with the sequences of its records.
    async fn next(outbox: &Outbox) -> (pb::DecisionBatch, InFlight, Vec<u64>) {
        let (batch, in_flight) = outbox.next_batch().await.unwrap();
        let sequences: Vec<u64> =
            batch.records.iter().map(|r| pb::DecisionRecord::decode(r.clone()).unwrap().sequence).collect();
        assert_eq!(sequences.last().copied().unwrap_or(0), in_flight.last);
        (batch, in_flight, sequences)
    }

    fn outbox(dir: &std::path::Path, memory: usize, spool: u64) -> Arc<Outbox> {
        let limits = Limits { memory_records: memory, spool_records: spool, batch_records: 3, ..Limits::default() };
        Outbox::open(dir, limits).unwrap()
    }

    #[tokio::test]
    async fn batches_are_bounded_in_bytes_but_never_empty() {
        // Each record: the server field and a one-byte sequence.
        let size = record().encoded_len() + 2;
        for (batch_bytes, want) in [(2 * size, vec![vec![1, 2], vec![3]]), (1, vec![vec![1], vec![2], vec![3]])] {
            let dir = tempfile::tempdir().unwrap();
            let outbox =
                Outbox::open(dir.path(), Limits { batch_records: 3, batch_bytes, ..Limits::default() }).unwrap();
            for _ in 0..3 {
                outbox.record(&record());
            }
            let mut got = Vec::new();
            for _ in &want {
                let (batch, in_flight, sequences) = next(&outbox).await;
                assert!(
                    batch.records.len() == 1 || batch.records.iter().map(|r| r.len()).sum::<usize>() <= batch_bytes
                );
                outbox.acknowledge(in_flight, in_flight.last).await.unwrap();
                got.push(sequences);
            }
            assert_eq!(got, want, "batches of at most {batch_bytes} bytes");
        }
    }

    #[tokio::test]
    async fn batches_come_oldest_first_and_go_only_when_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = outbox(dir.path(), 100, 100);
        for _ in 0..4 {
            outbox.record(&record());
        }
        let (batch, in_flight, sequences) = next(&outbox).await;
        assert_eq!(sequences, [1, 2, 3]);
        // Not acknowledged (the stream broke): the same records again.
        let (again, _, _) = next(&outbox).await;
        assert_eq!(again, batch);
        outbox.acknowledge(in_flight, 3).await.unwrap();
        let (_, in_flight, sequences) = next(&outbox).await;
        assert_eq!(sequences, [4]);
        // Spilled while in flight: the acknowledgement still finds them.
        outbox.record(&record());
        outbox.spill().await.unwrap();
        outbox.acknowledge(in_flight, 4).await.unwrap();
        let (_, _, sequences) = next(&outbox).await;
        assert_eq!(sequences, [5]);
    }

    #[tokio::test]
    async fn spilled_records_go_before_newer_ones_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first_boot = {
            let outbox = outbox(dir.path(), 100, 100);
            outbox.record(&record());
            outbox.record(&record());
            outbox.persist().await;
            outbox.boot
        };
        let outbox = outbox(dir.path(), 100, 100);
        outbox.record(&record());
        let (batch, in_flight, _) = next(&outbox).await;
        assert_eq!((batch.boot, batch.records.len()), (first_boot, 2));
        outbox.acknowledge(in_flight, 2).await.unwrap();
        let (batch, _, _) = next(&outbox).await;
        assert_eq!((batch.boot, batch.records.len()), (outbox.boot, 1));
    }

    #[tokio::test]
    async fn past_both_bounds_records_are_dropped_counted_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = outbox(dir.path(), 4, 2);
        for _ in 0..6 {
            outbox.record(&record());
        }
        // Memory took 4, two were dropped; the spool takes the oldest 2, memory keeps the rest.
        outbox.spill().await.unwrap();
        assert_eq!(outbox.made(), (4, 2));
        let (batch, in_flight, sequences) = next(&outbox).await;
        assert_eq!((sequences, batch.dropped), (vec![1, 2], 2));
        outbox.acknowledge(in_flight, 2).await.unwrap();
        // Memory again: two more kept, three dropped; the count rides with the next batches.
        for _ in 0..5 {
            outbox.record(&record());
        }
        let (batch, in_flight, sequences) = next(&outbox).await;
        assert_eq!((sequences, batch.dropped), (vec![3, 4, 5], 5));
        outbox.acknowledge(in_flight, 5).await.unwrap();
        let (batch, in_flight, sequences) = next(&outbox).await;
        assert_eq!((sequences, batch.dropped), (vec![6], 5));
        outbox.acknowledge(in_flight, 6).await.unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(100), outbox.next_batch()).await;
        assert!(pending.is_err(), "nothing more to send");
    }

    #[tokio::test]
    async fn at_shutdown_what_the_spool_cannot_take_is_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let first_boot = {
            let outbox = outbox(dir.path(), 4, 2);
            for _ in 0..4 {
                outbox.record(&record());
            }
            outbox.persist().await;
            assert_eq!(outbox.made(), (4, 2));
            outbox.boot
        };
        let outbox = outbox(dir.path(), 4, 2);
        let (batch, _, sequences) = next(&outbox).await;
        assert_eq!((batch.boot, sequences, batch.dropped), (first_boot, vec![1, 2], 2));
    }
}
