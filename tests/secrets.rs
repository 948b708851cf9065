//! Where a secret's text turns up: tests of what Warden must never write (a planted credential,
//! a bridged key) search every file a fleet wrote for it.

use std::path::{Path, PathBuf};

/// Whether `needle` (not empty) occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir` with its bytes (binary files too, read whole).
pub fn every_file(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

/// Every file under `dir` that contains `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    every_file(dir).into_iter().filter(|(_, bytes)| contains_bytes(bytes, needle)).map(|(path, _)| path).collect()
}
