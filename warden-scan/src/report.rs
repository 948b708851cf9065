//! Rendering a `Report` for people and tools: an aligned text `table`, `json` (the report's own
//! fields), and `sarif` 2.1.0 for code-scanning dashboards (one rule per `Kind`, one result per
//! finding, the fingerprint as a partial fingerprint so dashboards track a secret across runs).
//!
//! Paths that are not UTF-8 are rendered lossily rather than failing the whole report. Nothing
//! here sees a secret: a `Report` holds none.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use crate::{Finding, Kind, Report};

/// An aligned table of findings, then unreadable files, then a one-line summary.
pub fn table(report: &Report) -> String {
    let header = ["FILE", "KIND", "LOCATION", "SERVER", "CLIENT", "FINGERPRINT"];
    let rows: Vec<[String; 6]> = report
        .findings
        .iter()
        .map(|f| {
            let file = match f.line {
                Some(line) => format!("{}:{line}", f.file.display()),
                None => f.file.display().to_string(),
            };
            [
                file,
                f.kind.as_str().to_string(),
                f.location.clone(),
                f.server.clone().unwrap_or_else(|| "-".to_string()),
                f.client.as_str().to_string(),
                f.fingerprint.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    if !rows.is_empty() {
        push_row(&mut out, &header.map(str::to_string), &widths);
        for row in &rows {
            push_row(&mut out, row, &widths);
        }
    }
    if !report.unreadable.is_empty() {
        out.push_str("\nnot scanned:\n");
        for u in &report.unreadable {
            let _ = writeln!(out, "  {}: {}", u.file.display(), u.reason);
        }
    }
    let _ = write!(
        out,
        "\n{} finding{} in {} file{} scanned",
        report.findings.len(),
        plural(report.findings.len()),
        report.files_scanned,
        plural(report.files_scanned)
    );
    if !report.unreadable.is_empty() {
        let _ = write!(out, ", {} not scanned", report.unreadable.len());
    }
    if report.truncated {
        out.push_str(" (truncated: a scan limit was reached)");
    }
    out.push('\n');
    out
}

fn push_row(out: &mut String, cells: &[String; 6], widths: &[usize; 6]) {
    let mut line = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i + 1 == cells.len() {
            line.push_str(cell);
        } else {
            let _ = write!(line, "{cell:<width$}  ");
        }
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The report's fields as JSON (`findings`, `unreadable`, `files_scanned`, `truncated`).
pub fn json(report: &Report) -> String {
    #[derive(Serialize)]
    struct JsonFinding<'a> {
        file: String,
        location: &'a str,
        server: Option<&'a str>,
        client: crate::Client,
        kind: Kind,
        fingerprint: &'a str,
        line: Option<u32>,
    }
    #[derive(Serialize)]
    struct JsonUnreadable<'a> {
        file: String,
        reason: &'a str,
    }
    #[derive(Serialize)]
    struct JsonReport<'a> {
        findings: Vec<JsonFinding<'a>>,
        unreadable: Vec<JsonUnreadable<'a>>,
        files_scanned: usize,
        truncated: bool,
    }
    let view = JsonReport {
        findings: report
            .findings
            .iter()
            .map(|f| JsonFinding {
                file: lossy(&f.file),
                location: &f.location,
                server: f.server.as_deref(),
                client: f.client,
                kind: f.kind,
                fingerprint: &f.fingerprint,
                line: f.line,
            })
            .collect(),
        unreadable: report
            .unreadable
            .iter()
            .map(|u| JsonUnreadable { file: lossy(&u.file), reason: &u.reason })
            .collect(),
        files_scanned: report.files_scanned,
        truncated: report.truncated,
    };
    // Only strings, numbers and booleans: serialising cannot fail.
    serde_json::to_string_pretty(&view).unwrap_or_default()
}

/// SARIF 2.1.0: one rule per `Kind`, a result (level `error`) per finding with its file URI and
/// start line, unreadable files as tool notifications.
pub fn sarif(report: &Report) -> String {
    let rules: Vec<Value> = Kind::ALL
        .iter()
        .map(|kind| {
            json!({
                "id": kind.as_str(),
                "name": kind.as_str(),
                "shortDescription": {"text": kind.describe()},
                "fullDescription": {"text": format!("{} stored in an MCP client's configuration. Move it to a secret store or let Warden broker the credential.", kind.describe())},
                "defaultConfiguration": {"level": "error"},
            })
        })
        .collect();
    let results: Vec<Value> = report.findings.iter().map(sarif_result).collect();
    let notifications: Vec<Value> = report
        .unreadable
        .iter()
        .map(|u| {
            json!({
                "level": "warning",
                "message": {"text": format!("not scanned: {}", u.reason)},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": file_uri(&u.file)}}}],
            })
        })
        .collect();
    let log = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "warden-scan",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "invocations": [{
                "executionSuccessful": true,
                "toolExecutionNotifications": notifications,
            }],
            "results": results,
        }],
    });
    serde_json::to_string_pretty(&log).unwrap_or_default()
}

