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
/// changes nothing, expiring with the token (plus the issuer's clock skew).
pub(crate) fn token_revocation(
    issuer: &str,
    spec: Option<&TrustedIssuerSpec>,
    jti: &str,
    expires_at: i64,
) -> Result<warden_core::Document, warden_core::DocumentError> {
    let skew = spec.map_or(0, |s| s.clock_skew.0.as_secs() as i64);
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
    let document = match token_revocation(issuer, Some(spec), &task.jti, expires) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%agent, %jti_hash, "an ended task's token cannot be revoked: {e}");
            return;
        }
    };
    let actor = format!("agent:{agent}");
    match crate::admin::apply_documents(&cp, vec![document], &actor, "end-task").await {
        Ok(version) => tracing::info!(%agent, %jti_hash, version, "task token revoked: its session ended"),
        Err(e) => tracing::error!(%agent, %jti_hash, "revoking an ended task's token failed: {e}"),
    }
}
