//! The resource model operators apply: kubectl-like documents (`apiVersion`, `kind`,
//! `metadata.name`, `spec`), parsed strictly and validated field by field.
//!
//! Everything that reaches a store or an agent goes through [`Document::from_json`], whether it
//! came from an operator's YAML or from a snapshot on the wire, so there is one path from "what
//! the operator wrote" to "what the agent enforces".

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::bridge::CredentialBridgeSpec;
use crate::issuer::TrustedIssuerSpec;
use crate::pinning::ToolApprovalSpec;
use crate::policy::PolicySpec;
use crate::revocation::RevocationSpec;
use crate::server::McpServerSpec;
use crate::validation::depth;
pub use crate::validation::{Admission, DocumentError, MAX_NAME_LEN, NameError, validate_name};

/// The only `apiVersion` this release accepts.
pub const API_VERSION: &str = "warden.dev/v1";

/// Deepest nesting of arrays and objects accepted in a document, its envelope being the first
/// level. Real documents nest 7 at most (a JWK's `x5c`); the bound keeps every form a document is
/// kept in (inside a store record, a snapshot) far below serde_json's 128, so whatever is
/// admitted reads back.
pub const MAX_DEPTH: usize = 32;

/// The kinds of resource an operator can apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// An identity provider whose signed tokens are accepted.
    TrustedIssuer,
    /// An MCP server behind an agent, named by its resource identifier (its audience).
    McpServer,
    /// Cedar policy text scoped to servers.
    Policy,
    /// Tokens cut off before they expire.
    Revocation,
    /// A legacy static key one server accepts for a bounded time (see [`crate::bridge`]).
    CredentialBridge,
    /// The approved definition of one server's tool, prompt or resource template (see
    /// [`crate::pinning`]).
    ToolApproval,
}

impl Kind {
    /// Every kind, in the order they are listed and applied (issuers before the servers that
    /// name them, servers before the policies scoped to them).
    pub const ALL: [Kind; 6] = [
        Kind::TrustedIssuer,
        Kind::McpServer,
        Kind::Policy,
        Kind::CredentialBridge,
        Kind::ToolApproval,
        Kind::Revocation,
    ];

    /// The canonical name, as written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::TrustedIssuer => "TrustedIssuer",
            Kind::McpServer => "McpServer",
            Kind::Policy => "Policy",
            Kind::Revocation => "Revocation",
            Kind::CredentialBridge => "CredentialBridge",
            Kind::ToolApproval => "ToolApproval",
        }
    }

    /// Parses a kind as an operator types it on the command line: canonical, lower case,
    /// plural or short (`issuers`, `servers`, `policies`).
    pub fn parse_loose(s: &str) -> Option<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "trustedissuer" | "trustedissuers" | "issuer" | "issuers" => Some(Kind::TrustedIssuer),
            "mcpserver" | "mcpservers" | "server" | "servers" => Some(Kind::McpServer),
            "policy" | "policies" => Some(Kind::Policy),
            "revocation" | "revocations" => Some(Kind::Revocation),
            "credentialbridge" | "credentialbridges" | "bridge" | "bridges" => Some(Kind::CredentialBridge),
            "toolapproval" | "toolapprovals" | "approval" | "approvals" => Some(Kind::ToolApproval),
            _ => None,
        }
    }

    fn parse_exact(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one resource: its kind and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// The resource's kind.
    pub kind: Kind,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// `metadata` of a document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// The resource's name, unique per kind.
    pub name: String,
    /// The stored version the operator last saw. When present on apply, the write is refused if
    /// the stored resource has moved on (optimistic concurrency). Never part of the stored form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
    /// Free-form labels, for operators' own selection.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The kind-specific part of a document.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    /// `kind: TrustedIssuer`.
    TrustedIssuer(TrustedIssuerSpec),
    /// `kind: McpServer`.
    McpServer(McpServerSpec),
    /// `kind: Policy`.
    Policy(PolicySpec),
    /// `kind: Revocation`.
    Revocation(RevocationSpec),
    /// `kind: CredentialBridge`.
    CredentialBridge(CredentialBridgeSpec),
    /// `kind: ToolApproval`.
    ToolApproval(ToolApprovalSpec),
}

/// One validated resource document.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// `metadata`.
    pub metadata: Metadata,
    /// `spec`, typed by `kind`.
    pub spec: Spec,
}

/// The envelope, read before the spec so the spec can be typed by `kind`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Envelope {
    api_version: String,
    kind: String,
    metadata: serde_json::Value,
    spec: serde_json::Value,
    /// What the control plane reports (`wardenctl get -o yaml`); ignored on input so a document
    /// read back can be applied again.
    #[serde(default, rename = "status")]
    _status: serde_json::Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeOut<'a, S: Serialize> {
    api_version: &'a str,
    kind: &'a str,
    metadata: &'a Metadata,
    spec: &'a S,
}

impl Document {
    /// The document's kind.
    pub fn kind(&self) -> Kind {
        match self.spec {
            Spec::TrustedIssuer(_) => Kind::TrustedIssuer,
            Spec::McpServer(_) => Kind::McpServer,
            Spec::Policy(_) => Kind::Policy,
            Spec::Revocation(_) => Kind::Revocation,
            Spec::CredentialBridge(_) => Kind::CredentialBridge,
            Spec::ToolApproval(_) => Kind::ToolApproval,
        }
    }

    /// The document's kind and name.
    pub fn key(&self) -> ResourceKey {
        ResourceKey { kind: self.kind(), name: self.metadata.name.clone() }
    }

