//! Limits and hostile trees: every one ends in a bounded scan and a report, never a panic, a hang
//! or an error.

use std::fs;
use std::path::Path;

use warden_scan::{Client, Kind, Limits};

use super::{scanner, temp};

/// A Claude Desktop file with one GitHub-format token (checksum included, fake).
const ONE_TOKEN: &str = r#"{"mcpServers": {"github": {"command": "npx", "env": {"GITHUB_TOKEN": "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"}}}}"#;

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().expect("a parent")).expect("folders");
    fs::write(path, text).expect("written");
}

#[test]
fn the_sample_token_is_found() {
    let findings = scanner(Limits::default()).scan_text(Path::new("claude_desktop_config.json"), ONE_TOKEN).unwrap();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].kind, Kind::GithubToken);
    assert_eq!(findings[0].location, "mcpServers.github.env.GITHUB_TOKEN");
    assert_eq!(findings[0].server.as_deref(), Some("github"));
    assert_eq!(findings[0].client, Client::ClaudeDesktop);
    assert_eq!(findings[0].line, Some(1));
}

#[test]
fn oversized_files_are_skipped_and_reported() {
    let (_dir, root) = temp();
    let big = root.join("mcp.json");
    write(&big, &format!("{ONE_TOKEN}{}", " ".repeat(200)));
    let limits = Limits { max_file_bytes: 100, ..Limits::default() };
    let report = scanner(limits).scan_paths(std::slice::from_ref(&root));
    assert!(report.findings.is_empty());
    assert_eq!(report.files_scanned, 0);
    assert_eq!(report.unreadable.len(), 1);
    assert_eq!(report.unreadable[0].file, big);
    assert_eq!(report.unreadable[0].reason, "larger than 100 bytes");
}

#[test]
fn symlink_loops_end() {
    let (_dir, root) = temp();
    write(&root.join("a/.cursor/mcp.json"), ONE_TOKEN);
    std::os::unix::fs::symlink(&root, root.join("a/up")).unwrap();
    std::os::unix::fs::symlink(root.join("a"), root.join("a/.cursor/again")).unwrap();
    // A link to itself, named like a configuration file.
    std::os::unix::fs::symlink(root.join("mcp.json"), root.join("mcp.json")).unwrap();
    let report = scanner(Limits::default()).scan_paths(std::slice::from_ref(&root));
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    assert_eq!(report.files_scanned, 1);
    assert!(report.unreadable.iter().any(|u| u.file == root.join("mcp.json")), "{:?}", report.unreadable);
    assert!(!report.truncated);
}

#[test]
fn linked_configuration_is_followed_once() {
    let (_dir, root) = temp();
    write(&root.join("dotfiles/claude_desktop_config.json"), ONE_TOKEN);
    fs::create_dir_all(root.join("home/.config/Claude")).unwrap();
    std::os::unix::fs::symlink(
        root.join("dotfiles/claude_desktop_config.json"),
        root.join("home/.config/Claude/claude_desktop_config.json"),
    )
    .unwrap();
    let report = scanner(Limits::default()).scan_paths(&[root.join("home"), root.join("dotfiles")]);
    assert_eq!(report.findings.len(), 1);
    assert_eq!(report.files_scanned, 1);
}

