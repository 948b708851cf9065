//! Console load harness: how long each console page takes at fleet scale.
//!
//! The decision store in a fresh data directory is filled in-process with `--records` records
//! (as agents would have sent them: the store's own ingest), then a real `warden-cp` starts on
//! it with the console on loopback, `--agents` light agents join and stay connected, and every
//! page is fetched `--requests` times over real HTTP, one at a time. Printed per page: the first
//! fetch's time to the last byte, then p50, p99 and max of all, and the page's size.
//!
//! `cargo build --release -p tests --bins -p control-plane -p wardenctl && ulimit -n 16384 &&
//! ./target/release/console-bench --agents 10000 --records 5000000`

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::v1 as pb;
use tests::{ControlPlane, LightAgent};

struct Args {
    agents: usize,
    records: usize,
    requests: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { agents: 10_000, records: 5_000_000, requests: 20 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: usize = value.parse().map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--agents" => args.agents = n.clamp(1, 10_000),
            "--records" => args.records = n.clamp(1, 10_000_000),
            "--requests" => args.requests = n.clamp(1, 1_000),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// Record `i` of the fill: 1,000 agents, 2,000 workloads, 50 tools, one in ten denied.
fn record(i: usize, now_nanos: i64) -> pb::DecisionRecord {
    pb::DecisionRecord {
        sequence: 0,
        time_unix_nanos: now_nanos - (10_000_000 - i as i64) * 1_000_000,
        server: "github".into(),
        method: "tools/call".into(),
        target_kind: "tool".into(),
        target: format!("tool-{}", i % 50),
        subject: format!("workload-{}", i % 2_000),
        issuer: "corp-idp".into(),
        decision: if i.is_multiple_of(10) { pb::Decision::Deny } else { pb::Decision::Allow } as i32,
        reason: if i.is_multiple_of(10) { "policy_denied".into() } else { String::new() },
        policies: vec!["github-readers.0".into()],
        latency_micros: 40 + (i % 30) as u64,
        trace_id: format!("{:032x}", i as u128 * 104_729),
        jti_hash: format!("{:032x}", i as u128 * 7919),
        via: "gateway".into(),
        token_lifetime_seconds: 300,
        ..Default::default()
    }
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\nusage: console-bench [--agents N] [--records M] [--requests R]");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("cp");
    std::fs::create_dir_all(&data_dir).expect("data dir");

    // The records first, straight into the store the control plane will open.
    let started = Instant::now();
    runtime.block_on(async {
        let store = control_plane::telemetry::decisions::Decisions::open(&data_dir, u64::MAX, Default::default())
            .expect("decision store");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
        let per_agent = args.records.div_ceil(1_000);
        for agent in 0..1_000.min(args.records) {
            let first = agent * per_agent;
            let last = ((agent + 1) * per_agent).min(args.records);
            for chunk in (first..last).collect::<Vec<_>>().chunks(1_000) {
                let batch = pb::DecisionBatch {
                    boot: 0x5eed_0000_0000_0000 | agent as u64,
                    records: chunk
                        .iter()
                        .map(|&i| pb::DecisionRecord { sequence: (i - first) as u64 + 1, ..record(i, now) })
                        .map(|r| prost::Message::encode_to_vec(&r).into())
                        .collect(),
                    dropped: 0,
                };
                store.ingest(&format!("sim-{agent}"), batch).await.expect("ingest");
            }
        }
    });
    println!("stored {} decision records in {:.1}s", args.records, started.elapsed().as_secs_f64());

    let console = tests::loopback_addr();
    let retention = args.records.max(5_000_000).to_string();
    let flags = ["--heartbeat-interval", "60s", "--console-listen", &console, "--decision-retention", &retention];
    let cp = ControlPlane::start(dir.path(), &flags);
    let agents_dir = tests::simulated_agents_dir();
    let (stop_tx, stop_rx) = warden_tasks::channel();
    let joined = runtime.block_on(async {
        let target = wardenctl::client::Target::Socket(cp.socket());
        let admin = wardenctl::client::connect(&target).await.expect("admin socket");
        admin
            .clone()
            .apply(pb::ApplyRequest { documents_json: tests::fleet_yaml_documents("search"), dry_run: false })
            .await
            .expect("apply");
        let started = Instant::now();
        let mut joining = tokio::task::JoinSet::new();
        let mut agents: Vec<Arc<LightAgent>> = Vec::with_capacity(args.agents);
        for i in 0..args.agents {
            if joining.len() == 32 {
                agents.push(joining.join_next().await.expect("a join").expect("join task"));
            }
            let (mut admin, dir, address, stop) =
                (admin.clone(), agents_dir.path().to_path_buf(), cp.address.clone(), stop_rx.clone());
            joining.spawn(async move {
                let agent = LightAgent::join(&mut admin, &dir, &format!("agent-{i}"), &address).await;
                tokio::spawn(agent.clone().run(stop));
                agent
            });
        }
        while let Some(agent) = joining.join_next().await {
            agents.push(agent.expect("join task"));
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while agents.iter().any(|a| *a.watch_version().borrow() == 0) {
            assert!(Instant::now() < deadline, "agents did not converge within 300 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("{} light agents joined and connected in {:.1}s", args.agents, started.elapsed().as_secs_f64());
        agents
    });

    // A decision to explain: the newest.
    let newest = runtime.block_on(async {
        let target = wardenctl::client::Target::Socket(cp.socket());
        let mut admin = wardenctl::client::connect(&target).await.expect("admin socket");
        let probe = pb::ListDecisionsRequest { after: u64::MAX - 1, ..Default::default() };
        // Cursors count records received: the newest's is their number.
        admin.list_decisions(probe).await.expect("list").into_inner().received
    });
    let last_page = args.agents.div_ceil(100);
    let pages = [
        "/".to_string(),
        format!("/?page={last_page}"),
        "/resources".into(),
        "/history".into(),
        "/decisions".into(),
        "/decisions?decision=deny".into(),
        "/decisions?subject=workload-7&tool=tool-7".into(),
        "/decisions?subject=nobody".into(),
        format!("/decisions?before={}", newest.saturating_sub(1_000_000)),
        format!("/decisions/{newest}"),
        "/findings".into(),
        "/scorecard".into(),
    ];
    println!(
        "{} agents, {} decision records; each page {} times, one at a time (time to the last byte):",
        args.agents, args.records, args.requests
    );
    println!("{:<52} {:>9} {:>9} {:>9} {:>9} {:>9}", "page", "first ms", "p50 ms", "p99 ms", "max ms", "KiB");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    for page in &pages {
        let mut times = Vec::with_capacity(args.requests);
        let mut size = 0;
        for _ in 0..args.requests {
            let t = Instant::now();
            let mut response = agent.get(&format!("http://{console}{page}")).call().expect("console");
            let status = response.status();
            let mut body = Vec::new();
            response.body_mut().as_reader().read_to_end(&mut body).expect("body");
            times.push(t.elapsed());
            assert!(status.is_success(), "{page}: {status}: {}", String::from_utf8_lossy(&body));
            size = body.len();
        }
        let first = times[0];
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!(
            "{page:<52} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            ms(first),
            ms(p(0.5)),
            ms(p(0.99)),
            ms(*times.last().expect("times")),
            size as f64 / 1024.0
        );
    }
    stop_tx.fire();
    drop(joined);
    std::process::ExitCode::SUCCESS
}
