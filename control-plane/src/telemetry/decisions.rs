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
//!
//! Each record has a cursor (its place in arrival order, from 1, without gaps), which readers
//! page by. The new records of a batch are stored together as one value under the cursor of the
//! first: one B-tree insert per batch rather than per record, which was most of what a record
//! cost the control plane. Retention moves the first cursor kept; a stored batch goes once all
//! of its records are older than that.

use std::path::Path;
use std::sync::Arc;

use prost::Message;
use prost::bytes::Bytes;
use proto::decision_record::DecisionRecordView;
use proto::v1 as pb;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use tokio::sync::{mpsc, oneshot};

/// Cursor of a batch's first record → the batch's new records, an encoded [`StoredBatch`].
const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");
/// Cursor → encoded `StoredDecision`: how records were stored before batches were stored whole;
/// moved into `BATCHES` when such a file is opened.
const LEGACY_RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// (agent, boot) → highest sequence stored.
const CURSORS: TableDefinition<(&str, u64), u64> = TableDefinition::new("cursors");
/// (agent, boot) → records that run reported dropping (cumulative).
const DROPS: TableDefinition<(&str, u64), u64> = TableDefinition::new("drops");
/// "received" → records stored since the file was created (so also the last cursor); "first" →
/// the oldest cursor kept; "exported" → the cursor of the last record the OTLP exporter
/// delivered.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// A caller's digest → the cursor around which a record last named it (8 bytes little-endian),
/// followed by its facts, an encoded `Caller`: what `explain` and `apply --test` replay with.
/// Records name callers by digest; agents send the facts with the first record of a run that
/// names them. Naming a caller moves its cursor (at most once per quarter of the retention
/// bound), so facts are forgotten only once no kept record can name them: the table holds at
/// most the callers of the records kept, each once.
const CALLERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("callers");

/// Callers are swept when this many records (or the retention bound, if smaller) have gone by
/// retention since the last sweep.
const CALLER_SWEEP_RECORDS: u64 = 65_536;

/// What policy read of a caller, from its stored facts.
pub fn caller_of(facts: &pb::Caller) -> warden_core::caller::Caller {
    warden_core::caller::Caller {
        issuer: facts.issuer.clone(),
        subject: facts.subject.clone(),
        scopes: facts.scopes.clone(),
        tenant: facts.tenant.clone(),
        email: facts.email.clone(),
        groups: facts.has_groups.then(|| facts.groups.clone()),
        granted_tools: facts.task.then(|| facts.granted_tools.clone()),
    }
}

/// The facts a record carries, when they are what its digest names (an agent cannot file
/// facts under another caller's digest).
fn checked_facts(view: &DecisionRecordView<'_>) -> Option<([u8; 16], Bytes)> {
    let bytes = view.caller_facts?;
    let digest: [u8; 16] = view.caller.try_into().ok()?;
    let facts = pb::Caller::decode(bytes).ok()?;
    (caller_of(&facts).digest() == digest).then(|| (digest, Bytes::copy_from_slice(bytes)))
}

/// Runs of one agent whose de-duplication state is kept. An agent has a new run at every start,
/// and only the last few can still have records in flight; without a bound, an agent sending
/// a new `boot` per batch would grow these tables for good.
const BOOTS_PER_AGENT: usize = 64;

/// Makes room for one more run of `agent`: past [`BOOTS_PER_AGENT`], the run with the lowest
/// id is forgotten (a resend of its records, should one ever come, would be stored again).
fn forget_old_boots(
    cursors: &mut redb::Table<(&str, u64), u64>,
    drops: &mut redb::Table<(&str, u64), u64>,
    agent: &str,
) -> Result<(), DecisionError> {
    let runs = cursors.range((agent, 0)..=(agent, u64::MAX)).map_err(db_err)?;
    let mut boots = Vec::new();
    for run in runs {
        boots.push(run.map_err(db_err)?.0.value().1);
    }
    for boot in boots.iter().take((boots.len() + 1).saturating_sub(BOOTS_PER_AGENT)) {
        cursors.remove((agent, *boot)).map_err(db_err)?;
        drops.remove((agent, *boot)).map_err(db_err)?;
    }
    Ok(())
}

