//! The file-system side of `Scanner::scan_paths`: which files to read, read within the limits,
//! and every failure turned into an `Unreadable` entry rather than an error.
//!
//! Symbolic links are followed (dotfile managers link `~/.claude.json` and whole `~/.config`
//! trees), with every folder and file remembered by (device, inode): a link loop ends at the
//! second visit, and a file reached twice is scanned once. Depth, entry and file counts bound
//! the rest, so the walk is finite on any tree.
//!
//! Files are read only through `read_regular_file`, which judges the opened handle rather than
//! the path (a path checked, then swapped for a FIFO, must not block the scan). Env files that a
//! configuration references are followed only outside the kernel's trees (`KERNEL_FOLDERS`): a
//! project file must not make the scan read `/proc/self/environ`.
//!
//! Under a folder another user than root owns (a home), only that user's files are read: a
//! link or env-file reference there, which the user controls, must not make a scan running
//! with more privilege read someone else's files (the findings would tell their kinds).

use std::collections::HashSet;
use std::fs::{self, File, Metadata, OpenOptions};
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

/// Where an env file reference is never followed: the kernel's views of processes and devices
/// (`/proc/self/environ` is this process's environment, `/dev/*` are devices), which no
/// configuration has a reason to load and which a hostile project file could point at.
const KERNEL_FOLDERS: &[&str] = &["/proc", "/sys", "/dev"];

/// Why an env file reference was not followed.
const OUTSIDE_SCANNED_PLACES: &str = "not followed: the env file reference points into /proc, /sys or /dev";

/// A file or folder's identity, so links cannot make the walk visit it twice.
/// Why a file under another user's folder was not read.
const NOT_OWNED: &str = "not read: owned by another user than the one whose folder is scanned";

/// The owner a root's files must have: its own, unless root owns it (then anyone's).
#[cfg(unix)]
fn confined_to(meta: &Metadata) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    Some(meta.uid()).filter(|&uid| uid != 0)
}

#[cfg(not(unix))]
fn confined_to(_meta: &Metadata) -> Option<u32> {
    None
}

#[cfg(unix)]
fn owned_by(meta: &Metadata, owner: Option<u32>) -> bool {
    use std::os::unix::fs::MetadataExt;
    owner.is_none_or(|owner| meta.uid() == owner)
}

#[cfg(not(unix))]
fn owned_by(_meta: &Metadata, _owner: Option<u32>) -> bool {
    true
}

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
        owner: None,
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
    /// Whose files the current root may have read: its owner's, unless that is root.
    owner: Option<u32>,
}

