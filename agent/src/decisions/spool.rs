//! The on-disk part of the decision outbox: records the control plane has not acknowledged,
//! kept in order across disconnections and restarts, bounded in count. Blocking I/O: called
//! from `spawn_blocking`.

use std::path::Path;

use bytes::Bytes;
use prost::Message;
use proto::v1 as pb;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// Insertion index → 8 bytes of the record's boot (little endian) and the encoded record.
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// Boot → records that run of the agent dropped (cumulative), until the control plane has it.
const DROPS: TableDefinition<u64, u64> = TableDefinition::new("drops");

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The database could not be opened, read or written.
    #[error("decision spool: {0}")]
    Db(String),
    /// A stored record does not decode.
    #[error("decision spool: stored record {0} is corrupt")]
    Corrupt(u64),
}

fn db_err(e: impl Into<redb::Error>) -> SpoolError {
    SpoolError::Db(e.into().to_string())
}

/// Records of one run of the agent, oldest first (each an encoded `DecisionRecord`), with that
/// run's drop count.
#[derive(Debug, Default)]
pub struct Front {
    pub boot: u64,
    pub records: Vec<Bytes>,
    /// The sequence of the last record (0 when there is none).
    pub last: u64,
    pub dropped: u64,
}

/// A FIFO of `(boot, record)` in a redb file.
pub struct Spool {
    db: Database,
    next: u64,
    len: u64,
    capacity: u64,
    /// Entries of the drop table.
    pending_drops: u64,
}

/// The spool's page cache.
const SPOOL_CACHE_BYTES: usize = 2 * 1024 * 1024;

impl Spool {
    /// Opens (or creates) the spool at `path`, holding at most `capacity` records.
    pub fn open(path: &Path, capacity: u64) -> Result<Spool, SpoolError> {
        // A queue on disk, read once front to back: redb's page cache (1 GiB by default) would
        // only keep spilled records in memory, which is what spilling is meant to avoid.
        let db = Database::builder().set_cache_size(SPOOL_CACHE_BYTES).create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        let (next, len, pending_drops) = {
            let records = txn.open_table(RECORDS).map_err(db_err)?;
            let drops = txn.open_table(DROPS).map_err(db_err)?;
            let next = records.last().map_err(db_err)?.map_or(0, |(k, _)| k.value() + 1);
            (next, records.len().map_err(db_err)?, drops.len().map_err(db_err)?)
        };
        txn.commit().map_err(db_err)?;
        Ok(Spool { db, next, len, capacity, pending_drops })
    }

    /// Records held.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no records.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Runs whose drop count the control plane has not acknowledged.
    pub fn pending_drops(&self) -> u64 {
        self.pending_drops
    }

    /// Records it can still take.
    pub fn room(&self) -> u64 {
        self.capacity.saturating_sub(self.len)
    }

    /// Appends `records` of `boot` (each an encoded `DecisionRecord`; the caller keeps within
    /// [`Spool::room`]) and records that run's drop count, in one transaction.
    pub fn append(&mut self, boot: u64, records: &[Bytes], dropped: u64) -> Result<(), SpoolError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(RECORDS).map_err(db_err)?;
            let mut value = Vec::new();
            for (i, record) in records.iter().enumerate() {
                value.clear();
                value.extend_from_slice(&boot.to_le_bytes());
                value.extend_from_slice(record);
                table.insert(self.next + i as u64, value.as_slice()).map_err(db_err)?;
            }
            if dropped > 0 {
                let mut drops = txn.open_table(DROPS).map_err(db_err)?;
                drops.insert(boot, dropped).map_err(db_err)?;
                self.pending_drops = drops.len().map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        self.next += records.len() as u64;
        self.len += records.len() as u64;
        Ok(())
    }

