//! Compiles the fixture's gRPC service (`proto/`) without `protoc`: protox parses the files,
//! tonic-prost-build generates the code, and the descriptor set is kept for reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["fixture/v1/echo.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("fixture_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().build_transport(false).compile_fds(fds)?;
    Ok(())
}
