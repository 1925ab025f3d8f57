//! Why a flags file was refused.

use std::path::PathBuf;

/// One problem in a flags file, at a path such as `new_checkout.rules.percentage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagProblem {
    /// Where: `<flag key>[.field…]`, empty for the whole file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for FlagProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Why flags could not be loaded or reloaded. A reload that fails leaves the previous set active.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlagsError {
    /// The file could not be read.
    #[error("cannot read the flags file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but is not a valid set of flags; nothing in it was applied.
    #[error("the flags file {} is invalid: {}", origin, .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The file, or `<inline>`.
        origin: String,
        /// Every problem found.
        problems: Vec<FlagProblem>,
    },
    /// These flags were not loaded from a file, so there is nothing to reload.
    #[error("these flags have no file to reload")]
    NoFile,
}
