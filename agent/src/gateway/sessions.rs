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

/// A task token that opened a session, to be revoked when the session ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndedTask {
    /// The TrustedIssuer's name (the control plane's token service).
    pub issuer: String,
    /// The token's `jti`.
    pub jti: String,
    /// The token's `exp`, seconds since the epoch.
    pub expires_unix: i64,
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
