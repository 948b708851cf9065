//! Per-request authorization: a verified workload, an MCP method and its target, evaluated with
//! Cedar against the policies scoped to the server. Default deny; a `forbid` wins.
//!
//! [`Authorizer`] is compiled once per configuration version (one policy set per server), like
//! the token [`Verifier`](crate::token::Verifier).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;

use cedar_policy::{
    Authorizer as CedarAuthorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet,
    Request, RestrictedExpression,
};

use crate::config::Config;
use crate::policy::schema;
use crate::token::Verified;

/// What is being asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// `tools/call` of this tool.
    Tool(&'a str),
    /// `resources/read` of this URI.
    Resource(&'a str),
    /// `prompts/get` of this prompt.
    Prompt(&'a str),
    /// A list method (`tools/list`, `resources/list`, `prompts/list`): the server itself.
    Server,
}

/// Facts about the request beyond the token.
#[derive(Clone, Debug)]
pub struct RequestFacts<'a> {
    /// The caller's address.
    pub source_ip: IpAddr,
    /// When the request arrived, seconds since the epoch.
    pub now: i64,
    /// Tools granted to a task token (token exchange); empty for others.
    pub granted_tools: &'a [String],
}

/// The outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Allowed only when a `permit` matched and no `forbid` did.
    pub allowed: bool,
    /// Ids (`<Policy resource>.<n>`) of the policies that decided.
    pub policies: Vec<String>,
    /// Policy evaluation errors; any error denies the request (fail closed).
    pub errors: Vec<String>,
}

/// Why a request could not even be put to the policies (a bug or hostile input; deny).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("authorization request not built: {0}")]
pub struct RequestError(String);

/// The policies of one configuration version, per server.
pub struct Authorizer {
    per_server: HashMap<String, PolicySet>,
    resources: HashMap<String, String>,
    cedar: CedarAuthorizer,
}

/// Entity type names, parsed once: parsing a name runs Cedar's parser.
fn type_name(kind: &str) -> EntityTypeName {
    static NAMES: std::sync::OnceLock<HashMap<&'static str, EntityTypeName>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        ["Action", "Issuer", "Workload", "Server", "Tool", "McpResource", "Prompt"]
            .into_iter()
            .map(|k| (k, EntityTypeName::from_str(k).expect("schema type names parse")))
            .collect()
    });
    names.get(kind).cloned().expect("a type of the Warden schema")
}

fn uid(kind: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name(kind), EntityId::new(id))
}

fn string_set(values: impl IntoIterator<Item = String>) -> RestrictedExpression {
    RestrictedExpression::new_set(values.into_iter().map(RestrictedExpression::new_string))
}

fn err(e: impl std::fmt::Display) -> RequestError {
    RequestError(e.to_string())
}

impl Authorizer {
    /// Compiles the per-server policy sets of `config`: a policy with no `servers` applies to all.
    pub fn new(config: &Config) -> Authorizer {
        let mut per_server = HashMap::new();
        for server in config.servers.keys() {
            let mut set = PolicySet::new();
            for (name, policy) in &config.policies {
                if !(policy.servers.is_empty() || policy.servers.contains(server)) {
                    continue;
                }
                for p in config
                    .policy_set
                    .policies()
                    .filter(|p| p.id().to_string().rsplit_once('.').is_some_and(|(resource, _)| resource == name))
                {
                    // Ids are unique across the configuration, so adding cannot clash.
                    let _ = set.add(p.clone());
                }
            }
            per_server.insert(server.clone(), set);
        }
        let resources = config.servers.iter().map(|(n, s)| (n.clone(), s.resource.clone())).collect();
        Authorizer { per_server, resources, cedar: CedarAuthorizer::new() }
    }

