//! Gateway load harness: the same `wrk` load, in one run, against
//!   1. the upstream directly,
//!   2. nginx as a plain reverse proxy (no authentication) in front of it,
//!   3. the Warden gateway (token validation + Cedar policy on every request, each decision
//!      recorded and sent to the control plane) in front of it,
//!   4. the same with decision records off (`--no-decision-records`), for their cost,
//!   5. a bare proxy on the gateway's HTTP stack (`bare-proxy`: the agent's worker layout,
//!      hyper server and client, no Warden work at all), for what that stack reaches here,
//!   6. the Warden gateway with a rate limit per caller and tool and a concurrency limit (high
//!      enough never to refuse: the cost of keeping count), against 3,
//!
//! interleaved over several rounds, reporting the median of each with ratios against the
//! direct connection and nginx. The upstream is nginx answering a fixed JSON-RPC result (a
//! trivial upstream, so the proxies' own cost shows). Then the agent's resident memory with one
//! policy and with `--policies` policies loaded, and what a million callers' buckets take.
//!
//! Needs nginx and wrk (Debian: `apt-get install nginx wrk`) and release binaries:
//! `cargo build --release --workspace --bins && ./target/release/gateway-bench`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tests::{Agent, ControlPlane, cpu_time_with_children, loopback_addr, rss_kib, wait_for};

