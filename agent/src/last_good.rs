//! The last good snapshot on disk: written after every applied version, loaded at start so the
//! agent enforces its last configuration before (or without) reaching the control plane.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use proto::v1 as pb;

/// The snapshot file in a data directory.
pub struct LastGood {
    path: PathBuf,
    durable: bool,
}

impl LastGood {
    /// `snapshot.pb` under `data_dir`.
    pub fn new(data_dir: &Path) -> LastGood {
        LastGood { path: data_dir.join("snapshot.pb"), durable: true }
    }

    /// Like [`LastGood::new`] but without fsync: for load harnesses that simulate many agents
    /// sharing one disk, where each real agent would sync its own.
    pub fn without_fsync(data_dir: &Path) -> LastGood {
        LastGood { path: data_dir.join("snapshot.pb"), durable: false }
    }

    /// The stored snapshot, if any. A file that does not decode is reported, not trusted.
    pub fn load(&self) -> Result<Option<pb::Snapshot>, String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                pb::Snapshot::decode(bytes.as_slice()).map(Some).map_err(|e| format!("{}: {e}", self.path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }

    /// Replaces the stored snapshot atomically: a crash leaves the old file or the new one.
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
        Ok(())
    }
}