    /// Decides whether `workload` may call `method` on `target` of `server`.
    pub fn authorize(
        &self,
        server: &str,
        workload: &Verified,
        method: &str,
        target: Target<'_>,
        facts: &RequestFacts<'_>,
    ) -> Result<Outcome, RequestError> {
        let Some(policies) = self.per_server.get(server) else {
            return Ok(Outcome { allowed: false, policies: Vec::new(), errors: Vec::new() });
        };
        let server_uid = uid("Server", server);
        let resource_uri = self.resources.get(server).cloned().unwrap_or_default();
        let server_entity = Entity::new(
            server_uid.clone(),
            HashMap::from([("resource".to_string(), RestrictedExpression::new_string(resource_uri))]),
            HashSet::new(),
        )
        .map_err(err)?;
        let issuer_uid = uid("Issuer", &workload.issuer);
        let mut attrs = HashMap::from([
            ("issuer".to_string(), RestrictedExpression::new_string(workload.issuer.clone())),
            ("subject".to_string(), RestrictedExpression::new_string(workload.subject.clone())),
            ("scopes".to_string(), string_set(workload.scopes.iter().cloned())),
        ]);
        for claim in ["tenant", "email"] {
            if let Some(v) = workload.claims.get(claim).and_then(|v| v.as_str()) {
                attrs.insert(claim.to_string(), RestrictedExpression::new_string(v.to_string()));
            }
        }
        if let Some(groups) = workload.claims.get("groups").and_then(|v| v.as_array()) {
            attrs.insert("groups".into(), string_set(groups.iter().filter_map(|g| g.as_str().map(String::from))));
        }
        let principal = uid("Workload", &format!("{}/{}", workload.issuer, workload.subject));
        let principal_entity =
            Entity::new(principal.clone(), attrs, HashSet::from([issuer_uid.clone()])).map_err(err)?;
        let issuer_entity = Entity::new_no_attrs(issuer_uid, HashSet::new());

        let (resource, resource_entity) = match target {
            Target::Server => (server_uid.clone(), None),
            Target::Tool(name) => child("Tool", "name", server, name, &server_uid)?,
            Target::Resource(uri) => child("McpResource", "uri", server, uri, &server_uid)?,
            Target::Prompt(name) => child("Prompt", "name", server, name, &server_uid)?,
        };
        // Entities are built here from typed values, so they are not validated against the schema
        // again per request (that costs more than the evaluation); the request itself is.
        let entities = Entities::from_entities(
            [server_entity, principal_entity, issuer_entity].into_iter().chain(resource_entity),
            None,
        )
        .map_err(err)?;

        let mut context = vec![
            ("scopes".to_string(), string_set(workload.scopes.iter().cloned())),
            ("granted_tools".to_string(), string_set(facts.granted_tools.iter().cloned())),
            // Built directly, not parsed from Cedar text: parsing costs tens of µs per request.
            ("source_ip".to_string(), RestrictedExpression::new_ip(facts.source_ip.to_string())),
            ("time".to_string(), RestrictedExpression::new_datetime(iso8601(facts.now))),
        ];
        if let Some(tenant) = workload.claims.get("tenant").and_then(|v| v.as_str()) {
            context.push(("tenant".to_string(), RestrictedExpression::new_string(tenant.to_string())));
        }
        let action = uid("Action", method);
        let context = Context::from_pairs(context).map_err(err)?;
        let request = Request::new(principal, action, resource, context, Some(schema())).map_err(err)?;
        let response = self.cedar.is_authorized(&request, policies, &entities);
        let errors: Vec<String> = response.diagnostics().errors().map(|e| e.to_string()).collect();
        Ok(Outcome {
            // Cedar skips a policy whose evaluation fails; a skipped `forbid` must not turn into
            // an allow, so any evaluation error denies (fail closed).
            allowed: response.decision() == Decision::Allow && errors.is_empty(),
            policies: response.diagnostics().reason().map(|p| p.to_string()).collect(),
            errors,
        })
    }
}

/// A tool, resource or prompt entity, child of its server; its id is `<server>/<name>`.
fn child(
    kind: &str,
    attr: &str,
    server: &str,
    name: &str,
    server_uid: &EntityUid,
) -> Result<(EntityUid, Option<Entity>), RequestError> {
    let id = uid(kind, &format!("{server}/{name}"));
    let entity = Entity::new(
        id.clone(),
        HashMap::from([(attr.to_string(), RestrictedExpression::new_string(name.to_string()))]),
        HashSet::from([server_uid.clone()]),
    )
    .map_err(err)?;
    Ok((id, Some(entity)))
}

/// Seconds since the epoch as `YYYY-MM-DDThh:mm:ssZ`, what Cedar's `datetime()` reads.
fn iso8601(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
#[path = "authorize_tests.rs"]
mod tests;
