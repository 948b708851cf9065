//! Per-request authorization: a verified workload, an MCP method and its target, evaluated with
//! Cedar against the policies scoped to the server. Default deny; a `forbid` wins.
//!
//! [`Authorizer`] is compiled once per configuration version (one policy set per server), like
//! the token [`Verifier`](crate::token::Verifier). What a request is built from is built once
//! and reused: the principal once per workload's claims (kept beside each verified token), the
//! context once per distinct input, the target's entities once per target (bounded caches keyed
//! by a digest of everything each is built from). They are pure functions of their inputs, so
//! reuse cannot change a decision, only skip Cedar's costly construction (text-parsed `ip()` and
//! `datetime()` values, the entities' transitive closure). For the same reason the outcome
//! itself is kept per digest of (principal, server, target, arguments, method, context): Cedar
//! is deterministic, so the same inputs under the same policies decide the same.
//!
//! What no policy of a server reads — the time, the caller's address, a call's arguments — is
//! given one fixed value ([`PolicyReads`]): it cannot change an outcome, and left as it is, a
//! new second (or a new address, or new arguments) would make every request a new context, a
//! new set of entities and a new evaluation.
//!
//! A call's arguments reach policy as the tags of an `Arguments` entity that the context names
//! (`context.arguments.getTag("path")`): Cedar records are closed, so open-ended names need
//! tags, and each value is text (see [`crate::arguments`]).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;

use cedar_policy::{
    Authorizer as CedarAuthorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet,
    Request, RestrictedExpression,
};

use sha2::{Digest, Sha256};

use crate::bounded::BoundedMap;
use crate::config::Config;
use crate::explain::PolicyReads;
use crate::policy::{PolicyMode, schema};
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
    /// The request's arguments (`params.arguments` of `tools/call` and `prompts/get`): a JSON
    /// object with unique names, as [`crate::mcp`] checked it; `None` for none. Read only when a
    /// policy of the server reads them, so not checked again here.
    pub arguments: Option<&'a RawValue>,
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
    /// Denied before policy: a task token asked for a tool its task was not granted.
    pub not_granted: bool,
    /// The outcome under the enforced and the shadow policies together, when the server has
    /// shadow policies and that outcome differs from this one.
    pub shadow: Option<Shadow>,
}

/// What the shadow policies would change about a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shadow {
    /// Whether the request would be allowed.
    pub allowed: bool,
    /// Ids of the policies that would decide.
    pub policies: Vec<String>,
}

impl Shadow {
    /// The record's code: `shadow_allow` or `shadow_deny`.
    pub fn code(&self) -> &'static str {
        if self.allowed { "shadow_allow" } else { "shadow_deny" }
    }
}

/// The action that authorizes a token exchange, per tool requested.
pub const EXCHANGE_ACTION: &str = "token/exchange";

/// Why a request could not even be put to the policies (a bug or hostile input; deny).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("authorization request not built: {0}")]
pub struct RequestError(String);

/// The policies of one configuration version, per server.
pub struct Authorizer {
    per_server: HashMap<String, ServerPolicies>,
    readings: Readings,
    cedar: CedarAuthorizer,
    /// Principals by a digest of the claims they are built from, for a workload's next token
    /// (each verified token keeps its own beside it; these are the same, shared).
    principals: Mutex<BoundedMap<[u8; 32], Arc<Principal>>>,
    /// Contexts by a digest of their inputs (scopes, granted tools, tenant, and the address and
    /// second when a policy reads them).
    contexts: Mutex<BoundedMap<[u8; 32], Context>>,
    /// Cedar `ip()` values by address and `datetime()` values by second, for the contexts:
    /// making either runs Cedar's parser on the extension's name, which costs more than
    /// evaluating most policies, and a new second needs new contexts for every caller.
    ips: Mutex<BoundedMap<IpAddr, RestrictedExpression>>,
    times: Mutex<BoundedMap<i64, RestrictedExpression>>,
    /// The entities of a (server, target), by digest, and the target's uid: the server, the
    /// target (a child of the server) and an empty `Arguments`. A request's principal (and its
    /// arguments, when a policy reads them) joins a copy. Building the set computes a transitive
    /// closure, which costs more than evaluating the policies; the copy shares the entities,
    /// and its closure is repaired for the principal alone. (A set per principal and target
    /// would save that too, but Cedar's entity sets take kilobytes each: ~6 KiB per caller and
    /// target, measured with the `caller_memory` example.)
    targets: Mutex<BoundedMap<[u8; 32], TargetEntities>>,
    /// Outcomes by a digest of every input of the evaluation.
    outcomes: Mutex<BoundedMap<[u8; 32], Outcome>>,
}

