//! Why a request was allowed or denied, policy by policy and condition by condition, and for a
//! refusal the smallest changes that would allow it.
//!
//! Cedar says which policies decided, not which of their conditions held. Each policy is
//! therefore evaluated again in parts, by Cedar itself: its scope (principal, action, resource)
//! alone, and each condition alone (a `when` split at its top-level `&&`s, so each conjunct an
//! author wrote is its own line). A part is asked as a policy of its own that permits exactly
//! when the part is satisfied, so what is reported is what Cedar evaluates, not a reading of
//! the text. The suggestions recognise the shapes policies usually take (a scope the token
//! lacks, a tool missing from a list, a group) and otherwise name the condition that failed.

use cedar_policy::{Decision, Effect, Policy, PolicyId, PolicySet};
use serde_json::{Value, json};

use crate::authorize::{Authorizer, Outcome, RequestError, RequestFacts, Target};
use crate::token::Verified;

/// Whether a part of a policy held for the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Held,
    Failed,
    /// Cedar never evaluates it for this request: an earlier conjunct of its `when` (a guard
    /// such as `principal has groups`) is false, and alone it would not evaluate.
    NotReached,
    /// Evaluating it failed (an attribute missing, a type error): the policy is skipped, and
    /// any error denies the request.
    Error(String),
}

impl Check {
    pub fn as_str(&self) -> &str {
        match self {
            Check::Held => "held",
            Check::Failed => "failed",
            Check::NotReached => "not reached",
            Check::Error(_) => "error",
        }
    }
}

/// One condition of a policy (a `when` conjunct or an `unless`), as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    /// The condition as Cedar text, with `unless ` before an `unless` clause.
    pub text: String,
    pub check: Check,
    /// What would make it hold, when its shape says so.
    pub fix: Option<String>,
}

/// How one policy read the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    /// `<Policy name>.<n>`.
    pub id: String,
    /// `permit` or `forbid`.
    pub forbid: bool,
    /// A `mode: shadow` policy: evaluated beside the enforced ones, never deciding.
    pub shadow: bool,
    /// The scope as written (`permit(principal, action == …, resource in …)`).
    pub scope: String,
    pub scope_check: Check,
    pub clauses: Vec<Clause>,
}

impl Reading {
    /// Scope and every condition held: the policy applies to the request.
    pub fn matched(&self) -> bool {
        self.scope_check == Check::Held && self.clauses.iter().all(|c| c.check == Check::Held)
    }

    /// The parts that did not hold.
    fn failures(&self) -> usize {
        usize::from(self.scope_check != Check::Held) + self.clauses.iter().filter(|c| c.check != Check::Held).count()
    }
}

/// Why a request was decided as it was.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub outcome: Outcome,
    /// Every policy of the server (the enforced first, then the shadow ones).
    pub readings: Vec<Reading>,
    /// For a refusal: the smallest changes that would allow the request, most likely first.
    pub changes: Vec<String>,
}

/// Explains how `authorizer` decides `method` on `target` of `server` for `workload`.
pub fn explain(
    authorizer: &Authorizer,
    server: &str,
    workload: &Verified,
    method: &str,
    target: Target<'_>,
    facts: &RequestFacts<'_>,
) -> Result<Explanation, RequestError> {
    let outcome = authorizer.authorize(server, workload, method, target, facts)?;
    let mut readings = Vec::new();
    if let Some(evaluation) = authorizer.evaluation(server, workload, method, target, facts)? {
        let (cedar, policies) = (evaluation.cedar, evaluation.policies);
        let (request, entities) = (&evaluation.request, &evaluation.entities);
        let ask = |policy: Policy| {
            let mut set = PolicySet::new();
            if set.add(policy).is_err() {
                return Check::Error("the part could not be evaluated alone".into());
            }
            let response = cedar.is_authorized(request, &set, entities);
            match response.diagnostics().errors().next() {
                Some(e) => Check::Error(e.to_string()),
                None if response.decision() == Decision::Allow => Check::Held,
                None => Check::Failed,
            }
        };
        let enforced: Vec<&Policy> = policies.set.policies().collect();
        let shadow: Vec<&Policy> = policies
            .shadow
            .iter()
            .flat_map(|s| s.policies())
            .filter(|p| policies.set.policy(p.id()).is_none())
            .collect();
        for (policy, is_shadow) in enforced.iter().map(|p| (*p, false)).chain(shadow.iter().map(|p| (*p, true))) {
            readings.push(read(policy, is_shadow, &ask, target));
        }
    }
    readings.sort_by(|a, b| (a.shadow, &a.id).cmp(&(b.shadow, &b.id)));
    let changes = if outcome.allowed { Vec::new() } else { changes(&outcome, &readings, workload, target) };
    Ok(Explanation { outcome, readings, changes })
}

