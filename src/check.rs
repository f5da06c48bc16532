//! What `run` would refuse in a valid config, found without running it, and positioned.
//!
//! `config` positions every parse and validation error. Some problems only show when the
//! validated config is built into a running [`Snapshot`](crate::snapshot::Snapshot): a
//! hostname that does not resolve, a certificate, key or CA bundle that cannot be read or
//! used, an access log that cannot be opened ([`BuildError`]). This module gives those a
//! place in the file too: [`BuildError::locate`] maps the error back to the key path of the
//! value it refuses and prints it as `FILE:LINE:COL: message`, against the text the config
//! was parsed from (start re-reads the file; a reload keeps the text it parsed).
//!
//! [`check`] is `switchyard check`: parse and validate, then [`build_errors`], a dry run of
//! the snapshot build through the same functions (resolving hostnames, reading certificates
//! and CA bundles) that binds no socket, starts no task and creates no file. The access log
//! file is not opened: check only verifies that it, or the directory it would be created in,
//! exists and is writable.

use std::io;
use std::path::Path;

use crate::config::{self, AccessLog, Config, ConfigError, ConfigErrors, Seg};
use crate::listener::tls::{TlsError, TlsFault, TlsSettings};
use crate::snapshot::{resolve, BuildError};
use crate::upstream::{self, UpstreamTls};

/// How many hostnames `check` resolves at once (one thread each).
const RESOLVE_BATCH: usize = 16;

/// `switchyard check`: the validated config, or every error `run` would stop at, positioned
/// and in file order.
pub fn check(path: &Path) -> Result<Config, ConfigErrors> {
    let text = config::read_at_start(path)?;
    let config = config::parse(path, &text)?;
    let mut errors: Vec<ConfigError> = build_errors(&config)
        .iter()
        .map(|error| error.locate(&config, path, &text))
        .collect();
    if errors.is_empty() {
        return Ok(config);
    }
    errors.sort_by_key(|e| (e.line, e.col));
    Err(ConfigErrors::from_vec(errors))
}

/// Every error building a snapshot of `config` would meet, without side effects; blocking
/// (DNS, file reads). Empty when the build would succeed, barring the listeners' bind.
pub fn build_errors(config: &Config) -> Vec<BuildError> {
    let mut errors = resolve_all(config);
    for pool in &config.pools {
        if let Err(source) = UpstreamTls::build(pool) {
            errors.push(BuildError::UpstreamTls {
                pool: pool.name.clone(),
                source,
            });
        }
    }
    // What `ListenerSettings::build` would refuse, for every certificate entry rather than
    // the first one it stops at (each file read once, so each warning is logged once). An
    // empty list is a validation error, so the section as a whole cannot fail here.
    for listener in &config.listeners {
        let faults = listener.tls.as_ref().map(TlsSettings::faults);
        let name = &listener.name;
        errors.extend(
            faults
                .into_iter()
                .flatten()
                .map(|f| BuildError::tls(name, f)),
        );
    }
    if let AccessLog::File(file) = &config.access_log {
        if let Err(error) = access_log_writable(file) {
            errors.push(BuildError::AccessLog(error));
        }
    }
    errors
}

/// Resolves every hostname upstream, [`RESOLVE_BATCH`] at a time: a slow resolver costs one
/// timeout per batch, not one per name.
fn resolve_all(config: &Config) -> Vec<BuildError> {
    let hosts: Vec<(&str, &str)> = config
        .pools
        .iter()
        .flat_map(|pool| {
            let addrs = pool.upstreams.iter().map(|up| up.addr.as_str());
            let hostnames = addrs.filter(|addr| addr.parse::<std::net::SocketAddr>().is_err());
            hostnames.map(move |addr| (pool.name.as_str(), addr))
        })
        .collect();
    let mut errors = Vec::new();
    for batch in hosts.chunks(RESOLVE_BATCH) {
        std::thread::scope(|scope| {
            let tasks: Vec<_> = batch
                .iter()
                .map(|&(pool, addr)| scope.spawn(move || resolve(pool, addr).err()))
                .collect();
            // `resolve` does not panic; a lookup that did would only lose its own error.
            errors.extend(tasks.into_iter().filter_map(|t| t.join().ok().flatten()));
        });
    }
    errors
}

