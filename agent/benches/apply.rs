//! What an agent spends applying a configuration: a full snapshot, and a delta that changes one
//! policy (the common case), next to the cost of merely decoding the same snapshot from the wire
//! (the floor any agent pays), measured in the same run.
//!
//! Then the same with 1,000,000 revocations: the snapshot's size and apply time, a delta of 20
//! revocations applied onto them, the per-request check, and the memory the list takes.
//!
//! `cargo bench -p agent --bench apply`

use std::hint::black_box;

use agent::applied::{self, Source};
use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use proto::v1 as pb;

fn resource(kind: &str, name: &str, version: u64, doc: serde_json::Value) -> pb::Resource {
    pb::Resource {
        kind: kind.into(),
        name: name.into(),
        resource_version: version,
        document_json: serde_json::to_vec(&doc).unwrap(),
    }
}

fn policy(name: &str, tool: &str, version: u64) -> pb::Resource {
    resource(
        "Policy",
        name,
        version,
        serde_json::json!({
            "apiVersion": "warden.dev/v1", "kind": "Policy", "metadata": {"name": name},
            "spec": {"servers": ["github"], "cedar": format!(
                "permit(principal, action == Action::\"tools/call\", resource) when {{ resource.name == \"{tool}\" }};\n\
                 forbid(principal, action == Action::\"tools/call\", resource) when {{ context.scopes.contains(\"read-only\") && resource.name == \"delete\" }};")}
        }),
    )
}

fn snapshot(policies: usize) -> pb::Snapshot {
    let mut resources = vec![
        resource(
            "TrustedIssuer",
            "corp-idp",
            1,
            serde_json::json!({
                "apiVersion": "warden.dev/v1", "kind": "TrustedIssuer", "metadata": {"name": "corp-idp"},
                "spec": {"issuer": "https://idp.example.com", "keys": {"jwksUri": "https://idp.example.com/jwks"}, "allowedAlgorithms": ["ES256"]}
            }),
        ),
        resource(
            "McpServer",
            "github",
            1,
            serde_json::json!({
                "apiVersion": "warden.dev/v1", "kind": "McpServer", "metadata": {"name": "github"},
                "spec": {"resource": "https://mcp.example.com/github", "issuers": ["corp-idp"], "upstream": "http://127.0.0.1:3001/mcp"}
            }),
        ),
    ];
    resources.extend((0..policies).map(|i| policy(&format!("p{i}"), &format!("tool-{i}"), 1)));
    pb::Snapshot { store_id: "s".into(), version: 1, resources, issuer_keys: vec![], revocations: None }
}

fn bench(c: &mut Criterion) {
    for policies in [1, 100, 1000] {
        let snap = snapshot(policies);
        let wire = snap.encode_to_vec();
        let base = applied::from_snapshot(snap.clone(), Source::ControlPlane).unwrap();
        let delta = pb::Delta {
            store_id: "s".into(),
            base_version: 1,
            version: 2,
            upserts: vec![policy("p0", "changed", 2)],
            ..Default::default()
        };
        c.bench_function(&format!("decode snapshot wire bytes ({policies} policies, baseline)"), |b| {
            b.iter(|| pb::Snapshot::decode(black_box(wire.as_slice())).unwrap())
        });
        c.bench_function(&format!("apply full snapshot ({policies} policies)"), |b| {
            b.iter(|| applied::from_snapshot(black_box(snap.clone()), Source::ControlPlane).unwrap())
        });
        c.bench_function(&format!("apply one-policy delta ({policies} policies)"), |b| {
            b.iter(|| applied::from_delta(Some(&base), black_box(delta.clone())).unwrap())
        });
    }
}

/// Resident memory of this process, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

const REVOKED: usize = 1_000_000;

fn revocations(c: &mut Criterion) {
    let key = |i: usize| warden_core::token::jti_key("corp-idp", &format!("token-{i}"));
    let mut keys: Vec<u128> = (0..REVOKED).map(key).collect();
    keys.sort_unstable();
    let before = rss_kib();
    let list = warden_core::token::Revocations::new(keys.clone(), []);
    println!(
        "{REVOKED} revoked tokens: the list takes {} KiB of resident memory ({} bytes per token)",
        rss_kib().saturating_sub(before),
        (rss_kib().saturating_sub(before) * 1024) / REVOKED as u64
    );
    let mut snap = snapshot(100);
    snap.revocations = Some(pb::Revocations::from_parts(&keys, []));
    let wire = snap.encode_to_vec();
    println!("snapshot with 100 policies and {REVOKED} revoked tokens: {} bytes on the wire", wire.len());
    let base = applied::from_snapshot(snap.clone(), Source::ControlPlane).unwrap();
    let mut twenty: Vec<u128> = (REVOKED..REVOKED + 20).map(key).collect();
    twenty.sort_unstable();
    let delta = pb::Delta {
        store_id: "s".into(),
        base_version: 1,
        version: 2,
        revoked: Some(pb::Revocations::from_parts(&twenty, [])),
        ..Default::default()
    };
    let mut group = c.benchmark_group("1M revocations");
    group.sample_size(10);
    group.bench_function("decode snapshot wire bytes (baseline)", |b| {
        b.iter(|| pb::Snapshot::decode(black_box(wire.as_slice())).unwrap())
    });
    group.bench_function("apply full snapshot", |b| {
        b.iter(|| applied::from_snapshot(black_box(snap.clone()), Source::ControlPlane).unwrap())
    });
    group.finish();
    c.bench_function("1M revocations: apply a delta of 20 revocations", |b| {
        b.iter(|| applied::from_delta(Some(&base), black_box(delta.clone())).unwrap())
    });
    // The per-request check, with an overlay of recent changes as a busy fleet has one; next to
    // a plain hash set of the same keys (the baseline).
    let changed = list.apply(&warden_core::revocation::Changes {
        revoked: (REVOKED..REVOKED + 3000).map(key).collect(),
        ..Default::default()
    });
    let set: std::collections::HashSet<u128> = keys.iter().copied().collect();
    let (hit, miss) = (key(REVOKED / 2), key(REVOKED * 3));
    c.bench_function("1M revocations: check a revoked token", |b| b.iter(|| changed.token_revoked(black_box(hit))));
    c.bench_function("1M revocations: check a token not revoked", |b| {
        b.iter(|| changed.token_revoked(black_box(miss)))
    });
    c.bench_function("1M revocations: hash set lookup (baseline)", |b| b.iter(|| set.contains(black_box(&miss))));
}

criterion_group!(benches, bench, revocations);
criterion_main!(benches);
