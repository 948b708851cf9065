//! Warden's gRPC contracts: generated types and service stubs, nothing else.
//!
//! Conversions into domain types live at the edge of each crate that uses them.
#![forbid(unsafe_code)]

pub mod codec;
pub mod decision_record;

#[cfg(test)]
mod props;

/// The largest control message (a configuration snapshot or delta) an agent decodes. The
/// control plane refuses, at apply time and naming this limit, any write whose snapshot would
/// be larger (`warden-cp --max-config-bytes`, at most this), so no agent ever meets a
/// configuration it cannot load. gRPC's default of 4 MiB would be met by a large fleet's
/// policies; this is the contract both sides are built with.
pub const MAX_CONFIG_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Version 1 of the `warden.v1` package.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("warden.v1");
}

/// Envoy's external authorization API (v3), trimmed to what the agent's local check uses; same
/// packages and field numbers as Envoy's, so Envoy (and its generated clients) speak it.
pub mod envoy {
    #![allow(clippy::all, missing_docs)]
    /// `envoy.service.*`
    pub mod service {
        /// `envoy.service.auth.*`
        pub mod auth {
            /// `envoy.service.auth.v3`
            pub mod v3 {
                tonic::include_proto!("envoy.service.auth.v3");
            }
        }
    }
    /// `envoy.config.*`
    pub mod config {
        /// `envoy.config.core.*`
        pub mod core {
            /// `envoy.config.core.v3`
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    /// `envoy.type.*`
    pub mod r#type {
        /// `envoy.type.v3`
        pub mod v3 {
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
}

/// `google.rpc`
pub mod google {
    #![allow(clippy::all, missing_docs)]
    /// `google.rpc`
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}
