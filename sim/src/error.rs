//! The crate's error type, grouped by who is at fault

use std::path::PathBuf;

use thiserror::Error;

/// Errors of the simulator and its scenario files
///
/// Variants are grouped by who is at fault: the scenario or trace file (bad input), or
/// local resources (a file that cannot be read or written).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    // ---- the input is at fault ----
    /// The scenario file is not valid TOML or does not match the scenario format
    #[error("{path}: {message}")]
    Scenario {
        /// The scenario file
        path: PathBuf,
        /// What is wrong, as one line
        message: String,
    },
    /// A value is out of range or inconsistent with another
    #[error("{0}")]
    Config(String),
    /// A trace file has a line that is not in its format
    #[error("{path}:{line}: {reason}")]
    Trace {
        /// The trace file (or `<memory>`)
        path: PathBuf,
        /// The 1-based line number
        line: usize,
        /// What is wrong
        reason: String,
    },

    // ---- local resources ----
    /// A file could not be read or written
    #[error("{path}: {source}")]
    Io {
        /// The file
        path: PathBuf,
        /// The operating system's error
        source: std::io::Error,
    },
    /// The plot could not be drawn
    #[error("plot: {0}")]
    Plot(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
