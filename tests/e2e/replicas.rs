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
    ControlPlane::start(&dir.join(name), &["--store", url, "--ca-cert", cert, "--ca-key", key])
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
    let join = a.join_token("5m");
    let on_b = Agent::start(dir.path(), "agent-b", &[&b.address], Some(&join));
    let join = b.join_token("5m");
    let either = Agent::start(dir.path(), "agent-ab", &[&a.address, &b.address], Some(&join));

    // A write through A reaches the agent connected to B, under the same version number.
    applied(&a.apply(&fleet_yaml("search")));
    let v1 = a.version();
    wait_for("B to hold A's write", || (b.version() == v1).then_some(()));
    b.wait_converged(&["agent-b"], v1);
    assert_eq!(on_b.status()["version"], v1);
    wait_for("the other agent to converge", || (either.status()["version"] == v1).then_some(()));
    assert_eq!(on_b.status()["storeId"], either.status()["storeId"], "one store, whichever replica");

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
    // The audit trail is the fleet's, whichever replica is asked.
    let history = b.ctl_ok(&["history"]);
    assert!(history.contains("a4") && history.contains("b4"), "{history}");

    // Replica A goes away: its agents move to B and keep converging.
    a.stop();
    applied(&b.apply(&fleet_yaml("fetch")));
    let v3 = b.version();
    b.wait_converged(&["agent-b", "agent-ab"], v3);

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
    let join = a.join_token("5m");
    let _agent = Agent::start(dir.path(), "agent-a", &[&a.address], Some(&join));
    applied(&b.apply(&fleet_yaml("search")));
    let v1 = b.version();
    a.wait_converged(&["agent-a"], v1);

    // One etcd member stops: writes and propagation go on.
    etcd.stop_member(0);
    applied(&b.apply(&policy("while-degraded")));
    let v2 = b.version();
    a.wait_converged(&["agent-a"], v2);
    etcd.restart_member(0);

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
}
