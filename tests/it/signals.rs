//! Signals through the real binary: SIGHUP reloads, a second SIGTERM exits at once.
//! (SIGTERM letting a slow request finish is in `cli.rs`.)

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::reload::routed_to;
use crate::support::TempDir;
use crate::support::{self, Backend, DEADLINE};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A proxy process, killed on drop if the test did not wait for it.
struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Proxy {
    /// Runs the binary on `path` (whose listener `test` binds `port`) until it accepts.
    async fn spawn(path: &Path, port: u16, args: &[&str]) -> Proxy {
        let child = Command::new(BIN)
            .arg("--config")
            .arg(path)
            .args(["--workers", "1"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let proxy = Proxy { child, addr };
        let deadline = Instant::now() + DEADLINE;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "proxy did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits for the process to exit; returns its status code and how long that took.
    async fn wait(mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            assert!(started.elapsed() < DEADLINE, "proxy did not exit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = TempDir::new("sighup");
    let path = dir.join("proxy.yaml");
    let port = support::free_port();
    let with_port = |text: String| text.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&path, with_port(routed_to(a.addr, "1", ""))).unwrap();
    // No file watching: only the signal can apply the change.
    let proxy = Proxy::spawn(&path, port, &["--no-watch"]).await;
    assert_eq!(support::get(proxy.addr, "/").await.text(), "a");

    std::fs::write(&path, with_port(routed_to(b.addr, "2", ""))).unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + DEADLINE;
    while support::get(proxy.addr, "/").await.text() != "b" {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Still running after the reload, and a SIGTERM still stops it cleanly.
    proxy.signal("TERM");
    assert_eq!(proxy.wait().await.0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once_without_waiting_for_the_drain() {
    let a = Backend::start("a").await;
    let dir = TempDir::new("second-signal");
    let path = dir.join("proxy.yaml");
    let port = support::free_port();
    let text = routed_to(a.addr, "1", "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&path, text).unwrap();
    let proxy = Proxy::spawn(&path, port, &["--drain-timeout", "60s"]).await;
    // A request that would hold the drain for 30 s.
    let slow = tokio::spawn(support::get(proxy.addr, "/slow/30000"));
    support::eventually("the slow request to reach the backend", || {
        a.requests() == 1
    })
    .await;

    proxy.signal("TERM");
    // The first signal was handled once the listener stops accepting.
    let deadline = Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(proxy.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.signal("TERM");
    let (code, took) = proxy.wait().await;
    assert_eq!(code, Some(130));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    slow.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_200_after_start_and_503_while_a_sigterm_drains_then_the_process_exits_0() {
    let a = Backend::start("a").await;
    let dir = TempDir::new("ready-drain");
    let path = dir.join("proxy.yaml");
    let (port, admin_port) = (support::free_port(), support::free_port());
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let text = routed_to(a.addr, "1", "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        .replace(
            "access_log: off\n",
            &format!("access_log: off\nadmin:\n  bind: \"{admin}\"\n"),
        );
    std::fs::write(&path, text).unwrap();
    let proxy = Proxy::spawn(&path, port, &["--drain-timeout", "10s"]).await;
    // The admin API starts last: once it answers, `/ready` must be 200.
    let deadline = Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(admin).await.is_err() {
        assert!(Instant::now() < deadline, "admin API did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = crate::admin::get(admin, "/ready").await;
    assert_eq!(
        (ready.status.as_u16(), ready.text().as_str()),
        (200, "ready\n")
    );

    // A slow request in flight holds the drain open while we look at `/ready`.
    let slow = tokio::spawn(support::get(proxy.addr, "/slow/1500"));
    support::eventually("the slow request to reach the backend", || {
        a.requests() == 1
    })
    .await;
    proxy.signal("TERM");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ready = crate::admin::get(admin, "/ready").await;
        if ready.status == 503 {
            assert_eq!(ready.text(), "draining\n");
            break;
        }
        assert_eq!(ready.status, 200);
        assert!(Instant::now() < deadline, "/ready never said 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(crate::admin::get(admin, "/healthz").await.status, 200);
    let reply = tokio::time::timeout(DEADLINE, slow).await.unwrap().unwrap();
    assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "a"));
    assert_eq!(proxy.wait().await.0, Some(0));
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "admin closed"
    );
}
