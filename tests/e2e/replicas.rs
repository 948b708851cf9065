//! Control-plane replicas sharing a real etcd (Debian's `etcd-server`, started by the tests on
//! loopback ports): a write through one reaches agents on the other, agents fail over, writes
//! through both at once are all kept, and a replica cut off from etcd while its history was
//! compacted catches up.

use std::path::{Path, PathBuf};
use std::process::Command;

use tests::{Agent, ControlPlane, Etcd, Proxy, bin, fleet_yaml, wait_for, wait_for_or};

/// Creates the fleet CA every replica shares (`warden-cp create-ca`).
fn shared_ca(dir: &Path) -> (PathBuf, PathBuf) {
    let out = dir.join("fleet-ca");
    let status = Command::new(bin("warden-cp")).args(["create-ca", "--out"]).arg(&out).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    // A second run keeps the CA: replicas must never get two.
    let again = Command::new(bin("warden-cp")).args(["create-ca", "--out"]).arg(&out).output().unwrap();
    assert!(!again.status.success());
    (out.join("ca.crt"), out.join("ca.key"))
}

/// A replica named `name` on the store at `url`.
fn replica(dir: &Path, name: &str, url: &str, ca: &(PathBuf, PathBuf)) -> ControlPlane {
    let (cert, key) = (ca.0.to_str().unwrap(), ca.1.to_str().unwrap());
    let flags = ["--store", url, "--ca-cert", cert, "--ca-key", key, "--etcd-lease-ttl", "3s"];
    ControlPlane::start(&dir.join(name), &flags)
}

fn policy(name: &str) -> String {
    format!(
        "apiVersion: warden.dev/v1\nkind: Policy\nmetadata: {{name: {name}}}\nspec:\n  servers: [github]\n  cedar: |\n    \
         permit(principal, action == Action::\"tools/call\", resource) when {{ resource.name == \"{name}\" }};\n"
    )
}

fn policies(cp: &ControlPlane) -> Vec<String> {
    let all = cp.ctl_json(&["get", "policies"]);
    let mut names: Vec<String> = all
        .as_array()
        .unwrap_or_else(|| panic!("{all}"))
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The configuration version a replica holds (read from memory: works while etcd is away).
fn held(cp: &ControlPlane) -> u64 {
    cp.ctl_json(&["get", "agents"])["version"].as_u64().expect("version")
}

fn applied(out: &std::process::Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn replicas_on_one_etcd_serve_the_same_fleet_and_agents_fail_over() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path(), 1);
    let ca = shared_ca(dir.path());
    let mut a = replica(dir.path(), "a", &etcd.url(), &ca);
    let b = replica(dir.path(), "b", &etcd.url(), &ca);

    // A join token created through A admits an agent at B, once.
    let join = a.join_token("5m", "agent-b");
    let on_b = Agent::start(dir.path(), "agent-b", &[&b.address], Some(&join));
    let join = b.join_token("5m", "agent-ab");
    let either = Agent::start(dir.path(), "agent-ab", &[&a.address, &b.address], Some(&join));

    // A write through A reaches the agent connected to B, under the same version number.
    applied(&a.apply(&fleet_yaml("search")));
    let v1 = a.version();
    wait_for("B to hold A's write", || (b.version() == v1).then_some(()));
    b.wait_converged(&["agent-b"], v1);
    assert_eq!(on_b.status()["version"], v1);
    wait_for("the other agent to converge", || (either.status()["version"] == v1).then_some(()));
    assert_eq!(on_b.status()["storeId"], either.status()["storeId"], "one store, whichever replica");
    // Every replica reports the whole fleet: A sees the agent whose stream is on B.
    wait_for("A to report the agent connected to B", || {
        let agents = a.ctl_json(&["get", "agents"]);
        let seen = agents["agents"].as_array()?.iter().find(|x| x["id"] == "agent-b")?.clone();
        let via_b = seen["controlPlane"].as_str()?.starts_with(b.address.rsplit_once(':')?.0);
        (seen["connected"] == true && seen["appliedVersion"] == v1 && via_b).then_some(())
    });
    // One replica does the singleton duties.
    let leads = |cp: &ControlPlane| cp.process.as_ref().is_some_and(|p| p.log_text().contains("now leads"));
    wait_for("a leader", || (leads(&a) || leads(&b)).then_some(()));
    assert!(!(leads(&a) && leads(&b)), "one leader at a time");

    // Writes through both replicas at once: optimistic concurrency loses none of them.
    std::thread::scope(|s| {
        for (cp, side) in [(&a, "a"), (&b, "b")] {
            s.spawn(move || {
                for i in 0..5 {
                    applied(&cp.apply(&policy(&format!("{side}{i}"))));
                }
            });
        }
    });
    let mut expected: Vec<String> = (0..5).flat_map(|i| [format!("a{i}"), format!("b{i}")]).collect();
    expected.push("github-tools".into());
    expected.sort();
    let v2 = a.version();
    assert_eq!(v2, v1 + 10, "one version per write");
    wait_for("B to hold every write", || (b.version() == v2).then_some(()));
    assert_eq!(policies(&a), expected);
    assert_eq!(policies(&b), expected);
    b.wait_converged(&["agent-b"], v2);
    assert_eq!(on_b.status()["resources"]["Policy"], 11);
    // And A sees it there: versions travel in B's one versions record, not in the shards.
    a.wait_converged(&["agent-b"], v2);
    // The audit trail is the fleet's, whichever replica is asked.
    let history = b.ctl_ok(&["history"]);
    assert!(history.contains("a4") && history.contains("b4"), "{history}");

    // Replica A crashes: its agents move to B and keep converging; when A led, B takes over
    // once A's lease expires.
    let pid = a.process.as_ref().unwrap().pid().to_string();
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    a.process.take();
    applied(&b.apply(&fleet_yaml("fetch")));
    let v3 = b.version();
    b.wait_converged(&["agent-b", "agent-ab"], v3);
    wait_for("B to lead", || leads(&b).then_some(()));

    // A write larger than etcd takes in one request (1.5 MiB by default) is refused with the
    // limit named, and changes nothing.
    let filler = "x".repeat(60 * 1024);
    let big: String = (0..30)
        .map(|i| {
            format!(
                "---\napiVersion: warden.dev/v1\nkind: Policy\nmetadata: {{name: big{i}}}\nspec:\n  servers: [github]\n  \
                 cedar: |\n    // {filler}\n    permit(principal, action == Action::\"tools/call\", resource);\n"
            )
        })
        .collect();
    let refused = b.apply(&big);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("max-request-bytes"), "{refused:?}");
    assert_eq!(b.version(), v3);

    // A comes back and serves the current configuration.
    a.restart();
    assert_eq!(a.version(), v3);
    assert_eq!(policies(&a), expected);
}

