//! `flotilla server`: the federation server on etcd or the embedded store.

use crate::cli::ServerArgs;
use crate::input::CliError;

pub fn run(_args: &ServerArgs) -> Result<(), CliError> {
    Err(CliError::Usage("not built yet".into()))
}
