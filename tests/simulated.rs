//! Agents simulated inside a load harness's process with the agent's real join and stream code,
//! many to a machine: [`simulated_agent`] joins one, [`simulated_agents_dir`] keeps their files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
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

/// Joins agent `id` to the control plane at `address` with a one-time join token from `admin`
/// (its own key and certificate; its files in `dir/<id>`), and returns its stream client, not
/// yet running: no labels, no outbox (set `outbox` for one that sends decision records), and
/// heartbeats a minute apart so idle is idle. Run it with `tokio::spawn(client.run(stop))`.
pub async fn simulated_agent(admin: &mut AdminServiceClient<Channel>, dir: &Path, id: &str, address: &str) -> Client {
    let token = admin
        .create_join_token(pb::CreateJoinTokenRequest { ttl_seconds: 600, agent_id: id.to_string() })
        .await
        .expect("join token")
        .into_inner()
        .token;
    let data = dir.join(id);
    std::fs::create_dir_all(&data).expect("agent dir");
    let identity = identity::join(&Files::new(&data), address, &token, id, &BTreeMap::new()).await.expect("join");
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
