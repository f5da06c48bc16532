//! The errors of the config pipeline: [`ConfigError`] is one problem at a file position,
//! [`ConfigErrors`] the non-empty list that `load`, `parse` and `switchyard check` return.
//! Messages follow the sozu habit: name the field and value, say what was expected.

use std::fmt;
use std::path::{Path, PathBuf};

use super::locate::Pos;

/// One problem in the config file, displayed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{col}: {message}", .file.display())]
pub struct ConfigError {
    /// The config file, as given.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

/// A non-empty list of [`ConfigError`]s, displayed one per line, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

// === impl ConfigError ===

impl ConfigError {
    pub(crate) fn new(file: &Path, pos: Pos, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
        }
    }
}

// === impl ConfigErrors ===

impl ConfigErrors {
    /// Wraps a list the caller knows to be non-empty.
    pub(crate) fn from_vec(errors: Vec<ConfigError>) -> Self {
        debug_assert!(!errors.is_empty(), "ConfigErrors must not be empty");
        ConfigErrors(errors)
    }

    /// The errors, in file order.
    pub fn as_slice(&self) -> &[ConfigError] {
        &self.0
    }

    /// The first error (the list is never empty).
    pub fn first(&self) -> &ConfigError {
        &self.0[0]
    }

    /// Number of errors, at least 1.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over the errors.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "\n" };
            write!(f, "{sep}{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}
