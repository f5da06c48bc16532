//! The shape of `proxy.yaml` (SPEC section 2) as serde types, with every default.
//!
//! These structs are what the file says, after parsing: unknown keys are rejected
//! (`deny_unknown_fields`) and values are typed (durations, sizes, addresses), but cross-field
//! rules (names unique, `route.pool` defined, weights in range, ...) are `validate.rs`'s job.
//! Everything also serializes, so the admin API can dump the running config as JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{self, duration};
use crate::balance::StrategyKind;

/// The whole validated config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Worker threads.
    #[serde(default)]
    pub workers: Workers,
    /// Where clients connect; at least one.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// The admin API; absent = no admin listener.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Where access log lines go.
    #[serde(default)]
    pub access_log: AccessLog,
    /// Host/path routes to pools.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Upstream pools.
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
}

/// Worker threads: `auto` (one per core) or a positive count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workers {
    /// One worker per core.
    #[default]
    Auto,
    /// Exactly this many workers, 1..=[`MAX_WORKERS`].
    Count(usize),
}

/// Most worker threads `workers` (or `--workers`) may ask for: far past any core count, and
/// low enough that the runtime can make them (a number in the billions aborted the start).
pub const MAX_WORKERS: usize = 1024;

/// Access log destination: `stdout`, `off` or a file path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLog {
    /// One JSON line per request on stdout.
    #[default]
    Stdout,
    /// No access log.
    Off,
    /// Appended to this file (resolved against the config file's directory).
    File(PathBuf),
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name, used in metric labels.
    pub name: String,
    /// Address to bind; port 0 picks a free port.
    #[serde(deserialize_with = "units::bind")]
    pub bind: SocketAddr,
    /// Connection limits (SPEC section 10).
    #[serde(default)]
    pub limits: Limits,
    /// TLS termination; absent = plaintext.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
}

/// Default `limits.max_connections`: concurrent connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default `limits.header_timeout`: time to receive the whole request head (slowloris).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `limits.idle_timeout`: keep-alive idle time.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `limits.max_header_bytes`: request head size, `431` past it.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Per-listener limits; every field is optional in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent connections; default [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Request head deadline; default [`DEFAULT_HEADER_TIMEOUT`].
    #[serde(with = "duration")]
    pub header_timeout: Duration,
    /// Keep-alive idle time; default [`DEFAULT_IDLE_TIMEOUT`].
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Request head size in bytes; default [`DEFAULT_MAX_HEADER_BYTES`].
    #[serde(deserialize_with = "units::size")]
    pub max_header_bytes: usize,
}

/// TLS termination on a listener; SNI picks among `certificates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate/key pairs; non-empty. Files are read by the TLS module, not here.
    pub certificates: Vec<CertificatePair>,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatePair {
    /// PEM chain, resolved against the config file's directory.
    pub cert: PathBuf,
    /// PEM private key, resolved against the config file's directory.
    pub key: PathBuf,
}

/// The admin API listener (SPEC section 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to bind; a non-loopback address requires `token`.
    #[serde(deserialize_with = "units::bind")]
    pub bind: SocketAddr,
    /// Bearer token required by mutating endpoints.
    #[serde(default)]
    pub token: Option<String>,
}

/// Default `route.timeout`: whole-request deadline up to the response headers.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `route.retries`.
pub const DEFAULT_RETRIES: u32 = 1;
/// Default `route.tunnel_idle_timeout`: an upgraded connection (WebSocket) with no bytes
/// either way for this long is closed (NGINX's `proxy_read_timeout` plays this role there).
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `match.path_prefix`: every path.
pub const DEFAULT_PATH_PREFIX: &str = "/";

/// A route: which requests go to which pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, used in metric labels.
    pub name: String,
    /// Host and path to match.
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    /// Name of the pool that serves it.
    pub pool: String,
    /// Remove `path_prefix` from the path sent upstream.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Deadline up to the response headers; default [`DEFAULT_ROUTE_TIMEOUT`].
    #[serde(default = "default_route_timeout", with = "duration")]
    pub timeout: Duration,
    /// Retries on another upstream; default [`DEFAULT_RETRIES`].
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Request body limit in bytes (`413` past it); absent = unlimited.
    #[serde(default, deserialize_with = "units::opt_size")]
    pub max_body: Option<u64>,
    /// Idle time after which an upgraded tunnel is closed; default
    /// [`DEFAULT_TUNNEL_IDLE_TIMEOUT`].
    #[serde(default = "default_tunnel_idle_timeout", with = "duration")]
    pub tunnel_idle_timeout: Duration,
}

/// The match part of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// `api.example.com` or `*.example.com`, lowercased; absent = any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Plain string prefix of the path; default [`DEFAULT_PATH_PREFIX`].
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
}

/// Default `pool.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `pool.dns_refresh`: how often hostname upstreams are re-resolved.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);

