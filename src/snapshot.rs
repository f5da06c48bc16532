//! The running configuration as one immutable [`Snapshot`] behind one `ArcSwap`.
//!
//! A snapshot holds everything a request needs: the router, the routes, the pools with their
//! balancers and the access logger. A request loads it once ([`Shared::snapshot`]) and keeps
//! that `Arc` to its end, so a reload never tears a request (arc-swap's "consistent snapshots"
//! pattern). Building a snapshot is all-or-nothing: [`Snapshot::build`] either returns a
//! complete snapshot or an error, and only then is it stored. Upstreams that exist in the
//! previous snapshot (same pool, address and source) are reused, or re-weighed sharing their
//! state, so their health, in-flight counts and pooled connections carry over. Hostname
//! upstreams are resolved here (blocking: builds run on the blocking pool); on a reload, a
//! hostname the running pool already had keeps its last good addresses when the resolver
//! fails, and `discovery` re-resolves it from then on. [`Shared::store`] adds the discovered (etcd) and registered instances to the
//! new pools before the swap. Reload triggers live in `reload`; this module only builds and
//! swaps.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::access_log::Logger;
use crate::config::{Config, Limits, ListenerConfig, RouteConfig};
use crate::listener::tls::{TlsError, TlsSettings};
use crate::proxy::headers::RequestIds;
use crate::router::Router;
use crate::upstream::health::Checkers;
use crate::upstream::{Listed, Pool, Source, Upstream};

/// Why a valid config could not be turned into a running snapshot.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An upstream hostname did not resolve (and the running pool had no addresses for it).
    #[error("pool {pool:?}: cannot resolve upstream {addr:?}")]
    Resolve {
        /// The pool naming the upstream.
        pool: String,
        /// The address as written.
        addr: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// The access log file could not be opened.
    #[error("cannot open the access log")]
    AccessLog(#[source] std::io::Error),
    /// A pool's upstream TLS settings cannot be used (unreadable CA bundle, bad name).
    #[error("pool {pool:?}: upstream TLS")]
    UpstreamTls {
        /// The pool's name.
        pool: String,
        /// What is wrong.
        #[source]
        source: crate::upstream::TlsError,
    },
    /// A TLS listener's certificate or key file is unusable.
    #[error("listener {listener:?}: TLS file {}", path.display())]
    Tls {
        /// The listener's name.
        listener: String,
        /// The entry of its `certificates` at fault; `None` for the whole section.
        entry: Option<usize>,
        /// The certificate or key file at fault.
        path: PathBuf,
        /// What is wrong with it (boxed: the other variants are small).
        #[source]
        reason: Box<TlsError>,
    },
}

/// One route, resolved against its pool.
#[derive(Debug)]
pub struct Route {
    /// The route's name (metrics and log label).
    pub name: Arc<str>,
    /// Index of its pool in [`Snapshot::pools`].
    pub pool: usize,
    /// The matched `path_prefix`.
    pub path_prefix: Box<str>,
    /// Strip `path_prefix` before forwarding.
    pub strip_prefix: bool,
    /// Deadline for the upstream's response head.
    pub timeout: Duration,
    /// Extra attempts on other upstreams (SPEC section 5).
    pub retries: u32,
    /// Request body limit in bytes.
    pub max_body: Option<u64>,
    /// Its request series (`switchyard_requests_total`, `..._duration_seconds`).
    pub metrics: crate::metrics::RouteMetrics,
}

/// A traffic listener's settings as of one snapshot; a connection reads them once, at accept,
/// so a reload changes the limits (and, with TLS, the certificates) of new connections only.
#[derive(Debug)]
pub struct ListenerSettings {
    /// The listener's unique name (metrics label).
    pub name: Arc<str>,
    /// The configured bind address.
    pub bind: SocketAddr,
    /// Per-connection limits.
    pub limits: Limits,
    /// TLS termination (certificates chosen by SNI); `None` for plaintext.
    pub tls: Option<TlsSettings>,
}

impl ListenerSettings {
    /// The settings of the listener `cfg` describes.
    pub fn build(cfg: &ListenerConfig) -> Result<ListenerSettings, BuildError> {
        let tls = cfg
            .tls
            .as_ref()
            .map(TlsSettings::load)
            .transpose()
            .map_err(|fault| BuildError::tls(&cfg.name, fault))?;
        Ok(ListenerSettings {
            name: Arc::from(cfg.name.as_str()),
            bind: cfg.bind,
            limits: cfg.limits.clone(),
            tls,
        })
    }
}

/// Everything a request reads, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one per successful reload; 1 for the first config.
    pub generation: u64,
    /// The validated config this snapshot was built from.
    pub config: Arc<Config>,
    /// Host/path lookup into `routes`.
    pub router: Router,
    /// Routes in file order.
    pub routes: Vec<Route>,
    /// Pools in file order.
    pub pools: Vec<Arc<Pool>>,
    /// Access log writer; `None` when `access_log: off`.
    pub access_log: Option<Arc<Logger>>,
    /// Traffic listeners in file order.
    pub listeners: Vec<Arc<ListenerSettings>>,
}

