use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::*;
use crate::config::PoolConfig;
use crate::upstream::{Listed, Pool, Source, Upstream};

const HOST: &str = "svc.test:8080";

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 8080))
}

fn dns(last: u8) -> Arc<Upstream> {
    Arc::new(Upstream::new(addr(last), 2, Source::Dns))
}

/// A pool listing one static address and `HOST` (weight 2) resolved to `resolved`, plus a
/// registered instance.
fn pool(resolved: &[u8]) -> Pool {
    let cfg: PoolConfig = serde_yaml_ng::from_str("name: p").expect("minimal pool");
    let listed = vec![
        Listed::Addr(Arc::new(Upstream::new(addr(1), 1, Source::Static))),
        Listed::Host {
            addr: Arc::from(HOST),
            weight: 2,
            upstreams: resolved.iter().map(|l| dns(*l)).collect(),
        },
    ];
    let pool = Pool::from_listed(&cfg, listed, None).expect("no TLS");
    let registered = Upstream::new(addr(99), 1, Source::Registry);
    pool.set_discovered(Source::Registry, vec![Arc::new(registered)]);
    pool
}

fn hosts() -> Vec<Host> {
    vec![Host {
        addr: HOST.to_owned(),
        weight: 2,
    }]
}

/// A resolver answering from a table the test changes between rounds.
#[derive(Clone, Default)]
struct Table(Arc<Mutex<HashMap<String, io::Result<Vec<SocketAddr>>>>>);

impl Table {
    fn answer(&self, host: &str, answer: io::Result<Vec<SocketAddr>>) {
        self.0.lock().unwrap().insert(host.to_owned(), answer);
    }

    fn resolve(&self) -> impl Fn(String) -> std::future::Ready<io::Result<Vec<SocketAddr>>> + '_ {
        move |host| {
            let table = self.0.lock().unwrap();
            let answer = match table.get(&host) {
                Some(Ok(found)) => Ok(found.clone()),
                Some(Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "unknown host")),
            };
            std::future::ready(answer)
        }
    }
}

fn members(pool: &Pool) -> Vec<(SocketAddr, &'static str)> {
    pool.upstreams()
        .iter()
        .map(|u| (u.addr, u.source.as_str()))
        .collect()
}

#[tokio::test]
async fn addresses_that_stay_keep_their_upstream_new_join_gone_leave() {
    let pool = pool(&[2, 3]);
    let kept = pool.resolved(HOST, 2).unwrap()[1].clone();
    let table = Table::default();
    table.answer(HOST, Ok(vec![addr(4), addr(3)]));
    let outcome = refresh(&pool, &hosts(), table.resolve()).await;
    assert_eq!(
        outcome,
        Outcome {
            changed: 1,
            failed: 0
        }
    );
    assert_eq!(
        members(&pool),
        [
            (addr(1), "static"),
            (addr(3), "dns"),
            (addr(4), "dns"),
            (addr(99), "registry")
        ]
    );
    let now = pool.resolved(HOST, 2).unwrap();
    assert!(
        Arc::ptr_eq(&now[0], &kept),
        "10.0.0.3 keeps its Arc<Upstream>"
    );
    assert_eq!(now[1].weight, 2, "a new address gets the entry's weight");
    assert_eq!(pool.candidates().upstreams.len(), 4);
}

#[tokio::test]
async fn the_same_answer_changes_nothing() {
    let pool = pool(&[2, 3]);
    let before = pool.upstreams();
    let table = Table::default();
    table.answer(HOST, Ok(vec![addr(3), addr(2), addr(3)]));
    let outcome = refresh(&pool, &hosts(), table.resolve()).await;
    assert_eq!(outcome, Outcome::default());
    assert!(
        Arc::ptr_eq(&before, &pool.upstreams()),
        "membership not rewritten"
    );
}

#[tokio::test]
async fn a_failed_or_empty_resolution_keeps_the_last_good_set() {
    let pool = pool(&[2, 3]);
    let before = members(&pool);
    let table = Table::default();
    table.answer(HOST, Err(io::Error::other("SERVFAIL")));
    let failed = refresh(&pool, &hosts(), table.resolve()).await;
    assert_eq!(
        failed,
        Outcome {
            changed: 0,
            failed: 1
        }
    );
    assert_eq!(members(&pool), before);
    table.answer(HOST, Ok(Vec::new()));
    let empty = refresh(&pool, &hosts(), table.resolve()).await;
    assert_eq!(
        empty,
        Outcome {
            changed: 0,
            failed: 1
        }
    );
    assert_eq!(members(&pool), before);
    // And it recovers on the next good answer.
    table.answer(HOST, Ok(vec![addr(5)]));
    let good = refresh(&pool, &hosts(), table.resolve()).await;
    assert_eq!(
        good,
        Outcome {
            changed: 1,
            failed: 0
        }
    );
    assert_eq!(
        members(&pool),
        [
            (addr(1), "static"),
            (addr(5), "dns"),
            (addr(99), "registry")
        ]
    );
}

#[tokio::test]
async fn a_hostname_the_pool_no_longer_lists_is_ignored() {
    let pool = pool(&[2]);
    let before = members(&pool);
    let table = Table::default();
    table.answer("gone.test:80", Ok(vec![addr(7)]));
    let gone = vec![Host {
        addr: "gone.test:80".to_owned(),
        weight: 2,
    }];
    assert_eq!(
        refresh(&pool, &gone, table.resolve()).await,
        Outcome::default()
    );
    assert_eq!(members(&pool), before);
}
