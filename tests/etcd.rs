//! A real etcd cluster (Debian's `etcd-server` and `etcd-client`) for the control plane's
//! replicated store: members on loopback ports, optionally serving mutual TLS, that a test can
//! stop, kill, restart and compact.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::ca::TestCa;
use crate::loopback::{host_of, loopback_addr};
use crate::process::Process;
use crate::wait::wait_for_or;

/// A real etcd cluster (Debian's `etcd-server`), one process per member, on loopback ports.
pub struct Etcd {
    members: Vec<EtcdMember>,
    cluster: String,
    /// With TLS: client URLs are https, clients must present a certificate of `ca`.
    tls: Option<EtcdTls>,
}

/// PEM files of an etcd that serves TLS and asks clients for certificates.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// The CA that signed the members' and the client's certificates.
    pub ca: PathBuf,
    /// The members' certificate and key.
    pub server: (PathBuf, PathBuf),
    /// A client certificate and key.
    pub client: (PathBuf, PathBuf),
}

struct EtcdMember {
    name: String,
    client: String,
    peer: String,
    data_dir: PathBuf,
    process: Option<Process>,
}

impl Etcd {
    /// Starts a cluster of `size` members under `dir/etcd` and waits until it has a leader.
    pub fn start(dir: &Path, size: usize) -> Etcd {
        Etcd::start_with(dir, size, false)
    }

    /// [`Etcd::start`]; with `tls`, clients speak TLS and must present a certificate from the
    /// cluster's own CA ([`Etcd::tls`]).
    pub fn start_with(dir: &Path, size: usize, tls: bool) -> Etcd {
        let members: Vec<EtcdMember> = (0..size)
            .map(|i| {
                let client = loopback_addr();
                // The peer port on the client's address, so two members never share an address.
                let peer = loopback_addr();
                EtcdMember {
                    name: format!("m{i}"),
                    client,
                    peer,
                    data_dir: dir.join("etcd").join(format!("m{i}")),
                    process: None,
                }
            })
            .collect();
        let cluster = members.iter().map(|m| format!("{}=http://{}", m.name, m.peer)).collect::<Vec<_>>().join(",");
        let tls = tls.then(|| {
            let ips: Vec<std::net::IpAddr> =
                members.iter().map(|m| host_of(&m.client).parse().expect("an IP")).collect();
            etcd_certificates(&dir.join("etcd"), &ips)
        });
        let mut etcd = Etcd { members, cluster, tls };
        for i in 0..size {
            etcd.launch(i, "new");
        }
        etcd.wait_healthy();
        etcd
    }

