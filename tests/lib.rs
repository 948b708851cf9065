//! The harness for end-to-end suites: starts the real `warden-cp` and `warden-agent` binaries on
//! loopback ports in temporary directories, drives them with the real `wardenctl`, and reads the
//! agents' status endpoints. Every wait is bounded.
#![forbid(unsafe_code)]

pub mod otlp;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any wait in a test may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The path of a workspace binary, built next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    // Tests run from target/<profile>/deps/, harness binaries from target/<profile>/.
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
    path
}

/// A loopback address (`127.a.b.c:port`) nobody listens on, for one server of one test.
///
/// Tests run in parallel processes, so a port that is free when chosen can be taken before the
/// server binds it (by another test's server, or as the source port of an outgoing connection).
/// A random address among 127.0.0.0/8's sixteen million, with a port below the ephemeral
/// range, makes that practically impossible.
pub fn loopback_addr() -> String {
    use std::hash::{BuildHasher, Hasher};
    for attempt in 0u64..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        let r = h.finish();
        let ip = std::net::Ipv4Addr::new(127, (r >> 8) as u8, (r >> 16) as u8, ((r >> 24) as u8).max(2));
        let port = 20_000 + ((r >> 32) % 12_000) as u16;
        if TcpListener::bind((ip, port)).is_ok() {
            return format!("{ip}:{port}");
        }
    }
    panic!("no free loopback address");
}

fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// Polls `check` until it returns `Some`, or fails the test after [`PATIENCE`] with `what`.
pub fn wait_for<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_for_or(what, String::new, check)
}

/// [`wait_for`], adding `context()` to the failure message.
pub fn wait_for_or<T>(what: &str, context: impl Fn() -> String, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", context());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when dropped; its output goes to a log file kept for failures.
pub struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with its output appended to `log`.
    pub fn spawn(mut command: Command, log: PathBuf) -> Process {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        command.stdout(file.try_clone().expect("log file")).stderr(file).stdin(Stdio::null());
        command.env("RUST_LOG", "info").env_remove("RUST_BACKTRACE");
        let child = command.spawn().expect("spawn");
        Process { child: Some(child), log }
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns whether it exited with 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited, with its code.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        Some(status.code())
    }

    /// Waits (bounded) for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status.code();
            }
            assert!(Instant::now() < deadline, "process did not exit; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resident memory of process `pid`, in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) process `pid` used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// CPU time of process `pid` and its direct children (e.g. nginx's master and workers).
pub fn cpu_time_with_children(pid: u32) -> Duration {
    let mut total = cpu_time(pid);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if parent == Some(pid) {
            total += cpu_time(child);
        }
    }
    total
}

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

/// An identity provider's static endpoints (OIDC discovery document and JWKS) served by
/// Python's `http.server` on a loopback port: a real HTTP server written by others.
pub struct StaticIdp {
    /// The server process.
    pub process: Option<Process>,
    /// The directory it serves.
    pub root: PathBuf,
    /// `http://127.a.b.c:<port>`, also the issuer URL.
    pub issuer: String,
    addr: String,
}

impl StaticIdp {
    /// Serves a discovery document and a JWKS holding keys `kids` from `dir/idp`.
    pub fn start(dir: &Path, kids: &[&str]) -> StaticIdp {
        let addr = loopback_addr();
        let issuer = format!("http://{addr}");
        let root = dir.join("idp");
        std::fs::create_dir_all(root.join(".well-known")).expect("idp dir");
        let discovery = serde_json::json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks.json")});
        std::fs::write(root.join(".well-known/openid-configuration"), discovery.to_string()).expect("write");
        let mut idp = StaticIdp { process: None, root, issuer, addr };
        idp.publish(kids);
        idp.restart();
        idp
    }

