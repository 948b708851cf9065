//! Writing revocations and keeping their list small.
//!
//! Every caller's revocation (operators' apply, token holders at `/revoke`, agents reporting
//! ended tasks) goes through one [`Revoker`]: bounded per principal and in all when it comes
//! from outside the operators ([`WriteLimit`]), and committed with whatever other revocations
//! are waiting ([`coalesce`]). A `Revocation` that says when every token it covers has expired
//! (`expires`, which the token service and `wardenctl revoke` always set) is deleted then
//! ([`expire`]) — an ordinary audited write, so agents drop it with the next version.

use std::sync::Arc;
use std::time::Duration;

use proto::v1 as pb;
use serde_json::json;
use tokio::sync::mpsc;
use warden_core::ResourceKey;
use warden_core::issuer::TrustedIssuerSpec;
use warden_tasks::Shutdown;

use crate::configuration::Configuration;
use crate::configuration::state::{self, Action, WriteError};
use crate::configuration::store::StoreError;
use crate::fleet::replicas::Leadership;

/// Checked at least this often, and within a second of the next expiry.
const INTERVAL: Duration = Duration::from_secs(60);

/// Expired revocations deleted in one write (more wait for the next, right after).
const EXPIRED_PER_WRITE: usize = 10_000;

/// Runs until shutdown, on the leading replica only (a singleton duty).
pub async fn expire(configuration: Arc<Configuration>, mut leading: Leadership, mut shutdown: Shutdown) {
    let mut state_rx = configuration.subscribe();
    loop {
        if !leading.observe() {
            tokio::select! {
                _ = leading.changed() => {}
                _ = shutdown.requested() => return,
            }
            continue;
        }
        let current = state_rx.borrow_and_update().clone();
        let now = crate::now_unix_ms() / 1000;
        let (expired, next) = current.revocation_table().expired(now, EXPIRED_PER_WRITE);
        let expired: Vec<ResourceKey> =
            expired.into_iter().map(|name| ResourceKey { kind: warden_core::Kind::Revocation, name }).collect();
        let mut wait = INTERVAL;
        if !expired.is_empty() {
            let count = expired.len();
            match configuration.delete(expired, "control-plane", "expire-revocations").await {
                Ok(version) => tracing::info!(count, version, "expired revocations deleted"),
                Err(e) => {
                    tracing::error!("deleting expired revocations failed: {e}");
                    wait = Duration::from_secs(5);
                }
            }
        } else if let Some(next) = next {
            wait = wait.min(Duration::from_secs((next - now).max(0) as u64 + 1));
        }
        tokio::select! {
            changed = state_rx.changed() => if changed.is_err() { return },
            _ = leading.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.requested() => return,
        }
    }
}

/// The `Revocation` of one token by `jti`, named after a hash of (issuer, jti) so revoking twice
/// changes nothing, expiring with the token (plus the issuer's clock skew) — and never later
/// than any token of the issuer usable `now` can live: a token claiming a far-future `exp` is
/// refused by every agent for its lifetime anyway (`maxTokenLifetime` from `iat`, and `iat` no
/// later than now), so it cannot plant a revocation that outlives that bound.
pub(crate) fn token_revocation(
    issuer: &str,
    spec: &TrustedIssuerSpec,
    jti: &str,
    expires_at: i64,
    now: i64,
) -> Result<warden_core::Document, warden_core::DocumentError> {
    let skew = spec.clock_skew.0.as_secs() as i64;
    let bound = now.saturating_add(spec.max_token_lifetime.0.as_secs() as i64).saturating_add(skew);
    let expires_at = expires_at.min(bound);
    let document = json!({
        "apiVersion": warden_core::resource::API_VERSION,
        "kind": "Revocation",
        "metadata": { "name": warden_core::revocation::token_revocation_name(issuer, jti) },
        "spec": {
            "issuer": issuer,
            "jti": jti,
            "expires": warden_core::revocation::format_time(expires_at + skew),
        },
    });
    // Through the same validation as any operator's document.
    warden_core::Document::from_json(document, &warden_core::Admission::default())
}

