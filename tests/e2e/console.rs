//! The read-only console, as a browser shows it: pages served by the real control plane, loaded
//! in Debian's Chromium (headless), with a subject chosen to be markup; screenshots are kept in
//! `target/test-artifacts/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use tests::{bin, loopback_addr};

use super::decisions::Fleet;

/// The DOM Chromium builds from `url` (scripts would run; the console has none).
fn browse(url: &str, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = Command::new("chromium");
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1280,900",
        &format!("--user-data-dir={}", profile.path().display()),
    ]);
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    let out = command.arg(url).output().expect("chromium runs (Debian's `chromium` package)");
    assert!(out.status.success(), "chromium {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The rows of the decisions table in `dom`, as their cells' text.
fn rows(dom: &str) -> Vec<Vec<String>> {
    let Some(body) = dom.split("<tbody>").nth(1).and_then(|b| b.split("</tbody>").next()) else { return Vec::new() };
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let inner = cell.split_once('>').map_or("", |(_, rest)| rest);
                    let inner = inner.split("</td>").next().unwrap_or("");
                    // Text without tags.
                    let mut text = String::new();
                    let mut in_tag = false;
                    for c in inner.chars() {
                        match c {
                            '<' => in_tag = true,
                            '>' => in_tag = false,
                            c if !in_tag => text.push(c),
                            _ => {}
                        }
                    }
                    // As the browser shows it: entities decoded.
                    text.replace("&lt;", "<")
                        .replace("&gt;", ">")
                        .replace("&quot;", "\"")
                        .replace("&#39;", "'")
                        .replace("&amp;", "&")
                })
                .collect()
        })
        .collect()
}

