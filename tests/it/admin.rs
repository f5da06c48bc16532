//! The admin API (SPEC section 8): every endpoint's status and JSON, the runtime registry,
//! bearer tokens, `/ready` while draining, and the dashboard page.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{config, eventually, Backend, Client, Proxy, Reply, DEADLINE};

/// A proxy whose admin API listens on 127.0.0.1:0, with `token` if given.
pub async fn start(token: Option<&str>, routes_and_pools: &str) -> (Proxy, SocketAddr) {
    let token = token.map_or(String::new(), |t| format!("\n  token: \"{t}\""));
    let yaml = config(&format!(
        "admin:\n  bind: \"127.0.0.1:0\"{token}\n{routes_and_pools}"
    ));
    let proxy = Proxy::start(&yaml).await;
    let admin = proxy.server.admin_addr().expect("admin is configured");
    (proxy, admin)
}

/// One admin request on a fresh connection.
pub async fn call(
    admin: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin.local");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    Client::connect(admin).await.send(req).await
}

/// GET `path` on the admin API.
pub async fn get(admin: SocketAddr, path: &str) -> Reply {
    call(admin, Method::GET, path, "", None).await
}

/// GET `path` on the admin API, expecting `200` and a JSON body.
pub async fn get_json(admin: SocketAddr, path: &str) -> Value {
    let reply = get(admin, path).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
    assert_eq!(reply.header("content-type"), "application/json");
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The upstreams of `pool` in `/pools`.
pub async fn upstreams(admin: SocketAddr, pool: &str) -> Vec<Value> {
    let pools = get_json(admin, "/pools").await;
    let pools = pools["pools"].as_array().unwrap();
    let pool = pools.iter().find(|p| p["name"] == pool).unwrap();
    pool["upstreams"].as_array().unwrap().clone()
}

/// Polls the async `check` until it returns true or [`DEADLINE`] passes (for conditions
/// read over the network, which `support::eventually` cannot await).
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The upstream `addr` of `pool` in `/pools`.
pub async fn upstream_view(admin: SocketAddr, pool: &str, addr: SocketAddr) -> Value {
    let addr = addr.to_string();
    let found = upstreams(admin, pool)
        .await
        .into_iter()
        .find(|u| u["addr"] == addr.as_str());
    found.unwrap_or_else(|| panic!("{addr} is not in pool {pool}"))
}

/// The pool `pool` of `/pools`.
pub async fn pool_view(admin: SocketAddr, pool: &str) -> Value {
    let pools = get_json(admin, "/pools").await;
    let found = pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .cloned();
    found.unwrap_or_else(|| panic!("no pool {pool} in /pools"))
}

fn one_pool(name: &str, backends: &[&Backend]) -> String {
    let ups: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ addr: \"{}\" }}", b.addr))
        .collect();
    format!(
        "routes:\n  - name: {name}\n    pool: {name}\n\
         pools:\n  - name: {name}\n    upstreams: [{}]\n",
        ups.join(", ")
    )
}

