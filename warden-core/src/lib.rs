//! Warden's pure logic: the resource model operators apply, its validation, and the compiled
//! configuration agents enforce.
//!
//! **Architecture invariant**: this crate does no I/O and knows nothing about the wire format,
//! storage or async runtimes, so everything in it can be unit-tested and fuzzed directly.
#![forbid(unsafe_code)]

pub mod arguments;
pub mod attestation;
pub mod authorize;
pub mod bounded;
pub mod bridge;
pub mod caller;
pub mod config;
pub mod dpop;
pub mod duration;
pub mod exchange;
pub mod explain;
pub mod identity;
pub mod issuer;
pub mod jwks;
pub mod mcp;
pub mod metrics;
pub mod param_headers;
pub mod pinning;
pub mod policy;
pub mod policy_test;
pub mod prometheus;
pub mod rate_limit;
pub mod refusal;
pub mod resource;
pub mod revocation;
pub mod server;
pub mod signature;
pub mod token;
pub mod validation;

#[cfg(test)]
mod props;

pub use config::{Config, ConfigError};
pub use resource::{Admission, Document, DocumentError, Kind, ResourceKey};
