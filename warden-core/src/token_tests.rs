use super::*;
use crate::resource::test_documents;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm as JwtAlgorithm, EncodingKey, Header as JwtHeader, encode};
use serde_json::json;

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://idp.example.com";
const RESOURCE: &str = "https://mcp.example.com/github";

struct Signer {
    kid: &'static str,
    alg: JwtAlgorithm,
    key: EncodingKey,
    jwk: serde_json::Value,
    public_raw: Vec<u8>,
}

fn ec_signer(kid: &'static str) -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw().to_vec(); // 0x04 || x || y
    let jwk = json!({"kty": "EC", "kid": kid, "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])});
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    Signer { kid, alg: JwtAlgorithm::ES256, key, jwk, public_raw: raw }
}

fn ed_signer(kid: &'static str) -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let raw = pair.public_key_raw().to_vec();
    let jwk = json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(&raw)});
    let key = EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap();
    Signer { kid, alg: JwtAlgorithm::EdDSA, key, jwk, public_raw: raw }
}

impl Signer {
    fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = JwtHeader::new(self.alg);
        header.kid = Some(self.kid.to_string());
        encode(&header, claims, &self.key).unwrap()
    }
}

fn claims() -> serde_json::Value {
    json!({"iss": ISS, "sub": "ci-runner", "aud": RESOURCE, "iat": NOW - 60, "exp": NOW + 600,
           "jti": "t-1", "scope": "repo:read issues:write"})
}

/// A configuration trusting `signers` (their JWKs inline) with `extra` issuer YAML, and a
/// `github` server with `binding`.
fn verifier(signers: &[&Signer], algs: &str, binding: &str) -> Verifier {
    let keys: Vec<serde_json::Value> = signers.iter().map(|s| s.jwk.clone()).collect();
    let yaml = format!(
        r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: corp-idp}}
spec:
  issuer: {ISS}
  keys: {{jwks: {jwks}}}
  allowedAlgorithms: {algs}
  maxTokenLifetime: 15m
  clockSkew: 30s
  requiredClaims: [jti]
---
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: other-idp}}
spec:
  issuer: https://other.example.com
  keys: {{jwks: {jwks}}}
  allowedAlgorithms: [ES256]
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: github}}
spec:
  resource: {RESOURCE}
  issuers: [corp-idp]
  upstream: http://127.0.0.1:3000/mcp
  binding: {binding}
"#,
        jwks = json!({ "keys": keys })
    );
    let docs = test_documents(&yaml);
    let (verifier, skipped) = Verifier::new(&Config::build(&docs).unwrap());
    assert_eq!(skipped, 0);
    verifier
}

fn check(v: &Verifier, token: &str) -> Result<Arc<Verified>, Reason> {
    v.verify(token, "github", NOW, &Revocations::default(), Presenter::default())
}

#[test]
fn a_valid_token_yields_the_workload() {
    let es = ec_signer("k1");
    let v = verifier(&[&es], "[ES256]", "none");
    let ok = check(&v, &es.sign(&claims())).unwrap();
    assert_eq!((ok.issuer.as_str(), ok.subject.as_str(), ok.jti.as_deref()), ("corp-idp", "ci-runner", Some("t-1")));
    assert_eq!(ok.scopes, ["repo:read", "issues:write"]);
    assert_eq!(ok.expires_at, NOW + 600);

    let ed = ed_signer("k2");
    let v = verifier(&[&es, &ed], "[ES256, EdDSA]", "none");
    check(&v, &ed.sign(&claims())).unwrap();
    let mut listed = claims();
    listed["aud"] = json!(["https://elsewhere", RESOURCE]);
    check(&v, &es.sign(&listed)).unwrap();
}

#[test]
fn unsigned_and_hmac_tokens_are_refused() {
    let es = ec_signer("k1");
    let v = verifier(&[&es], "[ES256]", "none");
    let b64 = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!("{}.{}.", b64(json!({"alg": "none", "kid": "k1"})), b64(claims()));
    assert_eq!(check(&v, &unsigned).unwrap_err(), Reason::AlgNone);
    // The classic confusion: HMAC keyed with the issuer's public key bytes.
    let mut header = JwtHeader::new(JwtAlgorithm::HS256);
    header.kid = Some("k1".into());
    let forged = encode(&header, &claims(), &EncodingKey::from_secret(&es.public_raw)).unwrap();
    assert_eq!(check(&v, &forged).unwrap_err(), Reason::AlgNotAllowed);
    let weird = format!("{}.{}.x", b64(json!({"alg": "XS999", "kid": "k1"})), b64(claims()));
    assert_eq!(check(&v, &weird).unwrap_err(), Reason::AlgNotAllowed);
}

