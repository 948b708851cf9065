//! Decision records from the agents: stored durably before they are acknowledged, each once.
//!
//! Agents send batches over their stream and forget a record only when acknowledged, so
//! delivery is at least once; duplicates (a batch resent after a lost acknowledgement, an agent
//! reconnecting through another path) are dropped here by `(agent, boot, sequence)`: per run of
//! an agent, the highest sequence stored is kept, and only records above it are new. Agents send
//! in order, so that is exact.
//!
//! One writer task commits the batches of all agents together (group commit: one fsync for many
//! batches), then answers each. The file is `decisions.redb` in the data directory, apart from
//! the configuration store so telemetry volume never slows configuration writes. The oldest
//! records beyond the retention bound are deleted as new ones arrive.

use std::path::Path;
use std::sync::Arc;

use prost::Message;
use prost::bytes::Bytes;
use proto::decision_record::DecisionRecordView;
use proto::v1 as pb;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{mpsc, oneshot};

/// Arrival order → encoded `StoredDecision`.
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// (agent, boot) → highest sequence stored.
const CURSORS: TableDefinition<(&str, u64), u64> = TableDefinition::new("cursors");
/// (agent, boot) → records that run reported dropping (cumulative).
const DROPS: TableDefinition<(&str, u64), u64> = TableDefinition::new("drops");
/// "received" → records stored since the file was created; "exported" → the cursor of the last
/// record the OTLP exporter delivered.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// Records examined per query at most (a query that matched little returns where it stopped).
const SCAN_LIMIT: usize = 200_000;
/// Records returned per query at most.
pub const LIST_LIMIT: u32 = 1_000;

/// Why the decision store failed.
#[derive(Debug, thiserror::Error)]
#[error("decision store: {0}")]
pub struct DecisionError(String);

fn db_err(e: impl Into<redb::Error>) -> DecisionError {
    DecisionError(e.into().to_string())
}

struct Ingest {
    agent: String,
    boot: u64,
    /// Each record's sequence, and the record as received (checked to decode; what is stored).
    records: Vec<(u64, Bytes)>,
    dropped: u64,
    /// The sequence to acknowledge and the first sequence stored now (the records from it to
    /// the acknowledged one are new).
    done: oneshot::Sender<Result<(u64, u64), DecisionError>>,
}

/// The store and its writer.
pub struct Decisions {
    db: Arc<Database>,
    /// Woken after every commit of new records.
    stored: Arc<tokio::sync::Notify>,
    ingest: Option<mpsc::Sender<Ingest>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// What the metrics count of the records stored.
    counts: crate::metrics::Counts,
}

/// The decision store's page cache.
const DECISIONS_CACHE_BYTES: usize = 32 * 1024 * 1024;

