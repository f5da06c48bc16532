use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::PoolConfig;
use crate::upstream::{Pool, Source, Upstream};

const T: Thresholds = Thresholds {
    healthy: 2,
    unhealthy: 3,
};

fn upstream(port: u16) -> Arc<Upstream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Arc::new(Upstream::new(addr, 1, Source::Static))
}

fn pool(upstreams: Vec<Arc<Upstream>>, outlier: Option<OutlierConfig>) -> Pool {
    let cfg: PoolConfig = serde_yaml_ng::from_str("name: p").expect("minimal pool");
    let cfg = PoolConfig { outlier, ..cfg };
    Pool::new(&cfg, upstreams, None).expect("no TLS")
}

fn outlier(failures: u32, ms: u64) -> Option<OutlierConfig> {
    Some(OutlierConfig {
        consecutive_failures: failures,
        ejection_time: Duration::from_millis(ms),
    })
}

fn candidate_ports(pool: &Pool) -> Vec<u16> {
    let c = pool.candidates();
    c.upstreams.iter().map(|u| u.addr.port()).collect()
}

#[test]
fn counter_starts_healthy_and_needs_exactly_the_unhealthy_threshold() {
    let mut c = Counter::default();
    assert!(c.is_healthy());
    assert_eq!(c.record(false, T), None);
    assert_eq!(c.record(false, T), None);
    assert_eq!(c.record(false, T), Some(false));
    assert_eq!(c.record(false, T), None, "a transition is reported once");
    assert!(!c.is_healthy());
}

#[test]
fn counter_resets_the_run_on_the_other_result() {
    let mut c = Counter::default();
    for _ in 0..10 {
        assert_eq!(c.record(false, T), None);
        assert_eq!(c.record(false, T), None);
        assert_eq!(c.record(true, T), None);
    }
    assert!(
        c.is_healthy(),
        "two failures then a pass never eject with threshold 3"
    );
    for _ in 0..3 {
        c.record(false, T);
    }
    assert_eq!(c.record(true, T), None);
    assert_eq!(c.record(false, T), None);
    assert_eq!(c.record(true, T), None);
    assert_eq!(c.record(true, T), Some(true));
}

#[test]
fn reasons_read_as_short_phrases() {
    assert_eq!(Reason::Status(503).to_string(), "status 503");
    assert_eq!(Reason::Timeout.to_string(), "timeout");
    assert_eq!(Reason::ConnectRefused.to_string(), "connect refused");
}

#[test]
fn a_check_transition_reaches_the_pool_on_its_next_pick() {
    let (a, b) = (upstream(1), upstream(2));
    let pool = pool(vec![a.clone(), b.clone()], None);
    assert_eq!(candidate_ports(&pool), [1, 2]);
    let fail = CheckResult {
        ok: false,
        reason: Reason::Status(500),
        at: std::time::SystemTime::now(),
    };
    for _ in 0..3 {
        a.state.health.record_check(fail, T, "p", "a");
    }
    assert_eq!(candidate_ports(&pool), [2]);
    let status = a.health();
    assert!(!status.healthy && !status.ejected);
    assert_eq!((status.consecutive_failures, status.checks_failed), (3, 3));
    assert_eq!(
        status.last_check.map(|c| c.reason),
        Some(Reason::Status(500))
    );
    assert!(status.last_change.is_some());
    b.set_healthy(false);
    assert!(candidate_ports(&pool).is_empty());
}

#[test]
fn a_successor_pool_shares_the_epoch_and_sees_transitions() {
    let a = upstream(1);
    let old = pool(vec![a.clone()], None);
    let cfg: PoolConfig = serde_yaml_ng::from_str("name: p").expect("minimal pool");
    let new = Pool::new(&cfg, vec![a.clone()], Some(&old)).expect("no TLS");
    a.set_healthy(false);
    assert!(candidate_ports(&old).is_empty());
    assert!(candidate_ports(&new).is_empty());
    let added = upstream(3);
    new.set_upstreams(vec![a.clone(), added.clone()]);
    assert_eq!(candidate_ports(&new), [3]);
    added.set_healthy(false);
    assert!(
        candidate_ports(&new).is_empty(),
        "an upstream added at runtime joined the pool's epoch"
    );
}

#[tokio::test]
async fn outlier_ejects_after_exactly_n_failures_each_time() {
    let (a, b) = (upstream(1), upstream(2));
    let pool = pool(vec![a.clone(), b.clone()], outlier(3, 50));
    for _ in 0..2 {
        pool.report_outcome(&a, Some(Reason::Status(503)));
    }
    assert_eq!(candidate_ports(&pool), [1, 2], "two failures of three");
    pool.report_outcome(&a, None);
    pool.report_outcome(&a, Some(Reason::Reset));
    pool.report_outcome(&a, Some(Reason::Reset));
    assert_eq!(candidate_ports(&pool), [1, 2], "a success reset the count");
    pool.report_outcome(&a, Some(Reason::Reset));
    assert_eq!(candidate_ports(&pool), [2]);
    assert!(a.health().ejected);
    wait_for(|| candidate_ports(&pool) == [1, 2]).await;
    assert_eq!(a.health().ejections, 1);
    // Back with a clean count: ejected again only after three more failures.
    for _ in 0..2 {
        pool.report_outcome(&a, Some(Reason::ConnectRefused));
    }
    assert_eq!(
        candidate_ports(&pool),
        [1, 2],
        "two failures after returning"
    );
    pool.report_outcome(&a, Some(Reason::ConnectRefused));
    assert_eq!(candidate_ports(&pool), [2]);
    assert_eq!(a.health().ejections, 2);
    wait_for(|| candidate_ports(&pool) == [1, 2]).await;
    pool.report_outcome(&a, None);
    assert_eq!(
        a.health().ejections,
        0,
        "a success after returning clears the record"
    );
}

#[tokio::test]
async fn without_outlier_config_nothing_is_counted() {
    let a = upstream(1);
    let pool = pool(vec![a.clone()], None);
    for _ in 0..100 {
        pool.report_outcome(&a, Some(Reason::Status(502)));
    }
    assert_eq!(candidate_ports(&pool), [1]);
    assert_eq!(a.health().outlier_failures, 0);
}

async fn wait_for(mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