/// Records per stored batch at most when a file of single records is migrated (what an agent
/// sends per batch by default).
const MIGRATED_BATCH: usize = 4_000;

/// The new records of one agent's batch as stored: each record as the agent encoded it.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredBatch {
    #[prost(string, tag = "1")]
    agent: String,
    #[prost(fixed64, tag = "2")]
    boot: u64,
    /// Encoded `DecisionRecord`s; the first has the batch's key as its cursor, the next one more.
    #[prost(bytes = "bytes", repeated, tag = "3")]
    records: Vec<Bytes>,
}

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
    /// Each caller the records name, once, with the facts one of them carried (checked).
    callers: Vec<([u8; 16], Option<Bytes>)>,
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
    counts: crate::telemetry::metrics::Counts,
}

/// The decision store's page cache.
const DECISIONS_CACHE_BYTES: usize = 32 * 1024 * 1024;

impl Decisions {
    /// Opens `decisions.redb` in `data_dir`, keeping at most `retention` records, and starts
    /// the writer; what is stored is counted into `counts`.
    pub fn open(
        data_dir: &Path,
        retention: u64,
        counts: crate::telemetry::metrics::Counts,
    ) -> Result<Decisions, DecisionError> {
        // Records are written once and read in order by exporters and `wardenctl`: redb's
        // default page cache (up to 1 GiB) would keep what was written resident for nothing.
        let db = Database::builder()
            .set_cache_size(DECISIONS_CACHE_BYTES)
            .create(data_dir.join("decisions.redb"))
            .map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(BATCHES).map_err(db_err)?;
        txn.open_table(CURSORS).map_err(db_err)?;
        txn.open_table(DROPS).map_err(db_err)?;
        txn.open_table(COUNTERS).map_err(db_err)?;
        txn.open_table(CALLERS).map_err(db_err)?;
        migrate_single_records(&txn)?;
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
        let mut named: std::collections::HashMap<[u8; 16], Option<Bytes>> = std::collections::HashMap::new();
        for view in &views {
            let Ok(digest) = <[u8; 16]>::try_from(view.caller) else { continue };
            let entry = named.entry(digest).or_default();
            if entry.is_none() {
                *entry = checked_facts(view).map(|(_, facts)| facts);
            }
        }
        let callers = named.into_iter().collect();
        let (done, answer) = oneshot::channel();
        let request =
            Ingest { agent: agent.to_string(), boot: batch.boot, records, callers, dropped: batch.dropped, done };
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
        if max == 0 {
            return Ok((counter(&txn.open_table(COUNTERS).map_err(db_err)?, "exported")?, Vec::new()));
        }
        let counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let exported = counter(&counters, "exported")?;
        let first = counter(&counters, "first")?.max(1);
        if exported > 0 && first > exported + 1 {
            tracing::warn!(
                lost = first - exported - 1,
                "decision records were deleted by retention before they could be exported"
            );
        }
        let mut out = Vec::new();
        let mut last = exported;
        visit_from(&txn, exported + 1, |stored| {
            last = stored.cursor;
            out.push(stored);
            out.len() < max
        })?;
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
        let limit = match filter.limit {
            0 => LIST_LIMIT,
            n => n.min(LIST_LIMIT),
        } as usize;
        let mut out = pb::ListDecisionsResponse { next: filter.after, ..Default::default() };
        let mut scanned = 0;
        visit_from(&txn, filter.after.saturating_add(1), |stored| {
            scanned += 1;
            out.next = stored.cursor;
            if matches(filter, &stored) {
                out.decisions.push(stored);
            }
            scanned < SCAN_LIMIT && out.decisions.len() < limit
        })?;
        for entry in txn.open_table(DROPS).map_err(db_err)?.iter().map_err(db_err)? {
            let (key, dropped) = entry.map_err(db_err)?;
            *out.dropped.entry(key.value().0.to_string()).or_default() += dropped.value();
        }
        out.received = counter(&txn.open_table(COUNTERS).map_err(db_err)?, "received")?;
        Ok(out)
    }
}

