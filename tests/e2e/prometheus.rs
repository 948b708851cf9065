//! Telemetry as an operator sees it. Debian's Prometheus scrapes the real binaries directly, a
//! second one scrapes a Collector's Prometheus exporter fed by their OTLP export (a stand-in:
//! `tests::collector`); traffic with known counts goes through the gateway, a single dropped
//! record and a single token refusal among it; every Prometheus expression of the shipped
//! Grafana dashboard is evaluated on both and compared with what the traffic implies; the shipped
//! alerting rules pass `promtool`, and each alert goes pending when its condition is made to
//! happen on the real binaries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tests::collector::PrometheusExporter;
use tests::{Process, loopback_addr, wait_for_or};

use crate::decisions::Fleet;

fn telemetry_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/telemetry")
}

/// Debian's `prometheus` package's binaries (`.ci/run` installs it).
fn installed(tool: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(tool);
    assert!(path.exists(), "{tool} is not installed: apt-get install -y prometheus");
    path
}

type Labels = BTreeMap<String, String>;

/// A Prometheus server on a loopback port, scraping and evaluating rules every second.
struct Prometheus {
    name: &'static str,
    process: Process,
    address: String,
    http: ureq::Agent,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts one with `scrape_configs` (YAML list items) and the shipped alerting rules.
    fn start(name: &'static str, scrape_configs: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = telemetry_dir().join("alerts.yaml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n{scrape_configs}",
            rules.display()
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let address = loopback_addr();
        let mut command = Command::new(installed("prometheus"));
        command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={address}"));
        let process = Process::spawn(command, dir.path().join("prometheus.log"));
        let http: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let prometheus = Prometheus { name, process, address, http, _dir: dir };
        wait_for_or(
            &format!("the {name} Prometheus to be ready"),
            || prometheus.process.log_text(),
            || {
                let ready = prometheus.http.get(&format!("http://{}/-/ready", prometheus.address)).call().ok()?;
                (ready.status() == 200).then_some(())
            },
        );
        prometheus
    }

    fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let mut request = self.http.get(&format!("http://{}{path}", self.address));
        for (k, v) in query {
            request = request.query(*k, *v);
        }
        let mut response = request.call().unwrap_or_else(|e| panic!("{} Prometheus {path}: {e}", self.name));
        let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(body["status"], "success", "{} Prometheus {path} {query:?}: {body}", self.name);
        body["data"].clone()
    }

    /// The instant vector (or scalar) `expr` gives at `time` (unix seconds); an invalid
    /// expression fails the test, naming it.
    fn query_at(&self, expr: &str, time: f64) -> Vec<(Labels, f64)> {
        let data = self.get("/api/v1/query", &[("query", expr), ("time", &format!("{time:.3}"))]);
        let number = |v: &Value| v[1].as_str().unwrap().parse::<f64>().unwrap();
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (serde_json::from_value(r["metric"].clone()).unwrap(), number(&r["value"])))
                .collect(),
            Some("scalar") => vec![(Labels::new(), number(&data["result"]))],
            other => panic!("{expr}: a {other:?} result"),
        }
    }

    fn query(&self, expr: &str) -> Vec<(Labels, f64)> {
        self.query_at(expr, now())
    }

    /// The one value of `expr` now, if it has exactly one series.
    fn value(&self, expr: &str) -> Option<f64> {
        match self.query(expr).as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }

    /// Alerts pending or firing now: (name, labels, state).
    fn alerts(&self) -> Vec<(String, Labels, String)> {
        let data = self.get("/api/v1/alerts", &[]);
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let mut labels: Labels = serde_json::from_value(a["labels"].clone()).unwrap();
                let name = labels.remove("alertname").unwrap_or_default();
                labels.remove("severity");
                (name, labels, a["state"].as_str().unwrap().to_string())
            })
            .collect()
    }

    /// Waits until the alert `name` with (at least) `labels` is pending or firing.
    fn wait_for_alert(&self, name: &str, labels: &[(&str, &str)]) -> String {
        wait_for_or(
            &format!("{name} {labels:?} on the {} Prometheus", self.name),
            || format!("{:?}", self.alerts()),
            || {
                self.alerts().into_iter().find_map(|(n, l, state)| {
                    (n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))).then_some(state)
                })
            },
        )
    }

    /// Every `warden_*` family stored, with its label names (those of the scrape target left out).
    fn families(&self) -> BTreeMap<String, BTreeSet<String>> {
        let data = self.get("/api/v1/series", &[("match[]", r#"{__name__=~"warden_.+"}"#)]);
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for series in data.as_array().unwrap() {
            let labels = series.as_object().unwrap();
            let series_name = labels["__name__"].as_str().unwrap();
            // A histogram's series are one family (all of Warden's are in seconds).
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| series_name.strip_suffix(suffix).filter(|base| base.ends_with("_seconds")))
                .unwrap_or(series_name)
                .to_string();
            let names = out.entry(name).or_default();
            for key in labels.keys() {
                if !["__name__", "job", "instance", "otel_scope_name", "otel_scope_version", "le"]
                    .contains(&key.as_str())
                {
                    names.insert(key.clone());
                }
            }
        }
        out
    }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// What a series of a panel should read.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// This, give or take Prometheus's extrapolation to the ends of a range (a few percent).
    About(f64),
    /// Within these bounds (a latency, a count of retries).
    Between(f64, f64),
}

impl Want {
    fn holds(self, value: f64) -> bool {
        match self {
            Want::About(v) => (value - v).abs() <= 0.06 * v.abs() + 1e-9,
            Want::Between(lo, hi) => (lo..=hi).contains(&value),
        }
    }
}

fn series(labels: &[(&str, &str)], want: Want) -> (Labels, Want) {
    (labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), want)
}

