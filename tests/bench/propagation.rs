//! Propagation load harness: one real `warden-cp` (embedded store) and N agents simulated in
//! this process with the agent's real join and stream code. Measures, per apply, the time from
//! sending the apply to the moment the last agent has applied the new version (its ACK follows
//! immediately; the harness checks the control plane received every ACK), and the control
//! plane's resident memory per idle connected agent against its own idle baseline, measured in
//! the same run.
//!
//! With `--replicas N` (N ≥ 2) the same run then measures N `warden-cp` replicas on one real etcd
//! member (Debian's `etcd-server`), the agents spread evenly over them, every write made on the
//! first: from the apply to the last agent applied, wherever it is connected.
//!
//! With `--revocation-load R` it then measures revocations under load: `--preload N`
//! revocations stored first, then R single-revocation writes a second from concurrent callers
//! (as token holders and operators would write them) while `--rounds` marker revocations are
//! timed from their apply to the last agent applied.
//!
//! `ulimit -n 16384 && cargo run --release -p tests --bin propagation -- --agents 1000 --rounds 50 --replicas 2`
//! `cargo run --release -p tests --bin propagation -- --agents 1000 --rounds 30 --revocation-load 1000 --preload 100000`

use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::v1 as pb;
use tests::{ControlPlane, LightAgent, cpu_time, rss_kib};
use tokio::sync::watch;
use warden_tasks::Shutdown;

type AdminClient = proto::v1::admin_service_client::AdminServiceClient<tonic::transport::Channel>;

struct Args {
    agents: usize,
    rounds: usize,
    replicas: usize,
    revocation_load: usize,
    preload: usize,
    /// Light simulated agents (`tests::LightAgent`): no configuration compiled.
    light: bool,
    /// After the rounds, restart the control plane and time the fleet's reconnection.
    storm: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args =
        Args { agents: 1000, rounds: 50, replicas: 0, revocation_load: 0, preload: 0, light: false, storm: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--light" => {
                args.light = true;
                continue;
            }
            "--storm" => {
                args.storm = true;
                continue;
            }
            _ => {}
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: usize = value.parse().map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--agents" => args.agents = n.clamp(1, 10_000),
            "--rounds" => args.rounds = n.clamp(1, 1_000),
            "--replicas" => args.replicas = n.min(10),
            "--revocation-load" => args.revocation_load = n.min(20_000),
            "--preload" => args.preload = n.min(2_000_000),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "error: {e}\nusage: propagation [--agents N] [--rounds R] [--light] [--storm] [--replicas N] [--revocation-load R --preload N]"
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    // A full agent's files and socket, or a light one's socket; the control plane's own limit
    // is the same (it inherits this one), with one socket per agent.
    let needed = (args.agents as u64) * if args.light { 1 } else { 2 } + 256;
    if open_files_limit().is_some_and(|l| l < needed) {
        eprintln!("error: {} agents need about {needed} open files here; raise it first (ulimit -n)", args.agents);
        return std::process::ExitCode::FAILURE;
    }
    // The simulated agents' files go to tmpfs; the control plane's store stays on disk, with its
    // fsyncs.
    let cp_dir = tempfile::tempdir().expect("temp dir");
    let agents_dir = tests::simulated_agents_dir();
    // Heartbeats well apart so idle memory is measured idle.
    let cp = ControlPlane::start(cp_dir.path(), &["--heartbeat-interval", "60s"]);
    let pid = cp.process.as_ref().map(|p| p.pid()).expect("running");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut cp = cp;
    let single = runtime.block_on(run(&args, agents_dir.path(), &mut cp, pid));
    drop(cp);
    if args.replicas >= 2 {
        let dir = tempfile::tempdir().expect("temp dir");
        let agents_dir = tests::simulated_agents_dir();
        let etcd = tests::Etcd::start(dir.path(), 1);
        let ca = dir.path().join("fleet-ca");
        let created = std::process::Command::new(tests::bin("warden-cp"))
            .args(["create-ca", "--out"])
            .arg(&ca)
            .status()
            .expect("warden-cp create-ca");
        assert!(created.success());
        let (cert, key) = (ca.join("ca.crt"), ca.join("ca.key"));
        let url = etcd.url();
        let flags = [
            "--heartbeat-interval",
            "60s",
            "--store",
            &url,
            "--ca-cert",
            cert.to_str().expect("utf-8"),
            "--ca-key",
            key.to_str().expect("utf-8"),
        ];
        let replicas: Vec<ControlPlane> =
            (0..args.replicas).map(|i| ControlPlane::start(&dir.path().join(format!("r{i}")), &flags)).collect();
        let replicated = runtime.block_on(run_replicas(&args, agents_dir.path(), &replicas, &etcd));
        println!(
            "same run, apply -> last agent applied: one control plane (embedded) p50 {:.1} ms p99 {:.1} ms; {} replicas on \
             etcd p50 {:.1} ms p99 {:.1} ms ({:.2}x at p99)",
            ms(percentile(&single, 0.5)),
            ms(percentile(&single, 0.99)),
            args.replicas,
            ms(percentile(&replicated, 0.5)),
            ms(percentile(&replicated, 0.99)),
            ms(percentile(&replicated, 0.99)) / ms(percentile(&single, 0.99)).max(0.001)
        );
    }
    std::process::ExitCode::SUCCESS
}

