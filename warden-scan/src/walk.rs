//! The file-system side of `Scanner::scan_paths`: which files to read, read within the limits,
//! and every failure turned into an `Unreadable` entry rather than an error.
//!
//! Symbolic links are followed (dotfile managers link `~/.claude.json` and whole `~/.config`
//! trees), with every folder and file remembered by (device, inode): a link loop ends at the
//! second visit, and a file reached twice is scanned once. Depth, entry and file counts bound
//! the rest, so the walk is finite on any tree.

use std::collections::HashSet;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::client::is_mcp_config;
use crate::document::Format;
use crate::{Report, Scanner, Unreadable};

/// Folders never walked into: package caches, build output, version-control stores. None holds
/// an MCP client's configuration, and together they are most of a developer's file count.
const SKIPPED_FOLDERS: &[&str] = &[
    "node_modules",
    ".git",
    ".hg",
    ".svn",
    "target",
    "__pycache__",
    ".venv",
    "venv",
    ".tox",
    ".mypy_cache",
    ".cache",
    ".npm",
    ".pnpm-store",
    ".yarn",
    ".cargo",
    ".rustup",
    ".gradle",
    ".m2",
    ".Trash",
    "Caches",
];

/// Kernel and device trees under `/`: reading them is at best slow and at worst blocks.
const SKIPPED_ROOT_FOLDERS: &[&str] = &["/proc", "/sys", "/dev", "/run"];

/// A file or folder's identity, so links cannot make the walk visit it twice.
#[cfg(unix)]
type Identity = (u64, u64);
#[cfg(not(unix))]
type Identity = PathBuf;

#[cfg(unix)]
fn identity(_path: &Path, meta: &Metadata) -> Identity {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(path: &Path, _meta: &Metadata) -> Identity {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

pub(crate) fn run(scanner: &Scanner, paths: &[PathBuf]) -> Report {
    let mut walk = Walk {
        scanner,
        report: Report::default(),
        seen_files: HashSet::new(),
        seen_folders: HashSet::new(),
        entries: 0,
        stopped: false,
    };
    for path in paths {
        if walk.stopped {
            break;
        }
        walk.root(path);
    }
    walk.report
}

struct Walk<'s> {
    scanner: &'s Scanner,
    report: Report,
    seen_files: HashSet<Identity>,
    seen_folders: HashSet<Identity>,
    /// Directory entries looked at so far (bounded by `Limits::max_entries`).
    entries: usize,
    /// A limit was reached: scan nothing more.
    stopped: bool,
}

impl Walk<'_> {
    fn root(&mut self, path: &Path) {
        match fs::metadata(path) {
            Err(e) => self.unreadable(path, reason(&e)),
            Ok(meta) if meta.is_dir() => {
                self.seen_folders.insert(identity(path, &meta));
                self.folder(path, 0);
            }
            Ok(meta) => self.file(path, &meta, None, None),
        }
    }

    fn folder(&mut self, folder: &Path, depth: usize) {
        let listing = match fs::read_dir(folder) {
            Ok(listing) => listing,
            Err(e) => return self.unreadable(folder, reason(&e)),
        };
        // Keep only what may matter (folders, links, configuration names), sorted so that
        // reports are the same from run to run.
        let mut candidates = Vec::new();
        for entry in listing {
            self.entries += 1;
            if self.entries > self.scanner.limits().max_entries {
                return self.stop();
            }
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let keep = entry.file_type().is_ok_and(|t| t.is_dir() || t.is_symlink()) || is_mcp_config(&path);
            if keep {
                candidates.push(path);
            }
        }
        candidates.sort();
        for path in candidates {
            if self.stopped {
                return;
            }
            // Follows links; a dangling one matters only if it has a configuration's name.
            let meta = match fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if is_mcp_config(&path) => {
                    self.unreadable(&path, reason(&e));
                    continue;
                }
                Err(_) => continue,
            };
            if meta.is_dir() {
                if depth < self.scanner.limits().max_depth
                    && !is_skipped(&path)
                    && self.seen_folders.insert(identity(&path, &meta))
                {
                    self.folder(&path, depth + 1);
                }
            } else if is_mcp_config(&path) {
                self.file(&path, &meta, None, None);
            }
        }
    }

    /// Reads and scans one file (`format` forced for referenced env files; `server` is the
    /// entry that referenced it).
    fn file(&mut self, path: &Path, meta: &Metadata, format: Option<Format>, server: Option<&str>) {
        if !self.seen_files.insert(identity(path, meta)) {
            return;
        }
        let limits = *self.scanner.limits();
        if self.report.files_scanned >= limits.max_files {
            return self.stop();
        }
        if !meta.is_file() {
            // Never open a FIFO or device: reading one can block forever.
            return self.unreadable(path, "not a regular file".to_string());
        }
        if meta.len() > limits.max_file_bytes {
            return self.unreadable(path, too_large(limits.max_file_bytes));
        }
        let bytes = match read_at_most(path, limits.max_file_bytes) {
            Ok(Some(bytes)) => bytes,
            // It grew past the limit between the size check and the read.
            Ok(None) => return self.unreadable(path, too_large(limits.max_file_bytes)),
            Err(e) => return self.unreadable(path, reason(&e)),
        };
        self.report.files_scanned += 1;
        let text = String::from_utf8_lossy(&bytes);
        let scanned = match self.scanner.scan_document(path, &text, format, server) {
            Ok(scanned) => scanned,
            Err(e) => return self.unreadable(path, e.to_string()),
        };
        for finding in scanned.findings {
            if self.report.findings.len() >= limits.max_findings {
                return self.stop();
            }
            self.report.findings.push(finding);
        }
        for env_ref in scanned.env_refs {
            let Some(env_path) = resolve_env_file(path, &env_ref.path) else { continue };
            match fs::metadata(&env_path) {
                Ok(meta) => self.file(&env_path, &meta, Some(Format::Env), env_ref.server.as_deref()),
                // A configuration naming an env file that is not there holds no secret here.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => self.unreadable(&env_path, reason(&e)),
            }
            if self.stopped {
                return;
            }
        }
    }

    fn unreadable(&mut self, path: &Path, reason: String) {
        self.report.unreadable.push(Unreadable { file: path.to_path_buf(), reason });
    }

    fn stop(&mut self) {
        self.report.truncated = true;
        self.stopped = true;
    }
}

