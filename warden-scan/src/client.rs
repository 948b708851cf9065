//! `Client`: which MCP client a configuration file belongs to, told from its name and the folders
//! around it, and which file names a directory walk treats as MCP configuration at all.
//!
//! Recognition is by path alone (never by content) so that the walk can decide what to open
//! without opening it, and so that a file passed by hand gets the same label as the same file
//! found by the walk.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Which tool's configuration a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Client {
    /// Claude Desktop's `claude_desktop_config.json`.
    ClaudeDesktop,
    /// Claude Code: `~/.claude.json`, `~/.claude/settings*.json`, a project's `.mcp.json`.
    ClaudeCode,
    /// Cursor: `~/.cursor/mcp.json`, a project's `.cursor/mcp.json`.
    Cursor,
    /// VS Code: `User/settings.json` (its `mcp` key), `User/mcp.json`, a project's `.vscode/mcp.json`.
    VsCode,
    /// Windsurf: `~/.codeium/windsurf/mcp_config.json`.
    Windsurf,
    /// Continue: `~/.continue/config.{json,yaml}` and `.continue/mcpServers/*`.
    Continue,
    /// Gemini CLI: `~/.gemini/settings.json`, a project's `.gemini/settings.json`.
    GeminiCli,
    /// OpenAI Codex CLI: `~/.codex/config.toml`.
    Codex,
    /// Any other file: a generic `mcp.json`, or a file passed by hand.
    Generic,
    /// A dotenv file (`.env`, `.env.*`, `*.env`), usually one a configuration references.
    EnvFile,
}

impl Client {
    /// The stable snake_case name (equal to the serde form).
    pub fn as_str(self) -> &'static str {
        match self {
            Client::ClaudeDesktop => "claude_desktop",
            Client::ClaudeCode => "claude_code",
            Client::Cursor => "cursor",
            Client::VsCode => "vs_code",
            Client::Windsurf => "windsurf",
            Client::Continue => "continue",
            Client::GeminiCli => "gemini_cli",
            Client::Codex => "codex",
            Client::Generic => "generic",
            Client::EnvFile => "env_file",
        }
    }

    /// The client whose configuration `path` is, from its file name and parent folders.
    pub fn from_path(path: &Path) -> Client {
        let names = Names::of(path);
        let name = names.file;
        if is_env_file_name(name) {
            return Client::EnvFile;
        }
        match (names.parent, name) {
            (_, "claude_desktop_config.json") => Client::ClaudeDesktop,
            (_, ".claude.json" | ".mcp.json") => Client::ClaudeCode,
            (".claude", "settings.json" | "settings.local.json") => Client::ClaudeCode,
            (".cursor", "mcp.json") => Client::Cursor,
            (".vscode", "mcp.json") => Client::VsCode,
            ("User", "settings.json" | "mcp.json") if is_vscode_flavour(names.grandparent) => Client::VsCode,
            ("windsurf", "mcp_config.json") => Client::Windsurf,
            (".gemini", "settings.json") => Client::GeminiCli,
            (".codex", "config.toml") => Client::Codex,
            _ if names.parent == ".continue" || names.grandparent == ".continue" => Client::Continue,
            _ => Client::Generic,
        }
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a directory walk should scan `path`: the MCP configuration files of the clients
/// above, named exactly as those clients name them. Deliberately narrow — `settings.json` or
/// `config.yaml` alone are everywhere on a host; only the folders around them make them MCP's.
pub(crate) fn is_mcp_config(path: &Path) -> bool {
    let names = Names::of(path);
    let name = names.file;
    match Client::from_path(path) {
        Client::ClaudeDesktop | Client::ClaudeCode | Client::Cursor | Client::VsCode => true,
        Client::Windsurf | Client::GeminiCli | Client::Codex => true,
        Client::Continue => {
            (names.parent == ".continue" && matches!(name, "config.json" | "config.yaml" | "config.yml"))
                || (names.parent == "mcpServers"
                    && names.grandparent == ".continue"
                    && (name.ends_with(".json") || name.ends_with(".yaml") || name.ends_with(".yml")))
        }
        Client::Generic => {
            matches!(name, "mcp.json" | "mcp_config.json" | "mcp_settings.json" | "cline_mcp_settings.json")
        }
        Client::EnvFile => false,
    }
}

/// `.env`, `.env.local`, `production.env`: the names dotenv loaders read.
pub(crate) fn is_env_file_name(name: &str) -> bool {
    name == ".env" || name.starts_with(".env.") || (name.ends_with(".env") && name.len() > 4)
}

/// The folders VS Code and its rebuilds keep `User/settings.json` in.
fn is_vscode_flavour(folder: &str) -> bool {
    matches!(folder, "Code" | "Code - Insiders" | "Code - OSS" | "VSCodium")
}

/// The last three names of a path; empty where the path is shorter or a name is not UTF-8.
struct Names<'a> {
    file: &'a str,
    parent: &'a str,
    grandparent: &'a str,
}