/// The simulated fleet: every agent's applied version, and the light agents themselves.
struct Agents {
    versions: Vec<watch::Receiver<u64>>,
    light: Vec<Arc<LightAgent>>,
}

/// Joins at most this many agents at once.
const JOINING: usize = 32;

/// Joins `count` simulated agents (light ones with `light`), agent `i` through and to
/// `addresses[i % len]`, each with its own one-time token, key and certificate, and starts them.
async fn start_agents(
    admin: &AdminClient,
    dir: &std::path::Path,
    addresses: &[String],
    count: usize,
    light: bool,
    stop: &Shutdown,
) -> Agents {
    let mut joined = Vec::with_capacity(count);
    let mut joining = tokio::task::JoinSet::new();
    for i in 0..count {
        if joining.len() == JOINING {
            joined.push(joining.join_next().await.expect("a join").expect("join task"));
        }
        let (mut admin, dir, address) = (admin.clone(), dir.to_path_buf(), addresses[i % addresses.len()].clone());
        let stop = stop.clone();
        joining.spawn(async move {
            let id = format!("sim-{i}");
            if light {
                let agent = LightAgent::join(&mut admin, &dir, &id, &address).await;
                tokio::spawn(agent.clone().run(stop));
                (i, agent.watch_version(), Some(agent))
            } else {
                let sync = tests::simulated_agent(&mut admin, &dir, &id, &address).await;
                let version = sync.current.watch_version();
                tokio::spawn(sync.run(stop));
                (i, version, None)
            }
        });
    }
    while let Some(done) = joining.join_next().await {
        joined.push(done.expect("join task"));
    }
    joined.sort_by_key(|(i, _, _)| *i);
    let mut agents = Agents { versions: Vec::with_capacity(count), light: Vec::new() };
    for (_, version, light) in joined {
        agents.versions.push(version);
        agents.light.extend(light);
    }
    agents
}