    /// Replaces the published JWKS with EC keys named `kids`.
    pub fn publish(&self, kids: &[&str]) {
        let keys: Vec<serde_json::Value> = kids
            .iter()
            .map(|kid| {
                serde_json::json!({"kty": "EC", "kid": kid, "crv": "P-256",
                    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
            })
            .collect();
        let tmp = self.root.join("jwks.json.tmp");
        std::fs::write(&tmp, serde_json::json!({ "keys": keys }).to_string()).expect("write jwks");
        std::fs::rename(tmp, self.root.join("jwks.json")).expect("publish jwks");
    }

    /// Starts (again) serving.
    pub fn restart(&mut self) {
        let mut command = Command::new("python3");
        let (host, port) = self.addr.rsplit_once(':').expect("host:port");
        command.args(["-m", "http.server", port, "--bind", host, "--directory"]).arg(&self.root);
        self.process = Some(Process::spawn(command, self.root.with_extension("log")));
        let url = format!("{}/jwks.json", self.issuer);
        wait_for("the IdP to serve", || ureq::get(&url).call().ok().map(|_| ()));
    }

    /// The server's request log.
    pub fn log_text(&self) -> String {
        self.process.as_ref().map(Process::log_text).unwrap_or_default()
    }

    /// Stops serving.
    pub fn stop(&mut self) {
        drop(self.process.take());
    }
}

/// The Python interpreter with the peers' packages (`bash tests/peers/setup.sh` makes it).
pub fn python() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(path.exists(), "{} is missing: run `bash tests/peers/setup.sh` first", path.display());
    path
}

/// A script of `tests/peers/`.
pub fn peer(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers").join(script)
}

/// An identity provider that serves OIDC discovery and a JWKS, and mints tokens with PyJWT
/// (`tests/peers/idp.py`).
pub struct MintingIdp {
    /// The server process.
    pub process: Process,
    /// `http://127.a.b.c:<port>`, also the issuer URL.
    pub issuer: String,
}

impl MintingIdp {
    /// Starts one in `dir` and waits until it serves its keys.
    pub fn start(dir: &Path) -> MintingIdp {
        let addr = loopback_addr();
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let mut command = Command::new(python());
        command.arg(peer("idp.py")).args([host, port]);
        let process = Process::spawn(command, dir.join("minting-idp.log"));
        let issuer = format!("http://{addr}");
        let url = format!("{issuer}/jwks");
        wait_for_or("the IdP to serve", || process.log_text(), || ureq::get(&url).call().ok().map(|_| ()));
        MintingIdp { process, issuer }
    }

    /// A token: `request` as `idp.py` documents it (claims, key, kid, attack).
    pub fn mint(&self, request: &Value) -> String {
        let url = format!("{}/mint", self.issuer);
        ureq::post(&url).send_json(request).expect("mint").body_mut().read_to_string().expect("token")
    }

    /// A DPoP proof by client `client`'s key for (`htm`, `htu`, `token`), and that key's
    /// thumbprint: `{"proof": …, "jkt": …}`.
    pub fn dpop(&self, client: &str, htm: &str, htu: &str, token: &str) -> Value {
        let url = format!("{}/dpop", self.issuer);
        let request = serde_json::json!({"client": client, "htm": htm, "htu": htu, "token": token});
        ureq::post(&url).send_json(request).expect("dpop").body_mut().read_json().expect("proof")
    }

