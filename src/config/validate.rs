//! Semantic checks of a parsed [`Config`], and the positioned errors `check` prints.
//!
//! serde already rejected syntax errors, unknown keys and mistyped values (first one only).
//! Here we check what needs the whole file: unique names, `route.pool` pointing at a pool,
//! weights and thresholds in range, route patterns that cannot collide, the admin token rule.
//! Every rule records an error and moves on, so one `check` run reports all of them, each
//! positioned by [`Locator`]. Host patterns are lowercased here, as routing is case-insensitive.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::error::{ConfigError, ConfigErrors};
use super::file::*;
use super::locate::{key_path, Locator, Pos, Seg};
use super::units::{check_upstream_addr, is_dns_name};
use crate::balance::StrategyKind;

/// Largest accepted `route.retries`: more only multiplies load on a failing pool.
pub const MAX_RETRIES: u32 = 10;
/// Smallest accepted `limits.max_header_bytes`: below this ordinary browsers get `431`.
pub const MIN_HEADER_BYTES: usize = 1024;

/// Runs every rule over `config` (read from `text`), lowercasing route hosts on the way.
pub(crate) fn validate(file: &Path, text: &str, config: &mut Config) -> Result<(), ConfigErrors> {
    let mut c = Checker {
        locator: Locator::new(text),
        errors: Vec::new(),
    };
    c.listeners(config);
    c.admin(config);
    c.routes(config);
    for (i, pool) in config.pools.iter().enumerate() {
        c.pool(i, pool);
    }
    c.unique_names("pools", "pool", config.pools.iter().map(|p| &p.name));
    if c.errors.is_empty() {
        return Ok(());
    }
    // File order reads best; the sort is stable, so one spot keeps its rule order.
    c.errors.sort_by_key(|(pos, _)| *pos);
    let errors = c.errors.into_iter();
    Err(ConfigErrors::from_vec(
        errors
            .map(|(pos, msg)| ConfigError::new(file, pos, msg))
            .collect(),
    ))
}

/// Collects errors with their positions.
struct Checker {
    locator: Locator,
    errors: Vec<(Pos, String)>,
}

// === impl Checker: helpers ===

impl Checker {
    fn error(&mut self, at: &[Seg<'_>], message: impl Into<String>) {
        self.errors.push((self.locator.find(at), message.into()));
    }

    fn positive(&mut self, at: &[Seg<'_>], field: &str, value: Duration) {
        if value.is_zero() {
            self.error(at, format!("{field} must be greater than 0, like 1s"));
        }
    }

    fn at_least_one(&mut self, at: &[Seg<'_>], field: &str, value: u64) {
        if value == 0 {
            self.error(at, format!("{field} must be at least 1"));
        }
    }

    /// Names are non-empty, unique in their section and safe in metric labels and admin URLs.
    fn unique_names<'n>(
        &mut self,
        section: &str,
        what: &str,
        names: impl Iterator<Item = &'n String>,
    ) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in names.enumerate() {
            let at = key_path![section, i, "name"];
            let valid = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
            if name.is_empty() {
                self.error(&at, format!("{what} name must not be empty"));
            } else if !name.chars().all(valid) {
                self.error(
                    &at,
                    format!("invalid {what} name {name:?}: use letters, digits, '-', '_' and '.'"),
                );
            } else if let Some(&first) = seen.get(name.as_str()) {
                let line = self.locator.find(&key_path![section, first, "name"]).line;
                self.error(
                    &at,
                    format!("duplicate {what} name {name:?}: already used at line {line}"),
                );
            } else {
                seen.insert(name, i);
            }
        }
    }
}

// === impl Checker: sections ===

impl Checker {
    fn listeners(&mut self, config: &Config) {
        if config.listeners.is_empty() {
            self.error(
                &key_path!["listeners"],
                "no listeners: define at least one, like `listeners: [{ name: public, bind: \"0.0.0.0:8080\" }]`",
            );
        }
        self.unique_names(
            "listeners",
            "listener",
            config.listeners.iter().map(|l| &l.name),
        );
        for (i, listener) in config.listeners.iter().enumerate() {
            let mut earlier = config.listeners[..i].iter();
            if let Some(other) = earlier.find(|o| binds_overlap(o.bind, listener.bind)) {
                let msg = format!(
                    "bind {} overlaps listener {:?} ({}); use another port",
                    listener.bind, other.name, other.bind
                );
                self.error(&key_path!["listeners", i, "bind"], msg);
            }
            let limits = &listener.limits;
            let at = |field| key_path!["listeners", i, "limits", field];
            self.at_least_one(
                &at("max_connections"),
                "max_connections",
                limits.max_connections as u64,
            );
            self.positive(
                &at("header_timeout"),
                "header_timeout",
                limits.header_timeout,
            );
            self.positive(&at("idle_timeout"), "idle_timeout", limits.idle_timeout);
            if limits.max_header_bytes < MIN_HEADER_BYTES {
                let msg = format!("max_header_bytes must be at least {MIN_HEADER_BYTES} (1KiB)");
                self.error(&at("max_header_bytes"), msg);
            }
            if let Some(tls) = &listener.tls {
                self.listener_tls(i, tls);
            }
        }
    }

