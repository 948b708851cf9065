//! `Policy`: Cedar policy text scoped to servers, validated against Warden's schema
//! (`schema.cedarschema`) before it is accepted.

use std::sync::{Arc, OnceLock};

use cedar_policy::{PolicySet, Schema, ValidationMode, Validator};
use serde::{Deserialize, Serialize};

use crate::validation::{DocumentError, validate_name};

/// The Cedar schema every policy is validated against; see `schema.cedarschema`.
pub const SCHEMA_TEXT: &str = include_str!("schema.cedarschema");

/// Largest accepted policy text, so one resource cannot balloon every agent's memory.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// The parsed schema, built once.
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA_TEXT).expect("the built-in schema parses");
        schema
    })
}

fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| Validator::new(schema().clone()))
}

/// `spec` of a `Policy`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    /// Names of the `McpServer`s this policy applies to; empty means every server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// One or more Cedar policies.
    pub cedar: String,
    /// Whether the policies decide (`enforce`, the default) or are only tried (`shadow`).
    #[serde(default, skip_serializing_if = "PolicyMode::is_enforce")]
    pub mode: PolicyMode,
    /// The parsed and validated policies, kept from validation so that assembling a
    /// configuration never parses the same text twice.
    #[serde(skip)]
    compiled: Option<Arc<PolicySet>>,
}

impl PartialEq for PolicySpec {
    fn eq(&self, other: &PolicySpec) -> bool {
        self.servers == other.servers && self.cedar == other.cedar && self.mode == other.mode
    }
}

/// How a `Policy` takes part in decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PolicyMode {
    /// It decides requests.
    #[default]
    Enforce,
    /// It is evaluated beside the enforced policies on every request and never changes an
    /// outcome: where the enforced policies together with the shadow ones would decide
    /// otherwise, the decision record says so (`shadow_allow` / `shadow_deny`), so a policy can
    /// be tried on live traffic before it is switched to `enforce`.
    Shadow,
}

impl PolicyMode {
    fn is_enforce(&self) -> bool {
        *self == PolicyMode::Enforce
    }
}

impl PolicySpec {
    pub(crate) fn validate(&mut self) -> Result<(), DocumentError> {
        for (i, name) in self.servers.iter().enumerate() {
            validate_name(name).map_err(|m| DocumentError::field(format!("spec.servers[{i}]"), m))?;
        }
        self.compiled = Some(Arc::new(self.parse()?));
        Ok(())
    }

    /// The validated policies: from validation when this spec went through it, parsed now
    /// otherwise.
    pub fn compiled(&self) -> Result<Arc<PolicySet>, DocumentError> {
        match &self.compiled {
            Some(set) => Ok(set.clone()),
            None => self.parse().map(Arc::new),
        }
    }

    /// Parses and validates the Cedar text.
    pub fn parse(&self) -> Result<PolicySet, DocumentError> {
        if self.cedar.len() > MAX_POLICY_BYTES {
            return Err(DocumentError::field(
                "spec.cedar",
                format!("is {} bytes; the limit is {MAX_POLICY_BYTES}", self.cedar.len()),
            ));
        }
        let set: PolicySet = self.cedar.parse().map_err(|e: cedar_policy::ParseErrors| {
            DocumentError::field("spec.cedar", format!("does not parse: {}", render(&e)))
        })?;
        if set.is_empty() {
            return Err(DocumentError::field("spec.cedar", "holds no policy"));
        }
        let result = validator().validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
            return Err(DocumentError::field(
                "spec.cedar",
                format!("does not validate against the Warden schema: {}", errors.join("; ")),
            ));
        }
        Ok(set)
    }
}

/// Cedar's errors carry the detail in their sources; join them into one line.
fn render(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The scopes a policy says it needs (`@scope("repo:read repo:write")`), when it says so.
pub fn scope_annotation(policy: &cedar_policy::Policy) -> Option<Vec<String>> {
    let scopes: Vec<String> =
        policy.annotation("scope")?.split(' ').filter(|s| !s.is_empty()).map(String::from).collect();
    (!scopes.is_empty()).then_some(scopes)
}

/// Whether `scope` is an OAuth scope token (RFC 6749 §3.3): what may go in a challenge.
pub fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty() && scope.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}
