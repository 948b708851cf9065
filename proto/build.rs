//! Compiles the protos with protox, so a fresh machine needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "warden/v1/agent.proto",
        "warden/v1/admin.proto",
        "warden/v1/resource.proto",
        // Envoy's ext_authz v3, trimmed (envoy/README.md): the agent's local check API.
        "envoy/service/auth/v3/external_auth.proto",
        "envoy/service/auth/v3/attribute_context.proto",
        "envoy/config/core/v3/address.proto",
        "envoy/config/core/v3/base.proto",
        "envoy/type/v3/http_status.proto",
        "google/rpc/status.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        // See src/codec.rs: long-lived streams should not hold 16 KiB of idle buffers.
        .codec_path("crate::codec::SmallBufferCodec")
        // Sliced from the received message, not copied (see `DecisionBatch` in agent.proto).
        .bytes(".warden.v1.DecisionBatch.records")
        // A million revoked tokens are 16 MB: one buffer shared by every agent's copy of a
        // snapshot, not copied per agent.
        .bytes(".warden.v1.Revocations.token_keys")
        .compile_fds(fds)?;
    Ok(())
}