    fn listener_tls(&mut self, i: usize, tls: &ListenerTls) {
        if tls.certificates.is_empty() {
            self.error(
                &key_path!["listeners", i, "tls", "certificates"],
                "tls needs at least one certificate, like `- { cert: cert.pem, key: key.pem }`",
            );
        }
        for (j, pair) in tls.certificates.iter().enumerate() {
            for (field, file) in [("cert", &pair.cert), ("key", &pair.key)] {
                if file.as_os_str().is_empty() {
                    let at = key_path!["listeners", i, "tls", "certificates", j, field];
                    self.error(&at, format!("{field} must be a file path"));
                }
            }
        }
    }

    fn admin(&mut self, config: &Config) {
        let Some(admin) = &config.admin else { return };
        match admin.token.as_deref() {
            Some("") => self.error(
                &key_path!["admin", "token"],
                "admin.token must not be empty",
            ),
            None if !admin.bind.ip().is_loopback() => self.error(
                &key_path!["admin", "bind"],
                format!(
                    "admin.bind {} is not loopback; set admin.token (mutating endpoints then \
                     require `Authorization: Bearer <token>`) or bind to 127.0.0.1",
                    admin.bind
                ),
            ),
            _ => {}
        }
        let taken = config
            .listeners
            .iter()
            .find(|l| binds_overlap(l.bind, admin.bind));
        if let Some(listener) = taken {
            let msg = format!(
                "admin.bind {} overlaps listener {:?} ({}); use another port",
                admin.bind, listener.name, listener.bind
            );
            self.error(&key_path!["admin", "bind"], msg);
        }
    }

