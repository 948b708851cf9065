//! Warden's own binaries as the tests drive them: a [`ControlPlane`] (`warden-cp`, driven with
//! the real `wardenctl`), an [`Agent`] (`warden-agent`, read through its status endpoint), and a
//! sample fleet definition to apply.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::loopback::{host_of, loopback_addr};
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
