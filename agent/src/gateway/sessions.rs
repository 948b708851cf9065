//! Which workload opened which MCP session. A session id is a bearer handle to server-side
//! state; bound to the workload whose token opened it, a leaked id is useless to anyone else
//! (MCP security best practices, "session hijacking").

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use warden_core::token::Verified;

/// Sessions remembered; past it the oldest is forgotten first. A forgotten session is served to
/// any valid token again, like one opened before the agent started.
pub const CAPACITY: usize = 65_536;

/// Sessions remembered per workload; past it that workload's oldest is forgotten, so one
/// workload opening sessions in a loop cannot push other workloads' bindings out.
pub const PER_WORKLOAD: usize = 1_024;

/// A hash of (issuer, subject): what a session is bound to.
pub type Principal = [u8; 32];

type SessionKey = [u8; 32];

/// The principal of a verified token.
pub fn principal(workload: &Verified) -> Principal {
    let mut h = Sha256::new();
    h.update(workload.issuer.as_bytes());
    h.update([0]);
    h.update(workload.subject.as_bytes());
    h.finalize().into()
}

/// Session ids (hashed) → the principal that opened them.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    owner: HashMap<SessionKey, Principal>,
    /// Each principal's sessions, oldest first.
    opened: HashMap<Principal, VecDeque<SessionKey>>,
    /// All sessions oldest first; may hold keys forgotten since (skipped).
    order: VecDeque<SessionKey>,
}

impl Table {
    fn forget(&mut self, key: &SessionKey) {
        let Some(principal) = self.owner.remove(key) else { return };
        if let Some(keys) = self.opened.get_mut(&principal) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.opened.remove(&principal);
            }
        }
    }
}

fn key(session: &[u8]) -> SessionKey {
    Sha256::digest(session).into()
}

impl Sessions {
    /// Binds a session the upstream just opened to `principal` (first binding wins).
    pub fn bind(&self, session: &[u8], principal: Principal) {
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
        table.owner.insert(k, principal);
        table.opened.entry(principal).or_default().push_back(k);
        table.order.push_back(k);
    }

    /// Whether `principal` may use `session`: yes unless another principal opened it.
    pub fn allows(&self, session: &[u8], principal: &Principal) -> bool {
        let table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        table.owner.get(&key(session)).is_none_or(|p| p == principal)
    }

    /// Forgets a session that was deleted.
    pub fn end(&self, session: &[u8]) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).forget(&key(session));
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

    #[test]
    fn one_workload_opening_sessions_in_a_loop_pushes_out_only_its_own() {
        let s = Sessions::default();
        let (alice, mallory) = ([1u8; 32], [2u8; 32]);
        s.bind(b"alice-session", alice);
        for i in 0..CAPACITY + 10 {
            s.bind(format!("m-{i}").as_bytes(), mallory);
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