/// Reads one policy part by part.
fn read(policy: &Policy, shadow: bool, ask: &dyn Fn(Policy) -> Check, target: Target<'_>) -> Reading {
    let id = policy.id().to_string();
    let forbid = policy.effect() == Effect::Forbid;
    let unreadable = |why: &str| Reading {
        id: id.clone(),
        forbid,
        shadow,
        scope: String::new(),
        scope_check: Check::Error(why.into()),
        clauses: Vec::new(),
    };
    let Ok(est) = policy.to_json() else { return unreadable("the policy cannot be read back") };
    let part = |principal: &Value, action: &Value, resource: &Value, conditions: Value| {
        let mut json = json!({"effect": "permit", "principal": principal, "action": action, "resource": resource,
            "conditions": conditions});
        if let Some(o) = json.as_object_mut() {
            o.insert("annotations".into(), json!({}));
        }
        Policy::from_json(Some(PolicyId::new("part")), json).ok()
    };
    let all = json!({"op": "All"});
    let (principal, action, resource) = (&est["principal"], &est["action"], &est["resource"]);
    let scope_check = part(principal, action, resource, json!([])).map_or(Check::Error("unreadable".into()), ask);
    let scope = match Policy::from_json(
        Some(PolicyId::new("scope")),
        json!({"effect": if forbid {"forbid"} else {"permit"}, "principal": principal, "action": action,
            "resource": resource, "conditions": []}),
    ) {
        Ok(p) => one_line(p.to_cedar().unwrap_or_default().trim_end_matches(';')),
        Err(_) => String::new(),
    };
    let mut clauses = Vec::new();
    for condition in est["conditions"].as_array().into_iter().flatten() {
        let unless = condition["kind"] == "unless";
        // A `when` is each of its conjuncts; an `unless` holds only as a whole.
        let pieces = if unless { vec![&condition["body"]] } else { conjuncts(&condition["body"]) };
        for (i, body) in pieces.iter().copied().enumerate() {
            let kind = if unless { "unless" } else { "when" };
            let (Some(p), Some(shown)) = (
                part(&all, &all, &all, json!([{"kind": kind, "body": body}])),
                part(&all, &all, &all, json!([{"kind": "when", "body": body}])),
            ) else {
                clauses.push(Clause { text: "?".into(), check: Check::Error("unreadable".into()), fix: None });
                continue;
            };
            let text = condition_text(&shown);
            let mut check = ask(p);
            if matches!(check, Check::Error(_)) && i > 0 {
                // Alone it fails to evaluate; Cedar evaluates `&&` left to right and stops at
                // the first false, so with the conjuncts before it, it may never be reached.
                let prefix = pieces[..=i]
                    .iter()
                    .copied()
                    .cloned()
                    .reduce(|left, right| json!({"&&": {"left": left, "right": right}}));
                if let Some(p) = prefix.and_then(|b| part(&all, &all, &all, json!([{"kind": "when", "body": b}])))
                    && ask(p) == Check::Failed
                {
                    check = Check::NotReached;
                }
            }
            // What would make it hold; of a forbid, that would be how to be refused.
            let fix = if check == Check::Held || unless || forbid { None } else { fix(body, target) };
            clauses.push(Clause { text: if unless { format!("unless {text}") } else { text }, check, fix });
        }
    }
    Reading { id, forbid, shadow, scope, scope_check, clauses }
}

/// The top-level conjuncts of a condition body, left to right.
fn conjuncts(body: &Value) -> Vec<&Value> {
    match body.get("&&") {
        Some(and) => {
            let mut out = conjuncts(&and["left"]);
            out.extend(conjuncts(&and["right"]));
            out
        }
        None => vec![body],
    }
}

