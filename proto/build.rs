//! Compiles csi.proto with protox (pure Rust), so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=csi.proto");
    // protox ships google/protobuf/{descriptor,timestamp,wrappers}.proto.
    let fds = protox::compile(["csi.proto"], ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Services we only partly implement (e.g. SnapshotMetadata) answer UNIMPLEMENTED.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
