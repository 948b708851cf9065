//! Token verification cost next to the bare signature check it contains, in the same run:
//! `Verifier::verify` (header and claims parsing, issuer/key lookup, signature, every claim rule)
//! against ring's signature verification of the same token with the same key. Goal: at most
//! 1.2× the bare verify. jsonwebtoken's own verification (pure-Rust backend) of the same token is
//! measured too, as the reason the verifier calls ring directly. Decisions (verification plus
//! policy) are measured cached and uncached in several cases, and Cedar's evaluation alone as
//! the floor of any decision that evaluates policy.
//!
//! `cargo bench -p warden-core --bench token`

use std::hint::black_box;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::json;
use warden_core::authorize::{Authorizer, OUTCOME_ENTRIES, RequestFacts, Target};
use warden_core::token::{Presenter, Revocations, Verifier};
use warden_core::{Admission, Config, Document};

const NOW: i64 = 1_800_000_000;

/// Tokens the "uncached" verifier remembers: one more distinct token than that, used in turn,
/// misses every time.
const UNCACHED: usize = 64;

/// The bench's policies and one that reads the time and a call's arguments.
fn reading_policy() -> String {
    format!(
        "{POLICY_TEXT}\nforbid(principal, action, resource) when {{ context.time < datetime(\"2020-01-01T00:00:00Z\") || \
         (context.arguments.hasTag(\"query\") && context.arguments.getTag(\"query\") == \"forbidden\") }};"
    )
}

/// The policies every decision here is put to.
const POLICY_TEXT: &str = r#"permit(principal, action == Action::"tools/call", resource)
when { ["search", "get_file"].contains(resource.name) && context.scopes.contains("repo:read") };
forbid(principal, action, resource) when { principal has tenant && principal.tenant == "blocked" };"#;

fn setup(alg: Algorithm) -> (String, serde_json::Value, EncodingKey) {
    let (jwk, key) = match alg {
        Algorithm::ES256 => {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let raw = pair.public_key_raw().to_vec();
            let jwk = json!({"kty": "EC", "kid": "k1", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])});
            (jwk, EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap())
        }
        Algorithm::EdDSA => {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
            let jwk = json!({"kty": "OKP", "kid": "k1", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw())});
            (jwk, EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap())
        }
        // ring cannot generate RSA keys: a fixed 2048-bit bench key (made with Python's
        // cryptography), used for RS256 and PS256.
        _ => {
            let jwk: serde_json::Value = serde_json::from_str(include_str!("rsa-2048.jwk.json")).unwrap();
            (jwk, EncodingKey::from_rsa_pem(include_bytes!("rsa-2048.pem")).unwrap())
        }
    };
    (sign_with_jti(alg, &key, 1, "ci-runner"), jwk, key)
}

