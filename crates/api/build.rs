//! Compiles `proto/` to Rust without a system `protoc`: `protox` parses the
//! .proto files into a `FileDescriptorSet`, `tonic-prost-build` generates the
//! messages (prost) and the client and server (tonic).

use std::error::Error;

const PROTOS: &[&str] = &["proto/ballast/engine/v1/engine.proto"];
const INCLUDES: &[&str] = &["proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, INCLUDES)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        // Servers implement what they serve; the rest answers UNIMPLEMENTED.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