/// The condition of a one-condition policy, as Cedar prints it.
fn condition_text(policy: &Policy) -> String {
    let text = policy.to_cedar().unwrap_or_default();
    let body = ["when", "unless"]
        .iter()
        .filter_map(|kw| text.find(&format!("{kw} {{")).map(|at| &text[at + kw.len() + 2..]))
        .next()
        .unwrap_or(&text);
    let body = body.trim_end().trim_end_matches(';').trim_end().trim_end_matches('}');
    one_line(body)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").replace("( ", "(").replace(" )", ")")
}

/// An attribute of a variable: `{".": {"left": {"Var": var}, "attr": attr}}`.
fn attribute(expr: &Value) -> Option<(&str, &str)> {
    let dot = expr.get(".")?;
    Some((dot["left"].get("Var")?.as_str()?, dot["attr"].as_str()?))
}

fn string_literal(expr: &Value) -> Option<&str> {
    expr.get("Value")?.as_str()
}

fn string_set(expr: &Value) -> Option<Vec<&str>> {
    expr.get("Set")?.as_array()?.iter().map(string_literal).collect()
}

/// What would make a failed condition of these common shapes hold.
fn fix(body: &Value, target: Target<'_>) -> Option<String> {
    let scopes = |e: &Value| matches!(attribute(e), Some(("principal" | "context", "scopes")));
    let groups = |e: &Value| matches!(attribute(e), Some(("principal", "groups")));
    let quoted = |items: &[&str]| items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ");
    if let Some(c) = body.get("contains") {
        let (left, right) = (&c["left"], &c["right"]);
        if let Some(value) = string_literal(right) {
            if scopes(left) {
                return Some(format!("a token with the scope {value:?}"));
            }
            if groups(left) {
                return Some(format!("a caller in the group {value:?}"));
            }
        }
        if let (Some(list), Some(("resource", "name" | "uri"))) = (string_set(left), attribute(right)) {
            let name = match target {
                Target::Tool(n) | Target::Prompt(n) | Target::Resource(n) => n,
                Target::Server => return None,
            };
            if !list.contains(&name) {
                return Some(format!("{name:?} added to the list [{}]", quoted(&list)));
            }
        }
    }
    for (op, how) in [("containsAll", "all of"), ("containsAny", "one of")] {
        if let Some(c) = body.get(op)
            && let Some(list) = string_set(&c["right"])
        {
            if scopes(&c["left"]) {
                return Some(format!("a token with {how} the scopes {}", quoted(&list)));
            }
            if groups(&c["left"]) {
                return Some(format!("a caller in {how} the groups {}", quoted(&list)));
            }
        }
    }
    if let Some(eq) = body.get("==")
        && let (Some((var @ ("principal" | "context"), attr)), Some(value)) =
            (attribute(&eq["left"]), string_literal(&eq["right"]))
    {
        return Some(format!("{var}.{attr} equal to {value:?}"));
    }
    None
}

/// The smallest changes that would allow a refused request.
fn changes(outcome: &Outcome, readings: &[Reading], workload: &Verified, target: Target<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if outcome.not_granted {
        let granted = workload.task.as_ref().map(|t| t.tools.join(", ")).unwrap_or_default();
        out.push(match target {
            Target::Tool(tool) => format!(
                "the task token grants only [{granted}]: exchange for a task token that grants {tool:?} \
                 (and a policy permitting token/exchange of it)"
            ),
            _ => "a task token grants tools only: call with the workload's own token".to_string(),
        });
        return out;
    }
    let enforced = || readings.iter().filter(|r| !r.shadow);
    // Only errors Cedar met deciding the request (not those of a part asked alone).
    if !outcome.errors.is_empty() {
        for r in enforced().filter(|r| r.scope_check == Check::Held) {
            for c in &r.clauses {
                if let Check::Error(e) = &c.check {
                    out.push(format!("{} fails to evaluate `{}` ({e}): any evaluation error denies", r.id, c.text));
                }
            }
        }
    }
    for forbid in enforced().filter(|r| r.forbid && r.matched()) {
        let held: Vec<&str> = forbid.clauses.iter().map(|c| c.text.as_str()).collect();
        out.push(if held.is_empty() {
            format!("{} forbids every request in its scope ({}): narrow or remove it", forbid.id, forbid.scope)
        } else {
            format!(
                "{} matched and refuses whatever permits say; it applies while all of these hold: {}",
                forbid.id,
                held.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", ")
            )
        });
    }
    if !out.is_empty() {
        return out;
    }
    // No permit matched: those closest to matching, with what each lacks.
    let permits: Vec<&Reading> = enforced().filter(|r| !r.forbid).collect();
    let Some(fewest) = permits.iter().map(|r| r.failures()).min() else {
        out.push("no policy of this server permits anything: add a permit".into());
        return out;
    };
    // A permit whose scope is another action or resource is a poor suggestion when one whose
    // scope matches lacks only conditions.
    let scoped: Vec<&&Reading> = permits.iter().filter(|r| r.scope_check == Check::Held).collect();
    let candidates: Vec<&&Reading> = if scoped.is_empty() {
        permits.iter().filter(|r| r.failures() == fewest).collect()
    } else {
        let fewest = scoped.iter().map(|r| r.failures()).min().unwrap_or(fewest);
        scoped.into_iter().filter(|r| r.failures() == fewest).collect()
    };
    for r in candidates.into_iter().take(3) {
        let mut needs = Vec::new();
        if r.scope_check != Check::Held {
            needs.push(format!("a scope that covers this request (it is `{}`)", r.scope));
        }
        for c in r.clauses.iter().filter(|c| c.check != Check::Held) {
            needs.push(match &c.fix {
                Some(fix) => fix.clone(),
                None => format!("`{}` to hold", c.text),
            });
        }
        out.push(format!("{} would permit it with {}", r.id, needs.join(" and ")));
    }
    out
}

