//! Token exchanges per second at one control plane's token service (RFC 8693 over HTTPS with
//! keep-alive), every exchange with a subject token the service has not seen before (ES256,
//! minted here before the clock starts), next to a baseline measured in the same run: `GET
//! /jwks.json` on the same connections (TLS, HTTP and routing, no token work).
//!
//! `cargo build --release --workspace --bins && ./target/release/exchange-bench --clients 8 --seconds 8`

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::json;
use tests::{ControlPlane, cpu_time, loopback_addr};

struct Args {
    clients: usize,
    seconds: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { clients: 8, seconds: 8 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: u64 = value.parse().map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--clients" => args.clients = n.clamp(1, 64) as usize,
            "--seconds" => args.seconds = n.clamp(1, 60),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Subject tokens at most this many per client (each used once).
const TOKENS_PER_CLIENT: usize = 12_000;

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\nusage: exchange-bench [--clients N] [--seconds S]");
            return std::process::ExitCode::FAILURE;
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = loopback_addr();
    let host = listen.rsplit_once(':').unwrap().0.to_string();
    let cp = ControlPlane::start(
        dir.path(),
        &["--token-listen", &listen, "--server-name", &host, "--signing-key-publish-delay", "0s"],
    );
    let service = format!("https://{listen}");

    // The workloads' identity provider: an ES256 key, its JWKS inline in the issuer.
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = key.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "k1", "x": b64(&point[1..33]), "y": b64(&point[33..65])});
    let yaml = format!(
        r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: bench-idp}}
spec:
  issuer: https://idp.bench.example
  keys: {{jwks: {{keys: [{jwk}]}}}}
  allowedAlgorithms: [ES256]
  maxTokenLifetime: 1h
---
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: warden}}
spec:
  issuer: {service}
  keys: {{controlPlane: true}}
  allowedAlgorithms: [EdDSA]
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: notes}}
spec:
  resource: https://mcp.bench.example/notes
  issuers: [warden]
  upstream: http://127.0.0.1:9/mcp
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {{name: tasks}}
spec:
  cedar: |
    permit(principal in Issuer::"bench-idp", action == Action::"token/exchange", resource in Server::"notes")
      when {{ ["search", "get_issue"].contains(resource.name) }};
"#
    );
    let out = cp.apply(&yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let header = b64(br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#);
    let mint = |i: usize| -> String {
        let claims = json!({"iss": "https://idp.bench.example", "sub": format!("workload-{}", i % 500),
            "aud": service, "iat": now, "exp": now + 1800, "jti": format!("subject-{i}")});
        let message = format!("{header}.{}", b64(claims.to_string().as_bytes()));
        let signature = key.sign(&rng, message.as_bytes()).unwrap();
        format!("{message}.{}", b64(signature.as_ref()))
    };
    let per_client = TOKENS_PER_CLIENT.min(args.seconds as usize * 1_500);
    let pools: Vec<Vec<String>> =
        (0..args.clients).map(|c| (0..per_client).map(|i| mint(c * per_client + i)).collect()).collect();

    let ca = std::fs::read(cp.data_dir.join("ca.crt")).unwrap();
    let ca = ureq::tls::Certificate::from_pem(&ca).unwrap().to_owned();
    let http = move || -> ureq::Agent {
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca.clone()])))
            .build();
        ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().into()
    };
    let form = |token: &str| {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", token),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ("resource", "https://mcp.bench.example/notes"),
                ("scope", "tool:search tool:get_issue"),
            ])
            .finish()
    };
    // Wait for the first signing key.
    let probe = http();
    let warm = Instant::now();
    loop {
        let response = probe
            .post(format!("{service}/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .send(form(&mint(usize::MAX / 2)));
        if response.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(warm.elapsed() < Duration::from_secs(30), "the token service never issued a token");
        std::thread::sleep(Duration::from_millis(50));
    }

    let pid = cp.process.as_ref().unwrap().pid();
    let limit = Duration::from_secs(args.seconds);
    // The baseline: same clients, same TLS connections' setup, a request with no token work.
    let baseline = load(args.clients, limit, &http, |agent, _| {
        Some(agent.get(format!("{service}/jwks.json")).call().is_ok_and(ok))
    });
    let cpu0 = cpu_time(pid);
    let exchanges = load(args.clients, limit, &http, |agent, (client, i)| {
        let token = pools[client].get(i)?;
        let response = agent
            .post(format!("{service}/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .send(form(token));
        Some(response.is_ok_and(ok))
    });
    let cp_cpu = cpu_time(pid) - cpu0;

    println!("clients: {}  seconds: {} each", args.clients, args.seconds);
    println!(
        "baseline GET /jwks.json: {:.0} req/s  p50 {:.2} ms  p99 {:.2} ms",
        baseline.rate(),
        baseline.percentile(0.5),
        baseline.percentile(0.99)
    );
    println!(
        "token exchange (new ES256 subject token each, EdDSA task token): {:.0} exchanges/s  p50 {:.2} ms  p99 {:.2} ms  failed {}",
        exchanges.rate(),
        exchanges.percentile(0.5),
        exchanges.percentile(0.99),
        exchanges.failed
    );
    println!("ratio to baseline: {:.2}", exchanges.rate() / baseline.rate());
    println!(
        "control-plane CPU per exchange: {:.1} µs",
        cp_cpu.as_secs_f64() * 1e6 / exchanges.latencies.len().max(1) as f64
    );
    if exchanges.failed > 0 {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

/// A 200 whose body was read to the end (so the connection is kept for the next request).
fn ok(mut response: ureq::http::Response<ureq::Body>) -> bool {
    response.status() == 200 && response.body_mut().read_to_vec().is_ok()
}

struct Load {
    latencies: Vec<Duration>,
    failed: usize,
    elapsed: Duration,
}

impl Load {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// In milliseconds (latencies are sorted by `load`).
    fn percentile(&self, p: f64) -> f64 {
        let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len().saturating_sub(1));
        self.latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }
}

/// `clients` threads each sending requests one after another for `limit`, or until `request`
/// has nothing more to send (`None`); `Some(false)` is a failed request.
fn load(
    clients: usize,
    limit: Duration,
    http: &(impl Fn() -> ureq::Agent + Sync),
    request: impl Fn(&ureq::Agent, (usize, usize)) -> Option<bool> + Sync,
) -> Load {
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|client| {
                let request = &request;
                scope.spawn(move || {
                    let agent = http();
                    let (mut latencies, mut failed) = (Vec::new(), 0);
                    let mut i = 0;
                    while started.elapsed() < limit {
                        let t0 = Instant::now();
                        let Some(ok) = request(&agent, (client, i)) else { break };
                        if ok {
                            latencies.push(t0.elapsed());
                        } else {
                            failed += 1;
                            if failed > 100 {
                                break;
                            }
                        }
                        i += 1;
                    }
                    (latencies, failed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    let elapsed = started.elapsed();
    let mut load = Load { latencies: Vec::new(), failed: 0, elapsed };
    for (latencies, failed) in results {
        load.latencies.extend(latencies);
        load.failed += failed;
    }
    load.latencies.sort();
    load
}