#[test]
fn a_three_member_etcd_loses_a_member_and_a_cut_off_replica_catches_up_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(dir.path(), 3);
    let ca = shared_ca(dir.path());
    // Replica A reaches etcd only through a proxy the test can cut.
    let proxies: Vec<Proxy> = etcd.endpoints().iter().map(|e| Proxy::start(e)).collect();
    let through_proxy = format!("etcd://{}", proxies.iter().map(|p| p.address.clone()).collect::<Vec<_>>().join(","));
    let a = replica(dir.path(), "a", &through_proxy, &ca);
    let b = replica(dir.path(), "b", &etcd.url(), &ca);
    let join = a.join_token("5m", "agent-a");
    let agent = Agent::start(dir.path(), "agent-a", &[&a.address], Some(&join));
    applied(&b.apply(&fleet_yaml("search")));
    let v1 = b.version();
    a.wait_converged(&["agent-a"], v1);

    // etcd's leader is killed: a new one is elected, and the write caught in the election is
    // retried (not answered "request timed out"); propagation goes on.
    let leader = etcd.leader();
    etcd.kill_member(leader);
    applied(&b.apply(&policy("while-degraded")));
    let v2 = b.version();
    a.wait_converged(&["agent-a"], v2);
    etcd.restart_member(leader);

    // A is cut off from etcd while B writes and etcd compacts the history A has not seen.
    for proxy in &proxies {
        proxy.cut();
    }
    applied(&b.apply(&policy("while-cut-off")));
    applied(&b.ctl(&["delete", "policy", "while-degraded"]));
    applied(&b.apply(&policy("last")));
    let v3 = b.version();
    etcd.compact();
    assert!(held(&a) < v3, "A cannot have seen the writes");
    for proxy in &proxies {
        proxy.restore();
    }
    let log = || a.process.as_ref().map(|p| p.log_text()).unwrap_or_default();
    wait_for_or("A to catch up after the compaction", log, || (held(&a) == v3).then_some(()));
    assert!(log().contains("compacted"), "A read everything again:\n{}", log());
    a.wait_converged(&["agent-a"], v3);
    assert_eq!(policies(&a), ["github-tools", "last", "while-cut-off"]);

    // Every replica down: the agent keeps enforcing what it has; everything back, it converges.
    let (mut a, mut b) = (a, b);
    a.stop();
    b.stop();
    let status = agent.status();
    assert_eq!((status["enforcing"].as_bool(), status["version"].as_u64()), (Some(true), Some(v3)), "{status}");
    assert_eq!(agent.readyz(), Some(200));
    b.restart();
    a.restart();
    applied(&b.apply(&policy("after")));
    let v4 = b.version();
    a.wait_converged(&["agent-a"], v4);
}