#[tokio::test]
async fn every_endpoint_answers_with_its_status_and_fields() {
    let a = Backend::start("a").await;
    let (_proxy, admin) = start(None, &one_pool("ep", &[&a])).await;

    let health = get(admin, "/healthz").await;
    assert_eq!(
        (health.status, health.text().as_str()),
        (StatusCode::OK, "ok\n")
    );
    assert_eq!(get(admin, "/ready").await.status, StatusCode::OK);

    let config = get_json(admin, "/config").await;
    let keys: Vec<&String> = config.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["config", "generation", "last_reload"]);
    assert_eq!(config["generation"], 1);
    assert_eq!(config["last_reload"]["ok"], true);
    assert_eq!(config["last_reload"]["error"], Value::Null);
    let at = config["last_reload"]["at"].as_str().unwrap();
    humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{at}: {e}"));
    assert_eq!(config["config"]["routes"][0]["name"], "ep");
    assert_eq!(
        config["config"]["pools"][0]["upstreams"][0]["addr"],
        a.addr.to_string()
    );

    let pools = get_json(admin, "/pools").await;
    assert_eq!(pools["pools"][0]["name"], "ep");
    assert_eq!(pools["pools"][0]["strategy"], "round_robin");
    let up = &pools["pools"][0]["upstreams"][0];
    assert_eq!(up["addr"], a.addr.to_string());
    assert_eq!(up["weight"], 1);
    assert_eq!(up["healthy"], true);
    assert_eq!(up["ejected"], false);
    assert_eq!(up["in_flight"], 0);
    assert_eq!(up["source"], "static");

    let metrics = get(admin, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics
        .header("content-type")
        .starts_with("text/plain; version=0.0.4"));
    assert!(metrics.text().contains("switchyard_config_generation 1"));

    let reload = call(admin, Method::POST, "/reload", "", None).await;
    assert_eq!(reload.status, StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = serde_json::from_slice(&reload.body).unwrap();
    assert!(error["error"].as_str().unwrap().contains("reload"));
    let config = get_json(admin, "/config").await;
    assert_eq!(config["last_reload"]["ok"], false);
    assert!(config["last_reload"]["error"].is_string());

    assert_eq!(get(admin, "/nope").await.status, StatusCode::NOT_FOUND);
    let wrong = call(admin, Method::POST, "/pools", "", None).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.header("allow"), "GET, HEAD");
    let wrong = get(admin, "/reload").await;
    assert_eq!(
        (wrong.status, wrong.header("allow")),
        (StatusCode::METHOD_NOT_ALLOWED, "POST")
    );
    let wrong = get(admin, "/registry/ep/127.0.0.1:1").await;
    assert_eq!(wrong.header("allow"), "PUT, DELETE");
}

