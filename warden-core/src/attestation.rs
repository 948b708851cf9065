//! Attested joins: an agent proves where it runs with a token its platform issued, in place of
//! a one-time join token an operator made for it.
//!
//! On Kubernetes the proof is the pod's projected service-account token: signed by the
//! cluster's service-account issuer (a `TrustedIssuer` of the fleet, whose keys the control
//! plane already resolves), with an audience meant for joining only, naming the namespace,
//! service account, pod and node it was issued to. The control plane's `--join-attestation`
//! file says which clusters, audiences and service accounts may join, and whether each admits
//! one agent per node (a DaemonSet) or per pod (a sidecar next to an MCP server). The agent id
//! is not the agent's to choose: it is derived from the token (`<cluster>.<node>` or
//! `<cluster>.<namespace>.<pod>`), so one node's token cannot join as another node.
//!
//! This module is the file's format and the decision on verified claims; signature, issuer,
//! audience, lifetime and revocation are checked first by the same `Verifier` as every token.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::validation::validate_name;

/// Labels a rule may give its agents, and the bytes of each key and value (as for the labels
/// an agent gives itself).
pub const MAX_LABELS: usize = 64;
/// See [`MAX_LABELS`].
pub const MAX_LABEL_KEY_BYTES: usize = 63;
/// See [`MAX_LABELS`].
pub const MAX_LABEL_VALUE_BYTES: usize = 255;

/// The `--join-attestation` file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JoinAttestation {
    /// Clusters whose pods may join with their projected service-account tokens.
    #[serde(default)]
    pub kubernetes: Vec<KubernetesJoin>,
}

/// One cluster's rule.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesJoin {
    /// The cluster's name: the first part of every agent id it admits (a name without dots).
    pub name: String,
    /// The `TrustedIssuer` (its name) that is the cluster's service-account issuer.
    pub issuer: String,
    /// The audience the projected token must carry, and that only joins use (never an MCP
    /// server's resource or the token service's: a token for those must not join).
    pub audience: String,
    /// `namespace:name` of each service account whose pods may join.
    pub service_accounts: Vec<String>,
    /// One agent per node or per pod.
    pub agent_per: AgentPer,
    /// The labels the registry gives every agent this rule admits, whatever the agent asks
    /// for: what the control plane trusts it for (the servers whose definitions it may report).
    /// Anyone who can run a pod as a listed service account can be such an agent.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What one agent stands for, and so what names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AgentPer {
    /// A DaemonSet: the agent id is `<cluster>.<node name>`.
    Node,
    /// A sidecar: the agent id is `<cluster>.<namespace>.<pod name>`.
    Pod,
}