/// Agents spread over the replicas, every write through the first; the sorted samples.
async fn run_replicas(
    args: &Args,
    dir: &std::path::Path,
    replicas: &[ControlPlane],
    etcd: &tests::Etcd,
) -> Vec<Duration> {
    let target = wardenctl::client::Target::Socket(replicas[0].socket());
    let mut admin = wardenctl::client::connect(&target).await.expect("admin socket");
    let apply = |tool: String| pb::ApplyRequest { documents_json: tests::fleet_yaml_documents(&tool), dry_run: false };
    admin.apply(apply("warmup".into())).await.expect("first apply");
    let (stop_tx, stop_rx) = warden_tasks::channel();
    let addresses: Vec<String> = replicas.iter().map(|r| r.address.clone()).collect();
    let started = Instant::now();
    let agents = start_agents(&admin, dir, &addresses, args.agents, args.light, &stop_rx).await;
    let agents = agents.versions;
    let version = admin.get(pb::GetRequest::default()).await.expect("get").into_inner().version;
    wait_all(&agents, version, Duration::from_secs(120)).await.expect("initial convergence");
    println!(
        "{} replicas on etcd: joined and converged {} agents in {:.1}s",
        replicas.len(),
        args.agents,
        started.elapsed().as_secs_f64()
    );
    // etcd's side: writes (revisions) and CPU per change, the change itself and the presence
    // every replica publishes of its agents moving to it, until the last presence tick.
    let etcd_cpu = || etcd.pids().into_iter().map(cpu_time).sum::<Duration>();
    let revision = || {
        let endpoint = etcd.endpoints().swap_remove(0);
        tokio::task::spawn_blocking(move || tests::Etcd::revision_at(&endpoint))
    };
    let (revision0, etcd_cpu0) = (revision().await.expect("revision"), etcd_cpu());
    let mut samples = policy_rounds(&mut admin, &agents, args.rounds).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let revisions = revision().await.expect("revision") - revision0;
    let rounds = args.rounds as f64;
    println!(
        "{} replicas on etcd: {:.1} etcd revisions per policy change (the change is one, the rest agents' presence), \
         etcd CPU {:.1} ms per change",
        replicas.len(),
        revisions as f64 / rounds,
        ms(etcd_cpu() - etcd_cpu0) / rounds
    );
    stop_tx.fire();
    samples.sort();
    println!(
        "{} replicas on etcd, apply on the first -> last agent applied: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        replicas.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().expect("samples"))
    );
    samples
}

