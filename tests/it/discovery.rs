//! Discovery end to end: hostname upstreams resolved by the system resolver, and a real
//! `etcd` (Debian package `etcd-server`) started per test on 127.0.0.1 ephemeral ports, fed
//! through its JSON gateway, with real traffic through the proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use switchyard::reload::Trigger;
use switchyard::{Server, ServerOptions};
use tokio::net::TcpStream;

use crate::admin::{get_json, pool_view, until, upstreams};
use crate::support::TempDir;
use crate::support::{config, free_port, Backend, Client, Proxy, DEADLINE};

/// Where Debian's `etcd-server` installs the binary.
const ETCD: &str = "/usr/bin/etcd";

/// A private etcd on 127.0.0.1 ephemeral ports with a temp data dir; killed (by PID) on drop.
struct Etcd {
    child: Child,
    client: SocketAddr,
    dir: TempDir,
}

impl Etcd {
    /// Starts etcd and waits until it answers `/health`.
    async fn start() -> Etcd {
        let binary = find_etcd().unwrap_or_else(|| {
            panic!(
                "etcd binary not found ({ETCD} or on PATH): install the Debian package \
                 etcd-server (`apt-get install -y etcd-server`) to run the etcd discovery tests"
            )
        });
        let dir = TempDir::new("etcd");
        let (client_port, peer_port) = (free_port(), free_port());
        let client = SocketAddr::from(([127, 0, 0, 1], client_port));
        let client_url = format!("http://{client}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new(binary)
            .args(["--name", "test", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        let mut etcd = Etcd { child, client, dir };
        etcd.wait_ready().await;
        etcd
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some((status, body)) = try_call(self.client, Method::GET, "/health", "").await {
                if status == StatusCode::OK && body.contains("true") {
                    return;
                }
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
                panic!("etcd exited ({exit}) before it was ready:\n{log}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd not ready within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    /// Sets `key` to `value` through the JSON gateway.
    async fn put(&self, key: &str, value: &str) {
        let body = serde_json::json!({"key": BASE64.encode(key), "value": BASE64.encode(value)});
        self.call("/v3/kv/put", body).await;
    }

    /// Deletes `key`.
    async fn delete(&self, key: &str) {
        let body = serde_json::json!({"key": BASE64.encode(key)});
        self.call("/v3/kv/deleterange", body).await;
    }

    async fn call(&self, path: &str, body: Value) {
        let (status, text) = try_call(self.client, Method::POST, path, &body.to_string())
            .await
            .unwrap_or_else(|| panic!("etcd {path}: no answer"));
        assert_eq!(status, StatusCode::OK, "etcd {path}: {text}");
    }

    /// Kills etcd (by PID) and waits for it to exit.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn find_etcd() -> Option<PathBuf> {
    let installed = PathBuf::from(ETCD);
    if installed.is_file() {
        return Some(installed);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("etcd"))
        .find(|path| path.is_file())
}

/// One request on a fresh connection; `None` when the connection fails.
async fn try_call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
) -> Option<(StatusCode, String)> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .ok()?
        .ok()?;
    let status = response.status();
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&bytes).into_owned()))
}

fn instance(addr: SocketAddr, weight: u32) -> String {
    format!(r#"{{"addr": "{addr}", "weight": {weight}}}"#)
}

/// A route to pool `p` filled by etcd under `/svc/api/`, with `extra` pool keys.
fn etcd_pool(etcd: &Etcd, strategy: &str, extra: &str) -> String {
    format!(
        "routes:\n  - name: r\n    pool: p\npools:\n  - name: p\n    strategy: {strategy}\n    \
         discovery: {{ etcd: {{ endpoints: [\"{}\"], prefix: \"/svc/api/\" }} }}\n{extra}",
        etcd.url()
    )
}

/// The (addr, source) pairs of pool `p` in `/pools`, sorted.
async fn members(admin: SocketAddr) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = upstreams(admin, "p")
        .await
        .iter()
        .map(|u| {
            let field = |k: &str| u[k].as_str().unwrap_or_default().to_owned();
            (field("addr"), field("source"))
        })
        .collect();
    found.sort();
    found
}

fn etcd_members(addrs: &[SocketAddr]) -> Vec<(String, String)> {
    let mut want: Vec<(String, String)> = addrs
        .iter()
        .map(|a| (a.to_string(), "etcd".to_owned()))
        .collect();
    want.sort();
    want
}

async fn wait_members(admin: SocketAddr, addrs: &[SocketAddr]) {
    let want = etcd_members(addrs);
    until(&format!("pool p to hold {want:?}"), || {
        let want = want.clone();
        async move { members(admin).await == want }
    })
    .await;
}

#[tokio::test]
async fn hostname_upstreams_are_dns_members_that_take_traffic() {
    let backend = Backend::start("resolved").await;
    let port = backend.addr.port();
    let yaml = config(&format!(
        "admin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - name: r\n    pool: p\npools:\n  - name: p\n    \
         dns_refresh: 200ms\n    upstreams:\n      - {{ addr: \"localhost:{port}\" }}\n"
    ));
    let proxy = Proxy::start(&yaml).await;
    let admin = proxy.server.admin_addr().unwrap();
    assert_eq!(proxy.server.shared().discovery.len(), 1, "one DNS task");
    // localhost may also resolve to ::1, where nothing listens: a refused connect is retried
    // on the other address, so every request still reaches the backend.
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..6 {
        let reply = client.get("x", "/").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "resolved");
    }
    let listed = members(admin).await;
    let v4 = (format!("127.0.0.1:{port}"), "dns".to_owned());
    assert!(listed.contains(&v4), "{listed:?}");
    assert!(
        listed.iter().all(|(_, source)| source == "dns"),
        "{listed:?}"
    );
    // Refresh rounds come and go; the resolved upstream stays the same one.
    let shared = proxy.server.shared().clone();
    let first = shared.snapshot().pool("p").unwrap().upstreams();
    until("two refresh rounds", || async {
        shared.discovery.rounds("p") >= 2
    })
    .await;
    let later = shared.snapshot().pool("p").unwrap().upstreams();
    assert_eq!(first.len(), later.len());
    assert!(first
        .iter()
        .zip(later.iter())
        .all(|(a, b)| Arc::ptr_eq(a, b)));
    assert_eq!(shared.discovery.failures("p"), 0);
}

