//! Property tests of token verification (`Verifier::verify`, `verify_for_exchange`,
//! `revocable`) on what a caller may present: any string, a validly signed token edited byte by
//! byte or part by part, and tokens the trusted key signed over generated headers and claims
//! (members named twice, huge numbers, deep nesting, every type where another is expected).
//! Beside the token tests to sign with their fixtures; the generators are `crate::props`'.

use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

use super::*;
use crate::props::{Edit, Json, apply, cases, edits, json, name, number, object, spell, string};

struct Fixture {
    es: Signer,
    verifier: Verifier,
    /// `claims()` signed by `es`: the one valid token.
    token: String,
}

/// Keys are generated once: every case verifies against the same configuration (whose cache
/// then holds what earlier cases verified, as a gateway's does).
static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let es = ec_signer("k1");
    let verifier = verifier(&[&es], "[ES256]", "none");
    let token = es.sign(&claims());
    Fixture { es, verifier, token }
});

/// The three ways a presented token is used; `Err` or `None` is a refusal.
fn uses(token: &str) -> [Option<String>; 3] {
    let f = &*FIXTURE;
    let none = Revocations::default();
    [
        f.verifier.verify(token, "github", NOW, &none, Presenter::default()).ok().map(|v| v.subject.clone()),
        f.verifier
            .verify_for_exchange(token, RESOURCE, NOW, &none, Presenter::default())
            .ok()
            .map(|v| v.subject.clone()),
        f.verifier.revocable(token, NOW).map(|r| r.subject),
    ]
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Edits of the token's three parts that keep its signature.
#[derive(Clone, Debug)]
enum PartEdit {
    Swap(Index, Index),
    Drop(Index),
    Repeat(Index),
    /// Another header or claims, the signature left as it was.
    Replace(bool, Json),
    /// The same header or claims encoded otherwise: padded, standard alphabet, with whitespace.
    Reencode(bool, u8),
    /// The signature of another token of the same key.
    SignatureOf(String),
    Bytes(Index, Vec<Edit>),
}

fn part_edit() -> impl Strategy<Value = PartEdit> {
    prop_oneof![
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| PartEdit::Swap(a, b)),
        any::<Index>().prop_map(PartEdit::Drop),
        any::<Index>().prop_map(PartEdit::Repeat),
        (any::<bool>(), prop_oneof![claims_json(), header_json(), json()]).prop_map(|(h, j)| PartEdit::Replace(h, j)),
        (any::<bool>(), 0..4u8).prop_map(|(h, how)| PartEdit::Reencode(h, how)),
        "[a-z0-9-]{1,8}".prop_map(PartEdit::SignatureOf),
        (any::<Index>(), edits()).prop_map(|(at, e)| PartEdit::Bytes(at, e)),
    ]
}

fn edit_parts(token: &str, edits: &[PartEdit]) -> String {
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    let pick = |i: &Index, parts: &Vec<String>| i.index(parts.len().max(1));
    for edit in edits {
        match edit {
            PartEdit::Swap(a, b) if !parts.is_empty() => {
                let (a, b) = (pick(a, &parts), pick(b, &parts));
                parts.swap(a, b);
            }
            PartEdit::Drop(i) if !parts.is_empty() => drop(parts.remove(pick(i, &parts))),
            PartEdit::Repeat(i) if !parts.is_empty() => {
                let i = pick(i, &parts);
                parts.insert(i, parts[i].clone());
            }
            PartEdit::Replace(header, json) if parts.len() > 1 => parts[usize::from(!header)] = b64(&json.text),
            PartEdit::Reencode(header, how) if parts.len() > 1 => {
                let i = usize::from(!header);
                if let Ok(decoded) = URL_SAFE_NO_PAD.decode(&parts[i]) {
                    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
                    parts[i] = match how {
                        0 => URL_SAFE.encode(&decoded),
                        1 => STANDARD.encode(&decoded),
                        2 => b64([b" ", &decoded[..], b"\n"].concat()),
                        _ => format!("{}=", parts[i]),
                    };
                }
            }
            PartEdit::SignatureOf(jti) if parts.len() > 2 => {
                let mut other = claims();
                other["jti"] = Value::from(jti.as_str());
                let signed = FIXTURE.es.sign(&other);
                parts[2] = signed.rsplit('.').next().expect("three parts").to_string();
            }
            PartEdit::Bytes(i, edits) if !parts.is_empty() => {
                let i = pick(i, &parts);
                parts[i] = String::from_utf8_lossy(&apply(parts[i].as_bytes(), edits)).into_owned();
            }
            _ => {}
        }
    }
    parts.join(".")
}

