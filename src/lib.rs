//! switchyard: a load-balancing HTTP reverse proxy driven by one YAML file.
//!
//! [`Server::start`] takes a validated [`config::Config`], binds every listener and serves
//! until told to shut down; `main.rs` is only the command line around it.
//!
//! # Layout
//! In the order a request meets them:
//! - [`listener`]: bind, accept, connection limits, HTTP/1.1 and h2c, graceful drain.
//! - [`snapshot`]: the one immutable running config behind an `ArcSwap`, loaded once per request.
//! - [`router`]: pure host/path lookup to a route.
//! - [`proxy`]: route -> pick -> forward -> retry -> the proxy's own error answers.
//! - [`balance`]: the five strategies that pick an upstream.
//! - [`upstream`]: pools, upstreams and their pooled keep-alive connections.
//! - [`body`]: streaming request and response bodies, body limits, end-of-response work.
//! - [`access_log`]: one JSON line per request, written off the request path.
//! - [`metrics`]: Prometheus names, cached handles, scrape-time state.
//! - [`registry`]: instances registered at runtime through the admin API.
//! - [`admin`]: the admin API and dashboard on `admin.bind`, on a thread of its own.
//! - [`config`]: the file -> validated `Config` pipeline and `switchyard check`.
//! - [`demo`]: the three built-in demo backends of `switchyard demo`.

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod body;
pub mod config;
pub mod demo;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod router;
pub mod snapshot;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use config::Config;
use listener::Listener;
use snapshot::{BuildError, Shared, Snapshot};

/// How long shutdown waits for in-flight requests by default (`--drain-timeout`).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is valid but could not be turned into a running snapshot.
    #[error("cannot build the running config")]
    Build(#[from] BuildError),
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
    /// The listener asks for something this build cannot serve yet.
    #[error("listener {name:?}: {what} is not supported yet")]
    Unsupported {
        /// The listener's name.
        name: String,
        /// The unsupported feature.
        what: &'static str,
    },
}

/// A running proxy: its listeners, their tasks and the shared snapshot.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    listeners: Vec<(String, SocketAddr)>,
    tasks: Vec<JoinHandle<()>>,
    /// Reload and draining state behind the admin API.
    control: Arc<admin::StaticControl>,
    admin: Option<admin::AdminServer>,
}

// === impl Server ===

impl Server {
    /// Builds the snapshot, binds every listener and starts serving; must run inside tokio.
    pub async fn start(config: Config, drain: Duration) -> Result<Server, StartError> {
        // Before any handle is taken: handles taken earlier would record nowhere.
        metrics::install();
        let mut bound = Vec::with_capacity(config.listeners.len());
        for cfg in &config.listeners {
            if cfg.tls.is_some() {
                return Err(StartError::Unsupported {
                    name: cfg.name.clone(),
                    what: "TLS termination",
                });
            }
            let listener = Listener::bind(cfg).map_err(|source| StartError::Bind {
                name: cfg.name.clone(),
                addr: cfg.bind,
                source,
            })?;
            bound.push(listener);
        }
        let admin_config = config.admin.clone();
        let snapshot = tokio::task::spawn_blocking(move || Snapshot::build(config, None))
            .await
            .expect("snapshot build does not panic")?;
        let shared = Arc::new(Shared::new(snapshot));
        let shutdown = CancellationToken::new();
        let mut listeners = Vec::with_capacity(bound.len());
        let mut tasks = Vec::with_capacity(bound.len());
        for listener in bound {
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                name: listener.name().to_owned(),
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            tracing::info!(listener = listener.name(), %addr, "listening");
            listeners.push((listener.name().to_owned(), addr));
            tasks.push(tokio::spawn(listener.serve(
                shared.clone(),
                shutdown.clone(),
                drain,
            )));
        }
        tasks.push(tokio::spawn(registry::run_expiry(
            shared.clone(),
            shutdown.clone(),
        )));
        let control = Arc::new(admin::StaticControl::new());
        let admin = match admin_config {
            Some(cfg) => Some(start_admin(&cfg, &shared, control.clone())?),
            None => None,
        };
        Ok(Server {
            shared,
            shutdown,
            listeners,
            tasks,
            control,
            admin,
        })
    }

    /// The address the admin API actually bound, when `admin` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(admin::AdminServer::local_addr)
    }

    /// The address a listener actually bound, by its configured name.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// The running snapshot and process-wide state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, lets open connections finish (up to the drain deadline) and returns.
    /// `/ready` answers `503` while draining; the admin API stops last.
    pub async fn shutdown(self) {
        self.control.set_draining();
        self.shutdown.cancel();
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "listener task failed");
            }
        }
        if let Some(admin) = self.admin {
            admin.stop().await;
        }
    }
}

/// Starts the admin API described by `cfg`.
fn start_admin(
    cfg: &config::AdminConfig,
    shared: &Arc<Shared>,
    control: Arc<admin::StaticControl>,
) -> Result<admin::AdminServer, StartError> {
    let state = admin::AdminState {
        shared: shared.clone(),
        control,
        token: cfg.token.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    admin::AdminServer::start(cfg.bind, state).map_err(|source| StartError::Bind {
        name: "admin".to_owned(),
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