    fn launch(&mut self, i: usize, state: &str) {
        let member = &mut self.members[i];
        std::fs::create_dir_all(&member.data_dir).expect("etcd data dir");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server.0)
                .arg("--key-file")
                .arg(&tls.server.1)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &format!("{scheme}://{}", member.client)])
            .args(["--advertise-client-urls", &format!("{scheme}://{}", member.client)])
            .args(["--listen-peer-urls", &format!("http://{}", member.peer)])
            .args(["--initial-advertise-peer-urls", &format!("http://{}", member.peer)])
            .args(["--initial-cluster", &self.cluster, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", "warden-tests", "--max-txn-ops", "2048"])
            .args(["--logger", "zap", "--log-level", "warn"]);
        member.process = Some(Process::spawn(command, member.data_dir.with_extension("log")));
    }

    /// `etcd://a,b,c`, for `warden-cp --store`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// The revision of the cluster a member (its client address) is in: every write moves it by
    /// one, so it counts writes. From the member's JSON gateway: plain HTTP members only.
    pub fn revision_at(endpoint: &str) -> u64 {
        let url = format!("http://{endpoint}/v3/kv/range");
        let answer: serde_json::Value = ureq::post(&url)
            .send_json(serde_json::json!({"key": "AA=="}))
            .expect("etcd's JSON gateway")
            .body_mut()
            .read_json()
            .expect("JSON");
        answer["header"]["revision"].as_str().and_then(|r| r.parse().ok()).expect("a revision")
    }

    /// The members' process ids (for their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(|m| m.process.as_ref().map(Process::pid)).collect()
    }

    /// Each member's client address.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// Stops member `i` (SIGTERM).
    pub fn stop_member(&mut self, i: usize) {
        let mut process = self.members[i].process.take().expect("running");
        process.terminate();
    }

    /// Kills member `i` (SIGKILL: no leadership hand-over).
    pub fn kill_member(&mut self, i: usize) {
        drop(self.members[i].process.take().expect("running"));
    }

    /// Starts member `i` again on its data.
    pub fn restart_member(&mut self, i: usize) {
        self.launch(i, "existing");
        self.wait_healthy();
    }

    /// Waits until every running member reports a healthy cluster.
    pub fn wait_healthy(&self) {
        let logs = || self.members.iter().filter_map(|m| m.process.as_ref()).map(Process::log_text).collect::<String>();
        wait_for_or("etcd to be healthy", logs, || {
            self.members
                .iter()
                .filter(|m| m.process.is_some())
                .all(|m| self.ctl_at(&m.client, &["endpoint", "health"]).is_some())
                .then_some(())
        });
    }

    /// The certificates, when it serves TLS.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    fn ctl_at(&self, endpoint: &str, args: &[&str]) -> Option<String> {
        let mut command = Command::new("etcdctl");
        if let Some(tls) = &self.tls {
            command.arg("--cacert").arg(&tls.ca).arg("--cert").arg(&tls.client.0).arg("--key").arg(&tls.client.1);
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint: Vec<String> = endpoint.split(',').map(|e| format!("{scheme}://{e}")).collect();
        let out = command
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoint.join(","), "--command-timeout", "3s"])
            .args(args)
            .output()
            .expect("run etcdctl (Debian's etcd-client)");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `etcdctl` against the running members; its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let endpoints: Vec<String> =
            self.members.iter().filter(|m| m.process.is_some()).map(|m| m.client.clone()).collect();
        self.ctl_at(&endpoints.join(","), args).unwrap_or_else(|| panic!("etcdctl {args:?} failed"))
    }

    /// The index of the member that leads the cluster now.
    pub fn leader(&self) -> usize {
        let status = self.ctl(&["endpoint", "status", "-w", "json"]);
        let status: Value = serde_json::from_str(&status).expect("etcdctl JSON");
        let leader = status[0]["Status"]["leader"].as_u64().expect("leader id");
        let endpoint = status
            .as_array()
            .expect("statuses")
            .iter()
            .find(|s| s["Status"]["header"]["member_id"].as_u64() == Some(leader))
            .and_then(|s| s["Endpoint"].as_str())
            .expect("the leader answered")
            .to_string();
        self.members.iter().position(|m| endpoint.ends_with(&m.client)).expect("a member")
    }

    /// Compacts etcd's history up to its current revision: watches from before it cannot resume.
    pub fn compact(&self) -> i64 {
        let status = self.ctl(&["endpoint", "status", "-w", "json"]);
        let status: Value = serde_json::from_str(&status).expect("etcdctl JSON");
        let revision = status[0]["Status"]["header"]["revision"].as_i64().expect("revision");
        self.ctl(&["compact", &revision.to_string(), "--physical"]);
        revision
    }
}

/// A CA, a certificate for etcd members at `ips`, and a client certificate, as PEM files in `dir`.
fn etcd_certificates(dir: &Path, ips: &[std::net::IpAddr]) -> EtcdTls {
    std::fs::create_dir_all(dir).expect("etcd dir");
    let ca = TestCa::new();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write PEM");
        path
    };
    let pair = |(cert, key): (String, String), name: &str| {
        (write(&format!("{name}.crt"), &cert), write(&format!("{name}.key"), &key))
    };
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    EtcdTls {
        ca: write("etcd-ca.crt", &ca.pem),
        server: pair(ca.issue(ips, Some(ServerAuth), "etcd-member"), "etcd-member"),
        client: pair(ca.issue(&[], Some(ClientAuth), "warden-cp"), "warden-cp"),
    }
}