/// A pool of upstreams and how to balance over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Unique name, referenced by `route.pool`.
    pub name: String,
    /// Balancing strategy; default round robin.
    #[serde(default)]
    pub strategy: StrategyKind,
    /// Protocol spoken to upstreams.
    #[serde(default)]
    pub protocol: Protocol,
    /// Upstream TLS; absent = plaintext.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// TCP connect deadline; default [`DEFAULT_CONNECT_TIMEOUT`].
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Re-resolve period of hostname upstreams; default [`DEFAULT_DNS_REFRESH`].
    #[serde(default = "default_dns_refresh", with = "duration")]
    pub dns_refresh: Duration,
    /// What `consistent_hash` hashes; absent = the client IP.
    #[serde(default)]
    pub hash_key: Option<HashKey>,
    /// Static upstreams; may be empty when discovery or the registry fills the pool.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Dynamic membership source.
    #[serde(default)]
    pub discovery: Option<Discovery>,
    /// Active health checks; absent = none.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive checks on live traffic; absent = none.
    #[serde(default)]
    pub outlier: Option<OutlierConfig>,
}

/// Protocol to upstreams: `http1` or `h2` (h2c, or h2 over TLS; needed for gRPC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2.
    H2,
}

/// TLS to upstreams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// SNI and verified name; absent = the upstream's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM CA bundle; absent = the system roots. Resolved against the config file's directory.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// What `consistent_hash` hashes: `header:NAME`, `cookie:NAME` or `client_ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header's value.
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
}

/// Default `upstream.weight`.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Largest accepted `upstream.weight`.
pub const MAX_WEIGHT: u32 = 10_000;

/// One static upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port`, `1.2.3.4:port` or `[v6]:port`; a hostname expands to every resolved address.
    pub addr: String,
    /// Relative weight, 1..=[`MAX_WEIGHT`]; default [`DEFAULT_WEIGHT`].
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// Dynamic membership sources of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// Instances under an etcd key prefix.
    #[serde(default)]
    pub etcd: Option<EtcdDiscovery>,
}

/// etcd discovery: every key under `prefix` is one instance, its value JSON `{addr, weight}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdDiscovery {
    /// etcd URLs, like `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix, like `/services/api/`.
    pub prefix: String,
}

/// Default `health_check.path`.
pub const DEFAULT_HEALTH_PATH: &str = "/healthz";
/// Default `health_check.interval`.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Default `health_check.timeout`.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `health_check.healthy_threshold`: consecutive passes to become healthy.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Default `health_check.unhealthy_threshold`: consecutive failures to become unhealthy.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Default `health_check.expect_status`.
pub const DEFAULT_EXPECT_STATUS: &str = "200-399";

/// Active health checks: `GET path` every `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Path probed; default [`DEFAULT_HEALTH_PATH`].
    pub path: String,
    /// Probe period; default [`DEFAULT_HEALTH_INTERVAL`].
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Probe deadline; default [`DEFAULT_HEALTH_TIMEOUT`].
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Passes to become healthy; default [`DEFAULT_HEALTHY_THRESHOLD`].
    pub healthy_threshold: u32,
    /// Failures to become unhealthy; default [`DEFAULT_UNHEALTHY_THRESHOLD`].
    pub unhealthy_threshold: u32,
    /// Statuses that pass; default [`DEFAULT_EXPECT_STATUS`].
    pub expect_status: StatusRanges,
}

/// Inclusive status code ranges: `200-399`, `200,204`, `200-299,304`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRanges(pub Vec<(u16, u16)>);

/// Default `outlier.consecutive_failures`.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Default `outlier.ejection_time`.
pub const DEFAULT_EJECTION_TIME: Duration = Duration::from_secs(30);

/// Passive checks: eject an upstream after consecutive failures on live traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Failures before ejection; default [`DEFAULT_CONSECUTIVE_FAILURES`].
    pub consecutive_failures: u32,
    /// How long an ejection lasts; default [`DEFAULT_EJECTION_TIME`].
    #[serde(with = "duration")]
    pub ejection_time: Duration,
}

// serde's `default = "..."` wants functions.
fn default_route_timeout() -> Duration {
    DEFAULT_ROUTE_TIMEOUT
}
fn default_retries() -> u32 {
    DEFAULT_RETRIES
}
fn default_tunnel_idle_timeout() -> Duration {
    DEFAULT_TUNNEL_IDLE_TIMEOUT
}
fn default_path_prefix() -> String {
    DEFAULT_PATH_PREFIX.to_owned()
}
fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_dns_refresh() -> Duration {
    DEFAULT_DNS_REFRESH
}
fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

// === impl PoolConfig ===

impl PoolConfig {
    /// Whether `other` reaches its upstreams the same way (protocol and TLS settings): what
    /// pooled connections speak, so what decides whether upstreams keep them over a reload.
    pub fn same_transport(&self, other: &PoolConfig) -> bool {
        self.protocol == other.protocol && self.tls == other.tls
    }
}

// === impl Default ===

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

impl Default for RouteMatch {
    fn default() -> Self {
        RouteMatch {
            host: None,
            path_prefix: default_path_prefix(),
        }
    }
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: DEFAULT_HEALTH_PATH.to_owned(),
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
            expect_status: StatusRanges(vec![(200, 399)]),
        }
    }
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            ejection_time: DEFAULT_EJECTION_TIME,
        }
    }
}
