//! Reading and checking documents from files, with errors that say which file, which
//! field and why. Exit code 2 for anything wrong with the input.

use std::fmt;
use std::path::Path;

use flotilla_api::Invalid;

/// A command's failure, with its exit code.
#[derive(Debug)]
pub enum CliError {
    /// The input is wrong (exit 2): every problem, attributed to its file.
    Input { file: String, problems: Vec<String> },
    /// The command was used wrongly (exit 2).
    Usage(String),
    /// Something else failed (exit 1).
    Failed(anyhow::Error),
}

impl CliError {
    pub fn code(&self) -> u8 {
        match self {
            CliError::Input { .. } | CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
        }
    }

    pub fn input(file: &Path, problem: impl Into<String>) -> CliError {
        CliError::Input {
            file: file.display().to_string(),
            problems: vec![problem.into()],
        }
    }

    pub fn invalid(file: &Path, invalid: Invalid) -> CliError {
        CliError::Input {
            file: file.display().to_string(),
            problems: invalid.0.iter().map(ToString::to_string).collect(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Input { file, problems } => {
                write!(f, "error: {file} is invalid:")?;
                for p in problems {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
            CliError::Usage(message) => write!(f, "error: {message}"),
            CliError::Failed(e) => write!(f, "error: {e:#}"),
        }
    }
}

/// The text of `path` (`-` reads stdin).
pub fn read(path: &Path) -> Result<String, CliError> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    };
    text.map_err(|e| CliError::input(path, format!("cannot read it: {e}")))
}

/// Prints ignored fields as warnings on stderr.
pub fn warn(path: &Path, warnings: &[flotilla_api::FieldError]) {
    for w in warnings {
        eprintln!("warning: {}: {w}", path.display());
    }
}
