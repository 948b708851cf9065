//! The compiled configuration: every resource at one version, cross-checked and with its
//! policies assembled into one Cedar policy set.
//!
//! The control plane builds one before it commits a write (a write that would leave the fleet's
//! configuration inconsistent is refused); the agent builds one from each snapshot before it
//! swaps it in. Both use [`Config::build`], so they agree on what is valid.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cedar_policy::{PolicyId, PolicySet};

use crate::bridge::CredentialBridgeSpec;
use crate::issuer::TrustedIssuerSpec;
use crate::pinning::ToolApprovalSpec;
use crate::policy::PolicySpec;
use crate::resource::{Document, Kind, ResourceKey, Spec};
use crate::server::McpServerSpec;

/// Why a set of documents does not form a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The same kind and name appear twice.
    #[error("{0} appears more than once")]
    Duplicate(ResourceKey),
    /// A resource names another that does not exist.
    #[error("{from}: {field} names {missing}, which does not exist")]
    DanglingReference {
        /// The resource holding the reference.
        from: ResourceKey,
        /// The field holding it.
        field: &'static str,
        /// What it names.
        missing: ResourceKey,
    },
    /// A fetched key set is unusable or names no known issuer.
    #[error("keys of issuer {issuer}: {message}")]
    Keys {
        /// The TrustedIssuer's name.
        issuer: String,
        /// What is wrong.
        message: String,
    },
    /// Assembling the policies failed.
    #[error("{from}: {message}")]
    Policy {
        /// The Policy resource.
        from: ResourceKey,
        /// Cedar's message.
        message: String,
    },
    /// A CredentialBridge that cannot work as written.
    #[error("{from}: {message}")]
    Bridge {
        /// The CredentialBridge.
        from: ResourceKey,
        /// What is wrong.
        message: String,
    },
    /// Two ToolApprovals for one definition.
    #[error("{from}: {message}")]
    ToolApproval {
        /// The second ToolApproval.
        from: ResourceKey,
        /// What is wrong.
        message: String,
    },
    /// Two servers one agent could serve listen on the same address.
    #[error(
        "{first} and {second} both listen on {listen} and an agent could serve both: give them different addresses or agent selectors that cannot both match"
    )]
    SharedListen {
        /// The first server.
        first: ResourceKey,
        /// The second.
        second: ResourceKey,
        /// The address.
        listen: String,
    },
}

/// A consistent configuration at one version.
#[derive(Clone, Debug)]
pub struct Config {
    /// Trusted issuers by name.
    pub issuers: BTreeMap<String, TrustedIssuerSpec>,
    /// MCP servers by name.
    pub servers: BTreeMap<String, McpServerSpec>,
    /// Policies by name.
    pub policies: BTreeMap<String, PolicySpec>,
    /// Credential bridges by name.
    pub bridges: BTreeMap<String, CredentialBridgeSpec>,
    /// Approved (and rejected) tool definitions by name.
    pub tool_approvals: BTreeMap<String, ToolApprovalSpec>,
    /// Every policy of every `Policy` resource, each with the id `<resource>.<n>`.
    pub policy_set: PolicySet,
    /// Each issuer's public keys (a JWKS): inline from its document, or as the control plane
    /// fetched them. An issuer with no entry accepts no token.
    pub keys: BTreeMap<String, Arc<serde_json::Value>>,
}

impl Config {
    /// The configuration of a fleet that has none: no issuer, so every token is refused.
    pub fn empty() -> Config {
        Config {
            issuers: BTreeMap::new(),
            servers: BTreeMap::new(),
            policies: BTreeMap::new(),
            bridges: BTreeMap::new(),
            tool_approvals: BTreeMap::new(),
            policy_set: PolicySet::new(),
            keys: BTreeMap::new(),
        }
    }

