//! Discovery: pool members that follow DNS and etcd without a reload.
//!
//! Two sources run as background tasks, one per pool and source:
//! - [`dns`]: every `dns_refresh`, the pool's hostname upstreams are resolved again; each
//!   hostname keeps its last good addresses when a resolution fails or comes back empty.
//! - [`etcd`]: every key under `discovery.etcd.prefix` is one instance; the task lists the
//!   prefix, then watches it, through etcd's HTTP/JSON gateway, and keeps the last known
//!   instances while etcd is unreachable.
//!
//! Both hand their results to the pool of the *running* snapshot (`Pool::set_resolved`,
//! `Pool::set_discovered`), where `upstream::members` composes them with the file's and the
//! registry's members. Addresses that stay keep their `Arc<Upstream>`, so health, in-flight
//! counts and pooled connections carry over.
//!
//! Reloads: a new snapshot resolves its hostnames again while it is built (keeping the last
//! good addresses of a hostname the running pool already had, see `snapshot`), and
//! [`Discovery::apply`] (run by `Shared::store`, before the swap) gives the new pools the
//! last known etcd instances (when only a pool's etcd endpoints changed, until its new
//! watcher has listed them). After each swap
//! [`sync`] starts the tasks of new pools, restarts those whose settings changed, and stops
//! those of removed pools. Every membership change is published on a `watch` channel
//! ([`Discovery::subscribe`]) that the health checker follows, as it follows the registry.
//! Nothing here runs on, or takes a lock of, the request path.

pub mod dns;
pub mod etcd;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{EtcdDiscovery, PoolConfig, Protocol, UpstreamTls as UpstreamTlsConfig};
use crate::snapshot::{Shared, Snapshot};
use crate::upstream::{Source, Upstream};

/// Which source a task follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Dns,
    Etcd,
}

/// What a task was started with; a pool whose spec changes gets a new task.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Spec {
    Dns {
        hosts: Vec<dns::Host>,
        every: Duration,
    },
    /// The pool's protocol and TLS settings are part of it: a change restarts the watcher,
    /// from the fresh upstreams `Discovery::apply` made.
    Etcd(EtcdDiscovery, Transport),
}

/// A pool's protocol and upstream TLS settings: what its pooled connections speak.
type Transport = (Protocol, Option<UpstreamTlsConfig>);

/// The transport of `cfg`.
fn transport(cfg: &PoolConfig) -> Transport {
    (cfg.protocol, cfg.tls.clone())
}

impl Spec {
    fn kind(&self) -> Kind {
        match self {
            Spec::Dns { .. } => Kind::Dns,
            Spec::Etcd(..) => Kind::Etcd,
        }
    }

    /// The tasks a pool needs: DNS when it lists hostnames, etcd when it has `discovery.etcd`.
    fn of(cfg: &PoolConfig) -> Vec<Spec> {
        let hosts: Vec<dns::Host> = cfg
            .upstreams
            .iter()
            .filter(|u| u.addr.parse::<SocketAddr>().is_err())
            .map(|u| dns::Host {
                addr: u.addr.clone(),
                weight: u.weight,
            })
            .collect();
        let mut specs = Vec::with_capacity(2);
        if !hosts.is_empty() {
            specs.push(Spec::Dns {
                hosts,
                every: cfg.dns_refresh,
            });
        }
        if let Some(etcd) = cfg.discovery.as_ref().and_then(|d| d.etcd.as_ref()) {
            specs.push(Spec::Etcd(etcd.clone(), transport(cfg)));
        }
        specs
    }
}

#[derive(Debug)]
struct Task {
    spec: Spec,
    cancel: CancellationToken,
    /// Failed resolutions or etcd sessions so far (see [`Discovery::failures`]).
    failures: Arc<AtomicU64>,
    /// Completed DNS rounds or etcd listings so far (see [`Discovery::rounds`]).
    rounds: Arc<AtomicU64>,
}

/// The last instances an etcd task published for a pool, with the settings it ran with.
#[derive(Debug)]
struct Known {
    config: EtcdDiscovery,
    upstreams: Vec<Arc<Upstream>>,
}

