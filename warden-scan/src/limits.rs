//! `Limits`: the bounds that keep a scan's time and memory finite on any host, however large or
//! hostile its file tree (a home directory with a million files, a symlink loop, a 4 GiB
//! `mcp.json`). Hitting one is reported (`Report::truncated`, or the file as `Unreadable`),
//! never an error.

/// Bounds of one `Scanner::scan_paths` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Files larger than this are not read (reported as unreadable). Default 1 MiB: the largest
    /// real MCP configuration (`~/.claude.json` with project history) stays well under it.
    pub max_file_bytes: u64,
    /// Files read at most; the scan stops (truncated) at this many. Default 10 000.
    pub max_files: usize,
    /// Folders below a root walked into at most. Default 8: deep enough for
    /// `~/Library/Application Support/Claude/…` and a project's `.vscode/`.
    pub max_depth: usize,
    /// Findings kept at most; the scan stops (truncated) at this many. Default 10 000.
    pub max_findings: usize,
    /// Directory entries looked at, at most, across the whole walk; the scan stops (truncated)
    /// there. Default 1 000 000. This bounds the walk's time on a huge tree even where few files
    /// are MCP configuration, which `max_files` (files read) alone would not.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 1 << 20,
            max_files: 10_000,
            max_depth: 8,
            max_findings: 10_000,
            max_entries: 1_000_000,
        }
    }
}
