//! etcd discovery: every key under a prefix is one instance of the pool.
//!
//! A key's value is JSON `{"addr": "10.0.0.13:8080", "weight": 1}`: `addr` an IP socket
//! address, `weight` optional (default 1, 1..=10000); other fields are ignored. A value that
//! is not that (not JSON, a bad address, a weight out of range) is skipped with a warning
//! naming the key; the same address under two keys is one instance (the first key's).
//!
//! One `Watcher` task per pool with `discovery.etcd`, over the [`gateway`] client: list the
//! prefix, publish the instances, then watch from the listing's revision + 1 and publish
//! after every batch of changes. When a call or the watch fails (etcd down, compaction), it
//! keeps the last known instances, waits ([`MIN_BACKOFF`] doubling up to [`MAX_BACKOFF`],
//! back to the minimum once a watch is confirmed), then lists and watches again, trying
//! every endpoint in turn. Instances that stay keep their `Arc<Upstream>`.

pub mod gateway;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::{EtcdDiscovery, DEFAULT_WEIGHT, MAX_WEIGHT};
use crate::snapshot::Shared;
use crate::upstream::{Source, Upstream};
pub use gateway::{EtcdError, Event, Gateway, KeyValue};

/// First wait after a failure.
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between attempts while etcd stays unreachable.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a key's value is not an instance.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Not a JSON object with a string `addr` and an integer `weight`.
    #[error("expected JSON like {{\"addr\": \"10.0.0.13:8080\", \"weight\": 1}}")]
    Json(#[source] serde_json::Error),
    /// `addr` is not an IP socket address.
    #[error("addr {0:?} is not an IP address with a port, like \"10.0.0.13:8080\"")]
    Addr(String),
    /// `weight` is outside 1..=10000.
    #[error("weight {0} is out of range: expected an integer from 1 to {MAX_WEIGHT}")]
    Weight(u32),
}

#[derive(Debug, Deserialize)]
struct Value {
    addr: String,
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

/// The instance a key's value describes: its address and weight.
pub fn parse_instance(value: &[u8]) -> Result<(SocketAddr, u32), InstanceError> {
    let value: Value = serde_json::from_slice(value).map_err(InstanceError::Json)?;
    let addr = value
        .addr
        .parse()
        .map_err(|_| InstanceError::Addr(value.addr.clone()))?;
    if !(1..=MAX_WEIGHT).contains(&value.weight) {
        return Err(InstanceError::Weight(value.weight));
    }
    Ok((addr, value.weight))
}

/// The etcd discovery task of one pool.
#[derive(Debug)]
pub(super) struct Watcher {
    shared: Weak<Shared>,
    pool: Arc<str>,
    config: EtcdDiscovery,
    /// The pool's protocol and TLS settings this task was started for.
    speaks: super::Transport,
    gateway: Gateway,
    /// The valid instances by key, as last read.
    instances: BTreeMap<String, (SocketAddr, u32)>,
    /// What was last published to the pool.
    published: Vec<Arc<Upstream>>,
    /// Failed sessions so far (`Discovery::failures`).
    failures: Arc<AtomicU64>,
    /// Successful listings so far (`Discovery::rounds`).
    rounds: Arc<AtomicU64>,
}

// === impl Watcher ===

impl Watcher {
    /// A watcher of `config` for `pool` (whose upstreams speak `speaks`), which already has
    /// the etcd instances `known` (those of the watcher it replaces, if any: the ones that
    /// are listed again keep their state).
    pub(super) fn new(
        shared: Weak<Shared>,
        pool: Arc<str>,
        (config, speaks): (EtcdDiscovery, super::Transport),
        known: Vec<Arc<Upstream>>,
        failures: Arc<AtomicU64>,
        rounds: Arc<AtomicU64>,
    ) -> Watcher {
        Watcher {
            shared,
            pool,
            gateway: Gateway::new(&config.endpoints),
            config,
            speaks,
            instances: BTreeMap::new(),
            published: known,
            failures,
            rounds,
        }
    }

