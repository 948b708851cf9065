use super::*;
use crate::resource::test_documents as documents;

const FLEET: &str = r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {name: corp-idp}
spec:
  issuer: https://idp.example.com
  keys: {jwksUri: https://idp.example.com/jwks}
  allowedAlgorithms: [RS256]
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {name: github}
spec:
  resource: https://mcp.example.com/github
  issuers: [corp-idp]
  upstream: http://127.0.0.1:3000/mcp
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: readers}
spec:
  servers: [github]
  cedar: |
    permit(principal, action == Action::"tools/list", resource);
    permit(principal, action == Action::"tools/call", resource) when { resource.name == "search" };
"#;

#[test]
fn a_consistent_fleet_compiles_with_resource_named_policy_ids() {
    let docs = documents(FLEET);
    let config = Config::build(&docs).unwrap();
    assert_eq!(config.issuers.len(), 1);
    assert_eq!(config.servers.len(), 1);
    let mut ids: Vec<String> = config.policy_set.policies().map(|p| p.id().to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["readers.0", "readers.1"]);
}

#[test]
fn dangling_references_are_refused() {
    let docs = documents(&FLEET.replace("issuers: [corp-idp]", "issuers: [other-idp]"));
    let err = Config::build(&docs).unwrap_err();
    assert_eq!(err.to_string(), "McpServer/github: spec.issuers names TrustedIssuer/other-idp, which does not exist");
    let docs = documents(&FLEET.replace("servers: [github]", "servers: [gitlab]"));
    assert!(matches!(Config::build(&docs), Err(ConfigError::DanglingReference { field: "spec.servers", .. })));
}

#[test]
fn duplicates_are_refused() {
    let mut docs = documents(FLEET);
    docs.push(docs[0].clone());
    assert!(matches!(Config::build(&docs), Err(ConfigError::Duplicate(_))));
}

#[test]
fn the_empty_configuration_holds_nothing() {
    let config = Config::empty();
    assert!(config.issuers.is_empty() && config.policy_set.is_empty());
}

#[test]
fn fetched_keys_attach_to_issuers_that_fetch_them_only() {
    let docs = documents(FLEET);
    let jwks = serde_json::json!({"keys": [{"kty": "RSA", "kid": "r1", "n": "AQAB", "e": "AQAB"}]});
    let config = Config::build(&docs).unwrap().with_fetched_keys([("corp-idp".to_string(), jwks.clone())]).unwrap();
    assert_eq!(crate::jwks::kids(&config.keys["corp-idp"]), ["r1"]);
    let unknown = Config::build(&docs).unwrap().with_fetched_keys([("nobody".to_string(), jwks)]);
    assert!(matches!(unknown, Err(ConfigError::Keys { .. })));
    let private = serde_json::json!({"keys": [{"kty": "RSA", "kid": "r1", "n": "AQAB", "e": "AQAB", "d": "x"}]});
    let refused = Config::build(&docs).unwrap().with_fetched_keys([("corp-idp".to_string(), private)]);
    assert!(matches!(refused, Err(ConfigError::Keys { .. })));
    // Two keys under one kid: which one a token's kid means is left to chance.
    let ambiguous = serde_json::json!({"keys": [
        {"kty": "RSA", "kid": "r1", "n": "AQAB", "e": "AQAB"},
        {"kty": "RSA", "kid": "r1", "n": "AQAC", "e": "AQAB"},
    ]});
    let refused = Config::build(&docs).unwrap().with_fetched_keys([("corp-idp".to_string(), ambiguous)]);
    assert!(matches!(&refused, Err(ConfigError::Keys { message, .. }) if message.contains("\"r1\"")), "{refused:?}");
}

#[test]
fn two_servers_one_agent_could_serve_cannot_share_a_listen_address() {
    let server = |name: &str, listen: &str, labels: &str| {
        format!(
            "---\napiVersion: warden.dev/v1\nkind: McpServer\nmetadata: {{name: {name}}}\nspec:\n  resource: https://mcp.example.com/{name}\n  \
             issuers: [corp-idp]\n  upstream: http://127.0.0.1:3000/mcp\n  listen: {listen}\n  agents: {{matchLabels: {{{labels}}}}}\n"
        )
    };
    let with = |extra: &str| documents(&format!("{FLEET}{extra}"));
    // Same address, agents that could serve both (no selector, or selectors that can both match).
    for (a, b) in [("", ""), ("role: git", ""), ("role: git", "zone: eu")] {
        let docs = with(&format!("{}{}", server("a", "127.0.0.1:8443", a), server("b", "127.0.0.1:8443", b)));
        let err = Config::build(&docs).unwrap_err();
        assert!(matches!(err, ConfigError::SharedListen { .. }), "{a:?} {b:?}: {err}");
        assert!(err.to_string().contains("127.0.0.1:8443"), "{err}");
    }
    // Disjoint agents, or different addresses: fine.
    let docs =
        with(&format!("{}{}", server("a", "127.0.0.1:8443", "role: git"), server("b", "127.0.0.1:8443", "role: docs")));
    Config::build(&docs).unwrap();
    let docs = with(&format!("{}{}", server("a", "127.0.0.1:8443", ""), server("b", "127.0.0.1:8444", "")));
    Config::build(&docs).unwrap();
}

#[test]
fn a_bridge_opens_an_unbound_server_under_a_name_of_its_own_with_a_key_of_its_own() {
    let bridge = |name: &str, server: &str, key: &str| {
        format!(
            "---\napiVersion: warden.dev/v1\nkind: CredentialBridge\nmetadata: {{name: {name}}}\nspec:\n  server: {server}\n  header: X-Api-Key\n  key: {key}\n  principal: ci\n  owner: team-ci\n  exitPlan: tokens by March\n  expires: 2027-02-01T00:00:00Z\n"
        )
    };
    let (one, two) = ("4f9c2a7e1b8d3f60a5c9e2b71d4f8a3c", "9d2f7a1c5e8b3d6f9a2c4e7b0d1f4f9c");
    let build = |extra: String| Config::build(&documents(&format!("{FLEET}{extra}"))).map_err(|e| e.to_string());
    let config = build(bridge("legacy", "github", one)).unwrap();
    assert_eq!(config.bridges["legacy"].principal, "ci");
    assert!(build(bridge("legacy", "gitlab", one)).unwrap_err().contains("spec.server names McpServer/gitlab"));
    assert!(build(bridge("corp-idp", "github", one)).unwrap_err().contains("same name"));
    let twice = format!("{}{}", bridge("legacy", "github", one), bridge("again", "github", one));
    assert!(build(twice).unwrap_err().contains("same key"));
    let two_keys = format!("{}{}", bridge("legacy", "github", one), bridge("again", "github", two));
    assert_eq!(build(two_keys).unwrap().bridges.len(), 2);
    let bound = format!("{FLEET}{}", bridge("legacy", "github", one))
        .replace("upstream: http://127.0.0.1:3000/mcp", "upstream: http://127.0.0.1:3000/mcp\n  binding: dpop");
    assert!(Config::build(&documents(&bound)).unwrap_err().to_string().contains("cannot be bound"));
    // A bridge is revoked as its principal's issuer.
    let revoked = format!(
        "{}---\napiVersion: warden.dev/v1\nkind: Revocation\nmetadata: {{name: r}}\nspec: {{issuer: legacy, jti: 'sha256:00'}}\n",
        bridge("legacy", "github", one)
    );
    assert!(build(revoked).is_ok());
}