    /// Cross-checks `documents` (each already valid on its own) and compiles them.
    pub fn build<'a>(documents: impl IntoIterator<Item = &'a Document>) -> Result<Config, ConfigError> {
        let mut config = Config::empty();
        let mut seen = BTreeSet::new();
        let mut revocation_issuers = Vec::new();
        for doc in documents {
            if !seen.insert(doc.key()) {
                return Err(ConfigError::Duplicate(doc.key()));
            }
            let name = doc.metadata.name.clone();
            match &doc.spec {
                Spec::TrustedIssuer(s) => {
                    if let Some(jwks) = &s.keys.jwks {
                        config.keys.insert(name.clone(), Arc::new(jwks.clone()));
                    }
                    config.issuers.insert(name, s.clone());
                }
                Spec::McpServer(s) => {
                    config.servers.insert(name, s.clone());
                }
                Spec::Policy(s) => {
                    config.policies.insert(name, s.clone());
                }
                // Kept apart, in `revocation::Revocations`: only checked here. (The control plane
                // and agents hold them apart and build without them; the control plane checks
                // the same reference as each is written.)
                Spec::Revocation(s) => revocation_issuers.push((name, s.issuer.clone())),
                Spec::CredentialBridge(s) => {
                    config.bridges.insert(name, s.clone());
                }
                Spec::ToolApproval(s) => {
                    config.tool_approvals.insert(name, s.clone());
                }
            }
        }
        // A revocation names whose credentials it revokes: an issuer's tokens or a bridge's key.
        for (name, issuer) in revocation_issuers {
            if !config.issuers.contains_key(&issuer) && !config.bridges.contains_key(&issuer) {
                return Err(ConfigError::DanglingReference {
                    from: key(Kind::Revocation, &name),
                    field: "spec.issuer",
                    missing: key(Kind::TrustedIssuer, &issuer),
                });
            }
        }
        let mut token_services = config.issuers.iter().filter(|(_, s)| s.keys.control_plane).map(|(n, _)| n);
        if let (Some(_), Some(second)) = (token_services.next(), token_services.next()) {
            return Err(ConfigError::Keys {
                issuer: second.clone(),
                message: "only one TrustedIssuer can have controlPlane keys: the control plane is one token service"
                    .into(),
            });
        }
        for (name, server) in &config.servers {
            for issuer in &server.issuers {
                if !config.issuers.contains_key(issuer) {
                    return Err(ConfigError::DanglingReference {
                        from: key(Kind::McpServer, name),
                        field: "spec.issuers",
                        missing: key(Kind::TrustedIssuer, issuer),
                    });
                }
            }
        }
        // Listeners share their port with SO_REUSEPORT (one per gateway worker), so two servers
        // on one address would both bind, and the kernel would hand either one's connections to
        // the other. Servers for disjoint sets of agents (a label both name, with other values)
        // may use the same address, each on its own hosts.
        let listening: Vec<(&String, &crate::server::McpServerSpec, &str)> =
            config.servers.iter().filter_map(|(n, s)| Some((n, s, s.listen.as_deref()?))).collect();
        for (i, (first, a, listen)) in listening.iter().enumerate() {
            for (second, b, other) in &listening[i + 1..] {
                let disjoint =
                    a.agents.match_labels.iter().any(|(k, v)| b.agents.match_labels.get(k).is_some_and(|w| w != v));
                if listen == other && !disjoint {
                    return Err(ConfigError::SharedListen {
                        first: key(Kind::McpServer, first),
                        second: key(Kind::McpServer, second),
                        listen: listen.to_string(),
                    });
                }
            }
        }
        config.check_bridges()?;
        config.check_tool_approvals()?;
        for (name, policy) in &config.policies {
            for server in &policy.servers {
                if !config.servers.contains_key(server) {
                    return Err(ConfigError::DanglingReference {
                        from: key(Kind::Policy, name),
                        field: "spec.servers",
                        missing: key(Kind::McpServer, server),
                    });
                }
            }
            let from = || key(Kind::Policy, name);
            let set = policy.compiled().map_err(|e| ConfigError::Policy { from: from(), message: e.to_string() })?;
            // Cedar numbers policies per text ("policy0", ...); prefix with the resource name so
            // ids stay unique across resources and a decision can name the resource it came from.
            for (i, p) in set.policies().enumerate() {
                // The scopes a policy needs go into challenges: each must be a scope token.
                if let Some(scope) = p.annotation("scope")
                    && (scope.split(' ').all(str::is_empty)
                        || !scope.split(' ').filter(|s| !s.is_empty()).all(crate::policy::is_scope_token))
                {
                    return Err(ConfigError::Policy {
                        from: from(),
                        message: format!(
                            "@scope({scope:?}) of policy {i}: give OAuth scope tokens separated by spaces"
                        ),
                    });
                }
                let renamed = p.new_id(PolicyId::new(format!("{name}.{i}")));
                config
                    .policy_set
                    .add(renamed)
                    .map_err(|e| ConfigError::Policy { from: from(), message: e.to_string() })?;
            }
        }
        Ok(config)
    }

    /// Each bridge opens a server that exists and takes unbound tokens (a static key cannot be
    /// bound to its presenter), has a name no issuer has (the bridge is its principal's
    /// issuer, in policies and revocations), and a key no other bridge of its server has.
    fn check_bridges(&self) -> Result<(), ConfigError> {
        let mut digests = BTreeMap::new();
        for (name, bridge) in &self.bridges {
            let from = || key(Kind::CredentialBridge, name);
            let message = |message: String| ConfigError::Bridge { from: from(), message };
            let Some(server) = self.servers.get(&bridge.server) else {
                return Err(ConfigError::DanglingReference {
                    from: from(),
                    field: "spec.server",
                    missing: key(Kind::McpServer, &bridge.server),
                });
            };
            if server.binding != crate::server::Binding::None {
                return Err(message(format!(
                    "server {} requires tokens bound to their presenter; a static key cannot be bound",
                    bridge.server
                )));
            }
            if self.issuers.contains_key(name) {
                return Err(message(format!(
                    "TrustedIssuer {name} has the same name: a bridge names its principal's issuer, so the names must differ"
                )));
            }
            if let Some(other) = digests.insert((&bridge.server, &bridge.key_digest), name) {
                return Err(message(format!("bridge {other} of the same server has the same key")));
            }
        }
        Ok(())
    }

    /// Each approval names a server that exists, and no two name the same definition (which
    /// would leave the approved one ambiguous).
    fn check_tool_approvals(&self) -> Result<(), ConfigError> {
        let mut seen = BTreeMap::new();
        for (name, approval) in &self.tool_approvals {
            if !self.servers.contains_key(&approval.server) {
                return Err(ConfigError::DanglingReference {
                    from: key(Kind::ToolApproval, name),
                    field: "spec.server",
                    missing: key(Kind::McpServer, &approval.server),
                });
            }
            if let Some(other) = seen.insert((&approval.server, approval.kind, &approval.name), name) {
                return Err(ConfigError::ToolApproval {
                    from: key(Kind::ToolApproval, name),
                    message: format!(
                        "ToolApproval {other} already approves {} {:?} of server {}",
                        approval.kind, approval.name, approval.server
                    ),
                });
            }
        }
        Ok(())
    }

    /// The `TrustedIssuer` whose keys are the control plane's own (the token service), if any.
    pub fn control_plane_issuer(&self) -> Option<(&str, &TrustedIssuerSpec)> {
        self.issuers.iter().find(|(_, s)| s.keys.control_plane).map(|(n, s)| (n.as_str(), s))
    }

    /// Adds key sets the control plane fetched (OIDC discovery or JWKS URL). Each must belong to
    /// an issuer of this configuration that does not carry its keys inline, and hold public keys
    /// only.
    pub fn with_fetched_keys(
        mut self,
        fetched: impl IntoIterator<Item = (String, serde_json::Value)>,
    ) -> Result<Config, ConfigError> {
        for (issuer, jwks) in fetched {
            let error = |message: String| ConfigError::Keys { issuer: issuer.clone(), message };
            let spec = self.issuers.get(&issuer).ok_or_else(|| error("no such TrustedIssuer".into()))?;
            if spec.keys.jwks.is_some() {
                return Err(error("the issuer's keys are inline; fetched keys are not used".into()));
            }
            crate::jwks::check_public_jwks(&jwks).map_err(|e| error(e.to_string()))?;
            self.keys.insert(issuer, Arc::new(jwks));
        }
        Ok(self)
    }
}

fn key(kind: Kind, name: &str) -> ResourceKey {
    ResourceKey { kind, name: name.to_string() }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