    /// Up to `max` of the oldest records, all of one boot; or, when no record is left, a boot
    /// whose drop count the control plane has not acknowledged (with no records).
    pub fn front(&self, max: usize, max_bytes: usize) -> Result<Option<Front>, SpoolError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(RECORDS).map_err(db_err)?;
        let drops = txn.open_table(DROPS).map_err(db_err)?;
        let mut front: Option<Front> = None;
        let mut taken_bytes = 0;
        for entry in table.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let (key, value) = (key.value(), value.value());
            let (boot, bytes) = value.split_at_checked(8).ok_or(SpoolError::Corrupt(key))?;
            let boot = u64::from_le_bytes(boot.try_into().expect("eight bytes"));
            // Decoded to be sure it is whole: the control plane refuses a batch with a broken record.
            let record = pb::DecisionRecord::decode(bytes).map_err(|_| SpoolError::Corrupt(key))?;
            let f = front.get_or_insert_with(|| Front { boot, ..Front::default() });
            let over = !f.records.is_empty() && taken_bytes + bytes.len() > max_bytes;
            if f.boot != boot || f.records.len() >= max || over {
                break;
            }
            taken_bytes += bytes.len();
            f.records.push(Bytes::copy_from_slice(bytes));
            f.last = record.sequence;
        }
        if front.is_none() {
            let first = drops.first().map_err(db_err)?;
            front = first.map(|(boot, _)| Front { boot: boot.value(), ..Front::default() });
        }
        if let Some(f) = front.as_mut() {
            f.dropped = drops.get(f.boot).map_err(db_err)?.map_or(0, |v| v.value());
        }
        Ok(front)
    }

    /// The control plane stored everything of `boot` up to `sequence`, and `dropped` of that
    /// run's drop count: forgets them.
    pub fn acknowledge(&mut self, boot: u64, sequence: u64, dropped: u64) -> Result<(), SpoolError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut removed = 0;
        {
            let mut table = txn.open_table(RECORDS).map_err(db_err)?;
            loop {
                let (key, record_boot, sequence_of) = {
                    let Some((key, value)) = table.first().map_err(db_err)? else { break };
                    let value = value.value();
                    let boot = value.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("eight bytes")));
                    let sequence = value.get(8..).and_then(|b| pb::DecisionRecord::decode(b).ok()).map(|r| r.sequence);
                    (key.value(), boot, sequence)
                };
                match (record_boot, sequence_of) {
                    (Some(b), Some(s)) if b == boot && s <= sequence => {}
                    (Some(_), Some(_)) => break,
                    // A corrupt record can never be sent: let it go rather than block the rest.
                    _ => tracing::error!(index = key, "dropping a corrupt spooled decision record"),
                }
                table.remove(key).map_err(db_err)?;
                removed += 1;
            }
            let mut drops = txn.open_table(DROPS).map_err(db_err)?;
            let known = drops.get(boot).map_err(db_err)?.map(|v| v.value());
            if known.is_some_and(|d| d <= dropped) {
                drops.remove(boot).map_err(db_err)?;
            }
            self.pending_drops = drops.len().map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        self.len -= removed;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(from: u64, to: u64) -> Vec<Bytes> {
        (from..=to)
            .map(|sequence| pb::DecisionRecord { sequence, ..Default::default() }.encode_to_vec().into())
            .collect()
    }

    fn sequences(front: &Front) -> Vec<u64> {
        let sequences: Vec<u64> =
            front.records.iter().map(|r| pb::DecisionRecord::decode(r.clone()).unwrap().sequence).collect();
        assert_eq!(sequences.last().copied().unwrap_or(0), front.last);
        sequences
    }

    #[test]
    fn records_come_back_in_order_one_run_at_a_time_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.redb");
        {
            let mut spool = Spool::open(&path, 10).unwrap();
            spool.append(7, &records(1, 3), 0).unwrap();
            spool.append(9, &records(1, 2), 4).unwrap();
            assert_eq!((spool.len(), spool.room()), (5, 5));
        }
        let mut spool = Spool::open(&path, 10).unwrap();
        assert_eq!(spool.len(), 5);
        let front = spool.front(100, usize::MAX).unwrap().unwrap();
        assert_eq!((front.boot, sequences(&front), front.dropped), (7, vec![1, 2, 3], 0));
        assert_eq!(sequences(&spool.front(2, usize::MAX).unwrap().unwrap()), [1, 2]);
        // Bounded in bytes too, but never empty: a record larger than the bound goes alone.
        let one = front.records[0].len();
        assert_eq!(sequences(&spool.front(100, 2 * one + 1).unwrap().unwrap()), [1, 2]);
        assert_eq!(sequences(&spool.front(100, 1).unwrap().unwrap()), [1]);
        spool.acknowledge(7, 2, 0).unwrap();
        assert_eq!(sequences(&spool.front(100, usize::MAX).unwrap().unwrap()), [3]);
        spool.acknowledge(7, 3, 0).unwrap();
        let front = spool.front(100, usize::MAX).unwrap().unwrap();
        assert_eq!((front.boot, sequences(&front), front.dropped), (9, vec![1, 2], 4));
        // An acknowledgement of another run removes nothing.
        spool.acknowledge(7, 99, 0).unwrap();
        assert_eq!(spool.len(), 2);
        spool.acknowledge(9, 2, 3).unwrap();
        // The records went; the drop count stays until acknowledged whole.
        let front = spool.front(100, usize::MAX).unwrap().unwrap();
        assert_eq!((front.boot, front.records.len(), front.dropped), (9, 0, 4));
        spool.acknowledge(9, 2, 4).unwrap();
        assert!(spool.front(100, usize::MAX).unwrap().is_none());
        // New records continue after the old ones.
        spool.append(11, &records(1, 1), 0).unwrap();
        assert_eq!(spool.front(100, usize::MAX).unwrap().unwrap().boot, 11);
    }
}
