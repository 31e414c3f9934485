//! Generates the prost types from `proto/gateway/v1/*.proto` with `protox`, so no `protoc`
//! binary is needed to build this crate.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "gateway/v1/records.proto",
    "gateway/v1/agent.proto",
    "gateway/v1/control.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let descriptors = protox::compile(PROTOS, [&root])?;
    prost_build::Config::new()
        .btree_map(["."])
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
