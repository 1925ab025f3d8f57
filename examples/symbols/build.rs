//! Compiles `proto/symbols/v1/symbols.proto` without `protoc`: protox parses it (with the
//! well-known types it bundles) into a descriptor set, which is kept for server reflection and
//! handed to tonic-prost-build for the messages, the server trait and the client.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["symbols/v1/symbols.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("symbols_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_transport(false).emit_rerun_if_changed(false).compile_fds(fds)?;
    Ok(())
}