/// A recorded request, as a replay reads it: what policy saw then, but the arguments' values.
#[derive(Clone, Copy, Debug)]
pub struct Recorded<'a> {
    pub server: &'a str,
    pub method: &'a str,
    /// `tool`, `resource`, `prompt` or `server`.
    pub target_kind: &'a str,
    pub target: &'a str,
    pub workload: &'a Verified,
    pub source_ip: std::net::IpAddr,
    /// Seconds since the epoch.
    pub time: i64,
    /// The call had arguments.
    pub arguments: bool,
}

/// What a replay found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replayed {
    Decided(Outcome),
    /// The record lacks what the decision depends on: a stable code saying what.
    CannotJudge(&'static str),
}

/// The target a record names.
pub fn target_of<'a>(kind: &str, name: &'a str) -> Option<Target<'a>> {
    Some(match kind {
        "tool" => Target::Tool(name),
        "resource" => Target::Resource(name),
        "prompt" => Target::Prompt(name),
        "server" => Target::Server,
        _ => return None,
    })
}

/// Decides a recorded request again under `authorizer`. A call that had arguments cannot be
/// judged when a policy of its server reads them (records never keep argument values): it is
/// reported as such rather than guessed.
pub fn replay(authorizer: &Authorizer, r: &Recorded<'_>) -> Replayed {
    let Some(target) = target_of(r.target_kind, r.target) else { return Replayed::CannotJudge("no_target") };
    if r.arguments && authorizer.reads_arguments(r.server) {
        return Replayed::CannotJudge("policy_reads_arguments");
    }
    let granted = r.workload.task.as_ref().map_or(&[][..], |t| &t.tools[..]);
    // What no policy of the server reads, the authorizer fixes itself: records that differ only
    // in it share a cached outcome.
    let facts = RequestFacts { source_ip: r.source_ip, now: r.time, granted_tools: granted, arguments: None };
    match authorizer.authorize(r.server, r.workload, r.method, target, &facts) {
        Ok(outcome) => Replayed::Decided(outcome),
        Err(_) => Replayed::CannotJudge("not_an_action"),
    }
}

/// What a policy reads of a request beyond its principal, action and resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyReads {
    /// A call's arguments: `context.arguments`, or an `Arguments` entity named directly (which
    /// records never keep: a recorded call with arguments cannot be replayed against it).
    pub arguments: bool,
    /// `context.time`.
    pub time: bool,
    /// `context.source_ip`.
    pub source_ip: bool,
}

impl PolicyReads {
    /// Everything: what a policy that cannot be read back is taken to read.
    pub const ALL: PolicyReads = PolicyReads { arguments: true, time: true, source_ip: true };