    /// Parses and validates one document given as a JSON value (what YAML documents are
    /// converted to, and what travels in snapshots).
    pub fn from_json(value: serde_json::Value, admission: &Admission) -> Result<Document, DocumentError> {
        if depth(&value) > MAX_DEPTH {
            return Err(DocumentError::field("document", format!("nests deeper than {MAX_DEPTH} levels")));
        }
        let envelope: Envelope = typed("", value)?;
        if envelope.api_version != API_VERSION {
            return Err(DocumentError::field(
                "apiVersion",
                format!("must be {API_VERSION:?}, got {:?}", envelope.api_version),
            ));
        }
        let kind = Kind::parse_exact(&envelope.kind).ok_or_else(|| {
            DocumentError::field(
                "kind",
                format!(
                    "unknown kind {:?}; expected one of TrustedIssuer, McpServer, Policy, CredentialBridge, ToolApproval, Revocation",
                    envelope.kind
                ),
            )
        })?;
        let mut metadata: Metadata = typed("metadata", envelope.metadata)?;
        validate_name(&metadata.name).map_err(|m| DocumentError::field("metadata.name", m))?;
        for key in metadata.labels.keys() {
            validate_name(key).map_err(|m| DocumentError::field(format!("metadata.labels.{key}"), m))?;
        }
        // Kept only long enough for the store's concurrency check; see `expected_version`.
        let expected = metadata.resource_version.take();
        let spec = match kind {
            Kind::TrustedIssuer => {
                let spec: TrustedIssuerSpec = typed("spec", envelope.spec)?;
                spec.validate(admission)?;
                Spec::TrustedIssuer(spec)
            }
            Kind::McpServer => {
                let spec: McpServerSpec = typed("spec", envelope.spec)?;
                spec.validate()?;
                Spec::McpServer(spec)
            }
            Kind::Policy => {
                let mut spec: PolicySpec = typed("spec", envelope.spec)?;
                spec.validate()?;
                Spec::Policy(spec)
            }
            Kind::Revocation => {
                let spec: RevocationSpec = typed("spec", envelope.spec)?;
                spec.validate()?;
                Spec::Revocation(spec)
            }
            Kind::CredentialBridge => {
                let mut spec: CredentialBridgeSpec = typed("spec", envelope.spec)?;
                spec.validate()?;
                Spec::CredentialBridge(spec)
            }
            Kind::ToolApproval => {
                let spec: ToolApprovalSpec = typed("spec", envelope.spec)?;
                spec.validate()?;
                Spec::ToolApproval(spec)
            }
        };
        metadata.resource_version = expected;
        Ok(Document { metadata, spec })
    }

    /// Parses a document from JSON bytes.
    pub fn from_json_bytes(bytes: &[u8], admission: &Admission) -> Result<Document, DocumentError> {
        let value =
            serde_json::from_slice(bytes).map_err(|e| DocumentError::Syntax { index: 1, message: e.to_string() })?;
        Document::from_json(value, admission)
    }

    /// The canonical stored form: compact JSON with a stable field order, without
    /// `metadata.resourceVersion` (versions live beside documents, not inside them).
    pub fn to_canonical_json(&self) -> Vec<u8> {
        let mut metadata = self.metadata.clone();
        metadata.resource_version = None;
        let kind = self.kind().as_str();
        let out = match &self.spec {
            Spec::TrustedIssuer(s) => serde_json::to_vec(&env(kind, &metadata, s)),
            Spec::McpServer(s) => serde_json::to_vec(&env(kind, &metadata, s)),
            Spec::Policy(s) => serde_json::to_vec(&env(kind, &metadata, s)),
            Spec::Revocation(s) => serde_json::to_vec(&env(kind, &metadata, s)),
            Spec::CredentialBridge(s) => serde_json::to_vec(&env(kind, &metadata, s)),
            Spec::ToolApproval(s) => serde_json::to_vec(&env(kind, &metadata, s)),
        };
        out.expect("documents always serialize")
    }
}

fn env<'a, S: Serialize>(kind: &'a str, metadata: &'a Metadata, spec: &'a S) -> EnvelopeOut<'a, S> {
    EnvelopeOut { api_version: API_VERSION, kind, metadata, spec }
}

/// Deserializes `value` as `T`, reporting the failing field's full path.
fn typed<T: serde::de::DeserializeOwned>(prefix: &str, value: serde_json::Value) -> Result<T, DocumentError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix.is_empty(), inner.as_str()) {
            (true, ".") => "document".to_string(),
            (true, _) => inner,
            (false, ".") => prefix.to_string(),
            (false, _) => format!("{prefix}.{inner}"),
        };
        DocumentError::field(path, e.into_inner().to_string())
    })
}

/// Splits YAML (one or more `---`-separated documents) into JSON values, one per non-empty
/// document. Syntax errors name the document and line.
pub fn yaml_documents(text: &str) -> Result<Vec<serde_json::Value>, DocumentError> {
    let mut out = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(de)
            .map_err(|e| DocumentError::Syntax { index: i + 1, message: e.to_string() })?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// Test fixture: every document of `yaml`, each parsed and validated (panics otherwise).
#[cfg(test)]
pub(crate) fn test_documents(yaml: &str) -> Vec<Document> {
    yaml_documents(yaml).unwrap().into_iter().map(|v| Document::from_json(v, &Admission::default()).unwrap()).collect()
}

#[cfg(test)]
#[path = "resource_tests.rs"]
mod tests;
