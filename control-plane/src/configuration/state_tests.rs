use super::*;
use crate::configuration::store::LoadedResource;
use warden_core::{Admission, Kind};

fn doc(value: serde_json::Value) -> Document {
    Document::from_json(value, &Admission::default()).unwrap()
}

fn issuer(name: &str) -> Document {
    doc(serde_json::json!({
        "apiVersion": "warden.dev/v1", "kind": "TrustedIssuer", "metadata": {"name": name},
        "spec": {"issuer": "https://idp.example.com", "keys": {"discovery": true}, "allowedAlgorithms": ["RS256"]}
    }))
}

fn server(name: &str, issuer: &str) -> Document {
    doc(serde_json::json!({
        "apiVersion": "warden.dev/v1", "kind": "McpServer", "metadata": {"name": name},
        "spec": {"resource": "https://mcp.example.com", "issuers": [issuer], "upstream": "http://127.0.0.1:1/mcp"}
    }))
}

fn state(version: u64, docs: Vec<Document>) -> FleetState {
    let resources =
        docs.into_iter().map(|d| (d.key(), LoadedResource { resource_version: version, document: d })).collect();
    FleetState::from_loaded(Loaded { store_id: "s".into(), version, resources, keys: Default::default(), revision: 0 })
}

#[test]
fn apply_reports_created_configured_and_unchanged() {
    let current = state(4, vec![issuer("a")]);
    let mut changed = issuer("a");
    if let warden_core::resource::Spec::TrustedIssuer(s) = &mut changed.spec {
        s.allowed_algorithms.push(warden_core::issuer::Algorithm::ES256);
    }
    let plan = plan_apply(&current, vec![issuer("a")]).unwrap();
    assert!(plan.is_noop());
    assert_eq!(plan.results[0].1, Action::Unchanged);
    let plan = plan_apply(&current, vec![changed, issuer("b")]).unwrap();
    let actions: Vec<Action> = plan.results.iter().map(|r| r.1).collect();
    assert_eq!(actions, [Action::Configured, Action::Created]);
    let next = next_state(&current, plan, 5);
    assert_eq!(next.resources.len(), 2);
    assert!(next.resources.values().all(|e| e.resource_version == 5));
}

#[test]
fn stale_resource_versions_conflict() {
    let current = state(4, vec![issuer("a")]);
    let mut stale = issuer("a");
    stale.metadata.resource_version = Some(3);
    assert!(matches!(plan_apply(&current, vec![stale]), Err(WriteError::Conflict { expected: 3, stored: 4, .. })));
    let mut fresh = issuer("a");
    fresh.metadata.resource_version = Some(4);
    plan_apply(&current, vec![fresh]).unwrap();
    assert!(matches!(plan_delete(&current, issuer("a").key(), 2), Err(WriteError::Conflict { .. })));
}

#[test]
fn writes_that_break_references_are_refused_whole() {
    let current = state(1, vec![issuer("a"), server("s", "a")]);
    // Deleting an issuer a server still names.
    assert!(matches!(plan_delete(&current, issuer("a").key(), 0), Err(WriteError::Config(_))));
    // A batch whose second document names a missing issuer: nothing of it is planned.
    assert!(matches!(plan_apply(&current, vec![issuer("b"), server("t", "zzz")]), Err(WriteError::Config(_))));
    assert!(matches!(plan_apply(&current, vec![issuer("b"), issuer("b")]), Err(WriteError::Duplicate(_))));
    let missing = ResourceKey { kind: Kind::Policy, name: "p".into() };
    assert!(matches!(plan_delete(&current, missing, 0), Err(WriteError::NotFound(_))));
}