/// A target's entity set (see [`Authorizer::targets`]) and the target's uid.
type TargetEntities = (Arc<Entities>, EntityUid);

/// One server's policies and its entity.
pub(crate) struct ServerPolicies {
    /// The enforced policies.
    pub(crate) set: PolicySet,
    /// The enforced and the shadow policies together, when any shadow policy applies.
    pub(crate) shadow: Option<PolicySet>,
    uid: EntityUid,
    entity: Entity,
    /// What the enforced policies read beyond principal, action and resource, and what the
    /// enforced and shadow policies together do: found when first asked for (by the first
    /// request, or a replay), not when the configuration is applied, since finding out parses
    /// each policy's text again.
    reads: std::sync::OnceLock<PolicyReads>,
    evaluated_reads: std::sync::OnceLock<PolicyReads>,
    /// The enforced policies that say which scopes they need (`@scope("a b")`), by id.
    step_ups: Vec<(String, Vec<String>)>,
}

impl ServerPolicies {
    /// What the enforced policies read (the enforced policies decide; a replay judges only
    /// what they decide).
    fn reads(&self, readings: &Readings) -> PolicyReads {
        *self.reads.get_or_init(|| readings.any(self.set.policies()))
    }

    /// What the policies evaluated for a request read: the enforced ones, and the shadow ones
    /// when there are any (the shadow set holds the enforced policies too).
    fn evaluated_reads(&self, readings: &Readings) -> PolicyReads {
        match &self.shadow {
            None => self.reads(readings),
            Some(shadow) => *self.evaluated_reads.get_or_init(|| readings.any(shadow.policies())),
        }
    }
}

/// What each policy reads, found when first asked for and once per configuration however many
/// servers the policy applies to: finding out parses the policy's text again.
#[derive(Default)]
struct Readings(Mutex<HashMap<cedar_policy::PolicyId, PolicyReads>>);

impl Readings {
    /// What any of `policies` reads.
    fn any<'a>(&self, policies: impl Iterator<Item = &'a cedar_policy::Policy>) -> PolicyReads {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        policies
            .map(|p| *known.entry(p.id().clone()).or_insert_with(|| PolicyReads::of(p)))
            .fold(PolicyReads::default(), PolicyReads::or)
    }
}

/// One evaluation's parts, for [`crate::explain`] to ask Cedar about parts of policies.
pub(crate) struct Evaluation<'a> {
    pub(crate) cedar: &'a CedarAuthorizer,
    pub(crate) policies: &'a ServerPolicies,
    pub(crate) request: Request,
    pub(crate) entities: Arc<Entities>,
}

/// A workload as Cedar sees it, built once per distinct set of the claims it is built from.
pub(crate) struct Principal {
    /// Digest of the claims it was built from.
    key: [u8; 32],
    uid: EntityUid,
    /// The workload (a child of its issuer).
    entity: Entity,
    /// Its issuer's uid: the issuer's entity (no attributes) is made per request, not kept, as
    /// every entity Cedar holds takes a kilobyte or more.
    issuer: EntityUid,
}

/// Entries each of the caches above keeps per configuration version (but outcomes).
pub const CACHE_ENTRIES: usize = 4096;

/// Outcomes kept per configuration version: a few hundred bytes each, so enough for ten
/// thousand callers each using a few tools, whose repeated requests are then not evaluated
/// again (when no policy reads the time, a caller's same call decides the same all day).
pub const OUTCOME_ENTRIES: usize = 32_768;

