//! Hot reload: every trigger goes through one function, [`Reloader::reload`].
//!
//! Triggers are the config file changing ([`watch`]), SIGHUP (`main.rs`) and the admin API's
//! `POST /reload`. A reload, one at a time:
//! 1. reads, parses and validates the whole file (off the async workers); an error keeps the
//!    old snapshot serving;
//! 2. skips the rest when the trigger is the file watcher and the parsed config equals the
//!    running one (a `touch` or a save without changes is not a new generation); SIGHUP and
//!    `POST /reload` always go on, as SPEC section 7 says of a valid reload;
//! 3. builds the new snapshot (off the async workers: DNS, certificate files, CA bundles),
//!    carrying upstreams, their health, in-flight counts and pooled connections, and
//!    balancer positions over from the running one (see `snapshot`);
//! 4. binds the listeners the new config adds or moves; a failed bind fails the reload and
//!    closes what this attempt bound;
//! 5. stores the snapshot (generation + 1), then starts the new listeners and closes the
//!    removed ones (they drain), then runs the post-swap hook.
//!
//! Every outcome is logged and recorded in a [`ReloadStatus`] that the admin API and metrics
//! read. Shutdown marks the reloader as draining ([`Reloader::is_draining`]); reloads are
//! refused from then on.

mod listeners;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::config::{self, ConfigError, ConfigErrors};
use crate::snapshot::{Shared, Snapshot};
use crate::{error_chain, StartError};
pub(crate) use listeners::ListenerSet;

/// What asked for a reload; logged with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The config file changed on disk.
    Watch,
    /// SIGHUP.
    Signal,
    /// `POST /reload` on the admin API.
    Admin,
}

impl Trigger {
    /// The lowercase name used in logs: `watch`, `sighup`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Watch => "watch",
            Trigger::Signal => "sighup",
            Trigger::Admin => "admin",
        }
    }

    /// Whether an operator asked explicitly (SIGHUP, admin): such a reload swaps a new
    /// snapshot in (certificates and CA bundles re-read) even when the YAML did not change.
    pub fn is_explicit(self) -> bool {
        !matches!(self, Trigger::Watch)
    }
}

/// Why a reload failed; the running config stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The proxy was started from an in-memory config: there is no file to reload.
    #[error("no config file to reload: the proxy was started without one")]
    NoConfigFile,
    /// Shutdown has started.
    #[error("the proxy is shutting down")]
    Draining,
    /// The file is unreadable or invalid; every error is `FILE:LINE:COL: message`.
    #[error("{0}")]
    Config(ConfigErrors),
    /// The config is valid but could not be built into a snapshot (DNS, access log, TLS) or
    /// a listener it adds could not be bound: the error positioned in the new file,
    /// `FILE:LINE:COL: message`.
    #[error("{0}")]
    Build(ConfigError),
    /// A listener the new config adds could not be bound, where its `bind` was not found
    /// in the file (otherwise the error is a positioned `Build`).
    #[error(transparent)]
    Listener(#[from] StartError),
    /// The file adds, removes or moves the admin API, which is bound once, at start:
    /// `FILE:LINE:COL: message`, at the new `admin.bind` (or where it would be).
    #[error("{0}")]
    AdminBind(ConfigError),
    /// The runtime shut down while the reload was reading or building.
    #[error("the reload was interrupted by the runtime shutting down")]
    Interrupted,
}

impl From<ConfigErrors> for ReloadError {
    fn from(errors: ConfigErrors) -> Self {
        ReloadError::Config(errors)
    }
}

/// The outcome of the last reload, for the admin API (`/config`, `/ready`) and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Whether the last reload succeeded (true before any reload).
    pub ok: bool,
    /// The last reload's error, with `FILE:LINE:COL:` positions where it has them.
    pub error: Option<String>,
    /// When the last reload finished (the start time before any reload).
    pub at: SystemTime,
    /// The generation now serving.
    pub generation: u64,
    /// Reloads that succeeded, including those that found nothing changed.
    pub reloads_ok: u64,
    /// Reloads that failed.
    pub reloads_error: u64,
}

/// A cloneable handle on the one reload function, the running listeners and the drain flag.
#[derive(Debug, Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    /// The config file; `None` for a proxy started from an in-memory config.
    path: Option<PathBuf>,
    /// One permit: reloads run one at a time (a semaphore, because the tokio mutex is
    /// disallowed and the permit is held across `.await`).
    serial: Semaphore,
    /// Short critical sections only, never held across `.await`.
    status: Mutex<ReloadStatus>,
    /// Touched by reloads (serialised by `serial`) and shutdown; never held across `.await`.
    listeners: Mutex<ListenerSet>,
    draining: AtomicBool,
}

// === impl Reloader ===