struct Args {
    duration_secs: u64,
    connections: u64,
    rounds: usize,
    policies: usize,
    /// The agent's `--gateway-workers` (its default, one per CPU, when absent).
    workers: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { duration_secs: 10, connections: 32, rounds: 3, policies: 1000, workers: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: u64 = value.parse().map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--duration" => args.duration_secs = n.clamp(1, 120),
            "--connections" => args.connections = n.clamp(1, 1000),
            "--rounds" => args.rounds = n.clamp(1, 20) as usize,
            "--policies" => args.policies = n.clamp(1, 10_000) as usize,
            "--gateway-workers" => args.workers = Some(n.clamp(1, 64)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

const BODY: &str =
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;
const RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}"#;

/// An nginx instance, stopped with SIGTERM when dropped: killing its master outright would leave
/// its workers running.
struct Nginx(tests::Process);

impl Nginx {
    fn pid(&self) -> u32 {
        self.0.pid()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.0.terminate();
    }
}

/// An nginx instance in `dir` with `servers` (http-level configuration).
fn nginx(dir: &Path, servers: &str) -> Nginx {
    std::fs::create_dir_all(dir).expect("nginx dir");
    let conf = format!(
        r#"
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
{servers}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf");
    let mut command = Command::new("nginx");
    command.arg("-c").arg(&path).arg("-p").arg(dir);
    Nginx(tests::Process::spawn(command, dir.join("nginx.log")))
}

/// An ES256 key pair: the JWKS for the issuer and a token signed by it for each (audience,
/// subject).
fn signed_tokens(issuer: &str, audiences: &[(&str, String)]) -> (String, Vec<String>) {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let point = key.public_key_raw();
    let jwks = format!(
        r#"{{keys: [{{kty: EC, kid: bench, crv: P-256, x: "{}", y: "{}"}}]}}"#,
        b64(&point[1..33]),
        b64(&point[33..65])
    );
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = b64(br#"{"alg":"ES256","kid":"bench","typ":"JWT"}"#);
    let pkcs8 = key.serialize_der();
    let rng = ring::rand::SystemRandom::new();
    let signer =
        ring::signature::EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .expect("signing key");
    let tokens = audiences
        .iter()
        .map(|(audience, subject)| {
            let claims = serde_json::json!({
                "iss": issuer, "sub": subject, "aud": audience, "iat": now, "exp": now + 3000, "scope": "mcp",
                "jti": format!("bench-{audience}-{subject}"),
            });
            let signing_input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
            let signature = signer.sign(&rng, signing_input.as_bytes()).expect("sign");
            format!("{signing_input}.{}", b64(signature.as_ref()))
        })
        .collect();
    (jwks, tokens)
}

/// Workloads of the realistic mix, each with a token of its own.
const MIX_WORKLOADS: usize = 10_000;
/// Tools the mix calls.
const MIX_TOOLS: usize = 50;

/// A wrk script cycling through requests of every workload in `tokens`, each calling one of
/// [`MIX_TOOLS`] tools with arguments of its own (two requests per workload, with other tools
/// and arguments). The requests are formatted once, at start, so wrk's own cost per request is
/// what it is for one token.
fn mix_script(dir: &Path, tokens: &[String]) -> PathBuf {
    let mut lua = String::from("local tokens = {\n");
    for token in tokens {
        lua.push_str(&format!("  \"{token}\",\n"));
    }
    lua.push_str(&format!(
        "}}\nlocal requests = {{}}\n\
         init = function(args)\n\
         \x20 for round = 0, 1 do\n\
         \x20   for i = 1, #tokens do\n\
         \x20     local tool = \"tool-\" .. ((i * 7 + round * 13) % {MIX_TOOLS})\n\
         \x20     local body = '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"' .. tool .. \n\
         \x20       '\",\"arguments\":{{\"text\":\"note ' .. i .. '-' .. round .. '\",\"limit\":' .. (i % 100) .. '}}}}}}'\n\
         \x20     requests[#requests + 1] = wrk.format(\"POST\", nil, {{\n\
         \x20       [\"Content-Type\"] = \"application/json\",\n\
         \x20       [\"Accept\"] = \"application/json, text/event-stream\",\n\
         \x20       [\"Authorization\"] = \"Bearer \" .. tokens[i],\n\
         \x20     }}, body)\n\
         \x20   end\n\
         \x20 end\n\
         end\n\
         local n = math.random(1, {count})\n\
         request = function()\n\
         \x20 n = n % #requests + 1\n\
         \x20 return requests[n]\n\
         end\n",
        count = tokens.len() * 2,
    ));
    let path = dir.join("mix.lua");
    std::fs::write(&path, lua).expect("wrk script");
    path
}

struct Load {
    /// CPU the proxy itself used per request (none for the direct connection).
    proxy_cpu_us: f64,
    /// CPU the control plane used per request meanwhile (storing the records of those requests,
    /// on the same two cores here; on a host of its own in a deployment).
    cp_cpu_us: f64,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
}

fn wrk(url: &str, script: &Path, args: &Args, duration_secs: u64, proxy: Option<u32>, cp: u32) -> Load {
    let cpu_before = proxy.map(cpu_time_with_children);
    let cp_before = cpu_time_with_children(cp);
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{}", args.connections), &format!("-d{duration_secs}s"), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| rest.split_whitespace().next().unwrap_or(""))
    };
    let millis = |v: &str| -> f64 {
        let (number, factor) = if let Some(n) = v.strip_suffix("us") {
            (n, 0.001)
        } else if let Some(n) = v.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = v.strip_suffix('s') {
            (n, 1000.0)
        } else {
            (v, f64::NAN)
        };
        number.parse::<f64>().unwrap_or(f64::NAN) * factor
    };
    let requests_per_sec: f64 = field("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let cpu = proxy.zip(cpu_before).map(|(pid, before)| cpu_time_with_children(pid) - before);
    let requests = requests_per_sec * duration_secs as f64;
    Load {
        proxy_cpu_us: cpu.map_or(0.0, |c| c.as_secs_f64() * 1e6 / requests),
        cp_cpu_us: (cpu_time_with_children(cp) - cp_before).as_secs_f64() * 1e6 / requests,
        requests_per_sec,
        p50_ms: field("50%").map(millis).unwrap_or(f64::NAN),
        p99_ms: field("99%").map(millis).unwrap_or(f64::NAN),
        non_2xx: field("Non-2xx or 3xx responses:").and_then(|v| v.parse().ok()).unwrap_or(0),
    }
}

/// What the buckets of a million distinct callers take: this process's resident memory before
/// and after a million checks of one limit, each by another caller.
fn buckets_of_a_million_callers() {
    use warden_core::rate_limit::{Limiter, RateLimit, Subject};
    let limit: RateLimit = serde_json::from_str(r#"{"requests": 10, "period": "1m"}"#).expect("a limit");
    let limiter = Limiter::new(&limit, 1_000_000);
    let before = rss_kib(std::process::id());
    let started = std::time::Instant::now();
    for i in 0..1_000_000u64 {
        let subject = format!("workload-{i}");
        let who = Subject { issuer: "https://idp.bench.example", subject: &subject, tool: None, tenant: None };
        assert!(limiter.check(&who, i).is_ok());
    }
    let took = started.elapsed();
    let after = rss_kib(std::process::id());
    println!(
        "rate limit buckets: {} callers kept, {:.1} MiB more resident ({:.0} bytes each), {:.0} ns a check",
        limiter.keys(),
        after.saturating_sub(before) as f64 / 1024.0,
        after.saturating_sub(before) as f64 * 1024.0 / limiter.keys() as f64,
        took.as_nanos() as f64 / 1e6
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}\nusage: gateway-bench [--duration S] [--connections N] [--rounds N] [--policies N] [--gateway-workers N]");
        std::process::exit(2)
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let (upstream, proxy, gateway, quiet_gateway, bare, limited_gateway) =
        (loopback_addr(), loopback_addr(), loopback_addr(), loopback_addr(), loopback_addr(), loopback_addr());
    let mix_gateway = loopback_addr();
    // Two instances, so the proxy's CPU is told apart from the upstream's and both proxies hand
    // requests to another process, as the gateway does.
    let _upstream = nginx(
        &dir.path().join("upstream"),
        &format!(
            "server {{ listen {upstream}; location = /mcp {{ default_type application/json; return 200 '{RESULT}'; }} }}"
        ),
    );
    let nginx_proxy = nginx(
        &dir.path().join("proxy"),
        &format!(
            "upstream mcp {{ server {upstream}; keepalive 64; }}\n  server {{ listen {proxy}; location = /mcp {{ \
             proxy_pass http://mcp; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
        ),
    );
    let mut command = Command::new(tests::bin("bare-proxy"));
    command.args([bare.as_str(), &format!("http://{upstream}/mcp")]).args(args.workers.map(|n| n.to_string()));
    let bare_proxy = tests::Process::spawn(command, dir.path().join("bare-proxy.log"));

    let cp = ControlPlane::start(dir.path(), &[]);
    let join = cp.join_token("5m", "bench-agent");
    let workers = args.workers.map(|n| n.to_string());
    let mut flags: Vec<&str> = workers.iter().flat_map(|n| ["--gateway-workers", n.as_str()]).collect();
    flags.extend(["--label", "records=on"]);
    let agent = Agent::start_with(dir.path(), "bench-agent", &[&cp.address], Some(&join), &flags);
    let quiet_join = cp.join_token("5m", "bench-quiet");
    let mut quiet_flags: Vec<&str> = workers.iter().flat_map(|n| ["--gateway-workers", n.as_str()]).collect();
    quiet_flags.extend(["--label", "records=off", "--no-decision-records"]);
    let quiet = Agent::start_with(dir.path(), "bench-quiet", &[&cp.address], Some(&quiet_join), &quiet_flags);
    let limited_join = cp.join_token("5m", "bench-limited");
    let mut limited_flags: Vec<&str> = workers.iter().flat_map(|n| ["--gateway-workers", n.as_str()]).collect();
    limited_flags.extend(["--label", "records=limited"]);
    let limited = Agent::start_with(dir.path(), "bench-limited", &[&cp.address], Some(&limited_join), &limited_flags);
    let resource = format!("http://{gateway}/mcp");
    let quiet_resource = format!("http://{quiet_gateway}/mcp");
    let limited_resource = format!("http://{limited_gateway}/mcp");
    let mix_resource = format!("http://{mix_gateway}/mcp");
    // The realistic mix: many workloads (a token each) calling many tools with varying
    // arguments, on the same agent as "warden".
    let mut audiences: Vec<(&str, String)> = vec![
        (&resource, "bench".to_string()),
        (&quiet_resource, "bench".to_string()),
        (&limited_resource, "bench".to_string()),
    ];
    audiences.extend((0..MIX_WORKLOADS).map(|i| (mix_resource.as_str(), format!("workload-{i}"))));
    let (jwks, tokens) = signed_tokens("https://idp.bench.example", &audiences);
    let (token, quiet_token, limited_token) = (tokens[0].clone(), tokens[1].clone(), tokens[2].clone());
    let mix_tokens = &tokens[3..];
    let base = format!(
        r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: bench-idp}}
spec:
  issuer: https://idp.bench.example
  keys: {{jwks: {jwks}}}
  allowedAlgorithms: [ES256]
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: bench}}
spec:
  resource: {resource}
  issuers: [bench-idp]
  upstream: http://{upstream}/mcp
  listen: {gateway}
  agents: {{matchLabels: {{records: "on"}}}}
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: bench-quiet}}
spec:
  resource: {quiet_resource}
  issuers: [bench-idp]
  upstream: http://{upstream}/mcp
  listen: {quiet_gateway}
  agents: {{matchLabels: {{records: "off"}}}}
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: bench-limited}}
spec:
  resource: {limited_resource}
  issuers: [bench-idp]
  upstream: http://{upstream}/mcp
  listen: {limited_gateway}
  agents: {{matchLabels: {{records: "limited"}}}}
  rateLimits: [{{requests: 1000000, period: 1s, burst: 1000000, per: [caller, tool], tools: [echo]}}]
  concurrencyLimits: [{{max: 1000, tools: [echo]}}]
  toolPinning: {{mode: enforce}}
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: bench-mix}}
spec:
  resource: {mix_resource}
  issuers: [bench-idp]
  upstream: http://{upstream}/mcp
  listen: {mix_gateway}
  agents: {{matchLabels: {{records: "on"}}}}
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {{name: bench-mix-tools}}
spec:
  servers: [bench-mix]
  cedar: |
    permit(principal, action == Action::"tools/call", resource)
      when {{ context.scopes.contains("mcp") && resource.name like "tool-*" }};
    forbid(principal, action == Action::"tools/call", resource)
      when {{ resource.name == "tool-delete" }};
