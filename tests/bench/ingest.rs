//! Decision ingest harness: how many decision records per second one real `warden-cp` stores.
//!
//! N agents are simulated in this process with the agent's real join, stream and outbox code:
//! each outbox is filled with M realistic records, then every agent connects and sends them as
//! real agents do (batches of the agent's size unless `--batch` says otherwise, one in flight,
//! forgotten on acknowledgement). The clock runs from the connections to the moment the control
//! plane reports every record stored. The baseline, measured in the same run, is the control
//! plane's decision store fed the same batches in-process (no TLS, no gRPC): the storage ceiling.
//!
//! `cargo build --release -p tests --bin ingest && ./target/release/ingest --agents 20 --records 50000`

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::decisions::{Limits, Outbox};
use proto::v1 as pb;
use tests::{ControlPlane, cpu_time, rss_kib};

struct Args {
    agents: usize,
    records: usize,
    /// Records per batch (the agent's default unless given).
    batch: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { agents: 20, records: 50_000, batch: Limits::default().batch_records };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: usize = value.parse().map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--agents" => args.agents = n.clamp(1, 1_000),
            "--records" => args.records = n.clamp(1, 1_000_000),
            "--batch" => args.batch = n.clamp(1, 100_000),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// A record like the gateway makes: every field filled.
fn record(agent: usize, i: usize) -> pb::DecisionRecord {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    pb::DecisionRecord {
        sequence: 0,
        time_unix_nanos: now,
        server: "github".into(),
        method: "tools/call".into(),
        target_kind: "tool".into(),
        target: format!("tool-{}", i % 50),
        subject: format!("workload-{agent}-{}", i % 20),
        issuer: "corp-idp".into(),
        decision: if i.is_multiple_of(10) { pb::Decision::Deny } else { pb::Decision::Allow } as i32,
        reason: if i.is_multiple_of(10) { "policy_denied".into() } else { String::new() },
        policies: vec!["github-readers.0".into()],
        latency_micros: 40 + (i % 30) as u64,
        trace_id: format!("{:032x}", (agent as u128) << 64 | i as u128),
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
            eprintln!("error: {e}\nusage: ingest [--agents N] [--records M]");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let total = (args.agents * args.records) as u64;

    // Baseline: the same batches into the decision store in-process, on the same disk.
    let baseline_dir = tempfile::tempdir().expect("temp dir");
    let baseline = runtime.block_on(async {
        let store = Arc::new(
            control_plane::telemetry::decisions::Decisions::open(baseline_dir.path(), u64::MAX, Default::default())
                .expect("store"),
        );
        // Built before the clock starts, as the real run fills its outboxes first.
        let batches: Vec<Vec<pb::DecisionBatch>> = (0..args.agents)
            .map(|agent| {
                let all: Vec<usize> = (0..args.records).collect();
                all.chunks(1_000)
                    .map(|chunk| pb::DecisionBatch {
                        boot: rand_boot(agent),
                        records: chunk
                            .iter()
                            .map(|&i| pb::DecisionRecord { sequence: i as u64 + 1, ..record(agent, i) })
                            .map(|r| prost::Message::encode_to_vec(&r).into())
                            .collect(),
                        dropped: 0,
                    })
                    .collect()
            })
            .collect();
        let started = Instant::now();
        let tasks: Vec<_> = batches
            .into_iter()
            .enumerate()
            .map(|(agent, batches)| {
                let store = store.clone();
                tokio::spawn(async move {
                    for batch in batches {
                        store.ingest(&format!("sim-{agent}"), batch).await.expect("ingest");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        total as f64 / started.elapsed().as_secs_f64()
    });
    drop(baseline_dir);

    let cp_dir = tempfile::tempdir().expect("temp dir");
    let agents_dir = tests::simulated_agents_dir();
    let cp = ControlPlane::start(cp_dir.path(), &["--heartbeat-interval", "60s"]);
    let pid = cp.process.as_ref().map(|p| p.pid()).expect("running");
    let (rate, cp_cpu) = runtime.block_on(run(&args, agents_dir.path(), &cp, pid, total));
    println!(
        "{} agents × {} records = {total} decision records, batches of {}, one in flight per agent",
        args.agents, args.records, args.batch
    );
    println!("baseline (the store in-process, no TLS/gRPC): {baseline:>10.0} records/s");
    println!(
        "warden-cp over mTLS streams:                 {rate:>10.0} records/s ({:.2}× baseline; CP CPU {:.2} µs/record)",
        rate / baseline,
        cp_cpu.as_secs_f64() * 1e6 / total as f64
    );
    println!("control-plane RSS after storing them: {:.1} MiB", rss_kib(pid) as f64 / 1024.0);
    std::process::ExitCode::SUCCESS
}

/// A fixed boot per simulated agent, so the baseline's records look like the real run's.
fn rand_boot(agent: usize) -> u64 {
    0x5eed_0000_0000_0000 | agent as u64
}

async fn run(args: &Args, dir: &std::path::Path, cp: &ControlPlane, pid: u32, total: u64) -> (f64, Duration) {
    let target = wardenctl::client::Target::Socket(cp.socket());
    let mut admin = wardenctl::client::connect(&target).await.expect("admin socket");
    let (_stop_tx, stop_rx) = warden_tasks::channel();
    let mut syncs = Vec::with_capacity(args.agents);
    for i in 0..args.agents {
        let id = format!("sim-{i}");
        let mut sync = tests::simulated_agent(&mut admin, dir, &id, &cp.address).await;
        let limits = Limits {
            memory_records: args.records + 1,
            spool_records: 1,
            batch_records: args.batch,
            ..Limits::default()
        };
        let outbox = Outbox::open(&dir.join(&id), limits).expect("outbox");
        for n in 0..args.records {
            outbox.record(&(&record(i, n)).into());
        }
        sync.outbox = Some(outbox);
        syncs.push(sync);
    }
    let cpu0 = cpu_time(pid);
    let started = Instant::now();
    for sync in syncs {
        tokio::spawn(sync.run(stop_rx.clone()));
    }
    let deadline = started + Duration::from_secs(300);
    loop {
        let probe = pb::ListDecisionsRequest { after: u64::MAX - 1, ..Default::default() };
        let received = admin.list_decisions(probe).await.expect("list").into_inner().received;
        if received >= total {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("only {received} of {total} records stored within 300 s");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (total as f64 / started.elapsed().as_secs_f64(), cpu_time(pid) - cpu0)
}
