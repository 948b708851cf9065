//! End-to-end suites: the real binaries, together, on loopback. One test binary so it links
//! once.

mod attested_join;
mod bridges;
mod console;
mod decisions;
mod demo;
mod fleet_pki;
mod fleet_sync;
mod gateway;
mod identity_sources;
mod inventory;
mod issuer_keys;
mod packaging;
mod pinning;
mod prometheus;
mod rate_limits;
mod replay;
mod replicas;
mod revision;
mod step_up;
mod token_exchange;
