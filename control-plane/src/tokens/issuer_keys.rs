//! Resolving issuers' signing keys centrally: OIDC discovery or a JWKS URL, refreshed on the
//! schedule the identity provider's `Cache-Control` asks for (within bounds), keeping the old
//! keys when a refresh fails. Fetched keys are committed to the store like any other change, so
//! they reach agents inside snapshots and deltas: agents need no egress to identity providers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use warden_core::issuer::TrustedIssuerSpec;
use warden_core::resource::Spec;

use warden_tasks::{Backoff, Shutdown};

use crate::configuration::store::KeyRecord;
use crate::configuration::{Configuration, state};
use crate::fleet::replicas::Leadership;

/// Largest discovery document or JWKS accepted.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// Refresh timing.
#[derive(Clone, Copy, Debug)]
pub struct RefreshPolicy {
    /// When the provider sends no `Cache-Control: max-age`.
    pub default_interval: Duration,
    /// Lower bound on the provider's max-age (and the interval for `no-cache`/`no-store`).
    pub min_interval: Duration,
    /// Upper bound on the provider's max-age.
    pub max_interval: Duration,
    /// An agent's request for a prompt refresh (unknown `kid`) is honoured at most this often
    /// per issuer.
    pub request_interval: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> RefreshPolicy {
        RefreshPolicy {
            default_interval: Duration::from_secs(3600),
            min_interval: Duration::from_secs(300),
            max_interval: Duration::from_secs(24 * 3600),
            request_interval: Duration::from_secs(30),
        }
    }
}

impl RefreshPolicy {
    /// The next refresh after a successful fetch with this `Cache-Control`.
    pub fn interval(&self, cache_control: Option<&str>) -> Duration {
        let Some(header) = cache_control else { return self.default_interval };
        let mut max_age = None;
        for directive in header.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-cache" || lower == "no-store" {
                return self.min_interval;
            }
            if let Some(v) = lower.strip_prefix("max-age=") {
                max_age = v.trim_matches('"').parse::<u64>().ok();
            }
        }
        max_age.map_or(self.default_interval, |s| Duration::from_secs(s).clamp(self.min_interval, self.max_interval))
    }

    /// The retry delay after `failures` consecutive failures: doubling from 5s, capped at the
    /// minimum interval (the old keys stay in force meanwhile).
    pub fn retry(&self, failures: u32) -> Duration {
        let first = Duration::from_secs(5);
        Backoff::new(first, self.min_interval.max(first)).ceiling(failures)
    }
}

/// What operators see of an issuer's key resolution.
#[derive(Clone, Debug, Default)]
pub struct KeyStatus {
    /// The last refresh error, empty after a success.
    pub last_error: String,
    /// When the next refresh is due, seconds since the epoch.
    pub next_refresh_unix: i64,
    /// Fetches that succeeded, since this replica started.
    pub succeeded: u64,
    /// Fetches that failed, likewise.
    pub failed: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// When this replica began tracking the issuer, milliseconds since the epoch.
    pub tracked_since_ms: i64,
}

/// Every fetching issuer's [`KeyStatus`], by issuer name.
#[derive(Debug, Default)]
pub struct KeyStatuses(std::sync::Mutex<HashMap<String, KeyStatus>>);

