//! Which workload opened which MCP session. A session id is a bearer handle to server-side
//! state; bound to the workload whose token opened it, a leaked id is useless to anyone else
//! (MCP security best practices, "session hijacking").

use std::sync::Mutex;

use sha2::{Digest, Sha256};
use warden_core::bounded::BoundedMap;
use warden_core::token::Verified;

/// Sessions remembered; the oldest is forgotten first. A forgotten session is served to any
/// valid token again, like one opened before the agent started.
pub const CAPACITY: usize = 65_536;

/// A hash of (issuer, subject): what a session is bound to.
pub type Principal = [u8; 32];

/// The principal of a verified token.
pub fn principal(workload: &Verified) -> Principal {
    let mut h = Sha256::new();
    h.update(workload.issuer.as_bytes());
    h.update([0]);
    h.update(workload.subject.as_bytes());
    h.finalize().into()
}

/// Session ids (hashed) → the principal that opened them.
pub struct Sessions {
    inner: Mutex<BoundedMap<[u8; 32], Principal>>,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions { inner: Mutex::new(BoundedMap::new(CAPACITY)) }
    }
}

fn key(session: &[u8]) -> [u8; 32] {
    Sha256::digest(session).into()
}

impl Sessions {
    /// Binds a session the upstream just opened to `principal` (first binding wins).
    pub fn bind(&self, session: &[u8], principal: Principal) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(session);
        if !map.contains_key(&k) {
            map.insert(k, principal);
        }
    }

    /// Whether `principal` may use `session`: yes unless another principal opened it.
    pub fn allows(&self, session: &[u8], principal: &Principal) -> bool {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&key(session)).is_none_or(|p| p == principal)
    }

    /// Forgets a session that was deleted.
    pub fn end(&self, session: &[u8]) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).remove(&key(session));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_serves_only_the_workload_that_opened_it() {
        let s = Sessions::default();
        let (alice, bob) = ([1u8; 32], [2u8; 32]);
        assert!(s.allows(b"s1", &bob), "unknown sessions are the upstream's business");
        s.bind(b"s1", alice);
        s.bind(b"s1", bob);
        assert!(s.allows(b"s1", &alice));
        assert!(!s.allows(b"s1", &bob));
        s.end(b"s1");
        assert!(s.allows(b"s1", &bob));
    }
}