/// A NumericDate around `NOW`: whole or fractional, just inside or outside every bound.
fn time_near() -> impl Strategy<Value = Json> {
    prop_oneof![
        (-2_000i64..2_000).prop_map(|d| Json::plain((NOW + d).to_string())),
        (-2_000.0f64..2_000.0).prop_map(|d| Json::plain(format!("{}", NOW as f64 + d))),
        number(),
        json(),
    ]
}

/// A claim value: mostly of the type the claim wants, near the values that pass.
fn claim_value(claim: &str) -> BoxedStrategy<Json> {
    let text = |values: Vec<&'static str>| {
        prop_oneof![
            3 => prop::sample::select(values).prop_map(|v| Json::plain(spell(v, false))),
            1 => string(),
            1 => json(),
        ]
        .boxed()
    };
    match claim {
        "exp" | "iat" | "nbf" => time_near().boxed(),
        "iss" => text(vec![ISS, "https://other.example.com", "https://idp.example.com/", "HTTPS://IDP.EXAMPLE.COM"]),
        "aud" => prop_oneof![
            text(vec![RESOURCE, "https://mcp.example.com/gitlab", ""]),
            Just(Json::plain(format!(r#"["https://elsewhere",{}]"#, spell(RESOURCE, false)))),
        ]
        .boxed(),
        "sub" => text(vec!["ci-runner", "admin", "", "ci-runner\u{0}"]),
        "jti" => text(vec!["t-1", "t-2", ""]),
        "cnf" => prop_oneof![Just(Json::plain(r#"{"jkt":"x"}"#)), json()].boxed(),
        _ => json(),
    }
}

/// Claims: the valid ones with members replaced, removed, added (any name), named twice (the
/// second spelled with escapes, or not), or nested deep.
fn claims_json() -> impl Strategy<Value = Json> {
    let registered = ["iss", "sub", "aud", "iat", "exp", "nbf", "jti", "scope", "cnf"];
    let claim = prop_oneof![3 => prop::sample::select(registered.to_vec()).prop_map(String::from), 1 => name()];
    let change = prop_oneof![
        6 => claim.prop_flat_map(|c| (Just(c.clone()), claim_value(&c))).prop_map(|(c, v)| (0u8, c, Some(v), false)),
        1 => (any::<Index>()).prop_map(|i| (1u8, i.index(1000).to_string(), None, false)),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(i, esc)| (2u8, i.index(1000).to_string(), None, esc)),
    ];
    prop::collection::vec(change, 0..4).prop_map(|changes| {
        let mut members: Vec<(String, bool, Json)> = claims()
            .as_object()
            .expect("an object")
            .iter()
            .map(|(k, v)| (k.clone(), false, Json::plain(v.to_string())))
            .collect();
        for (kind, name, value, escaped) in changes {
            match (kind, value) {
                (0, Some(value)) => match members.iter_mut().find(|(k, _, _)| *k == name) {
                    Some(member) => member.2 = value,
                    None => members.push((name, false, value)),
                },
                (1, _) if !members.is_empty() => {
                    let i = name.parse::<usize>().expect("an index") % members.len();
                    members.remove(i);
                }
                (2, _) if !members.is_empty() => {
                    let i = name.parse::<usize>().expect("an index") % members.len();
                    let (k, _, v) = members[i].clone();
                    members.push((k, escaped, v));
                }
                _ => {}
            }
        }
        object(&members)
    })
}

/// Headers: `alg` and `kid` of every value and type, `crit`, `b64`, other members, repeats.
fn header_json() -> impl Strategy<Value = Json> {
    let alg = prop_oneof![
        4 => Just(Json::plain(r#""ES256""#)),
        1 => prop::sample::select(vec![
            r#""es256""#, r#""none""#, r#""None""#, r#""HS256""#, r#""RS256""#, r#""EdDSA""#, r#""ES256 ""#, "null",
            r#"["ES256"]"#,
        ])
        .prop_map(Json::plain),
        1 => json(),
    ];
    let kid = prop_oneof![
        4 => Just(Json::plain(r#""k1""#)),
        1 => prop::sample::select(vec![r#""k2""#, r#""K1""#, r#""""#, "null", "1", r#"["k1"]"#]).prop_map(Json::plain),
        1 => json(),
    ];
    let extra = prop_oneof![
        prop::sample::select(vec![
            ("crit", r#"["exp"]"#),
            ("crit", "[]"),
            ("crit", "null"),
            ("b64", "false"),
            ("b64", "true"),
            ("b64", r#""false""#),
            ("typ", r#""at+jwt""#),
            ("jku", r#""https://evil.example.com/jwks""#),
            ("x5u", r#""https://evil""#),
            ("jwk", r#"{"kty":"EC"}"#),
            ("cty", r#""JWT""#),
            ("zip", r#""DEF""#),
        ])
        .prop_map(|(k, v)| (k.to_string(), Json::plain(v))),
        (name(), json()),
    ];
    (
        prop::option::weighted(0.95, alg),
        prop::option::weighted(0.9, kid),
        prop::collection::vec(extra, 0..3),
        prop::option::weighted(0.1, any::<(Index, bool)>()),
    )
        .prop_map(|(alg, kid, extra, twice)| {
            let mut members: Vec<(String, bool, Json)> = Vec::new();
            members.extend(alg.map(|v| ("alg".to_string(), false, v)));
            members.extend(kid.map(|v| ("kid".to_string(), false, v)));
            members.extend(extra.into_iter().map(|(k, v)| (k, false, v)));
            if let (Some((i, escaped)), false) = (twice, members.is_empty()) {
                let (k, _, v) = members[i.index(members.len())].clone();
                members.push((k, escaped, v));
            }
            object(&members)
        })
}

/// The rules of the issuer a token verified under (`config_with_keys`): its `iss`, clock skew,
/// maximum lifetime, and whether `jti` is required.
fn rules(issuer: &str) -> (&'static str, f64, f64, bool) {
    match issuer {
        "corp-idp" => (ISS, 30.0, 900.0, true),
        "other-idp" => ("https://other.example.com", 60.0, 3600.0, false),
        other => panic!("no issuer {other} in the fixture"),
    }
}

/// What an accepted token's claims are known to satisfy, read from the text that was signed.
fn check_claims(v: &Verified, signed: &Value) -> Result<(), TestCaseError> {
    let (iss, skew, lifetime, jti_required) = rules(&v.issuer);
    let claims = signed.as_object().expect("the claims verified as an object");
    prop_assert_eq!(&v.claims, claims, "policy sees the claims as signed");
    prop_assert_eq!(Some(v.subject.as_str()), claims.get("sub").and_then(Value::as_str));
    prop_assert_eq!(claims.get("iss").and_then(Value::as_str), Some(iss));
    let aud = claims.get("aud");
    prop_assert!(
        aud.and_then(Value::as_str) == Some(RESOURCE)
            || aud.and_then(Value::as_array).is_some_and(|a| a.iter().any(|a| a.as_str() == Some(RESOURCE))),
        "aud {aud:?}"
    );
    let time = |c: &str| claims.get(c).and_then(Value::as_f64);
    let (exp, iat) = (time("exp").expect("exp"), time("iat").expect("iat"));
    let now = NOW as f64;
    prop_assert!(exp.floor() + skew >= now, "expired: {exp}");
    prop_assert!(iat.ceil() <= now + skew, "issued in the future: {iat}");
    prop_assert!(exp - iat <= lifetime, "lifetime {exp} - {iat}");
    if let Some(nbf) = claims.get("nbf") {
        prop_assert!(nbf.as_f64().is_some_and(|nbf| nbf.ceil() <= now + skew), "nbf {nbf}");
    }
    prop_assert!(!jti_required || claims.contains_key("jti"), "jti is required");
    prop_assert!(!claims.contains_key("cnf"), "a bound token presented without its key");
    Ok(())
}

#[test]
fn the_fixture_token_is_valid_for_each_use() {
    let subject = Some("ci-runner".to_string());
    assert_eq!(uses(&FIXTURE.token), [subject.clone(), subject.clone(), subject]);
}

proptest! {
    #![proptest_config(cases(1024))]

    /// Any string at all, base64url soup in three parts or more, or one past the size limit:
    /// refused by every use, without a panic.
    #[test]
    fn any_string_is_refused(
        token in prop_oneof![
            any::<String>(),
            "[A-Za-z0-9_.=+/-]{0,400}",
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..5)
                .prop_map(|parts| parts.iter().map(b64).collect::<Vec<_>>().join(".")),
            (MAX_TOKEN_BYTES - 2..MAX_TOKEN_BYTES + 64).prop_map(|n| format!("{}.", FIXTURE.token).repeat(n / FIXTURE.token.len() + 1)[..n].to_string()),
        ]
    ) {
        prop_assert_eq!(uses(&token), [None, None, None]);
    }

    /// The valid token edited byte by byte, or part by part (swapped, dropped, repeated,
    /// replaced, encoded otherwise, another token's signature): only the untouched token
    /// verifies, so no edit ever verifies as another subject.
    #[test]
    fn only_the_untouched_token_verifies(
        edited in prop_oneof![
            edits().prop_map(|e| String::from_utf8_lossy(&apply(FIXTURE.token.as_bytes(), &e)).into_owned()),
            prop::collection::vec(part_edit(), 1..4).prop_map(|e| edit_parts(&FIXTURE.token, &e)),
        ]
    ) {
        let expected = if edited == FIXTURE.token { Some("ci-runner".to_string()) } else { None };
        prop_assert_eq!(uses(&edited), [expected.clone(), expected.clone(), expected]);
    }

    /// Claims signed by the trusted key: verified only when every rule holds, and then as
    /// exactly what was signed (no member named twice, the subject its own `sub`).
    #[test]
    fn signed_claims_verify_only_as_what_they_say(claims in claims_json()) {
        let f = &*FIXTURE;
        let token = f.es.sign_raw(&f.es.header(""), &claims.text);
        let none = Revocations::default();
        let verified = f.verifier.verify(&token, "github", NOW, &none, Presenter::default());
        let exchanged = f.verifier.verify_for_exchange(&token, RESOURCE, NOW, &none, Presenter::default());
        let revocable = f.verifier.revocable(&token, NOW);
        let signed = serde_json::from_str::<Value>(&claims.text);
        if claims.repeats {
            prop_assert_eq!(verified.as_ref().err(), Some(&Reason::Malformed));
            prop_assert!(exchanged.is_err() && revocable.is_none());
        }
        for v in [&verified, &exchanged].into_iter().flatten() {
            check_claims(v, signed.as_ref().expect("verified claims are JSON"))?;
        }
        // The server trusts corp-idp alone; the token service any issuer but its own.
        let exchanged_from_corp = exchanged.as_ref().is_ok_and(|v| v.issuer == "corp-idp");
        prop_assert_eq!(verified.is_ok(), exchanged_from_corp, "one token, one verdict: {:?}", verified.err());
        if let Some(r) = revocable {
            let signed = signed.as_ref().expect("revocable claims are JSON");
            let (iss, skew, _, _) = rules(&r.issuer);
            prop_assert!(!claims.repeats);
            prop_assert_eq!(Some(r.jti.as_str()), signed.get("jti").and_then(Value::as_str));
            prop_assert_eq!(r.subject.as_str(), signed.get("sub").and_then(Value::as_str).unwrap_or_default());
            prop_assert_eq!(signed.get("iss").and_then(Value::as_str), Some(iss));
            prop_assert!(r.expires_at as f64 + skew >= NOW as f64);
        }
    }

    /// Headers signed by the trusted key: only `alg: ES256` with `kid: k1`, no `crit`, no
    /// `b64` but `true`, and no member named twice, verifies.
    #[test]
    fn signed_headers_verify_only_with_the_pinned_algorithm_and_key(header in header_json()) {
        let f = &*FIXTURE;
        let token = f.es.sign_raw(&header.text, &claims().to_string());
        let verified = f.verifier.verify(&token, "github", NOW, &Revocations::default(), Presenter::default());
        if header.repeats {
            prop_assert_eq!(verified.as_ref().err(), Some(&Reason::Malformed));
        }
        if let Ok(v) = &verified {
            let members = serde_json::from_str::<serde_json::Map<String, Value>>(&header.text).expect("a JSON object");
            prop_assert_eq!(members.get("alg"), Some(&Value::from("ES256")));
            prop_assert_eq!(members.get("kid"), Some(&Value::from("k1")));
            prop_assert!(!members.contains_key("crit"));
            prop_assert!(members.get("b64").is_none_or(|b| b == &Value::Bool(true)));
            prop_assert_eq!(v.subject.as_str(), "ci-runner");
        }
    }
}
