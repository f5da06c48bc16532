//! switchyard: a load-balancing HTTP reverse proxy driven by one YAML file.
//!
//! [`Server::start_with`] takes a validated [`config::Config`] and [`ServerOptions`], binds
//! every listener and serves, reloading the config file when it changes, until told to shut
//! down; `main.rs` is only the command line around it.
//!
//! # Layout
//! In the order a request meets them:
//! - [`listener`]: bind, accept, connection limits, TLS (SNI, ALPN), HTTP/1.1 and HTTP/2,
//!   graceful drain.
//! - [`snapshot`]: the one immutable running config behind an `ArcSwap`, loaded once per request.
//! - [`router`]: pure host/path lookup to a route.
//! - [`proxy`]: route -> pick -> forward -> retry -> the proxy's own error answers.
//! - [`balance`]: the five strategies that pick an upstream.
//! - [`upstream`]: pools, upstreams and their pooled keep-alive connections.
//! - [`body`]: streaming request and response bodies, body limits, end-of-response work.
//! - [`access_log`]: one JSON line per request, written off the request path.
//! - [`metrics`]: Prometheus names, cached handles, scrape-time state.
//! - [`registry`]: instances registered at runtime through the admin API.
//! - [`discovery`]: DNS re-resolution and etcd discovery, following membership without reloads.
//! - [`admin`]: the admin API and dashboard on `admin.bind`, on a thread of its own.
//! - [`config`]: the file -> validated `Config` pipeline and `switchyard check`.
//! - [`check`]: what building the snapshot would refuse, positioned, and found by `check`.
//! - [`reload`]: file watch, SIGHUP and admin reloads through one function; listener lifecycle.
//! - [`demo`]: the three built-in demo backends of `switchyard demo`.

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod body;
pub mod check;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod router;
pub mod snapshot;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use config::Config;
use reload::{ListenerSet, Reloader};
use snapshot::{BuildError, Shared, Snapshot};