    fn routes(&mut self, config: &mut Config) {
        self.unique_names("routes", "route", config.routes.iter().map(|r| &r.name));
        let mut pools: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
        // A duplicated pool name is its own error; list each defined name once here.
        let mut seen = std::collections::HashSet::new();
        pools.retain(|name| seen.insert(*name));
        let mut patterns: HashMap<(Option<String>, String), &str> = HashMap::new();
        for (i, route) in config.routes.iter_mut().enumerate() {
            if !pools.contains(&route.pool.as_str()) {
                let defined = match pools.is_empty() {
                    true => "no pools are defined".to_owned(),
                    false => format!("defined pools: {}", pools.join(", ")),
                };
                self.error(
                    &key_path!["routes", i, "pool"],
                    format!("unknown pool {:?}; {defined}", route.pool),
                );
            }
            let m = &mut route.matcher;
            if !m.path_prefix.starts_with('/') {
                let msg = format!("path_prefix {:?} must start with \"/\"", m.path_prefix);
                self.error(&key_path!["routes", i, "match", "path_prefix"], msg);
            }
            if let Some(host) = &mut m.host {
                host.make_ascii_lowercase();
                if let Err(msg) = check_host_pattern(host) {
                    self.error(&key_path!["routes", i, "match", "host"], msg);
                }
            }
            if route.retries > MAX_RETRIES {
                let msg = format!(
                    "retries {} is too many: at most {MAX_RETRIES}",
                    route.retries
                );
                self.error(&key_path!["routes", i, "retries"], msg);
            }
            self.positive(&key_path!["routes", i, "timeout"], "timeout", route.timeout);
            self.positive(
                &key_path!["routes", i, "tunnel_idle_timeout"],
                "tunnel_idle_timeout",
                route.tunnel_idle_timeout,
            );
            let key = (
                route.matcher.host.clone(),
                route.matcher.path_prefix.clone(),
            );
            if let Some(first) = first_insert(&mut patterns, key, &route.name) {
                let host = match &route.matcher.host {
                    Some(host) => format!("host {host:?}"),
                    None => "any host".to_owned(),
                };
                let msg = format!(
                    "routes {first:?} and {:?} both match {host} and path_prefix {:?}; \
                     change one of them",
                    route.name, route.matcher.path_prefix
                );
                self.error(&key_path!["routes", i, "match"], msg);
            }
        }
    }

    fn pool(&mut self, i: usize, pool: &PoolConfig) {
        if pool.hash_key.is_some() && pool.strategy != StrategyKind::ConsistentHash {
            let strategy = serde_json::to_value(pool.strategy).unwrap_or_default();
            let strategy = strategy.as_str().unwrap_or("?");
            let msg = format!(
                "hash_key is only used by strategy consistent_hash (this pool uses {strategy})"
            );
            self.error(&key_path!["pools", i, "hash_key"], msg);
        }
        self.positive(
            &key_path!["pools", i, "connect_timeout"],
            "connect_timeout",
            pool.connect_timeout,
        );
        self.positive(
            &key_path!["pools", i, "dns_refresh"],
            "dns_refresh",
            pool.dns_refresh,
        );
        if let Some(tls) = &pool.tls {
            if tls.server_name.as_deref() == Some("") {
                self.error(
                    &key_path!["pools", i, "tls", "server_name"],
                    "server_name must not be empty",
                );
            }
            if tls.ca.as_ref().is_some_and(|ca| ca.as_os_str().is_empty()) {
                self.error(
                    &key_path!["pools", i, "tls", "ca"],
                    "ca must be a file path",
                );
            }
        }
        self.upstreams(i, &pool.upstreams);
        if let Some(discovery) = &pool.discovery {
            self.discovery(i, discovery);
        }
        if let Some(hc) = &pool.health_check {
            self.health_check(i, hc);
        }
        if let Some(outlier) = &pool.outlier {
            let at = |field| key_path!["pools", i, "outlier", field];
            let failures = outlier.consecutive_failures.into();
            self.at_least_one(
                &at("consecutive_failures"),
                "consecutive_failures",
                failures,
            );
            self.positive(&at("ejection_time"), "ejection_time", outlier.ejection_time);
        }
    }

    fn upstreams(&mut self, i: usize, upstreams: &[UpstreamConfig]) {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (j, upstream) in upstreams.iter().enumerate() {
            let at = |field| key_path!["pools", i, "upstreams", j, field];
            if let Err(msg) = check_upstream_addr(&upstream.addr) {
                self.error(&at("addr"), msg);
            } else if let Some(first) = first_insert(&mut seen, same_addr(&upstream.addr), j) {
                let line = self
                    .locator
                    .find(&key_path!["pools", i, "upstreams", first, "addr"])
                    .line;
                let msg = format!(
                    "duplicate upstream {:?}: already listed at line {line}",
                    upstream.addr
                );
                self.error(&at("addr"), msg);
            }
            if !(1..=MAX_WEIGHT).contains(&upstream.weight) {
                let msg = format!(
                    "weight {} is out of range: expected an integer from 1 to {MAX_WEIGHT}",
                    upstream.weight
                );
                self.error(&at("weight"), msg);
            }
        }
    }