fn sign_with_jti(alg: Algorithm, key: &EncodingKey, jti: usize, subject: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = Some("k1".into());
    let claims = json!({"iss": "https://idp.example.com", "sub": subject, "aud": "https://mcp.example.com/github",
        "iat": NOW - 60, "exp": NOW + 600, "jti": format!("t-{jti}"), "scope": "repo:read"});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn config(jwk: &serde_json::Value, alg: &str) -> Config {
    config_with(jwk, alg, POLICY_TEXT)
}

fn config_with(jwk: &serde_json::Value, alg: &str, policy: &str) -> Config {
    let docs = [
        json!({"apiVersion": "warden.dev/v1", "kind": "TrustedIssuer", "metadata": {"name": "corp-idp"},
            "spec": {"issuer": "https://idp.example.com", "keys": {"jwks": {"keys": [jwk]}}, "allowedAlgorithms": [alg]}}),
        json!({"apiVersion": "warden.dev/v1", "kind": "McpServer", "metadata": {"name": "github"},
            "spec": {"resource": "https://mcp.example.com/github", "issuers": ["corp-idp"], "upstream": "http://127.0.0.1:1/mcp"}}),
        json!({"apiVersion": "warden.dev/v1", "kind": "Policy", "metadata": {"name": "github-tools"},
            "spec": {"servers": ["github"], "cedar": policy}}),
    ];
    let docs: Vec<Document> =
        docs.into_iter().map(|d| Document::from_json(d, &Admission::default()).unwrap()).collect();
    Config::build(&docs).unwrap()
}

fn bench(c: &mut Criterion) {
    let algorithms = [
        (Algorithm::ES256, "ES256"),
        (Algorithm::EdDSA, "EdDSA"),
        (Algorithm::RS256, "RS256"),
        (Algorithm::PS256, "PS256"),
    ];
    for (alg, name) in algorithms {
        let (token, jwk, encoding) = setup(alg);
        let (verifier, _) = Verifier::new(&config(&jwk, name));
        let uncached = Verifier::with_cache_capacity(&config(&jwk, name), UNCACHED);
        let key = DecodingKey::from_jwk(&serde_json::from_value::<Jwk>(jwk.clone()).unwrap()).unwrap();
        let (message, signature) = token.rsplit_once('.').unwrap();
        let raw_signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        let b64 = |f: &str| URL_SAFE_NO_PAD.decode(jwk[f].as_str().unwrap()).unwrap();
        // Key bytes decoded once, outside the measured closure.
        let field = |f: &str| jwk.get(f).and_then(|v| v.as_str()).map(|_| b64(f)).unwrap_or_default();
        let (n, e, x, y) = (field("n"), field("e"), field("x"), field("y"));
        let point = [vec![4u8], x.clone(), y].concat();
        let bare = |message: &[u8]| match alg {
            Algorithm::ES256 => {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
                    .verify(message, &raw_signature)
            }
            Algorithm::EdDSA => {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &x).verify(message, &raw_signature)
            }
            Algorithm::RS256 => ring::signature::RsaPublicKeyComponents { n: &n, e: &e }.verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                message,
                &raw_signature,
            ),
            _ => ring::signature::RsaPublicKeyComponents { n: &n, e: &e }.verify(
                &ring::signature::RSA_PSS_2048_8192_SHA256,
                message,
                &raw_signature,
            ),
        };
        let revocations = Revocations::default();
        c.bench_function(&format!("{name}: bare signature verify, ring (baseline)"), |b| {
            b.iter(|| bare(black_box(message.as_bytes())).unwrap())
        });
        c.bench_function(&format!("{name}: jsonwebtoken verify, rust_crypto (reference)"), |b| {
            b.iter(|| {
                assert!(jsonwebtoken::crypto::verify(black_box(signature), message.as_bytes(), &key, alg).unwrap())
            })
        });
        // One more distinct token than the cache holds, used in turn: with oldest-first eviction
        // every use misses, so each iteration pays the whole verification.
        let fresh: Vec<String> = (0..=UNCACHED).map(|i| sign_with_jti(alg, &encoding, i, "ci-runner")).collect();
        // Each token for another workload (with a new second each time, below): as "policy
        // evaluated", with another subject each time.
        let strangers: Vec<String> = (0..=warden_core::authorize::CACHE_ENTRIES)
            .map(|i| sign_with_jti(alg, &encoding, i, &format!("workload-{i}")))
            .collect();
        let mut next = 0usize;
        c.bench_function(&format!("{name}: full token verification, uncached"), |b| {
            b.iter(|| {
                next = (next + 1) % fresh.len();
                let (verifier, _) = &uncached;
                verifier.verify(black_box(&fresh[next]), "github", NOW, &revocations, Presenter::default()).unwrap()
            })
        });
        c.bench_function(&format!("{name}: full token verification, cached"), |b| {
            b.iter(|| verifier.verify(black_box(&token), "github", NOW, &revocations, Presenter::default()).unwrap())
        });
        // The decision: token verification plus Cedar evaluation of a tools/call, under policies
        // that read the time and the arguments (else both would be fixed, and a new second or
        // new arguments would not make a new evaluation).
        let authorizer = Authorizer::new(&config_with(&jwk, name, &reading_policy()));
        let facts =
            RequestFacts { source_ip: "10.1.2.3".parse().unwrap(), now: NOW, granted_tools: &[], arguments: None };
        let decide_at = |verifier: &Verifier, token: &str, facts: &RequestFacts<'_>| {
            let workload = verifier.verify(token, "github", NOW, &revocations, Presenter::default()).unwrap();
            let outcome =
                authorizer.authorize("github", &workload, "tools/call", Target::Tool("search"), facts).unwrap();
            assert!(outcome.allowed);
        };
        let decide = |verifier: &Verifier, token: &str| decide_at(verifier, token, &facts);
        c.bench_function(&format!("{name}: decision (verify + policy), uncached"), |b| {
            b.iter(|| {
                next = (next + 1) % fresh.len();
                decide(&uncached.0, black_box(&fresh[next]))
            })
        });
        // A new token and a new second each time: neither the outcome nor the context is
        // remembered, so both are built and Cedar evaluates; the principal is built again (it is
        // kept beside each verified token) and the target's entities are reused.
        let mut second = 0i64;
        // One more second than the authorizer remembers outcomes for, in turn: every one misses.
        let seconds = OUTCOME_ENTRIES as i64 + 1;
        c.bench_function(&format!("{name}: decision (verify + policy), uncached, policy evaluated"), |b| {
            b.iter(|| {
                next = (next + 1) % fresh.len();
                second = (second + 1) % seconds;
                let facts = RequestFacts { now: NOW - second, ..facts.clone() };
                decide_at(&uncached.0, black_box(&fresh[next]), &facts)
            })
        });
        // A new token and new arguments each time (the same second): the outcome is not
        // remembered, the entities are built with the call's arguments, and Cedar evaluates.
        let arguments: Vec<Box<serde_json::value::RawValue>> = (0..=OUTCOME_ENTRIES)
            .map(|i| {
                serde_json::value::RawValue::from_string(format!(r#"{{"query":"issue {i}","limit":10}}"#)).unwrap()
            })
            .collect();
        let mut call = 0usize;
        c.bench_function(&format!("{name}: decision (verify + policy), uncached, new arguments"), |b| {
            b.iter(|| {
                next = (next + 1) % fresh.len();
                call = (call + 1) % arguments.len();
                let facts = RequestFacts { arguments: Some(&arguments[call]), ..facts.clone() };
                decide_at(&uncached.0, black_box(&fresh[next]), &facts)
            })
        });
        c.bench_function(&format!("{name}: decision (verify + policy), uncached, a new workload each time"), |b| {
            b.iter(|| {
                next = (next + 1) % strangers.len();
                second = (second + 1) % seconds;
                let facts = RequestFacts { now: NOW - second, ..facts.clone() };
                decide_at(&uncached.0, black_box(&strangers[next]), &facts)
            })
        });
        c.bench_function(&format!("{name}: decision (verify + policy), cached"), |b| {
            b.iter(|| decide(&verifier, black_box(&token)))
        });
    }
}

