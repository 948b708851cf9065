//! What an agent spends applying a configuration: a full snapshot, and a delta that changes one
//! policy (the common case), next to the cost of merely decoding the same snapshot from the wire
//! (the floor any agent pays), measured in the same run.
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

criterion_group!(benches, bench);
criterion_main!(benches);