/// `warden-cp --data-dir <data_dir> --store <url> migrate`.
fn migrate(data_dir: &Path, url: &str) -> std::process::Output {
    Command::new(bin("warden-cp")).arg("--data-dir").arg(data_dir).args(["--store", url, "migrate"]).output().unwrap()
}

#[test]
fn an_embedded_store_moves_to_etcd_and_its_agents_carry_on_without_a_resend() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path(), 1);
    let mut cp = ControlPlane::start(dir.path(), &[]);
    let join = cp.join_token("5m", "agent-0");
    let agent = Agent::start(dir.path(), "agent-0", &[&cp.address], Some(&join));
    applied(&cp.apply(&fleet_yaml("search")));
    let spare = cp.join_token("5m", "agent-1");
    let version = cp.version();
    cp.wait_converged(&["agent-0"], version);
    let store_id = agent.status()["storeId"].clone();
    let alice = dir.path().join("alice");
    cp.ctl_ok(&["operator-cert", "create", "--name", "alice", "--out", alice.to_str().unwrap(), "--ttl", "1h"]);

    // A running control plane holds its store: nothing is copied.
    let out = migrate(&cp.data_dir, &etcd.url());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop its control plane first"), "{out:?}");
    cp.stop();
    let out = migrate(&cp.data_dir, &etcd.url());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("at version {version}")), "{out:?}");
    // Only into an empty prefix.
    let again = migrate(&cp.data_dir, &etcd.url());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("empty prefix"), "{again:?}");

    // The control plane comes back on etcd with the CA it had: the agent resumes where it was.
    let (cert, key) = (cp.data_dir.join("ca.crt"), cp.data_dir.join("ca.key"));
    let url = etcd.url();
    cp.set_flags(&["--store", &url, "--ca-cert", cert.to_str().unwrap(), "--ca-key", key.to_str().unwrap()]);
    cp.restart();
    assert_eq!(cp.version(), version);
    cp.wait_converged(&["agent-0"], version);
    assert_eq!(agent.status()["storeId"], store_id, "the same store, moved");
    let log = cp.process.as_ref().unwrap().log_text();
    let after_move = log.rsplit("store loaded").next().unwrap();
    assert!(after_move.contains("agent connected, up to date"), "no snapshot resent:\n{after_move}");
    // History, join tokens, the registry and operators' certificates came along.
    assert!(cp.ctl_ok(&["history"]).contains("github-tools"));
    let path = |name: &str| alice.join(name).to_str().unwrap().to_string();
    let (ca, crt, key) = (path("ca.crt"), path("operator.crt"), path("operator.key"));
    let remote = ["--control-plane", &cp.address, "--ca", &ca, "--cert", &crt, "--key", &key, "get", "all"];
    let out = Command::new(bin("wardenctl")).args(remote).output().unwrap();
    assert!(out.status.success(), "alice's certificate is refused: {}", String::from_utf8_lossy(&out.stderr));
    let _second = Agent::start(dir.path(), "agent-1", &[&cp.address], Some(&spare));
    applied(&cp.apply(&fleet_yaml("fetch")));
    cp.wait_converged(&["agent-0", "agent-1"], version + 1);
}

#[test]
fn replicas_reach_etcd_over_mutual_tls_and_without_a_client_certificate_do_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start_with(dir.path(), 1, true);
    let tls = etcd.tls().unwrap().clone();
    let ca = shared_ca(dir.path());
    let url = etcd.url();
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    let (fleet_cert, fleet_key, etcd_ca) = (path(&ca.0), path(&ca.1), path(&tls.ca));
    let (client_cert, client_key) = (path(&tls.client.0), path(&tls.client.1));
    let flags = [
        "--store",
        url.as_str(),
        "--ca-cert",
        &fleet_cert,
        "--ca-key",
        &fleet_key,
        "--etcd-ca",
        &etcd_ca,
        "--etcd-cert",
        &client_cert,
        "--etcd-key",
        &client_key,
    ];
    let a = ControlPlane::start(&dir.path().join("a"), &flags);
    let b = ControlPlane::start(&dir.path().join("b"), &flags);
    let join = a.join_token("5m", "agent-b");
    let _agent = Agent::start(dir.path(), "agent-b", &[&b.address], Some(&join));
    applied(&a.apply(&fleet_yaml("search")));
    b.wait_converged(&["agent-b"], a.version());

    // etcd asks for a client certificate: a replica without one is refused and says so.
    let out = Command::new(bin("warden-cp"))
        .arg("--data-dir")
        .arg(dir.path().join("c"))
        .args(["--listen", &tests::loopback_addr(), "--store", &url, "--ca-cert", &fleet_cert, "--ca-key", &fleet_key])
        .args(["--etcd-ca", &etcd_ca])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: etcd"), "{stderr}");
}
