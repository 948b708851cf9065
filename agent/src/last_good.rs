//! The last good configuration on disk, kept after every applied version (before it is
//! acknowledged) and loaded at start, so the agent enforces its last configuration before (or
//! without) reaching the control plane.
//!
//! A version that changes revocations alone (many a second, on a list that may hold a million
//! tokens) is appended to a journal next to the snapshot instead of writing the snapshot again:
//! a few bytes per revocation. The snapshot is written whole, and the journal emptied, when
//! anything else changes or the journal outgrows [`JOURNAL_MAX_BYTES`].

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use proto::v1 as pb;

use crate::applied::{self, Applied, Source};

/// The journal is folded into a new snapshot past this size.
pub const JOURNAL_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// Why the stored configuration could not be loaded (the agent then denies everything until the
/// control plane answers).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// Which file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The snapshot does not decode.
    #[error("{}: {source}", path.display())]
    Decode {
        /// Which file.
        path: PathBuf,
        /// The cause.
        source: prost::DecodeError,
    },
    /// What was stored does not apply.
    #[error(transparent)]
    Apply(#[from] applied::ApplyError),
}

/// The snapshot and journal files in a data directory.
pub struct LastGood {
    path: PathBuf,
    journal: PathBuf,
    durable: bool,
}

impl LastGood {
    /// `snapshot.pb` and `snapshot.journal` under `data_dir`.
    pub fn new(data_dir: &Path) -> LastGood {
        LastGood { path: data_dir.join("snapshot.pb"), journal: data_dir.join("snapshot.journal"), durable: true }
    }

    /// Like [`LastGood::new`] but without fsync: for load harnesses that simulate many agents
    /// sharing one disk, where each real agent would sync its own.
    pub fn without_fsync(data_dir: &Path) -> LastGood {
        LastGood { durable: false, ..LastGood::new(data_dir) }
    }

    /// The stored configuration, if any: the snapshot, then each journaled change that follows
    /// it. A file that does not decode is reported, not trusted; a journal that ends in a torn
    /// write (a crash mid-append) is read up to it.
    pub fn load(&self) -> Result<Option<Applied>, LoadError> {
        let snapshot = match std::fs::read(&self.path) {
            Ok(bytes) => pb::Snapshot::decode(bytes.as_slice())
                .map_err(|source| LoadError::Decode { path: self.path.clone(), source })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LoadError::Read { path: self.path.clone(), source }),
        };
        let mut applied = applied::from_snapshot(snapshot, Source::Disk)?;
        let journal = match std::fs::read(&self.journal) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(LoadError::Read { path: self.journal.clone(), source }),
        };
        let mut rest = journal.as_slice();
        while !rest.is_empty() {
            let Ok(delta) = pb::Delta::decode_length_delimited(&mut rest) else {
                tracing::warn!(version = applied.version, "the journal ends in a partial entry; read up to it");
                break;
            };
            if delta.base_version != applied.version || delta.store_id != applied.store_id {
                // Left from before the snapshot was written again.
                continue;
            }
            applied = applied::from_delta(Some(&applied), delta)?;
        }
        applied.source = Source::Disk;
        Ok(Some(applied))
    }

    /// Keeps `applied`, which `delta` (when it was a delta) made of the previous version: a
    /// change of revocations alone is appended to the journal, anything else written whole.
    pub fn keep(&self, applied: &Applied, delta: Option<&pb::Delta>) -> std::io::Result<()> {
        let journal_len = std::fs::metadata(&self.journal).map_or(0, |m| m.len());
        match delta {
            Some(delta) if applied.revocations_only && journal_len < JOURNAL_MAX_BYTES && self.path.exists() => {
                let entry = pb::Delta {
                    store_id: delta.store_id.clone(),
                    base_version: delta.base_version,
                    version: delta.version,
                    revoked: delta.revoked.clone(),
                    unrevoked: delta.unrevoked.clone(),
                    ..Default::default()
                };
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.journal)?;
                f.write_all(&entry.encode_length_delimited_to_vec())?;
                if self.durable {
                    f.sync_data()?;
                }
                Ok(())
            }
            _ => self.store(&applied.to_snapshot()),
        }
    }

    /// Replaces the stored snapshot atomically (a crash leaves the old file or the new one),
    /// then empties the journal (entries left by a crash in between are skipped on load: they
    /// are based on versions before the snapshot's).
    pub fn store(&self, snapshot: &pb::Snapshot) -> std::io::Result<()> {
        let tmp = self.path.with_extension("pb.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&snapshot.encode_to_vec())?;
        if self.durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if self.durable
            && let Some(dir) = self.path.parent()
        {
            std::fs::File::open(dir)?.sync_all()?;
        }
        match std::fs::remove_file(&self.journal) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> pb::Resource {
        let doc = serde_json::json!({
            "apiVersion": "warden.dev/v1", "kind": "TrustedIssuer", "metadata": {"name": "a"},
            "spec": {"issuer": "https://idp.example.com", "keys": {"jwksUri": "https://idp.example.com/jwks"}, "allowedAlgorithms": ["ES256"]}
        });
        pb::Resource {
            kind: "TrustedIssuer".into(),
            name: "a".into(),
            resource_version: 1,
            document_json: serde_json::to_vec(&doc).unwrap(),
        }
    }

    fn revoke(base: u64, jti: &str) -> pb::Delta {
        let key = warden_core::token::jti_key("a", jti);
        pb::Delta {
            store_id: "s".into(),
            base_version: base,
            version: base + 1,
            revoked: Some(pb::Revocations::from_parts(&[key], [])),
            ..Default::default()
        }
    }

    #[test]
    fn revocations_are_journaled_and_a_restart_finds_every_kept_version() {
        let dir = tempfile::tempdir().unwrap();
        let disk = LastGood::without_fsync(dir.path());
        assert!(disk.load().unwrap().is_none());
        let snapshot =
            pb::Snapshot { store_id: "s".into(), version: 1, resources: vec![issuer()], ..Default::default() };
        let mut held = applied::from_snapshot(snapshot, Source::ControlPlane).unwrap();
        disk.keep(&held, None).unwrap();
        for (i, jti) in ["t-1", "t-2", "t-3"].into_iter().enumerate() {
            let delta = revoke(1 + i as u64, jti);
            held = applied::from_delta(Some(&held), delta.clone()).unwrap();
            disk.keep(&held, Some(&delta)).unwrap();
        }
        let snapshot_len = std::fs::metadata(dir.path().join("snapshot.pb")).unwrap().len();
        let loaded = disk.load().unwrap().unwrap();
        assert_eq!((loaded.version, loaded.source), (4, Source::Disk));
        assert!(["t-1", "t-2", "t-3"].iter().all(|jti| loaded.revocations.jti_revoked("a", jti)));

        // A torn last entry: the versions before it are kept.
        let journal = dir.path().join("snapshot.journal");
        let bytes = std::fs::read(&journal).unwrap();
        std::fs::write(&journal, &bytes[..bytes.len() - 3]).unwrap();
        let loaded = disk.load().unwrap().unwrap();
        assert_eq!(loaded.version, 3);
        assert!(!loaded.revocations.jti_revoked("a", "t-3"));

        // Writing the snapshot whole empties the journal.
        disk.keep(&held, None).unwrap();
        assert!(!journal.exists());
        assert!(std::fs::metadata(dir.path().join("snapshot.pb")).unwrap().len() > snapshot_len);
        assert_eq!(disk.load().unwrap().unwrap().version, 4);
    }
}