/// Every Prometheus expression of the shipped dashboard: (panel title, refId, expression), with
/// Grafana's `$__range` as the ten minutes that hold the whole test.
fn dashboard_expressions() -> Vec<(String, String, String)> {
    let path = telemetry_dir().join("grafana/dashboards/warden.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["datasource"]["type"] != "prometheus" {
            continue;
        }
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$__range", "10m");
            out.push((panel["title"].as_str().unwrap().into(), target["refId"].as_str().unwrap().into(), expr));
        }
    }
    out
}

fn metrics_text(address: &str) -> String {
    ureq::get(&format!("http://{address}/metrics")).call().unwrap().body_mut().read_to_string().unwrap()
}

fn signal(process: &Process, signal: &str) {
    let status = Command::new("kill").args([&format!("-{signal}"), &process.pid().to_string()]).status().unwrap();
    assert!(status.success(), "kill -{signal}");
}

/// The agent's own count of dropped decision records.
fn agent_dropped(fleet: &Fleet) -> f64 {
    let text = metrics_text(&fleet.agent().status_addr);
    let line = text.lines().find(|l| l.starts_with("warden_agent_decision_records_dropped_total ")).unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Waits until the agent's outbox is empty: every record it made is at the control plane.
fn drained(fleet: &Fleet) {
    wait_for_or(
        "the agent's outbox to drain",
        || metrics_text(&fleet.agent().status_addr),
        || {
            let text = metrics_text(&fleet.agent().status_addr);
            let empty = ["warden_agent_decision_queue_records 0", "warden_agent_decision_spool_records 0"];
            empty.iter().all(|line| text.lines().any(|l| l == *line)).then_some(())
        },
    );
}

#[test]
fn the_dashboard_and_alerts_read_what_the_fleet_did_on_both_metric_paths() {
    let exporter = PrometheusExporter::start();
    let metrics_addr = loopback_addr();
    let nowhere = loopback_addr(); // nothing listens: the control plane's log export fails
    let (metrics_endpoint, logs_endpoint) = (exporter.metrics_endpoint(), format!("http://{nowhere}/v1/logs"));
    let cp_env = [
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics_endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", logs_endpoint.as_str()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
    ];
    let agent_env =
        [("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics_endpoint.as_str()), ("OTEL_METRIC_EXPORT_INTERVAL", "1000")];
    // Small outbox bounds, so that a paused control plane makes a drop within a few calls.
    let agent_flags = ["--decision-memory-records", "16", "--decision-spool-records", "8"];
    // Serving certificates of 10 days: less than the 14 days the expiry alert looks at, but
    // renewed on time, so it stays quiet.
    let cp_flags = ["--metrics-listen", &metrics_addr, "--metrics-new-series-delay", "5s", "--serving-cert-ttl", "10d"];
    let mut fleet = Fleet::start_with(&agent_flags, &cp_flags, &cp_env, &agent_env);
    // An issuer whose keys cannot be fetched.
    fleet.cp.apply_ok(&format!(
        "apiVersion: warden.dev/v1\nkind: TrustedIssuer\nmetadata: {{name: broken-idp}}\nspec:\n  issuer: https://{nowhere}/broken\n  keys: {{discovery: true}}\n  allowedAlgorithms: [ES256]\n"
    ));

    let direct = Prometheus::start(
        "direct",
        &format!(
            "  - job_name: warden-cp\n    static_configs: [{{targets: [\"{metrics_addr}\"]}}]\n  - job_name: warden-agent\n    static_configs: [{{targets: [\"{}\"]}}]\n",
            fleet.agent().status_addr
        ),
    );
    let collector = Prometheus::start(
        "collector",
        &format!(
            "  - job_name: otel-collector\n    honor_labels: true\n    static_configs: [{{targets: [\"{}\"]}}]\n",
            exporter.address
        ),
    );
    let both = [&direct, &collector];
    let scraping_since = std::time::Instant::now();
    // Before any traffic, both hold the zeros the first events will be counted from.
    for p in both {
        for expr in [
            r#"warden_decisions_total{warden_server="notes",warden_decision="deny",warden_reason="expired"}"#,
            r#"warden_fleet_agent_decision_records_dropped_total{warden_agent="agent-d"}"#,
            "warden_agent_decision_records_dropped_total",
        ] {
            wait_for_or(&format!("{expr} at 0 on the {} Prometheus", p.name), String::new, || {
                (p.value(expr)? == 0.0).then_some(())
            });
        }
    }

    // The traffic: 6 allowed calls, 3 denied by policy, one expired token, one revocation.
    let alice = fleet.token("alice", "jti-prometheus", -10, 600);
    for _ in 0..6 {
        fleet.call(Some(&alice), "echo");
    }
    for _ in 0..3 {
        fleet.call(Some(&alice), "delete_repository");
    }
    let expired = fleet.token("alice", "jti-expired", -700, -100);
    assert_eq!(fleet.call(Some(&expired), "echo"), 401);
    fleet.cp.ctl_ok(&["revoke", "--issuer", "test-idp", "--jti", "jti-never-used"]);
    fleet.wait_for_decisions(6 + 3 + 1);

    // A single drop: with the control plane paused, records pile up until one does not fit.
    signal(fleet.cp.process.as_ref().unwrap(), "STOP");
    let mut paused_calls = 0;
    while agent_dropped(&fleet) < 1.0 {
        fleet.call(Some(&alice), "echo");
        paused_calls += 1;
        assert!(paused_calls < 200, "no drop after {paused_calls} calls");
    }
    signal(fleet.cp.process.as_ref().unwrap(), "CONT");
    assert_eq!(agent_dropped(&fleet), 1.0);
    drained(&fleet);

    // A spike of denies, in bursts the small outbox holds.
    for burst in 0..5 {
        for _ in 0..8 {
            fleet.call(Some(&alice), "wipe");
        }
        if burst < 4 {
            drained(&fleet);
        }
    }
    let allowed = 6 + paused_calls - 1;
    let total = allowed + 3 + 1 + 40;
    wait_for_or(
        "every record stored, and the drop reported",
        || fleet.summary().to_string(),
        || {
            let s = fleet.summary();
            (s["decisions"] == total && s["agents"][0]["dropped"] == 1).then_some(())
        },
    );
    // Both have scraped the final counts, the new tool series past their zero.
    for p in both {
        for (expr, want) in [
            ("sum(warden_decisions_total)", total as f64),
            (r#"sum(warden_target_decisions_total{warden_target="wipe"})"#, 40.0),
            ("sum(warden_fleet_agent_decision_records_dropped_total)", 1.0),
            ("sum(warden_agent_decision_records_dropped_total)", 1.0),
        ] {
            wait_for_or(
                &format!("{expr} = {want} on the {} Prometheus", p.name),
                || p.process.log_text(),
                || (p.value(expr)? == want).then_some(()),
            );
        }
    }

    // What each panel should read, from the traffic.
    let (allowed, total) = (allowed as f64, total as f64);
    let per_second = |n: f64| Want::About(n / 300.0);
    let version = fleet.cp.version() as f64;
    let expected: BTreeMap<(&str, &str), Vec<(Labels, Want)>> = BTreeMap::from([
        (("Agents connected", "A"), vec![series(&[], Want::About(1.0))]),
        (("Agents disconnected", "A"), vec![series(&[], Want::About(0.0))]),
        (("Configuration version", "A"), vec![series(&[], Want::About(version))]),
        (("Decision records dropped (1 h)", "A"), vec![series(&[], Want::About(1.0))]),
        (("Records dropped at the agents (1 h)", "A"), vec![series(&[], Want::About(1.0))]),
        (("Deny share (5 m)", "A"), vec![series(&[], Want::About(44.0 / total))]),
        (
            ("Decisions per second", "A"),
            vec![
                series(&[("warden_decision", "allow")], per_second(allowed)),
                series(&[("warden_decision", "deny")], per_second(44.0)),
            ],
        ),
        (
            ("Denies per second by reason", "A"),
            vec![
                series(&[("warden_reason", "policy_denied")], per_second(43.0)),
                series(&[("warden_reason", "expired")], per_second(1.0)),
            ],
        ),
        (
            ("Top denied tools", "A"),
            vec![
                series(&[("warden_server", "notes"), ("warden_target", "wipe")], Want::About(40.0)),
                series(&[("warden_server", "notes"), ("warden_target", "delete_repository")], Want::About(3.0)),
            ],
        ),
        (("Decision latency", "A"), vec![series(&[], Want::Between(1e-6, 1.0))]),
        (("Decision latency", "B"), vec![series(&[], Want::Between(1e-6, 1.0))]),
        (
            ("Decisions per agent", "A"),
            vec![
                series(&[("warden_agent", "agent-d"), ("warden_decision", "allow")], per_second(allowed)),
                series(&[("warden_agent", "agent-d"), ("warden_decision", "deny")], per_second(44.0)),
            ],
        ),
        (("Configuration lag (versions behind)", "A"), vec![series(&[("warden_agent", "agent-d")], Want::About(0.0))]),
        (
            ("Issuers failing to refresh keys", "A"),
            vec![series(&[("warden_issuer", "broken-idp")], Want::Between(1.0, 1e6))],
        ),
        (
            ("OTLP export requests not accepted (1 h)", "A"),
            vec![series(
                &[("job", "warden-cp"), ("warden_otlp_signal", "logs"), ("warden_outcome", "failure")],
                Want::Between(0.5, 1e6),
            )],
        ),
        (("Control-plane replicas leading", "A"), vec![series(&[], Want::About(1.0))]),
        (("Open static secrets", "A"), vec![series(&[], Want::About(0.0))]),
        // Every token was minted for 610 s: all in the (300, 900] bucket, whose 95th percentile
        // Prometheus interpolates at 300 + 0.95 × 600.
        (("Token lifetime p95 (1 h)", "A"), vec![series(&[], Want::About(870.0))]),
        (("Revocation to fleet-wide enforcement p95 (1 h)", "A"), vec![series(&[], Want::Between(0.0, 30.0))]),
        (("Servers in audit mode", "A"), vec![series(&[], Want::About(0.0))]),
        (("Open secrets by kind", "A"), vec![]),
        (
            ("Revocations by source (per hour)", "A"),
            vec![
                series(&[("warden_revocation_source", "operator")], Want::About(1.0)),
                series(&[("warden_revocation_source", "rfc7009")], Want::About(0.0)),
                series(&[("warden_revocation_source", "session_end")], Want::About(0.0)),
            ],
        ),
        (
            ("Credential bridges by state", "A"),
            ["open", "expiring", "expired", "revoked"]
                .iter()
                .map(|s| series(&[("warden_credential_bridge_state", s)], Want::About(0.0)))
                .collect(),
        ),
        (
            ("Requests by how they were decided (share)", "A"),
            vec![
                series(&[("warden_request_decided", "validated")], Want::About((allowed + 43.0) / total)),
                series(&[("warden_request_decided", "refused")], Want::About(1.0 / total)),
                series(&[("warden_request_decided", "audited")], Want::About(0.0)),
                series(&[("warden_request_decided", "bridged")], Want::About(0.0)),
            ],
        ),
    ]);
    let expressions = dashboard_expressions();
    let panels: BTreeSet<(&str, &str)> = expressions.iter().map(|(t, r, _)| (t.as_str(), r.as_str())).collect();
    assert_eq!(panels, expected.keys().copied().collect(), "every panel of the dashboard has an expectation");
    // Prometheus extrapolates a range's increase from the samples' span to its ends: by up to a
    // scrape interval, under 4% of a span of 30 s.
    std::thread::sleep(std::time::Duration::from_secs(30).saturating_sub(scraping_since.elapsed()));
    let at = now();
    let mut wrong = Vec::new();
    for p in both {
        for (title, ref_id, expr) in &expressions {
            let got = p.query_at(expr, at);
            let want = &expected[&(title.as_str(), ref_id.as_str())];
            let got_labels: BTreeSet<&Labels> = got.iter().map(|(l, _)| l).collect();
            let want_labels: BTreeSet<&Labels> = want.iter().map(|(l, _)| l).collect();
            let values_hold = want.iter().all(|(labels, w)| got.iter().any(|(l, v)| l == labels && w.holds(*v)));
            if got_labels != want_labels || !values_hold {
                wrong.push(format!(
                    "{} Prometheus, {title} ({ref_id}): {expr}\n  got  {got:?}\n  want {want:?}",
                    p.name
                ));
            }
        }
    }
    let [p50, p99] = ["0.5", "0.99"].map(|q| {
        direct.query_at(
            &format!("histogram_quantile({q}, sum by (le) (rate(warden_decision_duration_seconds_bucket[5m])))"),
            at,
        )[0]
        .1
    });
    assert!(p50 <= p99, "p50 {p50} > p99 {p99}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // One vocabulary: the same families with the same labels on both paths, and each one the
    // binaries serve is in README's metrics section.
    let texts = [metrics_text(&metrics_addr), metrics_text(&fleet.agent().status_addr)];
    let served: BTreeSet<String> = texts
        .iter()
        .flat_map(|text| {
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap().to_string())
        })
        .collect();
    let readme = std::fs::read_to_string(telemetry_dir().join("../../README.md")).unwrap();
    let undocumented: Vec<_> = served.iter().filter(|name| !readme.contains(&format!("`{name}`"))).collect();
    assert!(undocumented.is_empty(), "not in README's metrics section: {undocumented:?}");
    let with_samples: BTreeSet<&String> = served
        .iter()
        .filter(|name| texts.iter().any(|t| t.lines().any(|l| !l.starts_with('#') && l.starts_with(name.as_str()))))
        .collect();
    let (on_direct, on_collector) = (direct.families(), collector.families());
    assert_eq!(on_direct, on_collector, "the two paths differ");
    assert_eq!(on_direct.keys().collect::<BTreeSet<_>>(), with_samples, "every family served reaches Prometheus");

    // The alerts whose conditions the traffic and the setup made.
    for p in both {
        assert_eq!(p.wait_for_alert("WardenDecisionRecordsDropped", &[("warden_agent", "agent-d")]), "firing");
        p.wait_for_alert("WardenDenySpike", &[("warden_server", "notes")]);
        p.wait_for_alert("WardenOtlpExportFailing", &[("job", "warden-cp"), ("warden_otlp_signal", "logs")]);
        p.wait_for_alert("WardenIssuerKeysNotRefreshing", &[("warden_issuer", "broken-idp")]);
        // The agents' port's certificate as issued (10 days, back-dated 5 minutes), the fleet
        // CA's ten years.
        let port = r#"{warden_certificate="agents_port"}"#;
        let life = format!(
            "warden_certificate_expiry_timestamp_seconds{port} - warden_certificate_start_timestamp_seconds{port}"
        );
        assert_eq!(p.value(&life), Some(10.0 * 86400.0 + 300.0));
        let ca_left = p.value(r#"warden_certificate_expiry_timestamp_seconds{warden_certificate="fleet_ca"} - time()"#);
        assert!(ca_left.is_some_and(|left| left > 3600.0 * 86400.0), "{ca_left:?}");
        let alerts = p.alerts();
        let named = |name: &str| alerts.iter().filter(|(n, _, _)| n == name).count();
        assert_eq!(named("WardenCertificateExpiring"), 0, "{alerts:?}");
        assert_eq!(named("WardenAgentConfigLag") + named("WardenAgentDisconnected"), 0, "{alerts:?}");
        assert_eq!(named("WardenOtlpExportFailing"), 1, "only the failing export: {alerts:?}");
    }

    // An agent that stops applying what it is sent lags; one that goes away is disconnected.
    let agent = fleet.agent().process.as_ref().unwrap().pid();
    let _ = Command::new("kill").args(["-STOP", &agent.to_string()]).status();
    fleet.cp.apply_ok(
        "apiVersion: warden.dev/v1\nkind: Policy\nmetadata: {name: lag-probe}\nspec:\n  servers: [notes]\n  cedar: |\n    forbid(principal, action == Action::\"tools/call\", resource) when { resource.name == \"lag-probe\" };\n",
    );
    for p in both {
        p.wait_for_alert("WardenAgentConfigLag", &[("warden_agent", "agent-d")]);
    }
    let _ = Command::new("kill").args(["-CONT", &agent.to_string()]).status();
    fleet.agent_mut().stop();
    for p in both {
        p.wait_for_alert("WardenAgentDisconnected", &[("warden_agent", "agent-d")]);
    }
}

#[test]
fn the_alerting_rules_and_the_scrape_configurations_pass_promtool() {
    let promtool = installed("promtool");
    let dir = telemetry_dir();
    for args in [
        vec!["check", "rules", "alerts.yaml"],
        vec!["test", "rules", "alerts.test.yaml"],
        vec!["check", "config", "--syntax-only", "prometheus.yaml"],
        vec!["check", "config", "--syntax-only", "prometheus-direct.yaml"],
    ] {
        let out = Command::new(&promtool).args(&args).current_dir(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
