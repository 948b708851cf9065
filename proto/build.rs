//! Compiles the protos with protox, so a fresh machine needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["warden/v1/agent.proto", "warden/v1/admin.proto", "warden/v1/resource.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        // See src/codec.rs: long-lived streams should not hold 16 KiB of idle buffers.
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    Ok(())
}
