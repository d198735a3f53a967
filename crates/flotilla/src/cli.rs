//! Command-line syntax.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Flotilla: a federation control plane for stateful, role-aware workloads.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// What-if: where a FederatedInstanceSet would run, and what would not fit.
    ///
    /// Offline with `--clusters FILE` (a multi-document file of Cluster objects).
    /// Exit codes: 0 planned (even if some instances do not fit), 2 invalid input.
    Plan(PlanArgs),
    /// Run the member agent.
    ///
    /// `--standalone` runs the InstanceSet controller for every InstanceSet in one
    /// Kubernetes cluster, with no federation, until Ctrl-C or SIGTERM. Joining a
    /// federation server is not built yet: without `--standalone` it exits 2.
    /// Exit codes: 0 stopped on request, 1 failed, 2 bad usage.
    Agent(AgentArgs),
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Run without a federation: reconcile the cluster's InstanceSets directly.
    #[arg(long)]
    pub standalone: bool,
    /// The kubeconfig to use (default: in-cluster config, then KUBECONFIG, then
    /// ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Only InstanceSets (and their pods) in this namespace (default: all namespaces).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Reconcile a converged set at least this often.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub resync_seconds: u64,
    /// Log JSON lines instead of text (the filter is RUST_LOG, default `info`).
    #[arg(long)]
    pub log_json: bool,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The FederatedInstanceSet to plan (YAML or JSON; `-` for stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Cluster objects to plan against (multi-document YAML).
    #[arg(long, value_name = "FILE")]
    pub clusters: Option<PathBuf>,
    /// A previous plan's JSON output: instances already placed stay where they are.
    #[arg(long, value_name = "FILE")]
    pub previous: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A readable table.
    Table,
    /// JSON, as `--previous` reads it.
    Json,
    /// The same document as YAML.
    Yaml,
}
