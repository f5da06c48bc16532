//! A pool's membership by source, and the one place that composes it.
//!
//! A pool's upstreams come from four sources: the config file (IP addresses, and hostnames
//! with their last good resolution, in file order), etcd discovery and the runtime registry.
//! Each source replaces only its own part ([`Members::set_resolved`],
//! [`Members::set_discovered`]); [`Members::compose`] lays them out as file entries in file
//! order, then etcd instances, then registered ones. `Pool` keeps one `Members` behind a
//! mutex and stores the composed list after every change, so a DNS refresh never drops
//! registered or etcd instances, and the reverse. Keeping the file entries (rather than a
//! flat list) is what lets a hostname keep its last good addresses when a later resolution
//! fails, and lets a reload find them again by the entry as written.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Source, Upstream};

/// One `upstreams` entry of the config file as it stands now.
#[derive(Debug, Clone)]
pub enum Listed {
    /// An IP address, or any upstream given without its origin (`Pool::new`).
    Addr(Arc<Upstream>),
    /// A hostname entry and the upstreams of its last good resolution.
    Host {
        /// The `addr` as written in the file, like `api.internal:8080`.
        addr: Arc<str>,
        /// The entry's weight, given to every resolved address.
        weight: u32,
        /// One upstream per resolved address, sorted by address.
        upstreams: Vec<Arc<Upstream>>,
    },
}

/// A pool's upstreams, kept apart by source.
#[derive(Debug, Default)]
pub struct Members {
    listed: Vec<Listed>,
    etcd: Vec<Arc<Upstream>>,
    registry: Vec<Arc<Upstream>>,
}

// === impl Members ===

impl Members {
    /// The file's entries, with no discovered or registered instances yet.
    pub fn new(listed: Vec<Listed>) -> Members {
        Members {
            listed,
            ..Members::default()
        }
    }

    /// Every member: file entries in file order, then etcd instances, then registered ones.
    /// An address is one member: the first that lists it wins, later copies (a hostname
    /// resolving to a listed IP, an etcd key or a registration for a member the pool already
    /// has) are left out, so no address takes a double share of traffic or checks.
    pub fn compose(&self) -> Vec<Arc<Upstream>> {
        let listed = self.listed.iter().flat_map(|entry| match entry {
            Listed::Addr(upstream) => std::slice::from_ref(upstream),
            Listed::Host { upstreams, .. } => upstreams.as_slice(),
        });
        let every = listed.chain(&self.etcd).chain(&self.registry);
        let mut all: Vec<Arc<Upstream>> =
            Vec::with_capacity(self.listed.len() + self.etcd.len() + self.registry.len());
        let mut seen = HashSet::with_capacity(all.capacity());
        for upstream in every {
            if seen.insert(upstream.addr) {
                all.push(upstream.clone());
            } else {
                tracing::warn!(addr = %upstream.addr, source = upstream.source.as_str(), "address is already a member of the pool; this copy is left out");
            }
        }
        all
    }

    /// The last good resolution of the hostname entry `addr` with `weight`, if the pool has it.
    pub fn resolved(&self, addr: &str, weight: u32) -> Option<&[Arc<Upstream>]> {
        self.listed.iter().find_map(|entry| match entry {
            Listed::Host {
                addr: a,
                weight: w,
                upstreams,
            } if **a == *addr && *w == weight => Some(upstreams.as_slice()),
            _ => None,
        })
    }

    /// Replaces the resolution of the hostname entry `addr` with `weight`; false when the
    /// pool has no such entry (nothing changes then).
    pub fn set_resolved(&mut self, addr: &str, weight: u32, resolved: Vec<Arc<Upstream>>) -> bool {
        for entry in &mut self.listed {
            if let Listed::Host {
                addr: a,
                weight: w,
                upstreams,
            } = entry
            {
                if **a == *addr && *w == weight {
                    *upstreams = resolved;
                    return true;
                }
            }
        }
        false
    }

    /// Replaces the instances of a runtime source, [`Source::Etcd`] or [`Source::Registry`];
    /// false (and nothing changes) for the file's sources, which only a new snapshot sets.
    pub fn set_discovered(&mut self, source: Source, upstreams: Vec<Arc<Upstream>>) -> bool {
        match source {
            Source::Etcd => self.etcd = upstreams,
            Source::Registry => self.registry = upstreams,
            Source::Static | Source::Dns => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(port: u16, source: Source) -> Arc<Upstream> {
        Arc::new(Upstream::new(([127, 0, 0, 1], port).into(), 1, source))
    }

    fn ports(members: &Members) -> Vec<u16> {
        members.compose().iter().map(|u| u.addr.port()).collect()
    }

    #[test]
    fn each_source_replaces_only_its_own_part_and_order_is_file_etcd_registry() {
        let host = Listed::Host {
            addr: Arc::from("svc.local:80"),
            weight: 2,
            upstreams: vec![up(2, Source::Dns)],
        };
        let mut m = Members::new(vec![host, Listed::Addr(up(1, Source::Static))]);
        assert!(m.set_discovered(Source::Registry, vec![up(9, Source::Registry)]));
        assert!(m.set_discovered(Source::Etcd, vec![up(5, Source::Etcd)]));
        assert_eq!(ports(&m), [2, 1, 5, 9]);
        assert!(m.set_resolved(
            "svc.local:80",
            2,
            vec![up(3, Source::Dns), up(4, Source::Dns)]
        ));
        assert_eq!(ports(&m), [3, 4, 1, 5, 9]);
        assert!(m.set_discovered(Source::Etcd, Vec::new()));
        assert_eq!(ports(&m), [3, 4, 1, 9]);
    }

    #[test]
    fn an_address_is_one_member_the_first_source_listing_it_wins() {
        let host = Listed::Host {
            addr: Arc::from("svc.local:80"),
            weight: 1,
            upstreams: vec![up(1, Source::Dns), up(2, Source::Dns)],
        };
        let mut m = Members::new(vec![Listed::Addr(up(1, Source::Static)), host]);
        m.set_discovered(Source::Etcd, vec![up(2, Source::Etcd), up(3, Source::Etcd)]);
        m.set_discovered(
            Source::Registry,
            vec![up(3, Source::Registry), up(4, Source::Registry)],
        );
        let composed = m.compose();
        let got: Vec<(u16, Source)> = composed.iter().map(|u| (u.addr.port(), u.source)).collect();
        assert_eq!(
            got,
            [
                (1, Source::Static),
                (2, Source::Dns),
                (3, Source::Etcd),
                (4, Source::Registry)
            ]
        );
        // The shadowed registry entry is back once etcd no longer lists its address.
        m.set_discovered(Source::Etcd, Vec::new());
        assert_eq!(ports(&m), [1, 2, 3, 4]);
        assert_eq!(m.compose()[2].source, Source::Registry);
    }

    #[test]
    fn unknown_hostname_entries_and_file_sources_change_nothing() {
        let mut m = Members::new(vec![Listed::Addr(up(1, Source::Static))]);
        assert!(!m.set_resolved("svc.local:80", 1, vec![up(2, Source::Dns)]));
        assert!(!m.set_discovered(Source::Static, vec![up(3, Source::Static)]));
        assert!(m.resolved("svc.local:80", 1).is_none());
        assert_eq!(ports(&m), [1]);
    }
}