#[test]
fn unreadable_files_are_reported() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, root) = temp();
    let locked = root.join(".cursor/mcp.json");
    write(&locked, ONE_TOKEN);
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let report = scanner(Limits::default()).scan_paths(std::slice::from_ref(&root));
    // Root reads mode-000 files; only an unprivileged run can see the refusal.
    if fs::read(&locked).is_err() {
        assert!(report.findings.is_empty());
        assert_eq!(report.unreadable.len(), 1);
        assert_eq!(report.unreadable[0].file, locked);
        assert!(report.unreadable[0].reason.contains("ermission"), "{}", report.unreadable[0].reason);
    } else {
        assert_eq!(report.findings.len(), 1);
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn special_and_missing_files_are_reported_not_opened() {
    let (_dir, root) = temp();
    let fifo = root.join("mcp.json");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
    let missing = root.join("nope.json");
    let mut paths = vec![missing.clone()];
    if made {
        paths.push(fifo.clone());
        paths.push(root.clone());
    }
    let report = scanner(Limits::default()).scan_paths(&paths);
    assert!(report.unreadable.iter().any(|u| u.file == missing));
    if made {
        let fifo_reports: Vec<_> = report.unreadable.iter().filter(|u| u.file == fifo).collect();
        assert_eq!(fifo_reports.len(), 1, "{:?}", report.unreadable);
        assert_eq!(fifo_reports[0].reason, "not a regular file");
    }
}

#[test]
fn unparsable_files_are_reported_with_a_position() {
    let (_dir, root) = temp();
    write(&root.join(".gemini/settings.json"), "{\n  \"mcpServers\": {\n    \"x\": ghp_notquoted\n");
    write(&root.join(".codex/config.toml"), "[mcp_servers.x\ncommand = 'npx'\n");
    write(&root.join(".continue/config.yaml"), "mcpServers:\n  - name: x\n   bad: : indent\n");
    let report = scanner(Limits::default()).scan_paths(std::slice::from_ref(&root));
    assert_eq!(report.files_scanned, 3);
    assert_eq!(report.unreadable.len(), 3, "{:?}", report.unreadable);
    for u in &report.unreadable {
        assert!(u.reason.starts_with("not valid"), "{}", u.reason);
        assert!(u.reason.contains("line"), "{}", u.reason);
        assert!(!u.reason.contains("ghp_") && !u.reason.contains("npx"), "{}", u.reason);
    }
}

#[test]
fn file_and_finding_counts_stop_the_scan() {
    let (_dir, root) = temp();
    for i in 0..10 {
        write(&root.join(format!("p{i}/.mcp.json")), ONE_TOKEN);
    }
    let report = scanner(Limits { max_files: 4, ..Limits::default() }).scan_paths(std::slice::from_ref(&root));
    assert_eq!(report.files_scanned, 4);
    assert_eq!(report.findings.len(), 4);
    assert!(report.truncated);

    let report = scanner(Limits { max_findings: 3, ..Limits::default() }).scan_paths(std::slice::from_ref(&root));
    assert_eq!(report.findings.len(), 3);
    assert!(report.truncated);

    let report = scanner(Limits { max_entries: 5, ..Limits::default() }).scan_paths(std::slice::from_ref(&root));
    assert!(report.truncated);
    assert!(report.files_scanned < 10);

    let report = scanner(Limits::default()).scan_paths(std::slice::from_ref(&root));
    assert_eq!(report.findings.len(), 10);
    assert!(!report.truncated);
}

#[test]
fn depth_is_bounded() {
    let (_dir, root) = temp();
    write(&root.join("a/b/.mcp.json"), ONE_TOKEN);
    write(&root.join("a/b/c/d/e/.mcp.json"), ONE_TOKEN);
    let report = scanner(Limits { max_depth: 2, ..Limits::default() }).scan_paths(std::slice::from_ref(&root));
    assert_eq!(report.findings.len(), 1);
    assert!(report.findings[0].file.ends_with("a/b/.mcp.json"));
    let report = scanner(Limits::default()).scan_paths(std::slice::from_ref(&root));
    assert_eq!(report.findings.len(), 2);
}

#[test]
fn walks_take_only_mcp_names_but_files_given_by_hand_are_scanned() {
    let (_dir, root) = temp();
    write(&root.join("notes/settings.json"), ONE_TOKEN);
    write(&root.join("node_modules/x/.mcp.json"), ONE_TOKEN);
    write(&root.join("deploy/servers.conf"), ONE_TOKEN);
    write(&root.join("deploy/local.conf"), "# keys\nexport GITHUB_TOKEN=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\n");
    let report = scanner(Limits::default()).scan_paths(std::slice::from_ref(&root));
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    let report = scanner(Limits::default()).scan_paths(&[
        root.join("notes/settings.json"),
        root.join("deploy/servers.conf"),
        root.join("deploy/local.conf"),
    ]);
    assert_eq!(report.findings.len(), 3, "{:?}", report);
    let env = report.findings.iter().find(|f| f.file.ends_with("local.conf")).unwrap();
    assert_eq!((env.location.as_str(), env.client, env.line), ("GITHUB_TOKEN", Client::EnvFile, Some(2)));
}

#[test]
fn referenced_env_files_are_scanned_once_with_their_server() {
    let (_dir, root) = temp();
    write(
        &root.join("proj/.vscode/mcp.json"),
        r#"{"servers": {"tools": {"type": "stdio", "command": "x", "envFile": "${workspaceFolder}/.env"},
                        "again": {"command": "docker", "args": ["run", "--env-file", "../.env"]}}}"#,
    );
    write(&root.join("proj/.env"), "GITHUB_TOKEN=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\nPORT=1\n");
    let report = scanner(Limits::default()).scan_paths(&[root.join("proj")]);
    assert_eq!(report.files_scanned, 2);
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    let f = &report.findings[0];
    assert_eq!((f.location.as_str(), f.server.as_deref(), f.client), ("GITHUB_TOKEN", Some("tools"), Client::EnvFile));
}
