//! The JSON the admin API answers: `/pools`, `/config`, registry entries, errors.
//!
//! Views are plain `Serialize` structs built from the running snapshot at request time.
//! [`upstream_view`] is the one place that reads an upstream's health state, so the health
//! checker only has to change it.

use serde::Serialize;

use super::LastReload;
use crate::config::Config;
use crate::snapshot::Snapshot;
use crate::upstream::{Pool, Upstream};

/// `GET /pools`.
#[derive(Debug, Serialize)]
pub struct PoolsView {
    /// Pools in file order.
    pub pools: Vec<PoolView>,
}

/// One pool and its upstreams.
#[derive(Debug, Serialize)]
pub struct PoolView {
    /// The pool's name.
    pub name: String,
    /// Its balancing strategy, as in the config file.
    pub strategy: crate::balance::StrategyKind,
    /// Upstreams that may take traffic now.
    pub healthy: usize,
    /// Every upstream: static, resolved and registered.
    pub upstreams: Vec<UpstreamView>,
}

/// One upstream of a pool.
#[derive(Debug, Serialize)]
pub struct UpstreamView {
    /// `IP:port`.
    pub addr: String,
    /// Balancing weight.
    pub weight: u32,
    /// The active health checks' verdict (true when the pool has no checks).
    pub healthy: bool,
    /// Whether passive checks (outlier detection) ejected it for now.
    pub ejected: bool,
    /// Requests in progress on it.
    pub in_flight: u32,
    /// `static`, `registry`, `dns` or `etcd`.
    pub source: &'static str,
    /// Failed active checks in a row.
    pub consecutive_failures: u32,
    /// The latest active check; `null` before the first one.
    pub last_check: Option<LastCheckView>,
    /// When `healthy` or `ejected` last changed (RFC 3339); `null` if never.
    pub last_change: Option<String>,
    /// Attempts sent to it so far.
    pub requests: u64,
    /// Attempts that got no response or a 5xx.
    pub errors: u64,
    /// Keep-alive connections waiting in its pool.
    pub idle_connections: usize,
}

/// The latest active check of an upstream.
#[derive(Debug, Serialize)]
pub struct LastCheckView {
    /// Whether it passed.
    pub ok: bool,
    /// What it saw: `status 200`, `timeout`, `connect refused`, ...
    pub reason: String,
    /// When it finished (RFC 3339).
    pub at: String,
}

/// What the admin API shows of one upstream.
pub fn upstream_view(u: &Upstream) -> UpstreamView {
    let health = u.health();
    UpstreamView {
        addr: u.id.to_string(),
        weight: u.weight,
        healthy: health.healthy,
        ejected: health.ejected,
        in_flight: u.in_flight(),
        source: u.source.as_str(),
        consecutive_failures: health.consecutive_failures,
        last_check: health.last_check.map(|c| LastCheckView {
            ok: c.ok,
            reason: c.reason.to_string(),
            at: humantime::format_rfc3339_millis(c.at).to_string(),
        }),
        last_change: health
            .last_change
            .map(|t| humantime::format_rfc3339_millis(t).to_string()),
        requests: u.metrics().requests(),
        errors: u.metrics().errors(),
        idle_connections: u.idle_connections(),
    }
}

fn pool_view(pool: &Pool) -> PoolView {
    PoolView {
        name: pool.name.to_string(),
        strategy: pool.strategy,
        healthy: pool.candidates().upstreams.len(),
        upstreams: pool.upstreams().iter().map(|u| upstream_view(u)).collect(),
    }
}

/// `GET /pools` of `snapshot`.
pub fn pools(snapshot: &Snapshot) -> PoolsView {
    PoolsView {
        pools: snapshot.pools.iter().map(|p| pool_view(p)).collect(),
    }
}

/// `GET /config`.
#[derive(Debug, Serialize)]
pub struct ConfigView<'a> {
    /// The running snapshot's generation.
    pub generation: u64,
    /// The last reload's outcome.
    pub last_reload: ReloadView,
    /// The running config, with `admin.token` redacted.
    #[serde(serialize_with = "redacted")]
    pub config: &'a Config,
}

/// What `/config` shows instead of a configured `admin.token`.
pub const REDACTED: &str = "<redacted>";

/// Serializes `config` with its admin token replaced by [`REDACTED`]: `GET /config` needs no
/// token, so showing it would hand it to anyone who can reach the admin port.
fn redacted<S: serde::Serializer>(config: &&Config, serializer: S) -> Result<S::Ok, S::Error> {
    let mut value = serde_json::to_value(config).map_err(serde::ser::Error::custom)?;
    if let Some(token) = value.pointer_mut("/admin/token").filter(|t| !t.is_null()) {
        *token = serde_json::Value::from(REDACTED);
    }
    value.serialize(serializer)
}

/// The last reload as `/config` shows it.
#[derive(Debug, Serialize)]
pub struct ReloadView {
    /// Whether it succeeded.
    pub ok: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// When it happened (RFC 3339).
    pub at: String,
}

/// `GET /config` of `snapshot`.
pub fn config<'a>(snapshot: &'a Snapshot, last: &LastReload) -> ConfigView<'a> {
    ConfigView {
        generation: snapshot.generation,
        last_reload: ReloadView {
            ok: last.ok,
            error: last.error.clone(),
            at: humantime::format_rfc3339_millis(last.at).to_string(),
        },
        config: &snapshot.config,
    }
}

/// `{"error": "..."}`.
#[derive(Debug, Serialize)]
pub struct ErrorView<'a> {
    /// What was wrong.
    pub error: &'a str,
}
