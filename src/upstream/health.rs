//! Health of one upstream: the active-check verdict, outlier ejection, and what shows them.
//!
//! Each [`Upstream`] owns a [`Health`]. The request path reads two atomics through
//! `Upstream::is_healthy` (active verdict healthy AND not ejected) only when a pool rebuilds its
//! candidate set, and writes a few atomics per attempt when its pool has `outlier` config.
//! Everything else (threshold counters, last result, last change) sits behind a short
//! per-upstream mutex written once per check and read by status pages.
//!
//! - **Active checks** ([`Checkers`], `checker.rs`): one task per checked upstream records each
//!   probe with [`Health::record_check`]; a [`Counter`] turns consecutive results into a
//!   transition once `healthy_threshold` / `unhealthy_threshold` is met.
//! - **Outlier ejection** (`Pool::report_outcome`, called from `proxy::retry`): consecutive
//!   failures on live traffic eject the upstream for `ejection_time`; then it takes traffic
//!   again with its failure count at zero, as SPEC section 6 says: each ejection lasts the
//!   same, and takes `consecutive_failures` new failures. Its first success after returning
//!   clears the count of ejections in a row that status pages show.
//!
//! **How pools notice.** Every transition bumps the [`HealthEpoch`] the upstream belongs to.
//! A pool shares one epoch with its predecessors of older snapshots (a reload hands it over) and
//! makes every upstream it holds join it (`Pool::new`, `Pool::set_upstreams`). `Pool::candidates`
//! compares the epoch with the one its candidate set was built at (one atomic load) and rebuilds
//! when they differ, so a transition is seen by the current snapshot's pool on its next request,
//! whoever caused it and whichever snapshot that request held.

mod checker;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::{ClientError, Pool, Upstream};
use crate::config::OutlierConfig;

pub use checker::{Checkers, JITTER_PERCENT, MAX_CHECK_BODY, USER_AGENT_VALUE};

/// Why a check or a live attempt passed or failed, as shown in logs and status pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The upstream answered with this status.
    Status(u16),
    /// No complete answer within the deadline.
    Timeout,
    /// The connection was refused.
    ConnectRefused,
    /// The TCP connect did not finish in time.
    ConnectTimeout,
    /// The connect or handshake failed otherwise (unreachable, reset during connect).
    ConnectError,
    /// The upstream closed or reset the connection mid-exchange.
    Reset,
    /// The answer was not valid HTTP.
    BadResponse,
    /// The health answer's body was longer than a check reads.
    BodyTooLarge,
}

impl Reason {
    /// The reason an upstream exchange failed with `error`.
    pub fn from_client_error(error: &ClientError) -> Reason {
        match error {
            ClientError::ConnectTimeout => Reason::ConnectTimeout,
            ClientError::Connect(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                Reason::ConnectRefused
            }
            ClientError::Connect(_) | ClientError::Handshake(_) | ClientError::Tls(_) => {
                Reason::ConnectError
            }
            ClientError::Closed => Reason::Reset,
            ClientError::Exchange(e) if e.is_parse() => Reason::BadResponse,
            ClientError::Exchange(_) => Reason::Reset,
            ClientError::H1(e) if e.is_parse() => Reason::BadResponse,
            ClientError::H1(_) => Reason::Reset,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Status(code) => write!(f, "status {code}"),
            Reason::Timeout => f.write_str("timeout"),
            Reason::ConnectRefused => f.write_str("connect refused"),
            Reason::ConnectTimeout => f.write_str("connect timeout"),
            Reason::ConnectError => f.write_str("connect error"),
            Reason::Reset => f.write_str("connection reset"),
            Reason::BadResponse => f.write_str("bad response"),
            Reason::BodyTooLarge => f.write_str("body too large"),
        }
    }
}

/// The result of one active check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckResult {
    /// Whether the check passed.
    pub ok: bool,
    /// What happened: `status 200`, `timeout`, `connect refused`, ...
    pub reason: Reason,
    /// When the check finished.
    pub at: SystemTime,
}

/// A point-in-time view of an upstream's health, for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthStatus {
    /// The active-check verdict (true when unchecked).
    pub healthy: bool,
    /// Whether outlier detection has ejected it now.
    pub ejected: bool,
    /// Consecutive failed active checks.
    pub consecutive_failures: u32,
    /// Consecutive failures on live traffic since the last success or ejection.
    pub outlier_failures: u32,
    /// Ejections in a row (resets on a success after returning).
    pub ejections: u32,
    /// The latest active check, if any ran.
    pub last_check: Option<CheckResult>,
    /// When `healthy` or `ejected` last changed.
    pub last_change: Option<SystemTime>,
    /// Active checks that passed, since the upstream was created.
    pub checks_ok: u64,
    /// Active checks that failed, since the upstream was created.
    pub checks_failed: u64,
}