    /// Publishes a new ES256 key `kid` (mint with `"key": kid`).
    pub fn rotate(&self, kid: &str) {
        let url = format!("{}/rotate", self.issuer);
        ureq::post(&url).send_json(serde_json::json!({ "kid": kid })).expect("rotate");
    }
}

/// An MCP server written with the official Python SDK (`tests/peers/mcp_server.py`).
pub struct McpUpstream {
    /// The server process.
    pub process: Process,
    /// Its MCP endpoint, `http://127.a.b.c:<port>/mcp`.
    pub url: String,
}

impl McpUpstream {
    /// Starts one in `dir` and waits until it accepts connections.
    pub fn start(dir: &Path) -> McpUpstream {
        let addr = loopback_addr();
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let mut command = Command::new(python());
        command.arg(peer("mcp_server.py")).args([host, port]);
        let process = Process::spawn(command, dir.join("mcp-upstream.log"));
        wait_for_or(
            "the MCP server to listen",
            || process.log_text(),
            || std::net::TcpStream::connect(&addr).ok().map(|_| ()),
        );
        McpUpstream { process, url: format!("http://{addr}/mcp") }
    }
}

/// Runs the official Python SDK's client (`tests/peers/mcp_client.py`) through `steps`, each
/// `(token, [operation, args…])` on a connection of its own; their JSON reports, in order.
pub fn mcp_client(url: &str, mode: &str, steps: &[(&str, &[&str])]) -> Vec<Value> {
    mcp_client_with(url, mode, &serde_json::json!({}), steps)
}

/// [`mcp_client`] with TLS settings for every step: `{"ca": PEM file, "cert": …, "key": …}`.
pub fn mcp_client_with(url: &str, mode: &str, tls: &Value, steps: &[(&str, &[&str])]) -> Vec<Value> {
    let script: Vec<Value> = steps
        .iter()
        .map(|(token, op)| {
            let mut step = tls.clone();
            step["token"] = serde_json::json!(token);
            step["op"] = serde_json::json!(op);
            step
        })
        .collect();
    run_peer("mcp_client.py", &[url, mode], &Value::Array(script))
}

/// Calls the local check API at `target` (`unix:/path`) with Envoy's own generated ext_authz
/// stubs (`tests/peers/ext_authz_client.py`); one result per check.
pub fn ext_authz_client(target: &str, checks: &Value) -> Vec<Value> {
    run_peer("ext_authz_client.py", &[target], checks)
}

/// Runs a Python peer with `input` as JSON on stdin; its JSON list on stdout.
fn run_peer(script: &str, args: &[&str], input: &Value) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new(python())
        .arg(peer(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run a Python peer");
    child.stdin.take().expect("stdin").write_all(input.to_string().as_bytes()).expect("input");
    let out = child.wait_with_output().expect("the peer finishes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("{script} output is not JSON ({e}):\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    })
}

/// A raw HTTP exchange with the gateway (for what the SDK client hides).
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// `WWW-Authenticate`.
    pub challenge: String,
    /// `Mcp-Session-Id`.
    pub session: Option<String>,
    /// The body, as text.
    pub body: String,
}

/// POSTs `body` to the gateway at `url` with `token` as a bearer token and `headers`.
pub fn post(url: &str, token: Option<&str>, headers: &[(&str, &str)], body: &str) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut request = agent
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut response = request.send(body).expect("the gateway answers");
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (challenge, session) = (header("www-authenticate").unwrap_or_default(), header("mcp-session-id"));
    Answer {
        status: response.status().as_u16(),
        challenge,
        session,
        body: response.body_mut().read_to_string().unwrap(),
    }
}

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

/// A throwaway certificate authority for TLS peers in the tests (etcd, the OTLP receiver).
pub struct TestCa {
    /// Its certificate, PEM.
    pub pem: String,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
}

impl TestCa {
    /// A new CA.
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).expect("CA").pem();
        TestCa { pem, params, key }
    }

    /// A certificate for `ips` named `name` (PEM certificate, PEM key); `usage` when given.
    pub fn issue(
        &self,
        ips: &[std::net::IpAddr],
        usage: Option<rcgen::ExtendedKeyUsagePurpose>,
        name: &str,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)).collect();
        params.extended_key_usages = usage.into_iter().collect();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &rcgen::Issuer::from_params(&self.params, &self.key)).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }
}

impl Default for TestCa {
    fn default() -> TestCa {
        TestCa::new()
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

/// A TCP proxy on a loopback port that a test can cut (every connection closed, new ones
/// refused) and restore: a network partition between one process and another.
pub struct Proxy {
    /// Where clients connect.
    pub address: String,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Both ends of every forwarded connection, to shut down on a cut.
    connections: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    /// Forwards connections to `target` until dropped.
    pub fn start(target: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let address = loopback_addr();
        let listener = TcpListener::bind(&address).expect("proxy listens");
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (target, open2, connections2) = (target.to_string(), open.clone(), connections.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !open2.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let mut live = connections2.lock().unwrap();
                live.extend([client.try_clone().expect("clone"), server.try_clone().expect("clone")]);
                drop(live);
                for (mut from, mut to) in
                    [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { address, open, connections }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