/// Why the file is refused (the control plane does not start).
#[derive(Debug, thiserror::Error)]
pub enum AttestationFileError {
    /// Not YAML of this shape (unknown fields included).
    #[error("not a join attestation file: {0}")]
    Syntax(String),
    /// A field breaks a rule; the path names it.
    #[error("{path}: {message}")]
    Field {
        /// `kubernetes[i].field`.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Why a verified token does not admit the agent. The messages go to the agent that asked: they
/// name what the token says, never the token.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No rule names this issuer and audience.
    #[error("no join rule accepts tokens of issuer {issuer} for audience {audience}")]
    NoRule {
        /// The issuer's name.
        issuer: String,
        /// The audience tried.
        audience: String,
    },
    /// The token lacks the Kubernetes claims of a pod-bound service-account token.
    #[error("not a pod-bound Kubernetes service-account token: {0}")]
    NotServiceAccountToken(&'static str),
    /// The service account is not one the rule admits.
    #[error("service account {0} may not join")]
    ServiceAccountNotAllowed(String),
    /// The id the token names is not a valid agent id.
    #[error("the token names agent id {0:?}, which is not a valid agent id (at most 63 characters)")]
    BadAgentId(String),
    /// The agent asked for another id than the token names.
    #[error("this token admits agent {expected:?}, not {asked:?}: start the agent with --id {expected}")]
    WrongAgent {
        /// The id the token names.
        expected: String,
        /// The id the agent asked for.
        asked: String,
    },
}

/// What a rule admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The rule's (cluster's) name.
    pub rule: String,
    /// The agent id.
    pub agent_id: String,
    /// The labels to register: the rule's.
    pub labels: BTreeMap<String, String>,
    /// `namespace:service account`, for logs.
    pub service_account: String,
}

fn field(path: String, message: impl std::fmt::Display) -> AttestationFileError {
    AttestationFileError::Field { path, message: message.to_string() }
}

impl JoinAttestation {
    /// Parses and checks the file's text.
    pub fn parse(text: &str) -> Result<JoinAttestation, AttestationFileError> {
        let file: JoinAttestation = if text.trim().is_empty() {
            JoinAttestation::default()
        } else {
            serde_norway::from_str(text).map_err(|e| AttestationFileError::Syntax(e.to_string()))?
        };
        let mut names = std::collections::BTreeSet::new();
        for (i, rule) in file.kubernetes.iter().enumerate() {
            let path = |f: &str| format!("kubernetes[{i}].{f}");
            validate_name(&rule.name).map_err(|e| field(path("name"), e))?;
            if rule.name.contains('.') {
                // The name and the node's make one id: a dot in the name would make two
                // (name, node) pairs spell the same agent.
                return Err(field(path("name"), "a cluster name has no dots"));
            }
            if !names.insert(&rule.name) {
                return Err(field(path("name"), format!("{:?} is named twice", rule.name)));
            }
            validate_name(&rule.issuer).map_err(|e| field(path("issuer"), e))?;
            if rule.audience.trim().is_empty() {
                return Err(field(path("audience"), "must not be empty"));
            }
            let oversized = rule
                .labels
                .iter()
                .find(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_KEY_BYTES || v.len() > MAX_LABEL_VALUE_BYTES);
            if rule.labels.len() > MAX_LABELS || oversized.is_some() {
                return Err(field(
                    path("labels"),
                    format!(
                        "at most {MAX_LABELS}, keys of 1 to {MAX_LABEL_KEY_BYTES} bytes, values of at most \
                         {MAX_LABEL_VALUE_BYTES}"
                    ),
                ));
            }
            if rule.service_accounts.is_empty() {
                return Err(field(path("serviceAccounts"), "name at least one `namespace:name`"));
            }
            for (j, account) in rule.service_accounts.iter().enumerate() {
                let ok = account.split_once(':').is_some_and(|(ns, name)| {
                    validate_name(ns).is_ok() && !ns.contains('.') && validate_name(name).is_ok()
                });
                if !ok {
                    return Err(field(
                        path(&format!("serviceAccounts[{j}]")),
                        format!("{account:?} is not `namespace:name`"),
                    ));
                }
            }
        }
        Ok(file)
    }

    /// Whether any rule is set (without one, attested joins are refused).
    pub fn is_empty(&self) -> bool {
        self.kubernetes.is_empty()
    }

