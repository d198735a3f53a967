//! Generates the gRPC code from `proto/` at the repository root. `protoc` is the one
//! `PROTOC` names when it is set, else the binary vendored by `protoc-bin-vendored`, so
//! a plain `cargo build` works on a machine with no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!(): the compiled build script is shared
    // by every checkout that builds into the same target directory.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["flotilla/v1/federation.proto", "flotilla/v1/agent.proto"].map(|f| root.join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut config = prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        let vendored = protoc_bin_vendored::protoc_bin_path().map_err(|e| {
            format!("PROTOC is not set and no protoc is vendored for this platform: {e}")
        })?;
        config.protoc_executable(vendored);
    }
    tonic_prost_build::configure().compile_with_config(config, &files, &[root])?;
    Ok(())
}