// === impl Snapshot ===

impl Snapshot {
    /// Builds a complete snapshot from `config`, carrying state over from `previous`.
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, BuildError> {
        let generation = previous.map_or(1, |p| p.generation + 1);
        let mut pools = Vec::with_capacity(config.pools.len());
        let mut pool_index = HashMap::with_capacity(config.pools.len());
        for cfg in &config.pools {
            let old = previous.and_then(|p| p.pool(&cfg.name));
            // Pooled connections speak the old protocol over the old TLS settings: upstreams
            // (and their connections) carry over only when those stay the same.
            let same_transport = previous
                .and_then(|p| p.config.pools.iter().find(|c| c.name == cfg.name))
                .is_some_and(|c| c.same_transport(cfg));
            let reuse = |addr: SocketAddr, weight: u32, source: Source| {
                // A new weight alone keeps the instance's state (`Upstream::reweighed`).
                let reused = old.filter(|_| same_transport).and_then(|p| {
                    p.upstreams()
                        .iter()
                        .find(|u| u.addr == addr && u.source == source)
                        .map(|u| Upstream::reweighed(u, weight))
                });
                reused.unwrap_or_else(|| Arc::new(Upstream::new(addr, weight, source)))
            };
            let mut listed = Vec::with_capacity(cfg.upstreams.len());
            for up in &cfg.upstreams {
                if let Ok(addr) = up.addr.parse::<SocketAddr>() {
                    listed.push(Listed::Addr(reuse(addr, up.weight, Source::Static)));
                    continue;
                }
                let found = match resolve(&cfg.name, &up.addr) {
                    Ok(found) => found,
                    // A hostname the running pool already resolved keeps its last good
                    // addresses: a resolver hiccup during a reload must not empty a pool.
                    Err(error) => {
                        match previous.and_then(|p| last_resolved(p, &cfg.name, &up.addr)) {
                            Some(last) => {
                                tracing::warn!(pool = %cfg.name, addr = %up.addr, error = %crate::error_chain(&error), "cannot resolve upstream; keeping its last good addresses");
                                last.iter().map(|u| u.addr).collect()
                            }
                            None => return Err(error),
                        }
                    }
                };
                listed.push(Listed::Host {
                    addr: Arc::from(up.addr.as_str()),
                    weight: up.weight,
                    upstreams: found
                        .into_iter()
                        .map(|addr| reuse(addr, up.weight, Source::Dns))
                        .collect(),
                });
            }
            pool_index.insert(cfg.name.clone(), pools.len());
            let pool = Pool::from_listed(cfg, listed, old.map(|p| &**p)).map_err(|source| {
                BuildError::UpstreamTls {
                    pool: cfg.name.clone(),
                    source,
                }
            })?;
            pools.push(Arc::new(pool));
        }
        let routes: Vec<Route> = config
            .routes
            .iter()
            .map(|r| route(r, &pool_index, &pools))
            .collect();
        let router = Router::new(
            config
                .routes
                .iter()
                .map(|r| (r.matcher.host.as_deref(), r.matcher.path_prefix.as_str())),
        );
        let listeners = config
            .listeners
            .iter()
            .map(|l| ListenerSettings::build(l).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let access_log = match previous {
            // The same log keeps its writer, unless its file was rotated away (renamed or
            // removed): then the path is opened again, for `logrotate`'s `kill -HUP`. If
            // that fails, the old file stays in use (as NGINX does): the rest of the
            // reload is not refused for it.
            Some(p) if p.config.access_log == config.access_log => match &p.access_log {
                Some(old) if !old.is_current() => match Logger::start(&config.access_log) {
                    Ok(reopened) => reopened,
                    Err(error) => {
                        tracing::warn!(%error, "cannot reopen the rotated access log; writing to the old file");
                        p.access_log.clone()
                    }
                },
                _ => p.access_log.clone(),
            },
            _ => Logger::start(&config.access_log).map_err(BuildError::AccessLog)?,
        };
        Ok(Snapshot {
            generation,
            config: Arc::new(config),
            router,
            routes,
            pools,
            access_log,
            listeners,
        })
    }

    /// The settings of the listener named `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerSettings>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &*p.name == name)
    }
}