#[tokio::test]
async fn dashboard_is_self_contained_html_and_the_json_it_polls_parses() {
    let a = Backend::start("a").await;
    let (_proxy, admin) = start(None, &one_pool("dash", &[&a])).await;
    let page = get(admin, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    let html = page.text();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    for external in ["http://", "https://", "src=", "<link"] {
        assert!(
            !html.contains(external),
            "the page must not load {external}"
        );
    }
    // Every endpoint the page polls answers JSON it can read.
    for path in ["/pools", "/config"] {
        assert!(html.contains(&format!("'{path}'")), "page polls {path}");
        get_json(admin, path).await;
    }
}

#[tokio::test]
async fn a_registered_instance_takes_traffic_until_it_is_deleted() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (proxy, admin) = start(None, &one_pool("reg", &[&a])).await;
    let path = format!("/registry/reg/{}", b.addr);

    let put = call(
        admin,
        Method::PUT,
        &path,
        r#"{"weight": 1, "ttl": "1m"}"#,
        None,
    )
    .await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
    let entry: Value = serde_json::from_slice(&put.body).unwrap();
    assert_eq!(entry["addr"], b.addr.to_string());
    assert_eq!(
        (entry["weight"].clone(), entry["ttl"].clone()),
        (1.into(), "1m".into())
    );
    let ups = upstreams(admin, "reg").await;
    assert_eq!(ups.len(), 2);
    assert_eq!(ups[1]["addr"], b.addr.to_string());
    assert_eq!(ups[1]["source"], "registry");

    // Round robin over both at once, without a reload.
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..10 {
        assert_eq!(client.get("x", "/").await.status, StatusCode::OK);
    }
    assert_eq!((a.requests(), b.requests()), (5, 5));

    let renew = call(admin, Method::PUT, &path, "", None).await;
    assert_eq!(renew.status, StatusCode::OK, "a second PUT renews");
    assert_eq!(upstreams(admin, "reg").await.len(), 2);

    let delete = call(admin, Method::DELETE, &path, "", None).await;
    assert_eq!(delete.status, StatusCode::NO_CONTENT);
    for _ in 0..6 {
        client.get("x", "/").await;
    }
    assert_eq!(
        (a.requests(), b.requests()),
        (11, 5),
        "deleted: b gets nothing"
    );
    assert_eq!(upstreams(admin, "reg").await.len(), 1);
    let again = call(admin, Method::DELETE, &path, "", None).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_renewal_keeps_the_weight_and_ttl_it_leaves_out() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (_proxy, admin) = start(None, &one_pool("reg", &[&a])).await;
    let path = format!("/registry/reg/{}", b.addr);
    let put = |body: &'static str| {
        let path = path.clone();
        async move {
            let answer = call(admin, Method::PUT, &path, body, None).await;
            let entry: Value = serde_json::from_slice(&answer.body).unwrap();
            (answer.status, entry["weight"].clone(), entry["ttl"].clone())
        }
    };

    let created = put(r#"{"weight": 3, "ttl": "1m"}"#).await;
    assert_eq!(created, (StatusCode::CREATED, 3.into(), "1m".into()));
    // A bare heartbeat renews what was registered.
    assert_eq!(put("").await, (StatusCode::OK, 3.into(), "1m".into()));
    assert_eq!(put("{}").await, (StatusCode::OK, 3.into(), "1m".into()));
    // Each field given replaces only itself.
    assert_eq!(
        put(r#"{"weight": 2}"#).await,
        (StatusCode::OK, 2.into(), "1m".into())
    );
    assert_eq!(
        put(r#"{"ttl": "2m"}"#).await,
        (StatusCode::OK, 2.into(), "2m".into())
    );
    let ups = upstreams(admin, "reg").await;
    assert_eq!((ups.len(), ups[1]["weight"].clone()), (2, 2.into()));
}

#[tokio::test]
async fn a_registered_instance_expires_without_renewal() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (proxy, admin) = start(None, &one_pool("ttl", &[&a])).await;
    let path = format!("/registry/ttl/{}", b.addr);
    let put = call(
        admin,
        Method::PUT,
        &path,
        r#"{"ttl": "300ms", "weight": 3}"#,
        None,
    )
    .await;
    assert_eq!(put.status, StatusCode::CREATED);
    assert_eq!(upstreams(admin, "ttl").await.len(), 2);
    let started = tokio::time::Instant::now();
    let mut left = 0;
    while tokio::time::Instant::now() < started + DEADLINE {
        left = upstreams(admin, "ttl").await.len();
        if left == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(left, 1, "expired within the deadline");
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    let served = b.requests();
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..4 {
        assert_eq!(client.get("x", "/").await.header("x-backend"), "a");
    }
    assert_eq!(b.requests(), served);
    let registry = get_json(admin, "/registry").await;
    assert_eq!(registry["instances"], Value::Array(vec![]));
}

#[tokio::test]
async fn bad_registry_input_is_refused_and_changes_nothing() {
    let a = Backend::start("a").await;
    let (_proxy, admin) = start(None, &one_pool("bad", &[&a])).await;
    let cases: &[(&str, &str, StatusCode)] = &[
        (
            "/registry/bad/127.0.0.1:9",
            "{not json",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/registry/bad/127.0.0.1:9",
            r#"{"weigth": 2}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/registry/bad/127.0.0.1:9",
            r#"{"weight": "2"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/registry/bad/127.0.0.1:9",
            r#"{"weight": 0}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/registry/bad/127.0.0.1:9",
            r#"{"weight": 10001}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/registry/bad/127.0.0.1:9",
            r#"{"ttl": "5x"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/registry/bad/127.0.0.1:9",
            r#"{"ttl": "30"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/registry/bad/127.0.0.1:9",
            r#"{"ttl": "0s"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/registry/bad/127.0.0.1:9",
            r#"{"ttl": "48h"}"#,
            StatusCode::BAD_REQUEST,
        ),
        // Audit A-F7: serde took an array's items as the fields in order.
        (
            "/registry/bad/127.0.0.1:9",
            r#"[2, "10s"]"#,
            StatusCode::BAD_REQUEST,
        ),
        ("/registry/bad/127.0.0.1:9", "2", StatusCode::BAD_REQUEST),
        ("/registry/bad/localhost:9", "", StatusCode::BAD_REQUEST),
        ("/registry/bad/127.0.0.1", "", StatusCode::BAD_REQUEST),
        ("/registry/bad/127.0.0.1:0", "", StatusCode::BAD_REQUEST),
        ("/registry/bad", "", StatusCode::BAD_REQUEST),
        ("/registry/nope/127.0.0.1:9", "", StatusCode::NOT_FOUND),
    ];
    let big = format!("{{\"ttl\": \"{}\"}}", "9".repeat(70 * 1024));
    let too_large = [(
        "/registry/bad/127.0.0.1:9",
        big.as_str(),
        StatusCode::PAYLOAD_TOO_LARGE,
    )];
    for (path, body, status) in cases.iter().chain(&too_large) {
        let reply = call(admin, Method::PUT, path, body, None).await;
        let short = &body[..body.len().min(40)];
        assert_eq!(
            reply.status,
            *status,
            "PUT {path} {short}: {}",
            reply.text()
        );
        let error: Value = serde_json::from_slice(&reply.body).unwrap();
        let error = error["error"].as_str().unwrap();
        assert!(!error.is_empty(), "{path} says why");
        // In the API's terms, not Rust's (`u32`, `struct PutBody`).
        assert!(
            !error.contains("u32") && !error.contains("struct"),
            "{error}"
        );
    }
    let static_addr = format!("/registry/bad/{}", a.addr);
    let conflict = call(admin, Method::PUT, &static_addr, "", None).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    let missing = call(
        admin,
        Method::DELETE,
        "/registry/nope/127.0.0.1:9",
        "",
        None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let ups = upstreams(admin, "bad").await;
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0]["source"], "static");
    assert_eq!(
        get_json(admin, "/registry").await["instances"],
        Value::Array(vec![])
    );
}

#[tokio::test]
async fn mutating_endpoints_need_the_bearer_token() {
    let a = Backend::start("a").await;
    let (_proxy, admin) = start(Some("s3cret"), &one_pool("auth", &[&a])).await;
    let path = "/registry/auth/127.0.0.1:9";
    for (method, path) in [
        (Method::PUT, path),
        (Method::DELETE, path),
        (Method::POST, "/reload"),
        (Method::POST, "/nope"),
    ] {
        for token in [None, Some("wrong"), Some("s3cre"), Some("S3cret")] {
            let reply = call(admin, method.clone(), path, "", token).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}"
            );
            assert_eq!(reply.header("www-authenticate"), "Bearer");
        }
    }
    assert!(get_json(admin, "/registry").await["instances"] == Value::Array(vec![]));
    let put = call(admin, Method::PUT, path, "", Some("s3cret")).await;
    assert_eq!(put.status, StatusCode::CREATED);
    let reload = call(admin, Method::POST, "/reload", "", Some("s3cret")).await;
    assert_eq!(reload.status, StatusCode::UNPROCESSABLE_ENTITY);
    let delete = call(admin, Method::DELETE, path, "", Some("s3cret")).await;
    assert_eq!(delete.status, StatusCode::NO_CONTENT);
    // Reading needs no token, and nothing that can be read without one shows it.
    for path in [
        "/pools",
        "/config",
        "/metrics",
        "/healthz",
        "/ready",
        "/",
        "/registry",
    ] {
        let reply = get(admin, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(!reply.text().contains("s3cret"), "{path} shows the token");
    }
    let config = get_json(admin, "/config").await;
    assert_eq!(config["config"]["admin"]["token"], "<redacted>");
    assert_eq!(config["config"]["pools"][0]["name"], "auth");
}

