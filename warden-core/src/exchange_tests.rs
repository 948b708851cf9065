use super::*;

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish().into_bytes()
}

const BASE: [(&str, &str); 4] = [
    ("grant_type", GRANT_TYPE),
    ("subject_token", "eyJ.a.b"),
    ("subject_token_type", TOKEN_TYPE_JWT),
    ("resource", "https://mcp.example/github"),
];

fn with(extra: &[(&str, &str)]) -> Result<ExchangeRequest, OAuthError> {
    let pairs: Vec<(&str, &str)> = BASE.iter().copied().chain(extra.iter().copied()).collect();
    ExchangeRequest::from_form(&form(&pairs))
}

#[test]
fn tools_come_from_scope_and_authorization_details_sorted_and_unique() {
    let details =
        r#"[{"type":"mcp_tools","locations":["https://mcp.example/github"],"tools":["get_issue","add_comment"]}]"#;
    let request = with(&[
        ("scope", "tool:get_issue repo:read tool:list_prs"),
        ("authorization_details", details),
        ("expires_in", "120"),
    ])
    .unwrap();
    assert_eq!(request.tools, ["add_comment", "get_issue", "list_prs"]);
    assert_eq!(request.scopes, ["repo:read"]);
    assert_eq!(request.lifetime, Some(120));
    assert_eq!(request.target, Target::Resource("https://mcp.example/github".into()));
    assert!(request.authorization_details);
    assert_eq!(request.subject_token, "eyJ.a.b");
    assert_eq!(request.actor_token, None);
}

#[test]
fn malformed_requests_get_the_rfc_error_codes() {
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("scope", "repo:read")], "invalid_scope"),
        (vec![("scope", "tool:a"), ("scope", "tool:b")], "invalid_request"),
        (vec![("scope", "tool:a"), ("resource", "https://other.example/")], "invalid_target"),
        (vec![("scope", "tool:a"), ("audience", "github")], "invalid_target"),
        (vec![("scope", "tool:a"), ("expires_in", "-5")], "invalid_request"),
        (vec![("scope", "tool:a"), ("expires_in", "soon")], "invalid_request"),
        (vec![("scope", "tool:a"), ("actor_token", "x")], "invalid_request"),
        (vec![("scope", "tool:a"), ("actor_token_type", TOKEN_TYPE_JWT)], "invalid_request"),
        (
            vec![("scope", "tool:a"), ("requested_token_type", "urn:ietf:params:oauth:token-type:saml2")],
            "invalid_request",
        ),
        (vec![("authorization_details", "not json")], "invalid_authorization_details"),
        (vec![("authorization_details", r#"[{"type":"payment","tools":["a"]}]"#)], "invalid_authorization_details"),
        (
            vec![("authorization_details", r#"[{"type":"mcp_tools","locations":["https://x/"],"tools":["a"]}]"#)],
            "invalid_authorization_details",
        ),
        (vec![("scope", "tool:")], "invalid_scope"),
    ];
    for (extra, code) in cases {
        let error = with(&extra).expect_err(&format!("{extra:?}"));
        assert_eq!(error.code, code, "{extra:?}: {error}");
        assert!(!error.description.contains("eyJ.a.b"), "an error never echoes the token");
    }
    let wrong_grant = form(&[("grant_type", "client_credentials"), ("subject_token", "x")]);
    assert_eq!(ExchangeRequest::from_form(&wrong_grant).unwrap_err().code, "unsupported_grant_type");
    let wrong_type = form(&[
        ("grant_type", GRANT_TYPE),
        ("subject_token", "x"),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:saml2"),
    ]);
    assert_eq!(ExchangeRequest::from_form(&wrong_type).unwrap_err().code, "invalid_request");
    let missing = form(&[("grant_type", GRANT_TYPE)]);
    assert_eq!(ExchangeRequest::from_form(&missing).unwrap_err().description, "subject_token is missing");
    assert_eq!(ExchangeRequest::from_form(&vec![b'a'; MAX_REQUEST_BYTES + 1]).unwrap_err().code, "invalid_request");
    let many: String = (0..=MAX_TOOLS).map(|i| format!("tool:t{i} ")).collect();
    assert_eq!(with(&[("scope", &many)]).unwrap_err().code, "invalid_scope");
}

#[test]
fn a_task_never_outlives_its_caps_or_its_subject_token() {
    let now = 1_000;
    assert_eq!(lifetime(None, 300, [3600], now + 7200, now), Ok(300));
    assert_eq!(lifetime(Some(7200), 300, [3600, 900], now + 7200, now), Ok(900));
    assert_eq!(lifetime(Some(600), 300, [3600], now + 60, now), Ok(60));
    assert_eq!(lifetime(None, 300, [3600], now, now).unwrap_err().code, "invalid_grant");
}

fn verified(subject: &str, claims: Value) -> Verified {
    let claims = claims.as_object().cloned().unwrap_or_default();
    Verified {
        issuer: "corp".into(),
        subject: subject.into(),
        jti: None,
        jti_hash: None,
        jti_key: None,
        expires_at: 2_000,
        issued_at: 900,
        valid_until: 2_060,
        bound_certificate: None,
        bound_dpop_key: None,
        scopes: Vec::new(),
        claims,
        task: None,
        bridge: None,
        derived: Default::default(),
    }
}

#[test]
fn task_token_claims_carry_the_workload_its_tools_its_actor_chain_and_its_binding() {
    let subject = verified("alice", json!({"tenant": "acme", "groups": ["dev"], "secret": "x"}));
    let actor = verified("ci-runner", json!({"act": {"sub": "scheduler"}}));
    let tools = vec!["get_issue".to_string()];
    let binding = Binding::Dpop("jkt-1".into());
    let token = TaskToken {
        issuer: "https://cp.example",
        subject_issuer_url: "https://idp.example",
        subject: &subject,
        actor: Some((&actor, "https://ci.example")),
        audience: "https://mcp.example/github",
        tools: &tools,
        scopes: &[],
        jti: "j1",
        issued_at: 1_000,
        lifetime: 300,
        binding: &binding,
    };
    let claims = Value::Object(token.claims());
    assert_eq!(
        claims,
        json!({
            "iss": "https://cp.example", "sub": "alice", "aud": "https://mcp.example/github",
            "iat": 1000, "nbf": 1000, "exp": 1300, "jti": "j1",
            "subject_iss": "https://idp.example", "tools": ["get_issue"],
            "tenant": "acme", "groups": ["dev"],
            "act": {"sub": "ci-runner", "iss": "https://ci.example", "act": {"sub": "scheduler"}},
            "cnf": {"jkt": "jkt-1"},
        })
    );
}