    /// Every rule, in the file's order.
    pub fn rules(&self) -> impl Iterator<Item = &KubernetesJoin> {
        self.kubernetes.iter()
    }
}

fn string<'a>(value: Option<&'a Value>, what: &'static str) -> Result<&'a str, Refusal> {
    value.and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or(Refusal::NotServiceAccountToken(what))
}

impl KubernetesJoin {
    /// Decides on the claims of a token verified for this rule's issuer and audience: the
    /// agent it admits, if it is the one asking (`asked`).
    pub fn admit(&self, claims: &Map<String, Value>, asked: &str) -> Result<Admitted, Refusal> {
        // The kubelet asks for one audience: a token also meant for something else (which could
        // present it here) is not a join token.
        let single = match claims.get("aud") {
            Some(Value::String(a)) => a == &self.audience,
            Some(Value::Array(list)) => list.len() == 1 && list[0].as_str() == Some(self.audience.as_str()),
            _ => false,
        };
        if !single {
            return Err(Refusal::NotServiceAccountToken("a join token has the join audience alone"));
        }
        let k8s = claims.get("kubernetes.io").ok_or(Refusal::NotServiceAccountToken("no kubernetes.io claim"))?;
        let namespace = string(k8s.get("namespace"), "no kubernetes.io.namespace")?;
        let account = string(k8s.pointer("/serviceaccount/name"), "no kubernetes.io.serviceaccount.name")?;
        // `sub` and `kubernetes.io` are two statements of the same account: a token where they
        // differ was not minted by a kube-apiserver.
        let subject = claims.get("sub").and_then(Value::as_str);
        if subject != Some(&format!("system:serviceaccount:{namespace}:{account}")) {
            return Err(Refusal::NotServiceAccountToken("sub does not name kubernetes.io's service account"));
        }
        // Bound to a pod (not a Node-bound or unbound token of the account): a pod is where an
        // agent runs.
        string(k8s.pointer("/pod/uid"), "no kubernetes.io.pod (a token bound to a pod)")?;
        let service_account = format!("{namespace}:{account}");
        if !self.service_accounts.contains(&service_account) {
            return Err(Refusal::ServiceAccountNotAllowed(service_account));
        }
        let expected = match self.agent_per {
            AgentPer::Node => {
                let node = string(k8s.pointer("/node/name"), "no kubernetes.io.node.name (Kubernetes 1.30 or later)")?;
                format!("{}.{node}", self.name)
            }
            AgentPer::Pod => {
                let pod = string(k8s.pointer("/pod/name"), "no kubernetes.io.pod.name (a projected token)")?;
                format!("{}.{namespace}.{pod}", self.name)
            }
        };
        if validate_name(&expected).is_err() {
            return Err(Refusal::BadAgentId(expected));
        }
        if asked != expected {
            return Err(Refusal::WrongAgent { expected, asked: asked.to_string() });
        }
        Ok(Admitted { rule: self.name.clone(), agent_id: expected, labels: self.labels.clone(), service_account })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const FILE: &str = "
kubernetes:
  - name: prod
    issuer: k8s-prod
    audience: warden-join
    serviceAccounts: [warden:warden-agent]
    agentPer: node
    labels: {cluster: prod}
  - name: mcp
    issuer: k8s-prod
    audience: warden-join
    serviceAccounts: [tickets:tickets-mcp]
    agentPer: pod
";

    /// Claims shaped like a kubelet's projected token (Kubernetes 1.30+).
    fn claims(ns: &str, account: &str, pod: &str, node: &str) -> Map<String, Value> {
        json!({
            "aud": ["warden-join"], "iss": "https://oidc.prod.example.com", "exp": 2, "iat": 1, "nbf": 1,
            "jti": "c3f8e0d2-5b1a-4e7c-9a2f-0d6b8e4c1a97",
            "sub": format!("system:serviceaccount:{ns}:{account}"),
            "kubernetes.io": {
                "namespace": ns,
                "node": {"name": node, "uid": "58456cb0-dd00-45ed-b797-5578fdceaced"},
                "pod": {"name": pod, "uid": "778a530c-b3f4-47c0-9cd5-ab018fb64f33"},
                "serviceaccount": {"name": account, "uid": "a087d5a0-e1dd-43ec-93ac-f13d89cd13af"},
                "warnafter": 1
            }
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn a_daemonset_pod_joins_as_its_node_and_a_sidecar_as_its_pod() {
        let file = JoinAttestation::parse(FILE).unwrap();
        let (node_rule, pod_rule) = (&file.kubernetes[0], &file.kubernetes[1]);
        let node = claims("warden", "warden-agent", "warden-agent-x7k2p", "ip-10-0-1-23.ec2.internal");
        let admitted = node_rule.admit(&node, "prod.ip-10-0-1-23.ec2.internal").unwrap();
        assert_eq!(admitted.agent_id, "prod.ip-10-0-1-23.ec2.internal");
        assert_eq!(admitted.labels, BTreeMap::from([("cluster".to_string(), "prod".to_string())]));
        assert_eq!(admitted.service_account, "warden:warden-agent");

        let sidecar = claims("tickets", "tickets-mcp", "tickets-7d9f8c6b5-x2x4k", "node-1");
        let admitted = pod_rule.admit(&sidecar, "mcp.tickets.tickets-7d9f8c6b5-x2x4k").unwrap();
        assert_eq!(admitted.agent_id, "mcp.tickets.tickets-7d9f8c6b5-x2x4k");
    }

    #[test]
    fn a_token_admits_only_the_agent_it_names() {
        let file = JoinAttestation::parse(FILE).unwrap();
        let rule = &file.kubernetes[0];
        let node1 = claims("warden", "warden-agent", "warden-agent-x7k2p", "node-1");
        assert_eq!(
            rule.admit(&node1, "prod.node-2"),
            Err(Refusal::WrongAgent { expected: "prod.node-1".into(), asked: "prod.node-2".into() })
        );
        // Another service account of the cluster, even on the right node.
        let other = claims("default", "web", "web-1", "node-1");
        assert_eq!(rule.admit(&other, "prod.node-1"), Err(Refusal::ServiceAccountNotAllowed("default:web".into())));
        // `sub` that disagrees with `kubernetes.io`.
        let mut forged = node1.clone();
        forged.insert("sub".into(), json!("system:serviceaccount:kube-system:admin"));
        assert!(matches!(rule.admit(&forged, "prod.node-1"), Err(Refusal::NotServiceAccountToken(_))));
        // A token of the issuer that is not a service-account token, or from before node claims.
        let mut plain = node1.clone();
        plain.remove("kubernetes.io");
        assert!(matches!(rule.admit(&plain, "prod.node-1"), Err(Refusal::NotServiceAccountToken(_))));
        let mut old = node1.clone();
        old["kubernetes.io"].as_object_mut().unwrap().remove("node");
        assert!(matches!(rule.admit(&old, "prod.node-1"), Err(Refusal::NotServiceAccountToken(_))));
        // A Node-bound token of the account (no pod), and one with a second audience.
        let mut node_bound = node1.clone();
        node_bound["kubernetes.io"].as_object_mut().unwrap().remove("pod");
        assert!(matches!(rule.admit(&node_bound, "prod.node-1"), Err(Refusal::NotServiceAccountToken(_))));
        let mut shared = node1.clone();
        shared.insert("aud".into(), json!(["warden-join", "https://kubernetes.default.svc"]));
        assert!(matches!(rule.admit(&shared, "prod.node-1"), Err(Refusal::NotServiceAccountToken(_))));
        // A node name too long for an agent id is refused, not cut (two nodes would share one).
        let long = claims("warden", "warden-agent", "p", &"n".repeat(60));
        assert!(matches!(rule.admit(&long, "x"), Err(Refusal::BadAgentId(_))));
    }

    #[test]
    fn a_broken_file_is_refused_with_the_field_that_breaks_it() {
        let refused = |text: &str| JoinAttestation::parse(text).unwrap_err().to_string();
        let rule = |extra: &str, replace: (&str, &str)| {
            format!(
                "kubernetes:\n  - name: prod\n    issuer: k8s\n    audience: warden-join\n    serviceAccounts: [warden:agent]\n    agentPer: node\n{extra}"
            )
            .replace(replace.0, replace.1)
        };
        assert!(JoinAttestation::parse(&rule("", ("", ""))).is_ok());
        assert!(JoinAttestation::parse("").unwrap().is_empty());
        assert!(refused("kubernetes: [").starts_with("not a join attestation file"));
        assert!(refused(&rule("    extra: 1\n", ("", ""))).contains("unknown field `extra`"));
        assert!(refused(&rule("", ("agentPer: node", "agentPer: host"))).contains("unknown variant `host`"));
        assert!(
            refused(&rule("", ("name: prod", "name: prod.eu")))
                .starts_with("kubernetes[0].name: a cluster name has no dots")
        );
        assert!(refused(&rule("", ("warden:agent", "warden/agent"))).starts_with("kubernetes[0].serviceAccounts[0]"));
        assert!(refused(&rule("", ("[warden:agent]", "[]"))).starts_with("kubernetes[0].serviceAccounts"));
        let long_label = format!("    labels: {{a: {}}}\n", "v".repeat(256));
        assert!(refused(&rule(&long_label, ("", ""))).starts_with("kubernetes[0].labels"));
        assert!(refused(&rule("", ("audience: warden-join", "audience: ''"))).starts_with("kubernetes[0].audience"));
        let twice = format!("{}{}", rule("", ("", "")), rule("", ("kubernetes:\n", "")));
        assert!(refused(&twice).contains("named twice"));
    }
}
