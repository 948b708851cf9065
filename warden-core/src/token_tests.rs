use super::*;
use crate::resource::test_documents;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm as JwtAlgorithm, EncodingKey, Header as JwtHeader, encode};
use serde_json::json;
use std::collections::HashSet;

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

    /// Signs header and claims exactly as written: JSON that `json!` cannot express (a member
    /// named twice, an exact number spelling).
    fn sign_raw(&self, header: &str, claims: &str) -> String {
        let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &self.key, self.alg).unwrap();
        format!("{message}.{signature}")
    }

    /// This signer's header, with `extra` members appended.
    fn header(&self, extra: &str) -> String {
        let alg = serde_json::to_string(&self.alg).unwrap();
        let extra = if extra.is_empty() { String::new() } else { format!(",{extra}") };
        format!(r#"{{"alg":{alg},"kid":"{}"{extra}}}"#, self.kid)
    }
}

fn claims() -> serde_json::Value {
    json!({"iss": ISS, "sub": "ci-runner", "aud": RESOURCE, "iat": NOW - 60, "exp": NOW + 600,
           "jti": "t-1", "scope": "repo:read issues:write"})
}

/// A verifier trusting `signers` (their JWKs inline) for `algs`, and a `github` server with
/// `binding`.
fn verifier(signers: &[&Signer], algs: &str, binding: &str) -> Verifier {
    verifier_with_keys(signers.iter().map(|s| s.jwk.clone()).collect(), algs, binding)
}

fn verifier_with_keys(keys: Vec<serde_json::Value>, algs: &str, binding: &str) -> Verifier {
    let (verifier, skipped) = Verifier::new(&config_with_keys(keys, algs, binding));
    assert_eq!(skipped, 0);
    verifier
}