impl Walk<'_> {
    fn root(&mut self, path: &Path) {
        self.owner = fs::metadata(path).ok().and_then(|meta| confined_to(&meta));
        match fs::metadata(path) {
            Err(e) => self.unreadable(path, reason(&e)),
            Ok(meta) if meta.is_dir() => {
                self.seen_folders.insert(identity(path, &meta));
                self.folder(path, 0);
            }
            Ok(meta) => self.file(path, &meta, None),
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
                self.file(&path, &meta, None);
            }
        }
    }

    /// Reads and scans one file: one the walk found or was given (`referenced` is `None`), or an
    /// env file a configuration references (read as dotenv whatever its name).
    fn file(&mut self, path: &Path, meta: &Metadata, referenced: Option<Reference<'_>>) {
        // Before it counts as seen: its owner's own scan (of their home, or root's of all) must
        // still read it.
        if !owned_by(meta, self.owner) {
            return self.unreadable(path, NOT_OWNED.to_string());
        }
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
        // A referenced env file is opened by its resolved path, the one checked to lie outside
        // the kernel's trees; it is still reported under the path the reference gives.
        let open = referenced.as_ref().map_or(path, |r| r.canonical);
        let bytes = match read_regular_file(open, limits.max_file_bytes, referenced.is_some(), self.owner) {
            Ok(bytes) => bytes,
            Err(refusal) => return self.unreadable(path, refusal.reason(limits.max_file_bytes)),
        };
        self.report.files_scanned += 1;
        let text = String::from_utf8_lossy(&bytes);
        let format = referenced.as_ref().map(|_| Format::Env);
        let server = referenced.as_ref().and_then(|r| r.server);
        let budget = limits.max_findings.saturating_sub(self.report.findings.len());
        let scanned = match self.scanner.scan_document(path, &text, format, server, budget) {
            Ok(scanned) => scanned,
            Err(e) => return self.unreadable(path, e.to_string()),
        };
        self.report.findings.extend(scanned.findings);
        if scanned.truncated {
            self.report.truncated = true;
            // The findings budget is spent: nothing further can be kept. (A field's own hit
            // limit truncates that field only; the scan goes on.)
            if self.report.findings.len() >= limits.max_findings {
                return self.stop();
            }
        }
        for env_ref in scanned.env_refs {
            let Some(env_path) = resolve_env_file(path, &env_ref.path) else { continue };
            self.referenced_env_file(&env_path, env_ref.server.as_deref());
            if self.stopped {
                return;
            }
        }
    }

    /// Follows an env file reference: links and `..` resolved first, and never into the
    /// kernel's trees.
    fn referenced_env_file(&mut self, env_path: &Path, server: Option<&str>) {
        let canonical = match fs::canonicalize(env_path) {
            Ok(canonical) => canonical,
            // A configuration naming an env file that is not there holds no secret here.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => return self.unreadable(env_path, reason(&e)),
        };
        if is_kernel_path(&canonical) {
            return self.unreadable(env_path, OUTSIDE_SCANNED_PLACES.to_string());
        }
        match fs::metadata(&canonical) {
            Ok(meta) => self.file(env_path, &meta, Some(Reference { canonical: &canonical, server })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => self.unreadable(env_path, reason(&e)),
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

/// An env file reached through a configuration's reference rather than the walk.
struct Reference<'r> {
    /// Its path with links and `..` resolved: what is opened, known to be outside
    /// `KERNEL_FOLDERS`.
    canonical: &'r Path,
    /// The server entry whose configuration referenced it.
    server: Option<&'r str>,
}

/// Why `read_regular_file` read nothing.
#[derive(Debug)]
enum Refusal {
    /// A FIFO, socket, device or folder.
    NotRegular,
    /// Longer than the size limit (when opened, or by the time it was read).
    TooLarge,
    /// A referenced env file that turned out, once opened, to be in the kernel's trees.
    Outside,
    /// Owned by another user than the one whose folder is scanned.
    NotOwned,
    Io(io::Error),
}

impl Refusal {
    fn reason(&self, max: u64) -> String {
        match self {
            Refusal::NotRegular => "not a regular file".to_string(),
            Refusal::TooLarge => too_large(max),
            Refusal::Outside => OUTSIDE_SCANNED_PLACES.to_string(),
            Refusal::NotOwned => NOT_OWNED.to_string(),
            Refusal::Io(e) => reason(e),
        }
    }
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Self {
        Refusal::Io(e)
    }
}

/// The whole of `path`, if it is a regular file of at most `max` bytes: the one way this crate
/// reads a file.
///
/// Every check is made on the opened handle, because the path can change between a `metadata`
/// call and the open: a file swapped for a FIFO would block `open` until a writer came (and the
/// read after it), and `O_NONBLOCK` makes that open return at once instead, so the handle's
/// metadata can refuse it unread. `O_NOCTTY`: a terminal swapped in must not become the
/// process's controlling terminal. With `confined` (a referenced env file), the file the handle
/// really is must also lie outside `KERNEL_FOLDERS`.
fn read_regular_file(path: &Path, max: u64, confined: bool, owner: Option<u32>) -> Result<Vec<u8>, Refusal> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Refusal::NotRegular);
    }
    if !owned_by(&meta, owner) {
        return Err(Refusal::NotOwned);
    }
    if confined && opened_path(&file).is_some_and(|opened| is_kernel_path(&opened)) {
        return Err(Refusal::Outside);
    }
    if meta.len() > max {
        return Err(Refusal::TooLarge);
    }
    let mut bytes = Vec::new();
    // It may grow between the size check and the read: read one byte past the limit to tell.
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Refusal::TooLarge);
    }
    Ok(bytes)
}

