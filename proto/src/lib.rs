//! Warden's gRPC contracts: generated types and service stubs, nothing else.
//!
//! Conversions into domain types live at the edge of each crate that uses them.
#![forbid(unsafe_code)]

pub mod codec;
pub mod decision_record;

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    #[test]
    fn token_keys_travel_as_sixteen_big_endian_bytes_each() {
        let keys = [1u128, u128::MAX, 0x0102_0304];
        let packed = super::pack_token_keys(&keys);
        assert_eq!(packed.len(), 48);
        assert_eq!(&packed[..16], &[0u8; 15].iter().copied().chain([1]).collect::<Vec<_>>()[..]);
        assert_eq!(super::unpack_token_keys(&packed).unwrap(), keys);
        assert_eq!(super::unpack_token_keys(&packed[..47]), None, "a partial key is refused");
    }
}

/// The largest control message (a configuration snapshot or delta) an agent decodes. The
/// control plane refuses, at apply time and naming this limit, any write whose snapshot would
/// be larger (`warden-cp --max-config-bytes`, at most this), so no agent ever meets a
/// configuration it cannot load. gRPC's default of 4 MiB would be met by a large fleet's
/// policies; this is the contract both sides are built with.
pub const MAX_CONFIG_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Bytes of one token key in `Revocations.token_keys`.
pub const TOKEN_KEY_BYTES: usize = 16;

/// `Revocations.token_keys` from keys (in the order given; the contract says ascending).
pub fn pack_token_keys(keys: &[u128]) -> Vec<u8> {
    keys.iter().flat_map(|k| k.to_be_bytes()).collect()
}

/// The keys of `Revocations.token_keys`; `None` unless it is whole keys.
pub fn unpack_token_keys(bytes: &[u8]) -> Option<Vec<u128>> {
    let chunks = bytes.chunks_exact(TOKEN_KEY_BYTES);
    if !chunks.remainder().is_empty() {
        return None;
    }
    Some(chunks.map(|c| u128::from_be_bytes(c.try_into().expect("chunks are whole keys"))).collect())
}

impl v1::Revocations {
    /// Revoked `tokens` (ascending) and `cuts` as (issuer, subject or empty, issued before).
    pub fn from_parts(tokens: &[u128], cuts: impl IntoIterator<Item = (String, String, i64)>) -> v1::Revocations {
        v1::Revocations {
            token_keys: pack_token_keys(tokens).into(),
            cuts: cuts
                .into_iter()
                .map(|(issuer, subject, issued_before_unix)| v1::Cut { issuer, subject, issued_before_unix })
                .collect(),
        }
    }
}

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
