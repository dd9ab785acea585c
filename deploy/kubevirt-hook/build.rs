//! Compiles KubeVirt's hook-sidecar API (proto/*.proto) into Rust with `protox`, a protobuf
//! compiler in Rust: the build needs neither a `protoc` binary nor the network.

use std::path::Path;

const PROTOS: [&str; 3] = ["info.proto", "v1alpha2.proto", "v1alpha3.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new("proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", dir.join(proto).display());
    }
    let descriptors = protox::compile(PROTOS, [dir])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
