//! The errors of the config pipeline: [`ConfigError`] is one problem at a file position,
//! [`ConfigErrors`] the non-empty list that `load`, `parse` and `switchyard check` return.
//! Messages follow the sozu habit: name the field and value, say what was expected.

use std::fmt;
use std::path::{Path, PathBuf};

use super::file::{Protocol, MAX_WEIGHT};
use super::locate::Pos;
use super::validate::MAX_RETRIES;
use crate::balance::StrategyKind;

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

/// serde's message with the Rust type it expected put in config terms: `struct
/// ListenerConfig` becomes "a mapping", `u32` "an integer from 0 to 4294967295", `path
/// string` "a file path", and the YAML tag an enum key wants (given a list or mapping)
/// its names. The rest (key path, what was found) is kept.
pub(super) fn in_config_terms(message: &str) -> String {
    const EXPECTED: &str = "expected ";
    let Some((head, wanted)) = message.rsplit_once(EXPECTED) else {
        return message.to_owned();
    };
    let max: Option<u128> = match wanted {
        "u8" => Some(u8::MAX.into()),
        "u16" => Some(u16::MAX.into()),
        "u32" => Some(u32::MAX.into()),
        "u64" => Some(u64::MAX.into()),
        // usize is at most 64 bits on every target Rust supports.
        "usize" => u128::try_from(usize::MAX).ok(),
        _ => None,
    };
    let key = head
        .split(": ")
        .next()
        .and_then(|path| path.rsplit('.').next())
        .unwrap_or_default();
    let plain = match (max, wanted) {
        (Some(max), _) => {
            let (min, max) = accepted_range(key, max);
            format!("an integer from {min} to {max}")
        }
        (None, "path string") => "a file path".to_owned(),
        (None, "a YAML tag starting with '!'") => match names(key) {
            Some(names) => names,
            None => return message.to_owned(),
        },
        (None, _) => match wanted.strip_prefix("struct ") {
            Some(name) if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()) => {
                "a mapping".to_owned()
            }
            _ => return message.to_owned(),
        },
    };
    format!("{head}{EXPECTED}{plain}")
}

/// The integers validation accepts for `key`, so that a value of the wrong type is told
/// the same range as one out of it; `type_max` is the largest its Rust type holds.
fn accepted_range(key: &str, type_max: u128) -> (u128, u128) {
    match key {
        "weight" => (1, MAX_WEIGHT.into()),
        "retries" => (0, MAX_RETRIES.into()),
        "max_connections"
        | "healthy_threshold"
        | "unhealthy_threshold"
        | "consecutive_failures" => (1, type_max),
        _ => (0, type_max),
    }
}

/// The names an enum key accepts, as serde lists them for an unknown one, so the list
/// cannot drift from the enum.
fn names(key: &str) -> Option<String> {
    let unknown = "\"\"";
    let err = match key {
        "strategy" => serde_yaml_ng::from_str::<StrategyKind>(unknown).err(),
        "protocol" => serde_yaml_ng::from_str::<Protocol>(unknown).err(),
        _ => None,
    }?;
    let message = err.to_string();
    let (_, names) = message.split_once(", expected ")?;
    Some(names.split(" at line ").next()?.to_owned())
}

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