#[tokio::test]
async fn etcd_instances_join_with_their_weight_and_leave_when_deleted() {
    let etcd = Etcd::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    etcd.put("/svc/api/a", &instance(a.addr, 1)).await;
    etcd.put("/svc/api/b", &instance(b.addr, 3)).await;
    etcd.put("/svc/api/bad-json", "not json").await;
    etcd.put("/svc/api/bad-weight", &instance(c.addr, 0)).await;
    etcd.put("/svc/api-other/c", &instance(c.addr, 1)).await;
    let (proxy, admin) = crate::admin::start(None, &etcd_pool(&etcd, "weighted", "")).await;
    wait_members(admin, &[a.addr, b.addr]).await;

    // Weighted 1:3 over every window of four requests.
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..8 {
        assert_eq!(client.get("x", "/").await.status, StatusCode::OK);
    }
    assert_eq!((a.requests(), b.requests(), c.requests()), (2, 6, 0));

    // A deleted key leaves rotation; a new key joins through the watch.
    etcd.delete("/svc/api/b").await;
    wait_members(admin, &[a.addr]).await;
    for _ in 0..3 {
        assert_eq!(client.get("x", "/").await.text(), "a");
    }
    etcd.put("/svc/api/c", &instance(c.addr, 1)).await;
    wait_members(admin, &[a.addr, c.addr]).await;

    // A key whose value turns bad is no instance any more.
    etcd.put("/svc/api/c", r#"{"addr": "not an address"}"#)
        .await;
    wait_members(admin, &[a.addr]).await;

    // Emptied by discovery: 503 like any pool without a healthy upstream.
    etcd.delete("/svc/api/a").await;
    wait_members(admin, &[]).await;
    let reply = client.get("x", "/").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(pool_view(admin, "p").await["healthy"], 0);
}

/// The pool of [`etcd_pool`] with active checks, in a file-backed proxy config; `tag` names
/// the route so that two configs differ, `prefix` is the etcd prefix.
/// The first endpoint is `dead`, a port nothing listens on.
fn file_config(etcd: &Etcd, dead: u16, tag: &str, prefix: &str) -> String {
    config(&format!(
        "routes:\n  - name: r-{tag}\n    pool: p\npools:\n  - name: p\n    \
         discovery: {{ etcd: {{ endpoints: [\"http://127.0.0.1:{dead}\", \"{}\"], prefix: \"{prefix}\" }} }}\n    \
         health_check: {{ path: /, interval: 100ms }}\n",
        etcd.url()
    ))
}

#[tokio::test]
async fn etcd_down_keeps_the_last_instances_and_a_reload_keeps_them_too() {
    let mut etcd = Etcd::start().await;
    let a = Backend::start("a").await;
    etcd.put("/svc/api/a", &instance(a.addr, 1)).await;
    let dir = TempDir::new("etcd-reload");
    let path = dir.join("proxy.yaml");
    let dead = free_port();
    // The first endpoint refuses connections: the watcher moves on to the second.
    std::fs::write(&path, file_config(&etcd, dead, "1", "/svc/api/")).unwrap();
    let cfg = switchyard::config::load(&path).unwrap_or_else(|e| panic!("invalid:\n{e}"));
    let options = ServerOptions {
        config_path: Some(path.clone()),
        drain: Duration::from_secs(5),
        watch: false,
    };
    let server = Server::start_with(cfg, options).await.unwrap();
    let listener = server.listener_addr("test").unwrap();
    let shared = server.shared().clone();
    let discovered = || {
        let pool = shared.snapshot().pool("p").map(|p| p.upstreams());
        pool.and_then(|u| u.first().cloned())
    };
    until("a discovered and checked", || async {
        discovered().is_some_and(|u| u.addr == a.addr && u.health().last_check.is_some())
    })
    .await;
    let upstream = discovered().unwrap();

    etcd.stop();
    until("the watcher to notice etcd is gone", || async {
        shared.discovery.failures("p") >= 1
    })
    .await;
    let mut client = Client::connect(listener).await;
    assert_eq!(client.get("x", "/").await.text(), "a");

    // A reload with the same discovery settings keeps the instances (etcd is still down, so
    // they can only come from what was known), as the same upstream.
    std::fs::write(&path, file_config(&etcd, dead, "2", "/svc/api/")).unwrap();
    let generation = server.reloader().reload(Trigger::Signal).await.unwrap();
    assert_eq!(generation, 2);
    let kept = discovered().expect("still a member");
    assert!(
        Arc::ptr_eq(&kept, &upstream),
        "same Arc<Upstream> across the reload"
    );
    assert_eq!(client.get("x", "/").await.text(), "a");

    // Other endpoints, the same prefix: the same service, reached another way. Its
    // instances stay (still the same upstream) until the new watcher lists them; with etcd
    // down, that is not yet. Audit A-F1: they were dropped, and the pool answered 503.
    let moved = file_config(&etcd, dead, "3", "/svc/api/")
        .replace(&format!("\"http://127.0.0.1:{dead}\", "), "");
    assert!(!moved.contains(&dead.to_string()), "{moved}");
    std::fs::write(&path, moved).unwrap();
    server.reloader().reload(Trigger::Signal).await.unwrap();
    let kept = discovered().expect("still a member");
    assert!(
        kept.same_instance(&upstream),
        "state kept across the endpoint change"
    );
    assert_eq!(client.get("x", "/").await.text(), "a");

    // A new prefix is another service: the old instances go, the new watcher starts empty.
    std::fs::write(&path, file_config(&etcd, dead, "4", "/svc/other/")).unwrap();
    server.reloader().reload(Trigger::Signal).await.unwrap();
    assert!(discovered().is_none());
    assert_eq!(
        client.get("x", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    server.shutdown().await;
}

#[tokio::test]
async fn pools_lists_dns_and_etcd_sources_beside_static_and_registry() {
    let etcd = Etcd::start().await;
    let (s, d, e, r) = (
        Backend::start("s").await,
        Backend::start("d").await,
        Backend::start("e").await,
        Backend::start("r").await,
    );
    etcd.put("/svc/api/e", &instance(e.addr, 1)).await;
    let extra = format!(
        "    upstreams:\n      - {{ addr: \"{}\" }}\n      - {{ addr: \"localhost:{}\" }}\n",
        s.addr,
        d.addr.port()
    );
    let (proxy, admin) = crate::admin::start(None, &etcd_pool(&etcd, "round_robin", &extra)).await;
    register(admin, r.addr).await;
    until("the etcd instance", || async {
        members(admin).await.iter().any(|(_, src)| src == "etcd")
    })
    .await;
    let listed = members(admin).await;
    for (addr, source) in [
        (s.addr, "static"),
        (d.addr, "dns"),
        (e.addr, "etcd"),
        (r.addr, "registry"),
    ] {
        assert!(
            listed.contains(&(addr.to_string(), source.to_owned())),
            "{addr} {source} in {listed:?}"
        );
    }
    let pools = get_json(admin, "/pools").await;
    assert_eq!(pools["pools"][0]["name"], "p");
    drop(proxy);
}

/// Registers `addr` in pool `p` through the admin API.
async fn register(admin: SocketAddr, addr: SocketAddr) {
    let put =
        crate::admin::call(admin, Method::PUT, &format!("/registry/p/{addr}"), "", None).await;
    assert_eq!(put.status, StatusCode::CREATED, "registering {addr}");
}

/// The (addr, source) pairs of pool `p` in `/pools` that are `addr`.
async fn listed_as(admin: SocketAddr, addr: SocketAddr) -> Vec<String> {
    members(admin)
        .await
        .into_iter()
        .filter(|(a, _)| *a == addr.to_string())
        .map(|(_, source)| source)
        .collect()
}

#[tokio::test]
async fn an_address_from_two_sources_is_one_member() {
    let etcd = Etcd::start().await;
    let (s, e, r) = (
        Backend::start("s").await,
        Backend::start("e").await,
        Backend::start("r").await,
    );
    let extra = format!("    upstreams:\n      - {{ addr: \"{}\" }}\n", s.addr);
    let (proxy, admin) = crate::admin::start(None, &etcd_pool(&etcd, "round_robin", &extra)).await;
    register(admin, r.addr).await;
    // etcd also lists the file's address and the registered one.
    etcd.put("/svc/api/e", &instance(e.addr, 1)).await;
    etcd.put("/svc/api/s", &instance(s.addr, 1)).await;
    etcd.put("/svc/api/r", &instance(r.addr, 1)).await;
    until("the etcd instance", || async {
        listed_as(admin, e.addr).await == ["etcd"]
    })
    .await;
    until("r listed once, as etcd's", || async {
        listed_as(admin, r.addr).await == ["etcd"]
    })
    .await;
    assert_eq!(listed_as(admin, s.addr).await, ["static"]);
    assert_eq!(members(admin).await.len(), 3);

    // Round robin over three members: each address gets its share, not two.
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..6 {
        assert_eq!(client.get("x", "/").await.status, StatusCode::OK);
    }
    assert_eq!((s.requests(), e.requests(), r.requests()), (2, 2, 2));

    // Once etcd drops it, the registered instance is back.
    etcd.delete("/svc/api/r").await;
    until("r back as registered", || async {
        listed_as(admin, r.addr).await == ["registry"]
    })
    .await;
}
