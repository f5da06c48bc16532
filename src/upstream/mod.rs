//! Upstream pools: who the instances of a service are and which of them may take a request.
//!
//! An [`Upstream`] is one instance (an address, its weight, its in-flight counter, its health
//! state, see [`health`], and its own keep-alive connections, see [`client`]). A [`Pool`] holds the upstreams of
//! one configured pool and the current *candidate set*: the healthy upstreams and the balancer
//! built over them. The candidate set is rebuilt only when membership or health changes, so a
//! pick is one `ArcSwap` load plus the strategy's atomic arithmetic. Upstreams are shared by
//! `Arc` and matched by address when a snapshot is rebuilt, so their state and connections
//! carry over a config reload. A health or ejection transition bumps the pool's
//! [`health::HealthEpoch`]; [`Pool::candidates`] rebuilds a set built at an older epoch.
//! How a pool reaches its upstreams (HTTP/1.1 or HTTP/2, plaintext or TLS) is its
//! [`Connector`], built once with the pool. Discovery (DNS, etcd) and the registry feed this
//! module through [`Pool::set_resolved`] and [`Pool::set_discovered`]; [`members`] composes
//! what they set. The sources themselves live elsewhere (`discovery`, `registry`).

pub mod client;
pub mod h1;
pub mod health;
pub mod members;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::balance::{Balancer, StrategyKind};
use crate::config::{HashKey, HealthCheckConfig, OutlierConfig, PoolConfig, Protocol};

pub use client::{ClientError, Connection, Connector};
pub use members::{Listed, Members};
pub use tls::{TlsError, UpstreamTls};

/// Where an upstream came from; shown by the admin API as `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Listed by address in the config file.
    Static,
    /// Registered at runtime through the admin API.
    Registry,
    /// Resolved from a hostname in the config file.
    Dns,
    /// Read from etcd.
    Etcd,
}

impl Source {
    /// The lowercase name used in JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Registry => "registry",
            Source::Dns => "dns",
            Source::Etcd => "etcd",
        }
    }
}

/// One instance of a service.
///
/// Its identity (address, source) and weight, and the state it has built up ([`State`]:
/// health, in-flight count, pooled connections, counters). A change of weight alone makes
/// a new `Upstream` that shares the old one's state ([`Upstream::with_weight`]): a reload
/// or a registry renewal that only re-weighs an instance keeps its health verdict, its
/// ejection and its connections, as Envoy and HAProxy do.
#[derive(Debug)]
pub struct Upstream {
    /// The socket address connections go to.
    pub addr: SocketAddr,
    /// `addr` as text: the identity used in logs, metrics labels and the hash ring.
    pub id: Arc<str>,
    /// Balancing weight, 1..=10000.
    pub weight: u32,
    /// Where this upstream came from.
    pub source: Source,
    /// What it has built up, shared with the upstreams that re-weigh it.
    pub(crate) state: Arc<State>,
}

/// What an upstream has built up while it served: kept across a change of its weight.
#[derive(Debug, Default)]
pub(crate) struct State {
    in_flight: AtomicU32,
    /// Active-check verdict and outlier ejection (see [`health`]).
    pub(crate) health: health::Health,
    /// Keep-alive connections to this upstream waiting for reuse (see `client`).
    pub(crate) idle: client::IdleConnections,
    /// Idle connections of our own HTTP/1.1 client (see `h1`).
    pub(crate) h1_idle: h1::IdlePool,
    /// The multiplexed connection shared by requests of an HTTP/2 pool (see `client`).
    pub(crate) h2: client::SharedH2,
    /// Its attempt counters (`switchyard_upstream_requests_total`).
    pub metrics: crate::metrics::UpstreamMetrics,
}

// === impl Upstream ===

impl Upstream {
    /// A healthy upstream with no connections yet.
    pub fn new(addr: SocketAddr, weight: u32, source: Source) -> Upstream {
        Upstream {
            addr,
            id: Arc::from(addr.to_string()),
            weight,
            source,
            state: Arc::default(),
        }
    }

    /// This upstream with another weight, sharing its state.
    pub fn with_weight(&self, weight: u32) -> Upstream {
        Upstream {
            addr: self.addr,
            id: self.id.clone(),
            weight,
            source: self.source,
            state: self.state.clone(),
        }
    }

    /// `existing` when it has `weight`, else the same instance re-weighed (see
    /// [`Upstream::with_weight`]).
    pub fn reweighed(existing: &Arc<Upstream>, weight: u32) -> Arc<Upstream> {
        match existing.weight == weight {
            true => existing.clone(),
            false => Arc::new(existing.with_weight(weight)),
        }
    }

    /// Whether `self` and `other` are the same instance, whatever their weights.
    pub fn same_instance(&self, other: &Upstream) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// Its attempt counters (`switchyard_upstream_requests_total`).
    pub fn metrics(&self) -> &crate::metrics::UpstreamMetrics {
        &self.state.metrics
    }

