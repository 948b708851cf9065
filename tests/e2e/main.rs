//! End-to-end suites: the real binaries, together, on loopback. One test binary so it links
//! once.

mod bridges;
mod decisions;
mod demo;
mod fleet_pki;
mod fleet_sync;
mod gateway;
mod inventory;
mod issuer_keys;
mod replay;
mod replicas;
mod token_exchange;