    /// What `policy` may read. A policy may read `context.<attr>` when it names it, or uses
    /// `context` otherwise than through its attributes (then anything may depend on it). The
    /// authorizer gives what no policy of a server reads one fixed value, for every request and
    /// replay, so requests that differ only in it (the time, above all) share one cached outcome:
    /// an answer here that is too narrow would fail open. A policy that cannot be read back is
    /// taken to read everything.
    pub fn of(policy: &Policy) -> PolicyReads {
        // Cedar's only spellings of these are the words `context` and `Arguments`: a policy
        // whose text has neither reads none of them, and is not parsed again to find out
        // (`to_json` parses the text anew).
        let text = policy.to_string();
        if !text.contains("context") && !text.contains("Arguments") {
            return PolicyReads::default();
        }
        let Ok(est) = policy.to_json() else {
            return PolicyReads::ALL;
        };
        PolicyReads {
            arguments: reads_arguments(&est),
            time: reads_context(&est, "time"),
            source_ip: reads_context(&est, "source_ip"),
        }
    }

    /// What either reads.
    pub fn or(self, other: PolicyReads) -> PolicyReads {
        PolicyReads {
            arguments: self.arguments || other.arguments,
            time: self.time || other.time,
            source_ip: self.source_ip || other.source_ip,
        }
    }
}

fn reads_context(v: &Value, attr: &str) -> bool {
    match v {
        Value::Object(o) => {
            for op in [".", "has"] {
                if let Some(inner) = o.get(op)
                    && inner["left"].get("Var").and_then(Value::as_str) == Some("context")
                {
                    // `context has x` reads no value.
                    return op == "." && inner["attr"] == attr;
                }
            }
            if o.get("Var").and_then(Value::as_str) == Some("context") {
                return true;
            }
            o.values().any(|v| reads_context(v, attr))
        }
        Value::Array(a) => a.iter().any(|v| reads_context(v, attr)),
        _ => false,
    }
}

/// Whether a policy may read a call's arguments: through `context.arguments` or `context` used
/// otherwise than through another of its attributes (as [`reads_context`] finds), or through the
/// `Arguments` entity named directly — the only ways to reach its tags.
fn reads_arguments(v: &Value) -> bool {
    reads_context(v, "arguments") || names_arguments_entity(v)
}

