//! The runtime service registry: instances added to pools through the admin API.
//!
//! `PUT /registry/{pool}/{addr}` registers or renews an instance, `DELETE` removes it, and an
//! entry not renewed within its `ttl` expires. Each entry is an `Arc<Upstream>` with
//! [`Source::Registry`]; every change rewrites its pool's registered members at once
//! (`Pool::set_discovered`, which keeps the file's, DNS and etcd members), so
//! the balancer sees it on the next request, without a reload. A new snapshot (a reload) gets
//! the entries of pools that still exist re-applied by `Shared::store` through [`Registry::apply`];
//! entries of a pool that is gone are dropped, and so are those the file now lists itself.
//! The same `Arc<Upstream>` is kept across reloads, so its health, in-flight count and
//! connections carry over.
//!
//! Choices where the SPEC is silent:
//! - default `ttl` [`DEFAULT_TTL`], at most [`MAX_TTL`]; a renewal may change weight and ttl,
//!   and keeps the registered value of a field it leaves out (a new weight makes a new
//!   upstream: the balancer's weights are fixed per upstream);
//! - registering an address that the pool already lists in the file is refused
//!   ([`RegistryError::Static`], `409`): the file owns it, and a registry copy would double it.
//!
//! Expiry is one task ([`run_expiry`]) that sleeps until the earliest deadline and is woken
//! when an entry is added or renewed. Membership changes are also published on a `watch`
//! channel ([`Registry::subscribe`]) for whoever must follow them (health checks).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{format_duration, MAX_WEIGHT};
use crate::snapshot::{Shared, Snapshot};
use crate::upstream::{Pool, Source, Upstream};

/// `ttl` of an entry registered without one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Longest accepted `ttl`.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the expiry task sleeps when no entry exists (a registration wakes it earlier).
const IDLE_SWEEP: Duration = Duration::from_secs(3600);

/// Why a registry request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The running config has no pool of that name.
    #[error("unknown pool {0:?}")]
    UnknownPool(String),
    /// No registered instance at that address in that pool.
    #[error("{addr} is not registered in pool {pool:?}")]
    NotFound {
        /// The pool.
        pool: String,
        /// The address.
        addr: SocketAddr,
    },
    /// The address is one of the pool's upstreams from the config file.
    #[error("{addr} is already an upstream of pool {pool:?} (from the config file, DNS or etcd); it cannot also be registered")]
    Static {
        /// The pool.
        pool: String,
        /// The address.
        addr: SocketAddr,
    },
    /// The weight is outside 1..=10000.
    #[error("weight {0} is out of range: expected an integer from 1 to {MAX_WEIGHT}")]
    Weight(u32),
    /// The ttl is zero or too long.
    #[error("ttl {0} is out of range: expected more than 0s and at most 24h")]
    Ttl(String),
}

/// A registered instance, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    /// The pool it belongs to.
    pub pool: String,
    /// Its address.
    pub addr: String,
    /// Its balancing weight.
    pub weight: u32,
    /// How long it lives without a renewal, like `30s`.
    pub ttl: String,
    /// When it expires without a renewal (RFC 3339).
    pub expires_at: String,
    /// Always `registry`.
    pub source: &'static str,
}

#[derive(Debug)]
struct Entry {
    upstream: Arc<Upstream>,
    ttl: Duration,
    expires: Instant,
}

/// The registered instances of every pool.
#[derive(Debug)]
pub struct Registry {
    /// Entries by (pool, address); sorted, so a pool's registered members keep a stable order.
    /// A std mutex: held briefly, never across `.await`, never on the request path.
    entries: Mutex<BTreeMap<(String, SocketAddr), Entry>>,
    /// Wakes the expiry task when a deadline may have moved earlier.
    wake: Notify,
    /// Bumped on every membership change.
    version: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            entries: Mutex::default(),
            wake: Notify::new(),
            version: watch::Sender::new(0),
        }
    }
}