/// Whether the access log `file` could be opened for appending, without creating it: the
/// file, or when it does not exist yet its directory, must exist and be writable.
fn access_log_writable(file: &Path) -> io::Result<()> {
    match std::fs::metadata(file) {
        Ok(meta) if meta.is_dir() => Err(io::Error::other(format!(
            "{} is a directory; expected a file path",
            file.display()
        ))),
        Ok(_) => writable(file),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let dir = match file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            match std::fs::metadata(dir) {
                Ok(meta) if meta.is_dir() => writable(dir),
                Ok(_) => Err(io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                ))),
                Err(error) => Err(io::Error::new(
                    error.kind(),
                    format!("directory {}: {error}", dir.display()),
                )),
            }
        }
        Err(error) => Err(error),
    }
}

/// Whether this process may write to `path` (and, for a directory, create files in it).
#[cfg(unix)]
fn writable(path: &Path) -> io::Result<()> {
    use rustix::fs::{access, Access};
    // Creating a file in a directory takes write and search permission on it.
    let mode = match path.is_dir() {
        true => Access::WRITE_OK | Access::EXEC_OK,
        false => Access::WRITE_OK,
    };
    // access(2) asks the kernel (read-only mounts, ACLs and root included), unlike mode bits.
    access(path, mode).map_err(|errno| {
        let error = io::Error::from(errno);
        let message = format!("{} is not writable: {error}", path.display());
        io::Error::new(error.kind(), message)
    })
}

/// Whether `path` is writable, as far as its read-only flag tells.
#[cfg(not(unix))]
fn writable(path: &Path) -> io::Result<()> {
    if std::fs::metadata(path)?.permissions().readonly() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is read-only", path.display()),
        ));
    }
    Ok(())
}

// === impl BuildError ===

impl BuildError {
    /// The error of `fault`, in the TLS section of listener `listener`.
    pub fn tls(listener: &str, fault: TlsFault) -> BuildError {
        BuildError::Tls {
            listener: listener.to_owned(),
            entry: fault.entry,
            path: fault.path,
            reason: Box::new(fault.reason),
        }
    }

    /// This error as `FILE:LINE:COL: message`, pointing at the value it refuses in `text`,
    /// the text of `file` that `config` was parsed from.
    pub fn locate(&self, config: &Config, file: &Path, text: &str) -> ConfigError {
        let message = crate::error_chain(self);
        config::locate(file, text, &self.key_path(config), message)
    }

    /// As [`BuildError::locate`], re-reading `file`; an unreadable file gives line 1, column 1.
    pub fn locate_in(&self, config: &Config, file: &Path) -> ConfigError {
        config::locate_in(file, &self.key_path(config), crate::error_chain(self))
    }