#[tokio::test]
async fn registry_entries_survive_a_new_snapshot_while_their_pool_exists() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (proxy, admin) = start(None, &one_pool("keep", &[&a])).await;
    let put = call(
        admin,
        Method::PUT,
        &format!("/registry/keep/{}", b.addr),
        "",
        None,
    )
    .await;
    assert_eq!(put.status, StatusCode::CREATED);
    let shared = proxy.server.shared().clone();
    let before = shared.snapshot();
    let registered = before.pool("keep").unwrap().upstreams()[1].clone();

    // What a reload does: build from the (re-read) config, then store.
    let config = (*before.config).clone();
    let next = switchyard::snapshot::Snapshot::build(config, Some(&before)).unwrap();
    shared.store(next);
    let after = shared.snapshot();
    assert_eq!(after.generation, 2);
    let members = after.pool("keep").unwrap().upstreams();
    assert_eq!(members.len(), 2);
    assert!(
        Arc::ptr_eq(&members[1], &registered),
        "same upstream, state kept"
    );
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..4 {
        client.get("x", "/").await;
    }
    assert_eq!(b.requests(), 2);

    // A config without the pool drops its entries.
    let mut config = (*after.config).clone();
    config.pools[0].name = "renamed".into();
    config.routes[0].pool = "renamed".into();
    shared.store(switchyard::snapshot::Snapshot::build(config, Some(&after)).unwrap());
    assert_eq!(
        get_json(admin, "/registry").await["instances"],
        Value::Array(vec![])
    );
    assert_eq!(upstreams(admin, "renamed").await.len(), 1);
}