/// An agent reports that the MCP session a task token opened has ended: the token is revoked
/// fleet-wide, recorded in the audit trail as done by that agent. Only this control plane's own
/// task tokens can be revoked this way, and never for longer than such a token can live, so an
/// agent can neither cut off an identity provider's tokens nor grow the list without bound.
async fn end_task(revoker: &Revoker, agent: String, task: pb::TaskEnded) {
    let current = revoker.configuration.current();
    let Some((issuer, _, spec)) = current.token_service_issuer() else {
        tracing::warn!(%agent, "an agent reported an ended task, but no token service issuer is configured");
        return;
    };
    if task.issuer != issuer {
        tracing::warn!(%agent, issuer = %task.issuer, "an agent asked to revoke a token that is not a task token; ignored");
        return;
    }
    let now = crate::now_unix_ms() / 1000;
    let expires = task.expires_unix.min(now + spec.max_token_lifetime.0.as_secs() as i64);
    let jti_hash = warden_core::token::jti_hash(issuer, &task.jti);
    if expires + (spec.clock_skew.0.as_secs() as i64) < now {
        tracing::debug!(%agent, %jti_hash, "an ended task's token has expired already");
        return;
    }
    let document = match token_revocation(issuer, spec, &task.jti, expires, now) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%agent, %jti_hash, "an ended task's token cannot be revoked: {e}");
            return;
        }
    };
    let actor = format!("agent:{agent}");
    if let Err(wait) = revoker.limit.take(&actor) {
        // The agent refuses the token itself already; the fleet-wide revocation is what waits.
        tracing::warn!(%agent, %jti_hash, wait, "an agent reports ended tasks faster than revocations may be written; not revoked fleet-wide");
        return;
    }
    match revoker.apply(vec![document], &actor, "end-task").await {
        Ok((version, _)) => tracing::info!(%agent, %jti_hash, version, "task token revoked: its session ended"),
        Err(e) => tracing::error!(%agent, %jti_hash, "revoking an ended task's token failed: {e}"),
    }
}

/// Writes revocations for every caller. Revocation writes that arrive while one commit is
/// under way are committed together as one version ([`coalesce`]), so the store, the audit trail
/// and every agent see one change per commit instead of one per revocation.
pub struct Revoker {
    configuration: Arc<Configuration>,
    /// Bounds the revocations token holders and agents may write.
    limit: WriteLimit,
    queue: mpsc::Sender<Queued>,
}

/// The revocation writes waiting for [`coalesce`].
pub struct Waiting(mpsc::Receiver<Queued>);

/// Revocation writes waiting at most (callers wait for room beyond).
const QUEUED: usize = 4096;

/// Documents committed together at most: with their audit entries, well within one etcd
/// request (1.5 MiB by default).
const DOCUMENTS_PER_COMMIT: usize = 1000;

impl Revoker {
    /// A revoker writing to `configuration`, and the queue [`coalesce`] commits from.
    pub fn new(configuration: Arc<Configuration>) -> (Revoker, Waiting) {
        let (queue, waiting) = mpsc::channel(QUEUED);
        (Revoker { configuration, limit: WriteLimit::default(), queue }, Waiting(waiting))
    }

    /// Takes one write for `principal` from outside the operators; `Err(seconds)` to wait
    /// when over a limit.
    pub fn take(&self, principal: &str) -> Result<(), u64> {
        self.limit.take(principal)
    }

    /// Writes `documents` (each of kind Revocation) as `actor`, committed with whatever other
    /// revocations are waiting.
    pub(crate) async fn apply(
        &self,
        documents: Vec<warden_core::Document>,
        actor: &str,
        operation: &str,
    ) -> Result<Applied, WriteError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let queued = Queued { documents, actor: actor.to_string(), operation: operation.to_string(), done };
        let closed =
            || WriteError::Store(StoreError::Corrupt { key: "revocations".into(), message: "shutting down".into() });
        self.queue.send(queued).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Revokes the task token whose session ended, as [`end_task`] says.
    pub(crate) async fn end_task(&self, agent: String, task: pb::TaskEnded) {
        end_task(self, agent, task).await
    }
}

/// One caller's revocations, waiting.
struct Queued {
    documents: Vec<warden_core::Document>,
    actor: String,
    operation: String,
    done: tokio::sync::oneshot::Sender<Result<Applied, WriteError>>,
}

/// What one caller's revocations did: the version, and per document its key, action and
/// previous resource version.
pub(crate) type Applied = (u64, Vec<(ResourceKey, Action, u64)>);

/// Commits queued revocations until shutdown: everything waiting (up to
/// [`DOCUMENTS_PER_COMMIT`]) as one write. When that write is refused (two callers named one
/// revocation differently, or one caller's document is bad), each caller's is written alone,
/// so every caller gets its own answer.
pub async fn coalesce(configuration: Arc<Configuration>, waiting: Waiting, mut shutdown: Shutdown) {
    let mut rx = waiting.0;
    loop {
        let first = tokio::select! {
            first = rx.recv() => match first { Some(q) => q, None => return },
            _ = shutdown.requested() => return,
        };
        let mut documents = first.documents.len();
        let mut batch = vec![first];
        while documents < DOCUMENTS_PER_COMMIT {
            match rx.try_recv() {
                Ok(q) => {
                    documents += q.documents.len();
                    batch.push(q);
                }
                Err(_) => break,
            }
        }
        if batch.len() > 1 {
            match write_together(&configuration, &batch).await {
                Ok((version, mut results)) => {
                    for q in batch {
                        let rest = results.split_off(q.documents.len());
                        let _ = q.done.send(Ok((version, std::mem::replace(&mut results, rest))));
                    }
                    continue;
                }
                Err(e) => tracing::debug!(
                    callers = batch.len(),
                    "revocations written together were refused ({e}); writing each alone"
                ),
            }
        }
        for q in batch {
            let documents = q.documents;
            let written = configuration
                .write(&q.actor, &q.operation, |current| {
                    let plan = state::plan_apply(current, documents.clone())?;
                    let results = plan.results.clone();
                    Ok((plan, results))
                })
                .await;
            let _ = q.done.send(written);
        }
    }
}