impl Decisions {
    /// The cursor of the newest record stored (0: none yet) (blocking).
    pub fn last_cursor(&self) -> Result<u64, DecisionError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        counter(&txn.open_table(COUNTERS).map_err(db_err)?, "received")
    }

    /// The facts of the caller `digest` names, when they are kept (blocking).
    pub fn caller(&self, digest: &[u8]) -> Result<Option<pb::Caller>, DecisionError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(CALLERS).map_err(db_err)?;
        let Some(row) = table.get(digest).map_err(db_err)? else { return Ok(None) };
        let row = row.value();
        Ok(row.get(8..).and_then(|facts| pb::Caller::decode(facts).ok()))
    }

    /// The record at `cursor`, or with the id `agent/boot/sequence` (searched among the newest
    /// [`SCAN_LIMIT`] records) (blocking).
    pub fn find(&self, record: &str) -> Result<Option<pb::StoredDecision>, DecisionError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        if let Ok(cursor) = record.parse::<u64>() {
            let mut found = None;
            visit_from(&txn, cursor, |stored| {
                found = (stored.cursor == cursor).then_some(stored);
                false
            })?;
            return Ok(found);
        }
        let Some((agent, rest)) = record.rsplit_once('/').and_then(|(head, seq)| {
            let (agent, boot) = head.rsplit_once('/')?;
            Some((agent, (u64::from_str_radix(boot, 16).ok()?, seq.parse::<u64>().ok()?)))
        }) else {
            return Err(DecisionError(format!("{record:?} is neither a cursor nor a record id (agent/boot/sequence)")));
        };
        let received = counter(&txn.open_table(COUNTERS).map_err(db_err)?, "received")?;
        let mut found = None;
        visit_from(&txn, received.saturating_sub(SCAN_LIMIT as u64) + 1, |stored| {
            let hit = stored.agent == agent && (stored.boot, stored.record.as_ref().map_or(0, |r| r.sequence)) == rest;
            if hit {
                found = Some(stored);
            }
            !hit
        })?;
        Ok(found)
    }

    /// Calls `visit` with each record made at or after `since_unix_nanos` among the newest `max`
    /// kept, oldest first; whether older records of the window were left out (blocking).
    pub fn visit_since(
        &self,
        since_unix_nanos: i64,
        max: usize,
        mut visit: impl FnMut(&pb::StoredDecision),
    ) -> Result<bool, DecisionError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let (received, first) = (counter(&counters, "received")?, counter(&counters, "first")?.max(1));
        // The newest `max` records at most: the window ends now.
        let start = first.max(received.saturating_sub(max as u64) + 1);
        let mut cut = false;
        let mut seen_first = false;
        visit_from(&txn, start, |stored| {
            let time = stored.record.as_ref().map_or(i64::MIN, |r| r.time_unix_nanos);
            if !seen_first {
                seen_first = true;
                // Records older than the first read were left out: did the window reach them?
                cut = start > first && time >= since_unix_nanos;
            }
            if time >= since_unix_nanos {
                visit(&stored);
            }
            true
        })?;
        Ok(cut)
    }

    /// A consistent view of the records kept, for reads that take several steps (blocking:
    /// call from `spawn_blocking`).
    pub fn snapshot(&self) -> Result<Snapshot, DecisionError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let (received, first) = (counter(&counters, "received")?, counter(&counters, "first")?.max(1));
        drop(counters);
        Ok(Snapshot { txn, first, last: received })
    }
}

/// The records kept at one moment: cursors `first..=last` (none when `last` is 0); records
/// arriving or deleted meanwhile are not seen.
pub struct Snapshot {
    txn: redb::ReadTransaction,
    /// The oldest record's cursor.
    pub first: u64,
    /// The newest record's cursor (0: none).
    pub last: u64,
}

