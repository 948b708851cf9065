//! `PolicyTest`: requests and the decisions a team expects of its policies, run by
//! `wardenctl test` on a laptop or in CI against the configuration in the same files — so
//! Cedar is kept under test like any other code.
//!
//! ```yaml
//! apiVersion: warden.dev/v1
//! kind: PolicyTest
//! metadata: {name: github-readers}
//! spec:
//!   cases:
//!     - name: a reader may search
//!       server: github
//!       principal: {issuer: corp-idp, subject: alice, scopes: [repo:read]}
//!       method: tools/call
//!       tool: search_issues
//!       arguments: {query: "is:open"}
//!       expect: allow
//!       decidedBy: [github-readers.0]
//! ```
//!
//! A case is decided exactly as an agent decides it ([`Authorizer::authorize`]): the same
//! principal, entities and context, the task-token grant check first. It is not a resource:
//! the control plane never stores it.

use std::net::IpAddr;

use serde::Deserialize;

use crate::authorize::{Authorizer, RequestFacts, Target};
use crate::caller::Caller;
use crate::explain::Explanation;
use crate::resource::API_VERSION;
use crate::validation::DocumentError;

/// The kind name of a policy test document.
pub const KIND: &str = "PolicyTest";

/// One `PolicyTest` document.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyTest {
    pub name: String,
    pub cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Envelope {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    cases: Vec<Case>,
}

/// A request and what policy should decide.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Case {
    pub name: String,
    /// The McpServer's name.
    pub server: String,
    pub principal: Principal,
    /// The tools of a task token (from token exchange); absent for the workload's own token.
    #[serde(default)]
    pub granted_tools: Option<Vec<String>>,
    /// `tools/call`, `tools/list`, `resources/read`, `prompts/get`, …
    pub method: String,
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    /// The call's arguments, a JSON object.
    #[serde(default)]
    pub arguments: Option<serde_json::Value>,
    /// The caller's address (default 127.0.0.1).
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    /// When the request arrives, RFC 3339 (default: when the test runs).
    #[serde(default)]
    pub time: Option<String>,
    pub expect: Expect,
    /// The policy ids expected to decide (`<Policy name>.<n>`), in any order.
    #[serde(default)]
    pub decided_by: Option<Vec<String>>,
}

/// The caller, as its token would present it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// The TrustedIssuer's name.
    pub issuer: String,
    pub subject: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
}

impl PolicyTest {
    /// Whether `value` is a policy test document (whatever else is wrong with it).
    pub fn is(value: &serde_json::Value) -> bool {
        value.get("kind").and_then(|k| k.as_str()) == Some(KIND)
    }

    /// Parses one document, with the path of what is wrong.
    pub fn from_json(value: serde_json::Value) -> Result<PolicyTest, DocumentError> {
        let envelope: Envelope = serde_path_to_error::deserialize(value)
            .map_err(|e| DocumentError::field(e.path().to_string(), e.into_inner().to_string()))?;
        if envelope.api_version != API_VERSION || envelope.kind != KIND {
            return Err(DocumentError::field("apiVersion", format!("must be {API_VERSION:?} with kind {KIND}")));
        }
        crate::validation::validate_name(&envelope.metadata.name)
            .map_err(|m| DocumentError::field("metadata.name", m))?;
        for (i, case) in envelope.spec.cases.iter().enumerate() {
            let named = [&case.tool, &case.resource, &case.prompt].iter().filter(|t| t.is_some()).count();
            if named > 1 {
                return Err(DocumentError::field(
                    format!("spec.cases[{i}]"),
                    "names at most one of tool, resource, prompt",
                ));
            }
            if let Some(args) = &case.arguments
                && !args.is_object()
            {
                return Err(DocumentError::field(format!("spec.cases[{i}].arguments"), "must be an object"));
            }
            if let Some(time) = &case.time
                && humantime::parse_rfc3339_weak(time).is_err()
            {
                return Err(DocumentError::field(format!("spec.cases[{i}].time"), "must be an RFC 3339 time"));
            }
        }
        Ok(PolicyTest { name: envelope.metadata.name, cases: envelope.spec.cases })
    }
}

