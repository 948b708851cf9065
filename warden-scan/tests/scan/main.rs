//! warden-scan against generated hosts, hostile file trees and random input: one test binary,
//! so it links once.
//!
//! - `corpus`: recall over planted fakes of every kind (location and kind must match), zero
//!   findings on trap-only hosts, no secret in any rendered report;
//! - `bounds`: size, count, depth and entry limits, symlink loops, unreadable and special files;
//! - `props`: random bytes through every parser, references under every secret name.

mod bounds;
mod corpus;
mod props;

use std::path::PathBuf;

use warden_scan::{FingerprintKey, Limits, Scanner};

/// The key every test fingerprints with.
pub(crate) fn key() -> FingerprintKey {
    FingerprintKey::new([0x5a; 32])
}

pub(crate) fn scanner(limits: Limits) -> Scanner {
    Scanner::new(key(), limits)
}

/// A temporary folder as a `PathBuf` root, kept alive by the returned guard.
pub(crate) fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let root = dir.path().to_path_buf();
    (dir, root)
}
