//! Fleet identities: SPIFFE IDs in certificates, the CA pin, and join tokens.

use base64::Engine;
use sha2::{Digest, Sha256};

/// Who a fleet certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetIdentity {
    /// `spiffe://<trust-domain>/agent/<id>`.
    Agent(String),
    /// `spiffe://<trust-domain>/operator/<name>`.
    Operator(String),
}

/// Reads a SPIFFE ID of `trust_domain`; anything else (another domain, another shape) is `None`.
pub fn parse_spiffe_id(uri: &str, trust_domain: &str) -> Option<FleetIdentity> {
    let rest = uri.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?.strip_prefix('/')?;
    let (role, name) = rest.split_once('/')?;
    crate::resource::validate_name(name).ok()?;
    match role {
        "agent" => Some(FleetIdentity::Agent(name.to_string())),
        "operator" => Some(FleetIdentity::Operator(name.to_string())),
        _ => None,
    }
}

/// The pin of a CA certificate: base64url (no padding) of the SHA-256 of its DER.
pub fn ca_pin(der: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

/// A join token as handed to an agent: `<id>.<secret>.<ca-pin>`. The id finds the record, the
/// secret proves possession (the control plane keeps only its hash), and the pin lets the agent
/// authenticate the control plane before it trusts anything it says.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Public identifier of the token.
    pub id: String,
    /// The secret part.
    pub secret: String,
    /// The CA pin.
    pub ca_pin: String,
}

impl std::fmt::Debug for JoinToken {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken").field("id", &self.id).finish_non_exhaustive()
    }
}

impl JoinToken {
    /// Parses `<id>.<secret>.<ca-pin>`.
    pub fn parse(text: &str) -> Result<JoinToken, &'static str> {
        let mut parts = text.trim().split('.');
        let (Some(id), Some(secret), Some(pin), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err("a join token has three dot-separated parts: <id>.<secret>.<ca-pin>");
        };
        if !(is_b64url(id) && is_b64url(secret) && is_b64url(pin)) {
            return Err("a join token holds only base64url characters and dots");
        }
        Ok(JoinToken { id: id.into(), secret: secret.into(), ca_pin: pin.into() })
    }

    /// Parses the credential an agent sends, `<id>.<secret>`, into its two parts.
    pub fn parse_credential(text: &str) -> Result<(&str, &str), &'static str> {
        match text.split_once('.') {
            Some((id, secret)) if is_b64url(id) && is_b64url(secret) => Ok((id, secret)),
            _ => Err("a join credential is <id>.<secret> in base64url"),
        }
    }

    /// The part sent to the control plane: `<id>.<secret>`.
    pub fn credential(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The full token.
    pub fn to_text(&self) -> String {
        format!("{}.{}.{}", self.id, self.secret, self.ca_pin)
    }
}

fn is_b64url(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The stored form of a join token's secret.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares two digests in time independent of where they differ.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_of_other_domains_or_shapes_are_not_fleet_identities() {
        assert_eq!(parse_spiffe_id("spiffe://td/agent/a1", "td"), Some(FleetIdentity::Agent("a1".into())));
        assert_eq!(parse_spiffe_id("spiffe://td/operator/alice", "td"), Some(FleetIdentity::Operator("alice".into())));
        assert_eq!(parse_spiffe_id("spiffe://other/agent/a1", "td"), None);
        assert_eq!(parse_spiffe_id("spiffe://tdx/agent/a1", "td"), None);
        assert_eq!(parse_spiffe_id("spiffe://td/agent/a1/extra", "td"), None);
        assert_eq!(parse_spiffe_id("spiffe://td/admin/a1", "td"), None);
        assert_eq!(parse_spiffe_id("https://td/agent/a1", "td"), None);
    }

    #[test]
    fn join_tokens_parse_and_hide_their_secret() {
        let t = JoinToken::parse("abc.s3cr3t.PIN_-x").unwrap();
        assert_eq!(t.credential(), "abc.s3cr3t");
        assert_eq!(t.to_text(), "abc.s3cr3t.PIN_-x");
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert!(JoinToken::parse("abc.s3cr3t").is_err());
        assert!(JoinToken::parse("a.b.c.d").is_err());
        assert!(JoinToken::parse("a.b c.d").is_err());
        assert!(JoinToken::parse("a..c").is_err());
        assert_eq!(JoinToken::parse_credential("abc.s3cr3t"), Ok(("abc", "s3cr3t")));
        assert!(JoinToken::parse_credential("abc.s3.cr3t").is_err());
        assert!(JoinToken::parse_credential("abc").is_err());
    }

    #[test]
    fn digest_comparison() {
        let a = secret_hash("x");
        assert!(digests_equal(&a, &secret_hash("x")));
        assert!(!digests_equal(&a, &secret_hash("y")));
    }
}
