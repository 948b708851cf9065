//! Which workload opened which MCP session. A session id is a bearer handle to server-side
//! state; bound to the workload whose token opened it, a leaked id is useless to anyone else
//! (MCP security best practices, "session hijacking").
//!
//! The gateway never shows a caller the upstream's session id: it hands out a sealed one,
//! `w1.<MAC>.<upstream id>`, the MAC over (the opening workload's principal, the upstream id)
//! with the agent's session key ([`Seal`]). Only that workload can present it, on this agent
//! after a restart, or on any agent sharing the key file; an id the gateway cannot vouch for
//! (forged, another workload's, from before sealing, or from an agent with another key) is
//! refused like an unknown session (404: MCP clients then open a new one). The table below
//! remains for what a session's end triggers (revoking the task token that opened it), and
//! for the local check API, where Envoy — not Warden — carries the upstream's id.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use warden_core::token::Verified;

use crate::sync::EndedTask;

/// Sessions remembered; past it the oldest is forgotten first. A forgotten session is served to
/// any valid token again, like one opened before the agent started.
pub const CAPACITY: usize = 65_536;

/// Sessions remembered per workload; past it that workload's oldest is forgotten, so one
/// workload opening sessions in a loop cannot push other workloads' bindings out.
pub const PER_WORKLOAD: usize = 1_024;

/// A hash of (issuer, subject): what a session is bound to.
pub type Principal = [u8; 32];

/// The bytes of a session key.
pub const KEY_BYTES: usize = 32;

/// Seals and opens the session ids callers see (see the module docs).
pub struct Seal {
    key: ring::hmac::Key,
}

/// Sealed ids start with this (a version, so the form can change).
const SEALED_PREFIX: &str = "w1.";
/// An HMAC-SHA256 tag as unpadded base64url.
const MAC_CHARS: usize = 43;

impl Seal {
    /// A seal with `secret` as its key.
    pub fn new(secret: &[u8; KEY_BYTES]) -> Seal {
        Seal { key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret) }
    }

    /// What the MAC covers: the principal (fixed length) then the upstream's id.
    fn message(upstream: &[u8], principal: &Principal) -> Vec<u8> {
        [&principal[..], upstream].concat()
    }

    /// The id to give the caller for the upstream's `upstream` id, opened by `principal`.
    pub fn seal(&self, upstream: &[u8], principal: &Principal) -> Option<http::HeaderValue> {
        use base64::Engine;
        let tag = ring::hmac::sign(&self.key, &Seal::message(upstream, principal));
        let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
        let mut sealed = Vec::with_capacity(SEALED_PREFIX.len() + MAC_CHARS + 1 + upstream.len());
        sealed.extend_from_slice(SEALED_PREFIX.as_bytes());
        sealed.extend_from_slice(mac.as_bytes());
        sealed.push(b'.');
        sealed.extend_from_slice(upstream);
        http::HeaderValue::from_bytes(&sealed).ok()
    }

    /// The upstream's id inside `presented`, when `principal` is the workload it was sealed for.
    pub fn open<'a>(&self, presented: &'a [u8], principal: &Principal) -> Option<&'a [u8]> {
        use base64::Engine;
        let rest = presented.strip_prefix(SEALED_PREFIX.as_bytes())?;
        if rest.len() <= MAC_CHARS || rest[MAC_CHARS] != b'.' {
            return None;
        }
        let (mac, upstream) = (&rest[..MAC_CHARS], &rest[MAC_CHARS + 1..]);
        let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(mac).ok()?;
        // In constant time: the comparison must not tell a forger how much of a MAC was right.
        ring::hmac::verify(&self.key, &Seal::message(upstream, principal), &mac).ok()?;
        Some(upstream)
    }
}

type SessionKey = [u8; 32];

/// The principal of a verified token.
pub fn principal(workload: &Verified) -> Principal {
    let mut h = Sha256::new();
    h.update(workload.issuer.as_bytes());
    h.update([0]);
    h.update(workload.subject.as_bytes());
    h.finalize().into()
}

/// Who opened a session, and the task token to revoke when it ends, if any.
struct Owner {
    principal: Principal,
    task: Option<EndedTask>,
}

/// Session ids (hashed) → the principal that opened them.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    owner: HashMap<SessionKey, Owner>,
    /// Each principal's sessions, oldest first.
    opened: HashMap<Principal, VecDeque<SessionKey>>,
    /// All sessions oldest first; may hold keys forgotten since (skipped).
    order: VecDeque<SessionKey>,
}

impl Table {
    fn forget(&mut self, key: &SessionKey) -> Option<EndedTask> {
        let Owner { principal, task } = self.owner.remove(key)?;
        if let Some(keys) = self.opened.get_mut(&principal) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.opened.remove(&principal);
            }
        }
        task
    }
}