/// SHA-256 over length-prefixed fields, so no two distinct inputs encode alike.
fn digest<'a>(fields: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for field in fields {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field);
    }
    h.finalize().into()
}

fn cached<K: std::hash::Hash + Eq + Clone, V: Clone>(
    cache: &Mutex<BoundedMap<K, V>>,
    key: K,
    build: impl FnOnce() -> Result<V, RequestError>,
) -> Result<V, RequestError> {
    if let Some(hit) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(hit.clone());
    }
    let value = build()?;
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, value.clone());
    Ok(value)
}

/// Entity type names, parsed once: parsing a name runs Cedar's parser.
fn type_name(kind: &str) -> EntityTypeName {
    static NAMES: std::sync::OnceLock<HashMap<&'static str, EntityTypeName>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        ["Action", "Issuer", "Workload", "Server", "Tool", "McpResource", "Prompt", "Arguments"]
            .into_iter()
            .map(|k| (k, EntityTypeName::from_str(k).expect("schema type names parse")))
            .collect()
    });
    names.get(kind).cloned().expect("a type of the Warden schema")
}

fn uid(kind: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name(kind), EntityId::new(id))
}

/// The one `Arguments` entity of every request (each request is evaluated with its own set).
fn arguments_uid() -> EntityUid {
    uid("Arguments", "")
}