fn too_large(max: u64) -> String {
    format!("larger than {max} bytes")
}

/// An I/O error as a reason: its kind and OS code, which never quote the file.
fn reason(e: &io::Error) -> String {
    e.to_string()
}

/// The whole file, or `None` if it is longer than `max` bytes.
fn read_at_most(path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    File::open(path)?.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

fn is_skipped(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    SKIPPED_FOLDERS.contains(&name) || SKIPPED_ROOT_FOLDERS.iter().any(|r| path == Path::new(r))
}

/// Where an env file reference written in `config` points: `${workspaceFolder}` is the folder
/// above a project's `.vscode`/`.cursor`/… folder; a relative path is tried against the
/// configuration's folder, then the workspace. References to other variables (`~`, `${env:…}`)
/// cannot be resolved here and are skipped.
fn resolve_env_file(config: &Path, reference: &str) -> Option<PathBuf> {
    let folder = config.parent().unwrap_or(Path::new(""));
    let in_dot_folder = folder.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
    let workspace = if in_dot_folder { folder.parent().unwrap_or(Path::new("")) } else { folder };
    let reference = reference.trim();
    for variable in ["${workspaceFolder}", "${workspaceRoot}"] {
        if let Some(rest) = reference.strip_prefix(variable) {
            return Some(workspace.join(rest.trim_start_matches(['/', '\\'])));
        }
    }
    if reference.contains('$') || reference.starts_with('~') || reference.is_empty() {
        return None;
    }
    let relative = Path::new(reference);
    if relative.is_absolute() {
        return Some(relative.to_path_buf());
    }
    let beside = folder.join(relative);
    if beside.exists() { Some(beside) } else { Some(workspace.join(relative)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_references_resolve() {
        let config = Path::new("/p/.vscode/mcp.json");
        assert_eq!(resolve_env_file(config, "${workspaceFolder}/.env"), Some(PathBuf::from("/p/.env")));
        assert_eq!(resolve_env_file(config, "/abs/x.env"), Some(PathBuf::from("/abs/x.env")));
        assert_eq!(resolve_env_file(config, "x.env"), Some(PathBuf::from("/p/x.env")));
        assert_eq!(resolve_env_file(Path::new("/p/mcp.json"), "x.env"), Some(PathBuf::from("/p/x.env")));
        assert_eq!(resolve_env_file(config, "${env:HOME}/.env"), None);
        assert_eq!(resolve_env_file(config, "~/.env"), None);
    }

    #[test]
    fn skipped_folders() {
        assert!(is_skipped(Path::new("/p/node_modules")));
        assert!(is_skipped(Path::new("/proc")));
        assert!(!is_skipped(Path::new("/home/u/proc")));
        assert!(!is_skipped(Path::new("/p/.vscode")));
    }
}
