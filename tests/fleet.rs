//! Warden's own binaries as the tests drive them: a [`ControlPlane`] (`warden-cp`, driven with
//! the real `wardenctl`), an [`Agent`] (`warden-agent`, read through its status endpoint), a
//! [`Fleet`] of both (with the peers a gateway needs, if asked) in a directory of its own, and a
//! sample fleet definition to apply.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::loopback::{host_of, loopback_addr};
use crate::peers::{McpUpstream, MintingIdp};
use crate::process::{Process, bin};
use crate::wait::{wait_for, wait_for_or};

/// A control plane on a loopback port with its data in `dir`.
pub struct ControlPlane {
    /// The running process (None while stopped).
    pub process: Option<Process>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// `127.0.0.1:<port>`.
    pub address: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl ControlPlane {
    /// Starts a control plane in `dir/cp` and waits until its admin API answers.
    pub fn start(dir: &Path, extra: &[&str]) -> ControlPlane {
        ControlPlane::start_with_env(dir, extra, &[])
    }

    /// [`ControlPlane::start`] with environment variables (`OTEL_*`, …).
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> ControlPlane {
        let mut cp = ControlPlane {
            process: None,
            data_dir: dir.join("cp"),
            address: loopback_addr(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        cp.restart();
        cp
    }

    /// Starts it again on the same port and data (after [`ControlPlane::stop`]).
    pub fn restart(&mut self) {
        let mut command = Command::new(bin("warden-cp"));
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.address, "--server-name", host_of(&self.address)])
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if !self.extra.iter().any(|a| a == "--heartbeat-interval") {
            command.args(["--heartbeat-interval", "2s"]);
        }
        std::fs::create_dir_all(&self.data_dir).expect("data dir");
        let log = self.data_dir.with_extension("log");
        self.process = Some(Process::spawn(command, log));
        wait_for("the control plane's admin socket", || {
            if let Some(p) = self.process.as_mut()
                && let Some(code) = p.exited()
            {
                panic!("the control plane exited with {code:?}:\n{}", p.log_text());
            }
            self.ctl(&["get", "all"]).status.success().then_some(())
        });
    }

    /// Stops it with SIGTERM and asserts a clean exit.
    pub fn stop(&mut self) {
        let mut process = self.process.take().expect("running");
        assert!(process.terminate(), "control plane did not shut down cleanly:\n{}", process.log_text());
    }

    /// Replaces its extra flags for the next [`ControlPlane::restart`] (same port and data dir).
    pub fn set_flags(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// The admin socket.
    pub fn socket(&self) -> PathBuf {
        self.data_dir.join("admin.sock")
    }

    /// Runs `wardenctl` against this control plane.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("wardenctl"))
            .env("WARDEN_ADMIN_SOCKET", self.socket())
            .env_remove("RUST_BACKTRACE")
            .args(args)
            .output()
            .expect("run wardenctl")
    }

    /// Runs `wardenctl` and returns its stdout, failing the test if it fails.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(out.status.success(), "wardenctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// `wardenctl <args> -o json`, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.ctl_ok(&args)).expect("JSON output")
    }

    /// Applies YAML text; returns the command's output.
    pub fn apply(&self, yaml: &str) -> Output {
        let file = self.data_dir.with_extension(format!("apply-{}.yaml", rand_suffix()));
        std::fs::write(&file, yaml).expect("write manifest");
        self.ctl(&["apply", "-f", file.to_str().expect("utf-8 path")])
    }

