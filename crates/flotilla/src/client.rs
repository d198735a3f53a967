//! The user CLI's commands against a federation server: `cluster add`, `apply`, `get`,
//! `describe`, `delete`, `clusters` (and `plan` without `--clusters`, in plan.rs).

use crate::cli::{ApplyArgs, ClusterAddArgs, ClustersArgs, DeleteArgs, DescribeArgs, GetArgs};
use crate::input::CliError;

fn not_built() -> Result<(), CliError> {
    Err(CliError::Usage("not built yet".into()))
}

pub fn cluster_add(_args: &ClusterAddArgs) -> Result<(), CliError> {
    not_built()
}

pub fn apply(_args: &ApplyArgs) -> Result<(), CliError> {
    not_built()
}

pub fn get(_args: &GetArgs) -> Result<(), CliError> {
    not_built()
}

pub fn describe(_args: &DescribeArgs) -> Result<(), CliError> {
    not_built()
}

pub fn delete(_args: &DeleteArgs) -> Result<(), CliError> {
    not_built()
}

pub fn clusters(_args: &ClustersArgs) -> Result<(), CliError> {
    not_built()
}