    /// The key path, in `config`, of the value this error refuses; a name `config` does not
    /// have (it cannot happen: the error came from building `config`) gives its section.
    fn key_path(&self, config: &Config) -> Vec<Seg<'static>> {
        use Seg::{Index, Key};
        let pool = |name: &str| config.pools.iter().position(|p| p.name == name);
        match self {
            BuildError::Resolve {
                pool: name, addr, ..
            } => {
                let Some(i) = pool(name) else {
                    return vec![Key("pools")];
                };
                let upstreams = &config.pools[i].upstreams;
                match upstreams.iter().position(|up| up.addr == *addr) {
                    Some(j) => vec![
                        Key("pools"),
                        Index(i),
                        Key("upstreams"),
                        Index(j),
                        Key("addr"),
                    ],
                    None => vec![Key("pools"), Index(i), Key("upstreams")],
                }
            }
            BuildError::UpstreamTls { pool: name, source } => {
                let Some(i) = pool(name) else {
                    return vec![Key("pools")];
                };
                let mut path = vec![Key("pools"), Index(i), Key("tls")];
                match source {
                    upstream::TlsError::ReadCa { .. } | upstream::TlsError::BadCa { .. } => {
                        path.push(Key("ca"));
                    }
                    upstream::TlsError::ServerName(_) => path.push(Key("server_name")),
                    upstream::TlsError::Config(_) => {}
                }
                path
            }
            BuildError::Tls {
                listener,
                entry,
                path: file,
                reason,
            } => {
                let Some(i) = config.listeners.iter().position(|l| l.name == *listener) else {
                    return vec![Key("listeners")];
                };
                let mut path = vec![Key("listeners"), Index(i), Key("tls"), Key("certificates")];
                let pairs = config.listeners[i]
                    .tls
                    .as_ref()
                    .map_or(&[][..], |tls| &tls.certificates);
                // A file used as both certificate and key: a key problem points at `key`.
                let key_first = matches!(
                    **reason,
                    TlsError::NoKey | TlsError::UnsupportedKey(_) | TlsError::KeyMismatch { .. }
                );
                // The entry at fault when the error says (the same file may be in several).
                let found = pairs.iter().enumerate().find_map(|(k, pair)| {
                    if entry.is_some_and(|e| e != k) {
                        return None;
                    }
                    match (pair.cert == *file, pair.key == *file) {
                        (cert, true) if key_first || !cert => Some((k, "key")),
                        (true, _) => Some((k, "cert")),
                        _ => None,
                    }
                });
                if let Some((k, field)) = found {
                    path.extend([Index(k), Key(field)]);
                }
                path
            }
            BuildError::AccessLog(_) => vec![Key("access_log")],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(yaml: &str) -> Vec<(usize, usize, String)> {
        let file = Path::new("t.yaml");
        let config = config::parse(file, yaml).unwrap_or_else(|e| panic!("{e}"));
        let errors = build_errors(&config);
        let at = errors.iter().map(|e| e.locate(&config, file, yaml));
        at.map(|e| (e.line, e.col, e.message)).collect()
    }

    const HEAD: &str = "listeners:\n  - name: a\n    bind: \"127.0.0.1:0\"\naccess_log: off\nroutes:\n  - name: r\n    pool: p\npools:\n  - name: p\n";

    #[test]
    fn a_bad_server_name_points_at_server_name() {
        let yaml = format!(
            "{HEAD}    tls: {{ server_name: \"not a name\" }}\n    upstreams: [{{ addr: \"127.0.0.1:9\" }}]\n"
        );
        let errors = located(&yaml);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let (line, col, message) = &errors[0];
        assert_eq!((*line, *col), (10, 25), "{message}");
        assert!(
            message.starts_with("pool \"p\": upstream TLS: server_name"),
            "{message}"
        );
    }

    #[test]
    fn a_valid_config_has_no_build_errors() {
        let yaml = format!("{HEAD}    upstreams: [{{ addr: \"127.0.0.1:9\" }}]\n");
        assert_eq!(located(&yaml), []);
    }

    #[test]
    fn a_key_problem_in_a_file_used_for_both_points_at_key() {
        let dir = std::env::temp_dir().join(format!("switchyard-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("both.pem");
        // A certificate and no key: the reading succeeds, the key is missing.
        let issued = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).unwrap();
        std::fs::write(&pem, issued.cert.pem()).unwrap();
        let yaml = "listeners:\n  - name: a\n    bind: \"127.0.0.1:0\"\n    tls:\n      certificates:\n        - { cert: both.pem, key: both.pem }\nroutes:\n  - name: r\n    pool: p\npools:\n  - name: p\n    upstreams: [{ addr: \"127.0.0.1:9\" }]\n";
        let file = dir.join("t.yaml");
        let config = config::parse(&file, yaml).unwrap();
        let errors = build_errors(&config);
        let _ = std::fs::remove_dir_all(&dir);
        let at: Vec<_> = errors
            .iter()
            .map(|e| e.locate(&config, &file, yaml))
            .collect();
        assert_eq!(at.len(), 1, "{at:?}");
        assert!(
            at[0].message.contains("no private key found"),
            "{}",
            at[0].message
        );
        assert_eq!((at[0].line, at[0].col), (6, 34), "{}", at[0].message);
    }
}