/// corp-idp with `keys` inline and `algs` allowed (15m lifetime, 30s skew, `jti` required),
/// other-idp with the same keys, and a `github` server with `binding` trusting corp-idp.
fn config_with_keys(keys: Vec<serde_json::Value>, algs: &str, binding: &str) -> Config {
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
    Config::build(&test_documents(&yaml)).unwrap()
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
    let all = Reason::ALL;
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
    let (small, _) = Verifier::with_cache_capacity(&config_with_keys(vec![es.jwk.clone()], "[ES256]", "none"), 64);
    for i in 0..64 + 10 {
        let mut c = claims();
        c["jti"] = json!(format!("t-{i}"));
        check(&small, &es.sign(&c)).unwrap();
    }
    assert_eq!(small.cache.entries.lock().unwrap().len(), 64);
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
    assert_eq!(
        verified.task,
        Some(Task { subject_issuer: "corp-idp".into(), tools: vec!["get_issue".into()], subject_token: None })
    );
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

    // Revoking the subject token (by its jti) revokes the task tokens minted from it, and only
    // those; a `subject_jti` that is not a hash is refused.
    let mut from_subject = task_claims_for(json!(["get_issue"]));
    from_subject["subject_jti"] = json!(jti_hash("corp-idp", "subject-1"));
    let minted = cp.sign(&from_subject);
    let mut subject_revoked = Revocations::default();
    subject_revoked.revoke_jti("corp-idp", "subject-1");
    assert_eq!(v.verify(&minted, "github", NOW, &subject_revoked, Presenter::default()).unwrap_err(), Reason::Revoked);
    assert!(v.verify(&token, "github", NOW, &subject_revoked, Presenter::default()).is_ok(), "another subject token's");
    from_subject["subject_jti"] = json!("subject-1");
    let bad = cp.sign(&from_subject);
    assert_eq!(
        v.verify(&bad, "github", NOW, &Revocations::default(), Presenter::default()).unwrap_err(),
        Reason::Malformed
    );
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
    // Verified (and remembered) for one audience, a token is still refused for another.
    let mut for_join = claims();
    for_join["aud"] = json!("warden-join");
    let for_join = corp.sign(&for_join);
    assert!(v.verify_for_exchange(&for_join, "warden-join", NOW, &none, Presenter::default()).is_ok());
    assert_eq!(
        v.verify_for_exchange(&for_join, CP_ISS, NOW, &none, Presenter::default()).unwrap_err(),
        Reason::WrongAudience
    );
    let for_cp = corp.sign(&for_cp);
    assert!(v.verify_for_exchange(&for_cp, CP_ISS, NOW, &none, Presenter::default()).is_ok());
    assert_eq!(
        v.verify_for_exchange(&for_cp, "warden-join", NOW, &none, Presenter::default()).unwrap_err(),
        Reason::WrongAudience
    );
    let mut for_cp = claims();
    for_cp["aud"] = json!(CP_ISS);
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

#[test]
fn a_critical_header_extension_is_refused_since_warden_understands_none() {
    let es = ec_signer("k1");
    let v = verifier(&[&es], "[ES256]", "none");
    let claims = claims().to_string();
    let with = |extra: &str| check(&v, &es.sign_raw(&es.header(extra), &claims)).map(|_| ());
    assert_eq!(with(""), Ok(()));
    // A member Warden does not understand is ignored unless it is critical (RFC 7515 §4), and
    // `b64: true` is the ordinary encoding (RFC 7797 §3).
    assert_eq!(with(r#""typ":"at+jwt","x-note":{"a":1}"#), Ok(()));
    assert_eq!(with(r#""b64":true"#), Ok(()));
    for refused in [
        // An extension the signer says must be understood: Warden implements none.
        r#""crit":["exp"],"exp":1800000600"#,
        r#""crit":["https://example.com/policy"],"https://example.com/policy":"strict""#,
        // RFC 7797's unencoded payload, critical or not: what was signed is not what is read.
        r#""crit":["b64"],"b64":false"#,
        r#""b64":false"#,
        r#""b64":"false""#,
        // Malformed `crit` (RFC 7515 §4.1.11: a non-empty array of names).
        r#""crit":[]"#,
        r#""crit":"exp""#,
        r#""crit":[7]"#,
        r#""crit":null"#,
    ] {
        assert_eq!(with(refused), Err(Reason::Malformed), "{refused}");
    }
}

#[test]
fn a_claim_or_header_member_named_twice_is_refused() {
    let es = ec_signer("k1");
    let v = verifier(&[&es], "[ES256]", "none");
    let registered = format!(r#""iss":"{ISS}","aud":"{RESOURCE}","iat":{},"exp":{},"jti":"t-1""#, NOW - 60, NOW + 600);
    let with_claims = |members: &str| {
        let token = es.sign_raw(&es.header(""), &format!("{{{registered},{members}}}"));
        check(&v, &token).map(|ok| ok.subject.clone())
    };
    assert_eq!(with_claims(r#""sub":"ci-runner""#), Ok("ci-runner".to_string()));
    // Parsers disagree on which of two members counts (first, last, error), so policy could
    // see one value and the upstream or an audit tool another.
    for repeated in [
        r#""sub":"admin","sub":"ci-runner""#,
        r#""sub":"ci-runner","\u0073ub":"admin""#,
        &format!(r#""sub":"ci-runner","exp":{}"#, NOW + 60),
        // At any depth: cnf decides which certificate the token is bound to.
        r#""sub":"ci-runner","cnf":{"x5t#S256":"a","x5t#S256":"b"}"#,
        r#""sub":"ci-runner","groups":[{"name":"dev","name":"admin"}]"#,
    ] {
        assert_eq!(with_claims(repeated), Err(Reason::Malformed), "{repeated}");
    }
    // The walk that looks for them is bounded by serde_json's nesting limit.
    let deep = format!(r#""sub":"ci-runner","x":{}{}"#, "[".repeat(5000), "]".repeat(5000));
    assert_eq!(with_claims(&deep), Err(Reason::Malformed));
    let claims = claims().to_string();
    for header in [
        r#"{"alg":"ES256","kid":"k1","typ":"JWT","typ":"at+jwt"}"#,
        r#"{"alg":"ES256","kid":"k1","kid":"k1"}"#,
        r#"{"alg":"ES256","kid":"k1","x-note":{"a":1,"a":2}}"#,
    ] {
        assert_eq!(check(&v, &es.sign_raw(header, &claims)).unwrap_err(), Reason::Malformed, "{header}");
    }
}

#[test]
fn keys_for_encryption_or_without_verify_never_verify_signatures() {
    let es = ec_signer("k1");
    let token = es.sign(&claims());
    // RFC 7517 §4.2 and §4.3: `use` and `key_ops` say what a key is for.
    for (members, expected) in [
        (json!({"use": "enc"}), Err(Reason::UnknownKey)),
        (json!({"use": "x-other"}), Err(Reason::UnknownKey)),
        (json!({"key_ops": ["encrypt", "wrapKey"]}), Err(Reason::UnknownKey)),
        (json!({"key_ops": []}), Err(Reason::UnknownKey)),
        (json!({"key_ops": "verify"}), Err(Reason::UnknownKey)),
        (json!({"use": "sig"}), Ok(())),
        (json!({"key_ops": ["verify"]}), Ok(())),
        (json!({"use": "sig", "key_ops": ["sign", "verify"]}), Ok(())),
    ] {
        let mut jwk = es.jwk.clone();
        jwk.as_object_mut().unwrap().extend(members.as_object().unwrap().clone());
        let v = verifier_with_keys(vec![jwk], "[ES256]", "none");
        assert_eq!(check(&v, &token).map(|_| ()), expected, "{members}");
    }
}

#[test]
fn one_kid_may_name_keys_of_different_types_each_for_its_own_algorithm() {
    // RFC 7517 §4.5's example of a kid shared on purpose: the token's algorithm tells the keys
    // apart, so the kid still selects one key.
    let (es, ed) = (ec_signer("k1"), ed_signer("k1"));
    let v = verifier(&[&es, &ed], "[ES256, EdDSA]", "none");
    check(&v, &es.sign(&claims())).unwrap();
    check(&v, &ed.sign(&claims())).unwrap();
    let v = verifier(&[&ed, &es], "[ES256, EdDSA]", "none");
    check(&v, &es.sign(&claims())).unwrap();
    check(&v, &ed.sign(&claims())).unwrap();
}

#[test]
fn a_kid_never_selects_between_two_keys() {
    let (first, second) = (ec_signer("k1"), ec_signer("k1"));
    let both = json!({"keys": [first.jwk, second.jwk]});
    // Refused where keys come in (inline documents, fetched sets: `jwks::check_public_jwks`).
    let error = crate::jwks::check_public_jwks(&both).unwrap_err();
    assert!(
        matches!(&error, crate::jwks::JwksError::AmbiguousKid { index: 1, kid, first: 0 } if kid == "k1"),
        "{error}"
    );
    // A configuration put together without that check still never picks one of them.
    let mut config = config_with_keys(vec![first.jwk.clone()], "[ES256]", "none");
    config.keys.insert("corp-idp".into(), Arc::new(both));
    let (v, skipped) = Verifier::new(&config);
    assert_eq!(skipped, 2);
    assert_eq!(check(&v, &first.sign(&claims())).unwrap_err(), Reason::UnknownKey);
    assert_eq!(check(&v, &second.sign(&claims())).unwrap_err(), Reason::UnknownKey);
}

#[test]
fn numeric_dates_may_be_fractional_and_each_is_rounded_the_way_that_refuses() {
    let es = ec_signer("k1");
    let v = verifier(&[&es], "[ES256]", "none"); // 30s skew, 15m lifetime
    let at = |members: &[(&str, serde_json::Value)]| {
        let mut c = claims();
        for (name, value) in members {
            c[*name] = value.clone();
        }
        check(&v, &es.sign(&c))
    };
    let f = |offset: f64| json!(NOW as f64 + offset);
    // exp: refused once now is past it (plus skew); its floor gives exactly that for whole
    // seconds, and is what `expires_at` reports (the most a caller may rely on).
    assert_eq!(at(&[("exp", f(-29.5))]).unwrap().expires_at, NOW - 30);
    assert_eq!(at(&[("exp", f(-30.5))]).unwrap_err(), Reason::Expired);
    // nbf and iat: refused while still ahead of now (plus skew): their ceiling.
    at(&[("nbf", f(29.5))]).unwrap();
    assert_eq!(at(&[("nbf", f(30.5))]).unwrap_err(), Reason::NotYetValid);
    assert_eq!(at(&[("iat", f(29.5))]).unwrap().issued_at, NOW + 30);
    assert_eq!(at(&[("iat", f(30.5))]).unwrap_err(), Reason::IssuedInFuture);
    // The lifetime is exp - iat as given, neither rounded up nor down.
    at(&[("iat", f(-60.25)), ("exp", f(-60.25 + 900.0))]).unwrap();
    assert_eq!(at(&[("iat", json!(NOW - 60)), ("exp", f(-60.0 + 900.5))]).unwrap_err(), Reason::LifetimeTooLong);
    // A cut-off revokes tokens issued at or before it, and no token issued after it.
    let issued = |iat: f64| {
        let mut c = claims();
        c["iat"] = f(iat);
        es.sign(&c)
    };
    let mut revoked = Revocations::default();
    revoked.revoke_subject_before("corp-idp", "ci-runner", NOW - 60);
    let presented = |token: &str| v.verify(token, "github", NOW, &revoked, Presenter::default()).map(|_| ());
    assert_eq!(presented(&issued(-60.5)), Err(Reason::Revoked));
    assert_eq!(presented(&issued(-59.5)), Ok(()));

    // Not a NumericDate: negative, past year 9999, not a number.
    for bad in [json!(-1), json!(-0.5), json!(253_402_300_800_i64), json!(1e300), json!(u64::MAX), json!(true)] {
        for claim in ["exp", "nbf", "iat"] {
            assert_eq!(at(&[(claim, bad.clone())]).unwrap_err(), Reason::MissingClaim, "{claim}: {bad}");
        }
    }
    // A number JSON cannot hold as a float does not parse at all.
    let huge = format!(r#"{{"iss":"{ISS}","sub":"x","aud":"{RESOURCE}","iat":{},"exp":1e400,"jti":"t"}}"#, NOW);
    assert_eq!(check(&v, &es.sign_raw(&es.header(""), &huge)).unwrap_err(), Reason::Malformed);
}

#[path = "token_props.rs"]
mod props;

#[test]
fn scopes_come_from_scope_or_scp_as_each_identity_provider_writes_them() {
    let of = |claims: serde_json::Value| scopes(claims.as_object().unwrap());
    assert_eq!(of(serde_json::json!({"scope": "a  b"})), ["a", "b"], "RFC 8693 / RFC 9068 `scope`");
    assert_eq!(of(serde_json::json!({"scp": ["a", "b", 3]})), ["a", "b"], "Okta: an array");
    assert_eq!(of(serde_json::json!({"scp": "a b"})), ["a", "b"], "Entra ID: a space-separated string");
    assert_eq!(of(serde_json::json!({"scope": "a", "scp": ["b"]})), ["a"], "`scope` first");
    assert!(of(serde_json::json!({"scp": {"a": 1}})).is_empty());
}
