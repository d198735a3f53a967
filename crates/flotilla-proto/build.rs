//! Generates the gRPC code from `proto/` at the repository root. `protoc` comes from
//! `PROTOC`, which `cargo xtask` sets to the vendored binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["flotilla/v1/federation.proto", "flotilla/v1/agent.proto"].map(|f| root.join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure().compile_protos(&files, &[root])?;
    Ok(())
}