fn key(session: &[u8]) -> SessionKey {
    Sha256::digest(session).into()
}

impl Sessions {
    /// Binds a session the upstream just opened to `principal` (first binding wins), with the
    /// task token to revoke when it ends.
    pub fn bind(&self, session: &[u8], principal: Principal, task: Option<EndedTask>) {
        let mut table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(session);
        if table.owner.contains_key(&k) {
            return;
        }
        if let Some(oldest) = table.opened.get(&principal).filter(|keys| keys.len() >= PER_WORKLOAD).map(|keys| keys[0])
        {
            table.forget(&oldest);
        }
        while table.owner.len() >= CAPACITY || table.order.len() >= 2 * CAPACITY {
            let Some(oldest) = table.order.pop_front() else { break };
            table.forget(&oldest);
        }
        table.owner.insert(k, Owner { principal, task });
        table.opened.entry(principal).or_default().push_back(k);
        table.order.push_back(k);
    }

    /// Whether `principal` may use `session`: yes unless another principal opened it.
    pub fn allows(&self, session: &[u8], principal: &Principal) -> bool {
        let table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        table.owner.get(&key(session)).is_none_or(|o| o.principal == *principal)
    }

    /// Forgets a session that was deleted; the task token that opened it, if it is to be
    /// revoked.
    pub fn end(&self, session: &[u8]) -> Option<EndedTask> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).forget(&key(session))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_id_opens_only_for_the_workload_it_was_sealed_for() {
        let seal = Seal::new(&[7; KEY_BYTES]);
        let (alice, bob) = ([1; 32], [2; 32]);
        let sealed = seal.seal(b"upstream-42", &alice).unwrap();
        assert!(sealed.to_str().unwrap().starts_with("w1."));
        assert_eq!(seal.open(sealed.as_bytes(), &alice), Some(&b"upstream-42"[..]));
        assert_eq!(seal.open(sealed.as_bytes(), &bob), None, "another workload's");
        assert_eq!(Seal::new(&[8; KEY_BYTES]).open(sealed.as_bytes(), &alice), None, "another key's");
        // The upstream's own id, a changed upstream id or MAC, and garbage: refused.
        let text = sealed.to_str().unwrap();
        for forged in [
            "upstream-42".to_string(),
            text.replace("upstream-42", "upstream-43"),
            format!("w1.{}{}", &text[3..10].replace(|_| true, "A"), &text[10..]),
            "w1.".into(),
            format!("w1.{}", "A".repeat(43)),
            format!("w1.{}.", "A".repeat(43)),
            format!("w1.{}.x", "!".repeat(43)),
        ] {
            assert_eq!(seal.open(forged.as_bytes(), &alice), None, "{forged}");
        }
    }

    #[test]
    fn a_session_serves_only_the_workload_that_opened_it() {
        let s = Sessions::default();
        let (alice, bob) = ([1u8; 32], [2u8; 32]);
        assert!(s.allows(b"s1", &bob), "unknown sessions are the upstream's business");
        s.bind(b"s1", alice, None);
        s.bind(b"s1", bob, None);
        assert!(s.allows(b"s1", &alice));
        assert!(!s.allows(b"s1", &bob));
        assert_eq!(s.end(b"s1"), None);
        assert!(s.allows(b"s1", &bob));
    }

    #[test]
    fn ending_a_session_names_the_task_token_that_opened_it_once() {
        let s = Sessions::default();
        let task = EndedTask { issuer: "warden".into(), jti: "j1".into(), expires_unix: 99 };
        s.bind(b"s1", [1; 32], Some(task.clone()));
        // A later answer carrying the same session id does not rebind it to another token.
        s.bind(b"s1", [1; 32], Some(EndedTask { jti: "j2".into(), ..task.clone() }));
        assert_eq!(s.end(b"s1"), Some(task));
        assert_eq!(s.end(b"s1"), None, "a second DELETE revokes nothing more");
    }

    #[test]
    fn one_workload_opening_sessions_in_a_loop_pushes_out_only_its_own() {
        let s = Sessions::default();
        let (alice, mallory) = ([1u8; 32], [2u8; 32]);
        s.bind(b"alice-session", alice, None);
        for i in 0..CAPACITY + 10 {
            s.bind(format!("m-{i}").as_bytes(), mallory, None);
        }
        assert!(!s.allows(b"alice-session", &mallory), "alice's binding survives");
        let newest = format!("m-{}", CAPACITY + 9);
        assert!(!s.allows(newest.as_bytes(), &alice), "mallory's newest sessions are bound");
        assert!(s.allows(b"m-0", &alice), "mallory's oldest were forgotten");
        let table = s.inner.lock().unwrap();
        assert_eq!(table.owner.len(), PER_WORKLOAD + 1);
        assert_eq!(table.opened[&mallory].len(), PER_WORKLOAD);
    }
}