/// One control plane on its embedded store; the sorted policy-round samples.
async fn run(args: &Args, dir: &std::path::Path, cp: &mut ControlPlane, pid: u32) -> Vec<Duration> {
    let target = wardenctl::client::Target::Socket(cp.socket());
    let mut admin = wardenctl::client::connect(&target).await.expect("admin socket");
    let apply = |tool: String| pb::ApplyRequest { documents_json: tests::fleet_yaml_documents(&tool), dry_run: false };
    admin.apply(apply("warmup".into())).await.expect("first apply");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(pid);

    // Join every agent with its own one-time token, key and certificate.
    let started = Instant::now();
    let (stop_tx, stop_rx) = warden_tasks::channel();
    let fleet = start_agents(&admin, dir, std::slice::from_ref(&cp.address), args.agents, args.light, &stop_rx).await;
    let agents = &fleet.versions;
    let version = admin.get(pb::GetRequest::default()).await.expect("get").into_inner().version;
    wait_all(agents, version, Duration::from_secs(300)).await.expect("initial convergence");
    let kind = if args.light { "light" } else { "full" };
    println!("joined and converged {} {kind} agents in {:.1}s", args.agents, started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded_rss = rss_kib(pid);

    let (cp_cpu0, own_cpu0) = (cpu_time(pid), cpu_time(std::process::id()));
    let mut samples = policy_rounds(&mut admin, agents, args.rounds).await;
    let rounds = args.rounds as u32;
    let cp_cpu = (cpu_time(pid) - cp_cpu0) / rounds;
    let own_cpu = (cpu_time(std::process::id()) - own_cpu0) / rounds;

    // Revocations take the same path: one `Revocation` per round (what `wardenctl revoke` and
    // the token service's RFC 7009 endpoint write), to the moment the last agent applied it.
    let mut revocations = Vec::with_capacity(args.rounds);
    let (cp_cpu0, own_cpu0) = (cpu_time(pid), cpu_time(std::process::id()));
    for round in 0..args.rounds {
        let document = serde_json::json!({
            "apiVersion": "warden.dev/v1", "kind": "Revocation", "metadata": {"name": format!("bench-{round}")},
            "spec": {"issuer": "corp-idp", "jti": format!("token-{round}"), "expires": "2099-01-01T00:00:00Z"},
        });
        let request = pb::ApplyRequest { documents_json: vec![serde_json::to_vec(&document).unwrap()], dry_run: false };
        let t0 = Instant::now();
        let response = admin.apply(request).await.expect("revoke").into_inner();
        if wait_all(agents, response.version, Duration::from_secs(30)).await.is_none() {
            eprintln!("revocation {round}: not every agent applied version {} within 30s", response.version);
            std::process::exit(1);
        }
        revocations.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    revocations.sort();
    let revocation_cp_cpu = (cpu_time(pid) - cp_cpu0) / rounds;
    let revocation_own_cpu = (cpu_time(std::process::id()) - own_cpu0) / rounds;
    // Every ACK reached the control plane.
    let last = admin.list_agents(pb::ListAgentsRequest {}).await.expect("agents").into_inner();
    let acked = last.agents.iter().filter(|a| a.applied_version == last.version && a.connected).count();
    samples.sort();
    let per_agent = (loaded_rss.saturating_sub(idle_rss)) as f64 / args.agents as f64;
    println!("agents: {}  rounds: {}  acked at control plane: {acked}/{}", args.agents, args.rounds, args.agents);
    println!(
        "apply -> last agent applied: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().expect("samples"))
    );
    println!(
        "revocation -> last agent applied: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        ms(percentile(&revocations, 0.5)),
        ms(percentile(&revocations, 0.99)),
        ms(*revocations.last().expect("samples"))
    );
    println!(
        "CPU per revocation round: control plane {:.1} ms, the {} simulated agents {:.1} ms",
        ms(revocation_cp_cpu),
        args.agents,
        ms(revocation_own_cpu)
    );
    println!(
        "CPU per policy round: control plane {:.1} ms, the {} simulated agents {:.1} ms (both on this machine's cores)",
        ms(cp_cpu),
        args.agents,
        ms(own_cpu)
    );
    println!(
        "control-plane RSS: idle {idle_rss} KiB (baseline), with {} idle agents {loaded_rss} KiB: {per_agent:.1} KiB per agent",
        args.agents
    );
    if args.revocation_load > 0 {
        revocations_under_load(args, &mut admin, agents, pid).await;
    }
    if args.storm {
        drop(admin);
        reconnect_storm(cp, &fleet).await;
    }
    stop_tx.fire();
    samples
}

/// Restarts the control plane under a connected fleet and times the storm that follows: until
/// every agent has a new stream and holds the current version, how many snapshots went out
/// (none is needed: the store, and so every agent, is at the same version), and how long the
/// admin API took to answer meanwhile (a probe every 50 ms on the admin socket).
async fn reconnect_storm(cp: &mut ControlPlane, fleet: &Agents) {
    if fleet.light.is_empty() {
        println!("reconnect storm: measured with --light agents only (they count streams and snapshots)");
        return;
    }
    let streams = |agents: &[Arc<LightAgent>]| agents.iter().map(|a| a.streams()).collect::<Vec<_>>();
    let snapshots = |agents: &[Arc<LightAgent>]| agents.iter().map(|a| a.snapshots()).sum::<u64>();
    let (streams_before, snapshots_before) = (streams(&fleet.light), snapshots(&fleet.light));
    let version = *fleet.versions[0].borrow();
    let socket = cp.socket();
    let t0 = Instant::now();
    // The harness's other worker keeps the agents going meanwhile; the lint is for the
    // product's streams.
    #[allow(clippy::disallowed_methods, reason = "stopping and starting a process from the harness")]
    tokio::task::block_in_place(|| {
        cp.stop();
        cp.restart();
    });
    let restarted = t0.elapsed();
    let pid = cp.process.as_ref().map(|p| p.pid()).expect("running");
    let cpu0 = cpu_time(pid);
    // The admin probe: one call every 50 ms until the fleet is back (bounded: 120 s), from a
    // thread and runtime of its own, as an operator's `wardenctl` is a process of its own (on
    // this runtime it would wait behind the simulated agents' handshakes).
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = std::thread::spawn({
        let done = done.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let target = wardenctl::client::Target::Socket(socket);
                let mut admin = wardenctl::client::connect(&target).await.expect("admin socket");
                let mut latencies = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(120);
                while !done.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                    let t = Instant::now();
                    let request = pb::GetRequest { kind: "McpServer".into(), ..Default::default() };
                    admin.get(request).await.expect("admin get");
                    latencies.push(t.elapsed());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                latencies
            })
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let back = loop {
        let now = streams(&fleet.light);
        let reconnected = now.iter().zip(&streams_before).filter(|(n, b)| n > b).count();
        let current = fleet.versions.iter().filter(|v| *v.borrow() == version).count();
        if reconnected == fleet.light.len() && current == fleet.light.len() {
            break Some(t0.elapsed());
        }
        if Instant::now() > deadline {
            eprintln!("reconnect storm: {reconnected} reconnected and {current} current after 120s");
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let cpu = cpu_time(pid) - cpu0;
    let mut latencies = probe.join().expect("probe");
    latencies.sort();
    let Some(back) = back else { std::process::exit(1) };
    println!(
        "reconnect storm of {} agents: control plane restarted in {:.0} ms; every agent reconnected and current {:.2} s \
         after the restart began; snapshots sent {} (streams opened {}); control-plane CPU {:.2} s",
        fleet.light.len(),
        ms(restarted),
        back.as_secs_f64(),
        snapshots(&fleet.light) - snapshots_before,
        streams(&fleet.light).iter().sum::<u64>() - streams_before.iter().sum::<u64>(),
        cpu.as_secs_f64()
    );
    if !latencies.is_empty() {
        println!(
            "admin API during the storm: {} calls, p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            latencies.len(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().expect("latencies"))
        );
    }
}

fn revocation(name: &str) -> Vec<u8> {
    let document = serde_json::json!({
        "apiVersion": "warden.dev/v1", "kind": "Revocation", "metadata": {"name": name},
        "spec": {"issuer": "corp-idp", "jti": name, "expires": "2099-01-01T00:00:00Z"},
    });
    serde_json::to_vec(&document).expect("serializes")
}

/// Stores `--preload` revocations, then times marker revocations while `--revocation-load`
/// others a second are written by concurrent callers.
async fn revocations_under_load(
    args: &Args,
    admin: &mut proto::v1::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    agents: &[watch::Receiver<u64>],
    pid: u32,
) {
    let before_rss = rss_kib(pid);
    let t0 = Instant::now();
    for chunk in (0..args.preload).collect::<Vec<_>>().chunks(1000) {
        let documents_json = chunk.iter().map(|i| revocation(&format!("pre-{i}"))).collect();
        admin.apply(pb::ApplyRequest { documents_json, dry_run: false }).await.expect("preload");
    }
    let version = admin.get(pb::GetRequest { kind: "McpServer".into(), ..Default::default() }).await.expect("get");
    let version = version.into_inner().version;
    wait_all(agents, version, Duration::from_secs(300)).await.expect("agents hold the preloaded revocations");
    println!(
        "preloaded {} revocations in {:.1}s; control-plane RSS {before_rss} -> {} KiB",
        args.preload,
        t0.elapsed().as_secs_f64(),
        rss_kib(pid)
    );

    // Writers: concurrent callers, each one revocation every 200 ms (as many callers as the
    // rate needs: each waits for its write), for as long as the markers take (bounded by the
    // rounds' own limits, and a deadline).
    let callers = (args.revocation_load / 5).clamp(1, 4000);
    let (stop_tx, stop_rx) = watch::channel(false);
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let period = Duration::from_secs_f64(callers as f64 / args.revocation_load as f64);
    let mut writers = Vec::new();
    for caller in 0..callers {
        let (mut admin, stop, written, refused) = (admin.clone(), stop_rx.clone(), written.clone(), refused.clone());
        writers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let deadline = Instant::now() + Duration::from_secs(600);
            for n in 0u64.. {
                tick.tick().await;
                if *stop.borrow() || Instant::now() > deadline {
                    break;
                }
                let request = pb::ApplyRequest {
                    documents_json: vec![revocation(&format!("load-{caller}-{n}"))],
                    dry_run: false,
                };
                match admin.apply(request).await {
                    Ok(_) => written.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    Err(_) => refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (load_t0, written0) = (Instant::now(), written.load(std::sync::atomic::Ordering::Relaxed));
    let version0 = admin.get(pb::GetRequest { kind: "McpServer".into(), ..Default::default() }).await.expect("get");
    let version0 = version0.into_inner().version;
    let (cp_cpu0, own_cpu0) = (cpu_time(pid), cpu_time(std::process::id()));
    let mut samples = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let request = pb::ApplyRequest { documents_json: vec![revocation(&format!("marker-{round}"))], dry_run: false };
        let t0 = Instant::now();
        let response = admin.apply(request).await.expect("marker").into_inner();
        if wait_all(agents, response.version, Duration::from_secs(30)).await.is_none() {
            eprintln!("marker {round}: not every agent applied version {} within 30s", response.version);
            std::process::exit(1);
        }
        samples.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = load_t0.elapsed();
    let rate = (written.load(std::sync::atomic::Ordering::Relaxed) - written0) as f64 / elapsed.as_secs_f64();
    let version1 = admin.get(pb::GetRequest { kind: "McpServer".into(), ..Default::default() }).await.expect("get");
    let versions = (version1.into_inner().version - version0) as f64 / elapsed.as_secs_f64();
    let (cp_cpu, own_cpu) = (cpu_time(pid) - cp_cpu0, cpu_time(std::process::id()) - own_cpu0);
    let _ = stop_tx.send(true);
    for w in writers {
        let _ = w.await;
    }
    samples.sort();
    println!(
        "revocation under load ({} stored, {rate:.0} revocations/s written by {callers} callers, {versions:.1} versions/s, \
         {} refused) -> last of {} agents applied: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        args.preload,
        refused.load(std::sync::atomic::Ordering::Relaxed),
        args.agents,
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().expect("samples"))
    );
    println!(
        "CPU under revocation load: control plane {:.2} cores, the {} simulated agents and the writers {:.2} cores; \
         control-plane RSS {} KiB",
        cp_cpu.as_secs_f64() / elapsed.as_secs_f64(),
        args.agents,
        own_cpu.as_secs_f64() / elapsed.as_secs_f64(),
        rss_kib(pid)
    );
}

/// `rounds` policy changes, each timed from the apply to the last agent applied.
async fn policy_rounds(
    admin: &mut proto::v1::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    agents: &[watch::Receiver<u64>],
    rounds: usize,
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let request =
            pb::ApplyRequest { documents_json: tests::fleet_yaml_documents(&format!("tool-{round}")), dry_run: false };
        let t0 = Instant::now();
        let response = admin.apply(request).await.expect("apply").into_inner();
        if wait_all(agents, response.version, Duration::from_secs(30)).await.is_none() {
            eprintln!("round {round}: not every agent applied version {} within 30s", response.version);
            std::process::exit(1);
        }
        samples.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Waits until every agent enforces `version`; returns how long that took. Waiting is by
/// notification, so the harness spends no CPU polling while agents work.
async fn wait_all(agents: &[watch::Receiver<u64>], version: u64, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let all = async {
        for agent in agents {
            let mut agent = agent.clone();
            agent.wait_for(|v| *v >= version).await.ok()?;
        }
        Some(())
    };
    tokio::time::timeout(limit, all).await.ok().flatten().map(|()| t0.elapsed())
}