/// How long shutdown waits for in-flight requests by default (`--drain-timeout`).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is valid but could not be turned into a running snapshot (an in-memory
    /// config; with a config file, see `Located`).
    #[error("cannot build the running config")]
    Build(#[from] BuildError),
    /// As `Build`, positioned at the value in the config file it refuses:
    /// `FILE:LINE:COL: message`.
    #[error("{0}")]
    Located(config::ConfigError),
    /// A listener's address could not be bound.
    #[error("listener {name:?}: cannot bind {addr}")]
    Bind {
        /// The listener's name.
        name: String,
        /// Its configured address.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The admin API's address could not be bound.
    #[error("admin API: cannot bind {addr}")]
    AdminBind {
        /// Its configured address.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// As `Bind` or `AdminBind`, positioned at the `bind` in the config file:
    /// `FILE:LINE:COL: message`.
    #[error("{0}")]
    BindAt(config::ConfigError),
    /// The config file's directory could not be watched for changes.
    #[error("cannot watch the config file for changes")]
    Watch(#[source] std::io::Error),
}

impl StartError {
    /// Where in `config` the address a listener failed to bind is: its `bind`; `None` for
    /// the other errors.
    pub(crate) fn bind_key(&self, config: &Config) -> Option<[config::Seg<'static>; 3]> {
        use config::Seg::{Index, Key};
        let StartError::Bind { name, .. } = self else {
            return None;
        };
        let i = config.listeners.iter().position(|l| l.name == *name)?;
        Some([Key("listeners"), Index(i), Key("bind")])
    }

    /// This error as [`StartError::BindAt`], positioned at `key` in the config file `file`.
    fn positioned(self, file: &std::path::Path, key: &[config::Seg<'_>]) -> StartError {
        StartError::BindAt(config::locate_in(file, key, error_chain(&self)))
    }
}

/// How [`Server::start_with`] runs the proxy.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The file the config came from; `None` (an in-memory config) means reloads fail.
    pub config_path: Option<PathBuf>,
    /// How long shutdown waits for in-flight requests (`--drain-timeout`).
    pub drain: Duration,
    /// Reload when `config_path` changes on disk.
    pub watch: bool,
}

impl Default for ServerOptions {
    /// No file, [`DEFAULT_DRAIN_TIMEOUT`], no watching.
    fn default() -> Self {
        ServerOptions {
            config_path: None,
            drain: DEFAULT_DRAIN_TIMEOUT,
            watch: false,
        }
    }
}

/// A running proxy: its listeners, the shared snapshot, the reloader and the file watcher.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    reloader: Reloader,
    shutdown: CancellationToken,
    watcher: Option<JoinHandle<()>>,
    /// The registry's ttl sweeper.
    expiry: JoinHandle<()>,
    /// Stops every health-check task when the server is shut down or dropped.
    checks: DropGuard,
    /// Stops every discovery task when the server is shut down or dropped.
    discovery: DropGuard,
    /// The admin API, when `admin` is configured.
    admin: Option<admin::AdminServer>,
}

// === impl Server ===

impl Server {
    /// Starts from an in-memory config (no file: no watching, reloads fail); see
    /// [`Server::start_with`].
    pub async fn start(config: Config, drain: Duration) -> Result<Server, StartError> {
        let options = ServerOptions {
            drain,
            ..ServerOptions::default()
        };
        Server::start_with(config, options).await
    }

    /// Builds the snapshot, binds every listener, starts serving and, when asked, watching
    /// the config file; must run inside tokio.
    pub async fn start_with(config: Config, options: ServerOptions) -> Result<Server, StartError> {
        // Before any handle is taken: handles taken earlier would record nowhere.
        metrics::install();
        // The admin listener is bound once, at start; a reload does not move it.
        let admin_config = config.admin.clone();
        // Kept to position a build error in the file (see `check`).
        let built_from = options
            .config_path
            .clone()
            .map(|path| (path, config.clone()));
        let snapshot = tokio::task::spawn_blocking(move || {
            Snapshot::build(config, None).map_err(|error| match built_from {
                Some((path, config)) => StartError::Located(error.locate_in(&config, &path)),
                None => StartError::Build(error),
            })
        })
        .await
        .expect("snapshot build does not panic")?;
        let shared = Arc::new(Shared::new(snapshot));
        // Checks start in the reloader's `after_swap`, which `start` runs for this snapshot.
        let checks = shared.checkers.drop_guard();
        // Discovery tasks start there too.
        let discovery = shared.discovery.drop_guard();
        let shutdown = CancellationToken::new();
        let listeners = ListenerSet::new(shutdown.clone(), options.drain);
        let reloader = Reloader::new(shared.clone(), options.config_path.clone(), listeners);
        let expiry = tokio::spawn(registry::run_expiry(shared.clone(), shutdown.clone()));
        tokio::spawn(check_registered(Arc::downgrade(&shared), shutdown.clone()));
        let mut server = Server {
            shared,
            reloader: reloader.clone(),
            shutdown: shutdown.clone(),
            watcher: None,
            expiry,
            checks,
            discovery,
            admin: None,
        };
        if let Err(error) = reloader.start() {
            let key = error.bind_key(&server.shared.snapshot().config);
            server.shutdown().await;
            return Err(match (&options.config_path, key) {
                (Some(path), Some(key)) => error.positioned(path, &key),
                _ => error,
            });
        }
        if let (true, Some(path)) = (options.watch, &options.config_path) {
            match reload::watch::spawn(reloader.clone(), path, shutdown) {
                Ok(task) => server.watcher = Some(task),
                Err(error) => {
                    server.shutdown().await;
                    return Err(StartError::Watch(error));
                }
            }
        }
        // Last, so `/ready` never answers before the listeners are bound.
        if let Some(cfg) = admin_config {
            match start_admin(&cfg, &server.shared, Arc::new(reloader)) {
                Ok(admin) => server.admin = Some(admin),
                Err(error) => {
                    server.shutdown().await;
                    let admin_bind = [config::Seg::Key("admin"), config::Seg::Key("bind")];
                    return Err(match &options.config_path {
                        Some(path) => error.positioned(path, &admin_bind),
                        None => error,
                    });
                }
            }
        }
        Ok(server)
    }

    /// The address the admin API actually bound, when `admin` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(admin::AdminServer::local_addr)
    }

    /// The address a listener actually bound, by its configured name.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.reloader.listener_addr(name)
    }

    /// The running snapshot and process-wide state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The handle that reloads the config (SIGHUP, `POST /reload`) and reports the outcome.
    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    /// True once shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.reloader.is_draining()
    }

    /// Stops accepting, lets open connections finish (up to the drain deadline) and returns.
    /// `/ready` answers `503` while draining; the admin API stops last.
    pub async fn shutdown(self) {
        let tasks = self.reloader.begin_shutdown().await;
        self.shutdown.cancel();
        for task in self.watcher.into_iter().chain(tasks) {
            if let Err(error) = task.await {
                tracing::error!(%error, "listener task failed");
            }
        }
        if let Err(error) = self.expiry.await {
            tracing::error!(%error, "registry expiry task failed");
        }
        drop(self.discovery);
        self.shared.discovery.stop();
        // Checks run until the drain ends: requests still in flight use their verdicts.
        drop(self.checks);
        self.shared.checkers.stop();
        if let Some(admin) = self.admin {
            admin.stop().await;
        }
    }
}

/// Keeps health checks following the registry and discovery: instances registered or removed
/// at runtime (on the admin thread), and those DNS or etcd add or remove, start or stop being
/// checked here, on the traffic runtime.
async fn check_registered(shared: std::sync::Weak<Shared>, shutdown: CancellationToken) {
    let Some((mut changes, mut discovered)) = shared
        .upgrade()
        .map(|s| (s.registry.subscribe(), s.discovery.subscribe()))
    else {
        return;
    };
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            changed = discovered.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.checkers.sync(&shared.snapshot());
    }
}

/// Starts the admin API described by `cfg`.
fn start_admin(
    cfg: &config::AdminConfig,
    shared: &Arc<Shared>,
    control: Arc<dyn admin::Control>,
) -> Result<admin::AdminServer, StartError> {
    let state = admin::AdminState {
        shared: shared.clone(),
        control,
        runtime: tokio::runtime::Handle::current(),
    };
    admin::AdminServer::start(cfg.bind, state).map_err(|source| StartError::AdminBind {
        addr: cfg.bind,
        source,
    })
}

/// An error and all its causes, joined with ": " for one-line logs.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Box::pin(make())`, with the value built straight into its allocation.
///
/// `Box::pin(value)` makes the value before it allocates and then copies all of it in; an
/// async function's future is its largest state (KiBs for a request) even though only its
/// arguments are set. Allocating first lets the compiler write those arguments in place.
#[inline(always)]
pub(crate) fn pin_in_place<T>(make: impl FnOnce() -> T) -> std::pin::Pin<Box<T>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
