//! `Revocation`: tokens cut off before they expire — one token by its `jti`, every token of a
//! subject issued at or before a time, or every token of an issuer issued at or before a time.
//! Agents refuse them as `revoked` from the moment the configuration version carrying the
//! revocation reaches them. A revocation may say when every token it covers has expired
//! (`expires`); the control plane deletes it then, so the list stays small.

use serde::{Deserialize, Serialize};

use crate::resource::{DocumentError, validate_name};

/// `spec` of a `Revocation`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RevocationSpec {
    /// The `TrustedIssuer` whose tokens are revoked.
    pub issuer: String,
    /// One token, by its `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// A subject (the value of the issuer's subject claim): every token of it with `iat` at or
    /// before `issuedBefore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// For a subject or whole-issuer revocation: RFC 3339 time, e.g. `2026-11-24T05:00:00Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<String>,
    /// RFC 3339 time after which every token this covers has expired: the control plane
    /// deletes the revocation then. Absent: kept until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// Longest `jti` or subject accepted.
const MAX_VALUE_LEN: usize = 1024;

impl RevocationSpec {
    pub(crate) fn validate(&self) -> Result<(), DocumentError> {
        validate_name(&self.issuer).map_err(|m| DocumentError::field("spec.issuer", m))?;
        for (path, value) in [("spec.jti", &self.jti), ("spec.subject", &self.subject)] {
            if value.as_ref().is_some_and(|v| v.is_empty() || v.len() > MAX_VALUE_LEN) {
                return Err(DocumentError::field(path, format!("must be 1 to {MAX_VALUE_LEN} characters")));
            }
        }
        match (&self.jti, &self.subject, &self.issued_before) {
            (Some(_), None, None) => {}
            (None, _, Some(t)) => {
                parse_time(t).map_err(|m| DocumentError::field("spec.issuedBefore", m))?;
            }
            (None, Some(_), None) => {
                return Err(DocumentError::field(
                    "spec.issuedBefore",
                    "a subject revocation needs the time it reaches up to",
                ));
            }
            (Some(_), None, Some(_)) => {
                return Err(DocumentError::field(
                    "spec.issuedBefore",
                    "applies to subject and issuer revocations only",
                ));
            }
            _ => {
                return Err(DocumentError::field(
                    "spec",
                    "revoke one token (jti), a subject (subject + issuedBefore) or the whole issuer (issuedBefore)",
                ));
            }
        }
        if let Some(t) = &self.expires {
            parse_time(t).map_err(|m| DocumentError::field("spec.expires", m))?;
        }
        Ok(())
    }

    /// `expires` in seconds since the epoch (validated on admission).
    pub fn expires_unix(&self) -> Option<i64> {
        self.expires.as_deref().and_then(|t| parse_time(t).ok())
    }

    /// `issuedBefore` in seconds since the epoch (validated on admission).
    pub fn issued_before_unix(&self) -> Option<i64> {
        self.issued_before.as_deref().and_then(|t| parse_time(t).ok())
    }
}

/// The name of the revocation of one token: from the hash of (issuer, jti), so whoever revokes
/// it — its holder at the token service, an operator with `wardenctl revoke` — writes the same
/// resource, and revoking twice changes nothing.
pub fn token_revocation_name(issuer: &str, jti: &str) -> String {
    format!("jti-{}", &crate::token::jti_hash(issuer, jti)[..16])
}

/// Seconds since the epoch as an RFC 3339 time (UTC).
pub fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "9999-12-31T23:59:59Z".to_string())
}

/// An RFC 3339 date-time in seconds since the epoch.
fn parse_time(text: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("{text:?} is not an RFC 3339 time like 2026-11-24T05:00:00Z: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(jti: Option<&str>, subject: Option<&str>, before: Option<&str>) -> RevocationSpec {
        RevocationSpec {
            issuer: "corp".into(),
            jti: jti.map(Into::into),
            subject: subject.map(Into::into),
            issued_before: before.map(Into::into),
            expires: None,
        }
    }

    #[test]
    fn a_revocation_names_one_token_or_one_subject_up_to_a_time() {
        assert!(spec(Some("t1"), None, None).validate().is_ok());
        let by_subject = spec(None, Some("alice"), Some("2026-11-24T05:00:00+01:00"));
        assert!(by_subject.validate().is_ok());
        // 05:00 at +01:00 is 04:00 UTC.
        assert_eq!(by_subject.issued_before_unix(), Some(1_795_492_800));
        let whole_issuer = spec(None, None, Some("2026-11-24T05:00:00Z"));
        assert!(whole_issuer.validate().is_ok());
        let expiring = RevocationSpec { expires: Some("2026-11-24T06:00:00Z".into()), ..spec(Some("t1"), None, None) };
        assert_eq!(expiring.expires_unix(), Some(1_795_500_000));
        let bad_expiry = RevocationSpec { expires: Some("soon".into()), ..spec(Some("t1"), None, None) };
        assert!(matches!(bad_expiry.validate(), Err(DocumentError::Field { path, .. }) if path == "spec.expires"));
        for (bad, path) in [
            (spec(None, None, None), "spec"),
            (spec(Some("t1"), Some("alice"), None), "spec"),
            (spec(None, Some("alice"), None), "spec.issuedBefore"),
            (spec(Some("t1"), None, Some("2026-11-24T05:00:00Z")), "spec.issuedBefore"),
            (spec(None, Some("alice"), Some("yesterday")), "spec.issuedBefore"),
            (spec(Some(""), None, None), "spec.jti"),
        ] {
            match bad.validate() {
                Err(DocumentError::Field { path: p, .. }) => assert_eq!(p, path, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