impl KeyStatuses {
    /// The statuses now.
    pub fn snapshot(&self) -> HashMap<String, KeyStatus> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, KeyStatus>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Tracked {
    /// The issuer's resource version the schedule was made for.
    origin_version: u64,
    spec: TrustedIssuerSpec,
    due: Instant,
    failures: u32,
    last_attempt: Option<Instant>,
    /// An agent asked for these keys: fetched even by a replica that does not lead.
    prompted: bool,
}

/// A fetched key set and how long it may be cached.
struct Fetched {
    jwks: serde_json::Value,
    source_uri: String,
    cache_control: Option<String>,
}

/// Runs until the control plane shuts down: keeps every fetching issuer's keys fresh, and
/// refetches promptly on an agent's request.
pub async fn run(
    cp: Arc<Configuration>,
    statuses: Arc<KeyStatuses>,
    policy: RefreshPolicy,
    mut leading: Leadership,
    mut requests: mpsc::Receiver<String>,
    mut shutdown: Shutdown,
) {
    let http: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .max_redirects(3)
        .https_only(!cp.admission().allow_http_issuers)
        .build()
        .into();
    let mut tracked: HashMap<String, Tracked> = HashMap::new();
    let mut state_rx = cp.subscribe();
    loop {
        // Level-triggered: follow whatever the configuration says now.
        let current = state_rx.borrow_and_update().clone();
        let mut fetching = BTreeMap::new();
        for (key, entry) in &current.resources {
            if let Spec::TrustedIssuer(spec) = &entry.document.spec
                && spec.keys.jwks.is_none()
                && !spec.keys.control_plane
            {
                fetching.insert(key.name.clone(), (entry.resource_version, spec.clone()));
            }
        }
        tracked.retain(|name, _| fetching.contains_key(name));
        {
            // Every fetching issuer has a status from the start: its counts begin at zero.
            let mut statuses = statuses.lock();
            statuses.retain(|name, _| fetching.contains_key(name));
            for name in fetching.keys() {
                statuses
                    .entry(name.clone())
                    .or_insert_with(|| KeyStatus { tracked_since_ms: crate::now_unix_ms(), ..KeyStatus::default() });
            }
        }
        for (name, (origin_version, spec)) in fetching {
            let fresh = tracked.get(&name).is_none_or(|t| t.origin_version != origin_version);
            if fresh {
                let due = Instant::now();
                tracked.insert(
                    name,
                    Tracked { origin_version, spec, due, failures: 0, last_attempt: None, prompted: false },
                );
            }
        }

        // Scheduled refreshes are a singleton duty (one replica fetches for the fleet); an
        // agent's prompt request is served by the replica it asked.
        let leads = leading.observe();
        let now = Instant::now();
        let due: Vec<String> =
            tracked.iter().filter(|(_, t)| t.due <= now && (leads || t.prompted)).map(|(n, _)| n.clone()).collect();
        for name in due {
            let Some(t) = tracked.get_mut(&name) else { continue };
            t.last_attempt = Some(Instant::now());
            t.prompted = false;
            let (spec, agent) = (t.spec.clone(), http.clone());
            let result = tokio::task::spawn_blocking(move || fetch(&agent, &spec))
                .await
                .unwrap_or_else(|e| Err(FetchError::Interrupted(e.to_string())));
            let next = match result {
                Ok(fetched) => {
                    t.failures = 0;
                    let interval = policy.interval(fetched.cache_control.as_deref());
                    store(&cp, &name, t.origin_version, fetched).await;
                    set_status(&statuses, &name, Ok(()), interval);
                    interval
                }
                Err(error) => {
                    t.failures += 1;
                    let retry = policy.retry(t.failures);
                    tracing::warn!(issuer = %name, "key refresh failed, keeping the previous keys: {error}");
                    set_status(&statuses, &name, Err(error.to_string()), retry);
                    retry
                }
            };
            t.due = Instant::now() + next;
        }

        let wake = tracked
            .values()
            .filter(|t| leads || t.prompted)
            .map(|t| t.due)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            changed = state_rx.changed() => if changed.is_err() { return },
            _ = leading.changed() => {}
            Some(issuer) = requests.recv() => {
                if let Some(t) = tracked.get_mut(&issuer)
                    && t.last_attempt.is_none_or(|at| at.elapsed() >= policy.request_interval)
                {
                    tracing::info!(%issuer, "prompt key refresh requested by an agent");
                    t.due = Instant::now();
                    t.prompted = true;
                }
            }
            _ = shutdown.requested() => return,
        }
    }
}

fn set_status(statuses: &KeyStatuses, issuer: &str, outcome: Result<(), String>, next: Duration) {
    let mut statuses = statuses.lock();
    let status = statuses.entry(issuer.to_string()).or_default();
    status.next_refresh_unix = (crate::now_unix_ms() / 1000) + next.as_secs() as i64;
    match outcome {
        Ok(()) => {
            status.last_error.clear();
            status.succeeded += 1;
            status.consecutive_failures = 0;
        }
        Err(error) => {
            status.last_error = error;
            status.failed += 1;
            status.consecutive_failures = status.consecutive_failures.saturating_add(1);
        }
    }
}

