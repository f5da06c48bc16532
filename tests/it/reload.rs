//! Hot reload in process: file watch (in-place writes and rename-over), explicit reloads,
//! bad input, carry-over of upstream state, listeners added and removed, reloads under load.
//! SIGHUP and SIGTERM through the real binary are in `cli.rs`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use switchyard::reload::watch::DEBOUNCE as DEBOUNCE_QUIET;
use switchyard::reload::{ReloadError, ReloadStatus, Trigger};
use switchyard::upstream::Source;
use switchyard::{Server, ServerOptions};
use tokio::time::Instant;

use crate::support::{self, Backend, Client, TempDir, DEADLINE};

/// A route change must serve within this long after the write.
const WITHIN: Duration = Duration::from_secs(2);

/// Writes `text` to a temp file beside `path` and renames it over `path`, as editors do.
pub fn write_and_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One listener `test` on 127.0.0.1:0 plus `extra` listeners, every path to `backend`,
/// `tag` in the route name so that two configs can differ in nothing else.
pub fn routed_to(backend: SocketAddr, tag: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - name: test\n    bind: \"127.0.0.1:0\"\n{extra}access_log: off\nroutes:\n  - name: r-{tag}\n    match: {{ path_prefix: \"/\" }}\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{backend}\" }}\n"
    )
}

/// Starts a proxy from the file at `path`, watching it when `watch`.
async fn start(path: &Path, watch: bool) -> (Server, SocketAddr) {
    let config = switchyard::config::load(path).unwrap_or_else(|e| panic!("invalid:\n{e}"));
    let options = ServerOptions {
        config_path: Some(path.to_owned()),
        drain: Duration::from_secs(5),
        watch,
    };
    let server = Server::start_with(config, options).await.unwrap();
    let addr = server.listener_addr("test").unwrap();
    (server, addr)
}

