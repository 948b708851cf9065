//! What `wardenctl apply --test` costs per stored decision: a day of records (a new second for
//! nearly every one, 200 callers, 20 tools, several addresses) replayed under policies that read
//! neither the time nor the address, against the same records under a policy that reads the
//! time (every record an uncached evaluation). Same run, so the ratio is what the time-free
//! cache key buys.
//!
//! `cargo bench -p warden-core --bench replay`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use warden_core::authorize::Authorizer;
use warden_core::caller::Caller;
use warden_core::explain::{Recorded, Replayed, replay};
use warden_core::token::Verified;
use warden_core::{Admission, Config, Document};

const NOW: i64 = 1_800_000_000;
const RECORDS: usize = 10_000;

fn authorizer(cedar: &str) -> Authorizer {
    let indented: String = cedar.lines().map(|l| format!("    {l}\n")).collect();
    let yaml = format!(
        r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: corp}}
spec:
  issuer: https://idp.example.com
  keys: {{jwksUri: https://idp.example.com/jwks}}
  allowedAlgorithms: [ES256]
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: github}}
spec:
  resource: https://mcp.example.com/github
  issuers: [corp]
  upstream: http://127.0.0.1:3001/mcp
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {{name: p}}
spec:
  servers: [github]
  cedar: |
{indented}"#
    );
    let docs: Vec<Document> = warden_core::resource::yaml_documents(&yaml)
        .unwrap()
        .into_iter()
        .map(|v| Document::from_json(v, &Admission::default()).unwrap())
        .collect();
    Authorizer::new(&Config::build(&docs).unwrap())
}

const TIMELESS: &str = r#"permit(principal, action == Action::"tools/call", resource)
when { context.scopes.contains("repo:read") && !(resource.name like "delete_*") };
forbid(principal, action, resource) when { principal has groups && principal.groups.contains("contractors") };"#;

const TIMED: &str = r#"permit(principal, action == Action::"tools/call", resource)
when { context.scopes.contains("repo:read") && !(resource.name like "delete_*") && context.time > datetime("2020-01-01T00:00:00Z") };
forbid(principal, action, resource) when { principal has groups && principal.groups.contains("contractors") };"#;

fn bench(c: &mut Criterion) {
    let workloads: Vec<Verified> = (0..200)
        .map(|i| {
            Caller {
                issuer: "corp".into(),
                subject: format!("workload-{i}"),
                scopes: vec!["repo:read".into()],
                groups: (i % 10 == 0).then(|| vec!["contractors".into()]),
                ..Default::default()
            }
            .workload()
        })
        .collect();
    let tools: Vec<String> =
        (0..20).map(|i| if i == 19 { "delete_repo".into() } else { format!("tool_{i}") }).collect();
    let addresses: Vec<std::net::IpAddr> = (0..8).map(|i| std::net::IpAddr::from([10, 0, 0, i])).collect();
    let records: Vec<Recorded<'_>> = (0..RECORDS)
        .map(|i| Recorded {
            server: "github",
            method: "tools/call",
            target_kind: "tool",
            target: &tools[(i * 7) % tools.len()],
            workload: &workloads[(i * 13) % workloads.len()],
            source_ip: addresses[i % addresses.len()],
            // A day: a new second for nearly every record.
            time: NOW + (i as i64) * 8,
            arguments: false,
        })
        .collect();
    let mut group = c.benchmark_group("replay 10,000 records");
    group.sample_size(10);
    for (name, cedar) in [("policies that read no time", TIMELESS), ("a policy that reads the time", TIMED)] {
        group.bench_function(name, |b| {
            b.iter_with_setup(
                || authorizer(cedar),
                |a| {
                    let mut allowed = 0;
                    for r in &records {
                        if let Replayed::Decided(o) = replay(&a, black_box(r)) {
                            allowed += usize::from(o.allowed);
                        }
                    }
                    assert!(allowed > 0 && allowed < RECORDS);
                    allowed
                },
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