/// The discovery tasks and what they found; lives in `snapshot::Shared`.
#[derive(Debug)]
pub struct Discovery {
    /// Parent of every task's token; cancelled by [`Discovery::stop`] and on drop.
    root: CancellationToken,
    /// Running tasks by pool and source; locked by `sync` and `stop` only.
    running: Mutex<HashMap<(Arc<str>, Kind), Task>>,
    /// Last known etcd instances by pool: re-applied to every new snapshot. Taken before the
    /// registry's lock and before a pool's membership lock, never the other way round.
    etcd: Mutex<HashMap<String, Known>>,
    /// Bumped on every membership change a task makes.
    version: watch::Sender<u64>,
}

impl Default for Discovery {
    fn default() -> Discovery {
        Discovery {
            root: CancellationToken::new(),
            running: Mutex::default(),
            etcd: Mutex::default(),
            version: watch::Sender::new(0),
        }
    }
}

// === impl Discovery ===

impl Discovery {
    /// No tasks, nothing discovered.
    pub fn new() -> Discovery {
        Discovery::default()
    }

    /// Gives the pools of `snapshot` the last known etcd instances, forgets those of pools
    /// that no longer use etcd, then runs `store`. Called by `Shared::store`, so a task
    /// publishing at the same time lands in one snapshot or the other.
    ///
    /// A pool whose etcd endpoints changed keeps its instances until the task that replaces
    /// its watcher has listed them again, as Envoy keeps a cluster's hosts until a new
    /// assignment arrives: dropping them at the swap would leave an etcd-only pool empty
    /// (`503`) for the length of that first listing. A new prefix is another service: its
    /// old instances go at once. The instances of `moved` pools (new protocol or upstream
    /// TLS) become fresh upstreams, as the file's do.
    pub fn apply(&self, snapshot: &Snapshot, moved: &[&str], store: impl FnOnce()) {
        let mut known = self.etcd_lock();
        for (pool, k) in known.iter_mut() {
            if moved.contains(&pool.as_str()) {
                // New protocol or TLS: their pooled connections speak the old one. The
                // pool's watcher restarts too (its spec has the transport), from these.
                k.upstreams = k
                    .upstreams
                    .iter()
                    .map(|u| Arc::new(Upstream::new(u.addr, u.weight, u.source)))
                    .collect();
            }
        }
        known.retain(|pool, k| match etcd_config(snapshot, pool) {
            Some(config) if *config == k.config => true,
            Some(config) if config.prefix == k.config.prefix => {
                tracing::info!(
                    pool,
                    "etcd endpoints changed: its instances stay until the new watcher lists them"
                );
                // The old task can no longer publish (`set_etcd` checks the settings); the
                // new one replaces these with its first listing.
                k.config = config.clone();
                true
            }
            _ => {
                tracing::info!(
                    pool,
                    "pool removed, or its etcd prefix changed or is gone: its etcd instances are dropped"
                );
                false
            }
        });
        for (name, k) in known.iter() {
            if let Some(pool) = snapshot.pool(name) {
                pool.set_discovered(Source::Etcd, k.upstreams.clone());
            }
        }
        store();
    }

    /// Makes `upstreams` the etcd instances of `pool` in the running snapshot, unless its etcd
    /// settings are no longer `config` or its transport no longer `speaks` (the task is being
    /// replaced).
    fn set_etcd(
        &self,
        shared: &Shared,
        pool: &str,
        (config, speaks): (&EtcdDiscovery, &Transport),
        upstreams: Vec<Arc<Upstream>>,
    ) {
        let mut known = self.etcd_lock();
        // Loaded under the lock: a store cannot slip in between.
        let snapshot = shared.snapshot();
        let Some(target) = snapshot.pool(pool) else {
            return;
        };
        let now = snapshot.config.pools.iter().find(|p| p.name == pool);
        let (protocol, tls) = speaks;
        let same_transport = now.is_some_and(|p| p.protocol == *protocol && p.tls == *tls);
        if etcd_config(&snapshot, pool) != Some(config) || !same_transport {
            return;
        }
        known.insert(
            pool.to_owned(),
            Known {
                config: config.clone(),
                upstreams: upstreams.clone(),
            },
        );
        target.set_discovered(Source::Etcd, upstreams);
        drop(known);
        self.changed();
    }

    /// Publishes a membership change to [`Discovery::subscribe`]rs.
    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// A receiver that sees a new value after every membership change a task makes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Failed DNS resolutions and etcd sessions of `pool`'s current tasks so far.
    pub fn failures(&self, pool: &str) -> u64 {
        self.running_lock()
            .iter()
            .filter(|((p, _), _)| **p == *pool)
            .map(|(_, t)| t.failures.load(Ordering::Relaxed))
            .sum()
    }

