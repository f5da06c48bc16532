//! The pipeline from `proxy.yaml` to a validated [`Config`]: read, parse, validate, resolve.
//!
//! [`load`] reads the file and [`parse`] does the rest: serde (`serde_yaml_ng`) turns the text
//! into the types of `file.rs`, going on past an unknown key or a mistyped value on a plain
//! `key: value` line (it stops at a syntax error and at what it cannot step over, see
//! `deserialize`); then `validate` checks the rules that span the file, and every error found
//! is reported, in file order (SPEC section 1: `check` prints every error).
//! Every error is a [`ConfigError`] printed as `FILE:LINE:COL: message`, like `nginx -t`. Finally
//! relative paths (certificates, CA bundles, the access log file) are resolved against the
//! config file's directory. Watching the file and swapping snapshots is left to the reload code.
//!
//! Layout:
//! - `file.rs`: the serde types and their `DEFAULT_*` constants;
//! - `scalars.rs`: the string-shaped values (`workers`, `access_log`, `hash_key`, `expect_status`);
//! - `units.rs`: durations, sizes, addresses and their serde glue;
//! - `validate.rs`: the semantic rules;
//! - `error.rs`: [`ConfigError`] and [`ConfigErrors`];
//! - `pass.rs`: serde's pass, stepping over the errors it can so every one is listed;
//! - `locate.rs`: key path -> line and column, for the semantic errors and, through
//!   [`locate`], for the errors found later, while the running snapshot is built.

mod error;
mod file;
mod locate;
mod pass;
mod scalars;
mod units;
mod validate;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrors};
pub use file::*;
pub(crate) use units::format_duration;
pub use units::parse_duration;
pub use validate::{MAX_RETRIES, MIN_HEADER_BYTES};

pub(crate) use locate::Seg;
use locate::{Locator, Pos};

/// Reads and validates the file at start (`run`); every error is positioned.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    parse(path, &read_at_start(path)?)
}

/// Reads the file as UTF-8 text, for [`parse`]; keep the text to position later errors with
/// [`locate`].
pub fn read(path: &Path) -> Result<String, ConfigErrors> {
    read_text(path, "")
}

/// [`read`] for `run` and `check`, where a missing file most likely means the wrong one was
/// named: its error says how to name another (not on a reload, where it is the right file
/// gone for a moment).
pub fn read_at_start(path: &Path) -> Result<String, ConfigErrors> {
    read_text(path, " (pass --config PATH or set SWITCHYARD_CONFIG)")
}

/// [`read`], with `missing_hint` after the error of a file that does not exist.
fn read_text(path: &Path, missing_hint: &str) -> Result<String, ConfigErrors> {
    let start = |message: String| ConfigError::new(path, Pos::START, message);
    let bytes = std::fs::read(path).map_err(|err| {
        let hint = match err.kind() {
            std::io::ErrorKind::NotFound => missing_hint,
            _ => "",
        };
        start(format!("cannot read the config file: {err}{hint}"))
    })?;
    let text = String::from_utf8(bytes).map_err(|err| {
        let valid = err.utf8_error().valid_up_to();
        let bad = err.as_bytes()[valid];
        // Point at the first bad byte: usually a binary file or another encoding (Latin-1).
        let text = String::from_utf8_lossy(&err.as_bytes()[..valid]);
        let line = text.matches('\n').count() + 1;
        let col = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let message = format!(
            "the file is not UTF-8 text (byte 0x{bad:02x} at offset {valid}); \
             expected a YAML file encoded as UTF-8"
        );
        ConfigError::new(path, Pos { line, col }, message)
    })?;
    // A byte-order mark (some Windows editors write one) is no part of the YAML, and
    // editors do not show it: columns on line 1 are counted without it.
    match text.strip_prefix('\u{feff}') {
        Some(rest) => Ok(rest.to_owned()),
        None => Ok(text),
    }
}

/// Validates text already read; `path` is used in messages and to resolve relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let blank = |line: &str| line.trim().is_empty() || line.trim_start().starts_with('#');
    if text.lines().all(blank) {
        let message =
            "the file is empty; expected a mapping with `listeners`, `routes` and `pools`";
        return Err(ConfigError::new(path, Pos::START, message).into());
    }
    let (config, mut errors, repaired) = pass::deserialize(path, text);
    let Some(mut config) = config else {
        // serde's errors come in the order it met them, and a missing key is reported at
        // its mapping's start, after the mapping's other errors.
        return Err(in_file_order(errors));
    };
    if let Err(semantic) = validate::validate(path, text, &mut config) {
        // A rule broken next to a line taken out may be broken only because it is gone.
        let unrelated = |e: &ConfigError| !repaired.iter().any(|r| r.covers(e.line, text));
        errors.extend(semantic.into_iter().filter(unrelated));
    }
    if !errors.is_empty() {
        return Err(in_file_order(errors));
    }
    config.resolve_paths(path.parent().unwrap_or(Path::new("")));
    Ok(config)
}

/// The errors sorted by position; the sort is stable, so one spot keeps its finding order.
fn in_file_order(mut errors: Vec<ConfigError>) -> ConfigErrors {
    errors.sort_by_key(|e| (e.line, e.col));
    ConfigErrors::from_vec(errors)
}

/// A problem found after [`parse`] (while building the running snapshot), positioned at the
/// value `key_path` names in `text`, the text of `path` the config was parsed from.
pub(crate) fn locate(
    path: &Path,
    text: &str,
    key_path: &[Seg<'_>],
    message: impl Into<String>,
) -> ConfigError {
    ConfigError::new(path, Locator::new(text).find(key_path), message)
}

/// As [`locate`], reading the text from `path`; an unreadable file gives line 1, column 1.
pub(crate) fn locate_in(
    path: &Path,
    key_path: &[Seg<'_>],
    message: impl Into<String>,
) -> ConfigError {
    let text = read(path).unwrap_or_default();
    locate(path, &text, key_path, message)
}

// === impl Config ===

impl Config {
    /// One-line summary for `switchyard check`: "proxy.yaml: ok (1 listener, 2 routes, ...)".
    pub fn summary(&self, path: &Path) -> String {
        let upstreams = self.pools.iter().map(|p| p.upstreams.len()).sum();
        format!(
            "{}: ok ({}, {}, {}, {})",
            path.display(),
            count(self.listeners.len(), "listener"),
            count(self.routes.len(), "route"),
            count(self.pools.len(), "pool"),
            count(upstreams, "upstream"),
        )
    }

    /// Makes relative file paths relative to `dir`, the config file's directory.
    fn resolve_paths(&mut self, dir: &Path) {
        let resolve = |file: &mut PathBuf| {
            if file.is_relative() {
                *file = dir.join(&*file);
            }
        };
        if let AccessLog::File(file) = &mut self.access_log {
            resolve(file);
        }
        let tls = self.listeners.iter_mut().filter_map(|l| l.tls.as_mut());
        for pair in tls.flat_map(|tls| tls.certificates.iter_mut()) {
            resolve(&mut pair.cert);
            resolve(&mut pair.key);
        }
        let cas = self
            .pools
            .iter_mut()
            .filter_map(|p| p.tls.as_mut()?.ca.as_mut());
        cas.for_each(resolve);
    }
}

/// "1 listener", "2 routes".
fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        _ => format!("{n} {noun}s"),
    }
}