#[test]
fn the_algorithm_is_pinned_by_allow_list_and_key_type() {
    let es = ec_signer("k1");
    let ed = ed_signer("k2");
    let v = verifier(&[&es, &ed], "[EdDSA]", "none");
    assert_eq!(check(&v, &es.sign(&claims())).unwrap_err(), Reason::AlgNotAllowed, "ES256 not allowed");
    // An EdDSA header pointing at the EC key.
    let v = verifier(&[&es, &ed], "[ES256, EdDSA]", "none");
    let mut header = JwtHeader::new(JwtAlgorithm::EdDSA);
    header.kid = Some("k1".into());
    let mismatched = encode(&header, &claims(), &ed.key).unwrap();
    assert_eq!(check(&v, &mismatched).unwrap_err(), Reason::AlgNotAllowed);
}

#[test]
fn keys_are_selected_by_kid_and_signatures_checked() {
    let es = ec_signer("k1");
    let v = verifier(&[&es], "[ES256]", "none");
    let stranger = ec_signer("k9");
    assert_eq!(check(&v, &stranger.sign(&claims())).unwrap_err(), Reason::UnknownKey);
    let imposter = ec_signer("k1"); // same kid, other key
    assert_eq!(check(&v, &imposter.sign(&claims())).unwrap_err(), Reason::BadSignature);
    // Claims swapped under a valid signature.
    let token = es.sign(&claims());
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    let mut changed = claims();
    changed["sub"] = json!("admin");
    parts[1] = URL_SAFE_NO_PAD.encode(changed.to_string());
    assert_eq!(check(&v, &parts.join(".")).unwrap_err(), Reason::BadSignature);
}

#[test]
fn issuer_and_audience_are_checked() {
    let es = ec_signer("k1");
    let v = verifier(&[&es], "[ES256]", "none");
    let with = |k: &str, val: serde_json::Value| {
        let mut c = claims();
        c[k] = val;
        check(&v, &es.sign(&c)).unwrap_err()
    };
    assert_eq!(with("iss", json!("https://evil.example.com")), Reason::UntrustedIssuer);
    assert_eq!(with("iss", json!("https://other.example.com")), Reason::IssuerNotAllowed);
    assert_eq!(with("aud", json!("https://mcp.example.com/gitlab")), Reason::WrongAudience);
    assert_eq!(with("aud", json!(["https://mcp.example.com/gitlab"])), Reason::WrongAudience);
    assert_eq!(
        v.verify(&es.sign(&claims()), "no-such-server", NOW, &Revocations::default(), Presenter::default())
            .unwrap_err(),
        Reason::IssuerNotAllowed
    );
}

#[test]
fn time_claims_are_checked_with_bounded_skew() {
    let es = ec_signer("k1");
    let v = verifier(&[&es], "[ES256]", "none");
    let at = |iat: i64, exp: i64, nbf: Option<i64>| {
        let mut c = claims();
        c["iat"] = json!(iat);
        c["exp"] = json!(exp);
        if let Some(nbf) = nbf {
            c["nbf"] = json!(nbf);
        }
        check(&v, &es.sign(&c)).map(|_| ())
    };
    assert_eq!(at(NOW - 600, NOW - 20, None), Ok(()), "expired within the 30s skew");
    assert_eq!(at(NOW - 600, NOW - 31, None), Err(Reason::Expired));
    assert_eq!(at(NOW - 60, NOW + 600, Some(NOW + 60)), Err(Reason::NotYetValid));
    assert_eq!(at(NOW + 120, NOW + 600, None), Err(Reason::IssuedInFuture));
    assert_eq!(at(NOW - 60, NOW - 60 + 901, None), Err(Reason::LifetimeTooLong), "15m maximum");
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(check(&v, &es.sign(&c)).unwrap_err(), Reason::MissingClaim);
    c["exp"] = json!("tomorrow");
    assert_eq!(check(&v, &es.sign(&c)).unwrap_err(), Reason::MissingClaim);
}

