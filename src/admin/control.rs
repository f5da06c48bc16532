//! The [`Control`] seam: what the admin API asks of the rest of the process (reloading,
//! lifecycle), and [`StaticControl`], its stand-in for a build without hot reload.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// A boxed future that can move between threads.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the admin API asks of the rest of the process: reloading and lifecycle state.
pub trait Control: Send + Sync + 'static {
    /// Reloads the config file; the new generation, or why not.
    fn reload(&self) -> BoxFuture<Result<u64, ReloadRefused>>;
    /// The outcome of the last reload (or the start, before any).
    fn last_reload(&self) -> LastReload;
    /// Whether shutdown has begun.
    fn is_draining(&self) -> bool;
}

/// Why [`Control::reload`] did not reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadRefused {
    /// Shutdown has begun: nothing is left to reload into (not a failed reload).
    Draining,
    /// The reload failed: the file was refused, or its config could not be built.
    Failed(String),
}

/// The last reload's outcome and the reload counts: the reloader's own status.
pub use crate::reload::ReloadStatus as LastReload;

/// A [`Control`] for a build without hot reload: every reload fails, draining is a flag.
#[derive(Debug)]
pub struct StaticControl {
    started: SystemTime,
    draining: AtomicBool,
    failures: AtomicU64,
    last_failure: Mutex<Option<SystemTime>>,
}

/// What [`StaticControl::reload`] answers.
pub const RELOAD_UNAVAILABLE: &str = "reload is not available";

// === impl StaticControl ===

impl StaticControl {
    /// Started now, not draining.
    pub fn new() -> StaticControl {
        StaticControl {
            started: SystemTime::now(),
            draining: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            last_failure: Mutex::new(None),
        }
    }

    /// Marks the process as draining: `/ready` answers `503` from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

impl Default for StaticControl {
    fn default() -> StaticControl {
        StaticControl::new()
    }
}

impl Control for StaticControl {
    fn reload(&self) -> BoxFuture<Result<u64, ReloadRefused>> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
        Box::pin(async { Err(ReloadRefused::Failed(RELOAD_UNAVAILABLE.to_owned())) })
    }

    fn last_reload(&self) -> LastReload {
        let failed = *self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
        LastReload {
            ok: failed.is_none(),
            error: failed.map(|_| RELOAD_UNAVAILABLE.to_owned()),
            at: failed.unwrap_or(self.started),
            generation: 1,
            reloads_ok: 0,
            reloads_error: self.failures.load(Ordering::Relaxed),
        }
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

impl Control for crate::reload::Reloader {
    fn reload(&self) -> BoxFuture<Result<u64, ReloadRefused>> {
        let reloader = self.clone();
        Box::pin(async move {
            reloader
                .reload(crate::reload::Trigger::Admin)
                .await
                .map_err(|error| match error {
                    crate::reload::ReloadError::Draining => ReloadRefused::Draining,
                    error => ReloadRefused::Failed(crate::error_chain(&error)),
                })
        })
    }

    fn last_reload(&self) -> LastReload {
        self.status()
    }

    fn is_draining(&self) -> bool {
        crate::reload::Reloader::is_draining(self)
    }
}
