//! `Authorizer::authorize` on whatever a verified token and a request body can carry: any tool
//! name, resource URI, method, subject, claim values, scopes, granted tools, address, time and
//! argument JSON. Against policy sets that allow nothing, nothing is allowed; against one with
//! known permits, exactly what they permit is; and a decision never depends on what the caches
//! held before.

use std::net::IpAddr;
use std::sync::LazyLock;

use serde_json::value::RawValue;

use super::*;
use crate::authorize::{Authorizer, Outcome, RequestError, RequestFacts, Target};
use crate::config::Config;
use crate::resource::test_documents;
use crate::token::{Task, Verified};

const NOW: i64 = 1_800_000_000;

const FLEET: &str = r#"
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {name: corp-idp}
spec:
  issuer: https://idp.example.com
  keys: {jwksUri: https://idp.example.com/jwks}
  allowedAlgorithms: [ES256]
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
kind: McpServer
metadata: {name: billing}
spec:
  resource: https://mcp.example.com/billing
  issuers: [corp-idp]
  upstream: http://127.0.0.1:3001/mcp
"#;

fn authorizer(policies: &str) -> Authorizer {
    Authorizer::new(&config(policies))
}

fn config(policies: &str) -> Config {
    Config::build(&test_documents(&format!("{FLEET}{policies}"))).expect("the fixture builds")
}

/// Allows everything, but a `forbid` of everything wins.
const FORBID_WINS: &str = r#"
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: everything}
spec:
  cedar: |
    permit(principal, action, resource);
    forbid(principal, action, resource);
"#;

/// Permits that each read what hostile input controls: the tool's name, an argument, a scope,
/// a claim; and a forbid on another claim.
const KNOWN_PERMITS: &str = r#"
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: known}
spec:
  cedar: |
    permit(principal, action == Action::"tools/call", resource)
    when { resource.name == "search" && context.arguments.hasTag("q") && context.arguments.getTag("q") == "rust" };
    permit(principal, action == Action::"tools/list", resource) when { context.scopes.contains("list") };
    permit(principal, action == Action::"resources/read", resource)
    when { principal has tenant && principal.tenant == "acme" };
    forbid(principal, action, resource) when { principal has groups && principal.groups.contains("blocked") };
"#;

static DENY_ALL: LazyLock<[Authorizer; 2]> = LazyLock::new(|| [authorizer(""), authorizer(FORBID_WINS)]);
static KNOWN: LazyLock<Config> = LazyLock::new(|| config(KNOWN_PERMITS));
/// Shared by every case, so its caches hold what earlier cases put in them.
static KNOWN_WARM: LazyLock<Authorizer> = LazyLock::new(|| Authorizer::new(&KNOWN));

/// One request as it reaches `authorize`.
#[derive(Clone, Debug)]
struct Input {
    server: String,
    method: String,
    /// The target's kind (the one the method names, unless given) and name.
    target: (Option<u8>, String),
    subject: String,
    scopes: Vec<String>,
    claims: serde_json::Map<String, serde_json::Value>,
    task: Option<Vec<String>>,
    granted_tools: Vec<String>,
    source_ip: IpAddr,
    now: i64,
    /// JSON text (`RawValue` reads it), with whether a name repeats in it.
    arguments: Option<Json>,
}

impl Input {
    fn target(&self) -> Target<'_> {
        let by_method = match self.method.as_str() {
            "tools/call" | "token/exchange" => 0,
            "resources/read" => 1,
            "prompts/get" => 2,
            _ => 3,
        };
        match self.target.0.unwrap_or(by_method) % 4 {
            0 => Target::Tool(&self.target.1),
            1 => Target::Resource(&self.target.1),
            2 => Target::Prompt(&self.target.1),
            _ => Target::Server,
        }
    }

    fn workload(&self) -> Verified {
        Verified {
            issuer: "corp-idp".into(),
            subject: self.subject.clone(),
            jti: None,
            jti_hash: None,
            jti_key: None,
            expires_at: NOW + 600,
            issued_at: NOW - 60,
            valid_until: NOW + 660,
            bound_certificate: None,
            bound_dpop_key: None,
            scopes: self.scopes.clone(),
            claims: self.claims.clone(),
            task: self.task.clone().map(|tools| Task { subject_issuer: "corp-idp".into(), tools, subject_token: None }),
            bridge: None,
            derived: Default::default(),
        }
    }

    fn decide(&self, authorizer: &Authorizer) -> Result<Outcome, RequestError> {
        let arguments = self.arguments.as_ref().map(|a| RawValue::from_string(a.text.clone()).expect("generated so"));
        let facts = RequestFacts {
            source_ip: self.source_ip,
            now: self.now,
            granted_tools: &self.granted_tools,
            arguments: arguments.as_deref(),
        };
        authorizer.authorize(&self.server, &self.workload(), &self.method, self.target(), &facts)
    }

    /// What `KNOWN_PERMITS` allows, worked out here.
    fn known_allows(&self) -> bool {
        let claim = |name: &str| self.claims.get(name);
        let blocked =
            claim("groups").and_then(|g| g.as_array()).is_some_and(|g| g.iter().any(|g| g.as_str() == Some("blocked")));
        // Arguments are read as policy reads them (`arguments`, checked on its own by the body
        // properties), or the request is not built (denied): a name given twice never is.
        let tags = match &self.arguments {
            None => Ok(Vec::new()),
            Some(a) => {
                crate::arguments::tags(&RawValue::from_string(a.text.clone()).expect("generated so"), usize::MAX)
            }
        };
        let Ok(tags) = tags else {
            return false;
        };
        assert!(!self.arguments.as_ref().is_some_and(|a| a.repeats), "a repeated name read: {:?}", self.arguments);
        let argument_q_is_rust = tags.iter().any(|(name, text)| name == "q" && text == "rust");
        let granted = |tool: &str| self.task.as_ref().is_none_or(|tools| tools.iter().any(|t| t == tool));
        let permitted = match (self.method.as_str(), self.target()) {
            ("tools/call", Target::Tool(name)) => name == "search" && granted(name) && argument_q_is_rust,
            ("tools/list", Target::Server) => self.scopes.iter().any(|s| s == "list"),
            ("resources/read", Target::Resource(_)) => {
                self.task.is_none() && claim("tenant").and_then(|t| t.as_str()) == Some("acme")
            }
            _ => false,
        };
        ["github", "billing"].contains(&self.server.as_str()) && permitted && !blocked
    }
}

