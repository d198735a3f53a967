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