/// The `Arguments` entity: one tag per argument, as [`crate::arguments::tags`] reads them.
fn arguments_entity(arguments: Option<&RawValue>) -> Result<Entity, RequestError> {
    // The count was bounded when the body was read.
    let tags = arguments.map(|a| crate::arguments::tags(a, usize::MAX)).transpose().map_err(err)?.unwrap_or_default();
    let tags: HashMap<_, _> =
        tags.into_iter().map(|(name, text)| (name, RestrictedExpression::new_string(text))).collect();
    Entity::new_with_tags(arguments_uid(), HashMap::new(), HashSet::new(), tags).map_err(err)
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
        // The compiled policies by the `Policy` resource that holds them (ids are
        // `<Policy name>.<n>`), grouped once rather than searched per server and resource.
        let mut by_resource: HashMap<String, Vec<&cedar_policy::Policy>> = HashMap::new();
        for p in config.policy_set.policies() {
            if let Some((resource, _)) = p.id().to_string().rsplit_once('.') {
                by_resource.entry(resource.to_string()).or_default().push(p);
            }
        }
        let mut per_server = HashMap::new();
        for (server, spec) in &config.servers {
            let (mut set, mut shadow) = (PolicySet::new(), PolicySet::new());
            let mut shadowed = false;
            for (name, policy) in &config.policies {
                if !(policy.servers.is_empty() || policy.servers.contains(server)) {
                    continue;
                }
                let enforced = policy.mode == PolicyMode::Enforce;
                shadowed |= !enforced;
                for p in by_resource.get(name).into_iter().flatten() {
                    // Ids are unique across the configuration, so adding cannot clash.
                    if enforced {
                        let _ = set.add((*p).clone());
                    }
                    let _ = shadow.add((*p).clone());
                }
            }
            let shadow = shadowed.then_some(shadow);
            let uid = uid("Server", server);
            let attrs =
                HashMap::from([("resource".to_string(), RestrictedExpression::new_string(spec.resource.clone()))]);
            let Ok(entity) = Entity::new(uid.clone(), attrs, HashSet::new()) else {
                // A string attribute always evaluates; without an entity the server denies all.
                continue;
            };
            let step_ups = set
                .policies()
                .filter_map(|p| Some((p.id().to_string(), crate::policy::scope_annotation(p)?)))
                .collect();
            per_server.insert(
                server.clone(),
                ServerPolicies {
                    set,
                    shadow,
                    uid,
                    entity,
                    reads: Default::default(),
                    evaluated_reads: Default::default(),
                    step_ups,
                },
            );
        }
        Authorizer {
            per_server,
            readings: Readings::default(),
            cedar: CedarAuthorizer::new(),
            principals: Mutex::new(BoundedMap::new(CACHE_ENTRIES)),
            contexts: Mutex::new(BoundedMap::new(CACHE_ENTRIES)),
            ips: Mutex::new(BoundedMap::new(CACHE_ENTRIES)),
            // Requests are decided at the current second, give or take a few.
            times: Mutex::new(BoundedMap::new(16)),
            targets: Mutex::new(BoundedMap::new(CACHE_ENTRIES)),
            outcomes: Mutex::new(BoundedMap::new(OUTCOME_ENTRIES)),
        }
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
            return Ok(Outcome {
                allowed: false,
                policies: Vec::new(),
                errors: Vec::new(),
                not_granted: false,
                shadow: None,
            });
        };
        // A task token carries the only tools its task may call, whatever else policy allows the
        // workload (the exchange that granted them was itself put to policy). It grants no
        // resource or prompt at all (nor their completions or subscriptions): a task is as
        // narrow as what was exchanged for it, on every method.
        let granted = |tool: &str| workload.task.as_ref().is_none_or(|t| t.tools.iter().any(|g| g == tool));
        let not_granted = match target {
            Target::Tool(tool) => !granted(tool),
            Target::Resource(_) | Target::Prompt(_) => workload.task.is_some(),
            Target::Server => false,
        };
        if not_granted {
            return Ok(Outcome {
                allowed: false,
                policies: Vec::new(),
                errors: Vec::new(),
                not_granted: true,
                shadow: None,
            });
        }
        let reads = policies.evaluated_reads(&self.readings);
        let principal = principal(&self.principals, workload)?;
        let (kind, _, name) = target_parts(target);
        let context_key = context_key(workload, facts, reads);
        // The arguments as sent, when a policy reads them: the same text decides the same (and
        // is parsed only then).
        let arguments = facts.arguments.filter(|_| reads.arguments).map_or(&[0xff][..], |a| a.get().as_bytes());
        let outcome_key = digest([
            &principal.key[..],
            server.as_bytes(),
            kind.as_bytes(),
            name.as_bytes(),
            &context_key[..],
            method.as_bytes(),
            arguments,
        ]);
        // Cedar is deterministic: the same request under the same policies decides the same.
        cached(&self.outcomes, outcome_key, || {
            let (request, entities) =
                self.request(policies, &principal, server, method, target, context_key, workload, facts, reads)?;
            let evaluate = |set: &PolicySet| {
                let response = self.cedar.is_authorized(&request, set, &entities);
                let errors: Vec<String> = response.diagnostics().errors().map(|e| e.to_string()).collect();
                // Cedar skips a policy whose evaluation fails; a skipped `forbid` must not turn
                // into an allow, so any evaluation error denies (fail closed).
                let allowed = response.decision() == Decision::Allow && errors.is_empty();
                (allowed, response.diagnostics().reason().map(|p| p.to_string()).collect::<Vec<_>>(), errors)
            };
            let (allowed, decided, errors) = evaluate(&policies.set);
            let shadow = policies.shadow.as_ref().and_then(|set| {
                let (shadow_allowed, shadow_decided, _) = evaluate(set);
                (shadow_allowed != allowed).then_some(Shadow { allowed: shadow_allowed, policies: shadow_decided })
            });
            Ok(Outcome { allowed, policies: decided, errors, not_granted: false, shadow })
        })
    }

    /// For a request policy denied (`denied_by`: the policies that denied it, the matching
    /// `forbid`s): the scopes that would allow it, when policies say which scopes they need
    /// (`@scope("…")`) and `workload` with them is allowed. Those named by the permits that would
    /// then allow it and by the forbids that denied it, when they are enough; else every
    /// annotated one it lacks. What MCP clients turn into a step-up authorization (`403
    /// insufficient_scope`); advisory only: the request stays refused.
    pub fn step_up(
        &self,
        server: &str,
        workload: &Verified,
        method: &str,
        target: Target<'_>,
        facts: &RequestFacts<'_>,
        denied_by: &[String],
    ) -> Option<Vec<String>> {
        let policies = self.per_server.get(server)?;
        let lacks = |scope: &&String| !workload.scopes.contains(scope);
        // In the order the policies name them, each once.
        let distinct = |scopes: &mut Vec<&String>| {
            let mut seen = std::collections::HashSet::new();
            scopes.retain(|s| seen.insert(*s));
        };
        let mut missing: Vec<&String> = policies.step_ups.iter().flat_map(|(_, scopes)| scopes).filter(lacks).collect();
        distinct(&mut missing);
        if missing.is_empty() {
            return None;
        }
        let allows = |scopes: &[&String]| {
            let mut raised = workload.clone();
            raised.scopes.extend(scopes.iter().map(|s| s.to_string()));
            self.authorize(server, &raised, method, target, facts).ok().filter(|o| o.allowed)
        };
        let outcome = allows(&missing)?;
        let mut decided: Vec<&String> = policies
            .step_ups
            .iter()
            .filter(|(id, _)| outcome.policies.contains(id) || denied_by.contains(id))
            .flat_map(|(_, scopes)| scopes)
            .filter(lacks)
            .collect();
        distinct(&mut decided);
        let needed = if !decided.is_empty() && allows(&decided).is_some() { decided } else { missing };
        Some(needed.into_iter().cloned().collect())
    }

    /// The Cedar request and entities of one evaluation.
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        policies: &ServerPolicies,
        principal: &Principal,
        server: &str,
        method: &str,
        target: Target<'_>,
        context_key: [u8; 32],
        workload: &Verified,
        facts: &RequestFacts<'_>,
        reads: PolicyReads,
    ) -> Result<(Request, Arc<Entities>), RequestError> {
        let (kind, attr, name) = target_parts(target);
        let key = digest([server.as_bytes(), kind.as_bytes(), name.as_bytes()]);
        let (base, resource) = cached(&self.targets, key, || {
            let resource = if kind == "Server" { policies.uid.clone() } else { uid(kind, &format!("{server}/{name}")) };
            let child = (kind != "Server")
                .then(|| {
                    let attrs = HashMap::from([(attr.to_string(), RestrictedExpression::new_string(name.to_string()))]);
                    Entity::new(resource.clone(), attrs, HashSet::from([policies.uid.clone()])).map_err(err)
                })
                .transpose()?;
            // With no arguments; a call's own are put in below. Built here from typed values,
            // so not validated against the schema again.
            let arguments = arguments_entity(None)?;
            let all = [policies.entity.clone(), arguments].into_iter().chain(child);
            Ok((Arc::new(Entities::from_entities(all, None).map_err(err)?), resource))
        })?;
        // The principal's entities (the workload and its issuer) and the call's `Arguments`
        // (replacing the empty one; no parents, no children) join a copy of the target's.
        let arguments = facts.arguments.filter(|_| reads.arguments).map(|a| arguments_entity(Some(a))).transpose()?;
        let entities = Entities::clone(&base)
            .upsert_entities(
                [principal.entity.clone(), Entity::new_no_attrs(principal.issuer.clone(), HashSet::new())]
                    .into_iter()
                    .chain(arguments),
                None,
            )
            .map_err(err)?;
        let context = self.context(context_key, workload, facts, reads)?;
        let action = uid("Action", method);
        // The method and the target come from the caller, so they are checked in every build:
        // a method the schema does not know, or applies to another kind of resource, would
        // otherwise reach release builds' policies unvalidated (an unscoped `permit` allows it).
        let applies =
            schema().resources_for_action(&action).is_some_and(|mut kinds| kinds.any(|k| *k == type_name(kind)));
        if !applies {
            return Err(RequestError(format!("{method:?} is not an action on a {kind}")));
        }
        // Principal, resource and context are built to the schema's types right here; tests (debug
        // builds) validate every request against the schema, release builds skip the cost.
        let schema = if cfg!(debug_assertions) { Some(schema()) } else { None };
        let request = Request::new(principal.uid.clone(), action, resource, context, schema).map_err(err)?;
        Ok((request, Arc::new(entities)))
    }

    /// Whether an enforced policy of `server` reads `context.time`, `context.source_ip`.
    #[cfg(test)]
    pub(crate) fn reads_time_and_address(&self, server: &str) -> (bool, bool) {
        self.per_server.get(server).map_or((false, false), |p| {
            let reads = p.reads(&self.readings);
            (reads.time, reads.source_ip)
        })
    }

    /// Whether the server has policies in this configuration.
    pub fn serves(&self, server: &str) -> bool {
        self.per_server.contains_key(server)
    }

    /// Whether an enforced policy of `server` reads a call's arguments (which records never keep: a
    /// recorded call with arguments cannot be replayed against them).
    pub fn reads_arguments(&self, server: &str) -> bool {
        self.per_server.get(server).is_some_and(|p| p.reads(&self.readings).arguments)
    }

    /// The Cedar authorizer, the server's policies, and the request and entities of one
    /// evaluation (for [`crate::explain`]); `None` for a server with no policies.
    pub(crate) fn evaluation(
        &self,
        server: &str,
        workload: &Verified,
        method: &str,
        target: Target<'_>,
        facts: &RequestFacts<'_>,
    ) -> Result<Option<Evaluation<'_>>, RequestError> {
        let Some(policies) = self.per_server.get(server) else { return Ok(None) };
        let principal = principal(&self.principals, workload)?;
        // Explained as it was: every fact as the request had it.
        let reads = PolicyReads::ALL;
        let context_key = context_key(workload, facts, reads);
        let (request, entities) =
            self.request(policies, &principal, server, method, target, context_key, workload, facts, reads)?;
        Ok(Some(Evaluation { cedar: &self.cedar, policies, request, entities }))
    }

    /// The request context, built once per distinct input: Cedar parses `ip()` and
    /// `datetime()` values from text, which costs more than most evaluations.
    fn context(
        &self,
        key: [u8; 32],
        workload: &Verified,
        facts: &RequestFacts<'_>,
        reads: PolicyReads,
    ) -> Result<Context, RequestError> {
        let tenant = workload.claims.get("tenant").and_then(|v| v.as_str());
        cached(&self.contexts, key, || {
            // Built directly, not parsed from Cedar text: parsing costs tens of µs. A dual-stack
            // listener sees IPv4 callers as IPv4-mapped IPv6 (`::ffff:10.1.2.3`), which Cedar's
            // `ip()` refuses: policy sees the IPv4 address it stands for.
            let (source_ip, now) = fixed_unless_read(facts, reads);
            let source_ip = source_ip.to_canonical();
            let ip = cached(&self.ips, source_ip, || Ok(RestrictedExpression::new_ip(source_ip.to_string())))?;
            let time = cached(&self.times, now, || Ok(RestrictedExpression::new_datetime(iso8601(now))))?;
            let mut pairs = vec![
                ("scopes".to_string(), string_set(workload.scopes.iter().cloned())),
                ("granted_tools".to_string(), string_set(facts.granted_tools.iter().cloned())),
                ("source_ip".to_string(), ip),
                ("time".to_string(), time),
                ("arguments".to_string(), RestrictedExpression::new_entity_uid(arguments_uid())),
            ];
            if let Some(tenant) = tenant {
                pairs.push(("tenant".to_string(), RestrictedExpression::new_string(tenant.to_string())));
            }
            Context::from_pairs(pairs).map_err(err)
        })
    }
}

