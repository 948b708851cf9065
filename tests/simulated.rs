//! Agents simulated inside a load harness's process with the agent's real join and stream code,
//! many to a machine: [`simulated_agent`] joins one, [`LightAgent`] is one that compiles
//! nothing (ten thousand to a machine), [`simulated_agents_dir`] keeps their files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agent::applied::Current;
use agent::identity::{self, Files};
use agent::last_good::LastGood;
use agent::sync::{Client, Link};
use proto::v1 as pb;
use proto::v1::admin_service_client::AdminServiceClient;
use tokio::sync::watch;
use tonic::transport::Channel;
use warden_tasks::Backoff;

/// A directory for simulated agents' files. Each real agent persists to its own disk; a thousand
/// simulated ones sharing this machine's one filesystem would measure its metadata locking
/// instead, so their files go to tmpfs (`/dev/shm`) where there is one.
pub fn simulated_agents_dir() -> tempfile::TempDir {
    match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .expect("temp dir")
}

/// Agent `id` joined at `address` with a one-time join token from `admin`, as the agent does
/// (its own key and certificate): its data directory `dir/<id>` and its identity.
async fn join(
    admin: &mut AdminServiceClient<Channel>,
    dir: &Path,
    id: &str,
    address: &str,
) -> (std::path::PathBuf, identity::Identity) {
    let token = admin
        .create_join_token(pb::CreateJoinTokenRequest { ttl_seconds: 600, agent_id: id.to_string() })
        .await
        .expect("join token")
        .into_inner()
        .token;
    let data = dir.join(id);
    std::fs::create_dir_all(&data).expect("agent dir");
    let join = identity::Join::Token(token);
    let identity = identity::join(&Files::new(&data), address, &join, id, &BTreeMap::new()).await.expect("join");
    (data, identity)
}

/// Joins agent `id` to the control plane at `address` with a one-time join token from `admin`
/// (its own key and certificate; its files in `dir/<id>`), and returns its stream client, not
/// yet running: no labels, no outbox (set `outbox` for one that sends decision records), and
/// heartbeats a minute apart so idle is idle. Run it with `tokio::spawn(client.run(stop))`.
pub async fn simulated_agent(admin: &mut AdminServiceClient<Channel>, dir: &Path, id: &str, address: &str) -> Client {
    let (data, identity) = join(admin, dir, id, address).await;
    Client {
        agent_id: id.to_string(),
        labels: BTreeMap::new(),
        addresses: vec![address.to_string()],
        identity: watch::channel(identity).1,
        current: Current::default(),
        last_good: Arc::new(LastGood::without_fsync(&data)),
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
        idle_timeout: Duration::from_secs(300),
        heartbeat_interval: Duration::from_secs(60),
        link: watch::channel(Link::default()).0,
        requests: tokio::sync::Mutex::new(agent::sync::requests().1),
        outbox: None,
        fleet_key: watch::channel(None).0,
        findings: watch::channel(None).1,
    }
}

/// A light simulated agent: the real join, mTLS identity, gRPC stream, Hello, ACK and NACK, and
/// the agent's reconnect back-off, but no configuration compiled or persisted (real agents
/// compile on their own hosts). One 2-core machine holds ten thousand of them, so the control
/// plane's side of a fleet that size can be measured; [`simulated_agent`] is the full one.
pub struct LightAgent {
    id: String,
    address: String,
    config: rustls::ClientConfig,
    backoff: Backoff,
    /// The version held (0: none yet).
    version: watch::Sender<u64>,
    store_id: std::sync::Mutex<String>,
    /// Snapshots received (whole configurations, where a current agent needs none).
    snapshots: AtomicU64,
    /// Streams opened.
    streams: AtomicU64,
}

impl LightAgent {
    /// Joins agent `id` at `address` with a one-time join token from `admin`; its identity files
    /// go to `dir/<id>` (as a real agent's do).
    pub async fn join(admin: &mut AdminServiceClient<Channel>, dir: &Path, id: &str, address: &str) -> Arc<LightAgent> {
        let (_, identity) = join(admin, dir, id, address).await;
        Arc::new(LightAgent {
            id: id.to_string(),
            address: address.to_string(),
            config: identity.client_config().expect("client TLS config"),
            // The real agent's defaults (`--backoff-base 100ms --backoff-max 10s`).
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            version: watch::channel(0).0,
            store_id: std::sync::Mutex::new(String::new()),
            snapshots: AtomicU64::new(0),
            streams: AtomicU64::new(0),
        })
    }

    /// The version it holds, as it changes.
    pub fn watch_version(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Snapshots received so far.
    pub fn snapshots(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }

    /// Streams opened so far.
    pub fn streams(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }

    /// Keeps a stream open, reconnecting with the agent's jittered back-off, until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: warden_tasks::Shutdown) {
        let mut attempt = 0u32;
        loop {
            let opened = tokio::time::Instant::now();
            tokio::select! {
                _ = self.session() => {}
                _ = stop.requested() => return,
            }
            if opened.elapsed() > Duration::from_secs(30) {
                attempt = 0;
            }
            let delay = self.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.requested() => return,
            }
        }
    }

    async fn session(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        use pb::agent_message::Message as Out;
        use pb::control_message::Message as In;
        let channel = agent::tls::connect(&self.address, self.config.clone()).await?;
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel)
            .max_decoding_message_size(proto::MAX_CONFIG_MESSAGE_BYTES);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let hello = pb::Hello {
            agent_id: self.id.clone(),
            agent_version: "light".into(),
            labels: Default::default(),
            applied_store_id: self.store_id.lock().expect("lock").clone(),
            applied_version: *self.version.borrow(),
        };
        tx.send(pb::AgentMessage { message: Some(Out::Hello(hello)) }).await?;
        let mut inbound = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        self.streams.fetch_add(1, Ordering::Relaxed);
        while let Some(message) = inbound.message().await? {
            let reply = match message.message {
                Some(In::Snapshot(snapshot)) => {
                    self.snapshots.fetch_add(1, Ordering::Relaxed);
                    *self.store_id.lock().expect("lock") = snapshot.store_id;
                    self.version.send_replace(snapshot.version);
                    Out::Ack(pb::Ack { version: snapshot.version })
                }
                Some(In::Delta(delta)) => {
                    let held = (self.store_id.lock().expect("lock").clone(), *self.version.borrow());
                    if held != (delta.store_id, delta.base_version) {
                        let error = format!("delta from {} but {} is held", delta.base_version, held.1);
                        Out::Nack(pb::Nack { version: delta.version, error })
                    } else {
                        self.version.send_replace(delta.version);
                        Out::Ack(pb::Ack { version: delta.version })
                    }
                }
                _ => continue,
            };
            tx.send(pb::AgentMessage { message: Some(reply) }).await?;
        }
        Ok(())
    }
}
