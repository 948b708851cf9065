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

/// A valid-looking AWS access key id, different for every `n` (base32 body from a xorshift).
fn aws_key(n: u32) -> String {
    const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut x = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let body: String = (0..16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(BASE32[(x % 32) as usize])
        })
        .collect();
    format!("AKIA{body}")
}

#[test]
fn aliases_of_a_string_of_many_keys_stop_at_the_findings_budget() {
    // One anchored string of 5 000 key-shaped words, referenced 100 times: half a million
    // candidates, each once a finding and an O(n²) overlap check before `max_findings` applied.
    let keys: Vec<String> = (0..5_000).map(aws_key).collect();
    let text = format!("a: &a \"{}\"\nb: [{}]\n", keys.join(" "), vec!["*a"; 100].join(", "));
    let (_dir, root) = temp();
    let file = root.join(".continue/config.yaml");
    write(&file, &text);

    let report = scanner(Limits::default()).scan_paths(std::slice::from_ref(&file));
    assert_eq!(report.findings.len(), Limits::default().max_findings);
    assert!(report.truncated);
    assert!(report.findings.iter().all(|f| f.kind == Kind::AwsAccessKeyId));

    let limits = Limits { max_findings: 250, ..Limits::default() };
    let report = scanner(limits).scan_paths(std::slice::from_ref(&file));
    assert_eq!((report.findings.len(), report.truncated), (250, true));
    let findings = scanner(limits).scan_text(&file, &text).expect("parses");
    assert_eq!(findings.len(), 250);

    // A field's own bound truncates that field, and the scan goes on to the next file.
    let other = root.join(".cursor/mcp.json");
    write(&other, ONE_TOKEN);
    write(&file, &format!("a: \"{}\"\n", keys.join(" ")));
    let report = scanner(Limits::default()).scan_paths(&[file.clone(), other.clone()]);
    assert!(report.truncated, "a field past its hit limit is reported as cut short");
    assert_eq!(report.findings.len(), 100 + 1, "the field's first 100, then the next file's token");
}

#[test]
fn a_megabyte_line_of_toml_numbers_scans() {
    // Once every value's line was found by a scan from the file's start: O(n²) on one line.
    let mut text = String::from("model = \"o3\"\nnumbers = [");
    let mut n = 0u64;
    while text.len() < (1 << 20) - 128 {
        text.push_str(&n.to_string());
        text.push(',');
        n += 1;
    }
    text.push_str("0]\n[mcp_servers.github.env]\nGITHUB_TOKEN = \"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\"\n");
    assert!(text.len() as u64 <= Limits::default().max_file_bytes);
    let started = std::time::Instant::now();
    let findings = scanner(Limits::default()).scan_text(Path::new(".codex/config.toml"), &text).expect("parses");
    println!("1 MiB TOML line: {} numbers, scanned in {:?}", n, started.elapsed());
    assert_eq!(findings.len(), 1);
    assert_eq!((findings[0].location.as_str(), findings[0].line), ("mcp_servers.github.env.GITHUB_TOKEN", Some(4)));
}

#[test]
fn scan_text_refuses_what_scan_paths_would_not_read() {
    let limits = Limits { max_file_bytes: 64, ..Limits::default() };
    let text = format!("{ONE_TOKEN}{}", " ".repeat(10));
    let err = scanner(limits).scan_text(Path::new("claude_desktop_config.json"), &text).unwrap_err();
    assert_eq!(err, warden_scan::FormatError::TooLarge);
    assert!(!err.to_string().contains("ghp_"));
}

#[test]
fn env_references_into_the_kernel_trees_are_not_followed() {
    let (_dir, root) = temp();
    let project = root.join("proj");
    fs::create_dir_all(&project).unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", project.join("linked.env")).unwrap();
    write(
        &project.join(".vscode/mcp.json"),
        r#"{"servers": {
            "a": {"command": "x", "envFile": "/proc/self/environ"},
            "b": {"command": "docker", "args": ["run", "--env-file", "../../../../../../../../../../../proc/self/environ"]},
            "c": {"command": "x", "envFile": "${workspaceFolder}/linked.env"},
            "d": {"command": "x", "envFile": "/dev/null"},
            "e": {"command": "x", "envFile": "${workspaceFolder}/.env"}}}"#,
    );
    write(&project.join(".env"), "GITHUB_TOKEN=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\n");
    let report = scanner(Limits::default()).scan_paths(std::slice::from_ref(&project));
    // The configuration and the one env file inside the project; nothing from the kernel.
    assert_eq!(report.files_scanned, 2, "{report:?}");
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    assert_eq!(report.findings[0].server.as_deref(), Some("e"));
    let refused: Vec<_> = report.unreadable.iter().filter(|u| u.reason.contains("/proc, /sys or /dev")).collect();
    assert_eq!(refused.len(), 4, "{:?}", report.unreadable);
    assert_eq!(report.unreadable.len(), 4, "{:?}", report.unreadable);
    assert!(refused.iter().any(|u| u.file == Path::new("/proc/self/environ")));
    assert!(refused.iter().any(|u| u.file == project.join("linked.env")));
    assert!(refused.iter().any(|u| u.file == Path::new("/dev/null")));
}