/// Workloads of the realistic case: fewer than the token cache holds, so each token is verified
/// once and remembered, as a busy gateway's callers are.
const WORKLOADS: usize = 5000;

/// Tools the realistic case calls, each workload in turn calling the next: more (workload, tool)
/// pairs than the authorizer remembers outcomes for, so taken in turn, each is evaluated. Two
/// are allowed, the rest denied.
const TOOLS: [&str; 8] = ["search", "get_file", "delete", "merge", "push", "admin", "comment", "close"];

const _: () = assert!(
    WORKLOADS * TOOLS.len() > OUTCOME_ENTRIES && WORKLOADS <= warden_core::token::CACHE_CAPACITY,
    "every token remembered, every outcome evaluated"
);

/// The decision as realistic traffic makes it (issue 20): many workloads, each token
/// remembered, and every request with a new workload, a new second and new arguments, so no
/// outcome is remembered and Cedar evaluates every time. Measured beside the remembered token
/// alone: the difference is what deciding adds to the token check (goal: at most 2× Cedar's own
/// evaluation). Once with policies that read neither the time nor the arguments (they are
/// fixed: contexts are reused, no `Arguments` entity is built), once with one that reads both.
fn realistic(c: &mut Criterion) {
    let (_, jwk, encoding) = setup(Algorithm::ES256);
    let tokens: Vec<String> =
        (0..WORKLOADS).map(|i| sign_with_jti(Algorithm::ES256, &encoding, i, &format!("workload-{i}"))).collect();
    let arguments: Vec<Box<serde_json::value::RawValue>> = (0..=OUTCOME_ENTRIES)
        .map(|i| serde_json::value::RawValue::from_string(format!(r#"{{"query":"issue {i}","limit":{i}}}"#)).unwrap())
        .collect();
    let revocations = Revocations::default();
    let reading = reading_policy();
    for (label, policy) in [("no policy reads time or arguments", POLICY_TEXT), ("a policy reads both", &reading)] {
        let config = config_with(&jwk, "ES256", policy);
        let (verifier, _) = Verifier::new(&config);
        let authorizer = Authorizer::new(&config);
        for token in &tokens {
            verifier.verify(token, "github", NOW, &revocations, Presenter::default()).unwrap();
        }
        let mut next = 0usize;
        c.bench_function(&format!("realistic, {label}: token remembered ({WORKLOADS} workloads in turn)"), |b| {
            b.iter(|| {
                next = (next + 1) % tokens.len();
                verifier.verify(black_box(&tokens[next]), "github", NOW, &revocations, Presenter::default()).unwrap()
            })
        });
        let (mut call, mut round) = (0usize, 0usize);
        c.bench_function(
            &format!("realistic, {label}: decision, token remembered, policy evaluated (new tool, second, arguments)"),
            |b| {
                b.iter(|| {
                    // Every workload with one tool, then every workload with the next: the
                    // 40,000 pairs in turn.
                    round = (round + 1) % (tokens.len() * TOOLS.len());
                    next = round % tokens.len();
                    let tool = TOOLS[round / tokens.len()];
                    call = (call + 1) % arguments.len();
                    let workload = verifier
                        .verify(black_box(&tokens[next]), "github", NOW, &revocations, Presenter::default())
                        .unwrap();
                    let facts = RequestFacts {
                        source_ip: "10.1.2.3".parse().unwrap(),
                        now: NOW + call as i64,
                        granted_tools: &[],
                        arguments: Some(&arguments[call]),
                    };
                    let outcome =
                        authorizer.authorize("github", &workload, "tools/call", Target::Tool(tool), &facts).unwrap();
                    assert_eq!(outcome.allowed, TOOLS[..2].contains(&tool));
                })
            },
        );
    }
}

/// Cedar's own evaluation of the bench's `tools/call`, with the request, entities and context
/// built beforehand (from their JSON forms, checked against Warden's schema): the floor of any
/// decision that has to evaluate policy, whatever is cached around it.
fn cedar_alone(c: &mut Criterion) {
    use cedar_policy::{Context, Decision, Entities, EntityUid, PolicySet, Request};
    let schema = warden_core::policy::schema();
    let policies: PolicySet = POLICY_TEXT.parse().unwrap();
    let entities = Entities::from_json_value(
        json!([
            {"uid": {"type": "Workload", "id": "corp-idp/ci-runner"}, "parents": [{"type": "Issuer", "id": "corp-idp"}],
             "attrs": {"issuer": "corp-idp", "subject": "ci-runner", "scopes": ["repo:read"]}},
            {"uid": {"type": "Issuer", "id": "corp-idp"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Server", "id": "github"}, "attrs": {"resource": "https://mcp.example.com/github"}, "parents": []},
            {"uid": {"type": "Tool", "id": "github/search"}, "attrs": {"name": "search"},
             "parents": [{"type": "Server", "id": "github"}]},
            {"uid": {"type": "Arguments", "id": ""}, "attrs": {}, "parents": [], "tags": {"query": "issue 1"}},
        ]),
        Some(schema),
    )
    .unwrap();
    let uid = |json: serde_json::Value| EntityUid::from_json(json).unwrap();
    let action = uid(json!({"type": "Action", "id": "tools/call"}));
    let context = Context::from_json_value(
        json!({
            "scopes": ["repo:read"], "granted_tools": [],
            "source_ip": {"__extn": {"fn": "ip", "arg": "10.1.2.3"}},
            "time": {"__extn": {"fn": "datetime", "arg": "2027-01-15T08:00:00Z"}},
            "arguments": {"__entity": {"type": "Arguments", "id": ""}},
        }),
        Some((schema, &action)),
    )
    .unwrap();
    let principal = uid(json!({"type": "Workload", "id": "corp-idp/ci-runner"}));
    let resource = uid(json!({"type": "Tool", "id": "github/search"}));
    let request = Request::new(principal, action, resource, context, Some(schema)).unwrap();
    let cedar = cedar_policy::Authorizer::new();
    c.bench_function("Cedar evaluation alone (request, entities, context built beforehand)", |b| {
        b.iter(|| {
            assert_eq!(cedar.is_authorized(black_box(&request), &policies, &entities).decision(), Decision::Allow)
        })
    });
}

criterion_group!(benches, bench, realistic, cedar_alone);
criterion_main!(benches);
