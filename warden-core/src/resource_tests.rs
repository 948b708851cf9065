use super::*;

const ISSUER: &str = r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {name: corp-idp}
spec:
  issuer: https://idp.example.com
  keys:
    jwks: {keys: [{kty: EC, kid: k1, crv: P-256, x: "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", y: "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}
  allowedAlgorithms: [ES256]
  maxTokenLifetime: 15m
"#;

fn parse(yaml: &str) -> Result<Document, DocumentError> {
    parse_with(yaml, &Admission::default())
}

fn parse_with(yaml: &str, admission: &Admission) -> Result<Document, DocumentError> {
    let mut docs = yaml_documents(yaml)?;
    assert_eq!(docs.len(), 1, "one document per test input");
    Document::from_json(docs.remove(0), admission)
}

fn field_error(yaml: &str) -> (String, String) {
    match parse(yaml) {
        Err(DocumentError::Field { path, message }) => (path, message),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn issuer_parses_with_defaults_and_round_trips_through_canonical_json() {
    let doc = parse(ISSUER).unwrap();
    assert_eq!(doc.key().to_string(), "TrustedIssuer/corp-idp");
    let Spec::TrustedIssuer(spec) = &doc.spec else { panic!("wrong kind") };
    assert_eq!(spec.max_token_lifetime.0.as_secs(), 900);
    assert_eq!(spec.clock_skew.0.as_secs(), 60, "default skew");
    assert_eq!(spec.subject_claim, "sub");
    let again = Document::from_json_bytes(&doc.to_canonical_json(), &Admission::default()).unwrap();
    assert_eq!(again, doc);
    assert_eq!(again.to_canonical_json(), doc.to_canonical_json(), "canonical form is stable");
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let (path, message) = field_error(&ISSUER.replace("maxTokenLifetime", "maxTokenLifeTime"));
    assert_eq!(path, "spec.maxTokenLifeTime");
    assert!(message.contains("unknown field `maxTokenLifeTime`"), "{message}");

    let (path, message) = field_error(&ISSUER.replace("  keys:\n    jwks", "  keys:\n    jwksUrl"));
    assert_eq!(path, "spec.keys.jwksUrl");
    assert!(message.contains("jwksUrl"), "{message}");
}

#[test]
fn none_and_hmac_algorithms_cannot_be_configured() {
    for alg in ["none", "HS256", "HS512"] {
        let (path, message) = field_error(&ISSUER.replace("[ES256]", &format!("[{alg}]")));
        assert_eq!(path, "spec.allowedAlgorithms[0]", "{alg}");
        assert!(message.contains("unknown variant"), "{alg}: {message}");
    }
    let (path, _) = field_error(&ISSUER.replace("[ES256]", "[]"));
    assert_eq!(path, "spec.allowedAlgorithms");
}

#[test]
fn issuer_urls_must_be_https_unless_admission_allows_http() {
    let http = ISSUER.replace("https://idp.example.com", "http://127.0.0.1:9000");
    let (path, message) = field_error(&http);
    assert_eq!(path, "spec.issuer");
    assert!(message.contains("https"), "{message}");
    parse_with(&http, &Admission { allow_http_issuers: true }).unwrap();
    let (path, _) = field_error(&ISSUER.replace("https://idp.example.com", "ftp://idp.example.com"));
    assert_eq!(path, "spec.issuer");
}

#[test]
fn inline_keys_must_be_public_and_asymmetric() {
    let (path, message) = field_error(&ISSUER.replace("kty: EC, kid: k1,", "kty: EC, kid: k1, d: secret,"));
    assert_eq!(path, "spec.keys.jwks");
    assert!(message.contains("private key"), "{message}");
    let (_, message) = field_error(&ISSUER.replace("kty: EC", "kty: oct"));
    assert!(message.contains("symmetric"), "{message}");
    let (_, message) = field_error(&ISSUER.replace("kid: k1,", ""));
    assert!(message.contains("kid"), "{message}");
}

#[test]
fn exactly_one_key_source() {
    let both = ISSUER.replace("  keys:\n", "  keys:\n    discovery: true\n");
    assert_eq!(field_error(&both).0, "spec.keys");
}

#[test]
fn durations_are_bounded_and_named() {
    let (path, message) = field_error(&ISSUER.replace("15m", "fifteen"));
    assert_eq!(path, "spec.maxTokenLifetime");
    assert!(message.contains("not a duration"), "{message}");
    assert_eq!(field_error(&ISSUER.replace("15m", "48h")).0, "spec.maxTokenLifetime");
    assert_eq!(field_error(&ISSUER.replace("15m", "0s")).0, "spec.maxTokenLifetime");
    let skew = ISSUER.replace("maxTokenLifetime: 15m", "clockSkew: 1h");
    assert_eq!(field_error(&skew).0, "spec.clockSkew");
}

#[test]
fn envelope_is_checked() {
    assert_eq!(field_error(&ISSUER.replace("warden.dev/v1", "warden.dev/v2")).0, "apiVersion");
    assert_eq!(field_error(&ISSUER.replace("kind: TrustedIssuer", "kind: Secret")).0, "kind");
    assert_eq!(field_error(&ISSUER.replace("{name: corp-idp}", "{name: Corp_IdP}")).0, "metadata.name");
    let (path, message) = field_error(&ISSUER.replace("{name: corp-idp}", "{name: corp-idp, owner: me}"));
    assert_eq!(path, "metadata.owner");
    assert!(message.contains("unknown field"), "{message}");
}

#[test]
fn resource_version_is_carried_but_never_stored() {
    let doc = parse(&ISSUER.replace("{name: corp-idp}", "{name: corp-idp, resourceVersion: 7}")).unwrap();
    assert_eq!(doc.metadata.resource_version, Some(7));
    let stored = String::from_utf8(doc.to_canonical_json()).unwrap();
    assert!(!stored.contains("resourceVersion"), "{stored}");
}

#[test]
fn servers_are_validated() {
    let server = r#"
apiVersion: warden.dev/v1
kind: McpServer
metadata: {name: github}
spec:
  resource: https://mcp.example.com/github
  issuers: [corp-idp]
  upstream: http://127.0.0.1:3000/mcp
  listen: 127.0.0.1:8443
  binding: mtls
"#;
    let doc = parse(server).unwrap();
    let Spec::McpServer(spec) = &doc.spec else { panic!("wrong kind") };
    assert_eq!(spec.binding, crate::server::Binding::Mtls);
    let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert!(spec.agents.matches(&labels(&[])), "no selector selects every agent");
    let selected =
        parse(&server.replace("binding: mtls", "binding: mtls\n  agents: {matchLabels: {role: github}}")).unwrap();
    let Spec::McpServer(selected) = &selected.spec else { panic!("wrong kind") };
    assert!(selected.agents.matches(&labels(&[("role", "github"), ("zone", "a")])));
    assert!(!selected.agents.matches(&labels(&[("role", "gitlab")])));
    assert!(!selected.agents.matches(&labels(&[])));
    assert_eq!(field_error(&server.replace("[corp-idp]", "[]")).0, "spec.issuers");
    assert_eq!(field_error(&server.replace("127.0.0.1:8443", "localhost")).0, "spec.listen");
    assert_eq!(field_error(&server.replace("http://127.0.0.1:3000/mcp", "unix:/x")).0, "spec.upstream");
    assert_eq!(field_error(&server.replace("/github", "/github#frag")).0, "spec.resource");
    assert_eq!(field_error(&server.replace("mtls", "psk")).0, "spec.binding");
    assert_eq!(field_error(&server.replace("https://mcp", "http://mcp")).0, "spec.binding");
    assert_eq!(field_error(&server.replace("[corp-idp]", "[corp-idp]\n  scopes: [\"bad scope\"]")).0, "spec.scopes[0]");
    let origins = server.replace("[corp-idp]", "[corp-idp]\n  allowedOrigins: [https://app.example.com/x]");
    assert_eq!(field_error(&origins).0, "spec.allowedOrigins[0]");
    // Audit mode needs its end date, a real one, and the date needs audit mode.
    let audit = |extra: &str| server.replace("binding: mtls", &format!("binding: mtls\n  {extra}"));
    let until = "enforcement: audit\n  auditUntil: \"2026-12-31T00:00:00Z\"";
    let doc = parse(&audit(until)).unwrap();
    let Spec::McpServer(audited) = &doc.spec else { panic!("wrong kind") };
    let end = 1_798_675_200; // 2026-12-31T00:00:00Z
    assert!(audited.in_audit(end - 1) && !audited.in_audit(end), "audit ends at auditUntil");
    assert!(!spec.in_audit(0), "enforce by default");
    assert_eq!(field_error(&audit("enforcement: audit")).0, "spec.auditUntil");
    assert_eq!(field_error(&audit("auditUntil: \"2026-12-31T00:00:00Z\"")).0, "spec.auditUntil");
    assert_eq!(field_error(&audit("enforcement: audit\n  auditUntil: next-week")).0, "spec.auditUntil");
    assert_eq!(field_error(&audit("enforcement: observe")).0, "spec.enforcement");
}

const POLICY: &str = r#"
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: search-only}
spec:
  servers: [github]
  cedar: |
    permit(principal, action == Action::"tools/call", resource)
    when { resource.name == "search" };
"#;

#[test]
fn cedar_is_parsed_and_validated_against_the_schema() {
    parse(POLICY).unwrap();
    let (path, message) = field_error(&POLICY.replace("permit(", "allow("));
    assert_eq!(path, "spec.cedar");
    assert!(message.contains("does not parse"), "{message}");
    // Parses, but names an attribute the schema does not have.
    let (path, message) = field_error(&POLICY.replace("resource.name", "resource.title"));
    assert_eq!(path, "spec.cedar");
    assert!(message.contains("does not validate"), "{message}");
    // Parses, but names an action that does not exist.
    let (_, message) = field_error(&POLICY.replace("tools/call", "tools/exec"));
    assert!(message.contains("does not validate"), "{message}");
    let (_, message) = field_error(&POLICY.replace(
        "permit(principal, action == Action::\"tools/call\", resource)\n    when { resource.name == \"search\" };",
        "// nothing",
    ));
    assert!(message.contains("no policy"), "{message}");
}

#[test]
fn yaml_syntax_errors_name_the_document() {
    let text = format!("{ISSUER}\n---\nkind: [unclosed\n");
    match yaml_documents(&text) {
        Err(DocumentError::Syntax { index: 2, message }) => assert!(message.contains("line"), "{message}"),
        other => panic!("expected a syntax error in document 2, got {other:?}"),
    }
    assert_eq!(yaml_documents("---\n---\n").unwrap().len(), 0, "empty documents are skipped");
}

#[test]
fn loose_kind_names() {
    assert_eq!(Kind::parse_loose("policies"), Some(Kind::Policy));
    assert_eq!(Kind::parse_loose("McpServer"), Some(Kind::McpServer));
    assert_eq!(Kind::parse_loose("issuers"), Some(Kind::TrustedIssuer));
    assert_eq!(Kind::parse_loose("secrets"), None);
}

#[test]
fn inline_keys_may_not_give_one_kid_to_two_keys_a_token_could_select() {
    let second = r#"{kty: EC, kid: k1, crv: P-256, x: "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", y: "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"}"#;
    let (path, message) = field_error(&ISSUER.replace("]}\n", &format!(", {second}]}}\n")));
    assert_eq!(path, "spec.keys.jwks");
    assert!(message.contains("keys[1]") && message.contains("\"k1\"") && message.contains("keys[0]"), "{message}");
    // The same kid for an encryption key is no choice: it never verifies a signature.
    let enc = second.replace("kty: EC,", "kty: EC, use: enc,");
    parse(&ISSUER.replace("]}\n", &format!(", {enc}]}}\n"))).unwrap();
}

#[test]
fn a_document_nested_near_the_parsers_limit_is_refused_so_its_stored_form_reads_back() {
    // Found by the property tests (props::resource): a TrustedIssuer whose JWK carried a member
    // nested to serde_json's limit (127 levels) was admitted, and its store record, the
    // document one level deeper, did not parse: the control plane could not load its store.
    let with_member = |levels: usize| {
        let mut value = yaml_documents(ISSUER).unwrap().remove(0);
        let nested = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        value["spec"]["keys"]["jwks"]["keys"][0]["x-note"] = serde_json::from_str(&nested).unwrap();
        Document::from_json_bytes(&serde_json::to_vec(&value).unwrap(), &Admission::default())
    };
    // The JWK is 6 levels down: 121 more make 127.
    match with_member(121) {
        Err(DocumentError::Field { path, message }) => {
            assert_eq!((path.as_str(), message), ("document", format!("nests deeper than {MAX_DEPTH} levels")))
        }
        other => panic!("{other:?}"),
    }
    // The deepest such document admitted (its key set at `jwks::MAX_DEPTH`) reads back from a
    // store record.
    let doc = with_member(crate::jwks::MAX_DEPTH - 3).unwrap();
    let json = String::from_utf8(doc.to_canonical_json()).unwrap();
    let record = format!(r#"{{"resourceVersion":7,"document":{json}}}"#);
    let read: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(Document::from_json(read["document"].clone(), &Admission::from_control_plane()).unwrap(), doc);
    assert!(with_member(crate::jwks::MAX_DEPTH - 2).is_err());
}