#[test]
fn deltas_carry_only_what_moved() {
    let base = state(1, vec![issuer("a"), issuer("b")]);
    let plan = plan_apply(&base, vec![server("s", "a")]).unwrap();
    let mid = next_state(&base, plan, 2);
    let plan = plan_delete(&mid, issuer("b").key(), 0).unwrap();
    let head = next_state(&mid, plan, 3);
    let delta = head.delta_from(&base);
    assert_eq!((delta.base_version, delta.version), (1, 3));
    assert_eq!(delta.upserts.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["s"]);
    assert_eq!(delta.removals.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b"]);
    assert_eq!(head.snapshot().resources.len(), 2);
}

#[test]
fn a_reconnecting_agent_gets_a_delta_computed_for_others_only_if_smaller_than_a_snapshot() {
    let base = state(1, vec![issuer("a"), issuer("b"), issuer("c"), issuer("d")]);
    let next = next_state(&base, plan_apply(&base, vec![server("s", "a")]).unwrap(), 2);
    assert!(next.cached_delta_from(1).is_none(), "nothing computed yet: no base state is kept to compute one");
    let computed = next.delta_from(&base);
    assert_eq!(next.cached_delta_from(1), Some(computed), "the delta connected agents got");
    assert!(next.cached_delta_from(0).is_none(), "from a version no one held");

    // Everything replaced or removed: the delta carries all a snapshot would, and the removals.
    let small = state(1, vec![issuer("a"), issuer("b")]);
    let changed = doc(serde_json::json!({
        "apiVersion": "warden.dev/v1", "kind": "TrustedIssuer", "metadata": {"name": "a"},
        "spec": {"issuer": "https://other.example.com", "keys": {"discovery": true}, "allowedAlgorithms": ["ES256"]}
    }));
    let replaced = next_state(&small, plan_apply(&small, vec![changed]).unwrap(), 2);
    let replaced = next_state(&replaced, plan_delete(&replaced, issuer("b").key(), 0).unwrap(), 3);
    let whole = delta_bigger_than_snapshot(&replaced, &small);
    assert!(whole.is_none(), "a delta at least a snapshot's size is not offered");
}

/// `state`'s cached delta from `base` once computed, where it is no smaller than a snapshot.
fn delta_bigger_than_snapshot(state: &FleetState, base: &FleetState) -> Option<pb::Delta> {
    let delta = state.delta_from(base);
    assert!(prost::Message::encoded_len(&delta) >= state.snapshot_bytes(), "the case this checks");
    state.cached_delta_from(base.version)
}

fn keys(kid: &str) -> KeyRecord {
    KeyRecord {
        version: 0,
        jwks: serde_json::json!({"keys": [{"kty": "EC", "kid": kid}]}),
        fetched_at_unix: 1,
        source_uri: "https://idp.example.com/jwks".into(),
        expires_unix: Default::default(),
    }
}

#[test]
fn fetched_keys_are_stored_once_and_dropped_with_their_origin() {
    let base = state(1, vec![issuer("a")]);
    let plan = plan_keys(&base, "a", 1, keys("k1"));
    assert_eq!(plan.key_puts.len(), 1);
    let with_keys = next_state(&base, plan, 2);
    assert_eq!(with_keys.keys["a"].version, 2);
    // The same keys again change nothing; keys fetched for an older issuer spec are dropped.
    assert!(plan_keys(&with_keys, "a", 1, keys("k1")).is_noop());
    assert!(plan_keys(&with_keys, "a", 0, keys("k2")).is_noop());
    let delta = next_state(&with_keys, plan_keys(&with_keys, "a", 1, keys("k2")), 3).delta_from(&with_keys);
    assert_eq!(delta.upserted_keys.len(), 1);
    assert!(delta.upserts.is_empty());

    // Deleting the issuer, or pointing it elsewhere, drops its fetched keys in the same write.
    let plan = plan_delete(&with_keys, issuer("a").key(), 0).unwrap();
    assert_eq!(plan.key_deletes, ["a"]);
    let mut moved = issuer("a");
    if let warden_core::resource::Spec::TrustedIssuer(s) = &mut moved.spec {
        s.keys = warden_core::issuer::KeySource {
            jwks_uri: Some("https://other.example.com/jwks".into()),
            ..Default::default()
        };
    }
    let plan = plan_apply(&with_keys, vec![moved]).unwrap();
    assert_eq!(plan.key_deletes, ["a"]);
    let gone = next_state(&with_keys, plan, 3);
    assert_eq!(gone.delta_from(&with_keys).removed_keys, ["a"]);
}

fn revocation(name: &str, issuer: &str, jti: &str) -> Document {
    doc(serde_json::json!({
        "apiVersion": "warden.dev/v1", "kind": "Revocation", "metadata": {"name": name},
        "spec": {"issuer": issuer, "jti": jti}
    }))
}

/// Publishes `next` over `held` as the control plane does.
fn publish(held: &FleetState, mut next: FleetState) -> FleetState {
    next.published(held);
    next
}

#[test]
fn revocations_are_kept_apart_and_travel_as_token_keys() {
    let base = state(1, vec![issuer("a"), revocation("r0", "a", "t-0")]);
    assert_eq!(base.resources.len(), 1, "the revocation is not a resource");
    assert!(base.revoked.jti_revoked("a", "t-0"));
    assert_eq!(base.snapshot().revocations.unwrap().token_keys.len(), 16);

    // A write of revocations alone compiles nothing and moves only the list.
    let plan = plan_apply(&base, vec![revocation("r1", "a", "t-1"), revocation("r2", "a", "t-2")]).unwrap();
    let next = publish(&base, next_state(&base, plan, 2));
    assert_eq!(next.resources_version, base.resources_version);
    assert!(next.revoked.jti_revoked("a", "t-1") && next.revoked.jti_revoked("a", "t-0"));
    let delta = next.delta_from(&base);
    assert!(delta.upserts.is_empty() && delta.removals.is_empty());
    assert_eq!(delta.revoked.unwrap().token_keys.len(), 32);
    // `get` still shows them as documents.
    let shown: Vec<String> = next.documents(Some(Kind::Revocation), None).into_iter().map(|r| r.name).collect();
    assert_eq!(shown, ["r0", "r1", "r2"]);
    assert_eq!(plan_apply(&next, vec![revocation("r1", "a", "t-1")]).unwrap().results[0].1, Action::Unchanged);

    // Deleting one: the token is no longer revoked.
    let plan = plan_delete(&next, revocation("r1", "a", "t-1").key(), 0).unwrap();
    let after = publish(&next, next_state(&next, plan, 3));
    assert!(!after.revoked.jti_revoked("a", "t-1"));
    assert_eq!(after.delta_from(&next).unrevoked.unwrap().token_keys.len(), 16);

    // References hold as before: no revocation of an unknown issuer, no issuer deleted while
    // revocations name it.
    assert!(matches!(
        plan_apply(&after, vec![revocation("r9", "zzz", "t")]),
        Err(WriteError::Config(ConfigError::DanglingReference { .. }))
    ));
    assert!(matches!(
        plan_delete(&after, issuer("a").key(), 0),
        Err(WriteError::Config(ConfigError::DanglingReference { .. }))
    ));
}

fn bridge(name: &str, key: serde_json::Value, expires: i64) -> Document {
    let mut spec = serde_json::json!({
        "server": "s", "header": "X-Api-Key", "principal": "ci", "owner": "team", "exitPlan": "tokens",
        "expires": warden_core::revocation::format_time(expires),
    });
    match key {
        serde_json::Value::String(k) if k.starts_with("sha256:") => spec["keyDigest"] = k.into(),
        key => spec["key"] = key,
    }
    doc(serde_json::json!({
        "apiVersion": "warden.dev/v1", "kind": "CredentialBridge", "metadata": {"name": name}, "spec": spec
    }))
}

#[test]
fn a_bridged_key_lives_at_most_ninety_days_however_often_it_is_applied_and_stays_revoked() {
    const DAY: i64 = 86_400;
    let (key, other) = ("4f9c2a7e1b8d3f60a5c9e2b71d4f8a3c6e0b9d2f", "9d2f7a1c5e8b3d6f9a2c4e7b0d1f4f9c2a7e1b8d");
    let t0 = 1_800_000_000;
    let base = state(1, vec![issuer("a"), server("s", "a")]);
    let plan = plan_operator_apply(&base, vec![bridge("ci", key.into(), t0 + 30 * DAY)], t0).unwrap();
    let stored = publish(&base, next_state(&base, plan, 2));
    let Spec::CredentialBridge(b) = &stored.resources[&bridge("ci", key.into(), 0).key()].document.spec else {
        panic!("a bridge")
    };
    assert_eq!(b.key_since_unix(), Some(t0));
    let digest = b.key_digest.clone();
    // 60 days on, the same key (given again, or as its digest) can be extended to day 90 only.
    let later = t0 + 60 * DAY;
    for same in [key.to_string(), digest.clone()] {
        assert!(plan_operator_apply(&stored, vec![bridge("ci", same.clone().into(), t0 + 90 * DAY)], later).is_ok());
        let refused = plan_operator_apply(&stored, vec![bridge("ci", same.into(), t0 + 91 * DAY)], later);
        assert!(refused.err().map(|e| e.to_string()).unwrap_or_default().contains("set a new key"));
    }
    // A new key starts its own 90 days.
    assert!(plan_operator_apply(&stored, vec![bridge("ci", other.into(), later + 90 * DAY)], later).is_ok());
    // Read back and applied again unchanged, even once expired: nothing to refuse.
    let read_back =
        Document::from_json_bytes(&stored.resources[&bridge("ci", key.into(), 0).key()].json, &Admission::default())
            .unwrap();
    let plan = plan_operator_apply(&stored, vec![read_back], t0 + 100 * DAY).unwrap();
    assert_eq!(plan.results[0].1, Action::Unchanged);
    // Revoked by its digest: refused for this bridge and any other.
    let revoke = doc(serde_json::json!({
        "apiVersion": "warden.dev/v1", "kind": "Revocation", "metadata": {"name": "bridge-key"},
        "spec": {"issuer": "ci", "keyDigest": digest}
    }));
    let revoked = publish(&stored, next_state(&stored, plan_apply(&stored, vec![revoke]).unwrap(), 3));
    for name in ["ci", "ci-again"] {
        let refused = plan_operator_apply(&revoked, vec![bridge(name, key.into(), later + DAY)], later);
        assert!(refused.err().map(|e| e.to_string()).unwrap_or_default().contains("was revoked"), "{name}");
    }
    // A bridge's revocation names its key, and only a bridge's does.
    let by_jti = revocation("r", "ci", "t");
    assert!(
        plan_apply(&stored, vec![by_jti])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("revoked by its digest")
    );
}