/// The addresses the hostname entry `addr` of pool `pool` resolved to last in `previous`,
/// whatever its weight there (a reload may re-weigh it).
fn last_resolved(previous: &Snapshot, pool: &str, addr: &str) -> Option<Vec<Arc<Upstream>>> {
    let cfg = previous.config.pools.iter().find(|c| c.name == pool)?;
    let weight = cfg.upstreams.iter().find(|u| u.addr == addr)?.weight;
    previous.pool(pool)?.resolved(addr, weight)
}

fn route(r: &RouteConfig, pools: &HashMap<String, usize>, built: &[Arc<Pool>]) -> Route {
    let name: Arc<str> = Arc::from(r.name.as_str());
    // Validation guarantees every route names an existing pool.
    let pool = pools.get(&r.pool).copied().unwrap_or(0);
    let pool_name = built
        .get(pool)
        .map_or_else(|| Arc::from(""), |p| p.name.clone());
    Route {
        metrics: crate::metrics::RouteMetrics::new(name.clone(), pool_name),
        name,
        pool,
        path_prefix: r.matcher.path_prefix.clone().into_boxed_str(),
        strip_prefix: r.strip_prefix,
        timeout: r.timeout,
        retries: r.retries,
        max_body: r.max_body,
    }
}

/// Every address the hostname upstream `addr` resolves to, sorted (blocking: `getaddrinfo`).
pub(crate) fn resolve(pool: &str, addr: &str) -> Result<Vec<SocketAddr>, BuildError> {
    let err = |source| BuildError::Resolve {
        pool: pool.to_owned(),
        addr: addr.to_owned(),
        source,
    };
    let mut found: Vec<SocketAddr> = addr.to_socket_addrs().map_err(err)?.collect();
    found.sort();
    found.dedup();
    if found.is_empty() {
        return Err(err(std::io::Error::other("no addresses")));
    }
    Ok(found)
}

/// The process-wide handle on the current snapshot.
#[derive(Debug)]
pub struct Shared {
    current: ArcSwap<Snapshot>,
    /// Wakes the tasks waiting in [`Shared::swapped`] after each store.
    swapped: Notify,
    /// Generator of `X-Request-Id` values.
    pub request_ids: RequestIds,
    /// Active health-check tasks; call `checkers.sync(&snapshot)` after every swap or
    /// membership change.
    pub checkers: Checkers,
    /// Instances registered at runtime through the admin API; re-applied on every store.
    pub registry: crate::registry::Registry,
    /// DNS and etcd discovery tasks and the last known etcd instances; re-applied on every
    /// store.
    pub discovery: crate::discovery::Discovery,
}

// === impl Shared ===

impl Shared {
    /// Starts with `snapshot` as the running config.
    pub fn new(snapshot: Snapshot) -> Shared {
        Shared {
            current: ArcSwap::from_pointee(snapshot),
            swapped: Notify::new(),
            request_ids: RequestIds::new(),
            checkers: Checkers::new(),
            registry: crate::registry::Registry::new(),
            discovery: crate::discovery::Discovery::new(),
        }
    }

    /// The running snapshot; load once per request and keep it to the end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Whether `snapshot` is still the running config.
    pub fn is_current(&self, snapshot: &Arc<Snapshot>) -> bool {
        Arc::ptr_eq(&self.current.load(), snapshot)
    }

    /// Makes `snapshot` the running config.
    pub fn store(&self, snapshot: impl Into<Arc<Snapshot>>) {
        let snapshot = snapshot.into();
        // Pools whose protocol or upstream TLS changed: their discovered and registered
        // instances start afresh, as `build` does for the file's (their pooled connections
        // speak the old transport).
        let previous = self.current.load();
        let moved: Vec<&str> = snapshot
            .config
            .pools
            .iter()
            .filter(|p| {
                let old = previous.config.pools.iter().find(|o| o.name == p.name);
                old.is_some_and(|o| !o.same_transport(p))
            })
            .map(|p| p.name.as_str())
            .collect();
        // Discovered and registered instances join the new pools before anyone can see them
        // (locks in this order: discovery, registry, then each pool's membership).
        self.discovery.apply(&snapshot, &moved, || {
            self.registry
                .apply(&snapshot, &moved, || self.current.store(snapshot.clone()));
        });
        self.swapped.notify_waiters();
    }

    /// Resolves at the next [`Shared::store`] after this call (even before it is polled).
    pub fn swapped(&self) -> Notified<'_> {
        self.swapped.notified()
    }
}