    /// Applies YAML text, failing the test if it is refused.
    pub fn apply_ok(&self, yaml: &str) {
        let out = self.apply(yaml);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// The configuration version.
    pub fn version(&self) -> u64 {
        self.ctl_json(&["get", "agents"])["version"].as_u64().expect("version")
    }

    /// A new join token for agent `agent`.
    pub fn join_token(&self, ttl: &str, agent: &str) -> String {
        self.ctl_ok(&["join-token", "create", "--ttl", ttl, "--agent", agent]).trim().to_string()
    }

    /// Waits until every agent in `ids` is connected and has applied `version`.
    pub fn wait_converged(&self, ids: &[&str], version: u64) {
        let what = format!("agents {ids:?} to ACK version {version}");
        let context = || {
            let log = self.process.as_ref().map(Process::log_text).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            format!(
                "{}\ncontrol plane log (last lines, newest first):\n{}",
                self.ctl_ok(&["get", "agents"]),
                tail.join("\n")
            )
        };
        wait_for_or(&what, context, || {
            let agents = self.ctl_json(&["get", "agents"]);
            let all = agents["agents"].as_array()?;
            ids.iter()
                .all(|id| {
                    all.iter().any(|a| {
                        a["id"] == *id && a["connected"] == true && a["appliedVersion"].as_u64() == Some(version)
                    })
                })
                .then_some(())
        });
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// An agent with its data in `dir/<id>` and a status endpoint on a loopback port.
pub struct Agent {
    /// The running process (None while stopped).
    pub process: Option<Process>,
    /// Its id.
    pub id: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Status endpoint address.
    pub status_addr: String,
    control_planes: Vec<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Agent {
    /// Starts an agent; `join_token` is needed on its first start only.
    pub fn start(dir: &Path, id: &str, control_planes: &[&str], join_token: Option<&str>) -> Agent {
        Agent::start_with(dir, id, control_planes, join_token, &[])
    }

    /// [`Agent::start`] with `extra` flags.
    pub fn start_with(
        dir: &Path,
        id: &str,
        control_planes: &[&str],
        join_token: Option<&str>,
        extra: &[&str],
    ) -> Agent {
        Agent::start_with_env(dir, id, control_planes, join_token, extra, &[])
    }

    /// [`Agent::start_with`] with environment variables (`OTEL_*`, …).
    pub fn start_with_env(
        dir: &Path,
        id: &str,
        control_planes: &[&str],
        join_token: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let mut agent = Agent {
            process: None,
            id: id.to_string(),
            data_dir: dir.join(id),
            status_addr: loopback_addr(),
            control_planes: control_planes.iter().map(|s| s.to_string()).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        agent.launch(join_token);
        agent
    }

    fn launch(&mut self, join_token: Option<&str>) {
        let mut command = Command::new(bin("warden-agent"));
        command
            .args(["--id", &self.id, "--label", "role=test"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--control-plane", &self.control_planes.join(",")])
            .args(["--status-listen", &self.status_addr])
            .args(["--backoff-base", "50ms", "--backoff-max", "500ms", "--heartbeat-interval", "2s"])
            // Hermetic: the test machine's own home directories are not scanned for secrets
            // (a test that scans names its directory with --scan-path).
            .arg("--no-scan-homes")
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(token) = join_token {
            command.args(["--join-token", token]);
        }
        std::fs::create_dir_all(&self.data_dir).expect("data dir");
        self.process = Some(Process::spawn(command, self.data_dir.with_extension("log")));
    }

    /// Starts it again with the same identity and data.
    pub fn restart(&mut self) {
        self.launch(None);
        wait_for("the agent's status endpoint", || self.try_status());
    }

    /// Stops it with SIGTERM and asserts a clean exit.
    pub fn stop(&mut self) {
        let mut process = self.process.take().expect("running");
        assert!(process.terminate(), "agent did not shut down cleanly:\n{}", process.log_text());
    }

    /// `/status`, if the endpoint answers.
    pub fn try_status(&self) -> Option<Value> {
        let url = format!("http://{}/status", self.status_addr);
        ureq::get(&url).call().ok()?.body_mut().read_json().ok()
    }

    /// `/status`, waiting for the endpoint to come up.
    pub fn status(&self) -> Value {
        wait_for("the agent's status endpoint", || self.try_status())
    }

    /// The HTTP status code of `/readyz`.
    pub fn readyz(&self) -> Option<u16> {
        let url = format!("http://{}/readyz", self.status_addr);
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        agent.get(&url).call().ok().map(|r| r.status().as_u16())
    }

    /// Everything the agent printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }
}

/// A control plane and its joined agents in a temporary directory of their own, with an
/// identity provider and an MCP server if asked ([`FleetBuilder::peers`]); everything is stopped
/// and removed when dropped. Made by [`Fleet::builder`]:
///
/// ```ignore
/// let fleet = Fleet::builder().peers().agent_ids(&["agent-d"]).cp_flags(&["--metrics-listen", &addr]).start();
/// fleet.cp.apply_ok(&yaml); // servers whose gateways listen at addresses of the test's choosing
/// fleet.wait_serving(&gateway);
/// ```
pub struct Fleet {
    /// The agents, in the order of their ids.
    pub agents: Vec<Agent>,
    /// The control plane.
    pub cp: ControlPlane,
    peers: Option<(MintingIdp, McpUpstream)>,
    /// Where all of them keep their data and logs (last, so it outlives the processes).
    pub dir: tempfile::TempDir,
}

/// How a [`Fleet`] is to be started: see each option; by default a control plane and one agent,
/// `agent-0`, with the harness's usual flags only.
pub struct FleetBuilder {
    dir: tempfile::TempDir,
    agent_ids: Vec<String>,
    cp_flags: Vec<String>,
    cp_env: Vec<(String, String)>,
    agent_flags: Vec<String>,
    agent_env: Vec<(String, String)>,
    peers: bool,
}

fn owned(items: &[&str]) -> impl Iterator<Item = String> {
    items.iter().map(|s| s.to_string())
}

fn owned_pairs(items: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
    items.iter().map(|(k, v)| (k.to_string(), v.to_string()))
}

fn borrowed(items: &[String]) -> Vec<&str> {
    items.iter().map(String::as_str).collect()
}

fn borrowed_pairs(items: &[(String, String)]) -> Vec<(&str, &str)> {
    items.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

impl FleetBuilder {
    /// The fleet's directory, made already: for files its flags name (certificates, sockets).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `n` agents, `agent-0` to `agent-<n-1>`.
    pub fn agents(self, n: usize) -> FleetBuilder {
        FleetBuilder { agent_ids: (0..n).map(|i| format!("agent-{i}")).collect(), ..self }
    }

    /// Agents with these ids.
    pub fn agent_ids(self, ids: &[&str]) -> FleetBuilder {
        FleetBuilder { agent_ids: owned(ids).collect(), ..self }
    }

    /// More flags for the control plane.
    pub fn cp_flags(mut self, flags: &[&str]) -> FleetBuilder {
        self.cp_flags.extend(owned(flags));
        self
    }

    /// Environment variables for the control plane (`OTEL_*`, …).
    pub fn cp_env(mut self, env: &[(&str, &str)]) -> FleetBuilder {
        self.cp_env.extend(owned_pairs(env));
        self
    }

    /// More flags for every agent.
    pub fn agent_flags(mut self, flags: &[&str]) -> FleetBuilder {
        self.agent_flags.extend(owned(flags));
        self
    }

    /// Environment variables for every agent (`OTEL_*`, …).
    pub fn agent_env(mut self, env: &[(&str, &str)]) -> FleetBuilder {
        self.agent_env.extend(owned_pairs(env));
        self
    }

    /// A gateway's peers: an identity provider that mints tokens ([`Fleet::idp`]) and the MCP
    /// Python SDK's server ([`Fleet::upstream`]); the control plane gets `--allow-http-issuers`,
    /// as the provider's issuer is a plain `http://` URL.
    pub fn peers(self) -> FleetBuilder {
        FleetBuilder { peers: true, ..self }
    }

    /// Starts the peers (if asked), the control plane, and each agent with a join token of its
    /// own. Applies nothing: the agents have no configuration yet.
    pub fn start(self) -> Fleet {
        let dir = self.dir.path();
        let peers = self.peers.then(|| (MintingIdp::start(dir), McpUpstream::start(dir)));
        let mut cp_flags = borrowed(&self.cp_flags);
        if self.peers {
            cp_flags.insert(0, "--allow-http-issuers");
        }
        let cp = ControlPlane::start_with_env(dir, &cp_flags, &borrowed_pairs(&self.cp_env));
        let (agent_flags, agent_env) = (borrowed(&self.agent_flags), borrowed_pairs(&self.agent_env));
        let agents = self
            .agent_ids
            .iter()
            .map(|id| {
                let token = cp.join_token("5m", id);
                Agent::start_with_env(dir, id, &[&cp.address], Some(&token), &agent_flags, &agent_env)
            })
            .collect();
        Fleet { agents, cp, peers, dir: self.dir }
    }
}

impl Fleet {
    /// A fleet to configure, then [`FleetBuilder::start`].
    pub fn builder() -> FleetBuilder {
        FleetBuilder {
            dir: tempfile::tempdir().expect("temp dir"),
            agent_ids: vec!["agent-0".to_string()],
            cp_flags: Vec::new(),
            cp_env: Vec::new(),
            agent_flags: Vec::new(),
            agent_env: Vec::new(),
            peers: false,
        }
    }

    /// The first agent.
    pub fn agent(&self) -> &Agent {
        &self.agents[0]
    }

    /// The first agent, to stop or restart.
    pub fn agent_mut(&mut self) -> &mut Agent {
        &mut self.agents[0]
    }

    /// The identity provider ([`FleetBuilder::peers`]).
    pub fn idp(&self) -> &MintingIdp {
        &self.peers.as_ref().expect("a fleet started with peers()").0
    }

    /// The MCP server behind the gateways ([`FleetBuilder::peers`]).
    pub fn upstream(&self) -> &McpUpstream {
        &self.peers.as_ref().expect("a fleet started with peers()").1
    }

    /// Waits until the first agent's gateway at `addr` serves (its protected-resource metadata
    /// answers): the configuration naming it has arrived.
    pub fn wait_serving(&self, addr: &str) {
        let metadata = format!("http://{addr}/.well-known/oauth-protected-resource/mcp");
        wait_for_or(
            &format!("the gateway at {addr} to serve"),
            || self.agent().log_text(),
            || ureq::get(&metadata).call().ok().map(|_| ()),
        );
    }
}

/// [`fleet_yaml`] as the JSON documents an apply request carries.
pub fn fleet_yaml_documents(allowed_tool: &str) -> Vec<Vec<u8>> {
    warden_core::resource::yaml_documents(&fleet_yaml(allowed_tool))
        .expect("fleet YAML parses")
        .iter()
        .map(|v| serde_json::to_vec(v).expect("serializes"))
        .collect()
}

/// A fleet definition with one issuer, one server and one policy, whose policy text can be
/// varied to produce new versions.
pub fn fleet_yaml(allowed_tool: &str) -> String {
    format!(
        r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: corp-idp}}
spec:
  issuer: https://idp.example.com
  keys: {{jwks: {{keys: [{{kty: EC, kid: k1, crv: P-256, x: f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU, y: x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0}}]}}}}
  allowedAlgorithms: [ES256]
  maxTokenLifetime: 15m
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: github}}
spec:
  resource: https://mcp.example.com/github
  issuers: [corp-idp]
  upstream: http://127.0.0.1:3001/mcp
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {{name: github-tools}}
spec:
  servers: [github]
  cedar: |
    permit(principal, action == Action::"tools/call", resource) when {{ resource.name == "{allowed_tool}" }};
"#
    )
}
