//! `cargo xtask <task>`: the project's tasks, the same on a laptop and in CI.
//!
//! No machine needs a system protoc: `.cargo/config.toml` points `PROTOC` (unless set)
//! at `tools/protoc`, which runs the one the `protoc-bin-vendored` crate ships, for
//! these commands and a plain `cargo build` alike (so neither rebuilds the other's
//! work).

mod crdgen;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const HELP: &str = "\
cargo xtask <task>

tasks:
  test         format check, clippy (warnings denied), the CRDs are current, then every
               test in the workspace
  lint         format check and clippy only
  bench        every benchmark in the workspace (`cargo xtask bench -- <criterion args>`)
  bench member the member controller's commit phase, sequential against concurrent, on
               the simulated member with 5 ms a request (N = 100, 1,000, 10,000; pick
               with `FLOTILLA_BENCH_SIZES=100,1000` or `cargo xtask bench member -- 100`)
  bench proxy  the proxy hop: redis-benchmark -t get,set -c 50 (-P 1 and 16) against
               redis-server directly, through flotilla proxy and through haproxy as
               redis-ha configures it (needs redis-tools and haproxy from Debian)
  bench fleet  one set of 10,000 and 100,000 instances over 100 simulated members on the
               embedded store and on etcd: apply → all ready, idle, scale +1%, a member
               Unknown; the server process's CPU seconds, peak RSS and store writes
               (`FLOTILLA_BENCH_SIZES`, `FLOTILLA_BENCH_MEMBERS` pick others)
  run -- ARGS  build and run the flotilla binary with ARGS
  crdgen       write deploy/crds/ from the API types; `crdgen --check` (also run by
               `test`) fails when the committed files are stale
";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_else(|| "help".into());
    let rest: Vec<String> = args.skip_while(|a| a == "--").collect();
    match task.as_str() {
        "test" => {
            lint()?;
            crdgen::check(&crds())?;
            test()
        }
        "crdgen" if rest.iter().any(|a| a == "--check") => crdgen::check(&crds()),
        "crdgen" => crdgen::write(&crds()),
        "lint" => lint(),
        "bench" if rest.first().is_some_and(|a| a == "member") => {
            let rest: Vec<String> = rest[1..]
                .iter()
                .skip_while(|a| *a == "--")
                .cloned()
                .collect();
            cargo(
                &[
                    "bench",
                    "--package",
                    "flotilla-member",
                    "--bench",
                    "commit",
                    "--",
                ],
                &rest,
            )
        }
        "bench" if rest.first().is_some_and(|a| a == "fleet") => cargo(
            &["bench", "--package", "flotilla", "--bench", "fleet", "--"],
            &rest[1..],
        ),
        "bench" if rest.first().is_some_and(|a| a == "proxy") => cargo(
            &[
                "bench",
                "--package",
                "flotilla-proxy",
                "--bench",
                "proxy",
                "--",
            ],
            &rest[1..],
        ),
        "bench" => cargo(&["bench", "--workspace"], &rest),
        "run" => cargo(&["run", "--quiet", "--package", "flotilla", "--"], &rest),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => bail!("unknown task {other:?}\n\n{HELP}"),
    }
}

fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )
}

/// Every test of every crate, in one build. Benchmarks are built and run once each as
/// tests, so they cannot rot.
fn test() -> Result<()> {
    cargo(&["test", "--workspace", "--all-targets", "--locked"], &[])
}

fn cargo(args: &[&str], rest: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .args(rest)
        .current_dir(root())
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Where the generated CRDs are committed.
fn crds() -> PathBuf {
    root().join("deploy").join("crds")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}