fn claim_value() -> impl Strategy<Value = serde_json::Value> {
    let strings = prop_oneof![
        prop::sample::select(vec!["acme", "blocked", "", "corp-idp/ci-runner", "\"", "\u{0}"]).prop_map(String::from),
        any::<String>(),
    ];
    prop_oneof![
        2 => strings.clone().prop_map(serde_json::Value::from),
        1 => prop::collection::vec(prop_oneof![strings.prop_map(serde_json::Value::from), json_value()], 0..4)
            .prop_map(serde_json::Value::Array),
        1 => json_value(),
    ]
}

/// Generated JSON that serde_json reads, as a value.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    json().prop_filter_map("serde_json reads it", |j| serde_json::from_str(&j.text).ok())
}

fn input(now: BoxedStrategy<i64>) -> impl Strategy<Value = Input> {
    let name = || {
        prop_oneof![
            prop::sample::select(vec!["search", "list", "rust", "q", "github/search", "", "*", "acme"])
                .prop_map(String::from),
            any::<String>(),
        ]
    };
    let method = prop_oneof![
        4 => prop::sample::select(vec![
            "tools/call", "tools/list", "resources/read", "resources/list", "prompts/get", "prompts/list",
            "tasks/get", "token/exchange",
        ])
        .prop_map(String::from),
        1 => any::<String>(),
    ];
    let arguments = prop_oneof![
        2 => (prop::sample::select(vec!["\"rust\"", "\"Rust\"", "\"rust \"", "[\"rust\"]", "7", "null"]),
              prop::collection::vec((name(), any::<bool>(), json()), 0..4), any::<bool>())
            .prop_map(|(q, mut others, first)| {
                let q = ("q".to_string(), false, Json::plain(q));
                if first { others.insert(0, q) } else { others.push(q) }
                object(&others)
            }),
        2 => prop::collection::vec((name(), any::<bool>(), json()), 0..6).prop_map(|m| object(&m)),
        1 => json(),
    ]
    .prop_filter("RawValue reads it", |a| RawValue::from_string(a.text.clone()).is_ok());
    let claims = prop::collection::vec(
        (
            prop_oneof![prop::sample::select(vec!["tenant", "groups", "email"]).prop_map(String::from), name()],
            claim_value(),
        ),
        0..4,
    )
    .prop_map(|members| members.into_iter().collect::<serde_json::Map<_, _>>());
    (
        prop::sample::select(vec!["github", "billing", "nowhere", ""]).prop_map(String::from),
        method,
        (prop::option::weighted(0.2, any::<u8>()), name()),
        name(),
        prop::collection::vec(prop_oneof![Just("list".to_string()), name()], 0..3),
        claims,
        prop::option::weighted(0.2, prop::collection::vec(name(), 0..3)),
        prop::collection::vec(name(), 0..3),
        prop_oneof![
            3 => any::<IpAddr>(),
            1 => prop::sample::select(vec!["::ffff:10.1.2.3", "::10.1.2.3", "::", "::1", "0.0.0.0", "255.255.255.255", "64:ff9b::a01:203", "fe80::1", "2002:a01:203::1"])
                .prop_map(|ip| ip.parse::<IpAddr>().expect("an address")),
        ],
        now,
        prop::option::weighted(0.7, arguments),
    )
        .prop_map(
            |(server, method, target, subject, scopes, claims, task, granted_tools, source_ip, now, arguments)| Input {
                server,
                method,
                target,
                subject,
                scopes,
                claims,
                task,
                granted_tools,
                source_ip,
                now,
                arguments,
            },
        )
}

proptest! {
    #![proptest_config(cases(1024))]

    /// With no policy, or a `forbid` of everything beside a `permit` of everything, no input is
    /// allowed: not with any method, target, claim, argument or time.
    #[test]
    fn a_default_deny_policy_set_allows_nothing(input in input(any::<i64>().boxed())) {
        for authorizer in DENY_ALL.iter() {
            if let Ok(outcome) = input.decide(authorizer) {
                prop_assert!(!outcome.allowed, "{outcome:?}");
            }
        }
    }

    /// Policies that read the tool's name, an argument, a scope and claims allow exactly what
    /// they say; the same request decides the same from warm caches (filled by every earlier
    /// case) as from cold ones, and again from the cache.
    #[test]
    fn a_decision_is_what_policy_says_and_the_same_from_every_cache(
        inputs in prop::collection::vec(input((0..4_000_000_000i64).boxed()), 1..5)
    ) {
        let cold = Authorizer::new(&KNOWN);
        for input in &inputs {
            let first = input.decide(&KNOWN_WARM);
            prop_assert_eq!(first.as_ref().is_ok_and(|o| o.allowed), input.known_allows(), "{:?}", first);
            prop_assert_eq!(&input.decide(&cold), &first);
        }
        for input in &inputs {
            prop_assert_eq!(input.decide(&KNOWN_WARM), input.decide(&cold));
        }
    }
}
