//! The current configuration compiled for the checks the control plane makes itself: the token
//! service's exchanges and revocations, and agents' attested joins. Compiled once per change of
//! what compiles (a version that changes revocations alone compiles nothing) and shared, so
//! the token rules agents enforce are the ones these checks use.

use std::sync::{Arc, Mutex};

use warden_core::authorize::Authorizer;
use warden_core::token::Verifier;
use warden_core::{Config, ConfigError};

use super::state::FleetState;

/// One version of the fleet state, compiled.
pub struct Compiled {
    /// `FleetState::resources_version` it was compiled at.
    pub version: u64,
    /// The documents and fetched keys.
    pub config: Config,
    /// The token rules (signature, issuer, audience, lifetime, binding).
    pub verifier: Verifier,
    /// The Cedar policies.
    pub authorizer: Authorizer,
}

/// The last version compiled.
#[derive(Default)]
pub(super) struct Cache(Mutex<Option<Arc<Compiled>>>);

impl Cache {
    /// `state` compiled, from the cache when its resources did not change.
    pub(super) fn get(&self, state: &FleetState) -> Result<Arc<Compiled>, ConfigError> {
        if let Some(c) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && c.version == state.resources_version
        {
            return Ok(c.clone());
        }
        let fresh = Arc::new(compile(state)?);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }
}

fn compile(state: &FleetState) -> Result<Compiled, ConfigError> {
    let config = Config::build(state.resources.values().map(|e| &e.document))?
        .with_fetched_keys(state.keys.iter().map(|(name, r)| (name.clone(), r.jwks.clone())))?;
    let (verifier, _) = Verifier::new(&config);
    let authorizer = Authorizer::new(&config);
    Ok(Compiled { version: state.resources_version, config, verifier, authorizer })
}
