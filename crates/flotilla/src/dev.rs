//! `flotilla dev`: server, embedded store and three simulated members in one process.

use crate::cli::DevArgs;
use crate::input::CliError;

pub fn run(_args: &DevArgs) -> Result<(), CliError> {
    Err(CliError::Usage("not built yet".into()))
}