#[test]
fn required_claims_and_revocations() {
    let es = ec_signer("k1");
    let v = verifier(&[&es], "[ES256]", "none");
    let mut c = claims();
    c.as_object_mut().unwrap().remove("jti");
    assert_eq!(check(&v, &es.sign(&c)).unwrap_err(), Reason::MissingClaim);

    let token = es.sign(&claims());
    let mut revoked = Revocations::default();
    revoked.revoke_jti("corp-idp", "t-1");
    assert_eq!(v.verify(&token, "github", NOW, &revoked, Presenter::default()).unwrap_err(), Reason::Revoked);
    let mut revoked = Revocations::default();
    revoked.revoke_subject_before("corp-idp", "ci-runner", NOW - 60);
    assert_eq!(v.verify(&token, "github", NOW, &revoked, Presenter::default()).unwrap_err(), Reason::Revoked);
    // Tokens issued after the cut-off are fine.
    let mut revoked = Revocations::default();
    revoked.revoke_subject_before("corp-idp", "ci-runner", NOW - 61);
    v.verify(&token, "github", NOW, &revoked, Presenter::default()).unwrap();
}

#[test]
fn certificate_bound_tokens_need_their_certificate() {
    let es = ec_signer("k1");
    let v = verifier(&[&es], "[ES256]", "mtls");
    let cert = b"the DER of the client certificate";
    let mut bound = claims();
    bound["cnf"] = json!({"x5t#S256": certificate_thumbprint(cert)});
    let token = es.sign(&bound);
    let present = |der: Option<&[u8]>| {
        let presenter = Presenter { client_certificate: der, ..Presenter::default() };
        v.verify(&token, "github", NOW, &Revocations::default(), presenter)
    };
    present(Some(cert)).unwrap();
    assert_eq!(present(Some(b"another certificate")).unwrap_err(), Reason::BindingMismatch);
    assert_eq!(present(None).unwrap_err(), Reason::BindingMismatch);
    assert_eq!(check(&v, &es.sign(&claims())).unwrap_err(), Reason::BindingRequired);
    // Bound tokens stay bound on servers that do not require binding.
    let lax = verifier(&[&es], "[ES256]", "none");
    assert_eq!(check(&lax, &token).unwrap_err(), Reason::BindingMismatch);
}