/// The path of the file `file` is, as the kernel knows it (Linux: its `/proc/self/fd` link),
/// so a link swapped in after `canonicalize` cannot lead the read elsewhere unnoticed. `None`
/// where that is unknown (no `/proc`, another OS): the check before the open stands alone.
#[cfg(target_os = "linux")]
fn opened_path(file: &File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

#[cfg(not(target_os = "linux"))]
fn opened_path(_file: &File) -> Option<PathBuf> {
    None
}

/// Whether `path` (absolute, resolved) lies in one of `KERNEL_FOLDERS`.
fn is_kernel_path(path: &Path) -> bool {
    KERNEL_FOLDERS.iter().any(|folder| path.starts_with(folder))
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

    #[test]
    fn kernel_paths() {
        assert!(is_kernel_path(Path::new("/proc/self/environ")));
        assert!(is_kernel_path(Path::new("/dev/null")));
        assert!(is_kernel_path(Path::new("/sys")));
        assert!(!is_kernel_path(Path::new("/procfs/x")));
        assert!(!is_kernel_path(Path::new("/home/u/proc/x")));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("mcp.json");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        if !made {
            return; // No mkfifo(1) here: nothing to test with.
        }
        // On another thread, so a regression (an open that waits for a writer) fails the test
        // instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_regular_file(&fifo, 1 << 20, false, None));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("opening a FIFO returns at once");
        assert!(matches!(got, Err(Refusal::NotRegular)), "{got:?}");
    }

    #[test]
    fn regular_files_read_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mcp.json");
        fs::write(&file, "0123456789").unwrap();
        assert_eq!(read_regular_file(&file, 10, true, None).unwrap(), b"0123456789");
        assert!(matches!(read_regular_file(&file, 9, false, None), Err(Refusal::TooLarge)));
        assert!(matches!(read_regular_file(dir.path(), 10, false, None), Err(Refusal::NotRegular)));
        assert!(matches!(read_regular_file(&dir.path().join("nope"), 10, false, None), Err(Refusal::Io(_))));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn confined_reads_refuse_the_kernel_trees_by_the_opened_file() {
        // Reached through a link whose own path says nothing of /proc.
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("innocent.env");
        std::os::unix::fs::symlink("/proc/self/environ", &link).unwrap();
        if fs::File::open(&link).is_ok() {
            assert!(matches!(read_regular_file(&link, 1 << 20, true, None), Err(Refusal::Outside)));
        }
    }

    /// A user's link and env-file reference to root's files: not read from their home, and
    /// still read from root's own. Needs root (to make a home another user owns).
    #[cfg(unix)]
    #[test]
    fn a_home_s_links_and_references_read_only_its_owner_s_files() {
        use std::os::unix::fs::{MetadataExt, chown, symlink};
        let dir = tempfile::tempdir().unwrap();
        let (root_home, user_home) = (dir.path().join("root"), dir.path().join("alice"));
        fs::create_dir_all(root_home.join(".cursor")).unwrap();
        fs::create_dir_all(user_home.join(".cursor")).unwrap();
        let secret =
            r#"{"mcpServers": {"gh": {"env": {"SERVICE_API_KEY": "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNmQ"}}}}"#;
        fs::write(root_home.join(".cursor/mcp.json"), secret).unwrap();
        fs::write(
            root_home.join("private.env"),
            "OPENAI_API_KEY=sk-proj-Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNmQwErTyUiOpAsDfGhJk\n",
        )
        .unwrap();
        if chown(&user_home, Some(1000), Some(1000)).is_err() {
            eprintln!("not run: making a folder another user owns needs root");
            return;
        }
        // Alice links root's configuration into her home and references root's env file.
        symlink(root_home.join(".cursor/mcp.json"), user_home.join(".cursor/mcp.json")).unwrap();
        let own = format!(
            r#"{{"mcpServers": {{"x": {{"command": "x", "envFile": "{}"}}}}}}"#,
            root_home.join("private.env").display()
        );
        fs::write(user_home.join("mcp.json"), own).unwrap();
        chown(user_home.join("mcp.json"), Some(1000), Some(1000)).unwrap();
        chown(user_home.join(".cursor"), Some(1000), Some(1000)).unwrap();
        assert_eq!(fs::metadata(user_home.join("mcp.json")).unwrap().uid(), 1000);
        let scanner = Scanner::new(crate::FingerprintKey::new([7; 32]), crate::Limits::default());
        // Her home first: what it refuses must still be read from root's own.
        let report = run(&scanner, &[user_home.clone(), root_home.clone()]);
        let found: Vec<String> = report.findings.iter().map(|f| f.file.display().to_string()).collect();
        assert!(found.iter().all(|f| f.starts_with(root_home.to_str().unwrap())), "{found:?}");
        assert!(found.iter().any(|f| f.ends_with(".cursor/mcp.json")), "root's own file is scanned: {found:?}");
        let refused: Vec<&Unreadable> = report.unreadable.iter().filter(|u| u.reason == NOT_OWNED).collect();
        assert_eq!(refused.len(), 2, "{:?}", report.unreadable);
    }
}
