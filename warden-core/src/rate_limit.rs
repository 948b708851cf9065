//! Rate limits per caller: an McpServer's `rateLimits`, and the table of buckets an agent keeps
//! for each.
//!
//! Each bucket is the generic cell rate algorithm (GCRA, the token bucket kept as one number):
//! a request at time `t` is allowed when the bucket's theoretical arrival time `tat` is at most
//! `t + τ` (τ = the burst less one, in emission intervals), and moves `tat` on by one emission
//! interval (`period / requests`). A bucket whose `tat` has passed is the same as a new one, so
//! it can be forgotten at any time: that is how the table stays bounded. One bucket costs a
//! 64-bit key (a keyed hash of its caller, tool and tenant) and a 64-bit time.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::validation::DocumentError;

/// What one bucket is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPart {
    /// The validated workload: the token's issuer and subject.
    Caller,
    /// The tool a `tools/call` names (other requests share the empty tool).
    Tool,
    /// The token's `tenant` claim.
    Tenant,
}

/// One of an McpServer's `rateLimits`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests allowed per `period`, on average.
    pub requests: u32,
    /// The period `requests` are counted over (`1s`, `1m`, `1h`).
    pub period: HumanDuration,
    /// Requests allowed at once after a quiet spell (default: `requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What a bucket is kept for (default: `[caller]`).
    #[serde(default = "caller", skip_serializing_if = "is_caller")]
    pub per: Vec<KeyPart>,
    /// Only calls of these tools count (default: every request to the server).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
}

fn caller() -> Vec<KeyPart> {
    vec![KeyPart::Caller]
}

fn is_caller(per: &[KeyPart]) -> bool {
    per == [KeyPart::Caller]
}

/// Rate limits per server at most.
pub const MAX_RATE_LIMITS: usize = 16;

/// The largest burst: with the longest interval (24 h), the bucket's time stays far from
/// overflowing.
pub const MAX_BURST: u32 = 1_000_000;

impl RateLimit {
    /// Checks the limit at `path` (`spec.rateLimits[0]`).
    pub(crate) fn validate(&self, path: &str) -> Result<(), DocumentError> {
        if self.requests == 0 {
            return Err(DocumentError::field(format!("{path}.requests"), "must be at least 1"));
        }
        let period = self.period.0;
        if period < Duration::from_millis(1) || period > Duration::from_secs(24 * 3600) {
            return Err(DocumentError::field(format!("{path}.period"), "must be from 1ms to 24h"));
        }
        if period.as_nanos() / u128::from(self.requests) < 1_000 {
            return Err(DocumentError::field(
                format!("{path}.requests"),
                "at most one a microsecond (requests per period)",
            ));
        }
        match self.burst {
            Some(0) => return Err(DocumentError::field(format!("{path}.burst"), "must be at least 1")),
            Some(b) if b > MAX_BURST => {
                return Err(DocumentError::field(format!("{path}.burst"), format!("must be at most {MAX_BURST}")));
            }
            _ => {}
        }
        if self.per.is_empty() {
            return Err(DocumentError::field(format!("{path}.per"), "name at least one of caller, tool, tenant"));
        }
        for (i, part) in self.per.iter().enumerate() {
            if self.per[..i].contains(part) {
                return Err(DocumentError::field(format!("{path}.per"), format!("{part:?} is named twice")));
            }
        }
        if self.per.contains(&KeyPart::Tool) && self.tools.is_empty() {
            // A bucket per name the caller makes up would be no limit at all.
            return Err(DocumentError::field(
                format!("{path}.per"),
                "tool needs the tools it counts listed in tools (a bucket for each of them)",
            ));
        }
        for (i, tool) in self.tools.iter().enumerate() {
            if tool.is_empty() || tool.len() > 256 {
                return Err(DocumentError::field(format!("{path}.tools[{i}]"), "must be 1 to 256 characters"));
            }
        }
        Ok(())
    }

    /// The emission interval (`period / requests`) and the tolerance (`burst - 1` intervals),
    /// in nanoseconds.
    fn gcra(&self) -> (u64, u64) {
        let interval = (self.period.0.as_nanos() / u128::from(self.requests)).max(1) as u64;
        let burst = u64::from(self.burst.unwrap_or(self.requests).max(1));
        (interval, interval.saturating_mul(burst - 1))
    }

