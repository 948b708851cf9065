//! The secret inventory end to end: agents scan directories of MCP configuration (a generated
//! corpus of every client's files with fake credentials planted), the control plane keeps what
//! they report, and `wardenctl get findings` shows it — where each secret is, never what it is.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use tests::{Fleet, bin, contains_bytes, every_file, wait_for_or};

/// (file, location, kind) of each finding in a `get findings -o json` or `scan -o json` list.
fn places(findings: &[Value], file_key: &str) -> BTreeSet<(String, String, String)> {
    findings
        .iter()
        .map(|f| {
            let text = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (text(file_key), text("location"), text("kind"))
        })
        .collect()
}

#[test]
fn agents_report_the_secrets_on_their_hosts_without_their_values_and_removed_ones_go() {
    let builder = Fleet::builder().agents(2);
    // Outside the fleet's directory, so the search for values below covers only what Warden
    // wrote: the corpus itself holds them, of course.
    let hosts = tempfile::tempdir().expect("corpus dir");
    let corpus = warden_scan_corpus::generate(rand::random(), 1);
    corpus.write(hosts.path()).expect("write corpus");
    let root = hosts.path().to_str().expect("utf-8 path").to_string();
    let metrics_addr = tests::loopback_addr();
    // The findings' events reach an OTLP backend as logs.
    let receiver = tests::otlp::OtlpReceiver::start(tests::otlp::Protocol::HttpProtobuf);
    let endpoint = format!("http://{}", receiver.address);
    let mut fleet = builder
        .cp_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])
        .cp_flags(&["--metrics-listen", &metrics_addr, "--metrics-new-series-delay", "0s"])
        .agent_flags(&["--scan-path", &root, "--scan-watch-interval", "1s", "--scan-interval", "1h"])
        .start();

    // The scanner on its own, as a pre-commit hook runs it: exit 1, and what it finds.
    let scan = Command::new(bin("warden-agent")).args(["scan", "-o", "json", &root]).output().expect("scan runs");
    assert_eq!(scan.status.code(), Some(1), "findings make `scan` exit 1: {}", String::from_utf8_lossy(&scan.stderr));
    let scanned: Value = serde_json::from_slice(&scan.stdout).expect("scan -o json is JSON");
    let local = places(scanned["findings"].as_array().expect("findings"), "file");
    let planted: BTreeSet<(String, String, String)> = corpus
        .planted
        .iter()
        .map(|p| (hosts.path().join(&p.file).display().to_string(), p.location.clone(), p.kind.as_str().to_string()))
        .collect();
    assert!(planted.len() >= warden_scan::Kind::ALL.len(), "a corpus of every kind: {} planted", planted.len());
    let found = planted.intersection(&local).count();
    assert!(
        found * 100 >= planted.len() * 98,
        "the scanner finds at least 98% of what was planted: {found} of {}",
        planted.len()
    );

    // Both agents report the same directory: the control plane lists every finding of each,
    // exactly what the scanner finds, and one secret has one fingerprint on both hosts.
    let listed = wait_for_or(
        "both agents' findings at the control plane",
        || fleet.agent().log_text(),
        || {
            let answer = fleet.cp.ctl_json(&["get", "findings"]);
            let findings = answer["findings"].as_array()?.clone();
            let per_host =
                |h: &str| places(&findings.iter().filter(|f| f["host"] == h).cloned().collect::<Vec<_>>(), "file");
            (per_host("agent-0") == local && per_host("agent-1") == local).then_some(findings)
        },
    );
    for f in listed.iter().filter(|f| f["host"] == "agent-0") {
        let twin = listed
            .iter()
            .find(|o| o["host"] == "agent-1" && o["file"] == f["file"] && o["location"] == f["location"])
            .expect("the same finding on the other host");
        assert_eq!(twin["fingerprint"], f["fingerprint"], "one secret, one fingerprint fleet-wide");
        assert_eq!(f["state"], "open");
        let fingerprint = f["fingerprint"].as_str().unwrap_or_default();
        assert!(fingerprint.len() == 32 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()), "{fingerprint}");
    }
    // The open secrets by kind on /metrics, counted over both hosts.
    let metrics = ureq::get(&format!("http://{metrics_addr}/metrics"))
        .call()
        .expect("/metrics")
        .body_mut()
        .read_to_string()
        .expect("text");
    let mut by_kind = std::collections::BTreeMap::<&str, usize>::new();
    for f in &listed {
        *by_kind.entry(f["kind"].as_str().unwrap_or_default()).or_default() += 1;
    }
    for (kind, n) in by_kind {
        assert!(
            metrics.contains(&format!("warden_secrets_open{{warden_secret_kind=\"{kind}\"}} {n}\n")),
            "{kind} {n}:\n{metrics}"
        );
    }
    let table = fleet.cp.ctl_ok(&["get", "findings", "--host", "agent-1", "--state", "open"]);
    assert!(table.contains("agent-1") && !table.contains("agent-0"), "filtered by host:\n{table}");

    // Removed from its file: gone at the next scan (the file changed), the rest stay open.
    // A GitHub token when the corpus (random seed) planted one, else whatever it planted first.
    let removed = corpus
        .planted
        .iter()
        .find(|p| p.kind.as_str() == "github_token")
        .or_else(|| corpus.planted.first())
        .expect("a planted secret");
    let file = hosts.path().join(&removed.file);
    let text = std::fs::read_to_string(&file).expect("read planted file");
    std::fs::write(&file, text.replace(&removed.secret, "${GITHUB_TOKEN}")).expect("rewrite");
    let path = file.display().to_string();
    wait_for_or(
        "the removed secret to show as gone",
        || fleet.agent().log_text(),
        || {
            let answer = fleet.cp.ctl_json(&["get", "findings", "--host", "agent-0", "--kind", removed.kind.as_str()]);
            let findings = answer["findings"].as_array()?.clone();
            let this =
                findings.iter().find(|f| f["file"] == path.as_str() && f["location"] == removed.location.as_str())?;
            (this["state"] == "gone").then_some(())
        },
    );
    // Every finding of both hosts was an event ("found"), and the removed one's going on each
    // host (both scan the same directory) is too.
    let events = |state: &str| -> BTreeSet<(String, String, String)> {
        receiver
            .logs()
            .iter()
            .filter(|l| {
                l.record.event_name == "warden.finding" && l.attribute("warden.finding.state").as_deref() == Some(state)
            })
            .map(|l| {
                let text = |k: &str| l.attribute(k).unwrap_or_default();
                (text("warden.agent"), text("warden.finding.file"), text("warden.finding.location"))
            })
            .collect()
    };
    let found_on = |host: &str| -> BTreeSet<(String, String, String)> {
        listed
            .iter()
            .filter(|f| f["host"] == host)
            .map(|f| {
                (
                    host.to_string(),
                    f["file"].as_str().unwrap_or_default().into(),
                    f["location"].as_str().unwrap_or_default().into(),
                )
            })
            .collect()
    };
    let everything: BTreeSet<_> = found_on("agent-0").union(&found_on("agent-1")).cloned().collect();
    wait_for_or(
        "the findings' events at the OTLP receiver",
        || fleet.cp.process.as_ref().map(|p| p.log_text()).unwrap_or_default(),
        || {
            (events("open") == everything
                && events("gone")
                    == ["agent-0", "agent-1"].map(|h| (h.to_string(), path.clone(), removed.location.clone())).into())
            .then_some(())
        },
    );
    let open = fleet.cp.ctl_json(&["get", "findings", "--host", "agent-0", "--state", "open"]);
    assert_eq!(open["findings"].as_array().map(Vec::len), Some(local.len() - 1), "only the removed one is gone");

    // No planted value anywhere Warden wrote: data directories, stores, logs, CLI outputs.
    let mut outputs = vec![
        scan.stdout.clone(),
        Command::new(bin("warden-agent")).args(["scan", "-o", "sarif", &root]).output().expect("sarif").stdout,
        Command::new(bin("warden-agent")).args(["scan", &root]).output().expect("table").stdout,
        fleet.cp.ctl(&["get", "findings", "-o", "json"]).stdout,
        fleet.cp.ctl(&["get", "findings"]).stdout,
        format!("{:?}", receiver.logs()).into_bytes(),
    ];
    for agent in &mut fleet.agents {
        agent.stop();
    }
    fleet.cp.stop();
    let mut written = every_file(fleet.dir.path());
    written.extend(outputs.drain(..).enumerate().map(|(i, o)| (format!("output {i}").into(), o)));
    assert!(written.len() > 10, "the fleet wrote its stores and logs");
    for planted in &corpus.planted {
        for (path, bytes) in &written {
            assert!(
                !contains_bytes(bytes, planted.secret.as_bytes()),
                "a planted {} value appears in {}",
                planted.kind.as_str(),
                path.display()
            );
        }
    }
}
