//! The decision record of each allow and deny (see `crate::decisions`): who called what, on
//! which server, the outcome and why. Never the token, a claim's secret or an argument value.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use proto::decision_record::DecisionRecordRef;
use proto::v1 as pb;
use warden_core::authorize::{Shadow, Target};
use warden_core::token::Verified;

use crate::decisions::Outbox;
use crate::spans::TraceContext;

/// What one decision was about.
pub(crate) struct Decision<'a> {
    pub server: &'a str,
    /// The MCP method policy decided, or the HTTP method for refusals before the body.
    pub method: &'a str,
    pub target: Option<Target<'a>>,
    pub workload: Option<&'a Verified>,
    pub allowed: bool,
    /// A stable code; empty on allow.
    pub reason: &'a str,
    pub policies: &'a [String],
    /// What the server's shadow policies would have decided, when otherwise.
    pub shadow: Option<&'a Shadow>,
    /// The server is in audit mode: the request is forwarded whatever `allowed` says, which is
    /// what Warden would have decided.
    pub audit: bool,
    /// The caller's address.
    pub source_ip: IpAddr,
    /// The call had arguments (never recorded themselves).
    pub arguments: bool,
    /// The configuration version that decided.
    pub config_version: u64,
    /// The time policy saw (`context.time`: the request's arrival), seconds since the epoch.
    pub policy_time: i64,
}

/// How long a thread goes on naming a caller by digest alone before it sends the caller's
/// facts again: the control plane forgets facts no kept record needs, by their last sighting.
const FACTS_RESENT_AFTER: Duration = Duration::from_secs(3600);
/// Callers a thread remembers having sent (then it forgets them all and sends again).
const FACTS_REMEMBERED: usize = 4096;

/// Callers whose facts a thread put on a record: by (outbox run, digest), the outbox's drop
/// count then (a dropped record may have carried them) and when.
type FactsSent = HashMap<(u64, [u8; 16]), (u64, Instant)>;

thread_local! {
    static FACTS_SENT: RefCell<FactsSent> = RefCell::new(HashMap::new());
}

/// Whether the record about to name `digest` must carry the caller's facts.
fn facts_due(outbox: &Outbox, digest: [u8; 16], now: Instant) -> bool {
    FACTS_SENT.with_borrow_mut(|sent| {
        let drops = outbox.drop_count();
        let key = (outbox.boot(), digest);
        match sent.get(&key) {
            Some(&(d, at)) if d == drops && now.saturating_duration_since(at) < FACTS_RESENT_AFTER => false,
            _ => {
                if sent.len() >= FACTS_REMEMBERED {
                    sent.clear();
                }
                sent.insert(key, (drops, now));
                true
            }
        }
    })
}

/// The encoded `Caller` of `workload`.
fn encoded_facts(workload: &Verified) -> Vec<u8> {
    use prost::Message as _;
    let c = warden_core::caller::Caller::of(workload);
    pb::Caller {
        issuer: c.issuer,
        subject: c.subject,
        scopes: c.scopes,
        tenant: c.tenant,
        email: c.email,
        has_groups: c.groups.is_some(),
        groups: c.groups.unwrap_or_default(),
        task: c.granted_tools.is_some(),
        granted_tools: c.granted_tools.unwrap_or_default(),
    }
    .encode_to_vec()
}

/// The longest method name a record keeps, in bytes.
const MAX_METHOD: usize = 128;
/// The longest tool name, resource URI, prompt name, subject or issuer a record keeps, in bytes.
const MAX_NAME: usize = 1024;

/// `text` cut to at most `max` bytes (on a character boundary). A caller names the method and
/// the target in its request body, which may be a megabyte: uncut, a workload with a valid
/// token could fill the outbox's bounded count of records with gigabytes, and batches could
/// outgrow what the control plane accepts.
fn bounded(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
}

/// `via` of a request a `CredentialBridge` admitted.
pub(crate) const VIA_BRIDGE: &str = "bridge";