    /// Whether a request of `method` naming `tool` counts against this limit.
    pub fn applies(&self, method: &str, tool: Option<&str>) -> bool {
        counts(&self.tools, method, tool)
    }
}

/// Whether a request of `method` naming `tool` counts against a limit on `tools` (none: every
/// request; else the calls of those tools).
fn counts(tools: &[String], method: &str, tool: Option<&str>) -> bool {
    tools.is_empty() || (method == "tools/call" && tool.is_some_and(|t| tools.iter().any(|l| l == t)))
}

/// Independent tables, so that gateway threads rarely wait for each other.
const SHARDS: usize = 16;

/// The buckets of one rate limit: at most `max_keys` of them.
pub struct Limiter {
    interval: u64,
    tolerance: u64,
    per: Vec<KeyPart>,
    max_per_shard: usize,
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<u64, u64>>]>,
}

/// What a request is counted as.
pub struct Subject<'a> {
    /// The token's issuer.
    pub issuer: &'a str,
    /// The token's subject.
    pub subject: &'a str,
    /// The tool a `tools/call` names.
    pub tool: Option<&'a str>,
    /// The token's `tenant` claim (a caller without one is its own tenant).
    pub tenant: Option<&'a str>,
}

impl Limiter {
    /// The buckets of `limit`, at most `max_keys` at a time.
    pub fn new(limit: &RateLimit, max_keys: usize) -> Limiter {
        let (interval, tolerance) = limit.gcra();
        Limiter {
            interval,
            tolerance,
            per: limit.per.clone(),
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn key(&self, s: &Subject<'_>) -> u64 {
        bucket_of(&self.hasher, &self.per, s)
    }

    /// The bucket `subject` counts against.
    pub fn bucket(&self, subject: &Subject<'_>) -> u64 {
        self.key(subject)
    }

    /// Whether `n` requests against `bucket` at `now` (nanoseconds on a monotonic clock) would
    /// be allowed; if not, how long until they would be. Nothing is counted.
    pub fn would_allow(&self, bucket: u64, n: u64, now: u64) -> Result<(), Duration> {
        let shard = self.shards[(bucket as usize) % SHARDS].lock().unwrap_or_else(|p| p.into_inner());
        self.admits(shard.get(&bucket).copied(), n, now).map(|_| ())
    }

    /// Counts `n` requests against `bucket` at `now`: allowed (and counted), or refused with
    /// how long until they would be (and not counted).
    pub fn take(&self, bucket: u64, n: u64, now: u64) -> Result<(), Duration> {
        let mut shard = self.shards[(bucket as usize) % SHARDS].lock().unwrap_or_else(|p| p.into_inner());
        let tat = self.admits(shard.get(&bucket).copied(), n, now)?;
        if !shard.contains_key(&bucket) && shard.len() >= self.max_per_shard {
            make_room(&mut shard, now, self.max_per_shard);
        }
        shard.insert(bucket, tat);
        Ok(())
    }

    /// One request of `subject` at `now`: [`Limiter::take`] of one.
    pub fn check(&self, subject: &Subject<'_>, now: u64) -> Result<(), Duration> {
        self.take(self.key(subject), 1, now)
    }

    /// GCRA for `n` requests at once: the bucket's new time if allowed. They are allowed when
    /// the last of them would be (`tat + (n - 1)·T - τ ≤ now`).
    fn admits(&self, tat: Option<u64>, n: u64, now: u64) -> Result<u64, Duration> {
        let tat = tat.unwrap_or(now).max(now);
        let last = tat.saturating_add(self.interval.saturating_mul(n.saturating_sub(1)));
        let allow_at = last.saturating_sub(self.tolerance);
        if allow_at > now {
            return Err(Duration::from_nanos(allow_at - now));
        }
        Ok(tat.saturating_add(self.interval.saturating_mul(n)))
    }

    /// Buckets kept now.
    pub fn keys(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }
}

/// The 64-bit key of `s`'s bucket under `per`: a hash keyed per table, so callers can neither
/// predict nor aim at another's bucket.
fn bucket_of(hasher: &RandomState, per: &[KeyPart], s: &Subject<'_>) -> u64 {
    let mut h = hasher.build_hasher();
    for part in per {
        // Length-prefixed, so that no two subjects run together into one key.
        let value = match part {
            KeyPart::Caller => {
                h.write_usize(s.issuer.len());
                h.write(s.issuer.as_bytes());
                s.subject
            }
            KeyPart::Tool => s.tool.unwrap_or(""),
            KeyPart::Tenant => match s.tenant {
                Some(tenant) => tenant,
                None => {
                    // No tenant: a bucket of the caller's own, never one shared by all the
                    // callers without one.
                    h.write_u8(0xff);
                    h.write_usize(s.issuer.len());
                    h.write(s.issuer.as_bytes());
                    s.subject
                }
            },
        };
        h.write_usize(value.len());
        h.write(value.as_bytes());
    }
    h.finish()
}

/// One of an McpServer's `concurrencyLimits`: requests of one caller (or tool, or tenant) in
/// flight at once.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConcurrencyLimit {
    /// Requests in flight at once, at most.
    pub max: u32,
    /// What one count is kept for (default: `[caller]`).
    #[serde(default = "caller", skip_serializing_if = "is_caller")]
    pub per: Vec<KeyPart>,
    /// Only calls of these tools count (default: every request to the server).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
}

impl ConcurrencyLimit {
    /// Checks the limit at `path` (`spec.concurrencyLimits[0]`).
    pub(crate) fn validate(&self, path: &str) -> Result<(), DocumentError> {
        if self.max == 0 || self.max > MAX_BURST {
            return Err(DocumentError::field(format!("{path}.max"), format!("must be from 1 to {MAX_BURST}")));
        }
        // The same rules as a rate limit's, for the keys and tools.
        let as_rate = RateLimit {
            requests: 1,
            period: HumanDuration::from_secs(1),
            burst: None,
            per: self.per.clone(),
            tools: self.tools.clone(),
        };
        as_rate.validate(path)
    }