    fn discovery(&mut self, i: usize, discovery: &Discovery) {
        let Some(etcd) = &discovery.etcd else {
            let msg = "discovery needs a source, like `etcd: { endpoints: [\"http://127.0.0.1:2379\"], prefix: \"/services/api/\" }`";
            return self.error(&key_path!["pools", i, "discovery"], msg);
        };
        if etcd.endpoints.is_empty() {
            let msg = "etcd.endpoints needs at least one URL, like \"http://127.0.0.1:2379\"";
            self.error(
                &key_path!["pools", i, "discovery", "etcd", "endpoints"],
                msg,
            );
        }
        for (j, endpoint) in etcd.endpoints.iter().enumerate() {
            // The etcd client speaks plaintext HTTP to the JSON gateway; TLS is not built.
            if !crate::discovery::etcd::gateway::is_endpoint(endpoint) {
                let msg = format!("invalid etcd endpoint {endpoint:?}: expected an http://host:port URL, like \"http://127.0.0.1:2379\" (https is not supported)");
                self.error(
                    &key_path!["pools", i, "discovery", "etcd", "endpoints", j],
                    msg,
                );
            }
        }
        if etcd.prefix.is_empty() {
            let msg = "etcd.prefix must not be empty, like \"/services/api/\"";
            self.error(&key_path!["pools", i, "discovery", "etcd", "prefix"], msg);
        }
    }

    fn health_check(&mut self, i: usize, hc: &HealthCheckConfig) {
        let at = |field| key_path!["pools", i, "health_check", field];
        if !hc.path.starts_with('/') {
            self.error(
                &at("path"),
                format!("health_check.path {:?} must start with \"/\"", hc.path),
            );
        }
        self.positive(&at("interval"), "interval", hc.interval);
        self.positive(&at("timeout"), "timeout", hc.timeout);
        self.at_least_one(
            &at("healthy_threshold"),
            "healthy_threshold",
            hc.healthy_threshold.into(),
        );
        let unhealthy = hc.unhealthy_threshold.into();
        self.at_least_one(&at("unhealthy_threshold"), "unhealthy_threshold", unhealthy);
    }
}

/// An upstream address as a key that two spellings of one address share: an IP address
/// and port as the socket address they parse to (`[0:0::1]:80` is `[::1]:80`, port `080`
/// is `80`), a hostname without regard to case.
fn same_addr(addr: &str) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(socket) => socket.to_string(),
        Err(_) => match addr.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) => format!("{}:{port}", host.to_ascii_lowercase()),
                Err(_) => addr.to_ascii_lowercase(),
            },
            None => addr.to_ascii_lowercase(),
        },
    }
}

/// `api.example.com` or `*.example.com` (already lowercased), without a port.
fn check_host_pattern(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if host.is_empty() {
        Err("host must not be empty; leave it out to match any host".to_owned())
    } else if name.contains('*') {
        Err(format!("invalid host {host:?}: \"*\" is only allowed as the first label, like \"*.example.com\""))
    } else if name.contains(':') {
        Err(format!(
            "invalid host {host:?}: hosts are matched without the port; remove it"
        ))
    } else if !is_dns_name(name) {
        Err(format!("invalid host {host:?}: expected a DNS name, like \"api.example.com\" or \"*.example.com\""))
    } else {
        Ok(())
    }
}

/// Whether two binds would fight over a port: the same port, the same address family, and
/// the same IP or one of them the wildcard. Port 0 picks a fresh port, so it never collides.
fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Inserts `value` unless `key` is taken; returns the value of the first holder.
fn first_insert<K: Hash + Eq, V: Copy>(map: &mut HashMap<K, V>, key: K, value: V) -> Option<V> {
    match map.entry(key) {
        Entry::Occupied(first) => Some(*first.get()),
        Entry::Vacant(slot) => {
            slot.insert(value);
            None
        }
    }
}