#[test]
fn the_console_shows_the_fleet_and_decisions_filtered_and_explained_in_a_browser() {
    let console = loopback_addr();
    let fleet = Fleet::start_with(&[], &["--console-listen", &console], &[], &[]);
    let alice = fleet.token("alice", "jti-console-a", -5, 300);
    let marked = fleet.token("<img src=x onerror=alert(1)>", "jti-console-m", -5, 300);
    fleet.call(Some(&alice), "echo");
    fleet.call(Some(&alice), "delete_repository");
    fleet.call(Some(&marked), "delete_repository");
    let all = fleet.wait_for_decisions(3);
    let base = format!("http://{console}");

    // The fleet: the agent, connected, on the current version.
    let dom = browse(&format!("{base}/"), None);
    assert!(dom.contains(&format!("Configuration version <strong>{}</strong>", fleet.cp.version())), "{dom}");
    let agents = rows(&dom);
    assert_eq!(agents.len(), 1, "{dom}");
    assert_eq!((agents[0][0].as_str(), agents[0][2].as_str(), agents[0][4].as_str()), ("agent-d", "yes", "0"));

    // Decisions, newest first, and filtered as a form submits them.
    let dom = browse(&format!("{base}/decisions"), None);
    let listed = rows(&dom);
    assert_eq!(listed.len(), all.len(), "{dom}");
    let subjects: Vec<&str> = listed.iter().map(|r| r[6].as_str()).collect();
    assert_eq!(subjects, ["<img src=x onerror=alert(1)>", "alice", "alice"], "shown as text, newest first");
    assert!(!dom.contains("<img src=\"x\""), "a subject never becomes markup: {dom}");
    let dom = browse(&format!("{base}/decisions?subject=alice&decision=deny"), None);
    let denied = rows(&dom);
    assert_eq!(denied.len(), 1, "{dom}");
    assert_eq!(
        (denied[0][5].as_str(), denied[0][7].as_str(), denied[0][8].as_str()),
        ("delete_repository", "deny", "policy_denied")
    );
    assert!(dom.contains(r#"<option value="deny" selected="">deny</option>"#), "the filter stays chosen: {dom}");

    // One decision explained.
    let cursor = &denied[0][0];
    let dom = browse(&format!("{base}/decisions/{cursor}"), None);
    assert!(dom.contains("What policy saw"), "{dom}");
    assert!(dom.contains("echo-only.0 permit"), "{dom}");
    assert!(dom.contains("What would allow it"), "{dom}");
    assert!(
        dom.contains(
            r#"echo-only.0 would permit it with "delete_repository" added to the list ["echo", "seen_headers"]"#
        ),
        "{dom}"
    );

    // Resources, and a decision that is not there.
    let dom = browse(&format!("{base}/resources"), None);
    assert!(dom.contains("echo-only") && dom.contains("McpServer"), "{dom}");
    let missing =
        ureq::get(&format!("{base}/decisions/999999")).config().http_status_as_error(false).build().call().unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    assert!(missing.into_body().read_to_string().unwrap().contains("no stored decision 999999"));
    // A page of another site whose name resolves to 127.0.0.1 (DNS rebinding) is refused.
    let rebound = ureq::get(&format!("{base}/decisions"))
        .header("host", "evil.example")
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(rebound.status().as_u16(), 403);

    // The change history, the stored secrets (none reported here) and the scorecard.
    let dom = browse(&format!("{base}/history"), None);
    let changes = rows(&dom);
    assert!(
        changes.iter().any(|r| r[3] == "apply" && r[4] == "Policy" && r[5] == "echo-only" && r[6] == "new"),
        "{dom}"
    );
    // A change to the policy, line by line: what it was, what it is.
    fleet.cp.apply_ok(
        r#"
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: echo-only}
spec:
  servers: [notes]
  cedar: |
    permit(principal, action == Action::"tools/call", resource) when { ["echo", "seen_headers", "add"].contains(resource.name) };
    permit(principal, action == Action::"tools/list", resource);
"#,
    );
    let version = fleet.cp.version();
    let dom = browse(&format!("{base}/history"), None);
    let change = format!("/history/{version}/Policy/echo-only");
    assert!(dom.contains(&format!(r#"<a href="{change}""#)), "a link to what changed: {dom}");
    let dom = browse(&format!("{base}{change}"), None);
    assert!(
        dom.contains(
            r#"<del>-     permit(principal, action == Action::"tools/call", resource) when { ["echo", "seen_headers"]"#
        ),
        "{dom}"
    );
    assert!(dom.contains(r#"<ins>+     permit(principal, action == Action::"tools/call", resource) when { ["echo", "seen_headers", "add"]"#), "{dom}");
    assert!(
        dom.contains(r#"<span>      permit(principal, action == Action::"tools/list", resource);</span>"#),
        "unchanged lines stay: {dom}"
    );
    // Its creation: every line added.
    let created = rows(&browse(&format!("{base}/history"), None))
        .into_iter()
        .find(|r| r[4] == "Policy" && r[5] == "echo-only" && r[6] == "new")
        .expect("the policy's creation");
    let dom = browse(&format!("{base}/history/{}/Policy/echo-only", created[0]), None);
    assert!(dom.contains("<ins>+ kind: Policy</ins>") && !dom.contains("<del>"), "{dom}");
    let missing = ureq::get(&format!("{base}/history/{version}/Policy/nothing"))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);

    let dom = browse(&format!("{base}/findings"), None);
    assert!(dom.contains("No agent has reported a stored secret."), "{dom}");
    let dom = browse(&format!("{base}/scorecard"), None);
    assert!(dom.contains("3 requests: 100.0% on a validated token"), "{dom}");
    assert!(dom.contains("<tr><td>notes</td><td>3</td><td>100.0%</td>"), "{dom}");

    // More decisions than a page holds: the newest page links to the older ones, which hold
    // the rest, and every decision is on exactly one of them.
    for _ in 0..105 {
        fleet.call(Some(&alice), "echo");
    }
    let all = fleet.wait_for_decisions(108);
    let dom = browse(&format!("{base}/decisions?subject=alice"), None);
    let newest = rows(&dom);
    assert_eq!(newest.len(), 100, "{dom}");
    let older = dom
        .split("href=\"/decisions?")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(|q| q.replace("&amp;", "&"))
        .unwrap_or_else(|| panic!("a link to older decisions: {dom}"));
    assert!(older.starts_with("subject=alice&before="), "{older}");
    let dom = browse(&format!("{base}/decisions?{older}"), None);
    let rest = rows(&dom);
    let alices = all.iter().filter(|d| d["subject"] == "alice").count();
    assert_eq!(newest.len() + rest.len(), alices, "{dom}");
    let cursors: std::collections::HashSet<&String> = newest.iter().chain(&rest).map(|r| &r[0]).collect();
    assert_eq!(cursors.len(), alices, "no decision on both pages");
    assert!(!dom.contains("Older decisions"), "the last page links no further: {dom}");

    // Screenshots, kept for people to look at.
    for (name, path) in [
        ("fleet", "/"),
        ("decisions", "/decisions"),
        ("explain", &format!("/decisions/{cursor}")[..]),
        ("history", "/history"),
        ("change", &change[..]),
        ("scorecard", "/scorecard"),
    ] {
        let file = artifacts().join(format!("console-{name}.png"));
        let _ = std::fs::remove_file(&file);
        browse(&format!("{base}{path}"), Some(&file));
        assert!(std::fs::metadata(&file).map(|m| m.len() > 10_000).unwrap_or(false), "{} written", file.display());
    }
}

#[test]
fn the_console_listens_on_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("warden-cp"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen",
            &loopback_addr(),
            "--console-listen",
            "0.0.0.0:7499",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a loopback address"), "{stderr}");
}

#[test]
fn with_console_mtls_only_operators_certificates_read_the_console() {
    use tests::{Agent, ControlPlane};
    let dir = tempfile::tempdir().unwrap();
    let console = loopback_addr();
    // Reached by a DNS name, as operators would: the serving certificate names it.
    let cp = ControlPlane::start(
        dir.path(),
        &["--console-listen", &console, "--console-mtls", "--server-name", "console.test"],
    );
    let creds = dir.path().join("alice");
    cp.ctl_ok(&["operator-cert", "create", "--name", "alice", "--out", creds.to_str().unwrap(), "--ttl", "1h"]);
    let (host, port) = console.rsplit_once(':').unwrap();
    // (status, body, curl's exit code)
    let get = |client: Option<(&Path, &Path)>, path: &str, headers: &[&str]| {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
            .arg(creds.join("ca.crt"))
            .args(["--connect-to", &format!("console.test:{port}:{host}:{port}")]);
        if let Some((cert, key)) = client {
            curl.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        for header in headers {
            curl.args(["-H", header]);
        }
        let out = curl.arg(format!("https://console.test:{port}{path}")).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_string(), body.to_string(), out.status.code().unwrap_or(-1))
    };
    let alice = (creds.join("operator.crt"), creds.join("operator.key"));
    let alice = Some((alice.0.as_path(), alice.1.as_path()));

    let (code, body, _) = get(alice, "/", &[]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("<h1>Fleet</h1>"), "{body}");
    let (code, _, _) = get(alice, "/resources", &["Sec-Fetch-Site: same-origin"]);
    assert_eq!(code, "200", "the console's own links");

    // A browser sends the client certificate with other sites' requests too: refused.
    for site in ["cross-site", "same-site"] {
        let (code, body, _) = get(alice, "/", &[&format!("Sec-Fetch-Site: {site}")]);
        assert_eq!(code, "403", "{site}: {body}");
    }

    // No client certificate: the TLS handshake is refused (the connection itself was made).
    let (code, _, exit) = get(None, "/", &[]);
    assert_eq!(code, "000");
    assert!(exit != 0 && exit != 7, "a TLS failure, not a refused connection: curl exit {exit}");
    // Plain HTTP on the console's port gets no page either.
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{console}/")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000");
    assert_ne!(plain.status.code(), Some(7), "the console listens");

    // An agent's certificate is a fleet certificate too, but not an operator's.
    let token = cp.join_token("5m", "agent-0");
    let agent = Agent::start(dir.path(), "agent-0", &[&cp.address], Some(&token));
    let (cert, key) = (agent.data_dir.join("agent.crt"), agent.data_dir.join("agent.key"));
    tests::wait_for("the agent's certificate", || (cert.exists() && key.exists()).then_some(()));
    let (code, body, _) = get(Some((&cert, &key)), "/", &[]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("operators"), "{body}");

    // Alice's certificate is revoked: refused from the next request on.
    cp.ctl_ok(&["operator-cert", "revoke", "--name", "alice"]);
    let (code, body, _) = get(alice, "/", &[]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("revoked"), "{body}");
}

#[test]
fn the_console_can_present_a_certificate_from_the_organisations_ca() {
    let dir = tempfile::tempdir().unwrap();
    let console = loopback_addr();
    let ip: std::net::IpAddr = console.rsplit_once(':').unwrap().0.parse().unwrap();
    // The organisation's CA, which operators' browsers already trust; its certificate names the
    // console's address.
    let org = tests::TestCa::new();
    let (cert_pem, key_pem) = org.issue(&[ip], Some(rcgen::ExtendedKeyUsagePurpose::ServerAuth), "console");
    let (org_ca, cert, key) =
        (dir.path().join("org-ca.crt"), dir.path().join("console.crt"), dir.path().join("console.key"));
    std::fs::write(&org_ca, &org.pem).unwrap();
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let flags = ["--console-listen", &console, "--console-mtls", "--console-tls-cert", cert.to_str().unwrap()];
    let cp =
        tests::ControlPlane::start(dir.path(), &[&flags[..], &["--console-tls-key", key.to_str().unwrap()]].concat());
    let creds = dir.path().join("alice");
    cp.ctl_ok(&["operator-cert", "create", "--name", "alice", "--out", creds.to_str().unwrap(), "--ttl", "1h"]);
    let get = |trust: &Path, client: bool| {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"]).arg(trust);
        if client {
            curl.arg("--cert").arg(creds.join("operator.crt")).arg("--key").arg(creds.join("operator.key"));
        }
        let out = curl.arg(format!("https://{console}/")).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(get(&org_ca, true), "200", "trusted through the organisation's CA, the operator reads it");
    assert_eq!(get(&creds.join("ca.crt"), true), "000", "the fleet CA did not sign what it presents");
    assert_eq!(get(&org_ca, false), "000", "client certificates are still required");

    // A file that holds no certificate is a clear error at start, and nothing is served.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("console.crt"), "not a certificate").unwrap();
    let out = Command::new(bin("warden-cp"))
        .arg("--data-dir")
        .arg(bad.join("cp"))
        .args(["--listen", &loopback_addr(), "--console-listen", &loopback_addr(), "--console-mtls"])
        .arg("--console-tls-cert")
        .arg(bad.join("console.crt"))
        .arg("--console-tls-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the console's certificate"), "{stderr}");
}
