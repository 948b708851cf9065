//! What a caller costs a gateway in memory: `n` workloads (default 10,000), each with a token
//! of its own, verified (and so remembered by the token cache), then each deciding two
//! `tools/call`s (its principal built and kept beside the verified token, two outcomes kept).
//! Prints the growth of resident memory per caller after each step.
//!
//! `cargo run --release -p warden-core --example caller_memory -- 10000`

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use warden_core::authorize::{Authorizer, RequestFacts, Target};
use warden_core::token::{Presenter, Revocations, Verifier};
use warden_core::{Admission, Config, Document};

const NOW: i64 = 1_800_000_000;

/// Resident memory of this process, in bytes (`VmRSS`, which Linux gives in KiB).
#[allow(clippy::disallowed_methods, reason = "a harness beside the core, reading its own memory")]
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()).expect("VmRSS in kB") * 1024
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(10_000, |n| n.parse().expect("a number of callers"));
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw().to_vec();
    let jwk = json!({"kty": "EC", "kid": "k1", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])});
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let policy = r#"permit(principal, action == Action::"tools/call", resource) when { context.scopes.contains("mcp") && resource.name like "tool-*" };"#;
    let docs = [
        json!({"apiVersion": "warden.dev/v1", "kind": "TrustedIssuer", "metadata": {"name": "corp-idp"},
            "spec": {"issuer": "https://idp.example.com", "keys": {"jwks": {"keys": [jwk]}}, "allowedAlgorithms": ["ES256"]}}),
        json!({"apiVersion": "warden.dev/v1", "kind": "McpServer", "metadata": {"name": "github"},
            "spec": {"resource": "https://mcp.example.com/github", "issuers": ["corp-idp"], "upstream": "http://127.0.0.1:1/mcp"}}),
        json!({"apiVersion": "warden.dev/v1", "kind": "Policy", "metadata": {"name": "github-tools"},
            "spec": {"servers": ["github"], "cedar": policy}}),
    ];
    let docs: Vec<Document> =
        docs.into_iter().map(|d| Document::from_json(d, &Admission::default()).unwrap()).collect();
    let config = Config::build(&docs).unwrap();
    let tokens: Vec<String> = (0..n)
        .map(|i| {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some("k1".into());
            let claims = json!({"iss": "https://idp.example.com", "sub": format!("workload-{i}"),
                "aud": "https://mcp.example.com/github", "iat": NOW - 60, "exp": NOW + 600,
                "jti": format!("t-{i}"), "scope": "mcp"});
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        })
        .collect();
    // Room for every caller, so that what is measured is what a caller costs, not the bound.
    let (verifier, _) = Verifier::with_cache_capacity(&config, n);
    let authorizer = Authorizer::new(&config);
    let revocations = Revocations::default();

    let start = resident();
    let workloads: Vec<_> =
        tokens.iter().map(|t| verifier.verify(t, "github", NOW, &revocations, Presenter::default()).unwrap()).collect();
    let verified = resident();
    let facts = RequestFacts { source_ip: "10.1.2.3".parse().unwrap(), now: NOW, granted_tools: &[], arguments: None };
    for (i, workload) in workloads.iter().enumerate() {
        for k in 0..2 {
            let tool = format!("tool-{}", (i * 7 + k * 13) % 50);
            assert!(
                authorizer.authorize("github", workload, "tools/call", Target::Tool(&tool), &facts).unwrap().allowed
            );
        }
    }
    let decided = resident();
    let per = |bytes: u64| bytes as f64 / n as f64;
    println!(
        "{n} callers: {:.0} bytes each once verified, {:.0} more once each decided two calls",
        per(verified - start),
        per(decided - verified)
    );
}
