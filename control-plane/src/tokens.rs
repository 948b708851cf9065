//! The tokens subsystem: what makes and unmakes tokens — the token service ([`token_service`]:
//! exchange and revocation over HTTPS), its signing keys ([`signing`]), revocations
//! ([`revocations`]: written for every caller, bounded, expired) and the keys of the trusted
//! issuers whose tokens agents verify ([`issuer_keys`]).

pub mod issuer_keys;
pub mod revocations;
pub mod signing;
pub mod token_service;

use std::sync::Arc;

use tokio::sync::mpsc;
use warden_tasks::{Shutdown, Tasks};

use self::issuer_keys::{KeyStatuses, RefreshPolicy};
use self::revocations::{Revoker, Waiting};
use self::signing::{SigningKeys, Timing};
use crate::configuration::Configuration;
use crate::fleet::Fleet;
use crate::fleet::replicas::Leadership;

/// Prompt key refreshes agents asked for and the resolver has not taken yet (a full queue
/// drops the request: the resolver rate-limits anyway).
const REFRESH_REQUESTS: usize = 64;

/// The state the token duties share with the services that answer callers.
pub struct Tokens {
    signing_keys: Arc<SigningKeys>,
    revoker: Revoker,
    key_statuses: Arc<KeyStatuses>,
    key_refresh: mpsc::Sender<String>,
}

/// The receiving ends of the tokens subsystem's queues, for its background tasks.
pub struct Duties {
    waiting: Waiting,
    refresh_requests: mpsc::Receiver<String>,
}

impl Tokens {
    /// The subsystem writing to `configuration`; its tasks start with [`Tokens::spawn`].
    pub fn new(configuration: Arc<Configuration>) -> (Arc<Tokens>, Duties) {
        let (revoker, waiting) = Revoker::new(configuration);
        let (key_refresh, refresh_requests) = mpsc::channel(REFRESH_REQUESTS);
        let tokens = Tokens { signing_keys: Arc::default(), revoker, key_statuses: Arc::default(), key_refresh };
        (Arc::new(tokens), Duties { waiting, refresh_requests })
    }

    /// The key that signs task tokens now.
    pub fn signing_keys(&self) -> &SigningKeys {
        &self.signing_keys
    }

    /// Where every revocation is written.
    pub fn revoker(&self) -> &Revoker {
        &self.revoker
    }

    /// Issuer key resolution, as operators see it.
    pub fn key_statuses(&self) -> &Arc<KeyStatuses> {
        &self.key_statuses
    }

    /// An agent met a key id it does not know: refetch that issuer's keys soon.
    pub fn request_key_refresh(&self, issuer: String) {
        // Full queue: a refresh is already pending; the resolver rate-limits anyway.
        let _ = self.key_refresh.try_send(issuer);
    }

    /// Starts the duties: key resolution, signing-key rotation, and the commit and expiry of
    /// revocations (the scheduled ones on the leading replica only).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        &self,
        duties: Duties,
        configuration: &Arc<Configuration>,
        fleet: &Arc<Fleet>,
        leadership: &Leadership,
        refresh: RefreshPolicy,
        signing: Timing,
        tasks: &mut Tasks,
        shutdown: &Shutdown,
    ) {
        tasks.spawn(
            "issuer keys",
            issuer_keys::run(
                configuration.clone(),
                self.key_statuses.clone(),
                refresh,
                leadership.clone(),
                duties.refresh_requests,
                shutdown.clone(),
            ),
        );
        tasks.spawn(
            "signing keys",
            signing::run(configuration.clone(), self.signing_keys.clone(), fleet.clone(), signing, shutdown.clone()),
        );
        tasks.spawn(
            "revocation expiry",
            revocations::expire(configuration.clone(), leadership.clone(), shutdown.clone()),
        );
        tasks.spawn(
            "revocation commits",
            revocations::coalesce(configuration.clone(), duties.waiting, shutdown.clone()),
        );
    }
}