impl Snapshot {
    /// Calls `visit` with each record of cursor `from..=through`, oldest first (blocking).
    pub fn visit(
        &self,
        from: u64,
        through: u64,
        mut visit: impl FnMut(&pb::DecisionRecord),
    ) -> Result<(), DecisionError> {
        if from > through {
            return Ok(());
        }
        visit_from(&self.txn, from, |stored| {
            if stored.cursor > through {
                return false;
            }
            if let Some(record) = &stored.record {
                visit(record);
            }
            stored.cursor < through
        })
    }
}

fn counter(counters: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, DecisionError> {
    Ok(counters.get(name).map_err(db_err)?.map_or(0, |v| v.value()))
}

/// Calls `visit` with each record kept from cursor `start` on, oldest first, until it returns
/// false.
fn visit_from(
    txn: &redb::ReadTransaction,
    start: u64,
    mut visit: impl FnMut(pb::StoredDecision) -> bool,
) -> Result<(), DecisionError> {
    let start = start.max(counter(&txn.open_table(COUNTERS).map_err(db_err)?, "first")?);
    let batches = txn.open_table(BATCHES).map_err(db_err)?;
    // The batch holding `start` begins at or before it.
    let from = match batches.range(..=start).map_err(db_err)?.next_back() {
        Some(entry) => entry.map_err(db_err)?.0.value(),
        None => start,
    };
    for entry in batches.range(from..).map_err(db_err)? {
        let (key, value) = entry.map_err(db_err)?;
        let key = key.value();
        // Copied once so the records are slices of it rather than one allocation each.
        let batch = StoredBatch::decode(Bytes::copy_from_slice(value.value()))
            .map_err(|e| DecisionError(format!("the batch stored at {key} does not decode: {e}")))?;
        for (cursor, encoded) in (key..).zip(&batch.records) {
            if cursor < start {
                continue;
            }
            let record = pb::DecisionRecord::decode(encoded.as_ref())
                .map_err(|e| DecisionError(format!("record {cursor} does not decode: {e}")))?;
            let stored =
                pb::StoredDecision { cursor, agent: batch.agent.clone(), record: Some(record), boot: batch.boot };
            if !visit(stored) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The cursor a caller row says it was last named around.
fn last_named(row: &[u8]) -> u64 {
    row.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)
}

/// Moves the records of a file written when each was stored alone (one row per record) into
/// stored batches, keeping their cursors; nothing to do for any other file.
///
/// If the file also holds stored batches (an older version wrote to it after this one: a
/// rollback), that version numbered its records from 1 again: they are renumbered to follow
/// the stored batches rather than overwrite them.
fn migrate_single_records(txn: &redb::WriteTransaction) -> Result<(), DecisionError> {
    if !txn.list_tables().map_err(db_err)?.any(|t| t.name() == LEGACY_RECORDS.name()) {
        return Ok(());
    }
    let mut batches = txn.open_table(BATCHES).map_err(db_err)?;
    let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
    let renumber_from = match batches.last().map_err(db_err)? {
        Some((key, value)) => {
            let stored = StoredBatch::decode(value.value())
                .map_err(|e| DecisionError(format!("the batch stored at {} does not decode: {e}", key.value())))?;
            Some(key.value() + stored.records.len() as u64)
        }
        None => None,
    };
    let (mut moved, mut first, mut last) = (0u64, None, 0);
    {
        let legacy = txn.open_table(LEGACY_RECORDS).map_err(db_err)?;
        tracing::info!(
            records = legacy.len().map_err(db_err)?,
            "converting decision records stored one by one into stored batches"
        );
        // The batch being put together: its first cursor and its records.
        let mut pending: Option<(u64, StoredBatch)> = None;
        for entry in legacy.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let single = pb::StoredDecision::decode(value.value())
                .map_err(|e| DecisionError(format!("migrating record {}: it does not decode: {e}", key.value())))?;
            let cursor = renumber_from.map_or(key.value(), |from| from + moved);
            let record = single.record.unwrap_or_default().encode_to_vec().into();
            first.get_or_insert(cursor);
            let joins = pending.as_ref().is_some_and(|(at, batch)| {
                batch.agent == single.agent
                    && batch.boot == single.boot
                    && batch.records.len() < MIGRATED_BATCH
                    && at + batch.records.len() as u64 == cursor
            });
            if !joins {
                if let Some((at, batch)) = pending.take() {
                    batches.insert(at, batch.encode_to_vec().as_slice()).map_err(db_err)?;
                }
                pending = Some((cursor, StoredBatch { agent: single.agent, boot: single.boot, records: Vec::new() }));
            }
            if let Some((_, batch)) = pending.as_mut() {
                batch.records.push(record);
            }
            (moved, last) = (moved + 1, cursor);
        }
        if let Some((at, batch)) = pending {
            batches.insert(at, batch.encode_to_vec().as_slice()).map_err(db_err)?;
        }
    }
    if let Some(first) = first {
        if renumber_from.is_none() {
            counters.insert("first", first).map_err(db_err)?;
        }
        let received = counter(&counters, "received")?.max(last);
        counters.insert("received", received).map_err(db_err)?;
    }
    drop((batches, counters));
    txn.delete_table(LEGACY_RECORDS).map_err(db_err)?;
    tracing::info!(records = moved, "decision records converted");
    Ok(())
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
        && (!filter.shadow_diff || !r.shadow.is_empty())
}

/// The writer: takes every batch waiting, stores them in one transaction, answers each.
fn write_forever(
    db: &Database,
    mut queue: mpsc::Receiver<Ingest>,
    retention: u64,
    stored: &tokio::sync::Notify,
    counts: &crate::telemetry::metrics::Counts,
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
        let mut batches = txn.open_table(BATCHES).map_err(db_err)?;
        let mut cursors = txn.open_table(CURSORS).map_err(db_err)?;
        let mut drops = txn.open_table(DROPS).map_err(db_err)?;
        let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let mut callers = txn.open_table(CALLERS).map_err(db_err)?;
        let mut received = counter(&counters, "received")?;
        let mut value = Vec::new();
        // Facts received are stored; a caller named again moves its cursor once it is a
        // quarter of the retention bound behind.
        let stale = received.saturating_sub(retention / 4);
        let mut row = Vec::new();
        for ingest in group {
            for (digest, facts) in &ingest.callers {
                let facts = match facts {
                    Some(facts) => facts.clone(),
                    None => match callers.get(&digest[..]).map_err(db_err)? {
                        Some(stored) if last_named(stored.value()) < stale => {
                            Bytes::copy_from_slice(stored.value().get(8..).unwrap_or_default())
                        }
                        _ => continue,
                    },
                };
                row.clear();
                row.extend_from_slice(&received.to_le_bytes());
                row.extend_from_slice(&facts);
                callers.insert(&digest[..], row.as_slice()).map_err(db_err)?;
            }
        }
        for Ingest { agent, boot, records: batch, dropped, .. } in group {
            let key = (agent.as_str(), *boot);
            let known_boot = cursors.get(key).map_err(db_err)?.map(|v| v.value());
            if known_boot.is_none() {
                forget_old_boots(&mut cursors, &mut drops, agent)?;
            }
            let cursor = known_boot.unwrap_or(0);
            // Records already stored (a resend) are skipped, so each is kept once.
            let mut stored_to = cursor;
            let new: Vec<Bytes> = batch
                .iter()
                .filter(|(sequence, _)| {
                    *sequence > stored_to && {
                        stored_to = *sequence;
                        true
                    }
                })
                .map(|(_, encoded)| encoded.clone())
                .collect();
            if !new.is_empty() {
                let count = new.len() as u64;
                value.clear();
                StoredBatch { agent: agent.clone(), boot: *boot, records: new }
                    .encode(&mut value)
                    .map_err(|e| DecisionError(format!("encoding a batch: {e}")))?;
                batches.insert(received + 1, value.as_slice()).map_err(db_err)?;
                received += count;
            }
            cursors.insert(key, stored_to).map_err(db_err)?;
            let known = drops.get(key).map_err(db_err)?.map_or(0, |v| v.value());
            if *dropped > known {
                tracing::warn!(%agent, dropped, "an agent reports dropped decision records");
                drops.insert(key, *dropped).map_err(db_err)?;
                moved_drops.push((agent.clone(), known, *dropped));
            }
            acks.push((stored_to, cursor + 1));
        }
        counters.insert("received", received).map_err(db_err)?;
        // Retention: the oldest go first; a stored batch once none of its records is kept.
        let before = counter(&counters, "first")?.max(1);
        let first = before.max(received.saturating_sub(retention) + 1);
        counters.insert("first", first).map_err(db_err)?;
        let sweep_every = CALLER_SWEEP_RECORDS.min(retention);
        if first / sweep_every != before / sweep_every {
            // A kept record (cursor ≥ first) named its caller at most a quarter of the bound
            // (and one group) before the cursor it has: half the bound back is safe.
            let cut = first.saturating_sub(retention / 2 + 1);
            callers.retain(|_, row| last_named(row) >= cut).map_err(db_err)?;
        }
        loop {
            let mut older = batches.range(..=first).map_err(db_err)?;
            // The second batch at or before `first` begins after every record of the first.
            if older.next().is_none() || older.next().is_none() {
                break;
            }
            drop(older);
            batches.pop_first().map_err(db_err)?;
        }
    }
    txn.commit().map_err(db_err)?;
    Ok((acks, moved_drops))
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

    /// A record of `subject` at `time_unix_nanos` naming its caller, with the facts when `facts`
    /// (and with the digest of another caller when `forged`).
    fn naming(sequence: u64, subject: &str, time_unix_nanos: i64, facts: bool, forged: bool) -> Bytes {
        let caller = pb::Caller {
            issuer: "corp".into(),
            subject: subject.into(),
            scopes: vec!["a".into()],
            ..Default::default()
        };
        let named =
            if forged { pb::Caller { subject: "someone-else".into(), ..caller.clone() } } else { caller.clone() };
        pb::DecisionRecord {
            sequence,
            time_unix_nanos,
            server: "github".into(),
            caller: caller_of(&named).digest().to_vec(),
            caller_facts: facts.then_some(caller),
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    }

    #[tokio::test]
    async fn caller_facts_are_kept_by_their_digest_forged_ones_never_and_forgotten_past_retention() {
        // (Retention of 10 records: callers are swept every 10, facts kept half of that past.)
        let dir = tempfile::tempdir().unwrap();
        let store = Decisions::open(dir.path(), 10, crate::telemetry::metrics::Counts::default()).unwrap();
        let now = crate::now_unix_ms() * 1_000_000;
        let records = vec![
            naming(1, "alice", now, true, false),
            naming(2, "bob", now, true, true),
            naming(3, "alice", now, false, false),
        ];
        store.ingest("agent-a", pb::DecisionBatch { boot: 1, records, dropped: 0 }).await.unwrap();
        let digest = |subject: &str| {
            caller_of(&pb::Caller {
                issuer: "corp".into(),
                subject: subject.into(),
                scopes: vec!["a".into()],
                ..Default::default()
            })
            .digest()
        };
        let alice = store.caller(&digest("alice")).unwrap().expect("alice's facts are kept");
        assert_eq!((alice.subject.as_str(), alice.scopes.as_slice()), ("alice", &["a".to_string()][..]));
        assert!(store.caller(&digest("bob")).unwrap().is_none(), "facts filed under another caller's digest");
        assert!(store.caller(&digest("someone-else")).unwrap().is_none());
        // Records keep naming dave (facts sent once, long ago in records) and stop naming
        // alice: once no kept record names alice, her facts go; dave's stay.
        store
            .ingest(
                "agent-a",
                pb::DecisionBatch { boot: 1, records: vec![naming(4, "dave", now, true, false)], dropped: 0 },
            )
            .await
            .unwrap();
        for batch in 0..8u64 {
            let records = (0..5).map(|i| naming(5 + batch * 5 + i, "dave", now, false, false)).collect();
            store.ingest("agent-a", pb::DecisionBatch { boot: 1, records, dropped: 0 }).await.unwrap();
        }
        assert!(store.caller(&digest("alice")).unwrap().is_none(), "swept once no kept record names alice");
        assert!(store.caller(&digest("dave")).unwrap().is_some(), "kept while kept records name dave");
    }

    #[tokio::test]
    async fn an_agent_inventing_runs_cannot_grow_the_de_duplication_tables() {
        let dir = tempfile::tempdir().unwrap();
        let store = Decisions::open(dir.path(), 100_000, crate::telemetry::metrics::Counts::default()).unwrap();
        for boot in 0..200 {
            store.ingest("a1", batch(boot, 1..=1, 1)).await.unwrap();
        }
        store.ingest("a2", batch(5, 1..=1, 0)).await.unwrap();
        let txn = store.db.begin_read().unwrap();
        let cursors = txn.open_table(CURSORS).unwrap();
        let runs = |agent| cursors.range((agent, 0)..=(agent, u64::MAX)).unwrap().count();
        assert_eq!((runs("a1"), runs("a2")), (BOOTS_PER_AGENT, 1));
        // The newest runs are the ones kept: a resend of the last is still recognised.
        drop((cursors, txn));
        assert_eq!(store.ingest("a1", batch(199, 1..=1, 1)).await.unwrap(), 1);
        let all = store.list(&pb::ListDecisionsRequest { agent: "a1".into(), ..Default::default() }).unwrap();
        assert_eq!(all.received, 201, "the resend was not stored twice");
    }

    #[tokio::test]
    async fn each_record_is_kept_once_whatever_is_resent() {
        let dir = tempfile::tempdir().unwrap();
        let counts = crate::telemetry::metrics::Counts::default();
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
        // A page may end inside a stored batch: the next starts at the following record.
        let mid = store.list(&pb::ListDecisionsRequest { after: 1, limit: 3, ..Default::default() }).unwrap();
        let cursors: Vec<u64> = mid.decisions.iter().map(|d| d.cursor).collect();
        assert_eq!((cursors, mid.next), (vec![2, 3, 4], 4));
        let (last, unexported) = store.unexported(4).unwrap();
        assert_eq!((last, unexported.len()), (4, 4));
        assert_eq!(unexported.iter().map(|d| d.cursor).collect::<Vec<_>>(), [1, 2, 3, 4]);
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
        let all = store.list(&pb::ListDecisionsRequest::default()).unwrap();
        let kept: Vec<u64> = all.decisions.iter().map(|d| d.cursor).collect();
        assert_eq!((kept, all.received), (vec![4, 5, 6, 7], 7));
        // A stored batch goes once none of its records is kept.
        let stored = || store.db.begin_read().unwrap().open_table(BATCHES).unwrap().len().unwrap();
        assert_eq!(stored(), 2, "records 1-6 (4-6 kept) and 7");
        store.ingest("a1", batch(1, 8..=10, 0)).await.unwrap();
        assert_eq!(stored(), 2, "records 7 and 8-10; the batch of 1-6 is gone");
        let kept: Vec<u64> = store.list(&Default::default()).unwrap().decisions.iter().map(|d| d.cursor).collect();
        assert_eq!(kept, [7, 8, 9, 10]);
        let (_, unexported) = store.unexported(10).unwrap();
        assert_eq!(unexported.iter().map(|d| d.cursor).collect::<Vec<_>>(), [7, 8, 9, 10]);
    }

    #[tokio::test]
    async fn a_file_of_single_records_is_migrated_keeping_cursors_and_export_position() {
        let dir = tempfile::tempdir().unwrap();
        // Written as before batches were stored whole: one row per record, oldest two deleted.
        {
            let db = Database::create(dir.path().join("decisions.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut rows = txn.open_table(LEGACY_RECORDS).unwrap();
                let runs = [(3, "a1", 7), (4, "a1", 7), (5, "a2", 1), (6, "a1", 7), (7, "a1", 7)];
                for (cursor, agent, boot) in runs {
                    let record = pb::DecisionRecord { sequence: cursor, server: "files".into(), ..Default::default() };
                    let stored = pb::StoredDecision { cursor, agent: agent.into(), record: Some(record), boot };
                    rows.insert(cursor, stored.encode_to_vec().as_slice()).unwrap();
                }
                let mut counters = txn.open_table(COUNTERS).unwrap();
                counters.insert("received", 7).unwrap();
                counters.insert("exported", 4).unwrap();
                txn.open_table(CURSORS).unwrap().insert(("a1", 7), 7).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Decisions::open(dir.path(), 100, Default::default()).unwrap();
        let all = store.list(&Default::default()).unwrap();
        let kept: Vec<(u64, &str, u64)> =
            all.decisions.iter().map(|d| (d.cursor, d.agent.as_str(), d.record.as_ref().unwrap().sequence)).collect();
        assert_eq!(kept, [(3, "a1", 3), (4, "a1", 4), (5, "a2", 5), (6, "a1", 6), (7, "a1", 7)]);
        assert_eq!(all.received, 7);
        let (last, unexported) = store.unexported(10).unwrap();
        assert_eq!((last, unexported.len()), (7, 3), "the exporter goes on after record 4");
        // New records follow the migrated ones; the runs' cursors still drop resends.
        assert_eq!(store.ingest("a1", batch(7, 6..=8, 0)).await.unwrap(), 8);
        let after = store.list(&pb::ListDecisionsRequest { after: 7, ..Default::default() }).unwrap();
        assert_eq!(after.decisions.iter().map(|d| d.cursor).collect::<Vec<_>>(), [8]);
        let txn = store.db.begin_write().unwrap();
        assert!(!txn.list_tables().unwrap().any(|t| t.name() == LEGACY_RECORDS.name()), "the old table is gone");
    }

    #[tokio::test]
    async fn single_records_written_after_stored_batches_follow_them() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Decisions::open(dir.path(), 100, Default::default()).unwrap();
            store.ingest("a1", batch(7, 1..=3, 0)).await.unwrap();
        }
        // Rolled back: the older version numbers its own table from 1 again.
        {
            let db = Database::create(dir.path().join("decisions.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut rows = txn.open_table(LEGACY_RECORDS).unwrap();
                for (cursor, sequence) in [(1, 4), (2, 5)] {
                    let record = pb::DecisionRecord { sequence, server: "files".into(), ..Default::default() };
                    let stored = pb::StoredDecision { cursor, agent: "a1".into(), record: Some(record), boot: 7 };
                    rows.insert(cursor, stored.encode_to_vec().as_slice()).unwrap();
                }
                txn.open_table(COUNTERS).unwrap().insert("received", 5).unwrap();
                txn.open_table(CURSORS).unwrap().insert(("a1", 7), 5).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Decisions::open(dir.path(), 100, Default::default()).unwrap();
        let all = store.list(&Default::default()).unwrap();
        let kept: Vec<(u64, u64)> =
            all.decisions.iter().map(|d| (d.cursor, d.record.as_ref().unwrap().sequence)).collect();
        assert_eq!(kept, [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)], "nothing overwritten, nothing lost");
        assert_eq!(all.received, 5);
        assert_eq!(store.ingest("a1", batch(7, 5..=6, 0)).await.unwrap(), 6);
        assert_eq!(store.list(&Default::default()).unwrap().decisions.last().map(|d| d.cursor), Some(6));
        assert!(store.unexported(0).unwrap().1.is_empty());
    }
}