    /// Completed DNS rounds and etcd listings of `pool`'s current tasks so far.
    pub fn rounds(&self, pool: &str) -> u64 {
        self.running_lock()
            .iter()
            .filter(|((p, _), _)| **p == *pool)
            .map(|(_, t)| t.rounds.load(Ordering::Relaxed))
            .sum()
    }

    /// Number of running tasks (one per pool and source).
    pub fn len(&self) -> usize {
        self.running_lock().len()
    }

    /// Whether no task runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops every task; later [`sync`] calls start nothing.
    pub fn stop(&self) {
        self.root.cancel();
        self.running_lock().clear();
    }

    /// A guard that stops every task when dropped (held by `Server`).
    pub fn drop_guard(&self) -> DropGuard {
        self.root.clone().drop_guard()
    }

    fn running_lock(&self) -> MutexGuard<'_, HashMap<(Arc<str>, Kind), Task>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn etcd_lock(&self) -> MutexGuard<'_, HashMap<String, Known>> {
        // Every change is one insert or retain: nothing to repair after a panic.
        self.etcd.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

/// Starts, restarts and stops discovery tasks to match the pools of `snapshot`; run after
/// every swap (the reloader's post-swap hook). Must run inside tokio.
pub fn sync(shared: &Arc<Shared>, snapshot: &Snapshot) {
    let this = &shared.discovery;
    if this.root.is_cancelled() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!("discovery needs a tokio runtime; no task started");
        return;
    };
    let mut running = this.running_lock();
    let mut wanted = HashMap::with_capacity(running.len());
    for cfg in &snapshot.config.pools {
        let pool: Arc<str> = Arc::from(cfg.name.as_str());
        for spec in Spec::of(cfg) {
            let key = (pool.clone(), spec.kind());
            let task = match running.remove(&key) {
                Some(task) if task.spec == spec => task,
                old => {
                    if let Some(old) = old {
                        old.cancel.cancel();
                    }
                    start(
                        &runtime,
                        shared,
                        pool.clone(),
                        spec,
                        this.root.child_token(),
                    )
                }
            };
            wanted.insert(key, task);
        }
    }
    for ((pool, kind), task) in running.drain() {
        task.cancel.cancel();
        tracing::info!(pool = %pool, source = ?kind, "discovery stopped");
    }
    *running = wanted;
}

fn start(
    runtime: &tokio::runtime::Handle,
    shared: &Arc<Shared>,
    pool: Arc<str>,
    spec: Spec,
    cancel: CancellationToken,
) -> Task {
    let failures = Arc::new(AtomicU64::new(0));
    let rounds = Arc::new(AtomicU64::new(0));
    let weak = Arc::downgrade(shared);
    match &spec {
        Spec::Dns { hosts, every } => {
            tracing::info!(pool = %pool, hosts = hosts.len(), every = ?every, "DNS re-resolution started");
            let task = dns::Refresher {
                shared: weak,
                pool,
                hosts: hosts.clone(),
                every: *every,
                failures: failures.clone(),
                rounds: rounds.clone(),
            };
            runtime.spawn(task.run(cancel.clone()));
        }
        Spec::Etcd(config, speaks) => {
            tracing::info!(pool = %pool, endpoints = ?config.endpoints, prefix = %config.prefix, "etcd discovery started");
            let known = shared
                .discovery
                .etcd_lock()
                .get(&*pool)
                .map(|k| k.upstreams.clone());
            let task = etcd::Watcher::new(
                weak,
                pool,
                (config.clone(), speaks.clone()),
                known.unwrap_or_default(),
                failures.clone(),
                rounds.clone(),
            );
            runtime.spawn(task.run(cancel.clone()));
        }
    }
    Task {
        spec,
        cancel,
        failures,
        rounds,
    }
}

/// The etcd settings of the pool named `pool` in `snapshot`.
fn etcd_config<'a>(snapshot: &'a Snapshot, pool: &str) -> Option<&'a EtcdDiscovery> {
    snapshot
        .config
        .pools
        .iter()
        .find(|p| p.name == pool)
        .and_then(|p| p.discovery.as_ref())
        .and_then(|d| d.etcd.as_ref())
}