impl Reloader {
    /// A reloader for `shared`, whose snapshot is the first generation, reading `path`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        path: Option<PathBuf>,
        listeners: ListenerSet,
    ) -> Reloader {
        let generation = shared.snapshot().generation;
        let status = ReloadStatus {
            ok: true,
            error: None,
            at: SystemTime::now(),
            generation,
            reloads_ok: 0,
            reloads_error: 0,
        };
        Reloader {
            inner: Arc::new(Inner {
                shared,
                path,
                serial: Semaphore::new(1),
                status: Mutex::new(status),
                listeners: Mutex::new(listeners),
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// Binds and starts the first config's listeners and runs the post-swap hook once.
    pub(crate) fn start(&self) -> Result<(), StartError> {
        let snapshot = self.inner.shared.snapshot();
        let mut set = self.listeners();
        let plan = set.plan(&snapshot.config.listeners)?;
        set.apply(plan, &self.inner.shared);
        drop(set);
        self.after_swap(&snapshot);
        Ok(())
    }

    /// Reloads the config file; returns the generation now serving (unchanged only when the
    /// watcher found the file's config unchanged). On error the running config stays.
    /// Concurrent calls run one after another.
    pub async fn reload(&self, trigger: Trigger) -> Result<u64, ReloadError> {
        let started = tokio::time::Instant::now();
        // The semaphore is never closed, so acquiring only fails in theory.
        let _permit = self.inner.serial.acquire().await.ok();
        let result = self.reload_serial(trigger).await;
        if let Err(ReloadError::Draining) = result {
            // Not a failure of the file: the running config is already on its way out.
            tracing::info!(
                trigger = trigger.as_str(),
                "reload refused: the proxy is shutting down"
            );
            return result;
        }
        let took = started.elapsed();
        let mut status = self.status_lock();
        status.at = SystemTime::now();
        match &result {
            Ok(generation) => {
                tracing::info!(
                    trigger = trigger.as_str(),
                    generation,
                    ?took,
                    "config reloaded"
                );
                status.ok = true;
                status.error = None;
                status.generation = *generation;
                status.reloads_ok += 1;
            }
            Err(error) => {
                let message = error_chain(error);
                tracing::error!(
                    trigger = trigger.as_str(),
                    generation = status.generation,
                    "config reload failed, the running config stays:\n{message}"
                );
                status.ok = false;
                status.error = Some(message);
                status.reloads_error += 1;
            }
        }
        result
    }

    async fn reload_serial(&self, trigger: Trigger) -> Result<u64, ReloadError> {
        if self.is_draining() {
            return Err(ReloadError::Draining);
        }
        let path = self.inner.path.clone().ok_or(ReloadError::NoConfigFile)?;
        let current = self.inner.shared.snapshot();
        // The text is kept to position a build error in this file, not in a later write.
        let read_from = path.clone();
        let (config, text) = blocking(move || {
            let text = config::read(&read_from)?;
            config::parse(&read_from, &text).map(|config| (config, text))
        })
        .await?;
        let admin_bind = |c: &config::Config| c.admin.as_ref().map(|a| a.bind);
        if admin_bind(&config) != admin_bind(&current.config) {
            let message = "admin.bind cannot change on reload (the admin API is bound once, \
                           at start); restart switchyard to apply it";
            let at = [config::Seg::Key("admin"), config::Seg::Key("bind")];
            return Err(ReloadError::AdminBind(config::locate(
                &path, &text, &at, message,
            )));
        }
        if config.workers != current.config.workers {
            tracing::warn!(
                from = ?current.config.workers,
                to = ?config.workers,
                "workers changed: the worker count is read at start only; this one applies at the next start (unless --workers overrides it)"
            );
        }
        if !trigger.is_explicit() && config == *current.config {
            tracing::debug!(generation = current.generation, "config file unchanged");
            return Ok(current.generation);
        }
        let previous = current.clone();
        let (next, path, text) = blocking(move || {
            let built_from = config.clone();
            match Snapshot::build(config, Some(&previous)) {
                Ok(next) => Ok((next, path, text)),
                Err(error) => Err(ReloadError::Build(error.locate(&built_from, &path, &text))),
            }
        })
        .await?;
        let plan = self.listeners().plan(&next.config.listeners);
        let plan = plan.map_err(|error| match error.bind_key(&next.config) {
            Some(key) => {
                let message = crate::error_chain(&error);
                ReloadError::Build(config::locate(&path, &text, &key, message))
            }
            None => ReloadError::Listener(error),
        })?;
        let next = Arc::new(next);
        self.inner.shared.store(next.clone());
        self.listeners().apply(plan, &self.inner.shared);
        self.after_swap(&next);
        Ok(next.generation)
    }

    /// Runs after every snapshot swap and once after the first start: discovery and
    /// health-check tasks follow the pools of the new snapshot.
    fn after_swap(&self, snapshot: &Arc<Snapshot>) {
        tracing::debug!(generation = snapshot.generation, "snapshot swapped in");
        crate::discovery::sync(&self.inner.shared, snapshot);
        self.inner.shared.checkers.sync(snapshot);
    }

    /// The outcome of the last reload.
    pub fn status(&self) -> ReloadStatus {
        self.status_lock().clone()
    }

    /// True once shutdown has started (`/ready` answers 503 then).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// The running snapshot and process-wide state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The address the running listener named `name` actually bound.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners().addr(name)
    }

    /// Marks the proxy as draining and hands over every listener task, running or draining,
    /// for shutdown to await. Waits for a reload in progress, and refuses later ones.
    pub(crate) async fn begin_shutdown(&self) -> Vec<JoinHandle<()>> {
        self.inner.draining.store(true, Ordering::Release);
        let _permit = self.inner.serial.acquire().await.ok();
        self.listeners().take_tasks()
    }

    fn listeners(&self) -> std::sync::MutexGuard<'_, ListenerSet> {
        // The set stays consistent even if a holder panicked: every change is one push/remove.
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn status_lock(&self) -> std::sync::MutexGuard<'_, ReloadStatus> {
        self.inner
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs blocking work (file reads, DNS) on tokio's blocking pool.
async fn blocking<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ReloadError>
where
    T: Send + 'static,
    E: Into<ReloadError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(Into::into),
        // The work does not panic; if it did, surface the panic where it happened.
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(ReloadError::Interrupted),
        },
    }
}