fn names_arguments_entity(v: &Value) -> bool {
    match v {
        Value::Object(o) => {
            if o.get("__entity").and_then(|e| e.get("type")).and_then(Value::as_str) == Some("Arguments") {
                return true;
            }
            // An entity literal in a scope: `{"type": "Arguments", "id": …}`.
            if o.get("type").and_then(Value::as_str) == Some("Arguments") && o.contains_key("id") {
                return true;
            }
            o.values().any(names_arguments_entity)
        }
        Value::Array(a) => a.iter().any(names_arguments_entity),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use crate::resource::test_documents;

    const NOW: i64 = 1_780_000_000;

    fn authorizer(cedar: &str) -> Authorizer {
        let indented: String = cedar.lines().map(|l| format!("    {l}\n")).collect();
        let yaml = format!(
            r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {{name: corp}}
spec:
  issuer: https://idp.example.com
  keys: {{jwksUri: https://idp.example.com/jwks}}
  allowedAlgorithms: [ES256]
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {{name: github}}
spec:
  resource: https://mcp.example.com/github
  issuers: [corp]
  upstream: http://127.0.0.1:3001/mcp
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {{name: p}}
spec:
  servers: [github]
  cedar: |
{indented}"#
        );
        Authorizer::new(&Config::build(&test_documents(&yaml)).unwrap())
    }

    fn caller(scopes: &[&str], groups: &[&str]) -> Verified {
        crate::caller::Caller {
            issuer: "corp".into(),
            subject: "alice".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            groups: Some(groups.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
        .workload()
    }

    fn facts() -> RequestFacts<'static> {
        RequestFacts { source_ip: "10.1.2.3".parse().unwrap(), now: NOW, granted_tools: &[], arguments: None }
    }

    const POLICIES: &str = r#"permit(principal, action == Action::"tools/call", resource in Server::"github")
when { context.scopes.contains("repo:write") && ["create_issue", "comment"].contains(resource.name) };
permit(principal, action == Action::"tools/list", resource);
forbid(principal, action == Action::"tools/call", resource)
when { resource.name == "delete_repository" }
unless { principal has groups && principal.groups.contains("admins") };"#;

    #[test]
    fn a_refusal_names_the_conditions_that_failed_and_what_would_allow_it() {
        let a = authorizer(POLICIES);
        let e =
            explain(&a, "github", &caller(&["repo:read"], &[]), "tools/call", Target::Tool("merge"), &facts()).unwrap();
        assert!(!e.outcome.allowed);
        let permit = &e.readings[0];
        assert_eq!(permit.id, "p.0");
        assert_eq!(permit.scope_check, Check::Held);
        let checks: Vec<(&str, &str)> = permit.clauses.iter().map(|c| (c.text.as_str(), c.check.as_str())).collect();
        assert_eq!(
            checks,
            [
                (r#"context.scopes.contains("repo:write")"#, "failed"),
                (r#"["create_issue", "comment"].contains(resource.name)"#, "failed")
            ]
        );
        assert_eq!(e.readings[1].scope_check, Check::Failed, "the list permit is another action");
        assert_eq!(
            e.changes,
            [
                r#"p.0 would permit it with a token with the scope "repo:write" and "merge" added to the list ["create_issue", "comment"]"#
            ]
        );
    }

    #[test]
    fn a_matching_forbid_is_named_with_the_conditions_that_made_it_apply() {
        let a = authorizer(POLICIES);
        let who = caller(&["repo:write"], &["devs"]);
        let e = explain(&a, "github", &who, "tools/call", Target::Tool("delete_repository"), &facts()).unwrap();
        assert!(!e.outcome.allowed);
        let forbid = e.readings.iter().find(|r| r.forbid).unwrap();
        assert!(forbid.matched());
        assert_eq!(forbid.clauses[1].text, r#"unless (principal has groups) && principal.groups.contains("admins")"#);
        assert_eq!(e.changes.len(), 1);
        assert!(e.changes[0].starts_with("p.2 matched and refuses whatever permits say"), "{:?}", e.changes);
        // An admin is not refused by it, and the explanation of an allow suggests nothing.
        let admin = caller(&["repo:write"], &["admins"]);
        let e = explain(&a, "github", &admin, "tools/call", Target::Tool("comment"), &facts()).unwrap();
        assert!(e.outcome.allowed && e.changes.is_empty());
        assert!(e.readings[0].matched() && !e.readings[2].matched());
    }

    #[test]
    fn a_conjunct_behind_a_false_guard_is_not_reached_rather_than_an_error() {
        let a = authorizer(
            r#"permit(principal, action == Action::"tools/call", resource) when { principal has groups && principal.groups.contains("admins") };
forbid(principal, action == Action::"tools/call", resource) when { principal has tenant && principal.tenant == "acme" };"#,
        );
        let mut who = caller(&[], &[]);
        who.claims.remove("groups");
        let e = explain(&a, "github", &who, "tools/call", Target::Tool("merge"), &facts()).unwrap();
        let checks: Vec<&str> = e.readings[0].clauses.iter().map(|c| c.check.as_str()).collect();
        assert_eq!(checks, ["failed", "not reached"]);
        assert_eq!(e.readings[1].clauses[1].check, Check::NotReached);
        assert!(e.readings[1].clauses.iter().all(|c| c.fix.is_none()), "a forbid's conditions are not advice");
        assert_eq!(
            e.changes,
            [r#"p.0 would permit it with `principal has groups` to hold and a caller in the group "admins""#],
            "no evaluation error is claimed where Cedar met none"
        );
    }

    #[test]
    fn evaluation_errors_and_task_grants_are_explained() {
        let a = authorizer(
            r#"permit(principal, action, resource) when { context.time.toTime() > duration("1ms") && 9223372036854775807 + 1 > 0 };"#,
        );
        let e = explain(&a, "github", &caller(&["a"], &[]), "tools/list", Target::Server, &facts()).unwrap();
        assert!(!e.outcome.allowed);
        assert!(matches!(e.readings[0].clauses[1].check, Check::Error(_)), "{:?}", e.readings);
        assert!(e.changes[0].contains("fails to evaluate"), "{:?}", e.changes);
        let mut task = caller(&[], &[]);
        task.task =
            Some(crate::token::Task { subject_issuer: "corp".into(), tools: vec!["echo".into()], subject_token: None });
        let granted = ["echo".to_string()];
        let facts = RequestFacts { granted_tools: &granted, ..facts() };
        let e = explain(&a, "github", &task, "tools/call", Target::Tool("add"), &facts).unwrap();
        assert!(e.outcome.not_granted);
        assert!(e.changes[0].contains("grants only [echo]"), "{:?}", e.changes);
    }

    #[test]
    fn a_replay_decides_as_the_agent_did_unless_it_needs_the_arguments() {
        let a = authorizer(POLICIES);
        let who = caller(&["repo:write"], &[]);
        let recorded = |target: &'static str, arguments: bool| Recorded {
            server: "github",
            method: "tools/call",
            target_kind: "tool",
            target,
            workload: &who,
            source_ip: "10.1.2.3".parse().unwrap(),
            time: NOW,
            arguments,
        };
        let decided = |r: Replayed| match r {
            Replayed::Decided(o) => o.allowed,
            other => panic!("{other:?}"),
        };
        assert!(decided(replay(&a, &recorded("comment", true))), "no policy here reads arguments");
        assert!(!decided(replay(&a, &recorded("delete_repository", false))));
        let b = authorizer(r#"permit(principal, action, resource) unless { context.arguments.hasTag("force") };"#);
        assert_eq!(replay(&b, &recorded("comment", true)), Replayed::CannotJudge("policy_reads_arguments"));
        assert!(decided(replay(&b, &recorded("comment", false))), "without arguments the tag is absent: judged");
        let mut odd = recorded("comment", false);
        odd.target_kind = "";
        assert_eq!(replay(&b, &odd), Replayed::CannotJudge("no_target"));
    }

    #[test]
    fn what_a_policy_reads_of_the_context_is_known_conservatively() {
        let reads = |cedar: &str, attr: &str| {
            authorizer(cedar).reads_time_and_address("github")
                == (attr == "time" || attr == "both", attr == "ip" || attr == "both")
        };
        assert!(reads(
            r#"permit(principal, action, resource) when { context.time < datetime("2027-01-01T00:00:00Z") };"#,
            "time"
        ));
        assert!(reads(r#"permit(principal, action, resource) when { context.source_ip.isLoopback() };"#, "ip"));
        assert!(reads(
            r#"permit(principal, action, resource) when { context.scopes.contains("a") && context has tenant };"#,
            "neither"
        ));
        assert!(
            reads(r#"permit(principal, action, resource) when { context == context };"#, "both"),
            "the whole context: anything"
        );
        assert!(reads(
            r#"permit(principal, action, resource) when { context["time"] < datetime("2027-01-01") };"#,
            "time"
        ));
        assert!(reads(
            r#"permit(principal, action, resource) when { {a: context}.a.source_ip.isLoopback() };"#,
            "both"
        ));
        assert!(reads(r#"permit(principal, action, resource) when { [context].contains(context) };"#, "both"));
        // Replayed at different seconds with no policy reading the time: one outcome.
        let a = authorizer(r#"permit(principal, action, resource) when { context.scopes.contains("a") };"#);
        let who = caller(&["a"], &[]);
        let at = |time: i64| Recorded {
            server: "github",
            method: "tools/call",
            target_kind: "tool",
            target: "x",
            workload: &who,
            source_ip: "10.1.2.3".parse().unwrap(),
            time,
            arguments: false,
        };
        assert_eq!(replay(&a, &at(NOW)), replay(&a, &at(NOW + 1)));
        // With one that does, each second is its own decision.
        let b = authorizer(
            r#"permit(principal, action, resource) when { context.time < datetime("2026-05-28T20:26:41Z") };"#,
        );
        assert!(matches!(replay(&b, &at(NOW)), Replayed::Decided(o) if o.allowed));
        assert!(matches!(replay(&b, &at(NOW + 2)), Replayed::Decided(o) if !o.allowed));
    }

    #[test]
    fn policies_reading_arguments_are_known() {
        let reads = |cedar: &str| authorizer(cedar).reads_arguments("github");
        assert!(reads(r#"permit(principal, action, resource) when { context.arguments.hasTag("path") };"#));
        assert!(!reads(r#"permit(principal, action, resource) when { context.scopes.contains("a") };"#));
        assert!(!reads(r#"permit(principal, action, resource) when { context has arguments };"#));
        // Reached otherwise than by name.
        assert!(reads(r#"permit(principal, action, resource) when { context["arguments"].hasTag("path") };"#));
        assert!(reads(r#"permit(principal, action, resource) when { Arguments::"".hasTag("path") };"#));
        assert!(reads(r#"forbid(principal, action, resource in Arguments::"");"#));
        assert!(reads(r#"permit(principal, action, resource) when { {c: context}.c.scopes.contains("a") };"#));
    }
}