/// The workload's entities, kept beside each verified token and shared by a workload's tokens
/// while remembered (built once per distinct set of the claims they carry).
fn principal(
    principals: &Mutex<BoundedMap<[u8; 32], Arc<Principal>>>,
    workload: &Verified,
) -> Result<Arc<Principal>, RequestError> {
    let claim = |name| workload.claims.get(name).and_then(|v: &serde_json::Value| v.as_str());
    let (tenant, email) = (claim("tenant"), claim("email"));
    let groups: Option<Vec<&str>> =
        workload.claims.get("groups").and_then(|v| v.as_array()).map(|g| g.iter().filter_map(|g| g.as_str()).collect());
    let counts = [workload.scopes.len() as u64, groups.as_ref().map_or(u64::MAX, |g| g.len() as u64)];
    let counts: Vec<[u8; 8]> = counts.iter().map(|n| n.to_le_bytes()).collect();
    let absent: &[u8] = &[0xff];
    let issuer = workload.principal_issuer();
    let key = digest(
        [issuer.as_bytes(), workload.subject.as_bytes(), &counts[0]]
            .into_iter()
            .chain(workload.scopes.iter().map(|s| s.as_bytes()))
            .chain([tenant.map_or(absent, str::as_bytes), email.map_or(absent, str::as_bytes), &counts[1]])
            .chain(groups.iter().flatten().map(|g| g.as_bytes())),
    );
    // The key is computed every time (one SHA-256 of a few fields, far cheaper than the entity):
    // a `Verified` changed after use must not be decided as it was.
    if let Some(built) = workload.derived.principal.get().filter(|p| p.key == key) {
        return Ok(built.clone());
    }
    // Another token of the same workload (a rotated one, a bridge's key): the same principal.
    let built = cached(principals, key, || {
        let issuer_uid = uid("Issuer", issuer);
        let mut attrs = HashMap::from([
            ("issuer".to_string(), RestrictedExpression::new_string(issuer.to_string())),
            ("subject".to_string(), RestrictedExpression::new_string(workload.subject.clone())),
            ("scopes".to_string(), string_set(workload.scopes.iter().cloned())),
        ]);
        for (name, value) in [("tenant", tenant), ("email", email)] {
            if let Some(v) = value {
                attrs.insert(name.to_string(), RestrictedExpression::new_string(v.to_string()));
            }
        }
        if let Some(groups) = &groups {
            attrs.insert("groups".into(), string_set(groups.iter().map(|g| g.to_string())));
        }
        let principal = uid("Workload", &format!("{issuer}/{}", workload.subject));
        let entity = Entity::new(principal.clone(), attrs, HashSet::from([issuer_uid.clone()])).map_err(err)?;
        Ok(Arc::new(Principal { key, uid: principal, entity, issuer: issuer_uid }))
    })?;
    // Kept unless another is kept already (a changed `Verified`: not kept, built per use).
    Ok(workload.derived.principal.get_or_init(|| built.clone()).clone())
        .map(|kept| if kept.key == key { kept } else { built })
}

