//! `flotilla`: one binary for the federation's commands. Parsing lives here; each
//! command is a module that returns an exit code.

mod agent;
mod cli;
mod client;
mod dev;
mod input;
mod plan;
mod process;
mod proxy;
mod server;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::parse();
    let result = match cli.command {
        cli::Command::Dev(args) => dev::run(&args),
        cli::Command::Server(args) => server::run(&args),
        cli::Command::Agent(args) => agent::run(&args),
        cli::Command::Proxy(args) => proxy::run(&args),
        cli::Command::Cluster(cli::ClusterCommand::Add(args)) => client::cluster_add(&args),
        cli::Command::Cluster(cli::ClusterCommand::RotateToken(args)) => {
            client::cluster_rotate_token(&args)
        }
        cli::Command::Token(cli::TokenCommand::Create(args)) => client::token_create(&args),
        cli::Command::Token(cli::TokenCommand::List(args)) => client::token_list(&args),
        cli::Command::Token(cli::TokenCommand::Revoke(args)) => client::token_revoke(&args),
        cli::Command::Audit(args) => client::audit(&args),
        cli::Command::Apply(args) => client::apply(&args),
        cli::Command::Get(args) => client::get(&args),
        cli::Command::Describe(args) => client::describe(&args),
        cli::Command::Delete(args) => client::delete(&args),
        cli::Command::Plan(args) => plan::run(&args),
        cli::Command::Clusters(args) => client::clusters(&args),
        cli::Command::Version => {
            println!("flotilla {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.code())
        }
    }
}