/// A counter bumped on every health or ejection transition of the upstreams that joined it.
///
/// Shared by `Arc` between a pool and its successors across reloads; see the module doc.
#[derive(Debug, Default)]
pub struct HealthEpoch(AtomicU64);

impl HealthEpoch {
    /// The current value; a candidate set built at another value is stale.
    #[inline]
    pub fn current(&self) -> u64 {
        // Acquire pairs with the Release bump: a rebuild that reads the new value also sees
        // the flags stored before it. (A plain load on x86, as cheap as Relaxed.)
        self.0.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// Consecutive-result thresholds of active checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive passes for an unhealthy upstream to become healthy.
    pub healthy: u32,
    /// Consecutive failures for a healthy upstream to become unhealthy.
    pub unhealthy: u32,
}

/// The pure threshold logic of active checks (see rpxy's health-check counter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    healthy: bool,
    passes: u32,
    failures: u32,
}

impl Default for Counter {
    /// A new upstream is healthy until checks say otherwise (SPEC section 6).
    fn default() -> Counter {
        Counter {
            healthy: true,
            passes: 0,
            failures: 0,
        }
    }
}

// === impl Counter ===

impl Counter {
    /// Records one result; returns the new verdict when this result changed it.
    pub fn record(&mut self, ok: bool, t: Thresholds) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            if !self.healthy && self.passes >= t.healthy {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.healthy && self.failures >= t.unhealthy {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }

    /// The current verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }
}

/// The health state of one upstream; lives in [`Upstream`] and carries over reloads with it.
#[derive(Debug)]
pub struct Health {
    /// Active verdict; read by `Upstream::is_healthy`.
    healthy: AtomicBool,
    /// Ejected by outlier detection; read by `Upstream::is_healthy`.
    ejected: AtomicBool,
    /// Back from an ejection and not yet seen succeeding: a success clears `ejections`.
    returned: AtomicBool,
    /// Consecutive live-traffic failures.
    outlier_failures: AtomicU32,
    checks_ok: AtomicU64,
    checks_failed: AtomicU64,
    /// The epoch this upstream's transitions bump: its pool's, once it joined one.
    epoch: ArcSwap<HealthEpoch>,
    /// Everything not read on the request path.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    counter: Counter,
    last_check: Option<CheckResult>,
    last_change: Option<SystemTime>,
    ejections: u32,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            healthy: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            returned: AtomicBool::new(false),
            outlier_failures: AtomicU32::new(0),
            checks_ok: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            epoch: ArcSwap::from_pointee(HealthEpoch::default()),
            state: Mutex::new(State::default()),
        }
    }
}

// === impl Health ===

impl Health {
    /// Whether this upstream may take traffic now: healthy and not ejected.
    #[inline]
    pub fn may_serve(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.ejected.load(Ordering::Relaxed)
    }

    /// Makes transitions bump `epoch` (the pool's) from now on.
    pub fn join(&self, epoch: &Arc<HealthEpoch>) {
        if !Arc::ptr_eq(&self.epoch.load(), epoch) {
            self.epoch.store(epoch.clone());
        }
    }

    /// A snapshot of the state for status pages and metrics.
    pub fn status(&self) -> HealthStatus {
        let state = self.state();
        HealthStatus {
            healthy: self.healthy.load(Ordering::Relaxed),
            ejected: self.ejected.load(Ordering::Relaxed),
            consecutive_failures: state.counter.failures,
            outlier_failures: self.outlier_failures.load(Ordering::Relaxed),
            ejections: state.ejections,
            last_check: state.last_check,
            last_change: state.last_change,
            checks_ok: self.checks_ok.load(Ordering::Relaxed),
            checks_failed: self.checks_failed.load(Ordering::Relaxed),
        }
    }