async fn write_together(configuration: &Configuration, batch: &[Queued]) -> Result<Applied, WriteError> {
    let documents: Vec<warden_core::Document> = batch.iter().flat_map(|q| q.documents.iter().cloned()).collect();
    let actors: Vec<(String, String)> = batch
        .iter()
        .flat_map(|q| std::iter::repeat_n((q.actor.clone(), q.operation.clone()), q.documents.len()))
        .collect();
    configuration
        .write("control-plane", "revoke", |current| {
            let mut plan = state::plan_apply(current, documents.clone())?;
            plan.actors = actors.clone();
            let results = plan.results.clone();
            Ok((plan, results))
        })
        .await
}

/// How often revocations may be written on request from outside the operators — token holders
/// at `/revoke`, agents reporting ended tasks — per principal and in all. Each is a configuration
/// version every agent receives, so without a bound one workload looping `/token` + `/revoke`
/// (or one compromised agent) would flood the fleet.
struct WriteLimit {
    buckets: std::sync::Mutex<(warden_core::bounded::BoundedMap<String, Bucket>, Bucket)>,
}

/// Revocations one principal may ask for at once, and per minute after that.
const PER_PRINCIPAL_BURST: f64 = 10.0;
const PER_PRINCIPAL_PER_MINUTE: f64 = 10.0;
/// Revocations all principals together may ask for at once, and per second after that.
const ALL_BURST: f64 = 100.0;
const ALL_PER_SECOND: f64 = 20.0;
/// Principals remembered (the oldest is forgotten first; a forgotten principal starts full).
const PRINCIPALS: usize = 65_536;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

impl Bucket {
    fn full(capacity: f64, now: std::time::Instant) -> Bucket {
        Bucket { tokens: capacity, at: now }
    }

    /// Refills at `rate` per second up to `capacity`; the seconds until one token is there.
    fn refill(&mut self, capacity: f64, rate: f64, now: std::time::Instant) -> f64 {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(capacity);
        self.at = now;
        if self.tokens >= 1.0 { 0.0 } else { (1.0 - self.tokens) / rate }
    }
}

impl Default for WriteLimit {
    fn default() -> WriteLimit {
        let now = std::time::Instant::now();
        WriteLimit {
            buckets: std::sync::Mutex::new((
                warden_core::bounded::BoundedMap::new(PRINCIPALS),
                Bucket::full(ALL_BURST, now),
            )),
        }
    }
}

impl WriteLimit {
    /// Takes one write for `principal`; `Err(seconds)` to wait when over either limit (nothing
    /// is taken then).
    pub fn take(&self, principal: &str) -> Result<(), u64> {
        let now = std::time::Instant::now();
        let mut guard = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (principals, all) = &mut *guard;
        let mut mine =
            principals.get(&principal.to_string()).copied().unwrap_or(Bucket::full(PER_PRINCIPAL_BURST, now));
        let wait_mine = mine.refill(PER_PRINCIPAL_BURST, PER_PRINCIPAL_PER_MINUTE / 60.0, now);
        let wait_all = all.refill(ALL_BURST, ALL_PER_SECOND, now);
        let wait = wait_mine.max(wait_all);
        if wait > 0.0 {
            principals.insert(principal.to_string(), mine);
            return Err(wait.ceil() as u64);
        }
        mine.tokens -= 1.0;
        all.tokens -= 1.0;
        principals.insert(principal.to_string(), mine);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_principal_gets_its_burst_then_waits_while_others_still_may() {
        let limit = WriteLimit::default();
        for _ in 0..PER_PRINCIPAL_BURST as usize {
            limit.take("idp/mallory").unwrap();
        }
        let wait = limit.take("idp/mallory").unwrap_err();
        assert!((1..=6).contains(&wait), "one more in about 6s: {wait}");
        limit.take("idp/alice").unwrap();
    }

    #[test]
    fn all_principals_together_are_bounded_too() {
        let limit = WriteLimit::default();
        let taken = (0..1000).filter(|i| limit.take(&format!("idp/p{i}")).is_ok()).count();
        // The burst, plus what refilled while the loop ran (20/s).
        assert!((ALL_BURST as usize..ALL_BURST as usize + 5).contains(&taken), "{taken}");
    }
}
