//! Warden's gRPC contracts: generated types and service stubs, nothing else.
//!
//! Conversions into domain types live at the edge of each crate that uses them.
#![forbid(unsafe_code)]

pub mod codec;

/// Version 1 of the `warden.v1` package.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("warden.v1");
}