    /// Lists and watches until `cancel`, backing off after each failure.
    pub(super) async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let error = tokio::select! {
                () = cancel.cancelled() => return,
                error = self.session(&mut backoff) => error,
            };
            if self.shared.strong_count() == 0 {
                return;
            }
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                pool = %self.pool,
                error = %crate::error_chain(&error),
                instances = self.published.len(),
                retry_in = ?backoff,
                "etcd discovery failed; keeping the last known instances"
            );
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One list-then-watch session; returns only when it fails.
    async fn session(&mut self, backoff: &mut Duration) -> EtcdError {
        let prefix = self.config.prefix.clone();
        let listing = match self.gateway.range(prefix.as_bytes()).await {
            Ok(listing) => listing,
            Err(error) => return error,
        };
        self.instances.clear();
        for kv in listing.kvs {
            self.put(kv);
        }
        self.publish();
        self.rounds.fetch_add(1, Ordering::Relaxed);
        let mut watch = match self
            .gateway
            .watch(prefix.as_bytes(), listing.revision + 1)
            .await
        {
            Ok(watch) => watch,
            Err(error) => return error,
        };
        loop {
            let events = match watch.next().await {
                Ok(events) => events,
                Err(error) => return error,
            };
            // The watch answers: etcd is back for good.
            *backoff = MIN_BACKOFF;
            if events.is_empty() {
                continue;
            }
            for event in events {
                match event {
                    Event::Put(kv) => self.put(kv),
                    Event::Delete(key) => {
                        self.instances.remove(&key);
                    }
                }
            }
            self.publish();
        }
    }

    /// Records the instance under `kv.key`; a bad value removes it, with a warning.
    fn put(&mut self, kv: KeyValue) {
        match parse_instance(&kv.value) {
            Ok(instance) => {
                self.instances.insert(kv.key, instance);
            }
            Err(error) => {
                tracing::warn!(pool = %self.pool, key = %kv.key, error = %crate::error_chain(&error), "etcd value is not an instance; key skipped");
                self.instances.remove(&kv.key);
            }
        }
    }

    /// Hands the instances to the pool when they differ from what it has.
    fn publish(&mut self) {
        let mut next: Vec<Arc<Upstream>> = Vec::with_capacity(self.instances.len());
        for &(addr, weight) in self.instances.values() {
            if next.iter().any(|u| u.addr == addr) {
                continue;
            }
            let upstream = self
                .published
                .iter()
                .find(|u| u.addr == addr)
                .map(|u| Upstream::reweighed(u, weight))
                .unwrap_or_else(|| Arc::new(Upstream::new(addr, weight, Source::Etcd)));
            next.push(upstream);
        }
        let same = next.len() == self.published.len()
            && next
                .iter()
                .zip(&self.published)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if same {
            return;
        }
        let ids =
            |list: &[Arc<Upstream>]| list.iter().map(|u| u.id.to_string()).collect::<Vec<_>>();
        let added: Vec<String> = ids(&next)
            .into_iter()
            .filter(|id| !self.published.iter().any(|u| *u.id == **id))
            .collect();
        let removed: Vec<String> = ids(&self.published)
            .into_iter()
            .filter(|id| !next.iter().any(|u| *u.id == **id))
            .collect();
        tracing::info!(pool = %self.pool, ?added, ?removed, instances = next.len(), "etcd instances changed");
        self.published = next.clone();
        if let Some(shared) = self.shared.upgrade() {
            shared
                .discovery
                .set_etcd(&shared, &self.pool, (&self.config, &self.speaks), next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_need_an_ip_address_and_a_weight_in_range() {
        let ok = parse_instance(br#"{"addr": "10.0.0.13:8080", "weight": 3, "zone": "a"}"#);
        assert_eq!(ok.unwrap(), (SocketAddr::from(([10, 0, 0, 13], 8080)), 3));
        let default = parse_instance(br#"{"addr": "[::1]:80"}"#).unwrap();
        assert_eq!(default.1, DEFAULT_WEIGHT);
        for (bad, expected) in [
            (&b"not json"[..], "expected JSON like"),
            (br#"{"weight": 1}"#, "expected JSON like"),
            (br#"{"addr": "api.internal:80"}"#, "is not an IP address"),
            (br#"{"addr": "10.0.0.1"}"#, "is not an IP address"),
            (br#"{"addr": "10.0.0.1:80", "weight": 0}"#, "out of range"),
            (
                br#"{"addr": "10.0.0.1:80", "weight": 10001}"#,
                "out of range",
            ),
            (
                br#"{"addr": "10.0.0.1:80", "weight": -1}"#,
                "expected JSON like",
            ),
        ] {
            let error = parse_instance(bad).unwrap_err().to_string();
            assert!(error.contains(expected), "{bad:?}: {error}");
        }
    }
}
