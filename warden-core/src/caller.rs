//! The caller as policy sees it, kept beside decision records so a decision can be explained
//! and replayed later against another configuration.
//!
//! A [`Caller`] holds exactly what [`crate::authorize`] reads of a verified workload — the
//! principal's issuer and subject, the scopes, the `tenant`, `email` and `groups` claims, and a
//! task token's granted tools — and nothing else of the token (no `jti`, no signature, no other
//! claim). Records carry its [`Caller::digest`], and the facts themselves only the first time
//! an agent names them (per run, and again now and then), so a busy caller costs a record 18
//! bytes. The digest is over the facts' length-prefixed encoding: whoever stores facts keyed by
//! it can check them, and no two distinct callers share one.

use sha2::{Digest, Sha256};

use crate::token::{Task, Verified};

/// What policy reads of a caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The principal's issuer: the TrustedIssuer (or bridge) name; for a task token, the issuer
    /// of the token it was exchanged for.
    pub issuer: String,
    pub subject: String,
    pub scopes: Vec<String>,
    pub tenant: Option<String>,
    pub email: Option<String>,
    /// The `groups` claim's strings, when it is an array.
    pub groups: Option<Vec<String>>,
    /// For a task token: the tools its task was granted.
    pub granted_tools: Option<Vec<String>>,
}

/// The length of a [`Caller::digest`].
pub const DIGEST_LEN: usize = 16;

impl Caller {
    /// What policy reads of `workload`.
    pub fn of(workload: &Verified) -> Caller {
        let claim = |name| workload.claims.get(name).and_then(|v: &serde_json::Value| v.as_str()).map(str::to_string);
        Caller {
            issuer: workload.principal_issuer().to_string(),
            subject: workload.subject.clone(),
            scopes: workload.scopes.clone(),
            tenant: claim("tenant"),
            email: claim("email"),
            groups: workload
                .claims
                .get("groups")
                .and_then(|v| v.as_array())
                .map(|g| g.iter().filter_map(|g| g.as_str().map(str::to_string)).collect()),
            granted_tools: workload.task.as_ref().map(|t| t.tools.clone()),
        }
    }

    /// The first 16 bytes of SHA-256 over the facts, each field length-prefixed and each
    /// optional one marked present or absent.
    pub fn digest(&self) -> [u8; DIGEST_LEN] {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(b"warden caller v1");
        field(self.issuer.as_bytes());
        field(self.subject.as_bytes());
        let list = |items: Option<&Vec<String>>, field: &mut dyn FnMut(&[u8])| match items {
            None => field(&[0]),
            Some(items) => {
                field(&[1]);
                field(&(items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| field(i.as_bytes()));
            }
        };
        list(Some(&self.scopes), &mut field);
        for value in [&self.tenant, &self.email] {
            match value {
                None => field(&[0]),
                Some(v) => {
                    field(&[1]);
                    field(v.as_bytes());
                }
            }
        }
        list(self.groups.as_ref(), &mut field);
        list(self.granted_tools.as_ref(), &mut field);
        let full: [u8; 32] = h.finalize().into();
        let mut out = [0; DIGEST_LEN];
        out.copy_from_slice(&full[..DIGEST_LEN]);
        out
    }

    /// A workload that policy reads exactly as it read the one these facts came from (for
    /// replaying a recorded request). It has no token: times, `jti` and binding are empty.
    pub fn workload(&self) -> Verified {
        let mut claims = serde_json::Map::new();
        for (name, value) in [("tenant", &self.tenant), ("email", &self.email)] {
            if let Some(v) = value {
                claims.insert(name.into(), v.clone().into());
            }
        }
        if let Some(groups) = &self.groups {
            claims.insert("groups".into(), groups.clone().into());
        }
        Verified {
            issuer: self.issuer.clone(),
            subject: self.subject.clone(),
            jti: None,
            jti_hash: None,
            jti_key: None,
            expires_at: i64::MAX,
            issued_at: 0,
            valid_until: i64::MAX,
            bound_certificate: None,
            bound_dpop_key: None,
            scopes: self.scopes.clone(),
            claims,
            task: self.granted_tools.as_ref().map(|tools| Task {
                subject_issuer: self.issuer.clone(),
                tools: tools.clone(),
                subject_token: None,
            }),
            bridge: None,
            derived: Default::default(),
        }
    }
}

impl Verified {
    /// [`Caller::digest`] of this workload, computed once per verified token.
    pub fn caller_digest(&self) -> [u8; DIGEST_LEN] {
        *self.derived.caller.get_or_init(|| Caller::of(self).digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            issuer: "corp".into(),
            subject: "alice".into(),
            scopes: vec!["a".into(), "b".into()],
            tenant: Some("acme".into()),
            email: None,
            groups: Some(vec![]),
            granted_tools: None,
        }
    }

    #[test]
    fn every_fact_changes_the_digest_and_nothing_else_does() {
        let base = caller();
        let d = base.digest();
        assert_eq!(d, caller().digest());
        let variants = [
            Caller { issuer: "corp2".into(), ..caller() },
            Caller { subject: "alice2".into(), ..caller() },
            Caller { scopes: vec!["a b".into()], ..caller() },
            Caller { scopes: vec!["ab".into()], ..caller() },
            Caller { tenant: None, ..caller() },
            Caller { email: Some("acme".into()), tenant: None, ..caller() },
            Caller { groups: None, ..caller() },
            Caller { groups: Some(vec!["".into()]), ..caller() },
            Caller { granted_tools: Some(vec![]), ..caller() },
        ];
        let mut seen = std::collections::HashSet::from([d]);
        for v in variants {
            assert!(seen.insert(v.digest()), "{v:?} digests like another caller");
        }
    }

    #[test]
    fn a_replayed_workload_reads_as_the_original() {
        let mut original = caller().workload();
        original.claims.insert("jti".into(), "secret-ish".into());
        original.claims.insert("email".into(), "a@example.com".into());
        let facts = Caller::of(&original);
        assert_eq!(facts.email.as_deref(), Some("a@example.com"));
        assert_eq!(Caller::of(&facts.workload()), facts, "what policy reads survives the round trip");
        assert!(!facts.workload().claims.contains_key("jti"), "only what policy reads is kept");
        let task = Caller { granted_tools: Some(vec!["echo".into()]), ..caller() };
        let replayed = task.workload();
        assert_eq!(replayed.principal_issuer(), "corp");
        assert_eq!(Caller::of(&replayed), task);
        assert_eq!(replayed.caller_digest(), task.digest());
    }
}
