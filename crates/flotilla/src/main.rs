//! `flotilla`: one binary for the federation's commands. Parsing lives here; each
//! command is a module that returns an exit code.

mod agent;
mod cli;
mod input;
mod plan;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Plan(args) => plan::run(&args),
        cli::Command::Agent(args) => agent::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.code())
        }
    }
}
