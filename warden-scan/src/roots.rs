//! `default_roots`: where each MCP client keeps its user-level configuration under a home
//! folder, on Linux, macOS and Windows. Project-level files (`.mcp.json`, `.vscode/mcp.json`,
//! `.cursor/mcp.json`, `.gemini/settings.json`) live in project folders no client lists reliably;
//! pass those folders to `Scanner::scan_paths`, whose walk recognises them.

use std::path::{Path, PathBuf};

/// Files (and one folder) relative to a home folder, client by client.
const PLACES: &[&str] = &[
    // Claude Desktop: Linux, macOS, Windows.
    ".config/Claude/claude_desktop_config.json",
    "Library/Application Support/Claude/claude_desktop_config.json",
    "AppData/Roaming/Claude/claude_desktop_config.json",
    // Claude Code: user settings and the state file that also holds per-project servers.
    ".claude.json",
    ".claude/settings.json",
    ".claude/settings.local.json",
    // Cursor.
    ".cursor/mcp.json",
    // VS Code and its flavours: `mcp` in settings.json, and the dedicated mcp.json.
    ".config/Code/User/settings.json",
    ".config/Code/User/mcp.json",
    ".config/Code - Insiders/User/settings.json",
    ".config/Code - Insiders/User/mcp.json",
    ".config/VSCodium/User/settings.json",
    ".config/VSCodium/User/mcp.json",
    "Library/Application Support/Code/User/settings.json",
    "Library/Application Support/Code/User/mcp.json",
    "AppData/Roaming/Code/User/settings.json",
    "AppData/Roaming/Code/User/mcp.json",
    // Windsurf.
    ".codeium/windsurf/mcp_config.json",
    // Continue: the config files and the folder of one-file-per-server blocks.
    ".continue/config.json",
    ".continue/config.yaml",
    ".continue/mcpServers",
    // Gemini CLI.
    ".gemini/settings.json",
    // Codex CLI.
    ".codex/config.toml",
];

/// The default places to look for `home` (a user's home folder): every known client's
/// user-level configuration that exists there.
pub fn default_roots(home: &Path) -> Vec<PathBuf> {
    PLACES.iter().map(|place| home.join(place)).filter(|path| path.exists()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_what_exists() {
        let home = tempfile::tempdir().unwrap();
        assert!(default_roots(home.path()).is_empty());
        std::fs::create_dir_all(home.path().join(".cursor")).unwrap();
        std::fs::write(home.path().join(".cursor/mcp.json"), "{}").unwrap();
        std::fs::create_dir_all(home.path().join(".continue/mcpServers")).unwrap();
        std::fs::write(home.path().join(".claude.json"), "{}").unwrap();
        let roots = default_roots(home.path());
        assert_eq!(
            roots,
            [
                home.path().join(".claude.json"),
                home.path().join(".cursor/mcp.json"),
                home.path().join(".continue/mcpServers")
            ]
        );
    }

    #[test]
    fn every_place_is_recognised() {
        for place in PLACES.iter().filter(|p| !p.ends_with("mcpServers")) {
            assert!(crate::client::is_mcp_config(Path::new("/h").join(place).as_path()), "{place}");
        }
    }
}