fn sarif_result(f: &Finding) -> Value {
    let rule_index = Kind::ALL.iter().position(|k| *k == f.kind).unwrap_or(0);
    let mut physical = json!({"artifactLocation": {"uri": file_uri(&f.file)}});
    if let Some(line) = f.line.filter(|&l| l > 0) {
        physical["region"] = json!({"startLine": line});
    }
    let server = f.server.as_deref().map(|s| format!(" (server {s})")).unwrap_or_default();
    json!({
        "ruleId": f.kind.as_str(),
        "ruleIndex": rule_index,
        "level": "error",
        "message": {"text": format!("{} at {}{server}", f.kind.describe(), f.location)},
        "locations": [{
            "physicalLocation": physical,
            "logicalLocations": [{"fullyQualifiedName": f.location, "kind": "member"}],
        }],
        "partialFingerprints": {"wardenSecret/v1": f.fingerprint},
        "properties": {"client": f.client.as_str(), "server": f.server},
    })
}

fn lossy(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A `file://` URI for an absolute path; a relative URI reference otherwise. Bytes outside the
/// unreserved set (and `/`) are percent-encoded.
fn file_uri(path: &Path) -> String {
    let text = lossy(path).replace('\\', "/");
    let mut out = String::with_capacity(text.len() + 8);
    let absolute = text.starts_with('/');
    let windows_drive = text.as_bytes().get(1) == Some(&b':');
    if absolute {
        out.push_str("file://");
    } else if windows_drive {
        out.push_str("file:///");
    }
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') || (windows_drive && b == b':') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{Client, Unreadable};

    fn sample() -> Report {
        Report {
            findings: vec![Finding {
                file: PathBuf::from("/home/u/Library/Application Support/Claude/claude_desktop_config.json"),
                location: "mcpServers.github.env.GITHUB_TOKEN".into(),
                server: Some("github".into()),
                client: Client::ClaudeDesktop,
                kind: Kind::GithubToken,
                fingerprint: "00112233445566778899aabbccddeeff".into(),
                line: Some(7),
            }],
            unreadable: vec![Unreadable { file: PathBuf::from("x/mcp.json"), reason: "larger than 10 bytes".into() }],
            files_scanned: 3,
            truncated: true,
        }
    }

    #[test]
    fn table_lists_everything() {
        let t = table(&sample());
        assert!(t.contains("claude_desktop_config.json:7"));
        assert!(t.contains("github_token"));
        assert!(t.contains("mcpServers.github.env.GITHUB_TOKEN"));
        assert!(t.contains("x/mcp.json: larger than 10 bytes"));
        assert!(t.contains("1 finding in 3 files scanned, 1 not scanned (truncated"));
        assert_eq!(table(&Report::default()).trim(), "0 findings in 0 files scanned");
    }

    #[test]
    fn json_round_trips_into_a_report() {
        let report = sample();
        let back: Report = serde_json::from_str(&json(&report)).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn sarif_shape() {
        let log: Value = serde_json::from_str(&sarif(&sample())).unwrap();
        assert_eq!(log["version"], "2.1.0");
        let run = &log["runs"][0];
        assert_eq!(run["tool"]["driver"]["rules"].as_array().unwrap().len(), Kind::ALL.len());
        let result = &run["results"][0];
        assert_eq!(result["ruleId"], "github_token");
        assert_eq!(result["level"], "error");
        assert_eq!(
            run["tool"]["driver"]["rules"][result["ruleIndex"].as_u64().unwrap() as usize]["id"],
            "github_token"
        );
        let location = &result["locations"][0]["physicalLocation"];
        assert_eq!(
            location["artifactLocation"]["uri"],
            "file:///home/u/Library/Application%20Support/Claude/claude_desktop_config.json"
        );
        assert_eq!(location["region"]["startLine"], 7);
        assert_eq!(run["invocations"][0]["toolExecutionNotifications"][0]["level"], "warning");
    }

    #[test]
    fn uris() {
        assert_eq!(file_uri(Path::new("rel/a b.json")), "rel/a%20b.json");
        assert_eq!(file_uri(Path::new("C:\\Users\\u\\.cursor\\mcp.json")), "file:///C:/Users/u/.cursor/mcp.json");
    }
}