/// Commits fetched keys if they differ from what agents have.
async fn store(cp: &Configuration, issuer: &str, origin_version: u64, fetched: Fetched) {
    let record = KeyRecord {
        version: 0,
        jwks: fetched.jwks,
        fetched_at_unix: crate::now_unix_ms() / 1000,
        source_uri: fetched.source_uri,
        expires_unix: Default::default(),
    };
    let written = cp
        .write("control-plane", "refresh-keys", |current| {
            Ok((state::plan_keys(current, issuer, origin_version, record.clone()), ()))
        })
        .await;
    if let Err(e) = written {
        tracing::error!(%issuer, "storing refreshed keys failed: {e}");
    }
}

/// Why an issuer's keys could not be fetched (kept as the issuer's status for operators).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    /// The request or its answer failed.
    #[error("{url}: {source}")]
    Http {
        /// What was fetched.
        url: String,
        /// The cause.
        source: ureq::Error,
    },
    /// The discovery document names another issuer (OIDC Discovery 1.0 §4.3).
    #[error("{url}: the discovery document's \"issuer\" is not {issuer:?}")]
    WrongIssuer {
        /// The discovery document.
        url: String,
        /// The issuer it should name.
        issuer: String,
    },
    /// The discovery document names no key set.
    #[error("{0}: no \"jwks_uri\" in the discovery document")]
    NoJwksUri(String),
    /// The key set is refused.
    #[error("{url}: {source}")]
    Keys {
        /// The key set's address.
        url: String,
        /// Why it is refused.
        source: warden_core::jwks::JwksError,
    },
    /// The fetch's task ended before answering.
    #[error("fetch task failed: {0}")]
    Interrupted(String),
}

/// Fetches an issuer's JWKS, through OIDC discovery when configured so. Blocking.
fn fetch(http: &ureq::Agent, spec: &TrustedIssuerSpec) -> Result<Fetched, FetchError> {
    let jwks_uri = match &spec.keys.jwks_uri {
        Some(uri) => uri.clone(),
        None => {
            let url = format!("{}/.well-known/openid-configuration", spec.issuer.trim_end_matches('/'));
            let (doc, _) = get_json(http, &url)?;
            // OIDC Discovery 1.0 §4.3: the document must name exactly the issuer it was fetched for.
            if doc.get("issuer").and_then(|v| v.as_str()) != Some(spec.issuer.as_str()) {
                return Err(FetchError::WrongIssuer { url, issuer: spec.issuer.clone() });
            }
            match doc.get("jwks_uri").and_then(|v| v.as_str()) {
                Some(uri) => uri.to_string(),
                None => return Err(FetchError::NoJwksUri(url)),
            }
        }
    };
    let (jwks, cache_control) = get_json(http, &jwks_uri)?;
    if let Err(source) = warden_core::jwks::check_public_jwks(&jwks) {
        return Err(FetchError::Keys { url: jwks_uri, source });
    }
    Ok(Fetched { jwks, source_uri: jwks_uri, cache_control })
}

fn get_json(http: &ureq::Agent, url: &str) -> Result<(serde_json::Value, Option<String>), FetchError> {
    let failed = |source| FetchError::Http { url: url.to_string(), source };
    let mut response = http.get(url).header("Accept", "application/json").call().map_err(failed)?;
    let cache_control = response.headers().get("cache-control").and_then(|v| v.to_str().ok()).map(str::to_string);
    let value =
        response.body_mut().with_config().limit(MAX_BODY_BYTES).read_json::<serde_json::Value>().map_err(failed)?;
    Ok((value, cache_control))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_is_honoured_within_bounds() {
        let p = RefreshPolicy::default();
        assert_eq!(p.interval(None), Duration::from_secs(3600));
        assert_eq!(p.interval(Some("public, max-age=7200")), Duration::from_secs(7200));
        assert_eq!(p.interval(Some("max-age=1")), p.min_interval, "too short: raised to the minimum");
        assert_eq!(p.interval(Some("max-age=999999999")), p.max_interval, "too long: capped");
        assert_eq!(p.interval(Some("no-store")), p.min_interval);
        assert_eq!(p.interval(Some("private")), p.default_interval);
    }

    #[test]
    fn retries_back_off_up_to_the_minimum_interval() {
        let p = RefreshPolicy::default();
        assert_eq!(p.retry(1), Duration::from_secs(10));
        assert!(p.retry(3) > p.retry(2));
        assert_eq!(p.retry(30), p.min_interval);
    }
}