/// How a case went.
#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    /// What policy decided, and why (absent when the request could not be put to policy).
    pub explanation: Option<Explanation>,
    /// Why the case failed, in a sentence.
    pub failure: Option<String>,
}

impl Case {
    fn target(&self) -> Target<'_> {
        match (&self.tool, &self.resource, &self.prompt) {
            (Some(t), _, _) => Target::Tool(t),
            (_, Some(r), _) => Target::Resource(r),
            (_, _, Some(p)) => Target::Prompt(p),
            _ => Target::Server,
        }
    }

    /// Decides the case under `authorizer`; `now` is used when the case gives no time.
    pub fn run(&self, authorizer: &Authorizer, now: i64) -> CaseResult {
        let fail =
            |why: String| CaseResult { name: self.name.clone(), passed: false, explanation: None, failure: Some(why) };
        // Else an `expect: deny` passes on a misspelt server, which denies everything.
        if !authorizer.serves(&self.server) {
            return fail(format!("the configuration has no McpServer {:?}", self.server));
        }
        let caller = Caller {
            issuer: self.principal.issuer.clone(),
            subject: self.principal.subject.clone(),
            scopes: self.principal.scopes.clone(),
            tenant: self.principal.tenant.clone(),
            email: self.principal.email.clone(),
            groups: self.principal.groups.clone(),
            granted_tools: self.granted_tools.clone(),
        };
        let arguments = match &self.arguments {
            Some(a) => match serde_json::value::to_raw_value(a) {
                Ok(raw) => Some(raw),
                Err(e) => return fail(format!("arguments: {e}")),
            },
            None => None,
        };
        let now = match &self.time {
            Some(t) => match humantime::parse_rfc3339_weak(t) {
                Ok(at) => at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
                Err(e) => return fail(format!("time: {e}")),
            },
            None => now,
        };
        let granted = self.granted_tools.clone().unwrap_or_default();
        let facts = RequestFacts {
            source_ip: self.source_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            now,
            granted_tools: &granted,
            arguments: arguments.as_deref(),
        };
        let workload = caller.workload();
        let explanation =
            match crate::explain::explain(authorizer, &self.server, &workload, &self.method, self.target(), &facts) {
                Ok(e) => e,
                Err(e) => return fail(format!("not a request policy can decide: {e}")),
            };
        let allowed = explanation.outcome.allowed;
        let mut failure = None;
        if allowed != (self.expect == Expect::Allow) {
            failure = Some(format!(
                "expected {}, policy decided {}",
                if self.expect == Expect::Allow { "allow" } else { "deny" },
                if allowed { "allow" } else { "deny" }
            ));
        } else if let Some(expected) = &self.decided_by {
            let mut want: Vec<&str> = expected.iter().map(String::as_str).collect();
            let mut got: Vec<&str> = explanation.outcome.policies.iter().map(String::as_str).collect();
            want.sort_unstable();
            got.sort_unstable();
            if want != got {
                failure =
                    Some(format!("expected to be decided by [{}], decided by [{}]", want.join(", "), got.join(", ")));
            }
        }
        CaseResult { name: self.name.clone(), passed: failure.is_none(), explanation: Some(explanation), failure }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use crate::resource::{test_documents, yaml_documents};

    const CONFIG: &str = r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {name: corp}
spec:
  issuer: https://idp.example.com
  keys: {jwksUri: https://idp.example.com/jwks}
  allowedAlgorithms: [ES256]
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {name: files}
spec:
  resource: https://mcp.example.com/files
  issuers: [corp]
  upstream: http://127.0.0.1:3001/mcp
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: readers}
spec:
  servers: [files]
  cedar: |
    permit(principal, action == Action::"tools/call", resource == Tool::"files/read")
    when { context.scopes.contains("files:read") }
    unless { context.arguments.hasTag("path") && context.arguments.getTag("path") like "/etc/*" };
    permit(principal, action == Action::"tools/list", resource)
    when { context.time < datetime("2027-01-01T00:00:00Z") };
"#;

    fn test(yaml: &str) -> Result<PolicyTest, DocumentError> {
        PolicyTest::from_json(yaml_documents(yaml).unwrap().remove(0))
    }

    #[test]
    fn cases_decide_as_the_agent_would_and_say_why_they_fail() {
        let authorizer = Authorizer::new(&Config::build(&test_documents(CONFIG)).unwrap());
        let t = test(
            r#"
apiVersion: warden.dev/v1
kind: PolicyTest
metadata: {name: readers}
spec:
  cases:
    - {name: reads, server: files, principal: {issuer: corp, subject: a, scopes: [files:read]},
       method: tools/call, tool: read, arguments: {path: /home/a}, expect: allow, decidedBy: [readers.0]}
    - {name: not /etc, server: files, principal: {issuer: corp, subject: a, scopes: [files:read]},
       method: tools/call, tool: read, arguments: {path: /etc/shadow}, expect: deny}
    - {name: wrong expectation, server: files, principal: {issuer: corp, subject: a},
       method: tools/call, tool: read, expect: allow}
    - {name: a task not granted it, server: files, principal: {issuer: corp, subject: a, scopes: [files:read]},
       grantedTools: [write], method: tools/call, tool: read, expect: deny}
    - {name: lists until 2027, server: files, principal: {issuer: corp, subject: a}, method: tools/list,
       time: "2026-12-04T00:00:00Z", expect: allow, decidedBy: [readers.0]}
    - {name: not after, server: files, principal: {issuer: corp, subject: a}, method: tools/list,
       time: "2027-02-01T00:00:00Z", expect: deny}
    - {name: no such action, server: files, principal: {issuer: corp, subject: a}, method: tools/delete,
       expect: deny}
    - {name: no such server, server: filez, principal: {issuer: corp, subject: a}, method: tools/list,
       expect: deny}
"#,
        )
        .unwrap();
        let results: Vec<CaseResult> = t.cases.iter().map(|c| c.run(&authorizer, 0)).collect();
        let outcome: Vec<(&str, bool)> = results.iter().map(|r| (r.name.as_str(), r.passed)).collect();
        assert_eq!(
            outcome,
            [
                ("reads", true),
                ("not /etc", true),
                ("wrong expectation", false),
                ("a task not granted it", true),
                ("lists until 2027", false),
                ("not after", true),
                ("no such action", false),
                ("no such server", false)
            ]
        );
        assert_eq!(results[2].failure.as_deref(), Some("expected allow, policy decided deny"));
        let changes = &results[2].explanation.as_ref().unwrap().changes;
        assert!(changes[0].contains(r#"a token with the scope "files:read""#), "{changes:?}");
        assert_eq!(
            results[4].failure.as_deref(),
            Some("expected to be decided by [readers.0], decided by [readers.1]")
        );
        assert!(results[6].failure.as_deref().unwrap().starts_with("not a request policy can decide"));
        assert_eq!(results[7].failure.as_deref(), Some(r#"the configuration has no McpServer "filez""#));
    }

    #[test]
    fn malformed_tests_are_refused_with_the_path_of_the_mistake() {
        let base = "apiVersion: warden.dev/v1\nkind: PolicyTest\nmetadata: {name: t}\nspec:\n  cases:\n";
        let case = "    - {name: c, server: s, principal: {issuer: i, subject: s}, method: tools/list, expect: allow";
        let err = |extra: &str| test(&format!("{base}{case}{extra}}}\n")).unwrap_err().to_string();
        assert!(err(", expect2: x").contains("unknown field `expect2`"));
        assert!(err(", tool: a, prompt: b").contains("names at most one of tool, resource, prompt"));
        assert!(err(", arguments: [1]").contains("spec.cases[0].arguments"));
        assert!(err(", time: yesterday").contains("RFC 3339"));
        assert!(err(", sourceIp: nowhere").contains("sourceIp"));
        assert!(test(&format!("{base}{case}}}\n")).is_ok());
    }
}