/// Queues the record of `decision` for the control plane; the request arrived at `arrived`
/// through `via` ("gateway" or "ext_authz"; recorded as "bridge" when a bridge admitted it).
/// With tracing on, `trace` is the request's trace (which the gateway may have started), so the
/// record and the span share one trace id.
pub(crate) fn record(
    outbox: &Outbox,
    arrived: Instant,
    via: &str,
    headers: &HeaderMap,
    trace: Option<&TraceContext>,
    decision: Decision<'_>,
) {
    if !outbox.enabled() {
        return;
    }
    let (target_kind, target) = match decision.target {
        None => ("", ""),
        Some(Target::Server) => ("server", ""),
        Some(Target::Tool(name)) => ("tool", name),
        Some(Target::Resource(uri)) => ("resource", uri),
        Some(Target::Prompt(name)) => ("prompt", name),
    };
    let workload = decision.workload;
    // However it arrived, a legacy client's request is on record as bridged.
    let via = if workload.is_some_and(|w| w.bridge.is_some()) { VIA_BRIDGE } else { via };
    let mut hex = [0; 32];
    let trace_id = match trace {
        Some(context) => hex_of(&context.trace_id, &mut hex),
        None => trace_id(headers).unwrap_or_default(),
    };
    let now = Instant::now();
    let caller = workload.map(|w| w.caller_digest());
    let facts = match (workload, caller) {
        (Some(w), Some(digest)) if facts_due(outbox, digest, now) => Some(encoded_facts(w)),
        _ => None,
    };
    let mut address = [0u8; 48];
    let source = {
        let mut cursor = std::io::Cursor::new(&mut address[..]);
        let _ = write!(cursor, "{}", decision.source_ip.to_canonical());
        let written = cursor.position() as usize;
        std::str::from_utf8(&address[..written]).unwrap_or_default()
    };
    let time_unix_nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    // Borrowed from the request and encoded as it is queued: no string is copied.
    outbox.record(&DecisionRecordRef {
        time_unix_nanos,
        server: decision.server,
        method: bounded(decision.method, MAX_METHOD),
        target_kind,
        target: bounded(target, MAX_NAME),
        subject: bounded(workload.map_or("", |w| &w.subject), MAX_NAME),
        issuer: bounded(workload.map_or("", |w| &w.issuer), MAX_NAME),
        decision: if decision.allowed || decision.audit { pb::Decision::Allow } else { pb::Decision::Deny },
        reason: decision.reason,
        policies: decision.policies,
        latency_micros: now.saturating_duration_since(arrived).as_micros() as u64,
        trace_id,
        jti_hash: workload.and_then(|w| w.jti_hash.as_deref()).unwrap_or_default(),
        via,
        token_lifetime_seconds: workload.map_or(0, |w| w.expires_at.saturating_sub(w.issued_at).max(0) as u64),
        actor: "",
        binding: "",
        count: 0,
        source,
        shadow: decision.shadow.map_or("", Shadow::code),
        shadow_policies: decision.shadow.map_or(&[], |s| &s.policies[..]),
        audit: match (decision.audit, decision.allowed) {
            (false, _) => "",
            (true, true) => "would_allow",
            (true, false) => "would_deny",
        },
        caller: caller.as_ref().map_or(&[][..], |d| &d[..]),
        caller_facts: facts.as_deref(),
        arguments: decision.arguments,
        config_version: decision.config_version,
        policy_time_lag_seconds: time_unix_nanos.div_euclid(1_000_000_000).saturating_sub(decision.policy_time).max(0)
            as u64,
    });
}

/// Lower-case hex of a trace id, written into `out`.
pub(crate) fn hex_of<'a>(id: &[u8; 16], out: &'a mut [u8; 32]) -> &'a str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(id) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    std::str::from_utf8(out).unwrap_or_default()
}

/// The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), if valid.
pub(crate) fn trace_id(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2);
    valid.then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_s_facts_go_once_per_run_and_again_after_a_drop_or_an_hour() {
        let dir = tempfile::tempdir().unwrap();
        let limits = crate::decisions::Limits { memory_records: 1, ..Default::default() };
        let outbox = crate::decisions::Outbox::open(dir.path(), limits).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = crate::decisions::Outbox::open(other_dir.path(), limits).unwrap();
        let now = Instant::now();
        let (alice, bob) = ([1; 16], [2; 16]);
        assert!(facts_due(&outbox, alice, now));
        assert!(!facts_due(&outbox, alice, now), "named by digest alone from then on");
        assert!(facts_due(&outbox, bob, now));
        assert!(facts_due(&other, alice, now), "another agent's queue sends its own");
        assert!(facts_due(&outbox, alice, now + FACTS_RESENT_AFTER), "again after an hour");
        assert!(!facts_due(&outbox, alice, now + FACTS_RESENT_AFTER));
        // A record dropped may have carried them: sent again.
        let record = DecisionRecordRef { server: "s", ..Default::default() };
        outbox.record(&record);
        outbox.record(&record);
        assert_eq!(outbox.drop_count(), 1);
        assert!(facts_due(&outbox, alice, now + FACTS_RESENT_AFTER));
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        assert_eq!(bounded("tools/call", MAX_METHOD), "tools/call");
        let long = "é".repeat(MAX_NAME);
        let cut = bounded(&long, MAX_NAME);
        assert_eq!((cut.len(), cut.chars().count()), (MAX_NAME, MAX_NAME / 2));
        assert_eq!(bounded("aé", 2), "a", "never half a character");
    }

    #[test]
    fn only_valid_traceparents_give_a_trace_id() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("traceparent", http::HeaderValue::from_static(v));
            trace_id(&h).map(str::to_string)
        };
        assert_eq!(
            with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let id = [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36];
        assert_eq!(hex_of(&id, &mut [0; 32]), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(with("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(with("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), None);
        assert_eq!(with("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), None);
        assert_eq!(with("garbage"), None);
        assert_eq!(trace_id(&HeaderMap::new()), None);
    }
}
