//! `TrustedIssuer`: an identity provider whose signed tokens are accepted, with the rules its
//! tokens must meet.

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::validation::{Admission, DocumentError};

/// Upper bound on `maxTokenLifetime`: Warden is for short-lived credentials.
pub const MAX_TOKEN_LIFETIME_CEILING: HumanDuration = HumanDuration::from_secs(24 * 3600);
/// Upper bound on `clockSkew`.
pub const CLOCK_SKEW_CEILING: HumanDuration = HumanDuration::from_secs(300);

pub use crate::signature::Algorithm;

/// Where the issuer's public keys come from. Exactly one source is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeySource {
    /// Find the JWKS through `<issuer>/.well-known/openid-configuration`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discovery: bool,
    /// Fetch the JWKS from this URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The JWKS itself (`{"keys": [...]}`), public keys only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// The control plane's own token service: the public halves of the signing keys its
    /// replicas hold in memory. Task tokens from token exchange carry this issuer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub control_plane: bool,
}

/// The algorithm the control plane signs task tokens with.
pub const CONTROL_PLANE_ALGORITHM: Algorithm = Algorithm::EdDSA;

fn default_skew() -> HumanDuration {
    HumanDuration::from_secs(60)
}

fn default_lifetime() -> HumanDuration {
    HumanDuration::from_secs(3600)
}

fn default_subject_claim() -> String {
    "sub".to_string()
}

/// `spec` of a `TrustedIssuer`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrustedIssuerSpec {
    /// The exact `iss` claim value; an https URL.
    pub issuer: String,
    /// Where the signing keys come from.
    pub keys: KeySource,
    /// Algorithms accepted from this issuer; at least one.
    pub allowed_algorithms: Vec<Algorithm>,
    /// Audiences this issuer may mint tokens for; empty means any server that trusts it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Longest accepted `exp - iat` (default 1h, at most 24h).
    #[serde(default = "default_lifetime")]
    pub max_token_lifetime: HumanDuration,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (default 60s, at most 5m).
    #[serde(default = "default_skew")]
    pub clock_skew: HumanDuration,
    /// Claims every token must carry, beyond `iss`, `aud`, `exp` and `iat`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<String>,
    /// The claim naming the workload (default `sub`).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
}

impl TrustedIssuerSpec {
    pub(crate) fn validate(&self, admission: &Admission) -> Result<(), DocumentError> {
        check_url("spec.issuer", &self.issuer, admission)?;
        let sources = usize::from(self.keys.discovery)
            + usize::from(self.keys.jwks_uri.is_some())
            + usize::from(self.keys.jwks.is_some())
            + usize::from(self.keys.control_plane);
        if sources != 1 {
            return Err(DocumentError::field(
                "spec.keys",
                "set exactly one of discovery: true, jwksUri, jwks or controlPlane: true",
            ));
        }
        if self.keys.control_plane {
            // The issuer URL is the token service's base: endpoints are <issuer>/token, ...
            let path = url::Url::parse(&self.issuer).map(|u| u.path().to_string()).unwrap_or_default();
            if path != "/" && !path.is_empty() {
                return Err(DocumentError::field(
                    "spec.issuer",
                    "the control plane's issuer is the token service's origin, e.g. https://cp.example.com:8443, with no path",
                ));
            }
            if self.subject_claim != "sub" {
                return Err(DocumentError::field("spec.subjectClaim", "task tokens name their subject in sub"));
            }
        }
        if self.keys.control_plane && !self.allowed_algorithms.contains(&CONTROL_PLANE_ALGORITHM) {
            return Err(DocumentError::field(
                "spec.allowedAlgorithms",
                "the control plane signs task tokens with EdDSA: list it",
            ));
        }
        if let Some(uri) = &self.keys.jwks_uri {
            check_url("spec.keys.jwksUri", uri, admission)?;
        }
        if let Some(jwks) = &self.keys.jwks {
            crate::jwks::check_public_jwks(jwks).map_err(|m| DocumentError::field("spec.keys.jwks", m))?;
        }
        if self.allowed_algorithms.is_empty() {
            return Err(DocumentError::field("spec.allowedAlgorithms", "list at least one algorithm"));
        }
        if self.max_token_lifetime.0.is_zero() || self.max_token_lifetime > MAX_TOKEN_LIFETIME_CEILING {
            return Err(DocumentError::field(
                "spec.maxTokenLifetime",
                format!("must be more than 0s and at most {MAX_TOKEN_LIFETIME_CEILING}"),
            ));
        }
        if self.clock_skew > CLOCK_SKEW_CEILING {
            return Err(DocumentError::field("spec.clockSkew", format!("must be at most {CLOCK_SKEW_CEILING}")));
        }
        if self.subject_claim.is_empty() {
            return Err(DocumentError::field("spec.subjectClaim", "must not be empty"));
        }
        Ok(())
    }
}

/// Issuer and key URLs are https, absolute, without query or fragment; plain http only when
/// the control plane was started for local testing.
fn check_url(path: &str, text: &str, admission: &Admission) -> Result<(), DocumentError> {
    let url = url::Url::parse(text).map_err(|e| DocumentError::field(path, format!("{text:?} is not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if admission.allow_http_issuers => {}
        "http" => {
            return Err(DocumentError::field(
                path,
                "must be an https URL (plain http is accepted only when the control plane runs with --allow-http-issuers, for local testing)",
            ));
        }
        other => return Err(DocumentError::field(path, format!("must be an https URL, not {other}:"))),
    }
    if url.host().is_none() || url.fragment().is_some() || url.query().is_some() {
        return Err(DocumentError::field(path, "must have a host and no query or fragment"));
    }
    Ok(())
}
