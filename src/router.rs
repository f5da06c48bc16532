//! Request routing: from a request's host and path to the index of the route
//! that serves it (SPEC section 3). This module is a pure lookup table built
//! once per config snapshot; it does no I/O, takes no locks and does not
//! allocate per request. Which pool a route forwards to, prefix stripping and
//! the `404` answer belong to the proxy.
//!
//! Precedence, independent of the order of routes in the file:
//! 1. by host: an exact name, then wildcards from the longest suffix to the
//!    shortest, then routes without a host;
//! 2. within one host level, the longest `path_prefix` that is a plain string
//!    prefix of the path. A level where no prefix matches falls through to
//!    the next level, so `a.com/other` reaches an any-host `/` route when
//!    `a.com` only has `/api/`.
//!
//! Lookup cost does not grow with the number of routes: exact hosts and
//! wildcard suffixes are hash-map keys (a host is looked up once, then once
//! per suffix within the configured suffix lengths), and each host level keeps
//! its prefixes in a radix trie walked along the path.

use std::collections::HashMap;

mod trie;

#[cfg(test)]
mod tests;

use trie::PrefixTrie;

/// Longest host name (without port) matched against exact and wildcard
/// patterns; longer hosts are not valid DNS names and only reach any-host
/// routes. The lookup lowercases the host into a stack buffer of this size.
pub const MAX_HOST_LEN: usize = 256;

/// The host/path lookup table of one config snapshot.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Exact host name -> its prefixes.
    exact: HashMap<Box<[u8]>, PrefixTrie>,
    /// Wildcard suffix (`example.com` for `*.example.com`) -> its prefixes.
    wildcard: HashMap<Box<[u8]>, PrefixTrie>,
    /// Shortest and longest wildcard suffix, in bytes: host suffixes outside
    /// this range are not looked up.
    wildcard_len: (usize, usize),
    /// Routes without a host pattern.
    any: PrefixTrie,
}

// === impl Router ===

impl Router {
    /// Builds the table; `routes[i] = (host_pattern, path_prefix)` and `route` returns `i`.
    ///
    /// `host_pattern` is `None` for any host, an exact name (`a.com`) or a
    /// wildcard (`*.example.com`); `"*"` also means any host. Patterns are
    /// matched case-insensitively and a trailing dot is ignored. Prefixes
    /// start with `/`. When two routes share host pattern and prefix (config
    /// validation rejects that), the first one is kept.
    pub fn new<'a>(routes: impl IntoIterator<Item = (Option<&'a str>, &'a str)>) -> Router {
        let mut router = Router {
            wildcard_len: (usize::MAX, 0),
            ..Router::default()
        };
        for (index, (host, prefix)) in routes.into_iter().enumerate() {
            let prefix = prefix.as_bytes();
            let Some(host) = host else {
                router.any.insert(prefix, index);
                continue;
            };
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            if host == "*" {
                router.any.insert(prefix, index);
            } else if let Some(suffix) = host.strip_prefix("*.") {
                let (min, max) = &mut router.wildcard_len;
                *min = (*min).min(suffix.len());
                *max = (*max).max(suffix.len());
                let key: Box<[u8]> = suffix.as_bytes().into();
                router
                    .wildcard
                    .entry(key)
                    .or_default()
                    .insert(prefix, index);
            } else {
                let key: Box<[u8]> = host.into_bytes().into();
                router.exact.entry(key).or_default().insert(prefix, index);
            }
        }
        router
    }

    /// Index of the best route for this request, or `None` (the proxy answers `404`).
    ///
    /// `host` is the raw `Host` header or `:authority`: any case, with or
    /// without a port, possibly a bracketed IPv6 literal (`[::1]:80`, matched
    /// as `[::1]`) or empty. `path` is the request path.
    ///
    /// ```
    /// use switchyard::router::Router;
    ///
    /// let router = Router::new([
    ///     (None, "/"),                      // 0: any host
    ///     (Some("a.com"), "/api/"),         // 1: exact host
    ///     (Some("*.a.com"), "/"),           // 2: wildcard
    /// ]);
    /// assert_eq!(router.route("A.com:8080", "/api/users"), Some(1));
    /// assert_eq!(router.route("a.com", "/other"), Some(0)); // falls through to any host
    /// assert_eq!(router.route("x.a.com", "/"), Some(2));
    /// ```
    pub fn route(&self, host: &str, path: &str) -> Option<usize> {
        let path = path.as_bytes();
        let mut buf = [0u8; MAX_HOST_LEN];
        let name = if self.exact.is_empty() && self.wildcard.is_empty() {
            None
        } else {
            lowercase_name(host_name(host.as_bytes()), &mut buf)
        };
        if let Some(name) = name {
            if let Some(found) = self.exact.get(name).and_then(|t| t.lookup(path)) {
                return Some(found);
            }
            if let Some(found) = self.route_wildcard(name, path) {
                return Some(found);
            }
        }
        self.any.lookup(path)
    }

    /// Tries each suffix of `name` that follows a dot, longest first, so
    /// `a.b.example.com` tries `b.example.com`, then `example.com`, then `com`.
    /// A suffix needs at least one non-empty label before it.
    fn route_wildcard(&self, name: &[u8], path: &[u8]) -> Option<usize> {
        if self.wildcard.is_empty() {
            return None;
        }
        let (min, max) = self.wildcard_len;
        for (dot, _) in name.iter().enumerate().skip(1).filter(|(_, b)| **b == b'.') {
            let suffix = &name[dot + 1..];
            if suffix.len() > max {
                continue;
            }
            if suffix.len() < min {
                break;
            }
            if let Some(found) = self.wildcard.get(suffix).and_then(|t| t.lookup(path)) {
                return Some(found);
            }
        }
        None
    }
}

/// The name part of a raw host: without the port, and without one trailing
/// dot (`a.com.` is the fully qualified `a.com`). A bracketed IPv6 literal
/// keeps its brackets; anything else is cut at the first `:`.
fn host_name(raw: &[u8]) -> &[u8] {
    let end = if raw.first() == Some(&b'[') {
        raw.iter()
            .position(|&b| b == b']')
            .map_or(raw.len(), |i| i + 1)
    } else {
        raw.iter().position(|&b| b == b':').unwrap_or(raw.len())
    };
    let name = &raw[..end];
    name.strip_suffix(b".").unwrap_or(name)
}

/// ASCII-lowercases `name` into `buf`, or `None` when it is empty or longer
/// than the buffer (such a host can only match any-host routes).
fn lowercase_name<'b>(name: &[u8], buf: &'b mut [u8; MAX_HOST_LEN]) -> Option<&'b [u8]> {
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return None;
    }
    let out = &mut buf[..name.len()];
    for (dst, src) in out.iter_mut().zip(name) {
        *dst = src.to_ascii_lowercase();
    }
    Some(out)
}
