//! Generates the gRPC code from `proto/` with protox, a pure-Rust protobuf
//! compiler, so that no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "liaison/v1/messages.proto",
        "liaison/v1/federation.proto",
        "liaison/v1/officer.proto",
        "liaison/v1/audit.proto",
        "liaison/v1/admin.proto",
        "liaison/v1/bench.proto",
        "liaison/v1/store.proto",
        "liaison/v1/status.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    // The encoded descriptors, for the servers' reflection service.
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    std::fs::write(
        out.join("liaison_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // With the `services` feature, tonic clients and servers too; without
    // it, the prost messages only.
    let services = std::env::var_os("CARGO_FEATURE_SERVICES").is_some();
    tonic_prost_build::configure()
        .build_client(services)
        .build_server(services)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