impl<'a> Names<'a> {
    fn of(path: &'a Path) -> Names<'a> {
        let name = |p: Option<&'a Path>| p.and_then(Path::file_name).and_then(|n| n.to_str()).unwrap_or("");
        let parent = path.parent();
        Names { file: name(Some(path)), parent: name(parent), grandparent: name(parent.and_then(Path::parent)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(p: &str) -> Client {
        Client::from_path(Path::new(p))
    }

    #[test]
    fn clients_are_told_by_path() {
        assert_eq!(client("/h/.config/Claude/claude_desktop_config.json"), Client::ClaudeDesktop);
        assert_eq!(client("/h/Library/Application Support/Claude/claude_desktop_config.json"), Client::ClaudeDesktop);
        assert_eq!(client("/h/.claude.json"), Client::ClaudeCode);
        assert_eq!(client("/h/.claude/settings.json"), Client::ClaudeCode);
        assert_eq!(client("/p/.mcp.json"), Client::ClaudeCode);
        assert_eq!(client("/h/.cursor/mcp.json"), Client::Cursor);
        assert_eq!(client("/p/.vscode/mcp.json"), Client::VsCode);
        assert_eq!(client("/h/.config/Code/User/settings.json"), Client::VsCode);
        assert_eq!(client("/h/.codeium/windsurf/mcp_config.json"), Client::Windsurf);
        assert_eq!(client("/h/.continue/config.yaml"), Client::Continue);
        assert_eq!(client("/h/.continue/mcpServers/github.yaml"), Client::Continue);
        assert_eq!(client("/h/.gemini/settings.json"), Client::GeminiCli);
        assert_eq!(client("/h/.codex/config.toml"), Client::Codex);
        assert_eq!(client("/p/mcp.json"), Client::Generic);
        assert_eq!(client("/p/.env"), Client::EnvFile);
        assert_eq!(client("/p/.env.local"), Client::EnvFile);
        assert_eq!(client("/p/prod.env"), Client::EnvFile);
        assert_eq!(client("relative.json"), Client::Generic);
    }

    #[test]
    fn only_mcp_config_names_are_walked() {
        let yes = [
            "/h/.claude.json",
            "/p/.vscode/mcp.json",
            "/h/.config/Code - Insiders/User/mcp.json",
            "/h/.continue/config.json",
            "/h/.continue/mcpServers/x.yml",
            "/p/mcp_config.json",
            "/h/.codex/config.toml",
        ];
        for p in yes {
            assert!(is_mcp_config(Path::new(p)), "{p}");
        }
        let no = [
            "/p/settings.json",
            "/p/config.yaml",
            "/h/.continue/index/docs.json",
            "/p/.env",
            "/p/package.json",
            "/h/.config/Foo/User/settings.json",
            "/h/config.toml",
        ];
        for p in no {
            assert!(!is_mcp_config(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn names_match_serde() {
        for c in [Client::ClaudeDesktop, Client::VsCode, Client::GeminiCli, Client::EnvFile] {
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{}\"", c.as_str()));
        }
    }
}
