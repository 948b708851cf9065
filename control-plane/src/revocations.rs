//! Keeping the revocation list small: a `Revocation` that says when every token it covers has
//! expired (`expires`, which the token service and `wardenctl revoke` always set) is deleted
//! then — an ordinary audited write, so agents drop it with the next version.

use std::sync::Arc;
use std::time::Duration;

use proto::v1 as pb;
use serde_json::json;
use warden_core::issuer::TrustedIssuerSpec;
use warden_core::resource::Spec;

use crate::ControlPlane;

/// Checked at least this often, and within a second of the next expiry.
const INTERVAL: Duration = Duration::from_secs(60);

/// Runs until shutdown, on the leading replica only (a singleton duty).
pub async fn expire(cp: Arc<ControlPlane>) {
    let mut state_rx = cp.state.subscribe();
    let mut shutdown = cp.shutdown.clone();
    let mut leading = cp.leading.subscribe();
    loop {
        if !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
            continue;
        }
        let current = state_rx.borrow_and_update().clone();
        let now = crate::now_unix_ms() / 1000;
        let mut expired = Vec::new();
        let mut next: Option<i64> = None;
        for (key, entry) in &current.resources {
            if let Spec::Revocation(spec) = &entry.document.spec
                && let Some(expires) = spec.expires_unix()
            {
                if expires <= now {
                    expired.push(key.clone());
                } else {
                    next = Some(next.map_or(expires, |n| n.min(expires)));
                }
            }
        }
        let mut wait = INTERVAL;
        if !expired.is_empty() {
            let count = expired.len();
            match crate::admin::delete_resources(&cp, expired, "control-plane", "expire-revocations").await {
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
            _ = shutdown.wait_for(|s| *s) => return,
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
pub(crate) async fn end_task(cp: Arc<ControlPlane>, agent: String, task: pb::TaskEnded) {
    let current = cp.state.borrow().clone();
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
    if let Err(wait) = cp.revocation_writes.take(&actor) {
        // The agent refuses the token itself already; the fleet-wide revocation is what waits.
        tracing::warn!(%agent, %jti_hash, wait, "an agent reports ended tasks faster than revocations may be written; not revoked fleet-wide");
        return;
    }
    match crate::admin::apply_documents(&cp, vec![document], &actor, "end-task").await {
        Ok(version) => tracing::info!(%agent, %jti_hash, version, "task token revoked: its session ended"),
        Err(e) => tracing::error!(%agent, %jti_hash, "revoking an ended task's token failed: {e}"),
    }
}

/// How often revocations may be written on request from outside the operators — token holders
/// at `/revoke`, agents reporting ended tasks — per principal and in all. Each is a configuration
/// version every agent receives, so without a bound one workload looping `/token` + `/revoke`
/// (or one compromised agent) would flood the fleet.
pub struct WriteLimit {
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