    /// Whether a request of `method` naming `tool` counts against this limit.
    pub fn applies(&self, method: &str, tool: Option<&str>) -> bool {
        counts(&self.tools, method, tool)
    }
}

/// The requests in flight under one concurrency limit, by caller (or tool, or tenant): an
/// entry exists only while requests of its key are in flight, so the table is bounded by them.
pub struct InFlight {
    max: u32,
    per: Vec<KeyPart>,
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<u64, u32>>]>,
}

/// Requests counted in flight until it is dropped (when their answers have been sent, or the
/// caller went away).
pub struct Permit {
    in_flight: std::sync::Arc<InFlight>,
    key: u64,
    n: u32,
}

impl InFlight {
    /// The counts of `limit`.
    pub fn new(limit: &ConcurrencyLimit) -> InFlight {
        InFlight {
            max: limit.max,
            per: limit.per.clone(),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// The count `subject` is kept under.
    pub fn key(&self, subject: &Subject<'_>) -> u64 {
        bucket_of(&self.hasher, &self.per, subject)
    }

    /// `n` more requests of `key` in flight, if that stays within the limit.
    pub fn acquire(self: &std::sync::Arc<Self>, key: u64, n: u32) -> Option<Permit> {
        let mut shard = self.shards[(key as usize) % SHARDS].lock().unwrap_or_else(|p| p.into_inner());
        let count = shard.entry(key).or_insert(0);
        if count.saturating_add(n) > self.max {
            if *count == 0 {
                shard.remove(&key);
            }
            return None;
        }
        *count += n;
        Some(Permit { in_flight: self.clone(), key, n })
    }

    /// Keys with requests in flight now.
    pub fn keys(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let in_flight = &self.in_flight;
        let mut shard = in_flight.shards[(self.key as usize) % SHARDS].lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = shard.get_mut(&self.key) {
            *count = count.saturating_sub(self.n);
            if *count == 0 {
                shard.remove(&self.key);
            }
        }
    }
}

/// Frees room in a full shard: first every bucket as good as new (its time has passed); if
/// that frees less than an eighth, the buckets nearest to refilled too, each of which may then
/// take its burst a little early (callers are validated workloads, so crowding others out
/// takes that many identities).
fn make_room(shard: &mut HashMap<u64, u64>, now: u64, max: usize) {
    shard.retain(|_, tat| *tat > now);
    let target = max - max / 8;
    if shard.len() > target {
        let mut times: Vec<u64> = shard.values().copied().collect();
        let excess = shard.len() - target;
        let (_, threshold, _) = times.select_nth_unstable(excess - 1);
        let threshold = *threshold;
        let mut removed = 0;
        shard.retain(|_, tat| {
            let keep = *tat > threshold || removed >= excess;
            removed += usize::from(!keep);
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn limit(requests: u32, period: u64, burst: Option<u32>) -> RateLimit {
        RateLimit { requests, period: HumanDuration::from_secs(period), burst, per: caller(), tools: Vec::new() }
    }

    fn who(subject: &str) -> Subject<'_> {
        Subject { issuer: "corp", subject, tool: None, tenant: None }
    }

    #[test]
    fn a_caller_gets_its_burst_then_the_rate() {
        let limiter = Limiter::new(&limit(10, 1, Some(5)), 1000);
        let t0 = 1_000 * SECOND;
        let allowed = (0..20).filter(|_| limiter.check(&who("a"), t0).is_ok()).count();
        assert_eq!(allowed, 5, "the burst at once");
        let wait = limiter.check(&who("a"), t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100), "one emission interval");
        // Over the next 10 s, a request every millisecond: 10 a second get through.
        let later = (1..=10_000u64).filter(|ms| limiter.check(&who("a"), t0 + ms * 1_000_000).is_ok()).count();
        assert_eq!(later, 100);
        // Another caller has a bucket of its own.
        assert!(limiter.check(&who("b"), t0).is_ok());
    }

    #[test]
    fn the_key_is_what_per_names_and_subjects_cannot_run_together() {
        let mut per_tool = limit(1, 60, None);
        per_tool.per = vec![KeyPart::Caller, KeyPart::Tool];
        per_tool.tools = vec!["search".into(), "delete".into()];
        let limiter = Limiter::new(&per_tool, 1000);
        let call = |tool| Subject { issuer: "corp", subject: "a", tool: Some(tool), tenant: None };
        assert!(limiter.check(&call("search"), SECOND).is_ok());
        assert!(limiter.check(&call("search"), SECOND).is_err());
        assert!(limiter.check(&call("delete"), SECOND).is_ok());
        let tenant = RateLimit { per: vec![KeyPart::Tenant], ..limit(1, 60, None) };
        let limiter = Limiter::new(&tenant, 1000);
        let of = |subject, tenant| Subject { issuer: "corp", subject, tool: None, tenant: Some(tenant) };
        assert!(limiter.check(&of("a", "acme"), SECOND).is_ok());
        assert!(limiter.check(&of("b", "acme"), SECOND).is_err(), "one bucket per tenant");
        let caller = Limiter::new(&limit(1, 60, None), 1000);
        let raw = |issuer, subject| Subject { issuer, subject, tool: None, tenant: None };
        assert!(caller.check(&raw("ab", "c"), SECOND).is_ok());
        assert!(caller.check(&raw("a", "bc"), SECOND).is_ok(), "ab+c is not a+bc");
    }

    #[test]
    fn a_batch_costs_a_request_each_and_is_allowed_whole_or_not_at_all() {
        let limiter = Limiter::new(&limit(10, 1, Some(5)), 1000);
        let bucket = limiter.bucket(&who("a"));
        let t0 = 1_000 * SECOND;
        assert!(limiter.would_allow(bucket, 6, t0).is_err(), "more than the burst at once");
        assert!(limiter.take(bucket, 4, t0).is_ok());
        assert_eq!(limiter.take(bucket, 2, t0), Err(Duration::from_millis(100)), "only one left");
        assert!(limiter.take(bucket, 1, t0).is_ok(), "a refused batch counted nothing");
        assert!(limiter.would_allow(bucket, 1, t0).is_err());
    }

    #[test]
    fn requests_in_flight_are_held_to_the_limit_until_their_permits_go() {
        let limit = ConcurrencyLimit { max: 2, per: caller(), tools: Vec::new() };
        let in_flight = std::sync::Arc::new(InFlight::new(&limit));
        let key = in_flight.key(&who("a"));
        let first = in_flight.acquire(key, 1).unwrap();
        let second = in_flight.acquire(key, 1).unwrap();
        assert!(in_flight.acquire(key, 1).is_none(), "a third at once");
        assert!(in_flight.acquire(in_flight.key(&who("b")), 2).is_some(), "another caller's own count");
        drop(first);
        let third = in_flight.acquire(key, 1).unwrap();
        assert!(in_flight.acquire(key, 2).is_none());
        drop((second, third));
        assert_eq!(in_flight.keys(), 0, "no entry is kept for a caller with nothing in flight");
        let error = ConcurrencyLimit { max: 0, ..limit }.validate("spec.concurrencyLimits[0]").unwrap_err();
        assert_eq!(error.to_string(), "spec.concurrencyLimits[0].max: must be from 1 to 1000000");
    }

    #[test]
    fn callers_without_a_tenant_do_not_share_one_bucket() {
        let tenant = RateLimit { per: vec![KeyPart::Tenant], ..limit(1, 60, None) };
        let limiter = Limiter::new(&tenant, 1000);
        let none = |subject| Subject { issuer: "corp", subject, tool: None, tenant: None };
        assert!(limiter.check(&none("a"), SECOND).is_ok());
        assert!(limiter.check(&none("b"), SECOND).is_ok());
        assert!(limiter.check(&none("a"), SECOND).is_err());
        let named = Subject { issuer: "corp", subject: "a", tool: None, tenant: Some("") };
        assert!(limiter.check(&named, SECOND).is_ok(), "an empty tenant is a tenant, not the caller");
    }

    #[test]
    fn a_full_table_forgets_the_buckets_nearest_to_refilled_first() {
        let mut shard: HashMap<u64, u64> = (0..80).map(|k| (k, 1_000 + k)).collect();
        make_room(&mut shard, 0, 80);
        assert_eq!(shard.len(), 70);
        assert!(shard.keys().all(|k| *k >= 10), "the ten nearest to refilled went: {:?}", shard.keys().min());
    }

    #[test]
    fn the_table_stays_bounded_under_many_callers() {
        let limiter = Limiter::new(&limit(1, 3600, None), 10_000);
        for i in 0..300_000u64 {
            let subject = i.to_string();
            assert!(limiter.check(&who(&subject), SECOND + i).is_ok());
        }
        assert!(limiter.keys() <= 10_000 + SHARDS, "{} buckets", limiter.keys());
        assert!(limiter.keys() >= 10_000 / 2, "the recent ones are kept: {}", limiter.keys());
    }

    #[test]
    fn limits_that_cannot_work_are_refused_with_the_field_named() {
        let error = |l: RateLimit| l.validate("spec.rateLimits[0]").unwrap_err().to_string();
        assert_eq!(error(limit(0, 1, None)), "spec.rateLimits[0].requests: must be at least 1");
        assert_eq!(error(limit(1, 0, None)), "spec.rateLimits[0].period: must be from 1ms to 24h");
        assert_eq!(error(limit(1, 1, Some(0))), "spec.rateLimits[0].burst: must be at least 1");
        let twice = RateLimit { per: vec![KeyPart::Caller, KeyPart::Caller], ..limit(1, 1, None) };
        assert_eq!(error(twice), "spec.rateLimits[0].per: Caller is named twice");
        let any_tool = RateLimit { per: vec![KeyPart::Caller, KeyPart::Tool], ..limit(1, 1, None) };
        assert!(error(any_tool).starts_with("spec.rateLimits[0].per: tool needs the tools it counts listed"));
        let too_fast = limit(2_000_000, 1, None);
        assert_eq!(error(too_fast), "spec.rateLimits[0].requests: at most one a microsecond (requests per period)");
        assert_eq!(error(limit(1, 1, Some(MAX_BURST + 1))), "spec.rateLimits[0].burst: must be at most 1000000");
        let parsed: RateLimit = serde_json::from_str(r#"{"requests": 5, "period": "1m"}"#).unwrap();
        assert_eq!(parsed, RateLimit { period: HumanDuration::from_secs(60), ..limit(5, 60, None) });
        assert!(serde_json::from_str::<RateLimit>(r#"{"requests": 5, "period": "1m", "rate": 1}"#).is_err());
        assert!(limit(5, 1, None).applies("resources/read", None));
        let tools = RateLimit { tools: vec!["search".into()], ..limit(5, 1, None) };
        assert!(tools.applies("tools/call", Some("search")));
        assert!(!tools.applies("tools/call", Some("echo")) && !tools.applies("tools/list", None));
    }
}