/// Polls the reload status until `done` holds; returns it and how long that took.
async fn wait_status(
    server: &Server,
    what: &str,
    done: impl Fn(&ReloadStatus) -> bool,
) -> (ReloadStatus, Duration) {
    let started = Instant::now();
    loop {
        let status = server.reloader().status();
        if done(&status) {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting for {what}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the running snapshot's generation reaches `generation`; returns how long.
async fn wait_generation(server: &Server, generation: u64) -> Duration {
    let started = Instant::now();
    while server.shared().snapshot().generation < generation {
        assert!(
            started.elapsed() < DEADLINE,
            "generation {generation} never came"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    started.elapsed()
}

/// Waits for `generation`, which must come within [`WITHIN`]; then `/` must answer `body`.
async fn serves_within(server: &Server, addr: SocketAddr, generation: u64, body: &str) {
    let took = wait_generation(server, generation).await;
    assert!(took < WITHIN, "took {took:?}");
    assert_eq!(support::get(addr, "/").await.text(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_changed_by_an_in_place_write_serves_within_2s() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = TempDir::new("in-place");
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, routed_to(a.addr, "1", "")).unwrap();
    let (server, addr) = start(&path, true).await;
    assert_eq!(support::get(addr, "/").await.text(), "a");

    std::fs::write(&path, routed_to(b.addr, "2", "")).unwrap();
    serves_within(&server, addr, 2, "b").await;
    let status = server.reloader().status();
    assert!(status.ok && status.error.is_none(), "{status:?}");
    assert_eq!((status.generation, status.reloads_ok), (2, 1));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_changed_by_write_temp_and_rename_serves_within_2s() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = TempDir::new("rename");
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, routed_to(a.addr, "1", "")).unwrap();
    let (server, addr) = start(&path, true).await;

    write_and_rename(&path, &routed_to(b.addr, "2", ""));
    serves_within(&server, addr, 2, "b").await;
    // The watch survives the rename: the next rename is seen too.
    write_and_rename(&path, &routed_to(a.addr, "3", ""));
    wait_generation(&server, 3).await;
    assert_eq!(support::get(addr, "/").await.text(), "a");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_reading_and_logging_to_files_in_the_config_directory_trigger_no_reload() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = TempDir::new("reads");
    let path = dir.join("proxy.yaml");
    let sibling = dir.join("64k");
    std::fs::write(&path, routed_to(a.addr, "1", "")).unwrap();
    std::fs::write(&sibling, "x".repeat(65536)).unwrap();
    let (server, addr) = start(&path, true).await;

    // What a backend serving a file from this directory, or `cat` of the config, does; and
    // a log kept open beside the config, written line by line.
    let mut log = std::fs::File::create(dir.join("requests.log")).unwrap();
    for i in 0..50 {
        std::fs::read(&sibling).unwrap();
        std::fs::read(&path).unwrap();
        std::io::Write::write_all(&mut log, format!("request {i}\n").as_bytes()).unwrap();
    }
    // Proving that nothing happens needs a wait: longer than the debounce's quiet period,
    // so that a reload those reads had set off would have run before the edit below.
    tokio::time::sleep(DEBOUNCE_QUIET * 5).await;
    write_and_rename(&path, &routed_to(b.addr, "2", ""));
    wait_generation(&server, 2).await;
    assert_eq!(support::get(addr, "/").await.text(), "b");
    let status = server.reloader().status();
    assert_eq!((status.generation, status.reloads_ok), (2, 1), "{status:?}");
    drop(log);
    server.shutdown().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_style_symlink_swap_reloads() {
    use std::os::unix::fs::symlink;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = TempDir::new("configmap");
    // A ConfigMap volume: proxy.yaml -> ..data/proxy.yaml, ..data -> ..v1.
    std::fs::create_dir(dir.join("..v1")).unwrap();
    std::fs::write(dir.join("..v1/proxy.yaml"), routed_to(a.addr, "1", "")).unwrap();
    symlink("..v1", dir.join("..data")).unwrap();
    symlink("..data/proxy.yaml", dir.join("proxy.yaml")).unwrap();
    let (server, addr) = start(&dir.join("proxy.yaml"), true).await;
    assert_eq!(support::get(addr, "/").await.text(), "a");

    // The update: a new version directory, a new link renamed over `..data`, the old gone.
    std::fs::create_dir(dir.join("..v2")).unwrap();
    std::fs::write(dir.join("..v2/proxy.yaml"), routed_to(b.addr, "2", "")).unwrap();
    symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..v1")).unwrap();
    serves_within(&server, addr, 2, "b").await;

    // Audit A-F4: an edit in the directory the link points into now (not the one it
    // pointed into at start) was not seen.
    std::fs::write(dir.join("..v2/proxy.yaml"), routed_to(a.addr, "3", "")).unwrap();
    serves_within(&server, addr, 3, "a").await;
    server.shutdown().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_edit_of_a_symlink_target_in_the_same_directory_reloads() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = TempDir::new("samedir-link");
    let target = dir.join("real.yaml");
    std::fs::write(&target, routed_to(a.addr, "1", "")).unwrap();
    std::os::unix::fs::symlink("real.yaml", dir.join("proxy.yaml")).unwrap();
    let (server, addr) = start(&dir.join("proxy.yaml"), true).await;

    std::fs::write(&target, routed_to(b.addr, "2", "")).unwrap();
    serves_within(&server, addr, 2, "b").await;
    server.shutdown().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_a_symlinked_config_in_another_directory_reloads() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (links, files) = (TempDir::new("links"), TempDir::new("files"));
    let target = files.join("proxy.yaml");
    std::fs::write(&target, routed_to(a.addr, "1", "")).unwrap();
    std::os::unix::fs::symlink(&target, links.join("proxy.yaml")).unwrap();
    let (server, addr) = start(&links.join("proxy.yaml"), true).await;

    std::fs::write(&target, routed_to(b.addr, "2", "")).unwrap();
    serves_within(&server, addr, 2, "b").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_yaml_keeps_the_old_routing_and_records_a_positioned_error() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = TempDir::new("invalid");
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, routed_to(a.addr, "1", "")).unwrap();
    let (server, addr) = start(&path, true).await;

    let broken = routed_to(b.addr, "2", "").replace("    pool: p\n", "    pool: nope\n");
    std::fs::write(&path, broken).unwrap();
    let (status, _) = wait_status(&server, "the reload error", |s| s.reloads_error == 1).await;
    assert!(!status.ok);
    let error = status.error.unwrap();
    assert!(
        error.contains("proxy.yaml:8:11: unknown pool \"nope\""),
        "{error}"
    );
    assert_eq!(server.shared().snapshot().generation, 1);
    assert_eq!(status.generation, 1);
    assert_eq!(support::get(addr, "/").await.text(), "a");
    // An explicit reload reports the same error to its caller (the admin API's 422).
    let err = server.reloader().reload(Trigger::Admin).await.unwrap_err();
    assert!(matches!(err, ReloadError::Config(_)), "{err:?}");

    std::fs::write(&path, routed_to(b.addr, "2", "")).unwrap();
    wait_generation(&server, 2).await;
    assert_eq!(support::get(addr, "/").await.text(), "b");
    assert!(server.reloader().status().ok);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_keep_the_old_config_with_a_clear_error_and_the_watcher_keeps_working() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = TempDir::new("bad-input");
    let path = dir.join("proxy.yaml");
    let good = routed_to(a.addr, "1", "");
    std::fs::write(&path, &good).unwrap();
    let (server, addr) = start(&path, true).await;

    // Each bad file is told apart by its message, so a late duplicate event cannot pass
    // for the next case.
    let truncated = &good[..good.find("addr").unwrap() + 10];
    let cases: [(&str, &dyn Fn(), &str); 5] = [
        (
            "truncated",
            &|| std::fs::write(&path, truncated).unwrap(),
            "proxy.yaml:12:21: found unexpected end of stream",
        ),
        (
            "empty",
            &|| std::fs::write(&path, "").unwrap(),
            "proxy.yaml:1:1: the file is empty",
        ),
        (
            "binary",
            &|| std::fs::write(&path, [0x00, 0xff, 0xfe, 0x80, 0x12]).unwrap(),
            "not UTF-8",
        ),
        (
            "deleted",
            &|| std::fs::remove_file(&path).unwrap(),
            "cannot read the config file",
        ),
        (
            "directory",
            &|| std::fs::create_dir(&path).unwrap(),
            "Is a directory",
        ),
    ];
    for (case, make, expected) in cases {
        make();
        let (status, _) = wait_status(&server, case, |s| {
            s.error.as_deref().is_some_and(|e| e.contains(expected))
        })
        .await;
        assert!(!status.ok, "{case}: {status:?}");
        let error = status.error.unwrap();
        assert!(error.contains("proxy.yaml:"), "{case}: {error}");
        assert_eq!(server.shared().snapshot().generation, 1, "{case}");
        assert_eq!(support::get(addr, "/").await.text(), "a", "{case}");
    }
    // Recreated as a file again: the watcher still follows it.
    std::fs::remove_dir(&path).unwrap();
    std::fs::write(&path, routed_to(b.addr, "2", "")).unwrap();
    wait_generation(&server, 2).await;
    assert_eq!(support::get(addr, "/").await.text(), "b");
    assert!(server.reloader().status().ok);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_file_is_a_new_generation_only_when_asked_for() {
    let a = Backend::start("a").await;
    let dir = TempDir::new("unchanged");
    let path = dir.join("proxy.yaml");
    let text = routed_to(a.addr, "1", "");
    std::fs::write(&path, &text).unwrap();
    let (server, addr) = start(&path, false).await;

    // Same content, different text: the watcher compares parsed configs and stops there.
    std::fs::write(&path, format!("# a comment\n{text}")).unwrap();
    assert_eq!(server.reloader().reload(Trigger::Watch).await.unwrap(), 1);
    // SIGHUP and POST /reload always swap a rebuilt snapshot in, one generation each.
    assert_eq!(server.reloader().reload(Trigger::Signal).await.unwrap(), 2);
    assert_eq!(server.reloader().reload(Trigger::Admin).await.unwrap(), 3);
    let status = server.reloader().status();
    assert_eq!(
        (status.ok, status.generation, status.reloads_ok),
        (true, 3, 3)
    );
    // A real change bumps by exactly one, whatever the trigger.
    std::fs::write(&path, routed_to(a.addr, "2", "")).unwrap();
    assert_eq!(server.reloader().reload(Trigger::Watch).await.unwrap(), 4);
    assert_eq!(server.shared().snapshot().generation, 4);
    assert_eq!(support::get(addr, "/").await.text(), "a");
    server.shutdown().await;
}

#[tokio::test]
async fn a_proxy_started_without_a_file_refuses_to_reload() {
    let a = Backend::start("a").await;
    let proxy = support::Proxy::start(&routed_to(a.addr, "1", "")).await;
    let err = proxy.server.reloader().reload(Trigger::Admin).await;
    assert!(matches!(err, Err(ReloadError::NoConfigFile)), "{err:?}");
    let status = proxy.server.reloader().status();
    assert_eq!((status.ok, status.reloads_error), (false, 1));
    proxy.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_upstream_keeps_its_health_and_connections_across_a_reload() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = TempDir::new("carry-over");
    let path = dir.join("proxy.yaml");
    let pool = |tag: &str| {
        format!(
            "listeners:\n  - name: test\n    bind: \"127.0.0.1:0\"\naccess_log: off\nroutes:\n  - name: r-{tag}\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n      - {{ addr: \"{}\" }}\n",
            a.addr, b.addr
        )
    };
    std::fs::write(&path, pool("1")).unwrap();
    let (server, addr) = start(&path, false).await;
    let before = server.shared().snapshot();
    let p = before.pool("p").unwrap();
    let ups = p.upstreams();
    let (up_a, up_b) = (ups[0].clone(), ups[1].clone());
    // Mark `a` unhealthy, as the health checker would; and leave a pooled connection to `b`.
    up_a.set_healthy(false);
    p.refresh();
    let mut client = Client::connect(addr).await;
    assert_eq!(client.get("x", "/").await.text(), "b");
    support::eventually("a pooled connection to b", || up_b.idle_connections() == 1).await;

    std::fs::write(&path, pool("2")).unwrap();
    assert_eq!(server.reloader().reload(Trigger::Signal).await.unwrap(), 2);
    let after = server.shared().snapshot();
    assert_eq!(after.routes[0].name.as_ref(), "r-2");
    let ups = after.pool("p").unwrap().upstreams();
    assert!(Arc::ptr_eq(&ups[0], &up_a) && Arc::ptr_eq(&ups[1], &up_b));
    assert!(!ups[0].is_healthy() && ups[1].is_healthy());
    for _ in 0..4 {
        assert_eq!(client.get("x", "/").await.text(), "b");
    }
    assert_eq!(a.requests(), 0);
    // The pooled connection was reused: `b` saw one connection for all five requests.
    assert_eq!(b.connections(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_weight_alone_keeps_the_upstreams_health_and_connections() {
    // Audit A-F2: a reload that only re-weighed an upstream made a new one, healthy and
    // without connections: an instance its checks had failed took traffic again.
    let (a, b) = (Backend::failing("a", 500).await, Backend::start("b").await);
    let dir = TempDir::new("reweigh");
    let path = dir.join("proxy.yaml");
    let pool = |tag: &str, weight: u32| {
        format!(
            "listeners:\n  - name: test\n    bind: \"127.0.0.1:0\"\naccess_log: off\nroutes:\n  - name: r-{tag}\n    pool: p\npools:\n  - name: p\n    strategy: weighted\n    health_check: {{ path: /, interval: 50ms, healthy_threshold: 1, unhealthy_threshold: 1 }}\n    upstreams:\n      - {{ addr: \"{}\", weight: {weight} }}\n      - {{ addr: \"{}\", weight: {weight} }}\n",
            a.addr, b.addr
        )
    };
    std::fs::write(&path, pool("1", 1)).unwrap();
    let (server, addr) = start(&path, false).await;
    let ups = server.shared().snapshot().pool("p").unwrap().upstreams();
    let (up_a, up_b) = (ups[0].clone(), ups[1].clone());
    support::eventually("a failed its checks", || !up_a.is_healthy()).await;
    let mut client = Client::connect(addr).await;
    assert_eq!(client.get("x", "/").await.text(), "b");
    support::eventually("a pooled connection to b", || up_b.idle_connections() == 1).await;

    std::fs::write(&path, pool("2", 5)).unwrap();
    assert_eq!(server.reloader().reload(Trigger::Signal).await.unwrap(), 2);
    let ups = server.shared().snapshot().pool("p").unwrap().upstreams();
    assert_eq!((ups[0].weight, ups[1].weight), (5, 5));
    assert!(ups[0].same_instance(&up_a) && ups[1].same_instance(&up_b));
    assert!(
        !ups[0].is_healthy(),
        "a is still out: {:?}",
        ups[0].health()
    );
    assert_eq!(ups[1].idle_connections(), 1, "b's pooled connection stays");
    // Its checks go on (the same task: no fresh first verdict lets it in meanwhile).
    let failed = ups[0].health().checks_failed;
    support::eventually("a checked again", || {
        ups[0].health().checks_failed > failed + 2
    })
    .await;
    for _ in 0..4 {
        assert_eq!(client.get("x", "/").await.text(), "b");
        assert!(!ups[0].is_healthy());
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reopens_an_access_log_rotated_away() {
    // Audit A-F3: `logrotate` renames the file, then sends SIGHUP; the lines went on into
    // the renamed file, and a new one was never made.
    let a = Backend::start("a").await;
    let dir = TempDir::new("rotate");
    let path = dir.join("proxy.yaml");
    let (log, rotated) = (dir.join("access.log"), dir.join("access.log.1"));
    let logged = format!("access_log: \"{}\"", log.display());
    std::fs::write(
        &path,
        routed_to(a.addr, "1", "").replace("access_log: off", &logged),
    )
    .unwrap();
    let (server, addr) = start(&path, false).await;
    let lines = |file: &Path| {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        text.lines().filter(|l| l.contains("\"path\":\"/")).count()
    };
    assert_eq!(support::get(addr, "/before").await.text(), "a");
    support::eventually("the first line", || lines(&log) == 1).await;

    // An unchanged file and no rotation: the same writer (and file) stays.
    assert_eq!(server.reloader().reload(Trigger::Signal).await.unwrap(), 2);
    assert_eq!(support::get(addr, "/same").await.text(), "a");
    support::eventually("the second line, same file", || lines(&log) == 2).await;

    std::fs::rename(&log, &rotated).unwrap();
    assert_eq!(server.reloader().reload(Trigger::Signal).await.unwrap(), 3);
    assert_eq!(support::get(addr, "/after").await.text(), "a");
    support::eventually("a new file with the next line", || lines(&log) == 1).await;
    assert_eq!(lines(&rotated), 2, "nothing more in the rotated file");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_counts_never_go_back_when_a_pool_leaves_and_returns() {
    // Audit 3 F5: the count was each upstream's own, read at scrape time: removed and added
    // back, the upstream started over and the counter went from 22 to 1.
    use crate::metrics::value;
    let a = Backend::start("a").await;
    let dir = TempDir::new("checks-monotonic");
    let path = dir.join("proxy.yaml");
    let listener = "l-checks-monotonic";
    let checked = |pool: &str| {
        let routes = route_to("r", pool, &[a.addr]).replace(
            "    upstreams:\n",
            "    health_check: { path: /, interval: 20ms }\n    upstreams:\n",
        );
        with_admin(listener, None, &routes)
    };
    std::fs::write(&path, checked("hc")).unwrap();
    let (server, _, admin) = start_file(&path, listener).await;
    let id = a.addr.to_string();
    let labels = [("pool", "hc"), ("upstream", id.as_str()), ("result", "ok")];
    let count = || value(admin, "switchyard_health_checks_total", &labels);
    let deadline = Instant::now() + DEADLINE;
    while count().await.unwrap_or(0.0) < 5.0 {
        assert!(Instant::now() < deadline, "five checks never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = count().await.unwrap();
    std::fs::write(&path, checked("other")).unwrap();
    assert_eq!(post_reload(admin, None).await.status, http::StatusCode::OK);
    std::fs::write(&path, checked("hc")).unwrap();
    assert_eq!(post_reload(admin, None).await.status, http::StatusCode::OK);
    let after = count().await.expect("the series is still there");
    assert!(after >= before, "{before} -> {after}");
    server.shutdown().await;
}

fn extra_listener(name: &str, port: u16) -> String {
    format!("  - name: {name}\n    bind: \"127.0.0.1:{port}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_added_by_reload_accepts_and_a_removed_one_stops() {
    let a = Backend::start("a").await;
    let dir = TempDir::new("listeners");
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, routed_to(a.addr, "1", "")).unwrap();
    let (server, addr) = start(&path, true).await;
    assert!(server.listener_addr("extra").is_none());

    std::fs::write(&path, routed_to(a.addr, "2", &extra_listener("extra", 0))).unwrap();
    wait_generation(&server, 2).await;
    // Listeners are started and stopped just after the snapshot swap the generation shows.
    support::eventually("extra is bound", || server.listener_addr("extra").is_some()).await;
    let extra = server.listener_addr("extra").expect("extra is bound");
    let mut kept = Client::connect(extra).await;
    assert_eq!(kept.get("x", "/").await.text(), "a");
    // The unchanged listener kept its socket and port.
    assert_eq!(server.listener_addr("test"), Some(addr));

    std::fs::write(&path, routed_to(a.addr, "3", "")).unwrap();
    wait_generation(&server, 3).await;
    support::eventually("extra is unbound", || {
        server.listener_addr("extra").is_none()
    })
    .await;
    let deadline = Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(extra).await.is_ok() {
        assert!(Instant::now() < deadline, "{extra} still accepts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(support::get(addr, "/").await.text(), "a");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_bind_fails_the_whole_reload_and_closes_what_it_bound() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = TempDir::new("bind-fails");
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, routed_to(a.addr, "1", "")).unwrap();
    let (server, addr) = start(&path, false).await;

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let good = support::free_port();
    let listeners = extra_listener("good", good) + &extra_listener("busy", busy);
    std::fs::write(&path, routed_to(b.addr, "2", &listeners)).unwrap();
    let err = server.reloader().reload(Trigger::Admin).await.unwrap_err();
    let message = switchyard::error_chain(&err);
    // Positioned at the listener's `bind`, as the config errors of a reload are.
    let at = format!("{}:7:11: listener \"busy\": cannot bind", path.display());
    assert!(message.starts_with(&at), "{message}");
    assert_eq!(server.shared().snapshot().generation, 1);
    assert_eq!(support::get(addr, "/").await.text(), "a");
    assert!(server.listener_addr("good").is_none());
    let good_addr: SocketAddr = ([127, 0, 0, 1], good).into();
    assert!(tokio::net::TcpStream::connect(good_addr).await.is_err());
    assert!(!server.reloader().status().ok);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_keep_alive_load_fail_no_request() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = TempDir::new("load");
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, routed_to(a.addr, "0", "")).unwrap();
    let (server, addr) = start(&path, true).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let (mut ok, mut failed) = (0usize, Vec::new());
            let deadline = Instant::now() + DEADLINE;
            // Bounded in count and time, whatever happens to the reloads.
            while !stop.load(Ordering::Relaxed) && ok < 200_000 && Instant::now() < deadline {
                let reply = client.get("x", "/").await;
                match (reply.status.as_u16(), reply.text().as_str()) {
                    (200, "a" | "b") => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        }));
    }
    for i in 1..=20u64 {
        let backend = if i % 2 == 1 { b.addr } else { a.addr };
        let text = routed_to(backend, &i.to_string(), "");
        if i % 2 == 0 {
            std::fs::write(&path, text).unwrap();
        } else {
            write_and_rename(&path, &text);
        }
        wait_generation(&server, i + 1).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut total, mut failures) = (0, Vec::new());
    for client in clients {
        let (ok, failed) = client.await.unwrap();
        total += ok;
        failures.extend(failed);
    }
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(total > 100, "only {total} requests");
    let status = server.reloader().status();
    assert_eq!((status.generation, status.reloads_error), (21, 0));
    assert!(a.requests() > 0 && b.requests() > 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reloads_run_one_at_a_time_and_bump_by_one_each() {
    let a = Backend::start("a").await;
    let dir = TempDir::new("concurrent");
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, routed_to(a.addr, "1", "")).unwrap();
    let (server, _) = start(&path, false).await;
    std::fs::write(&path, routed_to(a.addr, "2", "")).unwrap();
    let reloads = (0..4).map(|_| {
        let reloader = server.reloader().clone();
        tokio::spawn(async move { reloader.reload(Trigger::Admin).await.unwrap() })
    });
    let mut generations = Vec::new();
    for reload in reloads.collect::<Vec<_>>() {
        generations.push(reload.await.unwrap());
    }
    // One after another, each swapping in its own generation.
    generations.sort_unstable();
    assert_eq!(generations, [2, 3, 4, 5]);
    let status = server.reloader().status();
    assert_eq!((status.reloads_ok, status.generation), (4, 5));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_marks_the_proxy_draining_and_refuses_reloads() {
    let a = Backend::start("a").await;
    let dir = TempDir::new("draining");
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, routed_to(a.addr, "1", "")).unwrap();
    let (server, _) = start(&path, true).await;
    let reloader = server.reloader().clone();
    assert!(!server.is_draining());
    server.shutdown().await;
    assert!(reloader.is_draining());
    let err = reloader.reload(Trigger::Admin).await;
    assert!(matches!(err, Err(ReloadError::Draining)), "{err:?}");
}

/// `routed_to` with `max_connections` on the `test` listener.
fn with_max_connections(backend: SocketAddr, max: usize) -> String {
    routed_to(backend, &max.to_string(), "").replace(
        "    bind: \"127.0.0.1:0\"\n",
        &format!("    bind: \"127.0.0.1:0\"\n    limits: {{ max_connections: {max} }}\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_resizes_max_connections_without_rebinding() {
    let a = Backend::start("a").await;
    let dir = TempDir::new("max-connections");
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, with_max_connections(a.addr, 1)).unwrap();
    let (server, addr) = start(&path, false).await;
    let mut first = Client::connect(addr).await;
    assert_eq!(first.get("x", "/").await.text(), "a");
    let second = tokio::spawn(async move { support::get(addr, "/").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "served past max_connections: 1");

    // Raised while the only permit is taken: the waiting client gets in at once.
    std::fs::write(&path, with_max_connections(a.addr, 2)).unwrap();
    assert_eq!(server.reloader().reload(Trigger::Admin).await.unwrap(), 2);
    let reply = tokio::time::timeout(DEADLINE, second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(server.listener_addr("test"), Some(addr));

    // Lowered back to 1 with `first` still open: the next client waits until it closes.
    std::fs::write(&path, with_max_connections(a.addr, 1)).unwrap();
    assert_eq!(server.reloader().reload(Trigger::Admin).await.unwrap(), 3);
    assert_eq!(first.get("x", "/").await.text(), "a");
    let third = tokio::spawn(async move { support::get(addr, "/").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "served past the lowered max_connections: 1"
    );
    drop(first);
    let reply = tokio::time::timeout(DEADLINE, third)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200);
    server.shutdown().await;
}

// --- Reloads through the admin API, with a real file ---

/// A config file's text: listener `listener` on 127.0.0.1:0, an admin API on 127.0.0.1:0
/// (with `token` if given), access log off, then `routes_and_pools`.
pub fn with_admin(listener: &str, token: Option<&str>, routes_and_pools: &str) -> String {
    let token = token.map_or(String::new(), |t| format!("  token: \"{t}\"\n"));
    format!(
        "listeners:\n  - name: {listener}\n    bind: \"127.0.0.1:0\"\n\
         admin:\n  bind: \"127.0.0.1:0\"\n{token}access_log: off\n{routes_and_pools}"
    )
}

/// Starts a proxy from the file at `path` (no watching: only explicit reloads apply it);
/// returns it with the address of its listener `listener` and of its admin API.
pub async fn start_file(path: &Path, listener: &str) -> (Server, SocketAddr, SocketAddr) {
    let config = switchyard::config::load(path).unwrap_or_else(|e| panic!("invalid:\n{e}"));
    let options = ServerOptions {
        config_path: Some(path.to_owned()),
        drain: Duration::from_secs(5),
        watch: false,
    };
    let server = Server::start_with(config, options).await.unwrap();
    let addr = server.listener_addr(listener).unwrap();
    let admin = server.admin_addr().unwrap();
    (server, addr, admin)
}

/// `POST /reload` on the admin API with `token`.
pub async fn post_reload(admin: SocketAddr, token: Option<&str>) -> support::Reply {
    crate::admin::call(admin, http::Method::POST, "/reload", "", token).await
}

/// One route `route` (every path) to pool `pool` over `backends`.
/// Writes a config with an admin API on `listener` and `route` to `pool` over `backends`.
fn write_routed(
    path: &std::path::Path,
    listener: &str,
    route: &str,
    pool: &str,
    backends: &[SocketAddr],
) {
    std::fs::write(
        path,
        with_admin(listener, None, &route_to(route, pool, backends)),
    )
    .unwrap();
}

/// Registers an instance through `PUT {target}` (`/registry/POOL/ADDR`) with `body`.
async fn register(admin: SocketAddr, target: &str, body: &str) {
    let put = crate::admin::call(admin, http::Method::PUT, target, body, None).await;
    assert_eq!(put.status, http::StatusCode::CREATED, "{}", put.text());
}

fn route_to(route: &str, pool: &str, backends: &[SocketAddr]) -> String {
    let ups: String = backends
        .iter()
        .map(|b| format!("      - {{ addr: \"{b}\" }}\n"))
        .collect();
    format!("routes:\n  - name: {route}\n    pool: {pool}\npools:\n  - name: {pool}\n    upstreams:\n{ups}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_refuses_a_bad_file_with_its_position_and_applies_a_good_one() {
    use crate::admin::get_json;
    use crate::metrics::value;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = TempDir::new("admin-reload");
    let path = dir.join("proxy.yaml");
    let (listener, token) = ("l-admin-reload", Some("s3cret"));
    let file = |route: &str, pool: &str, to: SocketAddr| {
        with_admin(listener, token, &route_to(route, "p", &[to]))
            .replace("    pool: p\npools", &format!("    pool: {pool}\npools"))
    };
    std::fs::write(&path, file("ar-1", "p", a.addr)).unwrap();
    let (server, addr, admin) = start_file(&path, listener).await;
    assert_eq!(support::get(addr, "/").await.text(), "a");
    let generation = || value(admin, "switchyard_config_generation", &[]);
    let reloads = |result: &'static str| async move {
        value(
            admin,
            "switchyard_config_reloads_total",
            &[("result", result)],
        )
        .await
    };
    assert_eq!(generation().await, Some(1.0));

    // Without the token, or with a wrong one: 401, and nothing is reloaded.
    std::fs::write(&path, file("ar-2", "p", b.addr)).unwrap();
    for wrong in [None, Some("s3cret2"), Some("S3CRET")] {
        let reply = post_reload(admin, wrong).await;
        assert_eq!(reply.status, http::StatusCode::UNAUTHORIZED, "{wrong:?}");
    }
    assert_eq!(server.reloader().status().reloads_error, 0);
    assert_eq!(server.reloader().status().reloads_ok, 0);
    assert_eq!(support::get(addr, "/").await.text(), "a");

    // A file naming a pool that does not exist: 422 with the position, the old config stays.
    std::fs::write(&path, file("ar-2", "nope", b.addr)).unwrap();
    let reply = post_reload(admin, token).await;
    assert_eq!(reply.status, http::StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("proxy.yaml:10:11: unknown pool \"nope\""),
        "{error}"
    );
    let config = get_json(admin, "/config").await;
    assert_eq!(config["generation"], 1);
    assert_eq!(config["last_reload"]["ok"], false);
    assert_eq!(config["last_reload"]["error"], error);
    assert_eq!(config["config"]["routes"][0]["name"], "ar-1");
    assert_eq!(reloads("error").await, Some(1.0));
    assert_eq!(reloads("ok").await, Some(0.0));
    assert_eq!(generation().await, Some(1.0));
    assert_eq!(support::get(addr, "/").await.text(), "a");

    // A good file: 200 with the new generation, the new route serves and is counted.
    std::fs::write(&path, file("ar-2", "p", b.addr)).unwrap();
    let reply = post_reload(admin, token).await;
    assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body, serde_json::json!({ "generation": 2 }));
    assert_eq!(support::get(addr, "/").await.text(), "b");
    let config = get_json(admin, "/config").await;
    assert_eq!(config["generation"], 2);
    assert_eq!(config["last_reload"]["ok"], true);
    assert_eq!(config["last_reload"]["error"], serde_json::Value::Null);
    assert_eq!(generation().await, Some(2.0));
    assert_eq!(reloads("ok").await, Some(1.0));
    assert_eq!(reloads("error").await, Some(1.0));
    let requests = |route: &'static str| async move {
        let labels = [
            ("listener", listener),
            ("route", route),
            ("pool", "p"),
            ("code", "200"),
        ];
        value(admin, "switchyard_requests_total", &labels).await
    };
    assert_eq!(requests("ar-2").await, Some(1.0));
    assert_eq!(
        requests("ar-1").await,
        Some(3.0),
        "the old route's series stays"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_entries_survive_a_file_reload_and_go_with_their_pool() {
    use crate::admin::{get_json, upstreams};
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = TempDir::new("registry-reload");
    let path = dir.join("proxy.yaml");
    let listener = "l-registry-reload";
    write_routed(&path, listener, "rr-1", "keep", &[a.addr]);
    let (server, addr, admin) = start_file(&path, listener).await;
    register(
        admin,
        &format!("/registry/keep/{}", b.addr),
        r#"{"ttl": "1h"}"#,
    )
    .await;
    let registered = server.shared().snapshot().pool("keep").unwrap().upstreams()[1].clone();

    // A reload that keeps the pool (only the route is renamed) keeps the entry.
    write_routed(&path, listener, "rr-2", "keep", &[a.addr]);
    let reply = post_reload(admin, None).await;
    assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
    let instances = get_json(admin, "/registry").await["instances"].clone();
    assert_eq!(instances.as_array().unwrap().len(), 1, "{instances}");
    assert_eq!(instances[0]["addr"], b.addr.to_string());
    let ups = upstreams(admin, "keep").await;
    assert_eq!(ups.len(), 2);
    assert_eq!(ups[1]["addr"], b.addr.to_string());
    assert_eq!(ups[1]["source"], "registry");
    let after = server.shared().snapshot();
    assert!(
        Arc::ptr_eq(&after.pool("keep").unwrap().upstreams()[1], &registered),
        "the same upstream, with its state"
    );
    let mut client = Client::connect(addr).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(client.get("x", "/").await.text());
    }
    assert_eq!(seen.iter().filter(|s| *s == "b").count(), 2, "{seen:?}");

    // A new protocol keeps the entry, as a fresh upstream: the pooled connections it had
    // speak HTTP/1.1 (review of this round: only the file's upstreams started afresh).
    let text = std::fs::read_to_string(&path).unwrap();
    let h2 = text.replace("  - name: keep\n", "  - name: keep\n    protocol: h2\n");
    assert_ne!(text, h2);
    std::fs::write(&path, h2).unwrap();
    assert_eq!(post_reload(admin, None).await.status, http::StatusCode::OK);
    let moved = server.shared().snapshot().pool("keep").unwrap().upstreams()[1].clone();
    assert_eq!((moved.addr, moved.source), (b.addr, Source::Registry));
    assert!(!moved.same_instance(&registered), "a fresh upstream");
    let instances = get_json(admin, "/registry").await["instances"].clone();
    assert_eq!(instances.as_array().unwrap().len(), 1, "{instances}");

    // A reload without the pool drops its entries; the instance gets no more traffic.
    write_routed(&path, listener, "rr-3", "other", &[a.addr]);
    let reply = post_reload(admin, None).await;
    assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
    assert_eq!(
        get_json(admin, "/registry").await["instances"],
        serde_json::json!([])
    );
    assert_eq!(upstreams(admin, "other").await.len(), 1);
    let served = b.requests();
    for _ in 0..4 {
        assert_eq!(client.get("x", "/").await.text(), "a");
    }
    assert_eq!(b.requests(), served);
    // Bringing the pool back does not bring the entry back.
    write_routed(&path, listener, "rr-4", "keep", &[a.addr]);
    assert_eq!(post_reload(admin, None).await.status, http::StatusCode::OK);
    assert_eq!(upstreams(admin, "keep").await.len(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_instance_the_file_then_lists_is_kept_once() {
    use crate::admin::{get_json, upstreams};
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = TempDir::new("registry-static");
    let path = dir.join("proxy.yaml");
    let listener = "l-registry-static";
    write_routed(&path, listener, "rs-1", "p", &[a.addr]);
    let (server, addr, admin) = start_file(&path, listener).await;
    register(admin, &format!("/registry/p/{}", b.addr), "").await;

    let both = route_to("rs-2", "p", &[a.addr, b.addr]);
    std::fs::write(&path, with_admin(listener, None, &both)).unwrap();
    assert_eq!(post_reload(admin, None).await.status, http::StatusCode::OK);
    let ups = upstreams(admin, "p").await;
    let sources: Vec<_> = ups
        .iter()
        .map(|u| (u["addr"].clone(), u["source"].clone()))
        .collect();
    assert_eq!(
        sources,
        [
            (a.addr.to_string().into(), "static".into()),
            (b.addr.to_string().into(), "static".into())
        ]
    );
    assert_eq!(
        get_json(admin, "/registry").await["instances"],
        serde_json::json!([])
    );
    let mut client = Client::connect(addr).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(client.get("x", "/").await.text());
    }
    assert_eq!(seen.iter().filter(|s| *s == "b").count(), 2, "{seen:?}");
    server.shutdown().await;
}