    /// Requests currently being served by this upstream.
    pub fn in_flight(&self) -> u32 {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// Whether this upstream may take traffic now: active checks say healthy (or none run)
    /// and outlier detection has not ejected it.
    pub fn is_healthy(&self) -> bool {
        self.state.health.may_serve()
    }

    /// Keep-alive connections to this upstream currently idle in its pool.
    pub fn idle_connections(&self) -> usize {
        self.state.idle.len() + self.state.h1_idle.len()
    }

    /// Whether this upstream has an open shared HTTP/2 connection.
    pub fn h2_connected(&self) -> bool {
        self.state.h2.is_open()
    }

    /// Records an active-check verdict; returns true when it changed (pools then see it).
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.state.health.set_healthy(healthy)
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// RAII guard of one in-flight request on an upstream (see tower's `PendingRequests`).
#[derive(Debug)]
pub struct InFlight(Arc<Upstream>);

impl InFlight {
    /// The upstream this request is on.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The upstreams that may take traffic now, with the balancer built over them.
#[derive(Debug)]
pub struct Candidates {
    /// Healthy upstreams, in pool order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Strategy state for exactly this set.
    pub balancer: Balancer,
    /// The pool's health epoch this set was built at; stale once the epoch moves on.
    epoch: u64,
}

/// A configured pool of upstreams.
#[derive(Debug)]
pub struct Pool {
    /// The pool's name from the config file.
    pub name: Arc<str>,
    /// Balancing strategy.
    pub strategy: StrategyKind,
    /// What the consistent-hash strategy hashes.
    pub hash_key: Option<HashKey>,
    /// Protocol spoken to the upstreams.
    pub protocol: Protocol,
    /// Deadline for establishing one upstream connection.
    pub connect_timeout: Duration,
    /// Protocol, TLS and connect deadline for reaching the upstreams.
    pub connector: Connector,
    /// Active health checks; `None` = every upstream counts as checked healthy.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive checks on live traffic; `None` = nothing is counted.
    pub outlier: Option<OutlierConfig>,
    upstreams: ArcSwap<Vec<Arc<Upstream>>>,
    candidates: ArcSwap<Candidates>,
    seed: AtomicU64,
    /// Bumped by every health transition of this pool's upstreams; shared with the pool of
    /// the same name in older and newer snapshots.
    epoch: Arc<health::HealthEpoch>,
    /// Serialises rebuilds; the request path only `try_lock`s it, so it never waits.
    rebuilding: Mutex<()>,
    /// Membership by source (file, DNS, etcd, registry); every source writes its part and
    /// stores the composed list under this lock, so concurrent sources never lose each
    /// other's changes. Never taken on the request path.
    members: Mutex<Members>,
    /// Its series (`switchyard_retries_total`).
    pub metrics: crate::metrics::PoolMetrics,
}

// === impl Pool ===

impl Pool {
    /// Builds a pool over `upstreams`, reusing the balancer position of `previous` if given;
    /// fails when its upstream TLS settings cannot be used (an unreadable CA bundle).
    pub fn new(
        cfg: &PoolConfig,
        upstreams: Vec<Arc<Upstream>>,
        previous: Option<&Pool>,
    ) -> Result<Pool, TlsError> {
        let listed = upstreams.into_iter().map(Listed::Addr).collect();
        Pool::from_listed(cfg, listed, previous)
    }

    /// Builds a pool over the file's entries (hostnames with their resolution); see
    /// [`Pool::new`].
    pub fn from_listed(
        cfg: &PoolConfig,
        listed: Vec<Listed>,
        previous: Option<&Pool>,
    ) -> Result<Pool, TlsError> {
        let members = Members::new(listed);
        let upstreams = members.compose();
        let tls = UpstreamTls::build(cfg)?;
        let seed =
            previous.map_or_else(|| fresh_seed(&cfg.name), |p| p.seed.load(Ordering::Relaxed));
        let epoch = previous.map_or_else(Default::default, |p| p.epoch.clone());
        for upstream in &upstreams {
            upstream.state.health.join(&epoch);
        }
        let candidates = build_candidates(
            cfg.strategy,
            &upstreams,
            seed,
            previous.map(|p| p.candidates.load_full()).as_deref(),
            epoch.current(),
        );
        Ok(Pool {
            name: Arc::from(cfg.name.as_str()),
            strategy: cfg.strategy,
            hash_key: cfg.hash_key.clone(),
            protocol: cfg.protocol,
            connect_timeout: cfg.connect_timeout,
            connector: Connector::new(cfg.protocol, tls, cfg.connect_timeout),
            health_check: cfg.health_check.clone(),
            outlier: cfg.outlier.clone(),
            upstreams: ArcSwap::from_pointee(upstreams),
            candidates: ArcSwap::from_pointee(candidates),
            seed: AtomicU64::new(seed.wrapping_add(1)),
            epoch,
            rebuilding: Mutex::new(()),
            members: Mutex::new(members),
            metrics: crate::metrics::PoolMetrics::new(Arc::from(cfg.name.as_str())),
        })
    }

    /// Every upstream of the pool, healthy or not.
    pub fn upstreams(&self) -> Arc<Vec<Arc<Upstream>>> {
        self.upstreams.load_full()
    }

    /// The current candidate set; cheap, lock-free, meant for the request path.
    ///
    /// One atomic load checks it against the health epoch; a stale set is rebuilt here by one
    /// request while concurrent ones use the stale set (they never wait).
    #[inline]
    pub fn candidates(&self) -> arc_swap::Guard<Arc<Candidates>> {
        let current = self.candidates.load();
        if current.epoch == self.epoch.current() {
            return current;
        }
        let _rebuilding = match self.rebuilding.try_lock() {
            Ok(guard) => guard,
            // Guards no data: a panic while holding it leaves nothing to repair.
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return current,
        };
        drop(current);
        self.rebuild();
        self.candidates.load()
    }

    /// The last good resolution of the hostname entry `addr` (as written) with `weight`;
    /// `None` when the pool has no such entry.
    pub fn resolved(&self, addr: &str, weight: u32) -> Option<Vec<Arc<Upstream>>> {
        self.members_lock()
            .resolved(addr, weight)
            .map(<[_]>::to_vec)
    }

    /// Replaces the resolution of the hostname entry `addr` with `weight` (DNS refresh) and
    /// rebuilds the candidates; false when the pool has no such entry.
    pub fn set_resolved(&self, addr: &str, weight: u32, upstreams: Vec<Arc<Upstream>>) -> bool {
        let mut members = self.members_lock();
        let found = members.set_resolved(addr, weight, upstreams);
        if found {
            self.set_upstreams(members.compose());
        }
        found
    }

    /// Replaces the instances of a runtime source ([`Source::Etcd`], [`Source::Registry`])
    /// and rebuilds the candidates; the other sources' members stay.
    pub fn set_discovered(&self, source: Source, upstreams: Vec<Arc<Upstream>>) {
        let mut members = self.members_lock();
        if members.set_discovered(source, upstreams) {
            self.set_upstreams(members.compose());
        } else {
            tracing::error!(pool = %self.name, source = source.as_str(), "only etcd and the registry set members at run time");
        }
    }

    fn members_lock(&self) -> std::sync::MutexGuard<'_, Members> {
        // Every change is one assignment: a panic elsewhere cannot leave it half done.
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the whole membership and rebuilds the candidates. Low level: sources go
    /// through [`Pool::set_resolved`] and [`Pool::set_discovered`], which keep each other's
    /// members.
    pub fn set_upstreams(&self, upstreams: Vec<Arc<Upstream>>) {
        for upstream in &upstreams {
            upstream.state.health.join(&self.epoch);
        }
        self.upstreams.store(Arc::new(upstreams));
        self.refresh();
    }

    /// Rebuilds the candidate set after a health or membership change.
    pub fn refresh(&self) {
        let _rebuilding = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
        self.rebuild();
    }

    /// Builds and stores a new candidate set; the caller holds `rebuilding`.
    fn rebuild(&self) {
        // Read the epoch before the health flags: a transition racing with this rebuild
        // leaves the set stale, so the next request rebuilds again.
        let epoch = self.epoch.current();
        let upstreams = self.upstreams.load();
        let seed = self.seed.fetch_add(1, Ordering::Relaxed);
        let previous = self.candidates.load_full();
        let next = build_candidates(self.strategy, &upstreams, seed, Some(&previous), epoch);
        self.candidates.store(Arc::new(next));
    }
}

/// A seed for a new pool's `random`, `least_request` and key-less `consistent_hash` choices,
/// different in every process and pool (the OS's randomness through `RandomState`), so a
/// fleet of proxies, or one restarted, does not repeat the same sequence of picks.
fn fresh_seed(pool: &str) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(pool)
}

fn build_candidates(
    strategy: StrategyKind,
    upstreams: &[Arc<Upstream>],
    seed: u64,
    previous: Option<&Candidates>,
    epoch: u64,
) -> Candidates {
    let healthy: Vec<Arc<Upstream>> = upstreams
        .iter()
        .filter(|u| u.is_healthy())
        .cloned()
        .collect();
    let weights: Vec<u32> = healthy.iter().map(|u| u.weight).collect();
    let ids: Vec<&str> = healthy.iter().map(|u| &*u.id).collect();
    let balancer = Balancer::new(
        strategy,
        &weights,
        &ids,
        seed,
        previous.map(|c| &c.balancer),
    );
    Candidates {
        upstreams: healthy,
        balancer,
        epoch,
    }
}
