//! Generates the gRPC code from `proto/` at the repository root. `protoc` comes from
//! `PROTOC`, which `cargo xtask` sets to the vendored binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!(): the compiled build script is shared
    // by every checkout that builds into the same target directory.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["flotilla/v1/federation.proto", "flotilla/v1/agent.proto"].map(|f| root.join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure().compile_protos(&files, &[root])?;
    Ok(())
}