// === impl Registry ===

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, SocketAddr), Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers or renews `addr` in `pool`; returns the entry and whether it is new.
    pub fn put(
        &self,
        shared: &Shared,
        pool: &str,
        addr: SocketAddr,
        weight: Option<u32>,
        ttl: Option<Duration>,
    ) -> Result<(Registration, bool), RegistryError> {
        if let Some(weight) = weight.filter(|w| !(1..=MAX_WEIGHT).contains(w)) {
            return Err(RegistryError::Weight(weight));
        }
        if let Some(ttl) = ttl.filter(|t| t.is_zero() || *t > MAX_TTL) {
            return Err(RegistryError::Ttl(format_duration(ttl)));
        }
        let mut entries = self.lock();
        // Loaded under the lock: a reload's `apply` cannot slip in between.
        let snapshot = shared.snapshot();
        let target = snapshot
            .pool(pool)
            .ok_or_else(|| RegistryError::UnknownPool(pool.to_owned()))?;
        let listed = target.upstreams();
        if listed
            .iter()
            .any(|u| u.addr == addr && u.source != Source::Registry)
        {
            return Err(RegistryError::Static {
                pool: pool.to_owned(),
                addr,
            });
        }
        let key = (pool.to_owned(), addr);
        // A renewal that leaves a field out keeps the registered value (a heartbeat need not
        // repeat them); a first registration takes the defaults.
        let registered = entries.get(&key);
        let weight = weight
            .or(registered.map(|e| e.upstream.weight))
            .unwrap_or(crate::config::DEFAULT_WEIGHT);
        let ttl = ttl.or(registered.map(|e| e.ttl)).unwrap_or(DEFAULT_TTL);
        let expires = Instant::now() + ttl;
        let created = match entries.get_mut(&key) {
            Some(entry) if entry.upstream.weight == weight => {
                entry.ttl = ttl;
                entry.expires = expires;
                false
            }
            existing => {
                let created = existing.is_none();
                // A renewal with a new weight keeps the instance's health and connections.
                let upstream = match existing {
                    Some(entry) => Upstream::reweighed(&entry.upstream, weight),
                    None => Arc::new(Upstream::new(addr, weight, Source::Registry)),
                };
                entries.insert(
                    key.clone(),
                    Entry {
                        upstream,
                        ttl,
                        expires,
                    },
                );
                set_members(target, &entries);
                self.version.send_modify(|v| *v += 1);
                if created {
                    tracing::info!(pool, %addr, weight, ttl = ?ttl, "instance registered");
                }
                created
            }
        };
        self.wake.notify_one();
        let entry = &entries[&key];
        Ok((registration(pool, entry), created))
    }

    /// Removes `addr` from `pool`.
    pub fn delete(
        &self,
        shared: &Shared,
        pool: &str,
        addr: SocketAddr,
    ) -> Result<(), RegistryError> {
        let mut entries = self.lock();
        let snapshot = shared.snapshot();
        let target = snapshot
            .pool(pool)
            .ok_or_else(|| RegistryError::UnknownPool(pool.to_owned()))?;
        if entries.remove(&(pool.to_owned(), addr)).is_none() {
            return Err(RegistryError::NotFound {
                pool: pool.to_owned(),
                addr,
            });
        }
        set_members(target, &entries);
        self.version.send_modify(|v| *v += 1);
        tracing::info!(pool, %addr, "instance deregistered");
        Ok(())
    }

    /// Every registered instance, by pool and address.
    pub fn list(&self) -> Vec<Registration> {
        let entries = self.lock();
        entries
            .iter()
            .map(|((pool, _), entry)| registration(pool, entry))
            .collect()
    }

    /// Adds the entries to the pools of a new snapshot, then runs `store`; drops the entries
    /// of pools it no longer has, and those whose address the pool now lists itself; the
    /// entries of `moved` pools (new protocol or TLS) become fresh upstreams. Called by
    /// `Shared::store`, so it is atomic with the swap.
    pub fn apply(&self, snapshot: &Snapshot, moved: &[&str], store: impl FnOnce()) {
        let mut entries = self.lock();
        let before = entries.len();
        for ((pool, addr), entry) in entries.iter_mut() {
            if moved.contains(&pool.as_str()) {
                // Its pooled connections speak the pool's old protocol or TLS settings.
                let weight = entry.upstream.weight;
                entry.upstream = Arc::new(Upstream::new(*addr, weight, Source::Registry));
            }
        }
        entries.retain(|(pool, addr), _| {
            let Some(target) = snapshot.pool(pool) else {
                tracing::info!(pool, %addr, "pool removed: registered instance dropped");
                return false;
            };
            // The file now lists it (as `put` refuses): the file owns it, and keeping the
            // registered copy too would send it twice its share.
            let listed = target
                .upstreams()
                .iter()
                .any(|u| u.addr == *addr && u.source != Source::Registry);
            if listed {
                tracing::info!(pool, %addr, "now listed in the config file: registered instance dropped");
            }
            !listed
        });
        let mut pools: Vec<&str> = entries.keys().map(|(p, _)| p.as_str()).collect();
        pools.dedup();
        for name in pools {
            if let Some(pool) = snapshot.pool(name) {
                set_members(pool, &entries);
            }
        }
        store();
        if entries.len() != before {
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// Removes entries whose deadline passed; returns the earliest remaining deadline.
    pub fn sweep(&self, shared: &Shared, now: Instant) -> Option<Instant> {
        let mut entries = self.lock();
        let expired: Vec<(String, SocketAddr)> = entries
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        if !expired.is_empty() {
            let snapshot = shared.snapshot();
            for key in &expired {
                entries.remove(key);
                tracing::info!(pool = %key.0, addr = %key.1, "registered instance expired");
            }
            let mut pools: Vec<&str> = expired.iter().map(|(p, _)| p.as_str()).collect();
            pools.dedup();
            for pool in pools.into_iter().filter_map(|p| snapshot.pool(p)) {
                set_members(pool, &entries);
            }
            self.version.send_modify(|v| *v += 1);
        }
        entries.values().map(|e| e.expires).min()
    }

    /// A receiver that sees a new value after every membership change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// Sets `pool`'s registered members; its other sources' members stay.
fn set_members(pool: &Pool, entries: &BTreeMap<(String, SocketAddr), Entry>) {
    let registered = entries
        .iter()
        .filter(|((p, _), _)| **p == *pool.name)
        .map(|(_, e)| e.upstream.clone())
        .collect();
    pool.set_discovered(Source::Registry, registered);
}

fn registration(pool: &str, entry: &Entry) -> Registration {
    let left = entry.expires.saturating_duration_since(Instant::now());
    let expires_at = SystemTime::now() + left;
    Registration {
        pool: pool.to_owned(),
        addr: entry.upstream.id.to_string(),
        weight: entry.upstream.weight,
        ttl: format_duration(entry.ttl),
        expires_at: humantime::format_rfc3339_millis(expires_at).to_string(),
        source: Source::Registry.as_str(),
    }
}

/// Expires registry entries until `shutdown`: sleeps until the earliest deadline, and is
/// woken early when an entry is added or renewed.
pub async fn run_expiry(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let now = Instant::now();
        let next = shared
            .registry
            .sweep(&shared, now)
            .unwrap_or(now + IDLE_SWEEP);
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = shared.registry.wake.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}