impl Decisions {
    /// Opens `decisions.redb` in `data_dir`, keeping at most `retention` records, and starts
    /// the writer; what is stored is counted into `counts`.
    pub fn open(data_dir: &Path, retention: u64, counts: crate::metrics::Counts) -> Result<Decisions, DecisionError> {
        // Records are written once and read in order by exporters and `wardenctl`: redb's
        // default page cache (up to 1 GiB) would keep what was written resident for nothing.
        let db = Database::builder()
            .set_cache_size(DECISIONS_CACHE_BYTES)
            .create(data_dir.join("decisions.redb"))
            .map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(RECORDS).map_err(db_err)?;
        txn.open_table(CURSORS).map_err(db_err)?;
        txn.open_table(DROPS).map_err(db_err)?;
        txn.open_table(COUNTERS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        let db = Arc::new(db);
        let (ingest, queue) = mpsc::channel(1024);
        let (writer, stored) = (db.clone(), Arc::new(tokio::sync::Notify::new()));
        let (notify, drops) = (stored.clone(), counts.clone());
        let writer = std::thread::Builder::new()
            .name("decision-writer".into())
            .spawn(move || write_forever(&writer, queue, retention.max(1), &notify, &drops))
            .map_err(|e| DecisionError(format!("starting the writer: {e}")))?;
        Ok(Decisions { db, stored, ingest: Some(ingest), writer: Some(writer), counts })
    }

    /// Stores `batch` from `agent` (the identity of its certificate); the highest sequence of
    /// the batch's run now stored, to acknowledge. A record that does not decode refuses the
    /// whole batch, so the store only ever holds records its readers can decode.
    pub async fn ingest(&self, agent: &str, batch: pb::DecisionBatch) -> Result<u64, DecisionError> {
        // Read here, on the caller's task, not on the one writer thread all agents share.
        let views = batch
            .records
            .iter()
            .enumerate()
            .map(|(i, encoded)| {
                DecisionRecordView::parse(encoded)
                    .map_err(|e| DecisionError(format!("record {i} of a batch from {agent} does not decode: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let records = views.iter().zip(&batch.records).map(|(v, encoded)| (v.sequence, encoded.clone())).collect();
        let (done, answer) = oneshot::channel();
        let request = Ingest { agent: agent.to_string(), boot: batch.boot, records, dropped: batch.dropped, done };
        let queue = self.ingest.as_ref().ok_or_else(|| DecisionError("the writer stopped".into()))?;
        queue.send(request).await.map_err(|_| DecisionError("the writer stopped".into()))?;
        let (ack, first_new) = answer.await.map_err(|_| DecisionError("the writer stopped".into()))??;
        // Counted once stored, and only what is new (not a resend's duplicates).
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for view in views.iter().filter(|v| v.sequence >= first_new && v.sequence <= ack) {
            counts.observe(agent, view);
        }
        Ok(ack)
    }

    /// Notified after every commit of new records.
    pub fn stored_notify(&self) -> Arc<tokio::sync::Notify> {
        self.stored.clone()
    }

    /// Up to `max` records after the export cursor, with the cursor of the last (blocking).
    pub fn unexported(&self, max: usize) -> Result<(u64, Vec<pb::StoredDecision>), DecisionError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let exported =
            txn.open_table(COUNTERS).map_err(db_err)?.get("exported").map_err(db_err)?.map_or(0, |v| v.value());
        let records = txn.open_table(RECORDS).map_err(db_err)?;
        let mut out = Vec::new();
        let mut last = exported;
        for entry in records.range(exported + 1..).map_err(db_err)?.take(max) {
            let (key, value) = entry.map_err(db_err)?;
            if out.is_empty() && key.value() > exported + 1 && exported > 0 {
                tracing::warn!(
                    lost = key.value() - exported - 1,
                    "decision records were deleted by retention before they could be exported"
                );
            }
            last = key.value();
            out.push(
                pb::StoredDecision::decode(value.value())
                    .map_err(|e| DecisionError(format!("record {last} does not decode: {e}")))?,
            );
        }
        Ok((last, out))
    }

    /// Records everything up to `cursor` as exported (blocking).
    pub fn set_exported(&self, cursor: u64) -> Result<(), DecisionError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(COUNTERS).map_err(db_err)?.insert("exported", cursor).map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Records matching `filter`, oldest first (blocking: call from `spawn_blocking`).
    pub fn list(&self, filter: &pb::ListDecisionsRequest) -> Result<pb::ListDecisionsResponse, DecisionError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let records = txn.open_table(RECORDS).map_err(db_err)?;
        let limit = match filter.limit {
            0 => LIST_LIMIT,
            n => n.min(LIST_LIMIT),
        } as usize;
        let mut out = pb::ListDecisionsResponse { next: filter.after, ..Default::default() };
        let start = filter.after.saturating_add(1);
        for (scanned, entry) in records.range(start..).map_err(db_err)?.enumerate() {
            if scanned >= SCAN_LIMIT || out.decisions.len() >= limit {
                break;
            }
            let (key, value) = entry.map_err(db_err)?;
            out.next = key.value();
            let stored = pb::StoredDecision::decode(value.value())
                .map_err(|e| DecisionError(format!("record {} does not decode: {e}", key.value())))?;
            if matches(filter, &stored) {
                out.decisions.push(stored);
            }
        }
        for entry in txn.open_table(DROPS).map_err(db_err)?.iter().map_err(db_err)? {
            let (key, dropped) = entry.map_err(db_err)?;
            *out.dropped.entry(key.value().0.to_string()).or_default() += dropped.value();
        }
        out.received =
            txn.open_table(COUNTERS).map_err(db_err)?.get("received").map_err(db_err)?.map_or(0, |v| v.value());
        Ok(out)
    }
}

impl Drop for Decisions {
    /// Lets the writer finish what it holds and close the file.
    fn drop(&mut self) {
        self.ingest.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn matches(filter: &pb::ListDecisionsRequest, stored: &pb::StoredDecision) -> bool {
    let Some(r) = &stored.record else { return false };
    let eq = |want: &str, have: &str| want.is_empty() || want == have;
    eq(&filter.agent, &stored.agent)
        && eq(&filter.server, &r.server)
        && eq(&filter.target, &r.target)
        && eq(&filter.subject, &r.subject)
        && eq(&filter.reason, &r.reason)
        && (filter.decision == 0 || filter.decision == r.decision)
        && r.time_unix_nanos >= filter.since_unix_nanos
}

/// The writer: takes every batch waiting, stores them in one transaction, answers each.
fn write_forever(
    db: &Database,
    mut queue: mpsc::Receiver<Ingest>,
    retention: u64,
    stored: &tokio::sync::Notify,
    counts: &crate::metrics::Counts,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        while group.len() < 256 {
            match queue.try_recv() {
                Ok(more) => group.push(more),
                Err(_) => break,
            }
        }
        match write_group(db, &group, retention) {
            Ok((acks, drops)) => {
                stored.notify_waiters();
                let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
                for (agent, before, now) in drops {
                    counts.dropped(&agent, before, now);
                }
                drop(counts);
                for (ingest, ack) in group.into_iter().zip(acks) {
                    let _ = ingest.done.send(Ok(ack));
                }
            }
            Err(e) => {
                tracing::error!("{e}");
                for ingest in group {
                    let _ = ingest.done.send(Err(DecisionError(e.0.clone())));
                }
            }
        }
    }
}

/// Per ingest: the sequence to acknowledge and the first sequence stored now (records from it to
/// the acknowledged one are new); and the drop counts that moved: (agent, before, now).
type Written = (Vec<(u64, u64)>, Vec<(String, u64, u64)>);

fn write_group(db: &Database, group: &[Ingest], retention: u64) -> Result<Written, DecisionError> {
    let txn = db.begin_write().map_err(db_err)?;
    let mut acks = Vec::with_capacity(group.len());
    let mut moved_drops = Vec::new();
    {
        let mut records = txn.open_table(RECORDS).map_err(db_err)?;
        let mut cursors = txn.open_table(CURSORS).map_err(db_err)?;
        let mut drops = txn.open_table(DROPS).map_err(db_err)?;
        let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let mut next = records.last().map_err(db_err)?.map_or(1, |(k, _)| k.value() + 1);
        let mut received = counters.get("received").map_err(db_err)?.map_or(0, |v| v.value());
        let mut value = Vec::new();
        for Ingest { agent, boot, records: batch, dropped, .. } in group {
            let key = (agent.as_str(), *boot);
            let mut cursor = cursors.get(key).map_err(db_err)?.map_or(0, |v| v.value());
            let first_new = cursor + 1;
            for (sequence, encoded) in batch {
                // Already stored (a resend): skipped, so each record is kept once.
                if *sequence <= cursor {
                    continue;
                }
                cursor = *sequence;
                value.clear();
                encode_stored(next, agent, encoded, *boot, &mut value);
                records.insert(next, value.as_slice()).map_err(db_err)?;
                next += 1;
                received += 1;
            }
            cursors.insert(key, cursor).map_err(db_err)?;
            let known = drops.get(key).map_err(db_err)?.map_or(0, |v| v.value());
            if *dropped > known {
                tracing::warn!(%agent, dropped, "an agent reports dropped decision records");
                drops.insert(key, *dropped).map_err(db_err)?;
                moved_drops.push((agent.clone(), known, *dropped));
            }
            acks.push((cursor, first_new));
        }
        counters.insert("received", received).map_err(db_err)?;
        // Retention: the oldest go first.
        let excess = records.len().map_err(db_err)?.saturating_sub(retention);
        for _ in 0..excess {
            records.pop_first().map_err(db_err)?;
        }
    }
    txn.commit().map_err(db_err)?;
    Ok((acks, moved_drops))
}

/// `StoredDecision { cursor, agent, record, boot }` in the bytes prost would write, with the
/// record as the agent encoded it (a message field and a bytes field look the same on the wire).
fn encode_stored(cursor: u64, agent: &str, record: &[u8], boot: u64, out: &mut Vec<u8>) {
    use prost::encoding::{self, WireType};
    if cursor != 0 {
        encoding::uint64::encode(1, &cursor, out);
    }
    if !agent.is_empty() {
        encoding::encode_key(2, WireType::LengthDelimited, out);
        encoding::encode_varint(agent.len() as u64, out);
        out.extend_from_slice(agent.as_bytes());
    }
    encoding::encode_key(3, WireType::LengthDelimited, out);
    encoding::encode_varint(record.len() as u64, out);
    out.extend_from_slice(record);
    if boot != 0 {
        encoding::fixed64::encode(4, &boot, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(boot: u64, sequences: std::ops::RangeInclusive<u64>, dropped: u64) -> pb::DecisionBatch {
        let records = sequences
            .map(|sequence| pb::DecisionRecord { sequence, server: "github".into(), ..Default::default() })
            .map(|r| r.encode_to_vec().into())
            .collect();
        pb::DecisionBatch { boot, records, dropped }
    }

    #[test]
    fn a_stored_record_is_written_as_prost_writes_it() {
        let record = pb::DecisionRecord {
            sequence: 4,
            server: "files".into(),
            policies: vec!["p.0".into()],
            decision: pb::Decision::Deny as i32,
            ..Default::default()
        };
        for (cursor, agent, boot) in [(1, "agent-1", 7), (0, "", 0), (u64::MAX, "a", u64::MAX)] {
            let expected =
                pb::StoredDecision { cursor, agent: agent.into(), record: Some(record.clone()), boot }.encode_to_vec();
            let mut written = Vec::new();
            encode_stored(cursor, agent, &record.encode_to_vec(), boot, &mut written);
            assert_eq!(written, expected, "cursor {cursor}, agent {agent:?}, boot {boot}");
        }
    }

    #[tokio::test]
    async fn each_record_is_kept_once_whatever_is_resent() {
        let dir = tempfile::tempdir().unwrap();
        let counts = crate::metrics::Counts::default();
        let store = Decisions::open(dir.path(), 100, counts.clone()).unwrap();
        assert_eq!(store.ingest("a1", batch(7, 1..=3, 0)).await.unwrap(), 3);
        // Resent whole, resent in part with new ones, and another run of the same agent.
        assert_eq!(store.ingest("a1", batch(7, 1..=3, 0)).await.unwrap(), 3);
        assert_eq!(store.ingest("a1", batch(7, 2..=5, 2)).await.unwrap(), 5);
        assert_eq!(store.ingest("a1", batch(8, 1..=1, 0)).await.unwrap(), 1);
        // Another agent's boot numbers are its own.
        assert_eq!(store.ingest("a2", batch(7, 1..=2, 0)).await.unwrap(), 2);
        let all = store.list(&pb::ListDecisionsRequest::default()).unwrap();
        assert_eq!(all.received, 8);
        assert_eq!(all.decisions.len(), 8);
        assert_eq!(counts.lock().unwrap().total(), 8, "the metrics count each record once too");
        assert_eq!(all.dropped.get("a1"), Some(&2));
        let a1: Vec<u64> =
            all.decisions.iter().filter(|d| d.agent == "a1").map(|d| d.record.as_ref().unwrap().sequence).collect();
        assert_eq!(a1, [1, 2, 3, 4, 5, 1]);
        // Filters and paging.
        let only = store.list(&pb::ListDecisionsRequest { agent: "a2".into(), ..Default::default() }).unwrap();
        assert_eq!(only.decisions.len(), 2);
        let page = store.list(&pb::ListDecisionsRequest { limit: 3, ..Default::default() }).unwrap();
        assert_eq!(page.decisions.len(), 3);
        let rest = store.list(&pb::ListDecisionsRequest { after: page.next, ..Default::default() }).unwrap();
        assert_eq!(rest.decisions.len(), 5);
        assert_eq!(rest.decisions[0].cursor, page.next + 1);
    }

    #[tokio::test]
    async fn a_batch_with_a_record_that_does_not_decode_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Decisions::open(dir.path(), 100, Default::default()).unwrap();
        // A truncated record, and a record whose `server` is not UTF-8.
        let mut truncated = batch(7, 1..=3, 0);
        truncated.records[1] = truncated.records[1].slice(..3);
        let mut not_utf8 = batch(7, 1..=3, 0);
        not_utf8.records[2] = Bytes::from_static(&[0x08, 0x03, 0x1a, 0x02, 0xff, 0xfe]);
        for bad in [truncated, not_utf8] {
            let error = store.ingest("a1", bad).await.unwrap_err().to_string();
            assert!(error.contains("does not decode") && error.contains("a1"), "{error}");
        }
        let all = store.list(&pb::ListDecisionsRequest::default()).unwrap();
        assert_eq!((all.received, all.decisions.len()), (0, 0), "nothing of either batch was stored");
        // The agent's run is not advanced: the good batch is taken whole afterwards.
        assert_eq!(store.ingest("a1", batch(7, 1..=3, 0)).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn the_oldest_records_go_past_the_retention_bound_and_cursors_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Decisions::open(dir.path(), 4, Default::default()).unwrap();
            store.ingest("a1", batch(1, 1..=6, 0)).await.unwrap();
            let all = store.list(&pb::ListDecisionsRequest::default()).unwrap();
            let kept: Vec<u64> = all.decisions.iter().map(|d| d.record.as_ref().unwrap().sequence).collect();
            assert_eq!((kept, all.received), (vec![3, 4, 5, 6], 6));
        }
        let store = Decisions::open(dir.path(), 4, Default::default()).unwrap();
        assert_eq!(store.ingest("a1", batch(1, 5..=7, 0)).await.unwrap(), 7);
        assert_eq!(store.list(&pb::ListDecisionsRequest::default()).unwrap().received, 7);
    }
}
