//! Peers written by others, run as processes: Python's `http.server` as an identity provider's
//! static endpoints, and the scripts of `tests/peers/` (PyJWT, the official MCP Python SDK,
//! Envoy's ext_authz stubs) in the interpreter `tests/peers/setup.sh` prepares.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::loopback::loopback_addr;
use crate::process::Process;
use crate::wait::{wait_for, wait_for_or};

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