/// The entity type of a target, its naming attribute and its name.
fn target_parts(target: Target<'_>) -> (&'static str, &'static str, &str) {
    match target {
        Target::Server => ("Server", "", ""),
        Target::Tool(name) => ("Tool", "name", name),
        Target::Resource(uri) => ("McpResource", "uri", uri),
        Target::Prompt(name) => ("Prompt", "name", name),
    }
}

/// The caller's address and the time as the context holds them: as they are when a policy reads
/// them, else one fixed value (the unspecified address, the epoch).
fn fixed_unless_read(facts: &RequestFacts<'_>, reads: PolicyReads) -> (IpAddr, i64) {
    (if reads.source_ip { facts.source_ip } else { IpAddr::from([0, 0, 0, 0]) }, if reads.time { facts.now } else { 0 })
}

/// The digest of everything the request context is built from (scopes, granted tools, tenant,
/// address, second).
fn context_key(workload: &Verified, facts: &RequestFacts<'_>, reads: PolicyReads) -> [u8; 32] {
    let tenant = workload.claims.get("tenant").and_then(|v| v.as_str());
    let (source_ip, now) = fixed_unless_read(facts, reads);
    let ip = match source_ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let counts = [workload.scopes.len() as u64, facts.granted_tools.len() as u64].map(u64::to_le_bytes);
    let now = now.to_le_bytes();
    let absent: &[u8] = &[0xff];
    digest(
        [&counts[0][..]]
            .into_iter()
            .chain(workload.scopes.iter().map(|s| s.as_bytes()))
            .chain([&counts[1][..]])
            .chain(facts.granted_tools.iter().map(|s| s.as_bytes()))
            .chain([tenant.map_or(absent, str::as_bytes), &ip, &now]),
    )
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