#[tokio::test]
async fn ready_answers_503_while_draining() {
    let slow = Backend::start("slow").await;
    let (proxy, admin) = start(None, &one_pool("drain", &[&slow])).await;
    assert_eq!(get(admin, "/ready").await.status, StatusCode::OK);
    // A request in flight holds the drain open while we look at /ready.
    let addr = proxy.addr;
    let request = tokio::spawn(async move { crate::support::get(addr, "/slow/1500").await });
    eventually("the request to reach the backend", || slow.requests() == 1).await;
    let stopping = tokio::spawn(proxy.server.shutdown());
    let started = tokio::time::Instant::now();
    loop {
        let ready = get(admin, "/ready").await;
        if ready.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(ready.text(), "draining\n");
            break;
        }
        assert!(started.elapsed() < DEADLINE, "/ready never said 503");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        get(admin, "/healthz").await.status,
        StatusCode::OK,
        "still running"
    );
    // Audit A-F7: a reload asked for while draining is refused with 503, and is not a
    // failed reload (`last_reload` stays ok).
    let reload = call(admin, Method::POST, "/reload", "", None).await;
    assert_eq!(reload.status, StatusCode::SERVICE_UNAVAILABLE);
    let config: serde_json::Value =
        serde_json::from_slice(&get(admin, "/config").await.body).unwrap();
    assert_eq!(config["last_reload"]["ok"], true, "{config}");
    assert_eq!(
        request.await.unwrap().status,
        StatusCode::OK,
        "in-flight request finished"
    );
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "admin closed last"
    );
}

#[tokio::test]
async fn idle_admin_connections_do_not_block_traffic() {
    let a = Backend::start("a").await;
    let (proxy, admin) = start(None, &one_pool("starve", &[&a])).await;
    // Fill every admin connection slot and more with clients that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..switchyard::admin::MAX_CONNECTIONS + 16 {
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..5 {
        assert_eq!(client.get("x", "/").await.status, StatusCode::OK);
    }
    drop(idle);
    eventually_ok(admin).await;
}

#[tokio::test]
async fn kept_alive_admin_clients_cannot_lock_out_healthz() {
    // Audit A-F7: 64 idle keep-alive connections held every slot until their 10 s head
    // timeout, and `/healthz` (a liveness probe) waited that long.
    let a = Backend::start("a").await;
    let (_proxy, admin) = start(None, &one_pool("kept", &[&a])).await;
    // `/healthz` on a kept-alive connection: whether it answered 200.
    async fn healthz_on(stream: &mut tokio::net::TcpStream) -> bool {
        let request = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
        stream.write_all(request).await.unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap_or(0);
        buf[..n].starts_with(b"HTTP/1.1 200")
    }
    let mut kept = Vec::new();
    for _ in 0..switchyard::admin::MAX_CONNECTIONS {
        let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
        assert!(healthz_on(&mut stream).await);
        kept.push(stream);
    }
    // Taking the last slot closes nobody: only a client that finds none free does.
    assert!(
        healthz_on(&mut kept[0]).await,
        "the first client was let go early"
    );
    // Well inside the 10 s the idle connections would otherwise hold their slots.
    let reply = tokio::time::timeout(std::time::Duration::from_secs(3), get(admin, "/healthz"))
        .await
        .expect("/healthz answered while every slot was held by an idle client");
    assert_eq!(reply.status, StatusCode::OK);
}

/// `/healthz` answers again once idle connections are gone.
async fn eventually_ok(admin: SocketAddr) {
    let reply = tokio::time::timeout(DEADLINE, get(admin, "/healthz"))
        .await
        .expect("admin answers after the idle clients left");
    assert_eq!(reply.status, StatusCode::OK);
}

#[test]
fn check_and_run_refuse_a_public_admin_bind_without_a_token() {
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let dir = crate::support::TempDir::new("public-admin");
    let path = dir.join("public-admin.yaml");
    let yaml = config("admin: { bind: \"0.0.0.0:0\" }\n");
    std::fs::write(&path, &yaml).unwrap();
    for command in ["check", "run"] {
        let out = std::process::Command::new(bin)
            .args([command, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("public-admin.yaml:"), "{command}: {stderr}");
        assert!(
            stderr.contains("is not loopback; set admin.token"),
            "{command}: {stderr}"
        );
    }
    let with_token = yaml.replace("0.0.0.0:0\" }", "0.0.0.0:0\", token: \"t\" }");
    std::fs::write(&path, with_token).unwrap();
    let out = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