#[test]
fn dpop_bound_tokens_need_a_verified_proof_of_their_key() {
    let es = ec_signer("k1");
    let mut bound = claims();
    bound["cnf"] = json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"});
    let token = es.sign(&bound);
    // Servers cannot require DPoP yet (refused on admission), but a DPoP-bound token stays
    // bound wherever it is presented.
    let v = verifier(&[&es], "[ES256]", "none");
    let present = |jkt: Option<&str>| {
        let presenter = Presenter { dpop_key_thumbprint: jkt, ..Presenter::default() };
        v.verify(&token, "github", NOW, &Revocations::default(), presenter)
    };
    // Used as a bearer token, or with a proof by another key: refused.
    assert_eq!(present(None).unwrap_err(), Reason::BindingMismatch);
    // Bound in a way Warden cannot check: never a bearer token either.
    for cnf in [json!({"jwk": {"kty": "EC"}}), json!({"jkt": 7}), json!("x"), json!({})] {
        let mut other = claims();
        other["cnf"] = cnf.clone();
        assert_eq!(check(&v, &es.sign(&other)).unwrap_err(), Reason::BindingMismatch, "{cnf}");
    }
    assert_eq!(present(Some("another-key")).unwrap_err(), Reason::BindingMismatch);
    present(Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")).unwrap();
}

#[test]
fn malformed_input_is_refused_without_panicking() {
    let es = ec_signer("k1");
    let v = verifier(&[&es], "[ES256]", "none");
    let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
    for bad in ["", ".", "..", "a.b", "a.b.c.d", "!!!.###.$$$", "e30.e30.", "e30.bm90IGpzb24.x", huge.as_str()] {
        assert_eq!(check(&v, bad).unwrap_err(), Reason::Malformed, "{bad:.20}");
    }
    let token = es.sign(&claims());
    let truncated = &token[..token.len() - 5];
    assert_eq!(check(&v, truncated).unwrap_err(), Reason::BadSignature);
}

#[test]
fn reason_codes_are_stable() {
    let all = [
        Reason::Malformed,
        Reason::AlgNone,
        Reason::AlgNotAllowed,
        Reason::UntrustedIssuer,
        Reason::IssuerNotAllowed,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::WrongAudience,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::LifetimeTooLong,
        Reason::MissingClaim,
        Reason::Revoked,
        Reason::BindingRequired,
        Reason::BindingMismatch,
    ];
    let codes: HashSet<&str> = all.iter().map(|r| r.code()).collect();
    assert_eq!(codes.len(), all.len(), "codes are distinct");
    assert_eq!(Reason::UnknownKey.code(), "unknown_kid");
}

#[test]
fn a_cached_token_is_still_refused_once_expired_revoked_or_presented_without_its_certificate() {
    let es = ec_signer("k1");
    let v = verifier(&[&es], "[ES256]", "none");
    let token = es.sign(&claims());
    let first = check(&v, &token).unwrap();
    let again = check(&v, &token).unwrap();
    assert!(Arc::ptr_eq(&first, &again), "the second use is served from the cache");
    // exp is NOW + 600, skew 30s.
    let later = |now| v.verify(&token, "github", now, &Revocations::default(), Presenter::default());
    later(NOW + 630).unwrap();
    assert_eq!(later(NOW + 631).unwrap_err(), Reason::Expired);
    let mut revoked = Revocations::default();
    revoked.revoke_jti("corp-idp", "t-1");
    assert_eq!(v.verify(&token, "github", NOW, &revoked, Presenter::default()).unwrap_err(), Reason::Revoked);
    // Another server is another cache entry, checked from scratch (and refused: wrong audience).
    assert_eq!(
        v.verify(&token, "no-such-server", NOW, &Revocations::default(), Presenter::default()).unwrap_err(),
        Reason::IssuerNotAllowed
    );
    // The cache stays bounded.
    for i in 0..CACHE_CAPACITY + 10 {
        let mut c = claims();
        c["jti"] = json!(format!("t-{i}"));
        check(&v, &es.sign(&c)).unwrap();
    }
    assert!(v.cache.entries.lock().unwrap().len() <= CACHE_CAPACITY);
}

const CP_ISS: &str = "https://cp.example.com";

/// corp-idp (ES256, inline) and the control plane's own issuer (EdDSA, keys as the control
/// plane publishes them), both trusted by `github`.
fn task_verifier(corp: &Signer, cp: &Signer) -> Verifier {
    let yaml = format!(
        r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: corp-idp}}
spec:
  issuer: {ISS}
  keys: {{jwks: {corp}}}
  allowedAlgorithms: [ES256]
---
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: warden}}
spec:
  issuer: {CP_ISS}
  keys: {{controlPlane: true}}
  allowedAlgorithms: [EdDSA]
  maxTokenLifetime: 15m
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: github}}
spec:
  resource: {RESOURCE}
  issuers: [corp-idp, warden]
  upstream: http://127.0.0.1:3000/mcp
"#,
        corp = json!({ "keys": [corp.jwk] })
    );
    let docs = test_documents(&yaml);
    let config =
        Config::build(&docs).unwrap().with_fetched_keys([("warden".to_string(), json!({ "keys": [cp.jwk] }))]).unwrap();
    Verifier::new(&config).0
}

fn task_claims_for(tools: serde_json::Value) -> serde_json::Value {
    json!({"iss": CP_ISS, "sub": "ci-runner", "aud": RESOURCE, "iat": NOW - 60, "exp": NOW + 240,
           "jti": "task-1", "subject_iss": ISS, "tools": tools})
}

#[test]
fn a_task_token_speaks_for_the_workload_it_was_exchanged_for_and_carries_its_tools() {
    let (corp, cp) = (ec_signer("corp-1"), ed_signer("cp-1"));
    let v = task_verifier(&corp, &cp);
    let none = Revocations::default();
    let token = cp.sign(&task_claims_for(json!(["get_issue"])));
    let verified = v.verify(&token, "github", NOW, &none, Presenter::default()).unwrap();
    assert_eq!(verified.issuer, "warden");
    assert_eq!(verified.principal_issuer(), "corp-idp");
    assert_eq!(verified.task, Some(Task { subject_issuer: "corp-idp".into(), tools: vec!["get_issue".into()] }));
    // An ordinary token is no task.
    let plain = corp.sign(&claims());
    assert_eq!(v.verify(&plain, "github", NOW, &none, Presenter::default()).unwrap().task, None);

    let refused = |claims: serde_json::Value| v.verify(&cp.sign(&claims), "github", NOW, &none, Presenter::default());
    let mut no_tools = task_claims_for(json!([]));
    no_tools.as_object_mut().unwrap().remove("tools");
    assert_eq!(refused(no_tools).unwrap_err(), Reason::MissingClaim);
    assert_eq!(refused(task_claims_for(json!(["a", 7]))).unwrap_err(), Reason::MissingClaim);
    let mut unknown = task_claims_for(json!(["a"]));
    unknown["subject_iss"] = json!("https://unknown.example.com");
    assert_eq!(refused(unknown).unwrap_err(), Reason::UntrustedIssuer);
    let mut itself = task_claims_for(json!(["a"]));
    itself["subject_iss"] = json!(CP_ISS);
    assert_eq!(refused(itself).unwrap_err(), Reason::UntrustedIssuer);
    // Another trusted issuer cannot mint task tokens: its key is not the control plane's.
    assert_eq!(
        v.verify(&corp.sign(&task_claims_for(json!(["a"]))), "github", NOW, &none, Presenter::default()).unwrap_err(),
        Reason::AlgNotAllowed
    );
}

