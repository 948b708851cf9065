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
}
