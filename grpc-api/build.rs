//! Generates the pricefeed.v1 messages, server and client from proto/pricefeed.proto with the
//! system's protoc, and the encoded descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: a build directory kept between
    // checkouts at different paths reuses the compiled script.
    let proto =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto/pricefeed.proto");
    let includes = proto.parent().expect("the proto file is in a directory");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", proto.display());
    tonic_build::configure()
        .build_transport(false)
        .file_descriptor_set_path(out.join("pricefeed_descriptor.bin"))
        .compile_protos(&[&proto], &[includes])?;
    Ok(())
}