#[test]
fn revoking_a_workload_or_its_issuer_revokes_its_task_tokens() {
    let (corp, cp) = (ec_signer("corp-1"), ed_signer("cp-1"));
    let v = task_verifier(&corp, &cp);
    let token = cp.sign(&task_claims_for(json!(["get_issue"])));
    let mut by_subject = Revocations::default();
    by_subject.revoke_subject_before("corp-idp", "ci-runner", NOW);
    assert_eq!(v.verify(&token, "github", NOW, &by_subject, Presenter::default()).unwrap_err(), Reason::Revoked);
    let mut earlier = Revocations::default();
    earlier.revoke_subject_before("corp-idp", "ci-runner", NOW - 61);
    assert!(v.verify(&token, "github", NOW, &earlier, Presenter::default()).is_ok(), "issued after the cut");
    let mut by_issuer = Revocations::default();
    by_issuer.revoke_issuer_before("corp-idp", NOW);
    assert_eq!(v.verify(&token, "github", NOW, &by_issuer, Presenter::default()).unwrap_err(), Reason::Revoked);
    let plain = corp.sign(&claims());
    assert_eq!(v.verify(&plain, "github", NOW, &by_issuer, Presenter::default()).unwrap_err(), Reason::Revoked);
    let mut by_jti = Revocations::default();
    by_jti.revoke_jti("warden", "task-1");
    assert_eq!(v.verify(&token, "github", NOW, &by_jti, Presenter::default()).unwrap_err(), Reason::Revoked);
}

#[test]
fn the_token_service_accepts_workload_tokens_for_itself_and_never_its_own() {
    let (corp, cp) = (ec_signer("corp-1"), ed_signer("cp-1"));
    let v = task_verifier(&corp, &cp);
    let none = Revocations::default();
    let mut for_cp = claims();
    for_cp["aud"] = json!(CP_ISS);
    let subject = v.verify_for_exchange(&corp.sign(&for_cp), CP_ISS, NOW, &none, Presenter::default()).unwrap();
    assert_eq!((subject.issuer.as_str(), subject.subject.as_str()), ("corp-idp", "ci-runner"));
    // A token for an MCP server is not a token for the token service.
    assert_eq!(
        v.verify_for_exchange(&corp.sign(&claims()), CP_ISS, NOW, &none, Presenter::default()).unwrap_err(),
        Reason::WrongAudience
    );
    let mut task = task_claims_for(json!(["a"]));
    task["aud"] = json!(CP_ISS);
    assert_eq!(
        v.verify_for_exchange(&cp.sign(&task), CP_ISS, NOW, &none, Presenter::default()).unwrap_err(),
        Reason::IssuerNotAllowed
    );
    // The exchange checks revocation like any server.
    let mut revoked = Revocations::default();
    revoked.revoke_subject_before("corp-idp", "ci-runner", NOW);
    assert_eq!(
        v.verify_for_exchange(&corp.sign(&for_cp), CP_ISS, NOW, &revoked, Presenter::default()).unwrap_err(),
        Reason::Revoked
    );
}

#[test]
fn the_jti_hash_is_stable_and_reveals_nothing_of_the_jti() {
    let h = jti_hash("corp", "token-123");
    assert_eq!(h.len(), 32);
    assert_eq!(h, jti_hash("corp", "token-123"));
    assert_ne!(h, jti_hash("other", "token-123"));
    assert!(!h.contains("123"));
}