---
apiVersion: warden.dev/v1
kind: ToolApproval
metadata: {{name: bench-limited-echo}}
spec: {{server: bench-limited, kind: tool, name: echo, approved: "sha256:{approved}"}}
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {{name: bench-tools}}
spec:
  servers: [bench, bench-quiet, bench-limited]
  cedar: |
    permit(principal, action == Action::"tools/call", resource) when {{ resource.name == "echo" }};
"#,
        approved = "0".repeat(64),
    );
    let out = cp.apply(&base);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let script = |name: &str, token: &str| {
        let path = dir.path().join(format!("{name}.lua"));
        std::fs::write(
            &path,
            format!(
                "wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
                 wrk.headers[\"Accept\"] = \"application/json, text/event-stream\"\n\
                 wrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"
            ),
        )
        .expect("wrk script");
        path
    };
    let (script, quiet_script, limited_script) =
        (script("post", &token), script("quiet", &quiet_token), script("limited", &limited_token));
    let mix_script = mix_script(dir.path(), mix_tokens);
    let agent_pid = agent.process.as_ref().expect("agent runs").pid();
    let cp_pid = cp.process.as_ref().expect("control plane runs").pid();
    let quiet_pid = quiet.process.as_ref().expect("agent runs").pid();
    let limited_pid = limited.process.as_ref().expect("agent runs").pid();
    let targets = [
        ("direct", format!("http://{upstream}/mcp"), None, &script, &token),
        ("nginx", format!("http://{proxy}/mcp"), Some(nginx_proxy.pid()), &script, &token),
        ("warden", format!("http://{gateway}/mcp"), Some(agent_pid), &script, &token),
        ("no-records", format!("http://{quiet_gateway}/mcp"), Some(quiet_pid), &quiet_script, &quiet_token),
        ("hyper-bare", format!("http://{bare}/mcp"), Some(bare_proxy.pid()), &script, &token),
        ("limited", format!("http://{limited_gateway}/mcp"), Some(limited_pid), &limited_script, &limited_token),
        ("mix", format!("http://{mix_gateway}/mcp"), Some(agent_pid), &mix_script, &mix_tokens[0]),
    ];
    for (name, url, _, _, token) in &targets {
        wait_for(&format!("{name} to answer 200"), || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let response = agent
                .post(url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("authorization", &format!("Bearer {token}"))
                .send(BODY)
                .ok()?;
            (response.status() == 200).then_some(())
        });
    }

    println!(
        "wrk -t2 -c{} -d{}s, {} rounds interleaved, POST tools/call ({} bytes), median of rounds",
        args.connections,
        args.duration_secs,
        args.rounds,
        BODY.len()
    );
    let mut results: Vec<Vec<Load>> = targets.iter().map(|_| Vec::new()).collect();
    for (_, url, pid, script, _) in &targets {
        wrk(url, script, &args, 2, *pid, cp_pid); // warm-up: connections, pools, caches
    }
    for round in 0..args.rounds {
        // The two agents swap places every round, so neither always runs on the heels of the
        // same neighbour.
        let order = if round % 2 == 0 { [0, 1, 4, 2, 6, 5, 3] } else { [0, 1, 4, 3, 5, 6, 2] };
        for i in order {
            let (_, url, pid, script, _) = &targets[i];
            results[i].push(wrk(url, script, &args, args.duration_secs, *pid, cp_pid));
        }
    }
    let median_of = |r: &[Load], f: fn(&Load) -> f64| median(r.iter().map(f).collect());
    let (direct, nginx) =
        (median_of(&results[0], |l| l.requests_per_sec), median_of(&results[1], |l| l.requests_per_sec));
    let direct_p50 = median_of(&results[0], |l| l.p50_ms);
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>8} {:>10} {:>8} {:>14} {:>11} {:>8}",
        "target",
        "req/s",
        "vs direct",
        "vs nginx",
        "p50 ms",
        "added p50",
        "p99 ms",
        "proxy CPU/req",
        "CP CPU/req",
        "non-2xx"
    );
    for ((name, ..), r) in targets.iter().zip(&results) {
        let rps = median_of(r, |l| l.requests_per_sec);
        let p50 = median_of(r, |l| l.p50_ms);
        println!(
            "{:<10} {:>9.0} {:>9.2} {:>9.2} {:>8.3} {:>10.3} {:>8.3} {:>11.1} µs {:>8.2} µs {:>8}",
            name,
            rps,
            rps / direct,
            rps / nginx,
            p50,
            p50 - direct_p50,
            median_of(r, |l| l.p99_ms),
            median_of(r, |l| l.proxy_cpu_us),
            median_of(r, |l| l.cp_cpu_us),
            r.iter().map(|l| l.non_2xx).sum::<u64>()
        );
    }
    let (with, without) =
        (median_of(&results[2], |l| l.requests_per_sec), median_of(&results[3], |l| l.requests_per_sec));
    println!("throughput with decision records / without: {:.3}", with / without);
    // Adjacent runs share the machine's state (other load, frequency, caches): the ratio of each
    // round's pair drifts less than the ratio of medians.
    let paired: Vec<f64> =
        results[2].iter().zip(&results[3]).map(|(w, wo)| w.requests_per_sec / wo.requests_per_sec).collect();
    let listed: Vec<String> = paired.iter().map(|r| format!("{r:.3}")).collect();
    println!("  per round: {} (median {:.3})", listed.join(", "), median(paired));
    let limited_rps = median_of(&results[5], |l| l.requests_per_sec);
    println!("throughput with a rate limit, a concurrency limit and tool pinning / without: {:.3}", limited_rps / with);
    let paired: Vec<f64> =
        results[5].iter().zip(&results[2]).map(|(l, w)| l.requests_per_sec / w.requests_per_sec).collect();
    let listed: Vec<String> = paired.iter().map(|r| format!("{r:.3}")).collect();
    println!("  per round: {} (median {:.3})", listed.join(", "), median(paired));
    let mix_rps = median_of(&results[6], |l| l.requests_per_sec);
    println!(
        "throughput of the realistic mix ({MIX_WORKLOADS} workloads, {MIX_TOOLS} tools, varying arguments) / one token: {:.3}",
        mix_rps / with
    );
    let paired: Vec<f64> =
        results[6].iter().zip(&results[2]).map(|(m, w)| m.requests_per_sec / w.requests_per_sec).collect();
    let listed: Vec<String> = paired.iter().map(|r| format!("{r:.3}")).collect();
    println!("  per round: {} (median {:.3})", listed.join(", "), median(paired));
    buckets_of_a_million_callers();

    // Memory: the agent with one policy, then with many.
    let one = rss_kib(agent_pid);
    println!(
        "agent RSS after the load: {:.1} MiB (without decision records: {:.1} MiB)",
        one as f64 / 1024.0,
        rss_kib(quiet_pid) as f64 / 1024.0
    );
    let mut many = String::new();
    for i in 0..args.policies {
        many.push_str(&format!(
            "---\napiVersion: warden.dev/v1\nkind: Policy\nmetadata: {{name: p{i}}}\nspec:\n  servers: [bench]\n  cedar: |\n    \
             permit(principal, action == Action::\"tools/call\", resource) when {{ resource.name == \"tool-{i}\" && context.scopes.contains(\"s{i}\") }};\n"
        ));
    }
    let out = cp.apply(&many);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let version = cp.version();
    cp.wait_converged(&["bench-agent"], version);
    std::thread::sleep(Duration::from_secs(1));
    // A request through the gateway, so the per-server policy set is in use.
    let ok = ureq::post(&targets[2].1)
        .header("content-type", "application/json")
        .header("authorization", &format!("Bearer {token}"))
        .send(BODY)
        .map(|r| r.status() == 200)
        .unwrap_or(false);
    let loaded = rss_kib(agent_pid);
    println!(
        "agent RSS: {:.1} MiB with 1 policy, {:.1} MiB with {} policies (request through the gateway: {})",
        one as f64 / 1024.0,
        loaded as f64 / 1024.0,
        args.policies + 1,
        if ok { "allowed" } else { "FAILED" }
    );
}
