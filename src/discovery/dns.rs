//! DNS re-resolution of a pool's hostname upstreams, every `dns_refresh`.
//!
//! One `Refresher` task per pool that lists hostnames. Each round resolves every hostname
//! (`tokio::net::lookup_host`: `getaddrinfo` on tokio's blocking pool, never on the async
//! workers) with no snapshot held, then applies the results to the pool of the running
//! snapshot. Like Envoy's STRICT_DNS clusters:
//! - every resolved address is an upstream with `source: dns` and the entry's weight;
//! - addresses that stay keep their `Arc<Upstream>`; new ones join; gone ones leave (requests
//!   in flight on them finish: they hold their own `Arc`);
//! - a failed, timed out or empty resolution keeps the last good addresses and logs a warning.
//!
//! The first round runs one `dns_refresh` after the task starts: the snapshot build has just
//! resolved every hostname.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::snapshot::Shared;
use crate::upstream::{Pool, Source, Upstream};

/// Longest wait for one hostname's resolution; past it the round counts as failed.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A hostname entry of a pool's `upstreams`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `host:port` as written in the file.
    pub addr: String,
    /// The entry's weight, given to every address it resolves to.
    pub weight: u32,
}

/// What one round did to a pool.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Hostnames whose addresses changed.
    pub changed: usize,
    /// Hostnames whose resolution failed or came back empty (their last good set stays).
    pub failed: usize,
}

/// The re-resolution task of one pool.
#[derive(Debug)]
pub(super) struct Refresher {
    pub(super) shared: Weak<Shared>,
    pub(super) pool: Arc<str>,
    pub(super) hosts: Vec<Host>,
    pub(super) every: Duration,
    /// Failed resolutions so far (`Discovery::failures`).
    pub(super) failures: Arc<AtomicU64>,
    /// Completed rounds so far (`Discovery::rounds`).
    pub(super) rounds: Arc<AtomicU64>,
}

impl Refresher {
    /// Re-resolves every `every` until `cancel`.
    pub(super) async fn run(self, cancel: CancellationToken) {
        let start = tokio::time::Instant::now() + self.every;
        let mut ticks = tokio::time::interval_at(start, self.every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let results = tokio::select! {
                () = cancel.cancelled() => return,
                results = resolve_all(&self.hosts, system_resolve) => results,
            };
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let snapshot = shared.snapshot();
            let Some(pool) = snapshot.pool(&self.pool) else {
                // Removed by a reload; `sync` cancels this task.
                continue;
            };
            let outcome = apply(pool, &self.hosts, results);
            self.failures
                .fetch_add(outcome.failed as u64, Ordering::Relaxed);
            self.rounds.fetch_add(1, Ordering::Relaxed);
            if outcome.changed > 0 {
                shared.discovery.changed();
            }
        }
    }
}

/// Resolves every host, then applies the results to `pool` (the refresh of one round, with
/// the resolver as a seam: tests pass a closure).
pub async fn refresh<F, Fut>(pool: &Pool, hosts: &[Host], resolve: F) -> Outcome
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = io::Result<Vec<SocketAddr>>>,
{
    let results = resolve_all(hosts, resolve).await;
    apply(pool, hosts, results)
}

async fn resolve_all<F, Fut>(hosts: &[Host], resolve: F) -> Vec<io::Result<Vec<SocketAddr>>>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = io::Result<Vec<SocketAddr>>>,
{
    let mut results = Vec::with_capacity(hosts.len());
    for host in hosts {
        results.push(resolve(host.addr.clone()).await);
    }
    results
}

/// The system resolver (`getaddrinfo` on tokio's blocking pool), under [`RESOLVE_TIMEOUT`].
pub async fn system_resolve(addr: String) -> io::Result<Vec<SocketAddr>> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(addr)).await {
        Ok(found) => Ok(found?.collect()),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "resolution timed out",
        )),
    }
}

/// Applies one round's results (one per host, in order) to `pool`.
fn apply(pool: &Pool, hosts: &[Host], results: Vec<io::Result<Vec<SocketAddr>>>) -> Outcome {
    let mut outcome = Outcome::default();
    for (host, result) in hosts.iter().zip(results) {
        let mut found = match result {
            Ok(found) if !found.is_empty() => found,
            Ok(_) => {
                tracing::warn!(pool = %pool.name, addr = %host.addr, "hostname resolved to no address; keeping its last good addresses");
                outcome.failed += 1;
                continue;
            }
            Err(error) => {
                tracing::warn!(pool = %pool.name, addr = %host.addr, %error, "cannot resolve upstream; keeping its last good addresses");
                outcome.failed += 1;
                continue;
            }
        };
        found.sort();
        found.dedup();
        let Some(current) = pool.resolved(&host.addr, host.weight) else {
            // The pool no longer lists this hostname (a reload is replacing this task).
            continue;
        };
        if current.iter().map(|u| u.addr).eq(found.iter().copied()) {
            continue;
        }
        let next: Vec<Arc<Upstream>> = found
            .iter()
            .map(|addr| {
                current
                    .iter()
                    .find(|u| u.addr == *addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Upstream::new(*addr, host.weight, Source::Dns)))
            })
            .collect();
        let added: Vec<SocketAddr> = found
            .iter()
            .filter(|a| !current.iter().any(|u| u.addr == **a))
            .copied()
            .collect();
        let removed: Vec<SocketAddr> = current
            .iter()
            .map(|u| u.addr)
            .filter(|a| !found.contains(a))
            .collect();
        tracing::info!(pool = %pool.name, addr = %host.addr, ?added, ?removed, "hostname re-resolved: upstreams changed");
        if pool.set_resolved(&host.addr, host.weight, next) {
            outcome.changed += 1;
        }
    }
    outcome
}

#[cfg(test)]
mod tests;