    /// Records one active check; logs and publishes a transition once, when it happens.
    pub fn record_check(&self, result: CheckResult, t: Thresholds, pool: &str, upstream: &str) {
        let counter = if result.ok {
            &self.checks_ok
        } else {
            &self.checks_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state();
        state.last_check = Some(result);
        let Some(healthy) = state.counter.record(result.ok, t) else {
            return;
        };
        state.last_change = Some(result.at);
        drop(state);
        self.publish(healthy);
        if healthy {
            tracing::info!(pool, upstream, reason = %result.reason, "upstream is healthy again");
        } else {
            tracing::warn!(pool, upstream, reason = %result.reason, "upstream is unhealthy");
        }
    }

    /// Sets the active verdict directly; returns true when it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let mut state = self.state();
        state.counter = Counter {
            healthy,
            ..Counter::default()
        };
        let changed = self.healthy.load(Ordering::Relaxed) != healthy;
        if changed {
            state.last_change = Some(SystemTime::now());
        }
        drop(state);
        if changed {
            self.publish(healthy);
        }
        changed
    }

    /// Forgets the active checks' counts and verdict when they stop for an upstream that stays.
    pub(crate) fn clear_checks(&self, pool: &str, upstream: &str) {
        self.state().last_check = None;
        if self.set_healthy(true) {
            tracing::info!(
                pool,
                upstream,
                "health checks stopped; upstream counts as healthy"
            );
        }
    }

    /// Stores the active verdict and tells the pools.
    fn publish(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
        self.epoch.load().bump();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain data: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === impl Upstream (outlier detection) ===

impl Upstream {
    /// This upstream's health state right now.
    pub fn health(&self) -> HealthStatus {
        self.state.health.status()
    }

    /// Records one live attempt's outcome (`failure: None` = success) under `cfg`.
    pub fn report_outcome(
        self: &Arc<Self>,
        failure: Option<Reason>,
        cfg: &OutlierConfig,
        pool: &Arc<str>,
    ) {
        let h = &self.state.health;
        let Some(reason) = failure else {
            // Loads first, so the common case (nothing to reset) writes no shared cache line.
            if h.outlier_failures.load(Ordering::Relaxed) != 0 {
                h.outlier_failures.store(0, Ordering::Relaxed);
            }
            if h.returned.load(Ordering::Relaxed) && h.returned.swap(false, Ordering::Relaxed) {
                h.state().ejections = 0;
            }
            return;
        };
        if h.ejected.load(Ordering::Relaxed) {
            // Requests that were in flight when it was ejected.
            return;
        }
        let failures = h.outlier_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= cfg.consecutive_failures {
            self.eject(reason, cfg.ejection_time, pool);
        }
    }

    fn eject(self: &Arc<Self>, reason: Reason, duration: Duration, pool: &Arc<str>) {
        let h = &self.state.health;
        // Without a runtime no timer could end the ejection: better not to eject at all.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(pool = %pool, upstream = %self.id, "outlier ejection needs a tokio runtime; not ejecting");
            return;
        };
        if h.ejected.swap(true, Ordering::AcqRel) {
            return;
        }
        h.returned.store(false, Ordering::Relaxed);
        h.outlier_failures.store(0, Ordering::Relaxed);
        let ejections = {
            let mut state = h.state();
            state.ejections = state.ejections.saturating_add(1);
            state.last_change = Some(SystemTime::now());
            state.ejections
        };
        h.epoch.load().bump();
        tracing::warn!(pool = %pool, upstream = %self.id, %reason, ejections, ?duration, "upstream ejected");
        let weak = Arc::downgrade(self);
        let pool = pool.clone();
        // Holds only a `Weak`: an upstream that left the config is not kept alive by its timer.
        runtime.spawn(async move {
            tokio::time::sleep(duration).await;
            if let Some(upstream) = weak.upgrade() {
                upstream.end_ejection(&pool);
            }
        });
    }

    fn end_ejection(&self, pool: &str) {
        let h = &self.state.health;
        h.outlier_failures.store(0, Ordering::Relaxed);
        h.returned.store(true, Ordering::Relaxed);
        h.state().last_change = Some(SystemTime::now());
        h.ejected.store(false, Ordering::Release);
        h.epoch.load().bump();
        tracing::info!(pool, upstream = %self.id, "ejection ended; upstream is tried again");
    }
}

// === impl Pool (outlier detection) ===

impl Pool {
    /// Reports one live attempt on `upstream` to outlier detection; a no-op without `outlier`.
    #[inline]
    pub fn report_outcome(&self, upstream: &Arc<Upstream>, failure: Option<Reason>) {
        if let Some(cfg) = &self.outlier {
            upstream.report_outcome(failure, cfg, &self.name);
        }
    }
}
